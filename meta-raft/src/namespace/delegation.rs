//! Delegations: one mount of a subtree's owner site may hold the subtree's delegation, and
//! while it does, no other mount may change the subtree, so the holder can cache it
//! authoritatively (attributes, entries, listings, slice maps) as a local file system
//! would, like an NFSv4 write delegation or a CephFS capability.
//!
//! A delegation is held by a mount's session (`locks.rs`) and lasts while all of these do,
//! in log time: the session's lease, the owner site's lease, and, once recalled, a grace
//! period. So a holder that dies, pauses or is cut off blocks others only until its
//! session's lease ends, and a forced takeover (after the site's lease) finds it gone. A
//! command of any other session that changes the subtree is refused with `Delegated`
//! (nothing done); the member that received it recalls the delegation, waits for the
//! release (or the end of the lease), and proposes it again.
//!
//! Keys (`locks` cf): `d` ‖ subtree → [`DelegationRecord`]; `D` ‖ session ‖ subtree → ()
//! (what a session holds, for its renewal and its end).

use mobilus_proto::fs::{DelegationGrant, InodeId, SubtreeId, SubtreeState, ROOT_INO};
use mobilus_proto::status::Errno;
use serde::{Deserialize, Serialize};

use super::locks::session_record;
use super::subtree::{self, log_now, SubtreeRecord};
use super::{keys, Cf, InodeRecord, Txn};
use crate::error::NsError;
use crate::types::OpError;

/// How long a recalled delegation may still be used: a holder that does not answer a
/// recall blocks the conflict at most this long (or until its session ends, if sooner).
pub const RECALL_GRACE_NS: i64 = 10_000_000_000;
/// After a recall, nobody may take the delegation for this long: the conflicting access
/// gets its turn, and two mounts cannot bounce it back and forth faster.
pub const REACQUIRE_HOLD_NS: i64 = 5_000_000_000;

/// A subtree's delegation as stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DelegationRecord {
    /// The holding session (`None`: given back).
    pub holder: Option<u64>,
    pub granted_ns: i64,
    /// When the current holder was asked to give it back.
    pub recalled_ns: Option<i64>,
    /// The last recall, whoever held it then (for [`REACQUIRE_HOLD_NS`]).
    pub last_recall_ns: i64,
    /// The holder has closes answered before their writes commit ([`set_write_back`]):
    /// another session's read recalls the delegation first. Cleared when the delegation
    /// is given back, granted anew, or found ended by a recall.
    pub write_back: bool,
    /// The `seq` of the last `SetWriteBack` applied (0 since the grant): an older one
    /// is void.
    pub write_back_seq: u64,
}

fn record_key(subtree: SubtreeId) -> Vec<u8> {
    let mut k = vec![b'd'];
    k.extend_from_slice(&subtree.to_be_bytes());
    k
}

/// `held_key(session, None)` is the prefix of every delegation a session holds.
fn held_key(session: u64, subtree: Option<SubtreeId>) -> Vec<u8> {
    let mut k = vec![b'D'];
    k.extend_from_slice(&session.to_be_bytes());
    if let Some(s) = subtree {
        k.extend_from_slice(&s.to_be_bytes());
    }
    k
}

fn record(txn: &Txn<'_>, subtree: SubtreeId) -> Result<Option<DelegationRecord>, NsError> {
    Ok(txn.get(Cf::Locks, &record_key(subtree))?)
}

/// The holder of `subtree`'s delegation and when the delegation ends (log time), if it
/// is still in force at `now`.
pub(crate) fn live_holder(
    txn: &Txn<'_>,
    subtree: SubtreeId,
    sub: &SubtreeRecord,
    now: i64,
) -> Result<Option<(u64, i64)>, NsError> {
    let Some(rec) = record(txn, subtree)? else {
        return Ok(None);
    };
    let Some(holder) = rec.holder else {
        return Ok(None);
    };
    let end = valid_until(txn, holder, sub, &rec)?;
    Ok((now < end).then_some((holder, end)))
}

/// Who holds `subtree`'s delegation at `now`, and whether it is recalled (status).
pub(crate) fn holder(
    txn: &Txn<'_>,
    subtree: SubtreeId,
    sub: &SubtreeRecord,
    now: i64,
) -> Result<Option<(u64, bool)>, NsError> {
    let Some((holder, _)) = live_holder(txn, subtree, sub, now)? else {
        return Ok(None);
    };
    let recalled = record(txn, subtree)?.is_some_and(|r| r.recalled_ns.is_some());
    Ok(Some((holder, recalled)))
}

