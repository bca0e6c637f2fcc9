//! Subtree ownership: which site may change which part of the namespace, and the one
//! check every mutation passes through.
//!
//! A subtree is a directory whose inodes are labelled with its inode number
//! (`Attr::subtree`); new inodes take their directory's label. The namespace root is the
//! shared subtree: any site writes it. Every other subtree has one owner site and an
//! epoch, bumped by every change of owner; the owner's right to write lasts while its
//! site lease does, which the site's agent (its data node) renews with every heartbeat.
//!
//! Subtrees do not nest: one is made only at a directory of the shared subtree that
//! has no subtree above or below it. Lease arithmetic uses the log's clock, the highest
//! leader stamp seen (`log_now`), so a new leader with a slower clock cannot move it back.

use std::ops::ControlFlow;

use mobilus_proto::fs::{Epoch, FileKind, InodeId, SubtreeId, SubtreeInfo, SubtreeState, ROOT_INO};
use mobilus_proto::status::Errno;
use serde::{Deserialize, Serialize};

use super::delegation;
use super::keys::{self, Cf};
use super::txn::Txn;
use super::{load, save, DentryRecord, InodeRecord};
use crate::error::{NsError, StoreError};
use crate::types::{Command, OpError, Touches};

/// How long a site's lease lasts after its agent's last renewal (data nodes heartbeat
/// every 2 s by default, so four renewals can be lost before it runs out).
pub const SITE_LEASE_NS: i64 = 10_000_000_000;
/// Most inodes one `RelabelSubtree` step relabels (one bounded log entry).
pub const MAX_RELABEL_BATCH: u32 = 10_000;
/// Deepest directory chain the ancestry checks follow.
const MAX_DEPTH: usize = 4096;
/// Most entries scanned to find a directory's name in its parent (for `path`).
const MAX_NAME_SCAN: usize = 1_000_000;

/// A subtree as stored (`subtrees` cf, keyed by its root).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SubtreeRecord {
    /// `None`: shared (only the namespace root).
    pub owner: Option<String>,
    pub epoch: Epoch,
    pub state: SubtreeState,
    /// Preparing: directories whose entries are still to be relabelled, each with the
    /// cookie of the last entry done.
    pub pending: Vec<(InodeId, u64)>,
    /// Inodes labelled with this subtree, and their file sizes.
    pub inodes: u64,
    pub bytes: u64,
    pub created_ns: i64,
    pub moved_ns: i64,
    /// follow-writer: see `Op::SetSubtreePolicy`.
    pub follow_writer_hold_ns: Option<i64>,
}

impl SubtreeRecord {
    /// The shared root subtree, as every new namespace starts.
    pub fn shared_root() -> SubtreeRecord {
        SubtreeRecord {
            owner: None,
            epoch: 0,
            state: SubtreeState::Owned,
            pending: Vec::new(),
            inodes: 0,
            bytes: 0,
            created_ns: 0,
            moved_ns: 0,
            follow_writer_hold_ns: None,
        }
    }
}

fn lease_key(site: &str) -> Vec<u8> {
    let mut k = keys::sys::SITE_LEASE.to_vec();
    k.extend_from_slice(site.as_bytes());
    k
}

/// The latest time the log's clock takes (year 2116): leases and deadlines are added
/// to it without overflow, whatever a stamp says (found by fuzzing log entries: a stamp
/// near `i64::MAX` overflowed the next lease).
pub const MAX_LOG_TIME_NS: i64 = i64::MAX / 2;

/// The log's clock as of `stamp` (a command's): the highest stamp recorded so far,
/// advanced to `stamp` if that is later (up to [`MAX_LOG_TIME_NS`]).
pub(crate) fn log_now(txn: &mut Txn<'_>, stamp: i64) -> Result<i64, NsError> {
    let stamp = stamp.min(MAX_LOG_TIME_NS);
    let high: i64 = txn.get(Cf::Sys, keys::sys::CLOCK)?.unwrap_or(0);
    if stamp > high {
        txn.put(Cf::Sys, keys::sys::CLOCK.to_vec(), &stamp)?;
        return Ok(stamp);
    }
    Ok(high)
}

