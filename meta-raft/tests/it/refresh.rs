//! Refresh (`namespace::refresh`): a clone brought up to date with its source for every
//! file only the source changed; files changed on both sides listed and left alone.

use mobilus_meta::namespace::{Namespace, CLONE_LEASE_NS};
use mobilus_meta::types::{Op, OpError};
use mobilus_proto::fs::{CloneInfo, CloneState, InodeId, SetAttr, ROOT_INO};
use mobilus_proto::status::Errno;

use crate::clone::{errno_of, fill, must_clone, must_clone_whole, start, write};
use crate::ownership::{
    exec, fixture, heartbeat, mknod, must, must_attr, must_fsck_clean, SEC, T0,
};

/// `path` (`/`-separated, relative) under `dir`.
fn at(ns: &Namespace, dir: InodeId, path: &str) -> InodeId {
    path.split('/')
        .fold(dir, |d, name| ns.lookup(d, name.as_bytes()).unwrap().ino)
}

fn run_to_end(ns: &Namespace, t: i64, mut c: CloneInfo) -> CloneInfo {
    while c.state == CloneState::Refreshing {
        c = must_clone(
            ns,
            t,
            Op::CloneStep {
                dst: c.dst,
                limit: 3,
            },
        );
    }
    c
}

#[test]
fn a_refresh_takes_what_only_the_source_changed_and_lists_what_both_did() {
    let f = fixture();
    let t = T0 + SEC;
    let a = Some("site-a");
    fill(&f, t);
    let c = must_clone_whole(&f.ns, t, start(f.app, ROOT_INO, "copy", None));
    let (src, copy) = (f.app, c.dst);
    let chmod = |ino| Op::SetAttr {
        ino,
        set: SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        },
    };
    let truncate = |ino| Op::SetAttr {
        ino,
        set: SetAttr {
            size: Some(10),
            ..SetAttr::default()
        },
    };
    // The source only: a write, a chmod, a truncate. The clone only: a write. Both: a
    // write each. Gone from the source: one. New in the source: one (not added).
    must(
        &f.ns,
        t,
        a,
        write(at(&f.ns, src, "dir0/sub/f0"), 0, 20, 150),
    );
    must(&f.ns, t, a, chmod(at(&f.ns, src, "dir1/sub/f0")));
    must(&f.ns, t, a, truncate(at(&f.ns, src, "dir1/sub/f1")));
    must(
        &f.ns,
        t,
        a,
        write(at(&f.ns, copy, "dir0/sub/f1"), 0, 20, 151),
    );
    must(
        &f.ns,
        t,
        a,
        write(at(&f.ns, src, "dir0/sub/f2"), 0, 20, 152),
    );
    must(
        &f.ns,
        t,
        a,
        write(at(&f.ns, copy, "dir0/sub/f2"), 0, 20, 153),
    );
    let sub = at(&f.ns, src, "dir1/sub");
    must(
        &f.ns,
        t,
        a,
        Op::Unlink {
            parent: sub,
            name: b"f2".to_vec(),
            keep_open: false,
        },
    );
    must_attr(&f.ns, t, a, mknod(at(&f.ns, src, "dir2"), "new"));

    let r = must_clone(&f.ns, t, Op::StartRefresh { dst: copy });
    assert_eq!(r.state, CloneState::Refreshing);
    // Both sides frozen while it runs.
    for ino in [src, copy] {
        let e = exec(&f.ns, t, a, None, mknod(ino, "late"));
        assert!(matches!(e, Err(OpError::Frozen { .. })), "{e:?}");
    }
    let again = exec(&f.ns, t, None, None, Op::StartRefresh { dst: copy });
    assert_eq!(errno_of(&again), Some(Errno::EBUSY.0), "{again:?}");
    let done = run_to_end(&f.ns, t, r);
    assert_eq!(done.state, CloneState::Done, "{done:?}");
    let r = done.refresh.unwrap();
    let f2 = at(&f.ns, copy, "dir0/sub/f2");
    assert_eq!(
        (
            r.files,
            r.refreshed,
            r.kept,
            r.gone,
            r.conflict_count,
            r.conflicts.clone()
        ),
        (14, 3, 1, 1, 1, vec![f2]),
        "{r:?}"
    );
    let same = |path: &str| {
        let (s, c) = (at(&f.ns, src, path), at(&f.ns, copy, path));
        let (sa, ca) = (f.ns.getattr(s).unwrap(), f.ns.getattr(c).unwrap());
        (sa.size, sa.mode, sa.mtime_ns) == (ca.size, ca.mode, ca.mtime_ns)
            && f.ns.read_slices(s, 0, 1 << 20).unwrap().0
                == f.ns.read_slices(c, 0, 1 << 20).unwrap().0
    };
    for path in ["dir0/sub/f0", "dir1/sub/f0", "dir1/sub/f1", "dir0/sub/f3"] {
        assert!(same(path), "{path} was not refreshed");
    }
    for path in ["dir0/sub/f1", "dir0/sub/f2"] {
        assert!(!same(path), "{path} was overwritten");
    }
    assert!(f.ns.lookup(at(&f.ns, copy, "dir1/sub"), b"f2").is_ok());
    assert!(f.ns.lookup(at(&f.ns, copy, "dir2"), b"new").is_err());
    must_fsck_clean(&f.ns);
    // Thawed; and a second refresh finds nothing new to take.
    must_attr(&f.ns, t, a, mknod(copy, "after"));
    let r2 = run_to_end(
        &f.ns,
        t,
        must_clone(&f.ns, t, Op::StartRefresh { dst: copy }),
    );
    let r2 = r2.refresh.unwrap();
    assert_eq!(
        (r2.refreshed, r2.kept, r2.conflict_count),
        (0, 1, 1),
        "{r2:?}"
    );

    // Not a clone: refused.
    for dst in [src, 9_999] {
        let e = exec(&f.ns, t, None, None, Op::StartRefresh { dst });
        assert_eq!(errno_of(&e), Some(Errno::EINVAL.0), "{e:?}");
    }
    // A refresh whose steps stop: both thaw after the freeze; its next step ends it.
    let r = must_clone(&f.ns, t, Op::StartRefresh { dst: copy });
    let late = t + CLONE_LEASE_NS;
    heartbeat(&f.ns, late, "site-a");
    must_attr(&f.ns, late, a, mknod(src, "thawed"));
    let stopped = must_clone(
        &f.ns,
        late,
        Op::CloneStep {
            dst: r.dst,
            limit: 3,
        },
    );
    assert_eq!(stopped.state, CloneState::Gone, "{stopped:?}");
    assert!(f.ns.clones().unwrap().is_empty());
    assert_eq!(
        f.ns.lookup(ROOT_INO, b"copy").unwrap().ino,
        copy,
        "the clone stays"
    );
    must_fsck_clean(&f.ns);
}
