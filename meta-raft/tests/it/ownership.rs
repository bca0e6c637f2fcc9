//! Subtree ownership in the state machine: the one check every mutation passes, leases in
//! log time, creating a subtree over an existing tree, moves and takeovers.

use std::collections::BTreeSet;

use mobilus_meta::namespace::{Namespace, SITE_LEASE_NS};
use mobilus_meta::types::{Command, Op, OpError, OpReply, Reply, Touches};
use mobilus_proto::fs::{
    Attr, ChunkHash, ChunkRef, DataNodeInfo, Fence, FileKind, InodeId, SetAttr, SliceWrite,
    SubtreeInfo, SubtreeState, RENAME_KEEP_OPEN, ROOT_INO,
};
use mobilus_proto::status::Errno;

pub(crate) const SEC: i64 = 1_000_000_000;
/// The time the fixtures start at.
pub(crate) const T0: i64 = 1_000 * SEC;

pub(crate) fn exec(
    ns: &Namespace,
    t: i64,
    site: Option<&str>,
    fence: Option<Fence>,
    op: Op,
) -> Reply {
    ns.execute(&Command {
        time_ns: t,
        site: site.map(str::to_string),
        session: None,
        holder_only: false,
        fence,
        op,
    })
    .expect("store")
}

pub(crate) fn must(ns: &Namespace, t: i64, site: Option<&str>, op: Op) -> OpReply {
    let name = op.name();
    exec(ns, t, site, None, op).unwrap_or_else(|e| panic!("{name}: {e}"))
}

pub(crate) fn must_attr(ns: &Namespace, t: i64, site: Option<&str>, op: Op) -> Attr {
    match must(ns, t, site, op) {
        OpReply::Attr(a) => a,
        other => panic!("not an attr: {other:?}"),
    }
}

pub(crate) fn must_subtree(ns: &Namespace, t: i64, op: Op) -> SubtreeInfo {
    match must(ns, t, None, op) {
        OpReply::Subtree(s) => s,
        other => panic!("not a subtree: {other:?}"),
    }
}

pub(crate) fn mkdir(parent: InodeId, name: &str) -> Op {
    Op::Mkdir {
        parent,
        name: name.into(),
        mode: 0o755,
        uid: 0,
        gid: 0,
    }
}

pub(crate) fn mknod(parent: InodeId, name: &str) -> Op {
    Op::Mknod {
        parent,
        name: name.into(),
        kind: FileKind::Regular,
        mode: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
    }
}

/// A heartbeat of `site`'s data node: registers the site and renews its lease.
pub(crate) fn heartbeat(ns: &Namespace, t: i64, site: &str) {
    register(ns, t, site, &format!("{site}.example:7000"));
}

/// A heartbeat of the data node at `addr` of `site`.
pub(crate) fn register(ns: &Namespace, t: i64, site: &str, addr: &str) {
    must(
        ns,
        t,
        None,
        Op::RegisterDataNode {
            node: DataNodeInfo {
                site: site.into(),
                addr: addr.into(),
                capacity_bytes: 0,
                used_bytes: 0,
                last_heartbeat_ns: 0,
                draining: false,
                site_replicas: 0,
                workers: Vec::new(),
            },
        },
    );
}

pub(crate) fn must_fsck_clean(ns: &Namespace) {
    let r = ns.fsck().unwrap();
    assert_eq!(r.problem_count, 0, "fsck: {:?}", r.problems);
}

/// `/app` owned by site-a (holding file `f`, directory `d`, and `shared/` beside it in
/// the root), both sites registered at `T0`.
pub(crate) struct Fixture {
    pub ns: Namespace,
    pub app: InodeId,
    pub file: InodeId,
    pub shared: InodeId,
    /// A block of inode numbers reserved for session [`SESSION`].
    pub reserved: InodeId,
}

/// The session the fixture reserves inode numbers for.
pub(crate) const SESSION: u64 = 7;

pub(crate) fn fixture() -> Fixture {
    let ns = Namespace::in_memory().unwrap();
    heartbeat(&ns, T0, "site-a");
    heartbeat(&ns, T0, "site-b");
    let app = must_attr(&ns, T0, None, mkdir(ROOT_INO, "app")).ino;
    let shared = must_attr(&ns, T0, None, mkdir(ROOT_INO, "shared")).ino;
    let s = must_subtree(
        &ns,
        T0,
        Op::CreateSubtree {
            root: app,
            owner: "site-a".into(),
        },
    );
    assert_eq!((s.state, s.epoch), (SubtreeState::Owned, 1));
    let file = must_attr(&ns, T0, Some("site-a"), mknod(app, "f")).ino;
    must_attr(&ns, T0, Some("site-a"), mkdir(app, "d"));
    let reserved = match must(
        &ns,
        T0,
        Some("site-a"),
        Op::ReserveInodes { session: SESSION },
    ) {
        OpReply::Inodes { first, .. } => first,
        other => panic!("not inodes: {other:?}"),
    };
    Fixture {
        ns,
        app,
        file,
        shared,
        reserved,
    }
}

