//! Refresh: bring a published clone up to date with its source, for every file the
//! clone has not changed since it was copied.
//!
//! When a clone copies a regular file it records the pair and a print of the file as
//! both sides then were (`f` ‖ clone ‖ copy → `FileOrigin`): a BLAKE3 of its size, mode,
//! owner, mtime and slice records. Any write, truncate or chmod on either side changes
//! the side's print (a write always adds a slice record), and no clock is compared, so a
//! leader's clock cannot make a change look old. A refresh walks the pairs in bounded
//! steps with both subtrees frozen (as a clone freezes its source, and with their
//! delegations recalled first):
//!
//! - changed in the source only: the copy takes the source's slices (counts moved in the
//!   same transaction) and attributes, and the pair's print becomes the new one;
//! - changed in the clone only: kept; changed on both sides: left alone and listed;
//! - gone from either side: left alone.
//!
//! Files made in the source after the clone are not added, nor are names or xattrs
//! changed: a refresh updates contents and attributes of the files the clone copied.

use mobilus_proto::fs::{Attr, CloneInfo, CloneState, FileKind, InodeId, RefreshInfo, SubtreeId};
use mobilus_proto::status::Errno;
use serde::{Deserialize, Serialize};

use super::clone::{self, CloneRecord, CLONE_LEASE_NS};
use super::keys::{self, Cf};
use super::subtree::{self, log_now};
use super::txn::Txn;
use super::{delegation, file, save, update_counters, InodeRecord, SliceRecord};
use crate::codec;
use crate::error::NsError;
use crate::types::OpError;

/// Conflicts listed in full; beyond this they are only counted.
const MAX_LISTED_CONFLICTS: usize = 1_000;

/// A file a clone copied: its source, and both sides' print as they were then (or as
/// the last refresh left them).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FileOrigin {
    pub src: InodeId,
    pub print: [u8; 32],
}

fn source_key(dst: InodeId) -> Vec<u8> {
    let mut k = b"o".to_vec();
    k.extend_from_slice(&dst.to_be_bytes());
    k
}

fn origin_key(dst: InodeId, copy: Option<InodeId>) -> Vec<u8> {
    let mut k = b"f".to_vec();
    k.extend_from_slice(&dst.to_be_bytes());
    if let Some(copy) = copy {
        k.extend_from_slice(&copy.to_be_bytes());
    }
    k
}

/// A file's print: what any change of its contents or attributes changes.
fn print_of(attr: &Attr, slices: &[(Vec<u8>, Vec<u8>)]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for n in [
        attr.size,
        u64::from(attr.mode),
        u64::from(attr.uid),
        u64::from(attr.gid),
        attr.mtime_ns as u64,
    ] {
        h.update(&n.to_be_bytes());
    }
    for (k, v) in slices {
        h.update(&k[8..]);
        h.update(&(v.len() as u64).to_be_bytes());
        h.update(v);
    }
    *h.finalize().as_bytes()
}

/// A file's stored slice records, as (key, value).
type Slices = Vec<(Vec<u8>, Vec<u8>)>;

/// A regular file's record, slices and print; `None` if it is gone (or not a file).
fn current(
    txn: &Txn<'_>,
    ino: InodeId,
) -> Result<Option<(InodeRecord, Slices, [u8; 32])>, NsError> {
    let Some(rec) = txn.get::<InodeRecord>(Cf::Inodes, &keys::ino(ino))? else {
        return Ok(None);
    };
    if rec.attr.kind != FileKind::Regular || rec.attr.nlink == 0 {
        return Ok(None);
    }
    let slices = txn.scan_all(Cf::Slices, &keys::ino(ino))?;
    let print = print_of(&rec.attr, &slices);
    Ok(Some((rec, slices, print)))
}

/// The clone copied `src` (whose attributes and slices these are) as `copy`.
pub(crate) fn remember_origin(
    txn: &mut Txn<'_>,
    dst: InodeId,
    copy: InodeId,
    src: InodeId,
    attr: &Attr,
    slices: &[(Vec<u8>, Vec<u8>)],
) -> Result<(), NsError> {
    let origin = FileOrigin {
        src,
        print: print_of(attr, slices),
    };
    Ok(txn.put(Cf::Clones, origin_key(dst, Some(copy)), &origin)?)
}

