//! `Meta.Batch`: a delegation's holder sends the changes it wrote back together, and
//! each gets the answer its own call would have had.

use mobilus_meta::server;
use mobilus_meta_client::{ClientError, ClientOptions, MetaClient, ReservedCreate};
use mobilus_proto::fs::FileKind;
use mobilus_proto::pb;
use mobilus_proto::pb::batch_item::Op as ItemOp;
use mobilus_proto::pb::batch_result::Outcome;
use mobilus_proto::status::{status_of_item, Errno};

use crate::partition::{config, leader_among};

fn errno<T: std::fmt::Debug>(r: &Result<T, ClientError>) -> Errno {
    match r {
        Err(ClientError::Errno(e, _)) => *e,
        other => panic!("expected an errno, got {other:?}"),
    }
}

/// A one-member cluster with site-a owning `/app`, and a client of site-a whose session
/// holds `/app`'s delegation: (member, holder, session, app).
async fn must_holder(tmp: &std::path::Path) -> (server::ServerHandle, MetaClient, u64, u64) {
    let member = server::start(&config(1, tmp)).await.unwrap();
    leader_among(&[&member]).await;
    let addrs = vec![member.addr().to_string()];
    let admin = MetaClient::connect(&addrs).unwrap();
    let app = crate::ownership::must_owned_app(&admin, "site-a").await;
    let opts = ClientOptions {
        site: Some("site-a".into()),
        ..Default::default()
    };
    let holder = MetaClient::new(&addrs, opts).unwrap();
    let (session, _) = holder.open_session().await.unwrap();
    holder.set_session(Some(session));
    holder.acquire_delegation(session, app).await.unwrap();
    (member, holder, session, app)
}

