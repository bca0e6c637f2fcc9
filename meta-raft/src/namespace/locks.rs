//! Cluster-wide advisory locks: POSIX record locks (and flock, which a mount sends as a
//! whole-file record lock, as NFS does), held by lock sessions.
//!
//! A mount opens a session and renews it through Raft; a session whose lease has ended
//! (in log time, so every member agrees) holds nothing: its locks stop conflicting at
//! that moment and are deleted by the next renewal's sweep. An owner is a session and
//! the kernel's lock-owner id within it. An owner's locks on a file are one value, kept
//! sorted, disjoint and merged, so a request replaces whatever the owner held on its
//! range, as fcntl does.

use std::ops::ControlFlow;

use mobilus_proto::fs::{DelegationGrant, HeldLock, InodeId, LockKind, LockRequest};
use mobilus_proto::status::Errno;
use serde::{Deserialize, Serialize};

use super::delegation;
use super::subtree::{log_now, read_log_now};
use super::{keys, load, Cf, Txn};
use crate::error::NsError;
use crate::types::{Command, OpError};

/// How long a session lasts after its last renewal (log time). A mount renews every
/// `SESSION_LEASE_NS / 5`.
pub const SESSION_LEASE_NS: i64 = 10_000_000_000;
/// Expired sessions one renewal deletes, at most (the rest wait for the next).
const SWEEP_PER_RENEWAL: usize = 8;

/// A lock session as stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// The site of the mount that opened it.
    pub site: Option<String>,
    pub lease_end_ns: i64,
}

fn session_key(session: u64) -> Vec<u8> {
    let mut k = vec![b's'];
    k.extend_from_slice(&session.to_be_bytes());
    k
}

/// `lock_key(ino, None, None)` is the prefix of every lock on `ino`.
fn lock_key(ino: InodeId, session: Option<u64>, owner: Option<u64>) -> Vec<u8> {
    let mut k = vec![b'l'];
    k.extend_from_slice(&ino.to_be_bytes());
    for part in [session, owner].into_iter().flatten() {
        k.extend_from_slice(&part.to_be_bytes());
    }
    k
}

/// `held_key(session, None)` is the prefix of the inodes a session holds locks on.
fn held_key(session: u64, ino: Option<InodeId>) -> Vec<u8> {
    let mut k = vec![b'i'];
    k.extend_from_slice(&session.to_be_bytes());
    if let Some(ino) = ino {
        k.extend_from_slice(&ino.to_be_bytes());
    }
    k
}

pub(crate) fn expired(session: u64) -> NsError {
    OpError::explained(
        Errno::ENOLCK,
        format!("lock session {session} has ended (its lease ran out): its locks are gone"),
    )
    .into()
}

/// The session's record, if it has not been deleted.
pub(crate) fn session_record(
    txn: &Txn<'_>,
    session: u64,
) -> Result<Option<SessionRecord>, NsError> {
    Ok(txn.get(Cf::Locks, &session_key(session))?)
}

/// Whether `session` holds locks at log time `now`.
fn live(txn: &Txn<'_>, session: u64, now: i64) -> Result<bool, NsError> {
    let rec: Option<SessionRecord> = txn.get(Cf::Locks, &session_key(session))?;
    Ok(rec.is_some_and(|r| now < r.lease_end_ns))
}

/// A command of a site names only sessions its own site's mounts opened: a mount of
/// site-b may not renew, close, lock with, reserve inodes for, or take delegations with a
/// session of site-a. The site is the caller's certificate's (`authz::bind_site`), so this
/// holds whatever the request says. Every command passes it, beside the ownership check.
pub(crate) fn check_session_site(txn: &Txn<'_>, cmd: &Command) -> Result<(), NsError> {
    let Some(site) = cmd.site.as_deref() else {
        return Ok(());
    };
    for session in cmd.session.into_iter().chain(cmd.op.session()) {
        let rec: Option<SessionRecord> = txn.get(Cf::Locks, &session_key(session))?;
        if let Some(SessionRecord {
            site: Some(owner), ..
        }) = rec
        {
            if owner != site {
                return Err(OpError::explained(
                    Errno::EPERM,
                    format!("mount session {session} is of {owner}, not of {site}"),
                )
                .into());
            }
        }
    }
    Ok(())
}

impl super::Namespace {
    /// The site whose mount opened `session`: `None` if there is no such session,
    /// `Some(None)` if a tool of no site opened it.
    pub fn session_site(&self, session: u64) -> Result<Option<Option<String>>, NsError> {
        self.with_view(|txn| {
            Ok(txn
                .get::<SessionRecord>(Cf::Locks, &session_key(session))?
                .map(|r| r.site))
        })
    }
}

