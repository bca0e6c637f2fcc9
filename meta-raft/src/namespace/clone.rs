//! Clones: a subtree copied into a new subtree by its metadata alone.
//!
//! Chunks are content-addressed and counted, so a copy of a file is a copy of its slice
//! records with each chunk's count raised in the same transaction: no data byte is read,
//! written or sent, and a later write on either side adds its own slices (copy-on-write
//! by construction).
//!
//! A clone is made in bounded steps (`CloneStep`, at most [`MAX_CLONE_BATCH`] inodes and
//! slices each, one log entry), walking the source breadth first like a relabel. The copy
//! is hidden until the step that copies the last inode publishes it with one entry in its
//! parent directory. So a clone that fails or is abandoned halfway has no name: its steps
//! stop, and `AbortCloneStep`s remove what it copied (counts released as they go).
//!
//! The copy is of one point in the source's history: from `StartClone` until the clone
//! is published, the source is **frozen**. Every command that would change it is refused
//! in the ownership check with `frozen` (retryable: clients ask again, as after a
//! delegation's refusal), and its delegation is recalled before the clone starts and
//! not granted again meanwhile. The freeze lasts while steps keep coming: each renews it
//! for [`CLONE_LEASE_NS`] of log time. A clone whose driver died stops freezing its source
//! then, and its next step finds it abandoned (the source may have changed since) and
//! turns it to aborting.

use std::ops::ControlFlow;

use mobilus_proto::fs::{
    CloneInfo, CloneState, FileKind, InodeId, RefreshInfo, SubtreeId, SubtreeState, ROOT_INO,
};
use mobilus_proto::status::Errno;
use serde::{Deserialize, Serialize};

use super::keys::{self, Cf};
use super::subtree::{self, log_now, read_log_now, SubtreeRecord};
use super::txn::Txn;
use super::{
    delegation, dir, file, load, load_dir, save, update_counters, validate_name, DentryRecord,
    InodeRecord, SliceRecord, FIRST_COOKIE,
};
use crate::codec;
use crate::error::{NsError, StoreError};
use crate::types::OpError;

/// How long a clone's freeze of its source lasts after its last step (log time): long
/// enough to ride out a leader election, short enough that writers of a source whose
/// clone's driver died wait only this long.
pub const CLONE_LEASE_NS: i64 = 10_000_000_000;
/// Most inodes and slice records one step copies or removes (one bounded log entry).
pub const MAX_CLONE_BATCH: u32 = 10_000;

/// A clone being made, or being removed (`clones` cf, `c` ‖ dst).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CloneRecord {
    pub src: SubtreeId,
    pub parent: InodeId,
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    pub owner: String,
    pub aborting: bool,
    /// Published as snapshot `name` of `src` (read-only), not as an entry of `parent`.
    pub snapshot: bool,
    /// Copying: (source directory, its copy, the last cookie copied), breadth first.
    /// Aborting: copies of directories to empty, the one being emptied last.
    pub pending: Vec<(InodeId, InodeId, u64)>,
    pub deadline_ns: i64,
    pub started_ns: i64,
    pub total_inodes: u64,
    pub copied_inodes: u64,
    pub copied_bytes: u64,
    pub why: String,
    /// A refresh of a published clone (`namespace::refresh`): what it did so far, and the
    /// last of the clone's files it looked at.
    pub refresh: Option<RefreshInfo>,
    pub refresh_after: InodeId,
}

impl CloneRecord {
    /// Does it hold its source (and, refreshing, its clone) frozen at log time `now`:
    /// copying or refreshing, with steps still coming?
    pub(super) fn freezes(&self, now: i64) -> bool {
        !self.aborting && now < self.deadline_ns
    }
}

pub(super) fn record_key(dst: InodeId) -> Vec<u8> {
    let mut k = b"c".to_vec();
    k.extend_from_slice(&dst.to_be_bytes());
    k
}

