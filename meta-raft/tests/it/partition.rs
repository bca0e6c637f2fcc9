//! A partition by dropped traffic (the in-process fault-injecting network), not by
//! stopping processes.

use std::time::{Duration, Instant};

use mobilus_meta::config::NodeConfig;
use mobilus_meta::server::{self, ServerHandle};
use mobilus_meta::types::{Op, OpReply};
use mobilus_meta::MetaError;
use mobilus_proto::fs::ROOT_INO;
use mobilus_proto::status::Errno;

pub(crate) fn config(id: u64, dir: &std::path::Path) -> NodeConfig {
    NodeConfig {
        id,
        listen: "127.0.0.1:0".into(),
        advertise: None,
        data_dir: dir.join(format!("m{id}")),
        join: vec![],
        init: id == 1,
        snapshot_logs: 10_000,
        keep_logs: 1000,
        heartbeat_ms: 50,
        lease_reads: true,
        request_buffer_bytes: 1 << 30,
        unsafe_read_lease_ms: None,
        unsafe_local_reads: false,
        // On mutual TLS, as the tests' clients (the operator) expect.
        tls: Some(std::sync::Arc::new(
            mobilus_tls::pki::test_pki()
                .unwrap()
                .config(mobilus_tls::Role::Meta, None, "meta")
                .unwrap(),
        )),
    }
}

fn mkdir(name: &str) -> Op {
    Op::Mkdir {
        parent: ROOT_INO,
        name: name.as_bytes().to_vec(),
        mode: 0o755,
        uid: 0,
        gid: 0,
    }
}

/// A member cut off from the majority, which has elected a leader and written `name`,
/// must answer no linearizable read (however it would have answered).
async fn must_refuse_reads(node: &mobilus_meta::server::MetaNode, name: &[u8]) {
    let read = node.read(false, |ns| ns.lookup(ROOT_INO, name)).await;
    assert!(
        matches!(
            read,
            Err(MetaError::Unavailable(_) | MetaError::NotLeader(_))
        ),
        "a cut-off member answered a linearizable read: {read:?}"
    );
}