/// `OpenSession`.
pub(crate) fn open_session(
    txn: &mut Txn<'_>,
    stamp: i64,
    site: Option<&str>,
) -> Result<(u64, i64), NsError> {
    let now = log_now(txn, stamp)?;
    let id: u64 = txn.get(Cf::Sys, keys::sys::NEXT_SESSION)?.unwrap_or(1);
    txn.put(Cf::Sys, keys::sys::NEXT_SESSION.to_vec(), &(id + 1))?;
    let rec = SessionRecord {
        site: site.map(str::to_string),
        lease_end_ns: now + SESSION_LEASE_NS,
    };
    txn.put(Cf::Locks, session_key(id), &rec)?;
    sweep(txn, now)?;
    Ok((id, rec.lease_end_ns))
}

/// `RenewSession`: extends a live session; then deletes a few expired ones. Answers the
/// new lease end and the delegations the session still holds.
pub(crate) fn renew(
    txn: &mut Txn<'_>,
    stamp: i64,
    session: u64,
) -> Result<(i64, Vec<DelegationGrant>), NsError> {
    let now = log_now(txn, stamp)?;
    let key = session_key(session);
    let Some(mut rec) = txn.get::<SessionRecord>(Cf::Locks, &key)? else {
        return Err(expired(session));
    };
    if now >= rec.lease_end_ns {
        return Err(expired(session));
    }
    rec.lease_end_ns = now + SESSION_LEASE_NS;
    txn.put(Cf::Locks, key, &rec)?;
    sweep(txn, now)?;
    Ok((rec.lease_end_ns, delegation::grants_of(txn, session, now)?))
}

/// `CloseSession`: release everything it holds. Closing an unknown session is done.
pub(crate) fn close(txn: &mut Txn<'_>, session: u64) -> Result<(), NsError> {
    drop_session(txn, session)
}

fn drop_session(txn: &mut Txn<'_>, session: u64) -> Result<(), NsError> {
    delegation::drop_session(txn, session)?;
    for (k, _) in txn.scan_all(Cf::Locks, &held_key(session, None))? {
        let ino = keys::u64_at(&k, 9);
        for (lk, _) in txn.scan_all(Cf::Locks, &lock_key(ino, Some(session), None))? {
            txn.delete(Cf::Locks, lk);
        }
        txn.delete(Cf::Locks, k);
    }
    txn.delete(Cf::Locks, session_key(session));
    Ok(())
}

