//! Clones (`namespace::clone`): a subtree copied by its metadata alone, in bounded steps,
//! hidden until published whole; the source frozen meanwhile; an abandoned clone removed
//! without a trace; each side changed alone afterwards.

use std::collections::BTreeMap;

use mobilus_meta::namespace::{Namespace, CLONE_LEASE_NS};
use mobilus_meta::types::{Op, OpError, OpReply, Reply};
use mobilus_proto::fs::{
    Attr, ChunkHash, ChunkRef, CloneInfo, CloneState, Extent, FileKind, InodeId, SliceWrite,
    SubtreeState, ROOT_INO,
};
use mobilus_proto::status::Errno;

use crate::ownership::{
    exec, fixture, heartbeat, mkdir, mknod, must, must_attr, must_fsck_clean, Fixture, SEC, T0,
};

pub(crate) fn must_clone(ns: &Namespace, t: i64, op: Op) -> CloneInfo {
    match must(ns, t, None, op) {
        OpReply::Clone(c) => c,
        other => panic!("not a clone: {other:?}"),
    }
}

/// Step clone `c`, 100 inodes and slices a step, until it is no longer copying.
pub(crate) fn must_step_to_end(ns: &Namespace, t: i64, mut c: CloneInfo) -> CloneInfo {
    while c.state == CloneState::Copying {
        c = must_clone(
            ns,
            t,
            Op::CloneStep {
                dst: c.dst,
                limit: 100,
            },
        );
    }
    c
}

/// Start a clone with `op` and step it to the end.
pub(crate) fn must_clone_whole(ns: &Namespace, t: i64, op: Op) -> CloneInfo {
    let c = must_clone(ns, t, op);
    must_step_to_end(ns, t, c)
}

pub(crate) fn start(src: InodeId, parent: InodeId, name: &str, owner: Option<&str>) -> Op {
    Op::StartClone {
        src,
        parent,
        name: name.into(),
        owner: owner.map(str::to_string),
        snapshot: false,
    }
}

pub(crate) fn chunk(n: u8) -> ChunkHash {
    ChunkHash([n; 32])
}

/// `len` bytes at `offset` from chunk `n`.
pub(crate) fn write(ino: InodeId, offset: u64, len: u64, n: u8) -> Op {
    Op::Write {
        ino,
        slices: vec![SliceWrite {
            offset,
            len,
            chunks: vec![ChunkRef {
                hash: chunk(n),
                offset: 0,
                len,
            }],
        }],
        checks: Vec::new(),
    }
}

pub(crate) fn errno_of(r: &Reply) -> Option<i32> {
    match r {
        Err(OpError::Errno(e)) => Some(*e),
        Err(OpError::Explained { errno, .. }) => Some(*errno),
        _ => None,
    }
}

/// Everything a reader sees of the tree under `dir`, by path: attributes that a copy
/// keeps, symlink targets, xattrs, the file's extents, and which paths share an inode.
#[derive(Debug, PartialEq)]
pub(crate) struct Seen {
    kind: FileKind,
    mode: u32,
    size: u64,
    mtime_ns: i64,
    nlink: u32,
    target: Vec<u8>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    extents: Vec<Extent>,
    /// The first path (in listing order) naming the same inode.
    same_as: String,
}

pub(crate) fn seen(ns: &Namespace, dir: InodeId) -> BTreeMap<String, Seen> {
    let mut out = BTreeMap::new();
    let mut first_name: BTreeMap<InodeId, String> = BTreeMap::new();
    let mut todo = vec![(dir, String::new())];
    while let Some((d, prefix)) = todo.pop() {
        let (entries, eof) = ns.readdir(d, 0, 100_000, false).unwrap();
        assert!(eof);
        for e in entries {
            let path = format!("{prefix}/{}", String::from_utf8_lossy(&e.name));
            let a: Attr = ns.getattr(e.ino).unwrap();
            let same_as = first_name.entry(e.ino).or_insert(path.clone()).clone();
            let xattrs = ns
                .listxattr(e.ino)
                .unwrap()
                .into_iter()
                .map(|n| {
                    let v = ns.getxattr(e.ino, &n).unwrap();
                    (n, v)
                })
                .collect();
            let extents = if a.kind == FileKind::Regular {
                ns.read_slices(e.ino, 0, a.size.max(1)).unwrap().0
            } else {
                Vec::new()
            };
            let target = if a.kind == FileKind::Symlink {
                ns.readlink(e.ino).unwrap()
            } else {
                Vec::new()
            };
            if a.kind == FileKind::Directory {
                todo.push((e.ino, path.clone()));
            }
            out.insert(
                path,
                Seen {
                    kind: a.kind,
                    mode: a.mode,
                    size: a.size,
                    mtime_ns: a.mtime_ns,
                    nlink: a.nlink,
                    target,
                    xattrs,
                    extents,
                    same_as,
                },
            );
        }
    }
    out
}