pub(crate) async fn leader_among(nodes: &[&ServerHandle]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(i) = nodes.iter().position(|n| n.node.status().state == "Leader") {
            return i;
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_by_dropped_traffic_loses_leadership_and_catches_up_after_healing() {
    let tmp = tempfile::tempdir().unwrap();
    let [n1, n2, n3] = must_three_members(tmp.path(), true).await;
    let nodes = [&n1, &n2, &n3];
    let l = leader_among(&nodes).await;
    let (leader, others) = (nodes[l], [nodes[(l + 1) % 3], nodes[(l + 2) % 3]]);
    assert!(matches!(
        leader.node.propose(None, mkdir("before")).await,
        Ok(OpReply::Attr(_))
    ));

    // Cut the leader off: it drops traffic to and from the others, and they drop its.
    for o in others {
        leader.node.faults.block(o.node.id);
        o.node.faults.block(leader.node.id);
    }
    let old = leader.node.clone();
    let pending = tokio::spawn(async move {
        old.propose_local(Default::default(), None, mkdir("minority"))
            .await
    });

    // The majority elects a leader of its own and commits.
    let majority = others[leader_among(&others).await];
    assert!(matches!(
        majority.node.propose(None, mkdir("majority")).await,
        Ok(OpReply::Attr(_))
    ));
    // The old leader cannot confirm a read index, so it serves no linearizable read.
    must_refuse_reads(&leader.node, b"majority").await;

    // Heal: the old leader steps down; its write was never acknowledged.
    for n in nodes {
        n.node.faults.heal();
    }
    let outcome = tokio::time::timeout(Duration::from_secs(20), pending)
        .await
        .unwrap()
        .unwrap();
    assert!(
        outcome.is_err(),
        "a write proposed on the cut-off leader was acknowledged: {outcome:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while leader
        .node
        .read(true, |ns| ns.lookup(ROOT_INO, b"majority"))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the old leader never caught up after healing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(leader
        .node
        .read(true, |ns| ns.lookup(ROOT_INO, b"minority"))
        .await
        .is_err());
    for n in [n1, n2, n3] {
        n.shutdown().await.unwrap();
    }
}

async fn must_three_members(tmp: &std::path::Path, lease_reads: bool) -> [ServerHandle; 3] {
    let cfg = |id| NodeConfig {
        lease_reads,
        ..config(id, tmp)
    };
    let n1 = server::start(&cfg(1)).await.unwrap();
    let n2 = server::start(&cfg(2)).await.unwrap();
    let n3 = server::start(&cfg(3)).await.unwrap();
    leader_among(&[&n1]).await;
    for n in [&n2, &n3] {
        n1.node
            .add_learner(n.node.id, n.addr().to_string())
            .await
            .unwrap();
        n1.node.promote(n.node.id).await.unwrap();
    }
    [n1, n2, n3]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reads_share_read_index_rounds() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = must_three_members(tmp.path(), false).await;
    let l = leader_among(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    let leader = nodes[l].node.clone();
    let before = leader.read_rounds();
    let reads: Vec<_> = (0..200)
        .map(|_| {
            let node = leader.clone();
            tokio::spawn(async move { node.read(false, |ns| ns.getattr(ROOT_INO)).await })
        })
        .collect();
    for r in reads {
        r.await.unwrap().expect("linearizable read");
    }
    let rounds = leader.read_rounds() - before;
    // Each read waits for at most the round in flight plus the next: far fewer rounds
    // than reads, and at least one.
    assert!((1..100).contains(&rounds), "{rounds} rounds for 200 reads");
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_under_the_leader_lease_take_no_rounds_and_the_lease_ends_with_leadership() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = must_three_members(tmp.path(), true).await;
    let all = [&nodes[0], &nodes[1], &nodes[2]];
    let l = leader_among(&all).await;
    let leader = nodes[l].node.clone();
    leader.read(false, |ns| ns.getattr(ROOT_INO)).await.unwrap();
    let before = leader.read_rounds();
    for _ in 0..100 {
        leader.read(false, |ns| ns.getattr(ROOT_INO)).await.unwrap();
    }
    // Renewals only: the lease (375 ms here) outlasts 100 local reads many times.
    assert!(leader.read_rounds() - before <= 2, "rounds under a lease");
    // A leader holding its lease grants no vote.
    assert!(leader.refuse_vote().is_some());

    // Cut it off: within the lease it may still answer (it is still the only leader),
    // but once the others elect a leader of their own it answers nothing.
    let others: Vec<&ServerHandle> = (0..3).filter(|&i| i != l).map(|i| &nodes[i]).collect();
    for o in &others {
        leader.faults.block(o.node.id);
        o.node.faults.block(leader.id);
    }
    let majority = others[leader_among(&others).await];
    majority
        .node
        .propose(None, mkdir("after-the-cut"))
        .await
        .unwrap();
    must_refuse_reads(&leader, b"after-the-cut").await;
    for n in &nodes {
        n.node.faults.heal();
    }
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// A mount client of site-a whose holder reads go to `near`.
fn holder_client(addrs: &[String], near: &str) -> mobilus_meta_client::MetaClient {
    let opts = mobilus_meta_client::ClientOptions {
        site: Some("site-a".into()),
        near: Some(near.to_string()),
        ..Default::default()
    };
    let client = mobilus_meta_client::MetaClient::new(addrs, opts).unwrap();
    client.set_holder_reads(std::sync::Arc::new(|_| true));
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delegation_holder_reads_at_a_follower_only_what_includes_its_own_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = must_three_members(tmp.path(), true).await;
    let l = leader_among(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    let (leader, near, other) = (&nodes[l], &nodes[(l + 1) % 3], &nodes[(l + 2) % 3]);
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
    let admin = mobilus_meta_client::MetaClient::connect(&addrs).unwrap();
    let app = crate::ownership::must_owned_app(&admin, "site-a").await;

    // The holder: a session of site-a with /app's delegation, reading at `near`.
    let holder = holder_client(&addrs, near.addr());
    let (session, _) = holder.open_session().await.unwrap();
    holder.set_session(Some(session));
    holder.acquire_delegation(session, app).await.unwrap();
    holder.lookup(ROOT_INO, b"app", false).await.unwrap();
    holder.mkdir(app, b"one", 0o755, 0, 0, None).await.unwrap();
    let answered = near.node.holder_reads_answered();
    let one = holder.lookup(app, b"one", false).await.unwrap();
    assert_eq!(near.node.holder_reads_answered(), answered + 1);
    // Errors from the namespace are answers too.
    let missing = holder.lookup(app, b"nothing", false).await;
    assert_eq!(missing.unwrap_err().errno(), Some(Errno::ENOENT));
    assert_eq!(near.node.holder_reads_answered(), answered + 2);

    // A session that does not hold the delegation is read the usual way, whatever it
    // claims: the member checks its own state.
    let claimer = holder_client(&addrs, near.addr());
    let (s2, _) = claimer.open_session().await.unwrap();
    claimer.set_session(Some(s2));
    claimer.lookup(ROOT_INO, b"app", false).await.unwrap();
    assert_eq!(claimer.getattr(one.ino, false).await.unwrap().ino, one.ino);
    assert_eq!(near.node.holder_reads_answered(), answered + 2);

    // `near` falls behind (cut off from the others, which still commit): the holder's
    // next write is not there, so its read waits, then goes to the leader.
    for o in [leader, other] {
        near.node.faults.block(o.node.id);
        o.node.faults.block(near.node.id);
    }
    holder.mkdir(app, b"two", 0o755, 0, 0, None).await.unwrap();
    let t = Instant::now();
    let two = holder.lookup(app, b"two", false).await;
    assert!(two.is_ok(), "the holder's own write was not seen: {two:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(near.node.holder_reads_answered(), answered + 2);

    // The deliberate bug: a member that answers from whatever it has applied shows the
    // holder its subtree without its last write.
    server::holder_reads_ignore_applied_for_tests(true);
    let stale = holder.lookup(app, b"two", false).await;
    server::holder_reads_ignore_applied_for_tests(false);
    assert_eq!(
        stale.unwrap_err().errno(),
        Some(Errno::ENOENT),
        "the broken switch went unnoticed"
    );

    // Healed, `near` catches up and answers again.
    for n in &nodes {
        n.node.faults.heal();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let before = near.node.holder_reads_answered();
        holder.lookup(app, b"two", false).await.unwrap();
        if near.node.holder_reads_answered() > before {
            break;
        }
        assert!(Instant::now() < deadline, "the member never answered again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}