/// One of every operation that changes a subtree's contents, all aimed at `/app`.
pub(crate) fn every_mutation(f: &Fixture) -> Vec<Op> {
    vec![
        mknod(f.app, "new"),
        mkdir(f.app, "newdir"),
        Op::Symlink {
            parent: f.app,
            name: b"ln".to_vec(),
            target: b"f".to_vec(),
            uid: 0,
            gid: 0,
        },
        Op::Link {
            ino: f.file,
            new_parent: f.app,
            new_name: b"f2".to_vec(),
        },
        Op::Unlink {
            parent: f.app,
            name: b"f".to_vec(),
            keep_open: false,
        },
        Op::Rmdir {
            parent: f.app,
            name: b"d".to_vec(),
        },
        Op::Rename {
            parent: f.app,
            name: b"f".to_vec(),
            new_parent: f.app,
            new_name: b"g".to_vec(),
            flags: 0,
        },
        Op::SetAttr {
            ino: f.file,
            set: SetAttr {
                mode: Some(0o600),
                ..SetAttr::default()
            },
        },
        Op::SetXattr {
            ino: f.file,
            name: b"user.k".to_vec(),
            value: b"v".to_vec(),
            flags: 0,
        },
        Op::RemoveXattr {
            ino: f.file,
            name: b"user.k".to_vec(),
        },
        Op::CasXattr {
            ino: f.file,
            name: b"user.k".to_vec(),
            expected: None,
            value: b"v".to_vec(),
        },
        Op::Write {
            ino: f.file,
            slices: ten_bytes(),
            checks: Vec::new(),
        },
        create_reserved(f, "made", 0, None),
        create_reserved(f, "made-written", 1, Some((ten_bytes(), Vec::new()))),
    ]
}

pub(crate) fn ten_bytes() -> Vec<SliceWrite> {
    vec![SliceWrite {
        offset: 0,
        len: 10,
        chunks: vec![ChunkRef {
            hash: ChunkHash([7; 32]),
            offset: 0,
            len: 10,
        }],
    }]
}

/// A create in `/app` under the fixture's `nth` reserved number.
pub(crate) fn create_reserved(
    f: &Fixture,
    name: &str,
    nth: u64,
    write: Option<(Vec<SliceWrite>, Vec<mobilus_proto::fs::ChunkCheck>)>,
) -> Op {
    Op::CreateReserved {
        parent: f.app,
        name: name.into(),
        ino: f.reserved + nth,
        mode: 0o644,
        uid: 0,
        gid: 0,
        time_ns: T0,
        session: SESSION,
        write,
    }
}

/// Every variant, sorted by what the ownership check must do with it. No wildcard: a
/// new operation does not compile here until it is placed, and a mutation placed here
/// must also appear in `every_mutation` (the test checks).
fn judged_by_owner(op: &Op) -> bool {
    match op {
        Op::Mknod { .. }
        | Op::Mkdir { .. }
        | Op::Symlink { .. }
        | Op::Link { .. }
        | Op::Unlink { .. }
        | Op::Rmdir { .. }
        | Op::Rename { .. }
        | Op::SetAttr { .. }
        | Op::SetXattr { .. }
        | Op::RemoveXattr { .. }
        | Op::CasXattr { .. }
        | Op::Write { .. }
        | Op::CreateReserved { .. } => true,
        Op::ReleaseOrphan { .. }
        | Op::RegisterDataNode { .. }
        | Op::Condemn { .. }
        | Op::ForgetCondemned { .. }
        | Op::CreateSubtree { .. }
        | Op::RelabelSubtree { .. }
        | Op::MoveSubtree { .. }
        | Op::SetSubtreePolicy { .. }
        | Op::SetPlacement { .. }
        | Op::SetNodeDraining { .. }
        | Op::RemoveDataNode { .. }
        | Op::SetProfile { .. }
        | Op::ArmProfile { .. }
        | Op::MoveSubtreeWith { .. }
        | Op::SetSiteReplicas { .. }
        | Op::AckFeed { .. }
        // Advisory locks change nothing a read or a write sees (`Touches::Advisory`).
        | Op::OpenSession
        | Op::RenewSession { .. }
        | Op::CloseSession { .. }
        | Op::SetLock { .. }
        // Delegations change who may change a subtree (`tests/it/delegation.rs`).
        | Op::AcquireDelegation { .. }
        | Op::ReleaseDelegation { .. }
        | Op::RecallDelegation { .. }
        | Op::SetWriteBack { .. }
        // Numbers only: the create that uses one is judged.
        | Op::ReserveInodes { .. }
        // A clone writes only its own hidden tree, and freezes its source
        // (`tests/it/clone.rs`).
        | Op::StartClone { .. }
        | Op::CloneStep { .. }
        | Op::AbortCloneStep { .. }
        | Op::RemoveSnapshot { .. }
        | Op::StartRefresh { .. } => false,
    }
}

pub(crate) const MUTATION_KINDS: usize = 14;

fn is_refusal_of_ownership(r: &Reply) -> bool {
    matches!(
        r,
        Err(OpError::NotOwner { .. } | OpError::LeaseExpired { .. } | OpError::StaleEpoch { .. })
    )
}