pub(super) fn freeze_key(src: SubtreeId) -> Vec<u8> {
    let mut k = b"s".to_vec();
    k.extend_from_slice(&src.to_be_bytes());
    k
}

fn parent_key(parent: InodeId, dst: Option<InodeId>) -> Vec<u8> {
    let mut k = b"p".to_vec();
    k.extend_from_slice(&parent.to_be_bytes());
    if let Some(dst) = dst {
        k.extend_from_slice(&dst.to_be_bytes());
    }
    k
}

fn map_key(dst: InodeId, src_ino: Option<InodeId>) -> Vec<u8> {
    let mut k = b"m".to_vec();
    k.extend_from_slice(&dst.to_be_bytes());
    if let Some(ino) = src_ino {
        k.extend_from_slice(&ino.to_be_bytes());
    }
    k
}

pub(crate) fn get(txn: &Txn<'_>, dst: InodeId) -> Result<Option<CloneRecord>, NsError> {
    Ok(txn.get(Cf::Clones, &record_key(dst))?)
}

pub(super) fn must_get(txn: &Txn<'_>, dst: InodeId) -> Result<CloneRecord, NsError> {
    get(txn, dst)?.ok_or_else(|| {
        OpError::explained(Errno::ENOENT, format!("no clone {dst} is being made")).into()
    })
}

pub(super) fn put(txn: &mut Txn<'_>, dst: InodeId, rec: &CloneRecord) -> Result<(), NsError> {
    Ok(txn.put(Cf::Clones, record_key(dst), rec)?)
}

