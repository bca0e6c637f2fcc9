//! Delegations in the state machine: one mount session of the owner site holds a
//! subtree's delegation; every change of the subtree by anyone else is refused
//! (`Delegated`, nothing done) until it is given back, recalled past its grace, or its
//! session's or site's lease ends; moves wait for it and takeovers find it gone.

use mobilus_meta::namespace::{
    Namespace, REACQUIRE_HOLD_NS, RECALL_GRACE_NS, SESSION_LEASE_NS, SITE_LEASE_NS,
};
use mobilus_meta::types::{Command, Op, OpError, OpReply, Reply};
use mobilus_proto::fs::{DelegationGrant, SubtreeId};
use mobilus_proto::status::Errno;

use crate::ownership::{
    every_mutation, fixture, heartbeat, must_fsck_clean, Fixture, MUTATION_KINDS, SEC, T0,
};

fn run(ns: &Namespace, t: i64, site: Option<&str>, session: Option<u64>, op: Op) -> Reply {
    ns.execute(&Command {
        time_ns: t,
        site: site.map(str::to_string),
        session,
        holder_only: false,
        fence: None,
        op,
    })
    .expect("store")
}

fn must_session(ns: &Namespace, t: i64, site: &str) -> u64 {
    match run(ns, t, Some(site), None, Op::OpenSession) {
        Ok(OpReply::Session { id, .. }) => id,
        other => panic!("open session: {other:?}"),
    }
}

fn acquire(
    ns: &Namespace,
    t: i64,
    session: u64,
    subtree: SubtreeId,
) -> Result<DelegationGrant, OpError> {
    match run(
        ns,
        t,
        None,
        None,
        Op::AcquireDelegation { session, subtree },
    ) {
        Ok(OpReply::Delegation(g)) => Ok(g),
        Ok(other) => panic!("acquire: {other:?}"),
        Err(e) => Err(e),
    }
}

fn must_acquire(ns: &Namespace, t: i64, session: u64, subtree: SubtreeId) -> DelegationGrant {
    acquire(ns, t, session, subtree).unwrap_or_else(|e| panic!("acquire: {e}"))
}

fn recall(ns: &Namespace, t: i64, subtree: SubtreeId) -> i64 {
    match run(ns, t, None, None, Op::RecallDelegation { subtree }) {
        Ok(OpReply::Recalled { remaining_ns }) => remaining_ns,
        other => panic!("recall: {other:?}"),
    }
}

fn renew(ns: &Namespace, t: i64, session: u64) -> Vec<DelegationGrant> {
    match run(ns, t, None, None, Op::RenewSession { session }) {
        Ok(OpReply::Session { delegations, .. }) => delegations,
        other => panic!("renew: {other:?}"),
    }
}

fn is_delegated(r: &Reply, holder: u64) -> bool {
    matches!(r, Err(OpError::Delegated { holder: h, .. }) if *h == holder)
}

/// `/app` of site-a delegated to a session of site-a's mount at `T0`; returns the
/// fixture, the holder, and another session of site-a.
fn delegated() -> (Fixture, u64, u64) {
    let f = fixture();
    let holder = must_session(&f.ns, T0, "site-a");
    let other = must_session(&f.ns, T0, "site-a");
    let g = must_acquire(&f.ns, T0, holder, f.app);
    assert_eq!((g.subtree, g.epoch, g.recalled), (f.app, 1, false));
    assert_eq!(g.remaining_ns, SESSION_LEASE_NS.min(SITE_LEASE_NS));
    (f, holder, other)
}