pub(crate) fn read_log_now(txn: &Txn<'_>) -> Result<i64, NsError> {
    Ok(txn.get(Cf::Sys, keys::sys::CLOCK)?.unwrap_or(0))
}

/// When `site`'s lease ends, in log time (0: it never had one).
pub(crate) fn site_lease(txn: &Txn<'_>, site: &str) -> Result<i64, NsError> {
    Ok(txn.get(Cf::Sys, &lease_key(site))?.unwrap_or(0))
}

/// The site's agent renewed its lease (a data node's heartbeat).
pub(crate) fn renew_site_lease(txn: &mut Txn<'_>, stamp: i64, site: &str) -> Result<(), NsError> {
    let now = log_now(txn, stamp)?;
    Ok(txn.put(Cf::Sys, lease_key(site), &(now + SITE_LEASE_NS))?)
}

pub(crate) fn known_site(txn: &Txn<'_>, site: &str) -> Result<bool, NsError> {
    let prefix = keys::node(site, "");
    let mut found = false;
    txn.scan(Cf::Nodes, &prefix, &prefix, |_, _| {
        found = true;
        Ok(ControlFlow::Break(()))
    })?;
    Ok(found)
}

pub(crate) fn get(txn: &Txn<'_>, root: SubtreeId) -> Result<Option<SubtreeRecord>, NsError> {
    Ok(txn.get(Cf::Subtrees, &keys::ino(root))?)
}

pub(crate) fn must_get(txn: &Txn<'_>, root: SubtreeId) -> Result<SubtreeRecord, NsError> {
    get(txn, root)?.ok_or_else(|| {
        OpError::explained(Errno::EINVAL, format!("inode {root} is not a subtree")).into()
    })
}

pub(crate) fn put(txn: &mut Txn<'_>, root: SubtreeId, rec: &SubtreeRecord) -> Result<(), NsError> {
    Ok(txn.put(Cf::Subtrees, keys::ino(root), rec)?)
}

/// Count inodes and bytes joining (positive) or leaving (negative) subtree `label`.
/// The shared root keeps no per-subtree count (the namespace counters are its).
pub(crate) fn account(
    txn: &mut Txn<'_>,
    label: SubtreeId,
    inodes: i64,
    bytes: i64,
) -> Result<(), NsError> {
    if label == ROOT_INO || (inodes == 0 && bytes == 0) {
        return Ok(());
    }
    let Some(mut rec) = get(txn, label)? else {
        return Err(
            StoreError::Corrupt(format!("inode labelled with unknown subtree {label}")).into(),
        );
    };
    rec.inodes = rec.inodes.saturating_add_signed(inodes);
    rec.bytes = rec.bytes.saturating_add_signed(bytes);
    put(txn, label, &rec)
}