/// Clone `dst` was published as a copy of subtree `src`.
pub(crate) fn remember_source(
    txn: &mut Txn<'_>,
    dst: InodeId,
    src: SubtreeId,
) -> Result<(), NsError> {
    Ok(txn.put(Cf::Clones, source_key(dst), &src)?)
}

/// An aborted clone's pairs go with it.
pub(crate) fn forget_origins(txn: &mut Txn<'_>, dst: InodeId) -> Result<(), NsError> {
    txn.delete(Cf::Clones, source_key(dst));
    for (k, _) in txn.scan_all(Cf::Clones, &origin_key(dst, None))? {
        txn.delete(Cf::Clones, k);
    }
    Ok(())
}

/// Refuse a subtree being cloned, refreshed or removed now.
fn refuse_busy(txn: &Txn<'_>, root: SubtreeId, now: i64) -> Result<(), NsError> {
    if clone::get(txn, root)?.is_some() {
        return Err(OpError::explained(
            Errno::EBUSY,
            format!("subtree {root} is being changed by a clone step"),
        )
        .into());
    }
    if let Some(by) = txn.get::<InodeId>(Cf::Clones, &clone::freeze_key(root))? {
        if clone::get(txn, by)?.is_some_and(|c| c.freezes(now)) {
            return Err(OpError::explained(
                Errno::EBUSY,
                format!("subtree {root} is frozen by clone {by}"),
            )
            .into());
        }
    }
    Ok(())
}

/// `StartRefresh`: freeze the clone and its source, their delegations recalled first.
pub(crate) fn start(txn: &mut Txn<'_>, stamp: i64, dst: InodeId) -> Result<CloneInfo, NsError> {
    let src: SubtreeId = txn.get(Cf::Clones, &source_key(dst))?.ok_or_else(|| {
        NsError::from(OpError::explained(
            Errno::EINVAL,
            format!("subtree {dst} is not a clone (snapshots are not refreshed)"),
        ))
    })?;
    let dst_sub = subtree::must_get(txn, dst)?;
    let Some(src_sub) = subtree::get(txn, src)? else {
        return Err(OpError::explained(
            Errno::ENOENT,
            format!("the source of clone {dst}, subtree {src}, is gone"),
        )
        .into());
    };
    let now = log_now(txn, stamp)?;
    refuse_busy(txn, dst, now)?;
    refuse_busy(txn, src, now)?;
    delegation::check(txn, src, &src_sub, now, None, false)?;
    delegation::check(txn, dst, &dst_sub, now, None, false)?;
    let rec = CloneRecord {
        src,
        parent: 0,
        name: Vec::new(),
        owner: dst_sub.owner.clone().unwrap_or_default(),
        aborting: false,
        snapshot: false,
        pending: Vec::new(),
        deadline_ns: now + CLONE_LEASE_NS,
        started_ns: now,
        total_inodes: dst_sub.inodes,
        copied_inodes: 0,
        copied_bytes: 0,
        why: String::new(),
        refresh: Some(RefreshInfo::default()),
        refresh_after: 0,
    };
    clone::put(txn, dst, &rec)?;
    txn.put(Cf::Clones, clone::freeze_key(src), &dst)?;
    txn.put(Cf::Clones, clone::freeze_key(dst), &dst)?;
    clone::info(txn, dst, &rec, CloneState::Refreshing)
}

/// A refresh ends (`Done`) or stops (`Gone`): both sides thaw.
fn finish(
    txn: &mut Txn<'_>,
    dst: InodeId,
    mut rec: CloneRecord,
    state: CloneState,
    why: &str,
) -> Result<CloneInfo, NsError> {
    txn.delete(Cf::Clones, clone::record_key(dst));
    for root in [rec.src, dst] {
        if txn.get::<InodeId>(Cf::Clones, &clone::freeze_key(root))? == Some(dst) {
            txn.delete(Cf::Clones, clone::freeze_key(root));
        }
    }
    rec.why = why.to_string();
    clone::info(txn, dst, &rec, state)
}

/// Stop a refresh halfway: what it refreshed stays refreshed, each file whole.
pub(crate) fn stop(
    txn: &mut Txn<'_>,
    dst: InodeId,
    rec: CloneRecord,
    why: &str,
) -> Result<CloneInfo, NsError> {
    finish(txn, dst, rec, CloneState::Gone, why)
}