/// Set by the hidden `--unsafe-no-clone-freeze` (a deliberate bug the tests must catch);
/// the same on every member, so members still apply alike.
static CLONE_FREEZE_DISABLED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// TEST ONLY: let subtrees change while they are cloned, in this process.
pub fn disable_clone_freeze_for_tests() {
    CLONE_FREEZE_DISABLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Is subtree `src` frozen by a clone copying it (log time `now`)? Then nothing may
/// change it: the ownership check refuses such a command with `frozen`.
pub(crate) fn refuse_frozen(txn: &Txn<'_>, src: SubtreeId, now: i64) -> Result<(), NsError> {
    if CLONE_FREEZE_DISABLED.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    let Some(dst) = txn.get::<InodeId>(Cf::Clones, &freeze_key(src))? else {
        return Ok(());
    };
    match get(txn, dst)? {
        Some(rec) if rec.freezes(now) => Err(OpError::Frozen {
            subtree: src,
            clone: dst,
            remaining_ns: rec.deadline_ns - now,
        }
        .into()),
        _ => Ok(()),
    }
}

/// A directory a clone will be published in may not go away meanwhile (EBUSY).
pub(crate) fn refuse_publishing_parent(txn: &Txn<'_>, dir: InodeId) -> Result<(), NsError> {
    let prefix = parent_key(dir, None);
    let mut busy = None;
    txn.scan(Cf::Clones, &prefix, &prefix, |k, _| {
        busy = Some(keys::u64_at(k, 9));
        Ok(ControlFlow::Break(()))
    })?;
    match busy {
        Some(dst) => Err(OpError::explained(
            Errno::EBUSY,
            format!("clone {dst} is to be published in directory {dir}"),
        )
        .into()),
        None => Ok(()),
    }
}

/// The hidden roots of clones being made or removed, and the roots of snapshots: named
/// by their records, not by entries (fsck counts them named).
pub(crate) fn roots(view: &dyn super::KvRead) -> Result<Vec<InodeId>, NsError> {
    let mut out = super::snapshot::roots(view)?;
    for item in view.iter_from(Cf::Clones, b"c")? {
        let (k, _) = item?;
        if k.first() != Some(&b'c') {
            break;
        }
        out.push(keys::u64_at(&k, 1));
    }
    Ok(out)
}

/// The refusal of a directory that cannot take a new subtree (it must be of the shared
/// subtree, with no subtree above it).
fn check_parent(txn: &Txn<'_>, parent: InodeId) -> Result<InodeRecord, NsError> {
    let p = load_dir(txn, parent)?;
    let invalid = |why: String| -> NsError { OpError::explained(Errno::EINVAL, why).into() };
    if p.attr.subtree != ROOT_INO || (parent != ROOT_INO && subtree::get(txn, parent)?.is_some()) {
        return Err(invalid(format!(
            "directory {parent} is inside subtree {}; subtrees do not nest",
            p.attr.subtree
        )));
    }
    for above in subtree::ancestors(txn, parent)? {
        if above != ROOT_INO && subtree::get(txn, above)?.is_some() {
            return Err(invalid(format!(
                "directory {parent} is inside subtree {above}; subtrees do not nest"
            )));
        }
    }
    Ok(p)
}

/// `StartClone`: the hidden root of the copy, its subtree (preparing, so nothing can
/// change it by number either), and the source's freeze.
pub(crate) fn start(
    txn: &mut Txn<'_>,
    stamp: i64,
    src: SubtreeId,
    parent: InodeId,
    name: &[u8],
    owner: Option<&str>,
    snapshot: bool,
) -> Result<CloneInfo, NsError> {
    validate_name(name)?;
    if super::is_dot(name) {
        return Err(Errno::EEXIST.into());
    }
    if src == ROOT_INO {
        return Err(OpError::explained(
            Errno::EINVAL,
            "the shared root cannot be cloned; make the directory a subtree first",
        )
        .into());
    }
    let sub = subtree::must_get(txn, src)?;
    if sub.state != SubtreeState::Owned || get(txn, src)?.is_some() {
        return Err(OpError::explained(
            Errno::EBUSY,
            format!("subtree {src} is still being created"),
        )
        .into());
    }
    let now = log_now(txn, stamp)?;
    if let Some(other) = txn.get::<InodeId>(Cf::Clones, &freeze_key(src))? {
        match get(txn, other)? {
            Some(rec) if rec.freezes(now) => {
                return Err(OpError::explained(
                    Errno::EBUSY,
                    format!("subtree {src} is being cloned already (clone {other})"),
                )
                .into())
            }
            Some(rec) => {
                abandon(txn, other, rec, "no step came for 10 s")?;
            }
            None => txn.delete(Cf::Clones, freeze_key(src)),
        }
    }
    // The holder of the source's delegation commits what it answered and gives it back
    // first (the member recalls it and proposes again), so the copy holds every close
    // acknowledged before it.
    delegation::check(txn, src, &sub, now, None, false)?;
    if snapshot {
        if parent != src || owner.is_some() {
            return Err(OpError::explained(
                Errno::EINVAL,
                "a snapshot is published in its source's .snapshots, owned as its source",
            )
            .into());
        }
        if super::snapshot::get(txn, src, name)?.is_some() {
            return Err(OpError::explained(
                Errno::EEXIST,
                format!(
                    "subtree {src} has a snapshot {:?} already",
                    String::from_utf8_lossy(name)
                ),
            )
            .into());
        }
    } else {
        check_parent(txn, parent)?;
        if dir::dentry(txn, parent, name)?.is_some() {
            return Err(Errno::EEXIST.into());
        }
    }
    let prefix = parent_key(parent, None);
    for (k, _) in txn.scan_all(Cf::Clones, &prefix)? {
        if get(txn, keys::u64_at(&k, 9))?.is_some_and(|c| c.name == name) {
            return Err(OpError::explained(
                Errno::EEXIST,
                format!(
                    "a clone into {:?} is being made",
                    String::from_utf8_lossy(name)
                ),
            )
            .into());
        }
    }
    let owner = match owner {
        Some(o) => o.to_string(),
        None => sub.owner.clone().unwrap_or_default(),
    };
    if !subtree::known_site(txn, &owner)? {
        return Err(OpError::UnknownSite(owner).into());
    }
    let dst = update_counters(txn, |c| {
        c.next_ino += 1;
        c.inodes += 1;
    })?
    .next_ino
        - 1;
    let mut root = load(txn, src)?;
    root.attr.ino = dst;
    root.attr.parent = parent;
    root.attr.subtree = dst;
    root.attr.nlink = 2;
    root.next_cookie = FIRST_COOKIE;
    save(txn, &root)?;
    copy_xattrs(txn, src, dst)?;
    subtree::put(
        txn,
        dst,
        &SubtreeRecord {
            owner: Some(owner.clone()),
            epoch: 1,
            state: SubtreeState::Preparing,
            pending: Vec::new(),
            inodes: 1,
            bytes: 0,
            created_ns: now,
            moved_ns: 0,
            follow_writer_hold_ns: None,
        },
    )?;
    let rec = CloneRecord {
        src,
        parent,
        name: name.to_vec(),
        owner,
        aborting: false,
        snapshot,
        pending: vec![(src, dst, 0)],
        deadline_ns: now + CLONE_LEASE_NS,
        started_ns: now,
        total_inodes: sub.inodes,
        copied_inodes: 1,
        copied_bytes: 0,
        why: String::new(),
        refresh: None,
        refresh_after: 0,
    };
    put(txn, dst, &rec)?;
    txn.put(Cf::Clones, freeze_key(src), &dst)?;
    txn.put(Cf::Clones, parent_key(parent, Some(dst)), &())?;
    info(txn, dst, &rec, CloneState::Copying)
}

fn copy_xattrs(txn: &mut Txn<'_>, from: InodeId, to: InodeId) -> Result<(), NsError> {
    for (k, v) in txn.scan_all(Cf::Xattrs, &keys::ino(from))? {
        txn.put_raw(Cf::Xattrs, keys::with_name(to, &k[8..]), v);
    }
    Ok(())
}

/// The copy turns to aborting: the source is thawed (it may change from now on), and
/// what was copied is to be removed.
fn abandon(
    txn: &mut Txn<'_>,
    dst: InodeId,
    mut rec: CloneRecord,
    why: &str,
) -> Result<CloneRecord, NsError> {
    if txn.get::<InodeId>(Cf::Clones, &freeze_key(rec.src))? == Some(dst) {
        txn.delete(Cf::Clones, freeze_key(rec.src));
    }
    rec.aborting = true;
    rec.why = why.to_string();
    rec.pending = vec![(0, dst, 0)];
    put(txn, dst, &rec)?;
    Ok(rec)
}

/// `CloneStep`: copy at most `limit` more inodes and slice records; the step that copies
/// the last publishes the clone.
pub(crate) fn step(
    txn: &mut Txn<'_>,
    stamp: i64,
    dst: InodeId,
    limit: u32,
) -> Result<CloneInfo, NsError> {
    let limit = u64::from(limit.clamp(1, MAX_CLONE_BATCH));
    let mut rec = must_get(txn, dst)?;
    if rec.refresh.is_some() {
        return super::refresh::step(txn, stamp, dst, limit, rec);
    }
    if rec.aborting {
        return info(txn, dst, &rec, CloneState::Aborting);
    }
    let now = log_now(txn, stamp)?;
    if now >= rec.deadline_ns {
        let rec = abandon(
            txn,
            dst,
            rec,
            "no step came for 10 s, so the source was thawed and may have changed",
        )?;
        return info(txn, dst, &rec, CloneState::Aborting);
    }
    rec.deadline_ns = now + CLONE_LEASE_NS;
    let mut done = 0u64;
    while done < limit {
        let Some(&(from_dir, to_dir, after)) = rec.pending.first() else {
            break;
        };
        let prefix = keys::ino(from_dir);
        let mut entries = Vec::new();
        txn.scan(
            Cf::Cookies,
            &prefix,
            &keys::cookie(from_dir, after + 1),
            |k, v| {
                if entries.len() as u64 == limit - done {
                    return Ok(ControlFlow::Break(()));
                }
                entries.push((keys::u64_at(k, 8), v.to_vec()));
                Ok(ControlFlow::Continue(()))
            },
        )?;
        if entries.is_empty() {
            rec.pending.remove(0);
            continue;
        }
        let mut to = load(txn, to_dir)?;
        for (cookie, name) in entries {
            let d: DentryRecord = txn
                .get(Cf::Dentries, &keys::with_name(from_dir, &name))?
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("cookie {cookie} of {from_dir} dangles"))
                })?;
            done += copy_entry(txn, dst, &mut rec, &mut to, &name, d)?;
            rec.pending[0].2 = cookie;
        }
        save(txn, &to)?;
    }
    if rec.pending.is_empty() {
        return publish(txn, now, dst, rec);
    }
    put(txn, dst, &rec)?;
    info(txn, dst, &rec, CloneState::Copying)
}

