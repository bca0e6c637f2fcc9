//! Bad input against a real member: every case gets its errno or status, none panics,
//! and the namespace is intact afterwards.

use std::io::{Read, Write};
use std::time::Duration;

use mobilus_meta_client::{ClientError, MetaClient};
use mobilus_proto::fs::{ChunkHash, ChunkRef, FileKind, SetAttr, SliceWrite, ROOT_INO};
use mobilus_proto::pb;
use mobilus_proto::status::Errno;

use crate::harness::Cluster;

fn errno<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Errno {
    match r {
        Err(ClientError::Errno(e, _)) => e,
        other => panic!("expected an errno, got {other:?}"),
    }
}

async fn must_file(c: &MetaClient, parent: u64, name: &[u8]) -> u64 {
    c.mknod(parent, name, FileKind::Regular, 0o644, 0, 0, 0, None)
        .await
        .expect("create")
        .ino
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_kinds_and_sizes_get_their_errno() {
    let cluster = Cluster::start(1, &[]).await;
    let c = cluster.client();
    let long = vec![b'x'; 256];
    let max = vec![b'y'; 255];
    assert_eq!(
        errno(c.mkdir(ROOT_INO, b"", 0o755, 0, 0, None).await),
        Errno::EINVAL
    );
    assert_eq!(
        errno(c.mkdir(ROOT_INO, b"a/b", 0o755, 0, 0, None).await),
        Errno::EINVAL
    );
    assert_eq!(
        errno(c.mkdir(ROOT_INO, b"a\0b", 0o755, 0, 0, None).await),
        Errno::EINVAL
    );
    assert_eq!(
        errno(c.mkdir(ROOT_INO, &long, 0o755, 0, 0, None).await),
        Errno::ENAMETOOLONG
    );
    assert_eq!(
        errno(c.mkdir(ROOT_INO, b".", 0o755, 0, 0, None).await),
        Errno::EEXIST
    );
    assert_eq!(
        errno(c.mkdir(ROOT_INO, b"..", 0o755, 0, 0, None).await),
        Errno::EEXIST
    );
    let dir = c
        .mkdir(ROOT_INO, &max, 0o755, 0, 0, None)
        .await
        .expect("255-byte name")
        .ino;
    assert_eq!(
        errno(c.lookup(ROOT_INO, &long, false).await),
        Errno::ENAMETOOLONG
    );
    assert_eq!(c.lookup(dir, b"..", false).await.unwrap().ino, ROOT_INO);
    assert_eq!(c.lookup(dir, b".", false).await.unwrap().ino, dir);

    // Missing parents and wrong kinds.
    assert_eq!(
        errno(c.mkdir(999_999, b"x", 0o755, 0, 0, None).await),
        Errno::ENOENT
    );
    assert_eq!(errno(c.getattr(999_999, false).await), Errno::ENOENT);
    let file = must_file(&c, dir, b"f").await;
    assert_eq!(
        errno(c.mkdir(file, b"x", 0o755, 0, 0, None).await),
        Errno::ENOTDIR
    );
    assert_eq!(
        errno(c.readdir(file, 0, 0, false, false).await),
        Errno::ENOTDIR
    );
    assert_eq!(errno(c.rmdir(dir, b"f", None).await), Errno::ENOTDIR);
    assert_eq!(errno(c.unlink(ROOT_INO, &max, None).await), Errno::EISDIR);
    assert_eq!(errno(c.rmdir(ROOT_INO, &max, None).await), Errno::ENOTEMPTY);
    assert_eq!(errno(c.rmdir(dir, b".", None).await), Errno::EINVAL);
    assert_eq!(errno(c.readlink(file, false).await), Errno::EINVAL);
    assert_eq!(
        errno(c.link(dir, ROOT_INO, b"dirlink", None).await),
        Errno::EPERM
    );
    let trunc_dir = SetAttr {
        size: Some(0),
        ..Default::default()
    };
    assert_eq!(errno(c.setattr(dir, &trunc_dir, None).await), Errno::EISDIR);
    let too_big = SetAttr {
        size: Some(u64::MAX),
        ..Default::default()
    };
    assert_eq!(errno(c.setattr(file, &too_big, None).await), Errno::EFBIG);
    assert_eq!(
        errno(c.rename(dir, b"f", dir, b"g", 4, None).await),
        Errno::EINVAL
    );
    assert_eq!(
        errno(c.rename(ROOT_INO, &max, dir, b"inside", 0, None).await),
        Errno::EINVAL
    );
    assert_eq!(
        errno(c.symlink(dir, b"s", &[b'z'; 4096], 0, 0, None).await),
        Errno::ENAMETOOLONG
    );
    assert_eq!(
        errno(c.symlink(dir, b"s", b"", 0, 0, None).await),
        Errno::ENOENT
    );

    // Xattrs.
    assert_eq!(
        errno(c.setxattr(file, b"user.a", &vec![0; 65537], 0, None).await),
        Errno::E2BIG
    );
    assert_eq!(
        errno(c.setxattr(file, &[b'n'; 256], b"v", 0, None).await),
        Errno::ERANGE
    );
    assert_eq!(
        errno(c.setxattr(file, b"user.a", b"v", 2, None).await),
        Errno::ENODATA
    );
    c.setxattr(file, b"user.a", b"v", 1, None).await.unwrap();
    assert_eq!(
        errno(c.setxattr(file, b"user.a", b"v", 1, None).await),
        Errno::EEXIST
    );
    assert_eq!(
        errno(c.setxattr(file, b"user.a", b"v", 3, None).await),
        Errno::EINVAL
    );
    assert_eq!(
        errno(c.getxattr(file, b"user.none", false).await),
        Errno::ENODATA
    );
    assert_eq!(
        errno(c.removexattr(file, b"user.none", None).await),
        Errno::ENODATA
    );

    // Writes: wrong kind, past the maximum size, slices that do not add up.
    let h = ChunkHash([1; 32]);
    let one = |offset: u64, len: u64| SliceWrite {
        offset,
        len,
        chunks: vec![ChunkRef {
            hash: h,
            offset: 0,
            len,
        }],
    };
    assert_eq!(
        errno(c.write(dir, &[one(0, 10)], None, &[], false).await),
        Errno::EISDIR
    );
    assert_eq!(
        errno(
            c.write(file, &[one(u64::MAX - 5, 10)], None, &[], false)
                .await
        ),
        Errno::EFBIG
    );
    let mismatched = SliceWrite {
        offset: 0,
        len: 20,
        chunks: vec![ChunkRef {
            hash: h,
            offset: 0,
            len: 10,
        }],
    };
    assert_eq!(
        errno(c.write(file, &[mismatched], None, &[], false).await),
        Errno::EINVAL
    );
    // A chunk longer than any data node stores (it would also make one record per MiB).
    assert_eq!(
        errno(c.write(file, &[one(0, 1 << 40)], None, &[], false).await),
        Errno::EINVAL
    );
    // A range of a chunk (a pack) that ends past what any chunk holds.
    let past_the_end = SliceWrite {
        offset: 0,
        len: 10,
        chunks: vec![ChunkRef {
            hash: h,
            offset: u64::MAX - 4,
            len: 10,
        }],
    };
    assert_eq!(
        errno(c.write(file, &[past_the_end], None, &[], false).await),
        Errno::EINVAL
    );
    assert_eq!(
        c.getattr(file, false).await.unwrap().size,
        0,
        "a refused write changed the file"
    );
    assert_eq!(errno(c.read_slices(dir, 0, 10, false).await), Errno::EISDIR);

    // The namespace is exactly what succeeded.
    let root: Vec<_> = c
        .readdir_all(ROOT_INO, false)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(root, vec![max.clone()]);
    let inside: Vec<_> = c
        .readdir_all(dir, false)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(inside, vec![b"f".to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_oversized_requests_and_garbage_bytes_are_refused() {
    let cluster = Cluster::start(1, &[]).await;
    let c = cluster.client();
    let addr = cluster.members[0].addr.clone();
    let channel = mobilus_tls::client::channel(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap(),
        mobilus_tls::Role::Meta,
        &mobilus_tls::client::ClientTls::ProcessDefault,
    );

    // A protobuf that decodes but carries an invalid value.
    let mut raw =
        pb::meta_client::MetaClient::new(channel.clone()).max_encoding_message_size(64 << 20);
    let bad_kind = pb::MknodRequest {
        parent: ROOT_INO,
        name: b"k".to_vec(),
        kind: 42,
        mode: 0o644,
        ..Default::default()
    };
    assert_eq!(
        raw.mknod(bad_kind).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    let bad_hash = pb::WriteRequest {
        ino: ROOT_INO,
        slices: vec![pb::SliceWrite {
            offset: 0,
            length: 3,
            chunks: vec![pb::ChunkRef {
                hash: vec![1, 2, 3],
                offset: 0,
                length: 3,
            }],
        }],
        fence: None,
        checks: Vec::new(),
        create: None,
    };
    assert_eq!(
        raw.write(bad_hash).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );

    // A scan page after something that is not a chunk hash.
    let mut admin = pb::cluster_client::ClusterClient::new(channel.clone());
    let bad_after = pb::ScanSubtreeChunksRequest {
        root: ROOT_INO,
        stale: true,
        after: vec![9; 5],
        limit: 10,
    };
    assert_eq!(
        admin
            .scan_subtree_chunks(bad_after)
            .await
            .unwrap_err()
            .code(),
        tonic::Code::InvalidArgument
    );

    // A move whose data mode is not one.
    let bad_mode = pb::MoveSubtreeRequest {
        root: ROOT_INO,
        to: "site-b".into(),
        force: false,
        data: "everything".into(),
    };
    assert_eq!(
        admin.move_subtree(bad_mode).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );

    // Creates under a reserved number: without the session that reserved it, of a
    // directory, or carried by a write to another file.
    let reserved = pb::MknodRequest {
        parent: ROOT_INO,
        name: b"r".to_vec(),
        kind: pb::FileKind::Regular as i32,
        mode: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        fence: None,
        ino: 1 << 20,
        time_ns: 0,
    };
    let as_dir = pb::MknodRequest {
        kind: pb::FileKind::Directory as i32,
        ..reserved.clone()
    };
    for bad in [reserved.clone(), as_dir] {
        assert_eq!(
            raw.mknod(bad).await.unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
    let elsewhere = pb::WriteRequest {
        ino: 5,
        slices: Vec::new(),
        fence: None,
        checks: Vec::new(),
        create: Some(reserved),
    };
    assert_eq!(
        raw.write(elsewhere).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );

    // 20 MiB in one request is over the server's limit.
    let huge = pb::SetXattrRequest {
        ino: ROOT_INO,
        name: b"user.big".to_vec(),
        value: vec![7; 20 << 20],
        flags: 0,
        fence: None,
    };
    let code = raw.set_xattr(huge).await.unwrap_err().code();
    assert!(
        matches!(
            code,
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "oversized: {code:?}"
    );

    // Raft is for members only: the tests' operator is refused before decoding.
    let refused = pb::raft_client::RaftClient::new(channel.clone())
        .append_entries(pb::RaftBytes { data: vec![1] })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    // Garbage on the Raft service from a member's certificate: refused as invalid, Raft
    // unharmed.
    let as_member = mobilus_tls::pki::test_pki()
        .unwrap()
        .config(mobilus_tls::Role::Meta, None, "meta")
        .unwrap();
    let member_channel = mobilus_tls::client::channel(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap(),
        mobilus_tls::Role::Meta,
        &mobilus_tls::client::ClientTls::With(std::sync::Arc::new(as_member)),
    );
    let mut raft = pb::raft_client::RaftClient::new(member_channel);
    for junk in [
        vec![],
        vec![1u8],
        vec![1, 255, 255, 255, 255],
        vec![9; 1000],
    ] {
        let err = raft
            .append_entries(pb::RaftBytes { data: junk.clone() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "junk {junk:?}");
        let err = raft
            .forward(pb::RaftBytes { data: junk })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    // Raw garbage bytes on the port, with and without an HTTP/2 preface.
    for junk in [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect(),
        [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), vec![0xff; 64]].concat(),
    ] {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&junk);
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
    }

    // Still serving, state intact.
    let d = c
        .mkdir(ROOT_INO, b"still-alive", 0o755, 0, 0, None)
        .await
        .unwrap();
    assert_eq!(
        c.lookup(ROOT_INO, b"still-alive", false).await.unwrap().ino,
        d.ino
    );
    assert!(c.getxattr(ROOT_INO, b"user.big", false).await.is_err());
    let status = c.status().await.unwrap();
    assert_eq!(status.state, "Leader");
    assert!(
        !cluster.members[0].log().contains("panicked"),
        "{}",
        cluster.members[0].log()
    );
}
