//! Advisory locks: POSIX record-lock semantics in the state machine, sessions that end
//! in log time, and a blocked request woken by the release through real members.

use std::time::{Duration, Instant};

use mobilus_meta::namespace::{Namespace, SESSION_LEASE_NS};
use mobilus_meta::types::{Command, Op, OpError, OpReply, Reply};
use mobilus_meta_client::LockRequest;
use mobilus_proto::fs::{FileKind, HeldLock, InodeId, LockKind, ROOT_INO};
use mobilus_proto::status::Errno;

use crate::harness::Cluster;

const SEC: i64 = 1_000_000_000;
const T0: i64 = 1_000 * SEC;

fn exec(ns: &Namespace, t: i64, site: Option<&str>, op: Op) -> Reply {
    ns.execute(&Command {
        time_ns: t,
        site: site.map(str::to_string),
        session: None,
        holder_only: false,
        fence: None,
        op,
    })
    .expect("store")
}

fn must_session(ns: &Namespace, t: i64) -> u64 {
    match exec(ns, t, Some("site-a"), Op::OpenSession) {
        Ok(OpReply::Session {
            id, lease_end_ns, ..
        }) => {
            assert_eq!(lease_end_ns, t + SESSION_LEASE_NS);
            id
        }
        other => panic!("open_session: {other:?}"),
    }
}

fn must_file(ns: &Namespace) -> InodeId {
    let op = Op::Mknod {
        parent: ROOT_INO,
        name: b"db".to_vec(),
        kind: FileKind::Regular,
        mode: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
    };
    match exec(ns, T0, None, op) {
        Ok(OpReply::Attr(a)) => a.ino,
        other => panic!("mknod: {other:?}"),
    }
}

struct Fixture {
    ns: Namespace,
    file: InodeId,
    a: u64,
    b: u64,
}

fn fixture() -> Fixture {
    let ns = Namespace::in_memory().expect("namespace");
    let file = must_file(&ns);
    let (a, b) = (must_session(&ns, T0), must_session(&ns, T0));
    Fixture { ns, file, a, b }
}

impl Fixture {
    #[allow(clippy::too_many_arguments)]
    fn set(&self, t: i64, session: u64, owner: u64, start: u64, end: u64, kind: LockKind) -> Reply {
        let lock = LockRequest {
            ino: self.file,
            session,
            owner,
            start,
            end,
            kind,
        };
        let op = Op::SetLock { lock, pid: 42 };
        exec(&self.ns, t, Some("site-a"), op)
    }

    fn must_set(&self, t: i64, session: u64, owner: u64, start: u64, end: u64, kind: LockKind) {
        if let Err(e) = self.set(t, session, owner, start, end, kind) {
            panic!("set_lock {kind:?} {start}..={end} by {session}/{owner}: {e}");
        }
    }

    fn must_refuse(&self, t: i64, session: u64, start: u64, end: u64, kind: LockKind, e: Errno) {
        match self.set(t, session, 1, start, end, kind) {
            Err(OpError::Errno(n)) if n == e.0 => {}
            Err(OpError::Explained { errno, .. }) if errno == e.0 => {}
            other => panic!("{kind:?} {start}..={end} by {session}: {other:?}, not {e}"),
        }
    }

    fn held(&self) -> Vec<(u64, u64, HeldLock)> {
        self.ns.locks_on(self.file).expect("locks_on")
    }
}

fn held(start: u64, end: u64, write: bool) -> HeldLock {
    HeldLock {
        start,
        end,
        write,
        pid: 42,
    }
}