/// Copy one entry of a source directory into its copy `to`; what it cost (the inode and
/// its slice records).
fn copy_entry(
    txn: &mut Txn<'_>,
    dst: InodeId,
    rec: &mut CloneRecord,
    to: &mut InodeRecord,
    name: &[u8],
    d: DentryRecord,
) -> Result<u64, NsError> {
    let mut child = load(txn, d.ino)?;
    let linked = child.attr.kind != FileKind::Directory && child.attr.nlink > 1;
    if linked {
        // A file with several names: every name of it in the source names one copy.
        if let Some(copy) = txn.get::<InodeId>(Cf::Clones, &map_key(dst, Some(d.ino)))? {
            let mut c = load(txn, copy)?;
            c.attr.nlink += 1;
            save(txn, &c)?;
            dir::add_entry(txn, to, name, copy, d.kind)?;
            return Ok(1);
        }
    }
    let is_regular = child.attr.kind == FileKind::Regular;
    let bytes = if is_regular { child.attr.size } else { 0 };
    let copy = update_counters(txn, |c| {
        c.next_ino += 1;
        c.inodes += 1;
        c.bytes += bytes;
    })?
    .next_ino
        - 1;
    child.attr.ino = copy;
    child.attr.subtree = dst;
    if child.attr.kind == FileKind::Directory {
        child.attr.parent = to.attr.ino;
        child.attr.nlink = 2;
        child.next_cookie = FIRST_COOKIE;
        to.attr.nlink += 1;
        rec.pending.push((d.ino, copy, 0));
    } else {
        child.attr.nlink = 1;
    }
    save(txn, &child)?;
    dir::add_entry(txn, to, name, copy, d.kind)?;
    copy_xattrs(txn, d.ino, copy)?;
    let mut cost = 1;
    if is_regular {
        let slices = txn.scan_all(Cf::Slices, &keys::ino(d.ino))?;
        if !rec.snapshot {
            // What a refresh compares both sides with later.
            super::refresh::remember_origin(txn, dst, copy, d.ino, &child.attr, &slices)?;
        }
        for (k, v) in slices {
            let slice: SliceRecord = codec::decode(&v)?;
            for c in &slice.chunks {
                file::incref(txn, &c.hash)?;
            }
            let (block, seq) = (keys::u64_at(&k, 8), keys::u64_at(&k, 16));
            txn.put_raw(Cf::Slices, keys::slice(copy, block, seq), v);
            cost += 1;
        }
    }
    if linked {
        txn.put(Cf::Clones, map_key(dst, Some(d.ino)), &copy)?;
    }
    subtree::account(txn, dst, 1, bytes as i64)?;
    rec.copied_inodes += 1;
    rec.copied_bytes += bytes;
    Ok(cost)
}