/// Set by the hidden `--unsafe-no-ownership-check` (a deliberate bug the Jepsen harness
/// must catch); the same on every member, so members still apply alike.
static OWNERSHIP_CHECK_DISABLED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// TEST ONLY: let every site change every subtree under any epoch, in this process.
pub fn disable_ownership_check_for_tests() {
    OWNERSHIP_CHECK_DISABLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The ownership check, run before every command (`namespace::execute`): a command that
/// changes inodes of an owned subtree must come from the owner site, while its lease
/// lasts, and under the current epoch if it names one; inodes of two subtrees in one
/// command are EXDEV; the relabelled part of a subtree being prepared is frozen (EBUSY).
pub(crate) fn check(txn: &mut Txn<'_>, cmd: &Command) -> Result<(), NsError> {
    let inodes = match cmd.op.touches() {
        Touches::Admin | Touches::Orphan(_) | Touches::Advisory => return Ok(()),
        Touches::Inodes(inodes) => inodes,
    };
    // The subtree the inodes belong to, and its record (read once; none for the shared
    // root, which has no owner to check).
    let mut subtree: Option<(SubtreeId, Option<SubtreeRecord>)> = None;
    for ino in inodes {
        super::snapshot::refuse_snapshots_dir(ino)?;
        // A missing inode: the operation itself answers ENOENT.
        let Some(rec) = txn.get::<InodeRecord>(Cf::Inodes, &keys::ino(ino))? else {
            continue;
        };
        let label = rec.attr.subtree;
        if subtree.as_ref().is_some_and(|(s, _)| *s == label) {
            continue;
        }
        let resolved = resolve(txn, label)?;
        match &subtree {
            Some((s, _)) if *s != resolved.0 => return Err(Errno::EXDEV.into()),
            Some(_) => {}
            None => subtree = Some(resolved),
        }
    }
    let Some((root, sub)) = subtree else {
        return Ok(());
    };
    // The shared root has no delegation for a holder-only command to rely on.
    if cmd.holder_only && sub.is_none() {
        return Err(delegation::lost(root));
    }
    if OWNERSHIP_CHECK_DISABLED.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    // A snapshot changes for nobody.
    if sub.is_some() {
        super::snapshot::refuse_read_only(txn, root)?;
    }
    let mut sub = match sub {
        Some(sub) => sub,
        // The shared root: only a fence can refuse a command (its epoch is always 0).
        None => {
            return match cmd.fence {
                Some(f) if f.subtree != ROOT_INO || f.epoch != 0 => Err(OpError::StaleEpoch {
                    subtree: ROOT_INO,
                    given: f.epoch,
                    current: 0,
                }
                .into()),
                _ => Ok(()),
            };
        }
    };
    // The epoch the command was issued under: follow-writer may bump it below, as part
    // of this very command.
    let issued_epoch = sub.epoch;
    if let Some(owner) = sub.owner.clone() {
        let now = log_now(txn, cmd.time_ns)?;
        // A clone is copying it: nothing may change until it is published.
        super::clone::refuse_frozen(txn, root, now)?;
        if cmd.site.as_deref() != Some(owner.as_str()) {
            let Some(writer) = cmd
                .site
                .as_deref()
                .filter(|site| follows_writer(txn, &sub, site, now).unwrap_or(false))
            else {
                return Err(OpError::NotOwner {
                    subtree: root,
                    owner,
                    site: cmd.site.clone(),
                }
                .into());
            };
            // The owner's delegation is recalled before the subtree follows the writer.
            delegation::check(txn, root, &sub, now, cmd.session, cmd.holder_only)?;
            sub.owner = Some(writer.to_string());
            super::feed::owner_changed(txn, root, writer)?;
            sub.epoch += 1;
            sub.moved_ns = now;
            put(txn, root, &sub)?;
            delegation::clear(txn, root)?;
        }
        let owner = sub.owner.clone().unwrap_or_default();
        if now >= site_lease(txn, &owner)? {
            return Err(OpError::LeaseExpired {
                subtree: root,
                owner,
            }
            .into());
        }
        if let Some(fence) = cmd.fence {
            if fence.subtree != root || fence.epoch != issued_epoch {
                return Err(OpError::StaleEpoch {
                    subtree: root,
                    given: fence.epoch,
                    current: issued_epoch,
                }
                .into());
            }
        }
        // Only the holder of the subtree's delegation, if any, may change it.
        return delegation::check(txn, root, &sub, now, cmd.session, cmd.holder_only);
    }
    if cmd.holder_only {
        return Err(delegation::lost(root));
    }
    if let Some(fence) = cmd.fence {
        if fence.subtree != root || fence.epoch != issued_epoch {
            return Err(OpError::StaleEpoch {
                subtree: root,
                given: fence.epoch,
                current: issued_epoch,
            }
            .into());
        }
    }
    Ok(())
}

/// The follow-writer policy: a write from `site` moves the subtree there (epoch + 1,
/// in the writer's own command, so a write that is refused later moves nothing) when
/// the owner has held it for the policy's hold time and `site`'s lease is valid.
fn follows_writer(
    txn: &Txn<'_>,
    sub: &SubtreeRecord,
    site: &str,
    now: i64,
) -> Result<bool, NsError> {
    let Some(hold) = sub.follow_writer_hold_ns else {
        return Ok(false);
    };
    Ok(now - sub.moved_ns.max(sub.created_ns) >= hold && now < site_lease(txn, site)?)
}

/// `SetSubtreePolicy`.
pub(crate) fn set_policy(
    txn: &mut Txn<'_>,
    root: InodeId,
    follow_writer_hold_ns: Option<i64>,
) -> Result<SubtreeInfo, NsError> {
    if root == ROOT_INO {
        return Err(
            OpError::explained(Errno::EINVAL, "the shared root subtree has no owner").into(),
        );
    }
    if follow_writer_hold_ns.is_some_and(|h| h < 0) {
        return Err(OpError::explained(Errno::EINVAL, "a hold time cannot be negative").into());
    }
    let mut sub = must_get(txn, root)?;
    sub.follow_writer_hold_ns = follow_writer_hold_ns;
    put(txn, root, &sub)?;
    info(txn, root, &sub)
}

/// The subtree an inode labelled `label` belongs to now, and its record (`None` for the
/// shared root): a subtree still being prepared is not one yet (its inodes belong to the
/// shared root), and what it has relabelled may not change until it is.
fn resolve(txn: &Txn<'_>, label: SubtreeId) -> Result<(SubtreeId, Option<SubtreeRecord>), NsError> {
    if label == ROOT_INO {
        return Ok((ROOT_INO, None));
    }
    let sub = get(txn, label)?.ok_or_else(|| {
        StoreError::Corrupt(format!("inode labelled with unknown subtree {label}"))
    })?;
    if sub.state == SubtreeState::Preparing {
        return Err(OpError::explained(
            Errno::EBUSY,
            format!("subtree {label} is being created; try again when it is owned"),
        )
        .into());
    }
    Ok((label, Some(sub)))
}

/// The nearest subtree root above directory `dir` (itself included), or the namespace
/// root: what a directory labelled shared belongs to while a subtree is being prepared.
fn enclosing_root(txn: &Txn<'_>, dir: InodeId) -> Result<InodeId, NsError> {
    let mut cur = dir;
    for _ in 0..=MAX_DEPTH {
        if cur == ROOT_INO || get(txn, cur)?.is_some() {
            return Ok(cur);
        }
        cur = load(txn, cur)?.attr.parent;
    }
    Err(StoreError::Corrupt(format!("directory {dir} is deeper than {MAX_DEPTH}")).into())
}

/// A directory may not move between a subtree being prepared and the rest of the shared
/// subtree: moved in, it could bring another subtree's root into the tree, and the walk
/// would nest it (moved out is refused alike, to keep the rule simple). Files may: the
/// walk finds or misses each whole. Only directory renames between two directories
/// labelled shared pay for the walk up, and only while a subtree is being prepared.
pub(crate) fn refuse_move_across_preparing(
    txn: &Txn<'_>,
    from_dir: InodeId,
    to_dir: InodeId,
) -> Result<(), NsError> {
    if from_dir == to_dir
        || !all(txn)?
            .iter()
            .any(|(_, s)| s.state == SubtreeState::Preparing)
    {
        return Ok(());
    }
    let (from, to) = (enclosing_root(txn, from_dir)?, enclosing_root(txn, to_dir)?);
    if from != to {
        let busy = if from == ROOT_INO { to } else { from };
        return Err(OpError::explained(
            Errno::EBUSY,
            format!("subtree {busy} is being created; directories cannot move in or out of it until it is owned"),
        )
        .into());
    }
    Ok(())
}

/// Is `ino` the root of a subtree other than the namespace's? Such a directory may not
/// be renamed, replaced or removed (like a mount point: EBUSY).
pub(crate) fn refuse_subtree_root(txn: &Txn<'_>, ino: InodeId) -> Result<(), NsError> {
    if ino != ROOT_INO && get(txn, ino)?.is_some() {
        return Err(OpError::explained(
            Errno::EBUSY,
            format!("inode {ino} is the root of a subtree"),
        )
        .into());
    }
    Ok(())
}

/// The directories from `dir`'s parent up to the namespace root.
pub(crate) fn ancestors(txn: &Txn<'_>, dir: InodeId) -> Result<Vec<InodeId>, NsError> {
    let mut out = Vec::new();
    let mut cur = dir;
    while cur != ROOT_INO {
        cur = load(txn, cur)?.attr.parent;
        out.push(cur);
        if out.len() > MAX_DEPTH {
            return Err(
                StoreError::Corrupt(format!("directory {dir} is deeper than {MAX_DEPTH}")).into(),
            );
        }
    }
    Ok(out)
}

pub(crate) fn all(txn: &Txn<'_>) -> Result<Vec<(SubtreeId, SubtreeRecord)>, NsError> {
    let mut out = Vec::new();
    for (k, v) in txn.scan_all(Cf::Subtrees, &[])? {
        out.push((keys::u64_at(&k, 0), crate::codec::decode(&v)?));
    }
    Ok(out)
}

/// `CreateSubtree`: label `root` and start relabelling what is under it.
pub(crate) fn create(
    txn: &mut Txn<'_>,
    stamp: i64,
    root: InodeId,
    owner: &str,
) -> Result<SubtreeInfo, NsError> {
    let invalid = |why: String| -> NsError { OpError::explained(Errno::EINVAL, why).into() };
    if root == ROOT_INO {
        return Err(invalid(
            "the namespace root is the shared subtree already".into(),
        ));
    }
    let mut rec = load(txn, root)?;
    if rec.attr.kind != FileKind::Directory {
        return Err(
            OpError::explained(Errno::ENOTDIR, format!("inode {root} is not a directory")).into(),
        );
    }
    if get(txn, root)?.is_some() {
        return Err(OpError::explained(
            Errno::EEXIST,
            format!("inode {root} is a subtree already"),
        )
        .into());
    }
    if !known_site(txn, owner)? {
        return Err(OpError::UnknownSite(owner.to_string()).into());
    }
    if rec.attr.subtree != ROOT_INO {
        return Err(invalid(format!(
            "directory {root} is inside subtree {}; subtrees do not nest",
            rec.attr.subtree
        )));
    }
    let above = ancestors(txn, root)?;
    for (other, _) in all(txn)? {
        if other == ROOT_INO {
            continue;
        }
        if above.contains(&other) {
            return Err(invalid(format!(
                "directory {root} is inside subtree {other}; subtrees do not nest"
            )));
        }
        if ancestors(txn, other)?.contains(&root) {
            return Err(invalid(format!(
                "directory {root} contains subtree {other}; subtrees do not nest"
            )));
        }
    }
    let now = log_now(txn, stamp)?;
    rec.attr.subtree = root;
    save(txn, &rec)?;
    let empty = super::dir::is_empty_dir(txn, root)?;
    let sub = SubtreeRecord {
        owner: Some(owner.to_string()),
        epoch: 1,
        state: if empty {
            SubtreeState::Owned
        } else {
            SubtreeState::Preparing
        },
        pending: if empty { Vec::new() } else { vec![(root, 0)] },
        inodes: 1,
        bytes: 0,
        created_ns: now,
        moved_ns: 0,
        follow_writer_hold_ns: None,
    };
    put(txn, root, &sub)?;
    info(txn, root, &sub)
}

/// `RelabelSubtree`: label up to `limit` more inodes, breadth first; the relabelled
/// directories are frozen (see [`resolve`]), so their entries cannot change
/// under the walk, while entries of directories not reached yet may: the walk finds
/// them when it gets there. Repeating the step after a crash resumes where it stopped.
pub(crate) fn relabel(
    txn: &mut Txn<'_>,
    root: InodeId,
    limit: u32,
) -> Result<SubtreeInfo, NsError> {
    let limit = limit.clamp(1, MAX_RELABEL_BATCH) as usize;
    let mut sub = must_get(txn, root)?;
    if super::clone::get(txn, root)?.is_some() {
        return Err(OpError::explained(
            Errno::EBUSY,
            format!("subtree {root} is a clone being made; its clone steps finish it"),
        )
        .into());
    }
    let mut done = 0;
    while done < limit && sub.state == SubtreeState::Preparing {
        let Some(&(dir, after)) = sub.pending.first() else {
            sub.state = SubtreeState::Owned;
            break;
        };
        let prefix = keys::ino(dir);
        let mut entries = Vec::new();
        txn.scan(
            Cf::Cookies,
            &prefix,
            &keys::cookie(dir, after + 1),
            |k, v| {
                if entries.len() == limit - done {
                    return Ok(ControlFlow::Break(()));
                }
                entries.push((keys::u64_at(k, 8), v.to_vec()));
                Ok(ControlFlow::Continue(()))
            },
        )?;
        if entries.is_empty() {
            sub.pending.remove(0);
            continue;
        }
        for (cookie, name) in entries {
            let d: DentryRecord = txn
                .get(Cf::Dentries, &keys::with_name(dir, &name))?
                .ok_or_else(|| StoreError::Corrupt(format!("cookie {cookie} of {dir} dangles")))?;
            let mut child = load(txn, d.ino)?;
            // A file with two names here is relabelled once; one already of another
            // subtree (a link made before either was a subtree) stays where it is.
            if child.attr.subtree == ROOT_INO {
                child.attr.subtree = root;
                save(txn, &child)?;
                sub.inodes += 1;
                if child.attr.kind == FileKind::Regular {
                    sub.bytes += child.attr.size;
                }
                if child.attr.kind == FileKind::Directory {
                    sub.pending.push((d.ino, 0));
                }
            }
            sub.pending[0].1 = cookie;
            done += 1;
        }
    }
    if sub.pending.is_empty() {
        sub.state = SubtreeState::Owned;
    }
    put(txn, root, &sub)?;
    info(txn, root, &sub)
}

/// `MoveSubtree`: the new owner and epoch + 1, in one command.
pub(crate) fn give(
    txn: &mut Txn<'_>,
    stamp: i64,
    root: InodeId,
    to: &str,
    force: bool,
) -> Result<SubtreeInfo, NsError> {
    if root == ROOT_INO {
        return Err(OpError::explained(
            Errno::EINVAL,
            "the shared root subtree has no owner to move",
        )
        .into());
    }
    let mut sub = must_get(txn, root)?;
    if sub.state == SubtreeState::Preparing {
        return Err(OpError::explained(
            Errno::EBUSY,
            format!("subtree {root} is still being created"),
        )
        .into());
    }
    if !known_site(txn, to)? {
        return Err(OpError::UnknownSite(to.to_string()).into());
    }
    let owner = sub.owner.clone().unwrap_or_default();
    if owner == to {
        return info(txn, root, &sub);
    }
    let now = log_now(txn, stamp)?;
    let expiry = site_lease(txn, &owner)?;
    let lease_valid = now < expiry;
    if force && lease_valid {
        return Err(OpError::explained(
            Errno::EBUSY,
            format!(
                "{owner}'s lease on subtree {root} is valid for {} ms more; --force takes over only after it expires",
                (expiry - now) / 1_000_000
            ),
        )
        .into());
    }
    if !force && !lease_valid {
        return Err(OpError::LeaseExpired {
            subtree: root,
            owner,
        }
        .into());
    }
    // The owner's mount that holds the delegation flushes and gives it back first (the
    // member recalls it and proposes the move again); after a takeover it has expired.
    delegation::check(txn, root, &sub, now, None, false)?;
    sub.owner = Some(to.to_string());
    super::feed::owner_changed(txn, root, to)?;
    sub.epoch += 1;
    sub.moved_ns = now;
    put(txn, root, &sub)?;
    delegation::clear(txn, root)?;
    info(txn, root, &sub)
}

/// A subtree as reported: its record, the owner's lease, and where it is now.
pub(crate) fn info(
    txn: &Txn<'_>,
    root: SubtreeId,
    sub: &SubtreeRecord,
) -> Result<SubtreeInfo, NsError> {
    let lease_expiry_ns = match &sub.owner {
        Some(owner) => site_lease(txn, owner)?,
        None => 0,
    };
    let (inodes, bytes) = if root == ROOT_INO {
        shared_usage(txn)?
    } else {
        (sub.inodes, sub.bytes)
    };
    Ok(SubtreeInfo {
        root,
        owner: sub.owner.clone(),
        epoch: sub.epoch,
        state: sub.state,
        lease_expiry_ns,
        log_now_ns: read_log_now(txn)?,
        inodes,
        bytes,
        pending_dirs: sub.pending.len() as u64,
        path: path_of(txn, root)?.unwrap_or_default(),
        created_ns: sub.created_ns,
        moved_ns: sub.moved_ns,
        follow_writer_hold_ns: sub.follow_writer_hold_ns,
        delegation: delegation::holder(txn, root, sub, read_log_now(txn)?)?,
    })
}

/// The shared root's usage: the namespace's less every other subtree's.
fn shared_usage(txn: &Txn<'_>) -> Result<(u64, u64), NsError> {
    let total = super::counters(txn)?;
    let (mut inodes, mut bytes) = (total.inodes, total.bytes);
    for (root, sub) in all(txn)? {
        if root != ROOT_INO {
            inodes = inodes.saturating_sub(sub.inodes);
            bytes = bytes.saturating_sub(sub.bytes);
        }
    }
    Ok((inodes, bytes))
}

/// The path of directory `dir`, found through its parents' entries (`None` if a name
/// cannot be found within `MAX_NAME_SCAN` entries).
fn path_of(txn: &Txn<'_>, dir: InodeId) -> Result<Option<String>, NsError> {
    let mut names = Vec::new();
    let mut cur = dir;
    while cur != ROOT_INO {
        // A snapshot's root is named by its source's registry.
        if let Some((src, name)) = super::snapshot::of(txn, cur)? {
            names.push(String::from_utf8_lossy(&name).into_owned());
            names.push(String::from_utf8_lossy(mobilus_proto::fs::SNAPSHOTS_DIR).into_owned());
            cur = src;
            continue;
        }
        let parent = load(txn, cur)?.attr.parent;
        let prefix = keys::ino(parent);
        let (mut found, mut seen) = (None, 0usize);
        txn.scan(Cf::Dentries, &prefix, &prefix, |k, v| {
            let d: DentryRecord = crate::codec::decode(v)?;
            if d.ino == cur {
                found = Some(k[8..].to_vec());
                return Ok(ControlFlow::Break(()));
            }
            seen += 1;
            Ok(if seen >= MAX_NAME_SCAN {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            })
        })?;
        let Some(name) = found else {
            return Ok(None);
        };
        names.push(String::from_utf8_lossy(&name).into_owned());
        cur = parent;
        if names.len() > MAX_DEPTH {
            return Ok(None);
        }
    }
    names.reverse();
    Ok(Some(format!("/{}", names.join("/"))))
}

/// Every subtree (the shared root first), as reported.
pub(crate) fn list(txn: &Txn<'_>) -> Result<Vec<SubtreeInfo>, NsError> {
    all(txn)?
        .iter()
        .map(|(root, sub)| info(txn, *root, sub))
        .collect()
}

/// One subtree, as reported.
pub(crate) fn one(txn: &Txn<'_>, root: SubtreeId) -> Result<SubtreeInfo, NsError> {
    let sub = must_get(txn, root)?;
    info(txn, root, &sub)
}

impl super::Namespace {
    /// One subtree, by its root.
    pub fn subtree(&self, root: SubtreeId) -> Result<SubtreeInfo, NsError> {
        self.with_view(|txn| one(txn, root))
    }

    /// The site that owns `root` (`None`: shared, or no such subtree).
    pub fn subtree_owner(&self, root: SubtreeId) -> Result<Option<String>, NsError> {
        self.with_view(|txn| Ok(get(txn, root)?.and_then(|s| s.owner)))
    }

    /// Every subtree, the shared root first.
    pub fn subtrees(&self) -> Result<Vec<SubtreeInfo>, NsError> {
        self.with_view(list)
    }
}