#[test]
fn every_mutation_of_an_owned_subtree_is_judged_by_its_owner_lease_and_epoch() {
    let ops = every_mutation(&fixture());
    let kinds: BTreeSet<&str> = ops.iter().map(Op::name).collect();
    assert_eq!(kinds.len(), MUTATION_KINDS, "one of each kind: {kinds:?}");
    for op in &ops {
        assert!(
            judged_by_owner(op),
            "{} is not judged by the owner",
            op.name()
        );
        assert!(matches!(op.touches(), Touches::Inodes(_)), "{}", op.name());
    }
    let t = T0 + SEC;
    for (i, op) in ops.iter().enumerate() {
        let name = op.name();
        // Another site, and a tool of no site: refused, nothing changes.
        for site in [Some("site-b"), None] {
            let f = fixture();
            let op = every_mutation(&f).swap_remove(i);
            let before = f.ns.fsck().unwrap();
            let r = exec(&f.ns, t, site, None, op);
            assert!(
                matches!(&r, Err(OpError::NotOwner { owner, .. }) if owner == "site-a"),
                "{name} from {site:?}: {r:?}"
            );
            assert_eq!(
                f.ns.fsck().unwrap(),
                before,
                "{name} from {site:?} changed something"
            );
        }
        // The owner under an old epoch, or naming another subtree.
        for fence in [
            Fence {
                subtree: 0,
                epoch: 0,
            },
            Fence {
                subtree: ROOT_INO,
                epoch: 0,
            },
        ] {
            let f = fixture();
            let fence = Fence {
                subtree: if fence.subtree == 0 {
                    f.app
                } else {
                    fence.subtree
                },
                ..fence
            };
            let op = every_mutation(&f).swap_remove(i);
            let r = exec(&f.ns, t, Some("site-a"), Some(fence), op);
            assert!(
                matches!(r, Err(OpError::StaleEpoch { .. })),
                "{name} under {fence:?}: {r:?}"
            );
        }
        // The owner after its lease ran out.
        let f = fixture();
        let op = every_mutation(&f).swap_remove(i);
        let r = exec(&f.ns, T0 + SITE_LEASE_NS, Some("site-a"), None, op);
        assert!(
            matches!(r, Err(OpError::LeaseExpired { .. })),
            "{name} late: {r:?}"
        );
        // The owner, under its epoch, in time: not refused for ownership (removing an
        // xattr that is not there is still ENODATA).
        let f = fixture();
        let op = every_mutation(&f).swap_remove(i);
        let fence = Fence {
            subtree: f.app,
            epoch: 1,
        };
        let r = exec(&f.ns, t, Some("site-a"), Some(fence), op);
        assert!(!is_refusal_of_ownership(&r), "{name} by the owner: {r:?}");
        assert!(
            r.is_ok() || name == "removexattr",
            "{name} by the owner: {r:?}"
        );
        must_fsck_clean(&f.ns);
    }
}

#[test]
fn the_shared_root_is_written_by_any_site_and_orphans_are_released_by_any() {
    let f = fixture();
    for site in [Some("site-a"), Some("site-b"), None] {
        let name = format!("by-{}", site.unwrap_or("none"));
        must_attr(&f.ns, T0, site, mknod(f.shared, &name));
    }
    // An orphan of the subtree (unlinked while open at site-a) is let go from site-b.
    let r = exec(
        &f.ns,
        T0,
        Some("site-a"),
        None,
        Op::Unlink {
            parent: f.app,
            name: b"f".to_vec(),
            keep_open: true,
        },
    );
    assert!(r.is_ok(), "{r:?}");
    must(&f.ns, T0, Some("site-b"), Op::ReleaseOrphan { ino: f.file });
    assert_eq!(f.ns.getattr(f.file).unwrap_err().to_string(), "ENOENT");
    must_fsck_clean(&f.ns);

    // A file a rename replaces while the renamer has it open stays, an orphan, until
    // its release; without the flag it goes at once.
    for keep_open in [true, false] {
        let (old_name, new_name) = (format!("old-{keep_open}"), format!("new-{keep_open}"));
        let old = must_attr(&f.ns, T0, Some("site-a"), mknod(f.app, &old_name)).ino;
        must_attr(&f.ns, T0, Some("site-a"), mknod(f.app, &new_name));
        let rename = Op::Rename {
            parent: f.app,
            name: new_name.into_bytes(),
            new_parent: f.app,
            new_name: old_name.into_bytes(),
            flags: if keep_open { RENAME_KEEP_OPEN } else { 0 },
        };
        must(&f.ns, T0, Some("site-a"), rename);
        match f.ns.getattr(old) {
            Ok(a) if keep_open => assert_eq!(a.nlink, 0),
            Err(e) if !keep_open => assert_eq!(e.to_string(), "ENOENT"),
            other => panic!("keep_open {keep_open}: {other:?}"),
        }
        must_fsck_clean(&f.ns);
        must(&f.ns, T0, Some("site-a"), Op::ReleaseOrphan { ino: old });
        assert_eq!(f.ns.getattr(old).unwrap_err().to_string(), "ENOENT");
        must_fsck_clean(&f.ns);
    }
}