/// The last step: one entry in the parent makes the copy visible, its subtree owned,
/// and the source thawed. A parent that has meanwhile gone, moved into a subtree, or
/// got the name turns the clone to aborting instead.
fn publish(
    txn: &mut Txn<'_>,
    now: i64,
    dst: InodeId,
    rec: CloneRecord,
) -> Result<CloneInfo, NsError> {
    if rec.snapshot {
        super::snapshot::register(txn, rec.src, &rec.name, dst, now)?;
    } else {
        super::refresh::remember_source(txn, dst, rec.src)?;
        let parent = match check_parent(txn, rec.parent) {
            Ok(p) if dir::dentry(txn, rec.parent, &rec.name)?.is_none() => p,
            Ok(_) => return refuse_publish(txn, dst, rec, "its name was taken meanwhile".into()),
            Err(NsError::Op(e)) => return refuse_publish(txn, dst, rec, e.to_string()),
            Err(e) => return Err(e),
        };
        let mut parent = parent;
        dir::add_entry(txn, &mut parent, &rec.name, dst, FileKind::Directory)?;
        parent.attr.nlink += 1;
        parent.attr.mtime_ns = now;
        parent.attr.ctime_ns = now;
        save(txn, &parent)?;
    }
    let mut sub = subtree::must_get(txn, dst)?;
    sub.state = SubtreeState::Owned;
    sub.created_ns = now;
    subtree::put(txn, dst, &sub)?;
    forget(txn, dst, &rec)?;
    info(txn, dst, &rec, CloneState::Done)
}