/// When `holder`'s delegation ends: the soonest of its session's lease, its site's
/// lease (only while that site owns the subtree) and a recall's grace.
fn valid_until(
    txn: &Txn<'_>,
    holder: u64,
    sub: &SubtreeRecord,
    rec: &DelegationRecord,
) -> Result<i64, NsError> {
    let Some(session) = session_record(txn, holder)? else {
        return Ok(0);
    };
    if session.site.is_none() || session.site != sub.owner {
        return Ok(0);
    }
    let site = session.site.as_deref().unwrap_or_default();
    let mut end = session.lease_end_ns.min(subtree::site_lease(txn, site)?);
    if let Some(r) = rec.recalled_ns {
        end = end.min(r + RECALL_GRACE_NS);
    }
    Ok(end)
}

/// Set by the hidden `--unsafe-no-write-back-recall` (a deliberate bug a test must
/// catch).
static WRITE_BACK_RECALL_DISABLED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// TEST ONLY: reads never recall a delegation for its write-backs, in this process.
pub fn disable_write_back_recall_for_tests() {
    WRITE_BACK_RECALL_DISABLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Set by the hidden `--unsafe-no-delegation-check` (a deliberate bug a test must catch).
static DELEGATION_CHECK_DISABLED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// TEST ONLY: let every session change delegated subtrees, in this process.
pub fn disable_delegation_check_for_tests() {
    DELEGATION_CHECK_DISABLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The ownership check's part: a change of `subtree` by any session but its delegation's
/// holder is refused while the delegation lasts.
pub(crate) fn check(
    txn: &Txn<'_>,
    subtree: SubtreeId,
    sub: &SubtreeRecord,
    now: i64,
    session: Option<u64>,
    holder_only: bool,
) -> Result<(), NsError> {
    if DELEGATION_CHECK_DISABLED.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    match live_holder(txn, subtree, sub, now)? {
        // A write-back of a delegation since given to another: refused for good, and
        // the new holder is not recalled for it.
        Some((holder, _)) if holder_only && session != Some(holder) => Err(lost(subtree)),
        Some((holder, end)) if session != Some(holder) => Err(OpError::Delegated {
            subtree,
            holder,
            remaining_ns: end - now,
        }
        .into()),
        None if holder_only => Err(lost(subtree)),
        _ => Ok(()),
    }
}

/// A holder-only command (a write-back) whose delegation has ended: what it carries
/// was answered under a delegation another mount may since have read past.
pub(crate) fn lost(subtree: SubtreeId) -> NsError {
    OpError::explained(
        Errno::ESTALE,
        format!("the delegation of subtree {subtree} this write relied on has ended"),
    )
    .into()
}

/// `SetWriteBack`: only the live holder says whether it has uncommitted closes.
pub(crate) fn set_write_back(
    txn: &mut Txn<'_>,
    stamp: i64,
    session: u64,
    subtree: SubtreeId,
    on: bool,
    seq: u64,
) -> Result<(), NsError> {
    let now = log_now(txn, stamp)?;
    let (Some(sub), Some(mut rec)) = (subtree::get(txn, subtree)?, record(txn, subtree)?) else {
        return Err(lost(subtree));
    };
    match live_holder(txn, subtree, &sub, now)? {
        Some((holder, _)) if holder == session => {
            // One sent before another already applied (its answer was lost, it was
            // retried or forwarded late) says nothing any more.
            if seq > rec.write_back_seq {
                rec.write_back = on;
                rec.write_back_seq = seq;
                txn.put(Cf::Locks, record_key(subtree), &rec)?;
            }
            Ok(())
        }
        // Turning it off is never refused: nothing to protect.
        _ if !on => Ok(()),
        _ => Err(lost(subtree)),
    }
}

fn grant(
    sub: &SubtreeRecord,
    subtree: SubtreeId,
    end: i64,
    now: i64,
    rec: &DelegationRecord,
) -> DelegationGrant {
    DelegationGrant {
        subtree,
        epoch: sub.epoch,
        remaining_ns: (end - now).max(0),
        recalled: rec.recalled_ns.is_some(),
    }
}

/// `AcquireDelegation`: grant (or renew) `subtree`'s delegation to `session`.
pub(crate) fn acquire(
    txn: &mut Txn<'_>,
    stamp: i64,
    session: u64,
    subtree: SubtreeId,
) -> Result<DelegationGrant, NsError> {
    if subtree == ROOT_INO {
        return Err(OpError::explained(
            Errno::EINVAL,
            "the shared root subtree has no owner, so no delegation",
        )
        .into());
    }
    let now = log_now(txn, stamp)?;
    let Some(sub) = subtree::get(txn, subtree)? else {
        return Err(
            OpError::explained(Errno::EINVAL, format!("inode {subtree} is not a subtree")).into(),
        );
    };
    if sub.state != SubtreeState::Owned {
        return Err(OpError::explained(
            Errno::EBUSY,
            format!("subtree {subtree} is being created"),
        )
        .into());
    }
    // Not while a clone copies it, nor a snapshot: the holder would answer changes that
    // cannot commit.
    super::clone::refuse_frozen(txn, subtree, now)?;
    super::snapshot::refuse_read_only(txn, subtree)?;
    let Some(rec_session) = session_record(txn, session)? else {
        return Err(super::locks::expired(session));
    };
    if now >= rec_session.lease_end_ns {
        return Err(super::locks::expired(session));
    }
    let owner = sub.owner.clone().unwrap_or_default();
    if rec_session.site.as_deref() != Some(owner.as_str()) {
        return Err(OpError::NotOwner {
            subtree,
            owner,
            site: rec_session.site,
        }
        .into());
    }
    if now >= subtree::site_lease(txn, &owner)? {
        return Err(OpError::LeaseExpired { subtree, owner }.into());
    }
    let mut rec = record(txn, subtree)?.unwrap_or(DelegationRecord {
        holder: None,
        granted_ns: now,
        recalled_ns: None,
        last_recall_ns: i64::MIN,
        write_back: false,
        write_back_seq: 0,
    });
    if let Some((holder, end)) = live_holder(txn, subtree, &sub, now)? {
        if holder != session {
            return Err(OpError::explained(
                Errno::EBUSY,
                format!("subtree {subtree} is delegated to mount session {holder}"),
            )
            .into());
        }
        if rec.recalled_ns.is_some() {
            return Err(OpError::explained(
                Errno::EBUSY,
                format!("subtree {subtree}'s delegation is being recalled"),
            )
            .into());
        }
        return Ok(grant(&sub, subtree, end, now, &rec));
    }
    if now.saturating_sub(rec.last_recall_ns) < REACQUIRE_HOLD_NS {
        return Err(OpError::explained(
            Errno::EAGAIN,
            format!("subtree {subtree}'s delegation was recalled moments ago"),
        )
        .into());
    }
    if super::locks::others_lock_in(txn, subtree, session, now)? {
        return Err(OpError::explained(
            Errno::EAGAIN,
            format!("other mounts hold locks in subtree {subtree}"),
        )
        .into());
    }
    if let Some(old) = rec.holder {
        txn.delete(Cf::Locks, held_key(old, Some(subtree)));
    }
    rec.holder = Some(session);
    rec.granted_ns = now;
    rec.recalled_ns = None;
    rec.write_back = false;
    rec.write_back_seq = 0;
    txn.put(Cf::Locks, record_key(subtree), &rec)?;
    txn.put(Cf::Locks, held_key(session, Some(subtree)), &())?;
    let end = valid_until(txn, session, &sub, &rec)?;
    Ok(grant(&sub, subtree, end, now, &rec))
}

/// `ReleaseDelegation`: giving back what one does not hold is done.
pub(crate) fn release(txn: &mut Txn<'_>, session: u64, subtree: SubtreeId) -> Result<(), NsError> {
    txn.delete(Cf::Locks, held_key(session, Some(subtree)));
    let Some(mut rec) = record(txn, subtree)? else {
        return Ok(());
    };
    if rec.holder == Some(session) {
        rec.holder = None;
        rec.recalled_ns = None;
        rec.write_back = false;
        txn.put(Cf::Locks, record_key(subtree), &rec)?;
    }
    Ok(())
}

/// `RecallDelegation`: answers how long the delegation may still last (0: nobody holds
/// it). A second recall changes nothing.
pub(crate) fn recall(txn: &mut Txn<'_>, stamp: i64, subtree: SubtreeId) -> Result<i64, NsError> {
    let now = log_now(txn, stamp)?;
    let Some(sub) = subtree::get(txn, subtree)? else {
        return Ok(0);
    };
    let mut rec = record(txn, subtree)?.unwrap_or(DelegationRecord {
        holder: None,
        granted_ns: now,
        recalled_ns: None,
        last_recall_ns: i64::MIN,
        write_back: false,
        write_back_seq: 0,
    });
    let remaining = match live_holder(txn, subtree, &sub, now)? {
        Some(_) => {
            if rec.recalled_ns.is_none() {
                rec.recalled_ns = Some(now);
            }
            let holder = rec.holder.unwrap_or_default();
            valid_until(txn, holder, &sub, &rec)? - now
        }
        // Ended: whatever it had not committed is refused from now on (holder-only
        // commits are checked in log time, which only moves forward). It is given back
        // here for good: a lapsed site lease renewed later must not revive it.
        None => {
            if let Some(old) = rec.holder.take() {
                txn.delete(Cf::Locks, held_key(old, Some(subtree)));
            }
            rec.recalled_ns = None;
            rec.write_back = false;
            0
        }
    };
    rec.last_recall_ns = now;
    txn.put(Cf::Locks, record_key(subtree), &rec)?;
    Ok(remaining.max(0))
}

/// The subtree changed owner: whatever delegation it had is void.
pub(crate) fn clear(txn: &mut Txn<'_>, subtree: SubtreeId) -> Result<(), NsError> {
    if let Some(rec) = record(txn, subtree)? {
        if let Some(holder) = rec.holder {
            txn.delete(Cf::Locks, held_key(holder, Some(subtree)));
        }
        txn.delete(Cf::Locks, record_key(subtree));
    }
    Ok(())
}

/// The delegations `session` holds and how long each still lasts from `now`.
pub(crate) fn grants_of(
    txn: &Txn<'_>,
    session: u64,
    now: i64,
) -> Result<Vec<DelegationGrant>, NsError> {
    let mut out = Vec::new();
    for (k, _) in txn.scan_all(Cf::Locks, &held_key(session, None))? {
        let subtree = keys::u64_at(&k, 9);
        let (Some(sub), Some(rec)) = (subtree::get(txn, subtree)?, record(txn, subtree)?) else {
            continue;
        };
        if rec.holder != Some(session) {
            continue;
        }
        let end = valid_until(txn, session, &sub, &rec)?;
        if end > now {
            out.push(grant(&sub, subtree, end, now, &rec));
        }
    }
    Ok(out)
}

/// A session ended: it holds no delegation any more.
pub(crate) fn drop_session(txn: &mut Txn<'_>, session: u64) -> Result<(), NsError> {
    for (k, _) in txn.scan_all(Cf::Locks, &held_key(session, None))? {
        release(txn, session, keys::u64_at(&k, 9))?;
        txn.delete(Cf::Locks, k);
    }
    Ok(())
}

impl super::Namespace {
    /// The subtree of `ino` and its holder, if another session than `reader` holds its delegation with
    /// closes not yet committed: a read must recall it first. No clock: a delegation that
    /// has ended keeps the mark until a recall finds it ended.
    pub fn written_back_elsewhere(
        &self,
        ino: InodeId,
        reader: Option<u64>,
    ) -> Result<Option<(SubtreeId, u64)>, NsError> {
        if WRITE_BACK_RECALL_DISABLED.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(None);
        }
        self.holder_elsewhere(ino, reader, true)
    }

    /// The subtree of `ino` and the session other than `reader` that holds its
    /// delegation (only one with write-backs, if `write_back_only`), if any.
    pub fn holder_elsewhere(
        &self,
        ino: InodeId,
        reader: Option<u64>,
        write_back_only: bool,
    ) -> Result<Option<(SubtreeId, u64)>, NsError> {
        self.with_view(|txn| {
            let Some(inode) = txn.get::<InodeRecord>(Cf::Inodes, &keys::ino(ino))? else {
                return Ok(None);
            };
            let subtree = inode.attr.subtree;
            Ok(record(txn, subtree)?.and_then(|r| match r.holder {
                Some(holder) if (r.write_back || !write_back_only) && Some(holder) != reader => {
                    Some((subtree, holder))
                }
                _ => None,
            }))
        })
    }

    /// Whether `session` holds `subtree`'s delegation, not recalled, in this state (its
    /// lease is the holder's to judge: a holder's read, `server/applied.rs`).
    pub fn held_by(&self, subtree: SubtreeId, session: u64) -> Result<bool, NsError> {
        self.with_view(|txn| {
            Ok(record(txn, subtree)?
                .is_some_and(|r| r.holder == Some(session) && r.recalled_ns.is_none()))
        })
    }

    /// The delegations `session` holds, as of log time `now` (the recall stream's view).
    pub fn delegations_of(&self, session: u64, now: i64) -> Result<Vec<DelegationGrant>, NsError> {
        self.with_view(|txn| grants_of(txn, session, now))
    }

    /// Whether a change of `subtree` by `session` would be refused as delegated at `now`
    /// (a member's own clock: a holder's lease runs out without any entry).
    pub fn delegated_at(
        &self,
        subtree: SubtreeId,
        session: Option<u64>,
        now: i64,
    ) -> Result<bool, NsError> {
        self.with_view(|txn| {
            let Some(sub) = subtree::get(txn, subtree)? else {
                return Ok(false);
            };
            Ok(matches!(live_holder(txn, subtree, &sub, now)?, Some((h, _)) if Some(h) != session))
        })
    }
}