#[test]
fn renames_and_links_across_a_subtree_boundary_are_exdev_and_its_root_is_busy() {
    let f = fixture();
    let t = T0;
    let outside = must_attr(&f.ns, t, None, mknod(f.shared, "x")).ino;
    let cases = [
        Op::Rename {
            parent: f.app,
            name: b"f".to_vec(),
            new_parent: f.shared,
            new_name: b"f".to_vec(),
            flags: 0,
        },
        Op::Rename {
            parent: f.shared,
            name: b"x".to_vec(),
            new_parent: f.app,
            new_name: b"x".to_vec(),
            flags: 0,
        },
        Op::Link {
            ino: outside,
            new_parent: f.app,
            new_name: b"x".to_vec(),
        },
        Op::Link {
            ino: f.file,
            new_parent: f.shared,
            new_name: b"f".to_vec(),
        },
    ];
    for op in cases {
        let name = op.name();
        let r = exec(&f.ns, t, Some("site-a"), None, op);
        assert_eq!(r, Err(OpError::Errno(Errno::EXDEV.0)), "{name}");
    }
    // The subtree's root is like a mount point: not renamed, replaced or removed.
    for op in [
        Op::Rename {
            parent: ROOT_INO,
            name: b"app".to_vec(),
            new_parent: ROOT_INO,
            new_name: b"app2".to_vec(),
            flags: 0,
        },
        Op::Rename {
            parent: ROOT_INO,
            name: b"shared".to_vec(),
            new_parent: ROOT_INO,
            new_name: b"app".to_vec(),
            flags: 0,
        },
        Op::Rmdir {
            parent: ROOT_INO,
            name: b"app".to_vec(),
        },
    ] {
        let r = exec(&f.ns, t, Some("site-a"), None, op);
        assert!(
            matches!(r, Err(OpError::Explained { errno, .. }) if errno == Errno::EBUSY.0),
            "{r:?}"
        );
    }
    must_fsck_clean(&f.ns);
}