fn refuse_publish(
    txn: &mut Txn<'_>,
    dst: InodeId,
    rec: CloneRecord,
    why: String,
) -> Result<CloneInfo, NsError> {
    let rec = abandon(txn, dst, rec, &format!("it could not be published: {why}"))?;
    info(txn, dst, &rec, CloneState::Aborting)
}

/// Drop every record of a clone (published or removed).
fn forget(txn: &mut Txn<'_>, dst: InodeId, rec: &CloneRecord) -> Result<(), NsError> {
    txn.delete(Cf::Clones, record_key(dst));
    if txn.get::<InodeId>(Cf::Clones, &freeze_key(rec.src))? == Some(dst) {
        txn.delete(Cf::Clones, freeze_key(rec.src));
    }
    txn.delete(Cf::Clones, parent_key(rec.parent, Some(dst)));
    for (k, _) in txn.scan_all(Cf::Clones, &map_key(dst, None))? {
        txn.delete(Cf::Clones, k);
    }
    Ok(())
}

/// `RemoveSnapshot`: snapshot `name` of `src` is forgotten at once (no longer listed,
/// no longer read-only), and its tree is to be removed by `AbortCloneStep`s, as an
/// aborted clone's is.
pub(crate) fn remove_snapshot(
    txn: &mut Txn<'_>,
    stamp: i64,
    src: SubtreeId,
    name: &[u8],
) -> Result<CloneInfo, NsError> {
    let now = log_now(txn, stamp)?;
    let root = super::snapshot::unregister(txn, src, name)?;
    let sub = subtree::must_get(txn, root)?;
    let rec = CloneRecord {
        src,
        parent: src,
        name: name.to_vec(),
        owner: sub.owner.clone().unwrap_or_default(),
        aborting: true,
        snapshot: true,
        pending: vec![(0, root, 0)],
        deadline_ns: now,
        started_ns: now,
        total_inodes: sub.inodes,
        copied_inodes: sub.inodes,
        copied_bytes: sub.bytes,
        why: "snapshot removed".into(),
        refresh: None,
        refresh_after: 0,
    };
    // Nothing may change it or hold it meanwhile, as while it was being copied.
    let mut sub = sub;
    sub.state = SubtreeState::Preparing;
    subtree::put(txn, root, &sub)?;
    put(txn, root, &rec)?;
    info(txn, root, &rec, CloneState::Aborting)
}