#[test]
fn only_the_holder_changes_a_delegated_subtree_whatever_the_operation() {
    let ops = every_mutation(&fixture());
    assert_eq!(ops.len(), MUTATION_KINDS);
    let t = T0 + SEC;
    for (i, op) in ops.iter().enumerate() {
        let name = op.name();
        // Another session of the owner site, and the owner site with no session.
        for session in [Some(false), None] {
            let (f, holder, other) = delegated();
            let op = every_mutation(&f).swap_remove(i);
            let before = f.ns.fsck().unwrap();
            let r = run(&f.ns, t, Some("site-a"), session.map(|_| other), op);
            assert!(is_delegated(&r, holder), "{name} by {session:?}: {r:?}");
            assert_eq!(f.ns.fsck().unwrap(), before, "{name} changed something");
        }
        // Another site is refused for ownership first: its attempts recall nothing.
        let (f, _, _) = delegated();
        let op = every_mutation(&f).swap_remove(i);
        let r = run(&f.ns, t, Some("site-b"), Some(99), op);
        assert!(matches!(r, Err(OpError::NotOwner { .. })), "{name}: {r:?}");
        // The holder.
        let (f, holder, _) = delegated();
        let op = every_mutation(&f).swap_remove(i);
        let r = run(&f.ns, t, Some("site-a"), Some(holder), op);
        assert!(
            r.is_ok() || name == "removexattr",
            "{name} by the holder: {r:?}"
        );
        must_fsck_clean(&f.ns);
    }
    // The shared root is never delegated: anyone writes it.
    let (f, _, _) = delegated();
    let b = must_session(&f.ns, t, "site-b");
    let r = run(
        &f.ns,
        t,
        Some("site-b"),
        Some(b),
        crate::ownership::mkdir(f.shared, "x"),
    );
    assert!(r.is_ok(), "{r:?}");
}

#[test]
fn who_may_hold_a_delegation() {
    let f = fixture();
    let a1 = must_session(&f.ns, T0, "site-a");
    let a2 = must_session(&f.ns, T0, "site-a");
    let b = must_session(&f.ns, T0, "site-b");
    // Not the owner site; the shared root; not a subtree; an unknown session.
    assert!(matches!(
        acquire(&f.ns, T0, b, f.app),
        Err(OpError::NotOwner { .. })
    ));
    for (subtree, errno) in [(1, Errno::EINVAL), (f.file, Errno::EINVAL)] {
        let r = acquire(&f.ns, T0, a1, subtree);
        assert!(
            matches!(&r, Err(OpError::Explained { errno: e, .. }) if *e == errno.0),
            "{subtree}: {r:?}"
        );
    }
    assert!(matches!(
        acquire(&f.ns, T0, 12345, f.app),
        Err(OpError::Explained { errno, .. }) if errno == Errno::ENOLCK.0
    ));
    // One holder at a time; acquiring again renews.
    must_acquire(&f.ns, T0, a1, f.app);
    let r = acquire(&f.ns, T0 + SEC, a2, f.app);
    assert!(
        matches!(&r, Err(OpError::Explained { errno, .. }) if *errno == Errno::EBUSY.0),
        "{r:?}"
    );
    assert_eq!(must_acquire(&f.ns, T0 + SEC, a1, f.app).subtree, f.app);
    // The site's lease bounds it: renewed sessions do not outlive an agent that stopped.
    let late = T0 + SITE_LEASE_NS - SEC;
    assert_eq!(renew(&f.ns, late, a1)[0].remaining_ns, SEC);
    assert!(
        renew(&f.ns, T0 + SITE_LEASE_NS, a1).is_empty(),
        "outlived the site lease"
    );
    // The session's own lease bounds it too: a holder that stops renewing loses it.
    let f = fixture();
    let a1 = must_session(&f.ns, T0, "site-a");
    must_acquire(&f.ns, T0, a1, f.app);
    heartbeat(&f.ns, T0 + 9 * SEC, "site-a");
    let a2 = must_session(&f.ns, T0 + 9 * SEC, "site-a");
    let write = crate::ownership::mknod(f.app, "z");
    let r = run(
        &f.ns,
        T0 + SESSION_LEASE_NS - 1,
        Some("site-a"),
        Some(a2),
        write.clone(),
    );
    assert!(is_delegated(&r, a1), "{r:?}");
    let r = run(
        &f.ns,
        T0 + SESSION_LEASE_NS,
        Some("site-a"),
        Some(a2),
        write,
    );
    assert!(r.is_ok(), "{r:?}");
    must_acquire(&f.ns, T0 + SESSION_LEASE_NS, a2, f.app);
}