/// `/app` of the fixture filled: nested directories, files of several slices, a file
/// with two names, a symlink, xattrs. Returns the chunks it references.
pub(crate) fn fill(f: &Fixture, t: i64) -> Vec<ChunkHash> {
    let a = Some("site-a");
    let mut chunks = Vec::new();
    let mut n = 10u8;
    for d in 0..3 {
        let dir = must_attr(&f.ns, t, a, mkdir(f.app, &format!("dir{d}"))).ino;
        let sub = must_attr(&f.ns, t, a, mkdir(dir, "sub")).ino;
        for i in 0..4 {
            let file = must_attr(&f.ns, t, a, mknod(sub, &format!("f{i}"))).ino;
            must(&f.ns, t, a, write(file, 0, 100, n));
            must(&f.ns, t, a, write(file, 50, 100, n + 1));
            chunks.extend([chunk(n), chunk(n + 1)]);
            n += 2;
        }
    }
    let linked = must_attr(&f.ns, t, a, mknod(f.app, "linked")).ino;
    must(&f.ns, t, a, write(linked, 0, 10, n));
    chunks.push(chunk(n));
    let dir0 = f.ns.lookup(f.app, b"dir0").unwrap().ino;
    must_attr(
        &f.ns,
        t,
        a,
        Op::Link {
            ino: linked,
            new_parent: dir0,
            new_name: b"second-name".to_vec(),
        },
    );
    must_attr(
        &f.ns,
        t,
        a,
        Op::Symlink {
            parent: f.app,
            name: b"ln".to_vec(),
            target: b"dir0/second-name".to_vec(),
            uid: 0,
            gid: 0,
        },
    );
    for ino in [f.app, linked] {
        must(
            &f.ns,
            t,
            a,
            Op::SetXattr {
                ino,
                name: b"user.k".to_vec(),
                value: b"v".to_vec(),
                flags: 0,
            },
        );
    }
    chunks
}