/// One step: look at most `limit` more of the clone's files (and their slices).
pub(crate) fn step(
    txn: &mut Txn<'_>,
    stamp: i64,
    dst: InodeId,
    limit: u64,
    mut rec: CloneRecord,
) -> Result<CloneInfo, NsError> {
    let now = log_now(txn, stamp)?;
    if now >= rec.deadline_ns {
        return stop(
            txn,
            dst,
            rec,
            "no step came for 10 s; the files refreshed so far stay refreshed, run it again",
        );
    }
    rec.deadline_ns = now + CLONE_LEASE_NS;
    let prefix = origin_key(dst, None);
    let start = origin_key(dst, Some(rec.refresh_after.saturating_add(1)));
    let mut pairs = Vec::new();
    txn.scan(Cf::Clones, &prefix, &start, |k, v| {
        if pairs.len() as u64 == limit {
            return Ok(std::ops::ControlFlow::Break(()));
        }
        pairs.push((keys::u64_at(k, 9), v.to_vec()));
        Ok(std::ops::ControlFlow::Continue(()))
    })?;
    if pairs.is_empty() {
        return finish(txn, dst, rec, CloneState::Done, "");
    }
    let mut r = rec.refresh.take().unwrap_or_default();
    let mut done = 0u64;
    for (copy, v) in pairs {
        if done >= limit {
            break;
        }
        rec.refresh_after = copy;
        let mut origin: FileOrigin = codec::decode(&v)?;
        r.files += 1;
        let (Some((mine, _, my_print)), Some((theirs, their_slices, their_print))) =
            (current(txn, copy)?, current(txn, origin.src)?)
        else {
            r.gone += 1;
            done += 1;
            continue;
        };
        done += 1 + their_slices.len() as u64;
        match (my_print == origin.print, their_print == origin.print) {
            (true, true) => {}
            (false, true) => r.kept += 1,
            (false, false) => {
                r.conflict_count += 1;
                if r.conflicts.len() < MAX_LISTED_CONFLICTS {
                    r.conflicts.push(copy);
                }
            }
            (true, false) => {
                take_source(txn, now, mine, &theirs, their_slices)?;
                origin.print = their_print;
                txn.put(Cf::Clones, origin_key(dst, Some(copy)), &origin)?;
                r.refreshed += 1;
            }
        }
    }
    rec.refresh = Some(r);
    clone::put(txn, dst, &rec)?;
    clone::info(txn, dst, &rec, CloneState::Refreshing)
}

/// The copy becomes what the source is now: its slices (counts moved in this
/// transaction) and attributes; its ctime is the refresh's.
fn take_source(
    txn: &mut Txn<'_>,
    now: i64,
    mut mine: InodeRecord,
    theirs: &InodeRecord,
    their_slices: Slices,
) -> Result<(), NsError> {
    let copy = mine.attr.ino;
    file::drop_slices_from(txn, now, copy, 0)?;
    for (k, v) in their_slices {
        let slice: SliceRecord = codec::decode(&v)?;
        for c in &slice.chunks {
            file::incref(txn, &c.hash)?;
        }
        // Sites that follow the clone copy what it takes, as they would a write.
        super::feed::record_refs(txn, mine.attr.subtree, slice.chunks.iter())?;
        let (block, seq) = (keys::u64_at(&k, 8), keys::u64_at(&k, 16));
        txn.put_raw(Cf::Slices, keys::slice(copy, block, seq), v);
    }
    let delta = theirs.attr.size as i64 - mine.attr.size as i64;
    update_counters(txn, |c| c.bytes = c.bytes.saturating_add_signed(delta))?;
    subtree::account(txn, mine.attr.subtree, 0, delta)?;
    let a = &theirs.attr;
    (mine.attr.size, mine.attr.mode, mine.attr.uid, mine.attr.gid) = (a.size, a.mode, a.uid, a.gid);
    (mine.attr.mtime_ns, mine.attr.atime_ns) = (a.mtime_ns, a.atime_ns);
    mine.attr.ctime_ns = now.max(mine.attr.ctime_ns);
    save(txn, &mine)?;
    Ok(())
}
