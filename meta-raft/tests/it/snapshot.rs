//! Snapshots (`namespace::snapshot`): read-only clones named in the subtree's
//! `.snapshots`, which keep their chunks counted until removed.

use mobilus_meta::types::{Op, OpReply};
use mobilus_proto::fs::{
    CloneState, FileKind, InodeId, SetAttr, ROOT_INO, SNAPSHOTS_DIR, SNAPSHOTS_DIR_BIT,
};
use mobilus_proto::status::Errno;

use crate::clone::{errno_of, fill, must_clone, must_clone_whole, refs, seen, start, write};
use crate::ownership::{
    exec, fixture, mkdir, mknod, must, must_attr, must_fsck_clean, Fixture, SEC, T0,
};

fn snapshot(f: &Fixture, t: i64, name: &str) -> InodeId {
    let mut c = must_clone(
        &f.ns,
        t,
        Op::StartClone {
            src: f.app,
            parent: f.app,
            name: name.into(),
            owner: None,
            snapshot: true,
        },
    );
    while c.state == CloneState::Copying {
        c = must_clone(
            &f.ns,
            t,
            Op::CloneStep {
                dst: c.dst,
                limit: 5,
            },
        );
    }
    assert_eq!(c.state, CloneState::Done);
    c.dst
}

#[test]
fn a_snapshot_is_the_subtree_as_it_was_read_only_under_dot_snapshots() {
    let f = fixture();
    let t = T0 + SEC;
    let chunks = fill(&f, t);
    let before = seen(&f.ns, f.app);
    let s1 = snapshot(&f, t, "s1");
    must_fsck_clean(&f.ns);
    // Reached by lookup, not listed in the root.
    let dir = f.ns.lookup(f.app, SNAPSHOTS_DIR).unwrap();
    assert_eq!(
        (dir.ino, dir.kind, dir.mode),
        (f.app | SNAPSHOTS_DIR_BIT, FileKind::Directory, 0o555)
    );
    assert_eq!(f.ns.getattr(dir.ino).unwrap(), dir);
    let (listed, _) = f.ns.readdir(f.app, 0, 0, false).unwrap();
    assert!(listed.iter().all(|e| e.name != SNAPSHOTS_DIR));
    assert_eq!(f.ns.lookup(dir.ino, b"s1").unwrap().ino, s1);
    assert_eq!(f.ns.lookup(dir.ino, b"..").unwrap().ino, f.app);
    assert_eq!(f.ns.lookup(s1, b"..").unwrap().ino, dir.ino);
    assert_eq!(seen(&f.ns, s1), before);
    assert_eq!(
        f.ns.getxattr(dir.ino, b"user.k").map_err(|e| e.to_string()),
        Err("ENODATA".into())
    );
    assert!(f.ns.listxattr(dir.ino).unwrap().is_empty());
    assert!(
        f.ns.lookup(ROOT_INO, SNAPSHOTS_DIR).is_err(),
        "the shared root has none"
    );
    assert_eq!(f.ns.subtree(s1).unwrap().path, "/app/.snapshots/s1");

    // The source goes on; the snapshot stays as it was, and keeps its chunks counted.
    let a = Some("site-a");
    let linked = f.ns.lookup(f.app, b"linked").unwrap().ino;
    must(&f.ns, t, a, write(linked, 0, 10, 99));
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
    assert_eq!(seen(&f.ns, s1), before);
    assert!(
        refs(&f.ns, &chunks).iter().all(|n| *n >= 1),
        "a snapshot keeps every chunk"
    );
    let s2 = snapshot(&f, t, "s2");
    let (names, _) = f.ns.readdir(dir.ino, 0, 0, true).unwrap();
    let names: Vec<_> = names.iter().map(|e| (e.name.clone(), e.ino)).collect();
    assert_eq!(names, vec![(b"s1".to_vec(), s1), (b"s2".to_vec(), s2)]);
    let listed: Vec<_> =
        f.ns.snapshots(f.app)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
    assert_eq!(listed, vec![b"s1".to_vec(), b"s2".to_vec()]);

    // Read-only for every site, and so is `.snapshots`; no delegation of it either.
    let file = f.ns.lookup(s1, b"linked").unwrap().ino;
    for op in [
        mknod(s1, "new"),
        mknod(dir.ino, "new"),
        mkdir(dir.ino, "s3"),
        write(file, 0, 1, 1),
        Op::SetAttr {
            ino: file,
            set: SetAttr {
                mode: Some(0o600),
                ..SetAttr::default()
            },
        },
        Op::Unlink {
            parent: s1,
            name: b"linked".to_vec(),
            keep_open: false,
        },
        Op::Rmdir {
            parent: dir.ino,
            name: b"s1".to_vec(),
        },
    ] {
        for site in [a, Some("site-b"), None] {
            let name = format!("{op:?} from {site:?}");
            let r = exec(&f.ns, t, site, None, op.clone());
            assert_eq!(errno_of(&r), Some(Errno::EROFS.0), "{name}: {r:?}");
        }
    }
    let session = match must(&f.ns, t, a, Op::OpenSession) {
        OpReply::Session { id, .. } => id,
        other => panic!("{other:?}"),
    };
    let r = exec(
        &f.ns,
        t,
        a,
        None,
        Op::AcquireDelegation {
            session,
            subtree: s1,
        },
    );
    assert_eq!(errno_of(&r), Some(Errno::EROFS.0), "{r:?}");
    // `.snapshots` cannot be made in a subtree's root, nor a snapshot named twice.
    for op in [mkdir(f.app, ".snapshots"), mknod(f.app, ".snapshots")] {
        let r = exec(&f.ns, t, a, None, op);
        assert_eq!(errno_of(&r), Some(Errno::EEXIST.0), "{r:?}");
    }
    let again = exec(
        &f.ns,
        t,
        None,
        None,
        Op::StartClone {
            src: f.app,
            parent: f.app,
            name: b"s1".to_vec(),
            owner: None,
            snapshot: true,
        },
    );
    assert_eq!(errno_of(&again), Some(Errno::EEXIST.0), "{again:?}");
    must_fsck_clean(&f.ns);

    // Restored as a new subtree: a clone of the snapshot, writable.
    let c = must_clone_whole(&f.ns, t, start(s1, ROOT_INO, "restored", None));
    assert_eq!(seen(&f.ns, c.dst), before);
    must_attr(&f.ns, t, a, mknod(c.dst, "writable"));

    // Removed: gone from `.snapshots` at once, its tree removed step by step, its chunks
    // released; the other snapshot stays whole.
    let mut c = must_clone(
        &f.ns,
        t,
        Op::RemoveSnapshot {
            src: f.app,
            name: b"s1".to_vec(),
        },
    );
    assert!(f.ns.lookup(dir.ino, b"s1").is_err());
    while c.state != CloneState::Gone {
        must_fsck_clean(&f.ns);
        c = must_clone(
            &f.ns,
            t,
            Op::AbortCloneStep {
                dst: c.dst,
                limit: 4,
            },
        );
    }
    let r = exec(
        &f.ns,
        t,
        None,
        None,
        Op::RemoveSnapshot {
            src: f.app,
            name: b"s1".to_vec(),
        },
    );
    assert_eq!(errno_of(&r), Some(Errno::ENOENT.0), "{r:?}");
    assert!(f.ns.getattr(s1).is_err());
    assert_eq!(f.ns.snapshots(f.app).unwrap().len(), 1);
    must_fsck_clean(&f.ns);
}