#[test]
fn a_recall_leaves_the_holder_a_grace_and_keeps_the_delegation_free_for_a_while() {
    let (f, holder, other) = delegated();
    let t = T0 + SEC;
    let write = || crate::ownership::mknod(f.app, "late");
    // Recalled: the holder may still flush; others wait; the holder's renewal says so.
    let left = recall(&f.ns, t, f.app);
    assert_eq!(left, SESSION_LEASE_NS - SEC);
    assert!(renew(&f.ns, t, holder)[0].recalled);
    assert!(is_delegated(
        &run(&f.ns, t, Some("site-a"), Some(other), write()),
        holder
    ));
    assert!(run(
        &f.ns,
        t,
        Some("site-a"),
        Some(holder),
        crate::ownership::mknod(f.app, "flushed")
    )
    .is_ok());
    // A holder that keeps renewing but never gives it back loses it after the grace.
    for s in 2..11 {
        heartbeat(&f.ns, T0 + s * SEC, "site-a");
        renew(&f.ns, T0 + s * SEC, holder);
        renew(&f.ns, T0 + s * SEC, other);
    }
    let end = t + RECALL_GRACE_NS;
    assert!(is_delegated(
        &run(&f.ns, end - 1, Some("site-a"), Some(other), write()),
        holder
    ));
    assert!(run(&f.ns, end, Some("site-a"), Some(other), write()).is_ok());
    // Given back: nobody takes it again until the hold after the recall has passed.
    let (f, holder, other) = delegated();
    recall(&f.ns, t, f.app);
    run(
        &f.ns,
        t,
        None,
        None,
        Op::ReleaseDelegation {
            session: holder,
            subtree: f.app,
        },
    )
    .unwrap();
    assert!(run(
        &f.ns,
        t,
        Some("site-a"),
        Some(other),
        crate::ownership::mknod(f.app, "mine")
    )
    .is_ok());
    let r = acquire(&f.ns, t + REACQUIRE_HOLD_NS - 1, holder, f.app);
    assert!(
        matches!(&r, Err(OpError::Explained { errno, .. }) if *errno == Errno::EAGAIN.0),
        "{r:?}"
    );
    heartbeat(&f.ns, t + REACQUIRE_HOLD_NS, "site-a");
    renew(&f.ns, t + REACQUIRE_HOLD_NS, other);
    must_acquire(&f.ns, t + REACQUIRE_HOLD_NS, other, f.app);
    // Releasing what one does not hold, or twice, is done; a recall of nothing is 0.
    run(
        &f.ns,
        t + REACQUIRE_HOLD_NS,
        None,
        None,
        Op::ReleaseDelegation {
            session: holder,
            subtree: f.app,
        },
    )
    .unwrap();
    assert_eq!(recall(&f.ns, t, f.shared), 0);
}

#[test]
fn a_move_waits_for_the_delegation_and_a_takeover_finds_it_gone() {
    let (f, holder, _) = delegated();
    let t = T0 + SEC;
    let mv = |force| Op::MoveSubtree {
        root: f.app,
        to: "site-b".into(),
        force,
    };
    assert!(is_delegated(&run(&f.ns, t, None, None, mv(false)), holder));
    run(
        &f.ns,
        t,
        None,
        None,
        Op::ReleaseDelegation {
            session: holder,
            subtree: f.app,
        },
    )
    .unwrap();
    assert!(run(&f.ns, t, None, None, mv(false)).is_ok());
    // The old holder's writes are refused for ownership; its renewal holds nothing.
    let r = run(
        &f.ns,
        t,
        Some("site-a"),
        Some(holder),
        crate::ownership::mknod(f.app, "x"),
    );
    assert!(matches!(r, Err(OpError::NotOwner { .. })), "{r:?}");
    assert!(renew(&f.ns, t, holder).is_empty());

    // A takeover after site-a's agent stopped: its delegation ended with its lease.
    let (f, holder, _) = delegated();
    for s in 1..=10 {
        heartbeat(&f.ns, T0 + s * SEC, "site-b");
        renew(&f.ns, T0 + s * SEC, holder);
    }
    let t = T0 + SITE_LEASE_NS;
    let r = run(
        &f.ns,
        t,
        None,
        None,
        Op::MoveSubtree {
            root: f.app,
            to: "site-b".into(),
            force: true,
        },
    );
    assert!(r.is_ok(), "{r:?}");
    assert!(renew(&f.ns, t, holder).is_empty());
    // Closing a session gives its delegations back.
    let (f, holder, other) = delegated();
    run(
        &f.ns,
        T0 + SEC,
        None,
        None,
        Op::CloseSession { session: holder },
    )
    .unwrap();
    must_acquire(&f.ns, T0 + SEC, other, f.app);
}