fn reserved(app: u64, name: &[u8], ino: u64, session: u64) -> ReservedCreate {
    ReservedCreate {
        parent: app,
        name: name.to_vec(),
        ino,
        mode: 0o644,
        uid: 0,
        gid: 0,
        time_ns: 1,
        session,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holders_changes_go_together_and_each_gets_its_own_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let (member, holder, session, app) = must_holder(tmp.path()).await;
    holder
        .mknod(app, b"taken", FileKind::Regular, 0o644, 0, 0, 0, None)
        .await
        .unwrap();
    let (first, count) = holder.reserve_inodes(session).await.unwrap();
    assert!(count >= 49, "{count} numbers reserved");
    let before = member.node.batched_items_answered();

    // 48 creates, one under a name that is taken, and an unlink of a name that is
    // absent, all holder-only and at once.
    let creates = (0..48u64).map(|i| {
        let c = reserved(app, format!("f{i}").as_bytes(), first + i, session);
        let holder = holder.clone();
        async move { holder.create_reserved(&c, None, true).await }
    });
    let taken = reserved(app, b"taken", first + 48, session);
    let (made, clash, missing) = tokio::join!(
        futures::future::join_all(creates),
        holder.create_reserved(&taken, None, true),
        holder.unlink_holder_only(app, b"missing"),
    );
    for (i, m) in made.iter().enumerate() {
        let attr = m.as_ref().unwrap_or_else(|e| panic!("create f{i}: {e}"));
        assert_eq!(attr.ino, first + i as u64);
        let found = holder
            .lookup(app, format!("f{i}").as_bytes(), false)
            .await
            .unwrap();
        assert_eq!(found.ino, first + i as u64);
    }
    assert_eq!(errno(&clash), Errno::EEXIST);
    assert_eq!(errno(&missing), Errno::ENOENT);
    // Most went in batches: one call each would have made this 0.
    let batched = member.node.batched_items_answered() - before;
    assert!(batched >= 25, "{batched} of 50 changes came in batches");

    // Once the delegation is given back, holder-only changes are refused, each with its
    // own answer, and change nothing.
    holder.release_delegation(session, app).await.unwrap();
    let (a, b) = tokio::join!(
        holder.unlink_holder_only(app, b"f0"),
        holder.unlink_holder_only(app, b"f1"),
    );
    assert_eq!(errno(&a), Errno::ESTALE);
    assert_eq!(errno(&b), Errno::ESTALE);
    holder.lookup(app, b"f0", false).await.unwrap();
    holder.lookup(app, b"f1", false).await.unwrap();
    member.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_bad_items_in_place_and_refuses_one_too_large() {
    let tmp = tempfile::tempdir().unwrap();
    let (member, holder, session, app) = must_holder(tmp.path()).await;
    holder
        .mknod(app, b"victim", FileKind::Regular, 0o644, 0, 0, 0, None)
        .await
        .unwrap();
    holder.mkdir(app, b"sub", 0o755, 0, 0, None).await.unwrap();
    let channel = mobilus_tls::client::channel(
        tonic::transport::Endpoint::from_shared(format!("http://{}", member.addr())).unwrap(),
        mobilus_tls::Role::Meta,
        &mobilus_tls::client::ClientTls::ProcessDefault,
    );
    let mut raw = pb::meta_client::MetaClient::new(channel);
    let held = Some(pb::Fence {
        site: "site-a".into(),
        session,
        holder_only: true,
        ..Default::default()
    });
    let item = |op| pb::BatchItem { op };
    let create = |name: &[u8], ino, fence: Option<pb::Fence>| {
        Some(ItemOp::Create(pb::MknodRequest {
            parent: app,
            name: name.to_vec(),
            kind: pb::FileKind::from(FileKind::Regular) as i32,
            mode: 0o644,
            ino,
            fence,
            ..Default::default()
        }))
    };
    let unlink = |name: &[u8], fence: Option<pb::Fence>| {
        Some(ItemOp::Unlink(pb::UnlinkRequest {
            parent: app,
            name: name.to_vec(),
            fence,
            ..Default::default()
        }))
    };
    let reply = raw
        .batch(pb::BatchRequest {
            items: vec![
                // No change named.
                item(None),
                // Not holder-only: it could wait for a recall and hold up the rest.
                item(unlink(b"victim", None)),
                // A create not under a reserved number.
                item(create(b"plain", 0, held.clone())),
                // Under a number no session reserved: EINVAL, as its own call.
                item(create(b"numbered", 1 << 40, held.clone())),
                // Fine: the holder unlinks a file of its subtree.
                item(unlink(b"victim", held.clone())),
                // Its own call answers EISDIR, and ENOENT for a name that is absent.
                item(unlink(b"sub", held.clone())),
                item(unlink(b"absent", held.clone())),
                item(Some(ItemOp::Write(pb::WriteRequest {
                    ino: 1 << 41,
                    fence: held.clone(),
                    ..Default::default()
                }))),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let answers: Vec<(tonic::Code, Option<String>)> = reply
        .results
        .iter()
        .map(|r| match r.outcome.as_ref().expect("an outcome") {
            Outcome::Error(e) => (
                status_of_item(e).code(),
                e.metadata.get(mobilus_proto::status::ERRNO_KEY).cloned(),
            ),
            _ => (tonic::Code::Ok, None),
        })
        .collect();
    use tonic::Code::*;
    let errno = |e: Errno| Some(e.0.to_string());
    assert_eq!(
        answers,
        [
            (InvalidArgument, None),
            (InvalidArgument, None),
            (InvalidArgument, None),
            (InvalidArgument, errno(Errno::EINVAL)),
            (Ok, None),
            (FailedPrecondition, errno(Errno::EISDIR)),
            (NotFound, errno(Errno::ENOENT)),
            (NotFound, errno(Errno::ENOENT)),
        ],
        "{reply:?}"
    );
    let gone = holder.lookup(app, b"victim", false).await;
    assert_eq!(gone.unwrap_err().errno(), Some(Errno::ENOENT));

    let too_many = pb::BatchRequest {
        items: (0..257).map(|_| item(None)).collect(),
    };
    assert_eq!(
        raw.batch(too_many).await.unwrap_err().code(),
        InvalidArgument
    );
    // An empty batch answers nothing.
    let empty = raw.batch(pb::BatchRequest::default()).await.unwrap();
    assert!(empty.into_inner().results.is_empty());
    member.shutdown().await.unwrap();
}