#[test]
fn record_locks_conflict_as_posix_says() {
    let f = fixture();
    let t = T0 + SEC;
    // Readers share; a writer waits for every reader of its range.
    f.must_set(t, f.a, 1, 0, 99, LockKind::Read);
    f.must_set(t, f.b, 1, 50, 149, LockKind::Read);
    f.must_refuse(t, f.b, 0, 0, LockKind::Write, Errno::EAGAIN);
    f.must_set(t, f.b, 1, 100, 149, LockKind::Write);
    // The owner's own locks never conflict: a read becomes a write in the middle, and
    // the rest of the read stays (split in two).
    f.must_set(t, f.a, 1, 10, 19, LockKind::Write);
    assert_eq!(
        f.held(),
        vec![
            (f.a, 1, held(0, 9, false)),
            (f.a, 1, held(10, 19, true)),
            (f.a, 1, held(20, 99, false)),
            (f.b, 1, held(50, 99, false)),
            (f.b, 1, held(100, 149, true)),
        ]
    );
    // Another owner of the same session (another process of the mount) conflicts.
    match f.set(t, f.a, 2, 15, 15, LockKind::Read) {
        Err(OpError::Errno(n)) if n == Errno::EAGAIN.0 => {}
        other => panic!("second owner: {other:?}"),
    }
    // Unlocking part of a range frees exactly that part.
    f.must_set(t, f.a, 1, 10, 14, LockKind::Unlock);
    f.must_set(t, f.b, 1, 10, 14, LockKind::Write);
    f.must_refuse(t, f.b, 15, 15, LockKind::Read, Errno::EAGAIN);
    // Unlocking what is not held is done; a whole-file unlock drops everything.
    f.must_set(t, f.a, 1, 1_000, 2_000, LockKind::Unlock);
    f.must_set(t, f.a, 1, 0, u64::MAX, LockKind::Unlock);
    f.must_set(t, f.a, 7, 200, 299, LockKind::Write);
    // Adjacent locks of one kind merge; up to the end of the file (u64::MAX) works.
    f.must_set(t, f.a, 1, 1_000, u64::MAX - 1, LockKind::Read);
    f.must_set(t, f.a, 1, u64::MAX, u64::MAX, LockKind::Read);
    assert!(f.held().contains(&(f.a, 1, held(1_000, u64::MAX, false))));
}

#[test]
fn a_session_that_stops_renewing_loses_its_locks_when_its_lease_ends_and_not_before() {
    let f = fixture();
    f.must_set(T0, f.a, 1, 0, u64::MAX, LockKind::Write);
    // b keeps renewing; a does not.
    let almost = T0 + SESSION_LEASE_NS - 1;
    assert!(exec(&f.ns, almost - SEC, None, Op::RenewSession { session: f.b }).is_ok());
    f.must_refuse(almost, f.b, 0, 0, LockKind::Read, Errno::EAGAIN);
    let ended = T0 + SESSION_LEASE_NS;
    f.must_set(ended, f.b, 1, 0, 0, LockKind::Read);
    // The ended session is gone: it can neither renew nor lock (ENOLCK), and its locks
    // were swept by a renewal.
    assert!(exec(&f.ns, ended + 1, None, Op::RenewSession { session: f.b }).is_ok());
    f.must_refuse(ended + 2, f.a, 5, 5, LockKind::Read, Errno::ENOLCK);
    match exec(&f.ns, ended + 2, None, Op::RenewSession { session: f.a }) {
        Err(OpError::Explained { errno, .. }) if errno == Errno::ENOLCK.0 => {}
        other => panic!("renewing an ended session: {other:?}"),
    }
    let raw_a: Vec<_> = f.held().into_iter().filter(|(s, _, _)| *s == f.a).collect();
    assert!(raw_a.is_empty(), "{raw_a:?}");
}

#[test]
fn a_closed_session_releases_everything_and_bad_requests_are_refused() {
    let f = fixture();
    let t = T0 + SEC;
    f.must_set(t, f.a, 1, 0, 9, LockKind::Write);
    f.must_set(t, f.a, 2, 20, 29, LockKind::Read);
    assert!(exec(&f.ns, t, None, Op::CloseSession { session: f.a }).is_ok());
    assert!(f.held().is_empty());
    f.must_set(t, f.b, 1, 0, 29, LockKind::Write);
    // Closing twice, or a session that never was, is done.
    assert!(exec(&f.ns, t, None, Op::CloseSession { session: f.a }).is_ok());
    assert!(exec(&f.ns, t, None, Op::CloseSession { session: 999 }).is_ok());
    f.must_refuse(t, f.a, 0, 0, LockKind::Read, Errno::ENOLCK);
    f.must_refuse(t, 999, 0, 0, LockKind::Read, Errno::ENOLCK);
    f.must_refuse(t, f.b, 10, 9, LockKind::Read, Errno::EINVAL);
    let missing = Op::SetLock {
        lock: LockRequest {
            ino: 12_345,
            ..req(f.file, f.b, LockKind::Read)
        },
        pid: 1,
    };
    assert_eq!(
        exec(&f.ns, t, None, missing),
        Err(OpError::Errno(Errno::ENOENT.0))
    );
}