/// A command the holder sends relying on its delegation (a write-back's commit).
fn run_held(ns: &Namespace, t: i64, session: u64, op: Op) -> Reply {
    ns.execute(&Command {
        time_ns: t,
        site: Some("site-a".into()),
        session: Some(session),
        fence: None,
        op,
        holder_only: true,
    })
    .expect("store")
}

/// `SetWriteBack` with the next sequence number of this test.
fn set_write_back(ns: &Namespace, t: i64, session: u64, subtree: SubtreeId, on: bool) -> Reply {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    set_write_back_seq(ns, t, session, subtree, on, seq)
}

fn set_write_back_seq(
    ns: &Namespace,
    t: i64,
    session: u64,
    subtree: SubtreeId,
    on: bool,
    seq: u64,
) -> Reply {
    run(
        ns,
        t,
        None,
        None,
        Op::SetWriteBack {
            session,
            subtree,
            on,
            seq,
        },
    )
}

fn is_stale(r: &Reply) -> bool {
    matches!(r, Err(OpError::Explained { errno, .. }) if *errno == Errno::ESTALE.0)
}

/// An unlink the holder answered before committing it (`unlink_back.rs` in the mount)
/// goes out `holder_only`: it lands while the delegation lasts, and once it is given
/// back a late one is refused for good (ESTALE) and changes nothing: the file stays.
#[test]
fn an_unlink_written_back_commits_only_under_its_delegation() {
    let unlink = |name: &str, app| Op::Unlink {
        parent: app,
        name: name.as_bytes().to_vec(),
        keep_open: false,
    };
    let (f, holder, other) = delegated();
    let t = T0 + SEC;
    assert!(is_stale(&run_held(&f.ns, t, other, unlink("f", f.app))));
    assert!(f.ns.lookup(f.app, b"f").is_ok());
    assert!(run_held(&f.ns, t, holder, unlink("f", f.app)).is_ok());
    assert!(f.ns.lookup(f.app, b"f").is_err());

    let (f, holder, _) = delegated();
    let release = Op::ReleaseDelegation {
        session: holder,
        subtree: f.app,
    };
    run(&f.ns, t, None, None, release).unwrap();
    let before = f.ns.fsck().unwrap();
    assert!(is_stale(&run_held(&f.ns, t, holder, unlink("f", f.app))));
    assert!(f.ns.lookup(f.app, b"f").is_ok());
    assert_eq!(
        f.ns.fsck().unwrap(),
        before,
        "a refused unlink changed something"
    );
}