#[test]
fn bad_subtree_requests_get_clear_errors_and_change_nothing() {
    let f = fixture();
    let inner = must_attr(&f.ns, T0, Some("site-a"), mkdir(f.app, "inner")).ino;
    let outer = must_attr(&f.ns, T0, None, mkdir(ROOT_INO, "outer")).ino;
    let child = must_attr(&f.ns, T0, None, mkdir(outer, "child")).ino;
    must_subtree(
        &f.ns,
        T0,
        Op::CreateSubtree {
            root: child,
            owner: "site-b".into(),
        },
    );
    let errno_of = |r: Reply| match r {
        Err(OpError::Explained { errno, reason }) => (Errno(errno), reason),
        Err(OpError::Errno(n)) => (Errno(n), String::new()),
        other => panic!("not an errno: {other:?}"),
    };
    let create = |root, owner: &str| {
        exec(
            &f.ns,
            T0,
            None,
            None,
            Op::CreateSubtree {
                root,
                owner: owner.into(),
            },
        )
    };
    assert_eq!(errno_of(create(ROOT_INO, "site-a")).0, Errno::EINVAL);
    assert_eq!(errno_of(create(f.app, "site-a")).0, Errno::EEXIST);
    assert_eq!(errno_of(create(f.file, "site-a")).0, Errno::ENOTDIR);
    assert_eq!(errno_of(create(999_999, "site-a")).0, Errno::ENOENT);
    let (e, why) = errno_of(create(inner, "site-a"));
    assert!(e == Errno::EINVAL && why.contains("do not nest"), "{why}");
    let (e, why) = errno_of(create(outer, "site-a"));
    assert!(
        e == Errno::EINVAL && why.contains("contains subtree"),
        "{why}"
    );
    assert_eq!(
        create(f.shared, "site-z"),
        Err(OpError::UnknownSite("site-z".into()))
    );
    let mv = |root, to: &str, force| {
        exec(
            &f.ns,
            T0 + SEC,
            None,
            None,
            Op::MoveSubtree {
                root,
                to: to.into(),
                force,
            },
        )
    };
    assert_eq!(errno_of(mv(ROOT_INO, "site-b", false)).0, Errno::EINVAL);
    assert_eq!(errno_of(mv(f.shared, "site-b", false)).0, Errno::EINVAL);
    assert_eq!(
        mv(f.app, "site-z", false),
        Err(OpError::UnknownSite("site-z".into()))
    );
    // A takeover while the owner's lease is valid is refused and says for how long.
    let (e, why) = errno_of(mv(f.app, "site-b", true));
    assert!(e == Errno::EBUSY && why.contains("9000 ms"), "{why}");
    // A move to the owner itself changes nothing.
    let same = match mv(f.app, "site-a", false) {
        Ok(OpReply::Subtree(s)) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!((same.epoch, same.owner.as_deref()), (1, Some("site-a")));
    let all = f.ns.subtrees().unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(all[0].root, ROOT_INO);
    assert_eq!(all[0].owner, None);
    assert_eq!(all[1].path, "/app");
    assert_eq!(all[2].path, "/outer/child");
    must_fsck_clean(&f.ns);
}

#[test]
fn a_move_fences_the_old_owner_and_a_takeover_waits_for_its_lease_in_log_time() {
    let f = fixture();
    let moved = must_subtree(
        &f.ns,
        T0 + SEC,
        Op::MoveSubtree {
            root: f.app,
            to: "site-b".into(),
            force: false,
        },
    );
    assert_eq!((moved.owner.as_deref(), moved.epoch), (Some("site-b"), 2));
    assert_eq!(moved.moved_ns, T0 + SEC);
    let old_fence = Fence {
        subtree: f.app,
        epoch: 1,
    };
    // The old owner is refused however it asks; the new one writes at once.
    let r = exec(
        &f.ns,
        T0 + SEC,
        Some("site-a"),
        Some(old_fence),
        mknod(f.app, "late"),
    );
    assert!(matches!(r, Err(OpError::NotOwner { .. })), "{r:?}");
    let r = exec(
        &f.ns,
        T0 + SEC,
        Some("site-b"),
        Some(old_fence),
        mknod(f.app, "late"),
    );
    assert!(
        matches!(r, Err(OpError::StaleEpoch { current: 2, .. })),
        "{r:?}"
    );
    let new_fence = Fence {
        subtree: f.app,
        epoch: 2,
    };
    let r = exec(
        &f.ns,
        T0 + SEC,
        Some("site-b"),
        Some(new_fence),
        mknod(f.app, "new"),
    );
    assert!(r.is_ok(), "{r:?}");
    // Back to site-a: a write site-a issued under epoch 1 stays fenced (A, B, A).
    must_subtree(
        &f.ns,
        T0 + 2 * SEC,
        Op::MoveSubtree {
            root: f.app,
            to: "site-a".into(),
            force: false,
        },
    );
    let r = exec(
        &f.ns,
        T0 + 2 * SEC,
        Some("site-a"),
        Some(old_fence),
        mknod(f.app, "aba"),
    );
    assert!(
        matches!(r, Err(OpError::StaleEpoch { current: 3, .. })),
        "{r:?}"
    );

    // site-a's agent stops renewing at T0 + 2 s (its last heartbeat was at T0; renew now).
    heartbeat(&f.ns, T0 + 2 * SEC, "site-a");
    let expiry = T0 + 2 * SEC + SITE_LEASE_NS;
    let force = |t| {
        exec(
            &f.ns,
            t,
            None,
            None,
            Op::MoveSubtree {
                root: f.app,
                to: "site-b".into(),
                force: true,
            },
        )
    };
    assert!(
        force(expiry - 1).is_err(),
        "taken over before the lease ended"
    );
    // A leader whose clock is behind cannot make the lease look expired, nor undo the
    // log's clock: the stamp of the next command is lower, the clock stays where it was.
    heartbeat(&f.ns, expiry - SEC, "site-b");
    let r = exec(
        &f.ns,
        expiry - 5 * SEC,
        Some("site-a"),
        None,
        mknod(f.app, "in-time"),
    );
    assert!(r.is_ok(), "{r:?}");
    // A graceful move of a subtree whose owner stopped renewing is refused: use force.
    let r = exec(
        &f.ns,
        expiry,
        None,
        None,
        Op::MoveSubtree {
            root: f.app,
            to: "site-b".into(),
            force: false,
        },
    );
    assert!(matches!(r, Err(OpError::LeaseExpired { .. })), "{r:?}");
    // After the lease: site-a's late write is refused, and the takeover goes through.
    let r = exec(
        &f.ns,
        expiry,
        Some("site-a"),
        None,
        mknod(f.app, "too-late"),
    );
    assert!(matches!(r, Err(OpError::LeaseExpired { .. })), "{r:?}");
    let taken = match force(expiry) {
        Ok(OpReply::Subtree(s)) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!((taken.owner.as_deref(), taken.epoch), (Some("site-b"), 4));
    // A stamp from before the expiry, arriving later, cannot revive site-a.
    let r = exec(
        &f.ns,
        expiry - 3 * SEC,
        Some("site-a"),
        None,
        mknod(f.app, "revived"),
    );
    assert!(matches!(r, Err(OpError::NotOwner { .. })), "{r:?}");
    let names: Vec<Vec<u8>> =
        f.ns.readdir(f.app, 0, 0, false)
            .unwrap()
            .0
            .into_iter()
            .map(|e| e.name)
            .collect();
    assert_eq!(
        names,
        vec![
            b"f".to_vec(),
            b"d".to_vec(),
            b"new".to_vec(),
            b"in-time".to_vec()
        ]
    );
    must_fsck_clean(&f.ns);
}

#[test]
fn an_existing_tree_becomes_a_subtree_in_bounded_steps_that_freeze_what_they_relabel() {
    let ns = Namespace::in_memory().unwrap();
    heartbeat(&ns, T0, "site-a");
    let top = must_attr(&ns, T0, None, mkdir(ROOT_INO, "data")).ino;
    let mut dirs = vec![top];
    for d in 0..5 {
        let dir = must_attr(&ns, T0, None, mkdir(top, &format!("d{d}"))).ino;
        dirs.push(dir);
        for i in 0..20 {
            let ino = must_attr(&ns, T0, None, mknod(dir, &format!("f{i}"))).ino;
            must(
                &ns,
                T0,
                None,
                Op::SetAttr {
                    ino,
                    set: SetAttr {
                        size: Some(100),
                        ..SetAttr::default()
                    },
                },
            );
        }
    }
    // d4/deep/g0: a directory the walk reaches late.
    let deep = must_attr(&ns, T0, None, mkdir(dirs[5], "deep")).ino;
    let g0 = must_attr(&ns, T0, None, mknod(deep, "g0")).ino;
    must(
        &ns,
        T0,
        None,
        Op::SetAttr {
            ino: g0,
            set: SetAttr {
                size: Some(100),
                ..SetAttr::default()
            },
        },
    );
    let total_inodes = 1 + 5 + 5 * 20 + 2;
    let s = must_subtree(
        &ns,
        T0,
        Op::CreateSubtree {
            root: top,
            owner: "site-a".into(),
        },
    );
    assert_eq!(s.state, SubtreeState::Preparing);
    must_fsck_clean(&ns);
    // Until it is owned, the tree is still shared: a tool writes where the walk has not
    // been, and what it relabelled is frozen.
    let step = |limit| must_subtree(&ns, T0, Op::RelabelSubtree { root: top, limit });
    let s = step(7);
    assert_eq!(s.state, SubtreeState::Preparing);
    assert_eq!(
        s.inodes,
        1 + 5 + 2,
        "the root, its five directories, two files of d0"
    );
    let r = exec(&ns, T0, None, None, mknod(top, "frozen"));
    assert!(
        matches!(&r, Err(OpError::Explained { errno, .. }) if *errno == Errno::EBUSY.0),
        "{r:?}"
    );
    let r = exec(&ns, T0, None, None, mknod(dirs[5], "frozen"));
    assert!(matches!(&r, Err(OpError::Explained { .. })), "{r:?}");
    must_attr(&ns, T0, None, mknod(deep, "late-but-found"));
    // Out of the part not walked yet, a file may still leave.
    let r = exec(
        &ns,
        T0,
        None,
        None,
        Op::Rename {
            parent: deep,
            name: b"g0".to_vec(),
            new_parent: ROOT_INO,
            new_name: b"escaped".to_vec(),
            flags: 0,
        },
    );
    assert!(r.is_ok(), "{r:?}");
    let mut steps = 1;
    while step(7).state == SubtreeState::Preparing {
        steps += 1;
        must_fsck_clean(&ns);
        assert!(steps < 100);
    }
    assert!(steps >= total_inodes / 7, "{steps} steps");
    let s = ns.subtree(top).unwrap();
    assert_eq!((s.state, s.pending_dirs), (SubtreeState::Owned, 0));
    // One file left, one arrived: the counts are the labelled inodes'.
    assert_eq!(s.inodes, total_inodes as u64);
    assert_eq!(s.bytes, 5 * 20 * 100);
    must_fsck_clean(&ns);
    // Owned now: a tool of no site can no longer write it; the owner can.
    let r = exec(&ns, T0, None, None, mknod(top, "x"));
    assert!(matches!(r, Err(OpError::NotOwner { .. })), "{r:?}");
    must_attr(&ns, T0, Some("site-a"), mknod(deep, "owned"));
    let shared = ns.subtree(ROOT_INO).unwrap();
    assert_eq!(shared.inodes, 1 + 1, "the root and the escaped file");
    // A step after the end changes nothing.
    assert_eq!(step(7).inodes, s.inodes + 1);
}

#[test]
fn follow_writer_moves_the_subtree_to_a_writing_site_after_the_hold_and_never_sooner() {
    let f = fixture();
    let policy = |hold: Option<i64>| {
        exec(
            &f.ns,
            T0,
            None,
            None,
            Op::SetSubtreePolicy {
                root: f.app,
                follow_writer_hold_ns: hold,
            },
        )
    };
    assert!(matches!(policy(Some(-1)), Err(OpError::Explained { .. })));
    policy(Some(5 * SEC)).unwrap();
    assert_eq!(
        f.ns.subtree(f.app).unwrap().follow_writer_hold_ns,
        Some(5 * SEC)
    );
    // Within the hold: refused, as without the policy.
    let r = exec(
        &f.ns,
        T0 + 4 * SEC,
        Some("site-b"),
        None,
        mknod(f.app, "b1"),
    );
    assert!(matches!(r, Err(OpError::NotOwner { .. })), "{r:?}");
    // A write that fails moves nothing (the move is part of its command).
    let r = exec(&f.ns, T0 + 6 * SEC, Some("site-b"), None, mknod(f.app, "f"));
    assert_eq!(r, Err(OpError::Errno(Errno::EEXIST.0)));
    assert_eq!(f.ns.subtree(f.app).unwrap().epoch, 1);
    // After it: site-b's write, issued under the current epoch, moves the subtree to
    // site-b (epoch 2) and applies.
    let current = Fence {
        subtree: f.app,
        epoch: 1,
    };
    let r = exec(
        &f.ns,
        T0 + 6 * SEC,
        Some("site-b"),
        Some(current),
        mknod(f.app, "b2"),
    );
    assert!(r.is_ok(), "{r:?}");
    let s = f.ns.subtree(f.app).unwrap();
    assert_eq!(
        (s.owner.as_deref(), s.epoch, s.moved_ns),
        (Some("site-b"), 2, T0 + 6 * SEC)
    );
    // site-a cannot take it straight back (the hold runs from the move: no ping-pong).
    heartbeat(&f.ns, T0 + 7 * SEC, "site-a");
    let r = exec(
        &f.ns,
        T0 + 8 * SEC,
        Some("site-a"),
        None,
        mknod(f.app, "a1"),
    );
    assert!(matches!(r, Err(OpError::NotOwner { .. })), "{r:?}");
    // A writer whose own lease has run out does not get it (site-b's ran out at T0 + 10 s).
    let r = exec(
        &f.ns,
        T0 + 12 * SEC,
        Some("site-b"),
        None,
        mknod(f.app, "b3"),
    );
    assert!(matches!(r, Err(OpError::LeaseExpired { .. })), "{r:?}");
    let r = exec(
        &f.ns,
        T0 + 12 * SEC,
        Some("site-a"),
        None,
        mknod(f.app, "a2"),
    );
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(f.ns.subtree(f.app).unwrap().epoch, 3);
    // Off again: the owner stays.
    policy(None).unwrap();
    heartbeat(&f.ns, T0 + 30 * SEC, "site-b");
    let r = exec(
        &f.ns,
        T0 + 30 * SEC,
        Some("site-b"),
        None,
        mknod(f.app, "b4"),
    );
    assert!(matches!(r, Err(OpError::NotOwner { .. })), "{r:?}");
    must_fsck_clean(&f.ns);
}

#[test]
fn a_tree_being_prepared_takes_in_no_other_subtree_and_no_file_another_subtree_holds() {
    let ns = Namespace::in_memory().unwrap();
    heartbeat(&ns, T0, "site-a");
    heartbeat(&ns, T0, "site-b");
    let mk = |parent, name: &str| must_attr(&ns, T0, None, mkdir(parent, name)).ino;
    let rename = |parent, name: &str, new_parent| {
        exec(
            &ns,
            T0,
            None,
            None,
            Op::Rename {
                parent,
                name: name.into(),
                new_parent,
                new_name: name.into(),
                flags: 0,
            },
        )
    };
    let create = |root, owner: &str| {
        let mut s = must_subtree(
            &ns,
            T0,
            Op::CreateSubtree {
                root,
                owner: owner.into(),
            },
        )
        .state;
        while s == SubtreeState::Preparing {
            s = must_subtree(&ns, T0, Op::RelabelSubtree { root, limit: 3 }).state;
        }
    };
    // /x/t is site-b's subtree; /d is being made site-a's, /d/b not reached yet.
    let x = mk(ROOT_INO, "x");
    let t = mk(x, "t");
    let d = mk(ROOT_INO, "d");
    let b = mk(d, "b");
    create(t, "site-b");
    let s = must_subtree(
        &ns,
        T0,
        Op::CreateSubtree {
            root: d,
            owner: "site-a".into(),
        },
    );
    assert_eq!(s.state, SubtreeState::Preparing);
    // Moving /x (which holds site-b's subtree) under /d/b would nest it: refused.
    let r = rename(ROOT_INO, "x", b);
    assert!(
        matches!(&r, Err(OpError::Explained { errno, reason })
            if *errno == Errno::EBUSY.0 && reason.contains("being created")),
        "{r:?}"
    );
    // A file may still move in; a directory may not move out either.
    must_attr(&ns, T0, None, mknod(x, "file"));
    let moved = rename(x, "file", b);
    assert!(moved.is_ok(), "{moved:?}");
    let r = rename(d, "b", ROOT_INO);
    assert!(matches!(r, Err(OpError::Explained { .. })), "{r:?}");
    while must_subtree(&ns, T0, Op::RelabelSubtree { root: d, limit: 3 }).state
        == SubtreeState::Preparing
    {}
    assert_eq!(
        ns.subtree(d).unwrap().inodes,
        3,
        "/d, /d/b and the file moved in"
    );
    assert_eq!(ns.subtree(t).unwrap().owner.as_deref(), Some("site-b"));

    // A file /p/f also named /q/f: /p becomes a subtree first; /q's walk leaves it to /p.
    let p = mk(ROOT_INO, "p");
    let q = mk(ROOT_INO, "q");
    let f = must_attr(&ns, T0, None, mknod(p, "f")).ino;
    let size = SetAttr {
        size: Some(1000),
        ..SetAttr::default()
    };
    must(&ns, T0, None, Op::SetAttr { ino: f, set: size });
    let link = Op::Link {
        ino: f,
        new_parent: q,
        new_name: b"f".to_vec(),
    };
    must_attr(&ns, T0, None, link);
    create(p, "site-a");
    create(q, "site-b");
    assert_eq!(ns.getattr(f).unwrap().subtree, p);
    let (sp, sq) = (ns.subtree(p).unwrap(), ns.subtree(q).unwrap());
    assert_eq!((sp.inodes, sp.bytes), (2, 1000));
    assert_eq!((sq.inodes, sq.bytes), (1, 0));
    // site-b cannot change it through its own name of it.
    let chmod = Op::SetAttr {
        ino: f,
        set: SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        },
    };
    let r = exec(&ns, T0, Some("site-b"), None, chmod);
    assert!(matches!(r, Err(OpError::NotOwner { .. })), "{r:?}");
    must_fsck_clean(&ns);
}

/// A site's data node heartbeat, through the real service.
pub(crate) async fn must_register(client: &mobilus_meta_client::MetaClient, site: &str) {
    let node = DataNodeInfo {
        site: site.into(),
        addr: format!("{site}.example:7200"),
        capacity_bytes: 0,
        used_bytes: 0,
        last_heartbeat_ns: 0,
        draining: false,
        site_replicas: 0,
        workers: Vec::new(),
    };
    client.register_data_node(&node).await.expect("register");
}

/// `/app`, a subtree `site` owns (the site registered first); its inode.
pub(crate) async fn must_owned_app(client: &mobilus_meta_client::MetaClient, site: &str) -> u64 {
    must_register(client, site).await;
    let app = client
        .mkdir(ROOT_INO, b"app", 0o755, 0, 0, None)
        .await
        .unwrap()
        .ino;
    client.create_subtree(app, site).await.unwrap();
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_moves_and_a_move_across_a_leader_kill_leave_exactly_one_owner() {
    let mut cluster = crate::harness::Cluster::start(3, &[]).await;
    let client = cluster.client();
    must_register(&client, "site-a").await;
    must_register(&client, "site-b").await;
    let app = client
        .mkdir(ROOT_INO, b"app", 0o755, 0, 0, None)
        .await
        .unwrap()
        .ino;
    client.create_subtree(app, "site-a").await.unwrap();

    // Two moves to one site at once: one commits epoch 2, the other finds it done.
    let (x, y) = tokio::join!(
        client.move_subtree(app, "site-b", false),
        client.move_subtree(app, "site-b", false)
    );
    assert_eq!((x.unwrap().epoch, y.unwrap().epoch), (2, 2));
    // Moves to both sites at once: they apply in some order, each one whole.
    let (x, y) = tokio::join!(
        client.move_subtree(app, "site-a", false),
        client.move_subtree(app, "site-b", false)
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    let now = client.subtree(app, false).await.unwrap();
    let last = if x.epoch > y.epoch { &x } else { &y };
    assert_eq!(
        (now.owner.as_ref(), now.epoch),
        (last.owner.as_ref(), last.epoch)
    );
    assert!(now.epoch == 3 || now.epoch == 4, "{now:?}");

    // A move while the leader is killed: it commits or it does not, never half; asked
    // again, it ends with the new owner, one epoch further.
    let to = if now.owner.as_deref() == Some("site-a") {
        "site-b"
    } else {
        "site-a"
    };
    let leader = cluster.must_leader().await;
    let moving = {
        let client = client.clone();
        tokio::spawn(async move { client.move_subtree(app, to, false).await })
    };
    cluster.members[leader].kill();
    let first = moving.await.unwrap();
    let after = client.subtree(app, false).await.unwrap();
    match &first {
        Ok(s) => assert_eq!((s.owner.as_deref(), s.epoch), (Some(to), now.epoch + 1)),
        Err(_) => assert!(
            (after.owner.as_deref(), after.epoch) == (Some(to), now.epoch + 1)
                || (after.owner.clone(), after.epoch) == (now.owner.clone(), now.epoch),
            "{after:?}"
        ),
    }
    // The kill may have taken the leases' last renewal with it: renew, then retry.
    must_register(&client, "site-a").await;
    must_register(&client, "site-b").await;
    let done = client.move_subtree(app, to, false).await.unwrap();
    assert_eq!(
        (done.owner.as_deref(), done.epoch),
        (Some(to), now.epoch + 1)
    );
    let report = client.fsck().await.unwrap();
    assert_eq!(report.problems, Vec::<String>::new());
}

/// Creates under reserved numbers (a delegation holder's deferred creates): only the
/// reserving session, each number once (a retry answers the file made), never a number
/// that was not reserved, and normal creates never take a reserved one.
#[test]
fn reserved_numbers_are_made_once_by_their_session_only() {
    let f = fixture();
    let t = T0 + SEC;
    let second = match must(
        &f.ns,
        t,
        Some("site-a"),
        Op::ReserveInodes { session: SESSION },
    ) {
        OpReply::Inodes { first, count } => {
            assert_eq!(count, 64);
            first
        }
        other => panic!("not inodes: {other:?}"),
    };
    assert_eq!(f.reserved % 64, 0);
    assert!(
        second >= f.reserved + 64,
        "blocks overlap: {} {second}",
        f.reserved
    );
    let plain = must_attr(&f.ns, t, Some("site-a"), mknod(f.app, "plain")).ino;
    assert!(
        plain >= second + 64,
        "a plain create took a reserved number: {plain}"
    );

    // Made and written in one command; the future time is cut to the log's.
    let mut op = create_reserved(&f, "a", 0, Some((ten_bytes(), Vec::new())));
    if let Op::CreateReserved { time_ns, .. } = &mut op {
        *time_ns = t + 1_000 * SEC;
    }
    let a = must_attr(&f.ns, t, Some("site-a"), op.clone());
    assert_eq!((a.ino, a.size, a.ctime_ns), (f.reserved, 10, t));
    // A retry answers the same file, its bytes written over themselves.
    let again = must_attr(&f.ns, t, Some("site-a"), op);
    assert_eq!((again.ino, again.size, again.nlink), (a.ino, 10, 1));
    // Made by the holder first, then its commit: the write still lands.
    must_attr(&f.ns, t, Some("site-a"), create_reserved(&f, "b", 1, None));
    let b = must_attr(
        &f.ns,
        t,
        Some("site-a"),
        create_reserved(&f, "b", 1, Some((ten_bytes(), Vec::new()))),
    );
    assert_eq!(b.size, 10);

    let refused = |op: Op| exec(&f.ns, t, Some("site-a"), None, op).unwrap_err();
    // Another session's number.
    let mut other = create_reserved(&f, "c", 2, None);
    if let Op::CreateReserved { session, .. } = &mut other {
        *session = SESSION + 1;
    }
    assert!(matches!(refused(other), OpError::Explained { errno, .. } if errno == Errno::EPERM.0));
    // A number never reserved (an existing file's), and one past the block.
    for ino in [f.file, plain, second + 64] {
        let mut op = create_reserved(&f, "d", 0, Some((ten_bytes(), Vec::new())));
        if let Op::CreateReserved { ino: i, .. } = &mut op {
            *i = ino;
        }
        assert!(
            matches!(refused(op), OpError::Explained { errno, .. } if errno == Errno::EINVAL.0)
        );
    }
    // A name taken: refused, and the number stays unused.
    let taken = refused(create_reserved(&f, "plain", 3, None));
    assert_eq!(taken, OpError::Errno(Errno::EEXIST.0));
    // Answered earlier (T0) than what was made before it: the directory's times do not
    // go back.
    let e = must_attr(&f.ns, t, Some("site-a"), create_reserved(&f, "e", 3, None));
    assert_eq!(e.ctime_ns, T0);
    let app = f.ns.getattr(f.app).unwrap();
    assert_eq!((app.mtime_ns, app.ctime_ns), (t, t));
    must_fsck_clean(&f.ns);
}