/// Delete up to `SWEEP_PER_RENEWAL` sessions whose lease ended before `now`.
fn sweep(txn: &mut Txn<'_>, now: i64) -> Result<(), NsError> {
    let mut ended = Vec::new();
    txn.scan(Cf::Locks, b"s", b"s", |k, v| {
        let rec: SessionRecord = crate::codec::decode(v)?;
        if now >= rec.lease_end_ns {
            ended.push(keys::u64_at(k, 1));
        }
        Ok(if ended.len() >= SWEEP_PER_RENEWAL {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    })?;
    for session in ended {
        drop_session(txn, session)?;
    }
    Ok(())
}

/// The first lock of a live owner other than `q`'s that conflicts with it.
fn conflict(txn: &Txn<'_>, now: i64, q: LockRequest) -> Result<Option<HeldLock>, NsError> {
    let (ino, start, end, kind) = (q.ino, q.start, q.end, q.kind);
    if kind == LockKind::Unlock {
        return Ok(None);
    }
    let mine = lock_key(ino, Some(q.session), Some(q.owner));
    let mut found = None;
    let mut holders = Vec::new();
    txn.scan(
        Cf::Locks,
        &lock_key(ino, None, None),
        &lock_key(ino, None, None),
        |k, v| {
            if k != mine.as_slice() {
                let held: Vec<HeldLock> = crate::codec::decode(v)?;
                if let Some(h) = held.into_iter().find(|h| h.conflicts(start, end, kind)) {
                    holders.push((keys::u64_at(k, 9), h));
                }
            }
            Ok(ControlFlow::Continue(()))
        },
    )?;
    for (holder, h) in holders {
        if live(txn, holder, now)? {
            found = Some(h);
            break;
        }
    }
    Ok(found)
}

/// `SetLock`.
pub(crate) fn set_lock(
    txn: &mut Txn<'_>,
    stamp: i64,
    q: LockRequest,
    pid: u32,
) -> Result<(), NsError> {
    let LockRequest {
        ino,
        session,
        owner,
        start,
        end,
        kind,
    } = q;
    if start > end {
        return Err(OpError::explained(Errno::EINVAL, "a lock's start is past its end").into());
    }
    let now = log_now(txn, stamp)?;
    if !live(txn, session, now)? {
        return Err(expired(session));
    }
    let inode = load(txn, ino)?;
    // The holder of the file's subtree's delegation grants locks there itself: anyone
    // else's lock waits for the delegation to come back, with the holder's locks. (An
    // unlock conflicts with nothing the holder granted.)
    if kind != LockKind::Unlock {
        let subtree = inode.attr.subtree;
        if let Some(sub) = super::subtree::get(txn, subtree)? {
            delegation::check(txn, subtree, &sub, now, Some(session), false)?;
        }
    }
    if conflict(txn, now, q)?.is_some() {
        return Err(Errno::EAGAIN.into());
    }
    let key = lock_key(ino, Some(session), Some(owner));
    let held: Vec<HeldLock> = txn.get(Cf::Locks, &key)?.unwrap_or_default();
    let next = HeldLock::apply(held, start, end, kind, pid);
    if next.is_empty() {
        txn.delete(Cf::Locks, key);
        // Another owner of this session may still hold locks on the inode.
        let prefix = lock_key(ino, Some(session), None);
        if txn.scan_all(Cf::Locks, &prefix)?.is_empty() {
            txn.delete(Cf::Locks, held_key(session, Some(ino)));
        }
    } else {
        txn.put(Cf::Locks, key, &next)?;
        txn.put(Cf::Locks, held_key(session, Some(ino)), &())?;
    }
    Ok(())
}

/// F_GETLK: the first lock of another live owner that would refuse `q`, judged at log
/// time or at `at` if that is later.
pub(crate) fn get_lock(
    txn: &Txn<'_>,
    q: LockRequest,
    at: i64,
) -> Result<Option<HeldLock>, NsError> {
    if q.start > q.end {
        return Err(OpError::explained(Errno::EINVAL, "a lock's start is past its end").into());
    }
    load(txn, q.ino)?;
    let now = read_log_now(txn)?.max(at);
    conflict(txn, now, q)
}

/// Whether a live session other than `session` holds a lock on a file of `subtree` (the
/// delegation is not granted then: its holder could not see that lock).
pub(crate) fn others_lock_in(
    txn: &Txn<'_>,
    subtree: mobilus_proto::fs::SubtreeId,
    session: u64,
    now: i64,
) -> Result<bool, NsError> {
    let mut holders = Vec::new();
    txn.scan(Cf::Locks, b"l", b"l", |k, _| {
        let (ino, holder) = (keys::u64_at(k, 1), keys::u64_at(k, 9));
        if holder != session {
            holders.push((ino, holder));
        }
        Ok(ControlFlow::Continue(()))
    })?;
    for (ino, holder) in holders {
        if !live(txn, holder, now)? {
            continue;
        }
        let in_subtree = txn
            .get::<super::InodeRecord>(Cf::Inodes, &keys::ino(ino))?
            .is_some_and(|i| i.attr.subtree == subtree);
        if in_subtree {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Every lock held on `ino` by a live session, with its (session, owner) (tests, tools).
pub(crate) fn held_on(txn: &Txn<'_>, ino: InodeId) -> Result<Vec<(u64, u64, HeldLock)>, NsError> {
    let now = read_log_now(txn)?;
    let mut out = Vec::new();
    for (k, v) in txn.scan_all(Cf::Locks, &lock_key(ino, None, None))? {
        let (session, owner) = (keys::u64_at(&k, 9), keys::u64_at(&k, 17));
        if !live(txn, session, now)? {
            continue;
        }
        let held: Vec<HeldLock> = crate::codec::decode(&v)?;
        out.extend(held.into_iter().map(|h| (session, owner, h)));
    }
    Ok(out)
}

impl super::Namespace {
    /// F_GETLK: the lock that would refuse `q`, if any.
    pub fn get_lock(&self, q: LockRequest) -> Result<Option<HeldLock>, NsError> {
        self.with_view(|txn| get_lock(txn, q, 0))
    }

    /// Whether `q` would still be refused at time `at` (a waiter's guess of log time: the
    /// log's clock moves only with commands, and a holder's lease runs out without one).
    pub fn lock_refused_at(&self, q: LockRequest, at: i64) -> Result<bool, NsError> {
        self.with_view(|txn| get_lock(txn, q, at))
            .map(|h| h.is_some())
    }

    /// Every lock of a live session on `ino`: (session, owner, lock).
    pub fn locks_on(&self, ino: InodeId) -> Result<Vec<(u64, u64, HeldLock)>, NsError> {
        self.with_view(|txn| held_on(txn, ino))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(start: u64, end: u64, write: bool) -> HeldLock {
        HeldLock {
            start,
            end,
            write,
            pid: 1,
        }
    }

    #[test]
    fn carving_splits_and_merging_joins() {
        let held = vec![lock(0, 99, true)];
        assert_eq!(
            HeldLock::carve(held, 10, 19),
            vec![lock(0, 9, true), lock(20, 99, true)]
        );
        let joined = HeldLock::merge(vec![
            lock(20, 99, true),
            lock(0, 9, true),
            lock(10, 19, true),
        ]);
        assert_eq!(joined, vec![lock(0, 99, true)]);
        let kept = HeldLock::merge(vec![lock(0, 9, true), lock(10, 19, false)]);
        assert_eq!(kept.len(), 2);
        assert_eq!(
            HeldLock::carve(vec![lock(5, u64::MAX, false)], 0, u64::MAX),
            vec![]
        );
        assert_eq!(
            HeldLock::merge(vec![lock(0, u64::MAX, false)]),
            vec![lock(0, u64::MAX, false)]
        );
    }
}