#[test]
fn write_backs_commit_only_under_their_delegation_and_mark_it_for_other_readers() {
    let (f, holder, other) = delegated();
    let t = T0 + SEC;
    let write = |ino| Op::Write {
        ino,
        slices: crate::ownership::ten_bytes(),
        checks: Vec::new(),
    };
    // The holder's write-back lands while its delegation lasts; another session's (one
    // that held it before) is refused for good, recalling nothing.
    assert!(run_held(&f.ns, t, holder, write(f.file)).is_ok());
    assert!(is_stale(&run_held(&f.ns, t, other, write(f.file))));
    // Only the live holder marks it; another session's reads then recall it first, the
    // holder's own do not, and reads of the shared root never do.
    assert!(is_stale(&set_write_back(&f.ns, t, other, f.app, true)));
    assert_eq!(
        f.ns.written_back_elsewhere(f.file, Some(other)).unwrap(),
        None
    );
    assert!(set_write_back(&f.ns, t, holder, f.app, true).is_ok());
    for reader in [Some(other), None] {
        assert_eq!(
            f.ns.written_back_elsewhere(f.file, reader).unwrap(),
            Some((f.app, holder)),
            "{reader:?}"
        );
        assert_eq!(
            f.ns.written_back_elsewhere(f.app, reader).unwrap(),
            Some((f.app, holder))
        );
        assert_eq!(f.ns.written_back_elsewhere(f.shared, reader).unwrap(), None);
    }
    assert_eq!(
        f.ns.written_back_elsewhere(f.file, Some(holder)).unwrap(),
        None
    );
    assert_eq!(
        f.ns.written_back_elsewhere(424_242, Some(other)).unwrap(),
        None
    );
    // One sent before another already applied (a late retry) changes nothing.
    assert!(set_write_back_seq(&f.ns, t, holder, f.app, false, 1).is_ok());
    assert!(f
        .ns
        .written_back_elsewhere(f.file, Some(other))
        .unwrap()
        .is_some());
    // Taken back by the holder (never refused); marked again.
    assert!(set_write_back(&f.ns, t, holder, f.app, false).is_ok());
    assert!(set_write_back(&f.ns, t, other, f.app, false).is_ok());
    assert_eq!(
        f.ns.written_back_elsewhere(f.file, Some(other)).unwrap(),
        None
    );
    assert!(set_write_back(&f.ns, t, holder, f.app, true).is_ok());
    // Given back: the mark goes with it, and a late write-back is refused for good.
    let release = Op::ReleaseDelegation {
        session: holder,
        subtree: f.app,
    };
    run(&f.ns, t, None, None, release).unwrap();
    assert_eq!(
        f.ns.written_back_elsewhere(f.file, Some(other)).unwrap(),
        None
    );
    let before = f.ns.fsck().unwrap();
    assert!(is_stale(&run_held(&f.ns, t, holder, write(f.file))));
    assert_eq!(
        f.ns.fsck().unwrap(),
        before,
        "a refused write-back changed something"
    );
    // A new grant starts unmarked.
    let t = t + REACQUIRE_HOLD_NS;
    must_acquire(&f.ns, t, holder, f.app);
    assert_eq!(
        f.ns.written_back_elsewhere(f.file, Some(other)).unwrap(),
        None
    );

    // Run out (the holder paused past its session's lease): its write-backs are refused
    // from then on; the mark stays until a recall finds the delegation ended.
    let (f, holder, other) = delegated();
    assert!(set_write_back(&f.ns, T0, holder, f.app, true).is_ok());
    heartbeat(&f.ns, T0 + 9 * SEC, "site-a");
    let ended = T0 + SESSION_LEASE_NS;
    assert!(is_stale(&run_held(&f.ns, ended, holder, write(f.file))));
    assert!(is_stale(&set_write_back(&f.ns, ended, holder, f.app, true)));
    assert_eq!(
        f.ns.written_back_elsewhere(f.file, Some(other)).unwrap(),
        Some((f.app, holder))
    );
    assert_eq!(recall(&f.ns, ended, f.app), 0);
    assert_eq!(
        f.ns.written_back_elsewhere(f.file, Some(other)).unwrap(),
        None
    );
    // Ended by the site's lease (its agent missed heartbeats) while the session lives: a
    // recall finds it ended and gives it back for good, so the agent's next heartbeat
    // does not revive it for a late write-back.
    let (f, holder, other) = delegated();
    assert!(set_write_back(&f.ns, T0, holder, f.app, true).is_ok());
    let lapsed = T0 + SITE_LEASE_NS;
    assert!(!renew(&f.ns, lapsed - SEC, holder).is_empty());
    assert_eq!(recall(&f.ns, lapsed, f.app), 0);
    heartbeat(&f.ns, lapsed, "site-a");
    assert!(is_stale(&run_held(&f.ns, lapsed, holder, write(f.file))));
    assert!(renew(&f.ns, lapsed, holder).is_empty(), "revived");
    assert_eq!(
        f.ns.written_back_elsewhere(f.file, Some(other)).unwrap(),
        None
    );
    // A recall while it lasts keeps the mark: the holder commits before giving it back.
    let (f, holder, other) = delegated();
    assert!(set_write_back(&f.ns, T0, holder, f.app, true).is_ok());
    assert!(recall(&f.ns, T0 + SEC, f.app) > 0);
    assert!(f
        .ns
        .written_back_elsewhere(f.file, Some(other))
        .unwrap()
        .is_some());
    assert!(run_held(&f.ns, T0 + 2 * SEC, holder, write(f.file)).is_ok());
    // The shared root has no delegation to rely on.
    let r = run_held(
        &f.ns,
        T0 + 2 * SEC,
        holder,
        crate::ownership::mkdir(f.shared, "y"),
    );
    assert!(is_stale(&r), "{r:?}");
    must_fsck_clean(&f.ns);
}