/// `AbortCloneStep`: abort the clone if it is still copying, then remove at most
/// `limit` more of what it copied, deepest directories first; the step that removes its
/// root forgets it.
pub(crate) fn abort_step(
    txn: &mut Txn<'_>,
    stamp: i64,
    dst: InodeId,
    limit: u32,
) -> Result<CloneInfo, NsError> {
    let limit = u64::from(limit.clamp(1, MAX_CLONE_BATCH));
    let mut rec = must_get(txn, dst)?;
    if rec.refresh.is_some() {
        return super::refresh::stop(txn, dst, rec, "stopped by the operator");
    }
    let now = log_now(txn, stamp)?;
    if !rec.aborting {
        rec = abandon(txn, dst, rec, "aborted by the operator")?;
    }
    let mut done = 0u64;
    while done < limit {
        let Some(&(_, dir_ino, _)) = rec.pending.last() else {
            break;
        };
        let prefix = keys::ino(dir_ino);
        let mut entries = Vec::new();
        txn.scan(Cf::Cookies, &prefix, &prefix, |_, v| {
            if entries.len() as u64 == limit - done {
                return Ok(ControlFlow::Break(()));
            }
            entries.push(v.to_vec());
            Ok(ControlFlow::Continue(()))
        })?;
        if entries.is_empty() {
            rec.pending.pop();
            if dir_ino == dst {
                let root = load(txn, dst)?;
                dir::destroy(txn, &root, now)?;
                txn.delete(Cf::Subtrees, keys::ino(dst));
                forget(txn, dst, &rec)?;
                super::refresh::forget_origins(txn, dst)?;
                return info(txn, dst, &rec, CloneState::Gone);
            }
            continue;
        }
        for name in entries {
            let d = dir::dentry(txn, dir_ino, &name)?.ok_or_else(|| {
                StoreError::Corrupt(format!("a cookie of {dir_ino} names no entry"))
            })?;
            done += 1;
            if d.kind != FileKind::Directory {
                dir::unlink(txn, now, dir_ino, &name, false)?;
            } else if dir::is_empty_dir(txn, d.ino)? {
                dir::rmdir(txn, now, dir_ino, &name)?;
            } else {
                rec.pending.push((0, d.ino, 0));
                break;
            }
        }
    }
    put(txn, dst, &rec)?;
    info(txn, dst, &rec, CloneState::Aborting)
}

pub(super) fn info(
    txn: &Txn<'_>,
    dst: InodeId,
    rec: &CloneRecord,
    state: CloneState,
) -> Result<CloneInfo, NsError> {
    Ok(CloneInfo {
        dst,
        src: rec.src,
        parent: rec.parent,
        name: rec.name.clone(),
        owner: rec.owner.clone(),
        state,
        total_inodes: rec.total_inodes,
        copied_inodes: rec.copied_inodes,
        copied_bytes: rec.copied_bytes,
        started_ns: rec.started_ns,
        deadline_ns: rec.deadline_ns,
        log_now_ns: read_log_now(txn)?,
        why: rec.why.clone(),
        refresh: rec.refresh.clone(),
    })
}

/// Every clone being made or removed.
pub(crate) fn list(txn: &Txn<'_>) -> Result<Vec<CloneInfo>, NsError> {
    let mut out = Vec::new();
    for (k, v) in txn.scan_all(Cf::Clones, b"c")? {
        let rec: CloneRecord = codec::decode(&v)?;
        let state = if rec.refresh.is_some() {
            CloneState::Refreshing
        } else if rec.aborting {
            CloneState::Aborting
        } else {
            CloneState::Copying
        };
        out.push(info(txn, keys::u64_at(&k, 1), &rec, state)?);
    }
    Ok(out)
}

impl super::Namespace {
    /// Every clone being made or removed.
    pub fn clones(&self) -> Result<Vec<CloneInfo>, NsError> {
        self.with_view(list)
    }
}