pub(crate) fn refs(ns: &Namespace, chunks: &[ChunkHash]) -> Vec<u64> {
    ns.chunk_refs(chunks)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

#[test]
fn a_clone_copies_only_metadata_appears_whole_and_each_side_then_changes_alone() {
    let f = fixture();
    let t = T0 + SEC;
    let chunks = fill(&f, t);
    let before_refs = refs(&f.ns, &chunks);
    let source = seen(&f.ns, f.app);

    let mut c = must_clone(&f.ns, t, start(f.app, ROOT_INO, "copy", None));
    assert_eq!(c.state, CloneState::Copying);
    let mut steps = 0;
    while c.state == CloneState::Copying {
        // Hidden until published, well formed at every step, and the source frozen.
        assert_eq!(
            f.ns.lookup(ROOT_INO, b"copy")
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err("ENOENT".to_string())
        );
        must_fsck_clean(&f.ns);
        let r = exec(&f.ns, t, Some("site-a"), None, mknod(f.app, "late"));
        assert!(matches!(r, Err(OpError::Frozen { .. })), "{r:?}");
        c = must_clone(
            &f.ns,
            t,
            Op::CloneStep {
                dst: c.dst,
                limit: 4,
            },
        );
        steps += 1;
    }
    assert_eq!(c.state, CloneState::Done);
    assert!(steps > 5, "bounded steps: {steps}");
    let copy = f.ns.lookup(ROOT_INO, b"copy").unwrap();
    assert_eq!(copy.ino, c.dst);
    assert_eq!(
        seen(&f.ns, c.dst),
        source,
        "the copy differs from its source"
    );
    // A hard link stays one inode with two names.
    let copied = seen(&f.ns, c.dst);
    assert_eq!(copied["/dir0/second-name"].same_as, "/linked".to_string());
    assert_eq!(copied["/dir0/second-name"].nlink, 2);
    assert_eq!(
        f.ns.lookup(c.dst, b"linked").unwrap().ino,
        f.ns.lookup(f.ns.lookup(c.dst, b"dir0").unwrap().ino, b"second-name")
            .unwrap()
            .ino
    );
    assert_eq!(f.ns.getxattr(c.dst, b"user.k").unwrap(), b"v");
    // Every chunk counted once more, nothing else: no data was copied.
    let after: Vec<u64> = refs(&f.ns, &chunks);
    assert_eq!(after, before_refs.iter().map(|n| n * 2).collect::<Vec<_>>());
    let (src_sub, dst_sub) = (f.ns.subtree(f.app).unwrap(), f.ns.subtree(c.dst).unwrap());
    assert_eq!(
        (dst_sub.owner.as_deref(), dst_sub.epoch, dst_sub.state),
        (Some("site-a"), 1, SubtreeState::Owned)
    );
    assert_eq!(
        (dst_sub.inodes, dst_sub.bytes),
        (src_sub.inodes, src_sub.bytes)
    );
    assert_eq!(dst_sub.path, "/copy");
    must_fsck_clean(&f.ns);

    // Thawed, and copy-on-write both ways.
    let a = Some("site-a");
    must_attr(&f.ns, t, a, mknod(f.app, "late"));
    let src_file = f.ns.lookup(f.app, b"linked").unwrap().ino;
    let dst_file = f.ns.lookup(c.dst, b"linked").unwrap().ino;
    must(&f.ns, t, a, write(dst_file, 0, 5, 200));
    must(&f.ns, t, a, write(src_file, 5, 5, 201));
    let (s, d) = (
        f.ns.read_slices(src_file, 0, 10).unwrap().0,
        f.ns.read_slices(dst_file, 0, 10).unwrap().0,
    );
    assert_eq!(s[0].chunk.unwrap().hash, *chunks.last().unwrap());
    assert_eq!(d[0].chunk.unwrap().hash, chunk(200));
    assert!(s.iter().any(|e| e.chunk.unwrap().hash == chunk(201)));
    assert!(d.iter().all(|e| e.chunk.unwrap().hash != chunk(201)));
    // Deleting the source's copy of a file leaves the clone's chunk counted.
    let dir =
        f.ns.lookup(f.ns.lookup(f.app, b"dir1").unwrap().ino, b"sub")
            .unwrap()
            .ino;
    must(
        &f.ns,
        t,
        a,
        Op::Unlink {
            parent: dir,
            name: b"f0".to_vec(),
            keep_open: false,
        },
    );
    let f0_chunk =
        f.ns.read_slices(
            f.ns.lookup(
                f.ns.lookup(f.ns.lookup(c.dst, b"dir1").unwrap().ino, b"sub")
                    .unwrap()
                    .ino,
                b"f0",
            )
            .unwrap()
            .ino,
            0,
            1,
        )
        .unwrap()
        .0[0]
            .chunk
            .unwrap()
            .hash;
    assert_eq!(refs(&f.ns, &[f0_chunk]), vec![1]);
    must_fsck_clean(&f.ns);
}

#[test]
fn a_clone_whose_steps_stop_thaws_its_source_and_is_removed_without_a_trace() {
    let f = fixture();
    let t = T0 + SEC;
    let chunks = fill(&f, t);
    let before_refs = refs(&f.ns, &chunks);
    let before = f.ns.fsck().unwrap();
    let c = must_clone(&f.ns, t, start(f.app, ROOT_INO, "copy", None));
    let c = must_clone(
        &f.ns,
        t,
        Op::CloneStep {
            dst: c.dst,
            limit: 7,
        },
    );
    assert_eq!(c.state, CloneState::Copying);
    must_fsck_clean(&f.ns);

    // No step for the freeze's length: writers go on (the site's lease renewed).
    let late = t + CLONE_LEASE_NS;
    heartbeat(&f.ns, late, "site-a");
    must_attr(&f.ns, late, Some("site-a"), mknod(f.app, "late"));
    // Its next step finds it abandoned.
    let c = must_clone(
        &f.ns,
        late,
        Op::CloneStep {
            dst: c.dst,
            limit: 7,
        },
    );
    assert_eq!(c.state, CloneState::Aborting, "{c:?}");
    assert!(c.why.contains("no step came"), "{}", c.why);
    let mut c = c;
    while c.state != CloneState::Gone {
        must_fsck_clean(&f.ns);
        c = must_clone(
            &f.ns,
            late,
            Op::AbortCloneStep {
                dst: c.dst,
                limit: 3,
            },
        );
    }
    must_fsck_clean(&f.ns);
    assert_eq!(refs(&f.ns, &chunks), before_refs);
    let after = f.ns.fsck().unwrap();
    // What is left is the source and its one new file.
    assert_eq!(
        (after.inodes, after.chunk_references),
        (before.inodes + 1, before.chunk_references)
    );
    assert!(f.ns.lookup(ROOT_INO, b"copy").is_err());
    assert!(f.ns.clones().unwrap().is_empty());
    assert!(exec(
        &f.ns,
        late,
        None,
        None,
        Op::CloneStep {
            dst: c.dst,
            limit: 1
        }
    )
    .is_err());

    // An operator's abort of a live clone: thawed at once, removed the same way.
    let c = must_clone(&f.ns, late, start(f.app, ROOT_INO, "copy", None));
    let mut c = must_clone(
        &f.ns,
        late,
        Op::AbortCloneStep {
            dst: c.dst,
            limit: 5,
        },
    );
    must_attr(&f.ns, late, Some("site-a"), mknod(f.app, "later"));
    while c.state != CloneState::Gone {
        c = must_clone(
            &f.ns,
            late,
            Op::AbortCloneStep {
                dst: c.dst,
                limit: 5,
            },
        );
    }
    assert_eq!(refs(&f.ns, &chunks), before_refs);
    must_fsck_clean(&f.ns);
}

#[test]
fn bad_clones_are_refused_with_the_reason_and_change_nothing() {
    let f = fixture();
    let t = T0 + SEC;
    fill(&f, t);
    let plain_dir = f.ns.lookup(ROOT_INO, b"shared").unwrap().ino;
    let inside = f.ns.lookup(f.app, b"dir0").unwrap().ino;
    let file_in_root = must_attr(&f.ns, t, None, mknod(ROOT_INO, "file")).ino;
    let before = f.ns.fsck().unwrap();
    let cases: Vec<(Op, Errno)> = vec![
        (start(ROOT_INO, ROOT_INO, "x", None), Errno::EINVAL),
        (start(plain_dir, ROOT_INO, "x", None), Errno::EINVAL),
        (start(9_999, ROOT_INO, "x", None), Errno::EINVAL),
        (start(f.app, inside, "x", None), Errno::EINVAL),
        (start(f.app, f.app, "x", None), Errno::EINVAL),
        (start(f.app, file_in_root, "x", None), Errno::ENOTDIR),
        (start(f.app, 9_999, "x", None), Errno::ENOENT),
        (start(f.app, ROOT_INO, "shared", None), Errno::EEXIST),
        (start(f.app, ROOT_INO, "a/b", None), Errno::EINVAL),
        (start(f.app, ROOT_INO, "", None), Errno::EINVAL),
        (start(f.app, ROOT_INO, "..", None), Errno::EEXIST),
        (
            Op::CloneStep {
                dst: f.app,
                limit: 1,
            },
            Errno::ENOENT,
        ),
        (
            Op::AbortCloneStep {
                dst: 9_999,
                limit: 1,
            },
            Errno::ENOENT,
        ),
    ];
    for (op, errno) in cases {
        let name = format!("{op:?}");
        let r = exec(&f.ns, t, None, None, op);
        assert_eq!(errno_of(&r), Some(errno.0), "{name}: {r:?}");
    }
    let r = exec(
        &f.ns,
        t,
        None,
        None,
        start(f.app, ROOT_INO, "x", Some("site-z")),
    );
    assert!(matches!(r, Err(OpError::UnknownSite(_))), "{r:?}");
    assert_eq!(f.ns.fsck().unwrap(), before);

    // While one is being made: a second of the source, a second into the same name, the
    // parent's removal and the copy's relabel are refused; so is a delegation of the
    // source (its holder would answer changes that cannot commit).
    must_attr(&f.ns, t, None, mkdir(plain_dir, "into"));
    let into = f.ns.lookup(plain_dir, b"into").unwrap().ino;
    let c = must_clone(&f.ns, t, start(f.app, into, "x", Some("site-b")));
    for (op, errno) in [
        (start(f.app, ROOT_INO, "y", None), Errno::EBUSY),
        (
            Op::Rmdir {
                parent: plain_dir,
                name: b"into".to_vec(),
            },
            Errno::EBUSY,
        ),
        (
            Op::RelabelSubtree {
                root: c.dst,
                limit: 10,
            },
            Errno::EBUSY,
        ),
    ] {
        let name = format!("{op:?}");
        let r = exec(&f.ns, t, None, None, op);
        assert_eq!(errno_of(&r), Some(errno.0), "{name}: {r:?}");
    }
    let session = match must(&f.ns, t, Some("site-a"), Op::OpenSession) {
        OpReply::Session { id, .. } => id,
        other => panic!("{other:?}"),
    };
    let r = exec(
        &f.ns,
        t,
        Some("site-a"),
        None,
        Op::AcquireDelegation {
            session,
            subtree: f.app,
        },
    );
    assert!(matches!(r, Err(OpError::Frozen { .. })), "{r:?}");
    // Another subtree may be cloned into the same name meanwhile, not published twice.
    let c = must_step_to_end(&f.ns, t, c);
    assert_eq!(c.state, CloneState::Done);
    // Owned by site-b: site-a may read it, not change it.
    let r = exec(&f.ns, t, Some("site-a"), None, mknod(c.dst, "n"));
    assert!(matches!(r, Err(OpError::NotOwner { .. })), "{r:?}");
    must_attr(&f.ns, t, Some("site-b"), mknod(c.dst, "n"));
    must_fsck_clean(&f.ns);
}

/// A name taken while the clone copies: the last step cannot publish, so the clone
/// aborts and is removed; nothing half-made shows.
#[test]
fn a_clone_whose_name_is_taken_meanwhile_aborts() {
    let f = fixture();
    let t = T0 + SEC;
    fill(&f, t);
    let c = must_clone(&f.ns, t, start(f.app, ROOT_INO, "copy", None));
    let taken = must_attr(&f.ns, t, None, mkdir(ROOT_INO, "copy")).ino;
    let mut c = must_step_to_end(&f.ns, t, c);
    assert_eq!(c.state, CloneState::Aborting);
    assert!(c.why.contains("name was taken"), "{}", c.why);
    while c.state != CloneState::Gone {
        c = must_clone(
            &f.ns,
            t,
            Op::AbortCloneStep {
                dst: c.dst,
                limit: 100,
            },
        );
    }
    assert_eq!(f.ns.lookup(ROOT_INO, b"copy").unwrap().ino, taken);
    must_fsck_clean(&f.ns);
}

/// A site's data node heartbeat, through the real service, every second until dropped:
/// the site's lease stays valid however long the test runs.
fn heartbeats(client: &mobilus_meta_client::MetaClient, site: &str) -> tokio::task::JoinHandle<()> {
    let (client, site) = (client.clone(), site.to_string());
    tokio::spawn(async move {
        loop {
            let node = mobilus_proto::fs::DataNodeInfo {
                site: site.clone(),
                addr: format!("{site}.example:7200"),
                capacity_bytes: 0,
                used_bytes: 0,
                last_heartbeat_ns: 0,
                draining: false,
                site_replicas: 0,
                workers: Vec::new(),
            };
            let _ = client.register_data_node(&node).await;
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    })
}

/// Through real members: a clone stepped across a leader's SIGKILL is published whole
/// or removed, and holds exactly the source as it was when the clone began: a writer
/// creating files one after another meanwhile finds its creates held (retried) until
/// the clone is published, so the copy holds a prefix of them that includes every
/// create acknowledged before the clone started.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clone_across_a_leader_kill_is_whole_or_absent_and_holds_one_point_of_its_source() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let mut cluster = crate::harness::Cluster::start(3, &[]).await;
    let admin = cluster.client();
    let beating = heartbeats(&admin, "site-a");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let app = admin
        .mkdir(ROOT_INO, b"app", 0o755, 0, 0, None)
        .await
        .unwrap()
        .ino;
    admin.create_subtree(app, "site-a").await.unwrap();
    let site_a = mobilus_meta_client::MetaClient::new(
        &cluster.addrs(),
        mobilus_meta_client::ClientOptions {
            site: Some("site-a".into()),
            ..crate::harness::opts()
        },
    )
    .unwrap();
    const DIRS: usize = 20;
    const FILES: usize = 100;
    let mut made = tokio::task::JoinSet::new();
    for d in 0..DIRS {
        let c = site_a.clone();
        made.spawn(async move {
            let dir = c
                .mkdir(app, format!("d{d}").as_bytes(), 0o755, 0, 0, None)
                .await
                .unwrap()
                .ino;
            for i in 0..FILES {
                c.mknod(
                    dir,
                    format!("f{i}").as_bytes(),
                    FileKind::Regular,
                    0o644,
                    0,
                    0,
                    0,
                    None,
                )
                .await
                .unwrap();
            }
        });
    }
    while let Some(r) = made.join_next().await {
        r.unwrap();
    }
    let writes = site_a
        .mkdir(app, b"writes", 0o755, 0, 0, None)
        .await
        .unwrap()
        .ino;
    let (acked, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let writer = {
        let (c, acked, stop) = (site_a.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                c.mknod(
                    writes,
                    format!("w{i}").as_bytes(),
                    FileKind::Regular,
                    0o644,
                    0,
                    0,
                    0,
                    None,
                )
                .await
                .expect("a create is held by the freeze, never refused");
                i += 1;
                acked.store(i, Ordering::SeqCst);
            }
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let mut killed = false;
    let (done, acked_before) = loop {
        let acked_before = acked.load(Ordering::SeqCst);
        let mut c = admin
            .start_clone(app, ROOT_INO, b"copy", None)
            .await
            .unwrap();
        let mut steps = 0;
        while c.state == CloneState::Copying {
            c = admin.clone_step(c.dst, 100).await.unwrap();
            steps += 1;
            if steps == 5 && !killed {
                let leader = cluster.must_leader().await;
                cluster.members[leader].kill();
                killed = true;
            }
        }
        if c.state == CloneState::Done {
            break (c, acked_before);
        }
        // Abandoned across the election: removed, then made again.
        while c.state != CloneState::Gone {
            c = admin.abort_clone_step(c.dst, 100).await.unwrap();
        }
        assert!(admin.lookup(ROOT_INO, b"copy", false).await.is_err());
    };
    assert!(killed);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();

    let copy = admin.lookup(ROOT_INO, b"copy", false).await.unwrap().ino;
    assert_eq!(copy, done.dst);
    let mut files = 0;
    for d in 0..DIRS {
        let dir = admin
            .lookup(copy, format!("d{d}").as_bytes(), false)
            .await
            .unwrap()
            .ino;
        files += admin.readdir_all(dir, false).await.unwrap().len();
    }
    assert_eq!(files, DIRS * FILES);
    let copied_writes = admin
        .readdir_all(
            admin.lookup(copy, b"writes", false).await.unwrap().ino,
            false,
        )
        .await
        .unwrap();
    let k = copied_writes.len() as u64;
    let names: std::collections::BTreeSet<Vec<u8>> =
        copied_writes.into_iter().map(|e| e.name).collect();
    let prefix: std::collections::BTreeSet<Vec<u8>> =
        (0..k).map(|i| format!("w{i}").into_bytes()).collect();
    assert_eq!(
        names, prefix,
        "the copy holds a prefix of the writer's creates"
    );
    assert!(
        k >= acked_before,
        "{k} copied, {acked_before} acknowledged before"
    );
    let all = admin.readdir_all(writes, false).await.unwrap().len() as u64;
    assert!(all > k, "the writer went on after the clone: {all} > {k}");
    let report = admin.fsck().await.unwrap();
    assert_eq!(report.problems, Vec::<String>::new());
    beating.abort();
}

/// The copy's creates of a writer that made `x/w0`, `y/w1`, then (while the clone was
/// half done) `x/a`, `y/b`, one after another, on a one-member cluster started with
/// `flags`; and which of the late creates were acknowledged.
async fn copy_of_two_moments(flags: &[&str]) -> (Vec<String>, Vec<bool>) {
    let cluster = crate::harness::Cluster::start(1, flags).await;
    let admin = cluster.client();
    let beating = heartbeats(&admin, "site-a");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let app = admin
        .mkdir(ROOT_INO, b"app", 0o755, 0, 0, None)
        .await
        .unwrap()
        .ino;
    admin.create_subtree(app, "site-a").await.unwrap();
    // Asks once: a create refused as frozen is not retried until the clone is done.
    let site_a = mobilus_meta_client::MetaClient::new(
        &cluster.addrs(),
        mobilus_meta_client::ClientOptions {
            site: Some("site-a".into()),
            deadline: std::time::Duration::from_millis(200),
            ..crate::harness::opts()
        },
    )
    .unwrap();
    let mk = |parent: InodeId, name: &'static str| {
        let c = site_a.clone();
        async move {
            c.mknod(
                parent,
                name.as_bytes(),
                FileKind::Regular,
                0o644,
                0,
                0,
                0,
                None,
            )
            .await
            .is_ok()
        }
    };
    let x = site_a
        .mkdir(app, b"x", 0o755, 0, 0, None)
        .await
        .unwrap()
        .ino;
    let y = site_a
        .mkdir(app, b"y", 0o755, 0, 0, None)
        .await
        .unwrap()
        .ino;
    assert!(mk(x, "w0").await && mk(y, "w1").await);
    let c = admin
        .start_clone(app, ROOT_INO, b"copy", None)
        .await
        .unwrap();
    // Step 1 copies x and y; step 2 copies x's entries and starts on y's.
    let c = admin.clone_step(c.dst, 2).await.unwrap();
    let mut c = admin.clone_step(c.dst, 2).await.unwrap();
    let late = vec![mk(x, "a").await, mk(y, "b").await];
    while c.state == CloneState::Copying {
        c = admin.clone_step(c.dst, 100).await.unwrap();
    }
    assert_eq!(c.state, CloneState::Done);
    let mut names = Vec::new();
    for dir in [b"x".as_slice(), b"y"] {
        let d = admin.lookup(c.dst, dir, false).await.unwrap().ino;
        for e in admin.readdir_all(d, false).await.unwrap() {
            names.push(String::from_utf8_lossy(&e.name).into_owned());
        }
    }
    names.sort();
    beating.abort();
    (names, late)
}

/// Is `copy` one moment of the writer's history `w0, w1, a, b`: a prefix of the creates
/// that were acknowledged?
fn one_moment(copy: &[String], late: &[bool]) -> bool {
    let history: Vec<&str> = ["w0", "w1", "a", "b"]
        .into_iter()
        .zip([true, true, late[0], late[1]])
        .filter(|(_, done)| *done)
        .map(|(n, _)| n)
        .collect();
    (0..=history.len()).any(|k| {
        let mut prefix: Vec<String> = history[..k].iter().map(|s| s.to_string()).collect();
        prefix.sort();
        prefix == copy
    })
}

/// The freeze is what makes the copy one moment: with it, the late creates wait and the
/// copy is the source as the clone began; with it deliberately broken
/// (`--unsafe-no-clone-freeze`), the copy holds `b` but not `a`, made before it, and the
/// check says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_freeze_a_clone_mixes_two_moments_and_the_check_sees_it() {
    let (copy, late) = copy_of_two_moments(&[]).await;
    assert_eq!(late, vec![false, false], "creates refused while frozen");
    assert_eq!(copy, vec!["w0", "w1"]);
    assert!(one_moment(&copy, &late));
    let (copy, late) = copy_of_two_moments(&["--unsafe-no-clone-freeze"]).await;
    assert_eq!(late, vec![true, true]);
    assert_eq!(copy, vec!["b", "w0", "w1"]);
    assert!(
        !one_moment(&copy, &late),
        "the check must catch a mixed copy"
    );
}

/// Empty directory `dir` (a subtree's root stays) as its owner would, deepest first.
fn remove_all(ns: &Namespace, t: i64, site: Option<&str>, dir: InodeId) {
    let (entries, _) = ns.readdir(dir, 0, 0, false).unwrap();
    for e in entries {
        let op = if e.kind == FileKind::Directory {
            remove_all(ns, t, site, e.ino);
            Op::Rmdir {
                parent: dir,
                name: e.name,
            }
        } else {
            Op::Unlink {
                parent: dir,
                name: e.name,
                keep_open: false,
            }
        };
        must(ns, t, site, op);
    }
}

/// GC's view: emptying the source leaves every chunk counted by the clone, and emptying
/// the clone too leaves them all unreferenced (condemnable); either order.
#[test]
fn emptying_the_source_or_the_clone_keeps_the_others_chunks_and_both_free_them() {
    for source_first in [true, false] {
        let f = fixture();
        let t = T0 + SEC;
        let chunks = fill(&f, t);
        let c = must_clone_whole(&f.ns, t, start(f.app, ROOT_INO, "copy", None));
        let (first, second) = if source_first {
            (f.app, c.dst)
        } else {
            (c.dst, f.app)
        };
        remove_all(&f.ns, t, Some("site-a"), first);
        assert!(
            refs(&f.ns, &chunks).iter().all(|n| *n == 1),
            "the other side holds every chunk once"
        );
        assert!(f
            .ns
            .chunk_refs(&chunks)
            .unwrap()
            .iter()
            .all(|(_, zero)| *zero == 0));
        remove_all(&f.ns, t, Some("site-a"), second);
        let after = f.ns.chunk_refs(&chunks).unwrap();
        assert!(
            after.iter().all(|(n, zero)| *n == 0 && *zero == t),
            "every chunk unreferenced since {t}: {after:?}"
        );
        must_fsck_clean(&f.ns);
    }
}

/// `subtree status`'s usage: a clone shares every chunk, so deleting either side would
/// free nothing until one side changes; its own new chunks are its alone.
#[test]
fn usage_says_what_deleting_a_subtree_or_its_clone_would_free() {
    let f = fixture();
    let t = T0 + SEC;
    let chunks = fill(&f, t);
    let u = f.ns.subtree_usage(f.app).unwrap();
    assert_eq!((u.files, u.chunks), (14, chunks.len() as u64), "{u:?}");
    assert_eq!(
        (u.exclusive_chunks, u.exclusive_bytes),
        (u.chunks, u.referenced_bytes)
    );
    assert_eq!(u.logical_bytes, f.ns.subtree(f.app).unwrap().bytes);
    let c = must_clone_whole(&f.ns, t, start(f.app, ROOT_INO, "copy", None));
    for root in [f.app, c.dst] {
        let u = f.ns.subtree_usage(root).unwrap();
        assert_eq!(
            (u.chunks, u.exclusive_chunks, u.exclusive_bytes),
            (chunks.len() as u64, 0, 0)
        );
    }
    // The copy's own write is its alone; a file deleted in the source leaves its chunks
    // to the copy alone.
    let a = Some("site-a");
    let linked = f.ns.lookup(c.dst, b"linked").unwrap().ino;
    must(&f.ns, t, a, write(linked, 100, 1000, 250));
    must(
        &f.ns,
        t,
        a,
        Op::Unlink {
            parent: f.app,
            name: b"linked".to_vec(),
            keep_open: false,
        },
    );
    let dir0 = f.ns.lookup(f.app, b"dir0").unwrap().ino;
    must(
        &f.ns,
        t,
        a,
        Op::Unlink {
            parent: dir0,
            name: b"second-name".to_vec(),
            keep_open: false,
        },
    );
    let u = f.ns.subtree_usage(c.dst).unwrap();
    assert_eq!(
        (u.exclusive_chunks, u.exclusive_bytes),
        (2, 10 + 1000),
        "{u:?}"
    );
    assert_eq!(f.ns.subtree_usage(f.app).unwrap().exclusive_chunks, 0);
}