/// A site names only its own sessions (the site is the caller's certificate's): site-b
/// cannot renew, close, lock with, reserve inodes for or take delegations with site-a's
/// session, nor issue a command as its holder; an operator (no site) may close it.
#[test]
fn a_site_names_only_its_own_sessions() {
    let f = fixture();
    let t = T0 + SEC;
    f.must_set(t, f.a, 1, 0, 9, LockKind::Write);
    let unlock = Op::SetLock {
        lock: req(f.file, f.a, LockKind::Unlock),
        pid: 1,
    };
    let foreign = [
        Op::RenewSession { session: f.a },
        Op::CloseSession { session: f.a },
        Op::ReserveInodes { session: f.a },
        unlock,
        Op::AcquireDelegation {
            session: f.a,
            subtree: ROOT_INO,
        },
    ];
    let must_eperm = |r: Reply, what: &str| match r {
        Err(OpError::Explained { errno, reason }) if errno == Errno::EPERM.0 => {
            assert!(reason.contains("site-a"), "{what}: {reason}");
        }
        other => panic!("{what} from site-b: {other:?}, not EPERM"),
    };
    for op in foreign {
        let what = format!("{op:?}");
        must_eperm(exec(&f.ns, t, Some("site-b"), op), &what);
    }
    let as_holder = Command {
        time_ns: t,
        site: Some("site-b".into()),
        session: Some(f.a),
        holder_only: false,
        fence: None,
        op: Op::Mkdir {
            parent: ROOT_INO,
            name: b"d".to_vec(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        },
    };
    must_eperm(
        f.ns.execute(&as_holder).expect("store"),
        "a mkdir as a's holder",
    );
    // Nothing changed: a's lock is held, and site-a renews its session.
    assert_eq!(f.held().len(), 1);
    assert!(exec(&f.ns, t, Some("site-a"), Op::RenewSession { session: f.a }).is_ok());
    assert!(exec(&f.ns, t, None, Op::CloseSession { session: f.a }).is_ok());
    assert!(f.held().is_empty());
}

fn req(ino: InodeId, session: u64, kind: LockKind) -> LockRequest {
    LockRequest {
        ino,
        session,
        owner: 1,
        start: 0,
        end: u64::MAX,
        kind,
    }
}

/// Through real members: F_GETLK names the holder, a blocked request is woken by the
/// release (not by its periodic recheck), and waiting adds no log entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_lock_is_granted_when_the_holder_releases_it() {
    let cluster = Cluster::start(3, &[]).await;
    let c = cluster.client();
    let file = c
        .mknod(ROOT_INO, b"db", FileKind::Regular, 0o644, 0, 0, 0, None)
        .await
        .expect("mknod")
        .ino;
    let (a, _) = c.open_session().await.expect("session a");
    let (b, _) = c.open_session().await.expect("session b");
    c.set_lock(req(file, a, LockKind::Write), 7, Duration::ZERO)
        .await
        .expect("a locks");
    let seen = c
        .get_lock(req(file, b, LockKind::Read))
        .await
        .expect("getlk");
    assert_eq!(seen, Some(held_by(7)));
    assert_eq!(
        c.get_lock(req(file, a, LockKind::Read)).await.expect("own"),
        None
    );
    let refused = c
        .set_lock(req(file, b, LockKind::Read), 8, Duration::ZERO)
        .await;
    assert_eq!(refused.map_err(|e| e.to_errno()), Err(Errno::EAGAIN));

    let leader = cluster.must_leader().await;
    let applied = |s: mobilus_proto::pb::StatusReply| s.entries_applied;
    let before = applied(
        c.status_of(&cluster.members[leader].addr)
            .await
            .expect("status"),
    );
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let r = c
                .set_lock(req(file, b, LockKind::Read), 8, Duration::from_secs(4))
                .await;
            (r, start.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    let during = applied(
        c.status_of(&cluster.members[leader].addr)
            .await
            .expect("status"),
    );
    assert!(
        during <= before + 1,
        "a waiter proposed again while the lock was held: {before} -> {during} entries"
    );
    c.set_lock(req(file, a, LockKind::Unlock), 7, Duration::ZERO)
        .await
        .expect("a unlocks");
    let (granted, waited) = waiter.await.expect("waiter");
    granted.expect("b is granted the lock once a releases it");
    // Woken by the release at 0.8 s, not by the 2 s recheck.
    assert!(waited < Duration::from_millis(1_900), "waited {waited:?}");
    // A request that cannot be granted within its wait answers EAGAIN.
    let start = Instant::now();
    let r = c
        .set_lock(req(file, a, LockKind::Write), 7, Duration::from_millis(300))
        .await;
    assert_eq!(r.map_err(|e| e.to_errno()), Err(Errno::EAGAIN));
    assert!(start.elapsed() >= Duration::from_millis(300));
}

fn held_by(pid: u32) -> HeldLock {
    HeldLock {
        start: 0,
        end: u64::MAX,
        write: true,
        pid,
    }
}
