//! Conversions between the domain values of [`crate::fs`] and the protobuf messages of
//! [`crate::pb`]. This is the only place that knows both; a message that does not decode
//! into a valid domain value is an `INVALID_ARGUMENT` error, never a panic.

use crate::fs::{
    Attr, ChunkCheck, ChunkHash, ChunkRef, CloneInfo, CloneState, DataMode, DataNodeInfo,
    DelegationGrant, DirEntry, Extent, FeedChunk, FeedEntry, FeedPage, Fence, FileKind, Follower,
    LockKind, Placement, Profile, ProfileRead, RefreshInfo, SetAttr, SitePlacement, SliceWrite,
    SnapshotInfo, StatFs, SubtreeInfo, SubtreeState, SubtreeUsage, TimeSet, WorkerReport,
};
use crate::pb;
use crate::status::{Errno, WireError};
use tonic::Code;

fn invalid(msg: impl Into<String>) -> WireError {
    WireError::Other(Code::InvalidArgument, msg.into())
}

impl From<FileKind> for pb::FileKind {
    fn from(k: FileKind) -> Self {
        match k {
            FileKind::Regular => pb::FileKind::Regular,
            FileKind::Directory => pb::FileKind::Directory,
            FileKind::Symlink => pb::FileKind::Symlink,
            FileKind::Fifo => pb::FileKind::Fifo,
            FileKind::Socket => pb::FileKind::Socket,
            FileKind::CharDevice => pb::FileKind::CharDevice,
            FileKind::BlockDevice => pb::FileKind::BlockDevice,
        }
    }
}

/// Decode a `FileKind` from its wire number.
pub fn kind_from_wire(v: i32) -> Result<FileKind, WireError> {
    match pb::FileKind::try_from(v) {
        Ok(pb::FileKind::Regular) => Ok(FileKind::Regular),
        Ok(pb::FileKind::Directory) => Ok(FileKind::Directory),
        Ok(pb::FileKind::Symlink) => Ok(FileKind::Symlink),
        Ok(pb::FileKind::Fifo) => Ok(FileKind::Fifo),
        Ok(pb::FileKind::Socket) => Ok(FileKind::Socket),
        Ok(pb::FileKind::CharDevice) => Ok(FileKind::CharDevice),
        Ok(pb::FileKind::BlockDevice) => Ok(FileKind::BlockDevice),
        _ => Err(invalid(format!("unknown file kind {v}"))),
    }
}

pub fn lock_kind_from_wire(v: i32) -> Result<LockKind, WireError> {
    match pb::LockKind::try_from(v) {
        Ok(pb::LockKind::Read) => Ok(LockKind::Read),
        Ok(pb::LockKind::Write) => Ok(LockKind::Write),
        Ok(pb::LockKind::Unlock) => Ok(LockKind::Unlock),
        _ => Err(invalid(format!("unknown lock kind {v}"))),
    }
}

pub fn lock_kind_to_wire(kind: LockKind) -> pb::LockKind {
    match kind {
        LockKind::Read => pb::LockKind::Read,
        LockKind::Write => pb::LockKind::Write,
        LockKind::Unlock => pb::LockKind::Unlock,
    }
}

impl From<&Attr> for pb::Attr {
    fn from(a: &Attr) -> Self {
        pb::Attr {
            ino: a.ino,
            kind: pb::FileKind::from(a.kind) as i32,
            mode: a.mode,
            uid: a.uid,
            gid: a.gid,
            size: a.size,
            nlink: a.nlink,
            atime_ns: a.atime_ns,
            mtime_ns: a.mtime_ns,
            ctime_ns: a.ctime_ns,
            generation: a.generation,
            subtree: a.subtree,
            rdev: a.rdev,
            parent: a.parent,
        }
    }
}

impl TryFrom<pb::Attr> for Attr {
    type Error = WireError;
    fn try_from(a: pb::Attr) -> Result<Self, WireError> {
        Ok(Attr {
            ino: a.ino,
            kind: kind_from_wire(a.kind)?,
            mode: a.mode,
            uid: a.uid,
            gid: a.gid,
            size: a.size,
            nlink: a.nlink,
            atime_ns: a.atime_ns,
            mtime_ns: a.mtime_ns,
            ctime_ns: a.ctime_ns,
            generation: a.generation,
            subtree: a.subtree,
            rdev: a.rdev,
            parent: a.parent,
        })
    }
}

/// Decode the attribute of a reply, which must be present.
pub fn attr_from_reply(reply: pb::AttrReply) -> Result<Attr, WireError> {
    reply
        .attr
        .ok_or_else(|| invalid("reply without attributes"))?
        .try_into()
}

impl From<TimeSet> for pb::TimeSet {
    fn from(t: TimeSet) -> Self {
        let value = match t {
            TimeSet::Now => pb::time_set::Value::Now(true),
            TimeSet::Ns(ns) => pb::time_set::Value::Ns(ns),
        };
        pb::TimeSet { value: Some(value) }
    }
}

fn time_from_wire(t: Option<pb::TimeSet>) -> Option<TimeSet> {
    match t?.value? {
        pb::time_set::Value::Now(_) => Some(TimeSet::Now),
        pb::time_set::Value::Ns(ns) => Some(TimeSet::Ns(ns)),
    }
}

/// Encode who issues a mutation (`site`, and the mount's `session`) and under which
/// epoch (`fence`).
pub fn fence_to_wire(
    site: Option<&str>,
    session: Option<u64>,
    fence: Option<Fence>,
) -> Option<pb::Fence> {
    if site.is_none() && session.is_none() && fence.is_none() {
        return None;
    }
    let (subtree, epoch) = fence.map_or((0, 0), |f| (f.subtree, f.epoch));
    Some(pb::Fence {
        subtree,
        epoch,
        site: site.unwrap_or_default().to_string(),
        session: session.unwrap_or(0),
        holder_only: false,
    })
}

/// Who issued a mutation, as the wire says: its site and mount session, if any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Issuer {
    pub site: Option<String>,
    pub session: Option<u64>,
    /// Issued relying on the session's delegation: refused unless it still lasts.
    pub holder_only: bool,
}

/// Decode who issued a mutation and the epoch fence (if any).
pub fn fence_from_wire(f: Option<pb::Fence>) -> (Issuer, Option<Fence>) {
    let Some(f) = f else {
        return (Issuer::default(), None);
    };
    let fence = (f.subtree != 0).then_some(Fence {
        subtree: f.subtree,
        epoch: f.epoch,
    });
    let issuer = Issuer {
        site: (!f.site.is_empty()).then_some(f.site),
        session: (f.session != 0).then_some(f.session),
        holder_only: f.holder_only,
    };
    (issuer, fence)
}

impl From<&DelegationGrant> for pb::DelegationGrant {
    fn from(g: &DelegationGrant) -> Self {
        pb::DelegationGrant {
            subtree: g.subtree,
            epoch: g.epoch,
            valid_ms: u64::try_from(g.remaining_ns / 1_000_000).unwrap_or(0),
            recalled: g.recalled,
        }
    }
}

impl From<&pb::DelegationGrant> for DelegationGrant {
    fn from(g: &pb::DelegationGrant) -> Self {
        DelegationGrant {
            subtree: g.subtree,
            epoch: g.epoch,
            remaining_ns: i64::try_from(g.valid_ms.saturating_mul(1_000_000)).unwrap_or(i64::MAX),
            recalled: g.recalled,
        }
    }
}

impl From<&SubtreeInfo> for pb::Subtree {
    fn from(s: &SubtreeInfo) -> Self {
        pb::Subtree {
            root: s.root,
            owner: s.owner.clone().unwrap_or_default(),
            epoch: s.epoch,
            state: s.state.name().to_string(),
            lease_expiry_ns: s.lease_expiry_ns,
            log_now_ns: s.log_now_ns,
            inodes: s.inodes,
            bytes: s.bytes,
            pending_dirs: s.pending_dirs,
            path: s.path.clone(),
            created_ns: s.created_ns,
            moved_ns: s.moved_ns,
            follow_writer_hold_ns: s.follow_writer_hold_ns,
            delegated_to: s.delegation.map(|(session, _)| session),
            delegation_recalled: s.delegation.is_some_and(|(_, r)| r),
        }
    }
}

/// Decode a subtree.
pub fn subtree_from_wire(s: pb::Subtree) -> Result<SubtreeInfo, WireError> {
    let state = match s.state.as_str() {
        "preparing" => SubtreeState::Preparing,
        "owned" => SubtreeState::Owned,
        other => return Err(invalid(format!("unknown subtree state {other:?}"))),
    };
    Ok(SubtreeInfo {
        root: s.root,
        owner: (!s.owner.is_empty()).then_some(s.owner),
        epoch: s.epoch,
        state,
        lease_expiry_ns: s.lease_expiry_ns,
        log_now_ns: s.log_now_ns,
        inodes: s.inodes,
        bytes: s.bytes,
        pending_dirs: s.pending_dirs,
        path: s.path,
        created_ns: s.created_ns,
        moved_ns: s.moved_ns,
        follow_writer_hold_ns: s.follow_writer_hold_ns,
        delegation: s
            .delegated_to
            .map(|session| (session, s.delegation_recalled)),
    })
}

impl From<&CloneInfo> for pb::Clone {
    fn from(c: &CloneInfo) -> Self {
        pb::Clone {
            dst: c.dst,
            src: c.src,
            parent: c.parent,
            name: c.name.clone(),
            owner: c.owner.clone(),
            state: c.state.name().to_string(),
            total_inodes: c.total_inodes,
            copied_inodes: c.copied_inodes,
            copied_bytes: c.copied_bytes,
            started_ns: c.started_ns,
            deadline_ns: c.deadline_ns,
            log_now_ns: c.log_now_ns,
            why: c.why.clone(),
            refresh: c.refresh.as_ref().map(|r| pb::Refresh {
                files: r.files,
                refreshed: r.refreshed,
                kept: r.kept,
                gone: r.gone,
                conflicts: r.conflicts.clone(),
                conflict_count: r.conflict_count,
            }),
        }
    }
}

impl From<&SubtreeUsage> for pb::SubtreeUsage {
    fn from(u: &SubtreeUsage) -> Self {
        pb::SubtreeUsage {
            root: u.root,
            files: u.files,
            logical_bytes: u.logical_bytes,
            chunks: u.chunks,
            referenced_bytes: u.referenced_bytes,
            exclusive_chunks: u.exclusive_chunks,
            exclusive_bytes: u.exclusive_bytes,
        }
    }
}

impl From<pb::SubtreeUsage> for SubtreeUsage {
    fn from(u: pb::SubtreeUsage) -> Self {
        SubtreeUsage {
            root: u.root,
            files: u.files,
            logical_bytes: u.logical_bytes,
            chunks: u.chunks,
            referenced_bytes: u.referenced_bytes,
            exclusive_chunks: u.exclusive_chunks,
            exclusive_bytes: u.exclusive_bytes,
        }
    }
}

impl From<&SnapshotInfo> for pb::Snapshot {
    fn from(s: &SnapshotInfo) -> Self {
        pb::Snapshot {
            name: s.name.clone(),
            root: s.root,
            created_ns: s.created_ns,
            inodes: s.inodes,
            bytes: s.bytes,
        }
    }
}

impl From<pb::Snapshot> for SnapshotInfo {
    fn from(s: pb::Snapshot) -> Self {
        SnapshotInfo {
            name: s.name,
            root: s.root,
            created_ns: s.created_ns,
            inodes: s.inodes,
            bytes: s.bytes,
        }
    }
}

/// Decode a clone.
pub fn clone_from_wire(c: pb::Clone) -> Result<CloneInfo, WireError> {
    let state = match c.state.as_str() {
        "copying" => CloneState::Copying,
        "aborting" => CloneState::Aborting,
        "done" => CloneState::Done,
        "gone" => CloneState::Gone,
        "refreshing" => CloneState::Refreshing,
        other => return Err(invalid(format!("unknown clone state {other:?}"))),
    };
    Ok(CloneInfo {
        dst: c.dst,
        src: c.src,
        parent: c.parent,
        name: c.name,
        owner: c.owner,
        state,
        total_inodes: c.total_inodes,
        copied_inodes: c.copied_inodes,
        copied_bytes: c.copied_bytes,
        started_ns: c.started_ns,
        deadline_ns: c.deadline_ns,
        log_now_ns: c.log_now_ns,
        why: c.why,
        refresh: c.refresh.map(|r| RefreshInfo {
            files: r.files,
            refreshed: r.refreshed,
            kept: r.kept,
            gone: r.gone,
            conflicts: r.conflicts,
            conflict_count: r.conflict_count,
        }),
    })
}

/// Build a `SetAttrRequest` for an inode.
pub fn setattr_to_wire(ino: u64, s: &SetAttr, fence: Option<pb::Fence>) -> pb::SetAttrRequest {
    pb::SetAttrRequest {
        ino,
        mode: s.mode,
        uid: s.uid,
        gid: s.gid,
        size: s.size,
        atime: s.atime.map(Into::into),
        mtime: s.mtime.map(Into::into),
        ctime_ns: s.ctime_ns,
        fence,
    }
}

/// Decode the changes of a `SetAttrRequest`.
pub fn setattr_from_wire(r: &pb::SetAttrRequest) -> SetAttr {
    SetAttr {
        mode: r.mode,
        uid: r.uid,
        gid: r.gid,
        size: r.size,
        atime: time_from_wire(r.atime),
        mtime: time_from_wire(r.mtime),
        ctime_ns: r.ctime_ns,
    }
}

impl From<&ChunkRef> for pb::ChunkRef {
    fn from(c: &ChunkRef) -> Self {
        pb::ChunkRef {
            hash: c.hash.0.to_vec(),
            offset: c.offset,
            length: c.len,
        }
    }
}

impl TryFrom<pb::ChunkRef> for ChunkRef {
    type Error = WireError;
    fn try_from(c: pb::ChunkRef) -> Result<Self, WireError> {
        let hash: [u8; 32] = c
            .hash
            .as_slice()
            .try_into()
            .map_err(|_| invalid(format!("chunk hash has {} bytes, not 32", c.hash.len())))?;
        // A range of a chunk (a pack of small writes) lies within what a chunk holds.
        if c.offset
            .checked_add(c.length)
            .is_none_or(|end| end > crate::MAX_CHUNK_BYTES)
        {
            return Err(WireError::Errno(
                Errno::EINVAL,
                format!(
                    "chunk range {}+{} ends past {} bytes",
                    c.offset,
                    c.length,
                    crate::MAX_CHUNK_BYTES
                ),
            ));
        }
        Ok(ChunkRef {
            hash: ChunkHash(hash),
            offset: c.offset,
            len: c.length,
        })
    }
}

impl From<&SliceWrite> for pb::SliceWrite {
    fn from(s: &SliceWrite) -> Self {
        pb::SliceWrite {
            offset: s.offset,
            length: s.len,
            chunks: s.chunks.iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<pb::SliceWrite> for SliceWrite {
    type Error = WireError;
    fn try_from(s: pb::SliceWrite) -> Result<Self, WireError> {
        Ok(SliceWrite {
            offset: s.offset,
            len: s.length,
            chunks: s
                .chunks
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?,
        })
    }
}

impl From<&ChunkCheck> for pb::ChunkCheck {
    fn from(c: &ChunkCheck) -> Self {
        pb::ChunkCheck {
            node: c.node.clone(),
            gc_gen: c.gc_gen,
        }
    }
}

impl From<pb::ChunkCheck> for ChunkCheck {
    fn from(c: pb::ChunkCheck) -> Self {
        ChunkCheck {
            node: c.node,
            gc_gen: c.gc_gen,
        }
    }
}

/// Hashes on the wire: each must be 32 bytes.
pub fn hashes_from_wire(hashes: &[Vec<u8>]) -> Result<Vec<ChunkHash>, WireError> {
    hashes
        .iter()
        .map(|h| {
            ChunkHash::from_slice(h)
                .ok_or_else(|| invalid(format!("a chunk hash has 32 bytes, not {}", h.len())))
        })
        .collect()
}

pub fn hashes_to_wire(hashes: &[ChunkHash]) -> Vec<Vec<u8>> {
    hashes.iter().map(|h| h.0.to_vec()).collect()
}

impl From<&Extent> for pb::Extent {
    fn from(e: &Extent) -> Self {
        pb::Extent {
            offset: e.offset,
            length: e.len,
            chunk: e.chunk.as_ref().map(Into::into),
        }
    }
}

impl TryFrom<pb::Extent> for Extent {
    type Error = WireError;
    fn try_from(e: pb::Extent) -> Result<Self, WireError> {
        Ok(Extent {
            offset: e.offset,
            len: e.length,
            chunk: e.chunk.map(TryInto::try_into).transpose()?,
        })
    }
}

impl From<&DirEntry> for pb::DirEntry {
    fn from(d: &DirEntry) -> Self {
        pb::DirEntry {
            name: d.name.clone(),
            ino: d.ino,
            kind: pb::FileKind::from(d.kind) as i32,
            cookie: d.cookie,
            attr: d.attr.as_ref().map(Into::into),
        }
    }
}

impl TryFrom<pb::DirEntry> for DirEntry {
    type Error = WireError;
    fn try_from(d: pb::DirEntry) -> Result<Self, WireError> {
        Ok(DirEntry {
            name: d.name,
            ino: d.ino,
            kind: kind_from_wire(d.kind)?,
            cookie: d.cookie,
            attr: d.attr.map(TryInto::try_into).transpose()?,
        })
    }
}

impl From<&StatFs> for pb::StatFsReply {
    fn from(s: &StatFs) -> Self {
        pb::StatFsReply {
            total_bytes: s.total_bytes,
            used_bytes: s.used_bytes,
            files: s.files,
            max_files: s.max_files,
            block_size: s.block_size,
            name_max: s.name_max,
        }
    }
}

impl From<pb::StatFsReply> for StatFs {
    fn from(s: pb::StatFsReply) -> Self {
        StatFs {
            total_bytes: s.total_bytes,
            used_bytes: s.used_bytes,
            files: s.files,
            max_files: s.max_files,
            block_size: s.block_size,
            name_max: s.name_max,
        }
    }
}

impl From<&DataNodeInfo> for pb::DataNode {
    fn from(n: &DataNodeInfo) -> Self {
        pb::DataNode {
            site: n.site.clone(),
            addr: n.addr.clone(),
            capacity_bytes: n.capacity_bytes,
            used_bytes: n.used_bytes,
            last_heartbeat_ns: n.last_heartbeat_ns,
            draining: n.draining,
            site_replicas: n.site_replicas,
            workers: n
                .workers
                .iter()
                .map(|w| pb::WorkerReport {
                    name: w.name.clone(),
                    backing_off: w.backing_off,
                    last_error: w.last_error.clone(),
                    failures: w.failures,
                })
                .collect(),
        }
    }
}

impl From<pb::DataNode> for DataNodeInfo {
    fn from(n: pb::DataNode) -> Self {
        DataNodeInfo {
            site: n.site,
            addr: n.addr,
            capacity_bytes: n.capacity_bytes,
            used_bytes: n.used_bytes,
            last_heartbeat_ns: n.last_heartbeat_ns,
            draining: n.draining,
            site_replicas: n.site_replicas,
            workers: n
                .workers
                .into_iter()
                .map(|w| WorkerReport {
                    name: w.name,
                    backing_off: w.backing_off,
                    last_error: w.last_error,
                    failures: w.failures,
                })
                .collect(),
        }
    }
}

impl From<&SitePlacement> for pb::SitePlacement {
    fn from(s: &SitePlacement) -> Self {
        pb::SitePlacement {
            site: s.site.clone(),
            mode: s.mode.as_str().to_string(),
            sync: s.sync,
        }
    }
}

impl TryFrom<pb::SitePlacement> for SitePlacement {
    type Error = WireError;
    fn try_from(s: pb::SitePlacement) -> Result<Self, WireError> {
        let mode = DataMode::parse(&s.mode).ok_or_else(|| {
            invalid(format!(
                "placement mode {:?}: expected eager, lazy, on-demand, pinned or profile",
                s.mode
            ))
        })?;
        Ok(SitePlacement {
            site: s.site,
            mode,
            sync: s.sync,
        })
    }
}

impl From<&Placement> for pb::Placement {
    fn from(p: &Placement) -> Self {
        pb::Placement {
            root: p.root,
            owner: p.owner.clone().unwrap_or_default(),
            sites: p.sites.iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<pb::Placement> for Placement {
    type Error = WireError;
    fn try_from(p: pb::Placement) -> Result<Self, WireError> {
        Ok(Placement {
            root: p.root,
            owner: Some(p.owner).filter(|o| !o.is_empty()),
            sites: p
                .sites
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?,
        })
    }
}

impl From<&ProfileRead> for pb::ProfileRead {
    fn from(r: &ProfileRead) -> Self {
        pb::ProfileRead {
            hash: r.hash.0.to_vec(),
            first_block: r.first_block,
            blocks: r.blocks,
        }
    }
}

impl TryFrom<pb::ProfileRead> for ProfileRead {
    type Error = WireError;
    fn try_from(r: pb::ProfileRead) -> Result<Self, WireError> {
        let hash = ChunkHash::from_slice(&r.hash)
            .ok_or_else(|| invalid("a profile read's hash must be 32 bytes"))?;
        if r.blocks == 0 {
            return Err(invalid("a profile read of no blocks"));
        }
        Ok(ProfileRead {
            hash,
            first_block: r.first_block,
            blocks: r.blocks,
        })
    }
}

impl From<&Profile> for pb::Profile {
    fn from(p: &Profile) -> Self {
        pb::Profile {
            root: p.root,
            reads: p.reads.iter().map(Into::into).collect(),
            record: p.record,
            recorded_ns: p.recorded_ns,
            site: p.site.clone(),
        }
    }
}

impl TryFrom<pb::Profile> for Profile {
    type Error = WireError;
    fn try_from(p: pb::Profile) -> Result<Self, WireError> {
        Ok(Profile {
            root: p.root,
            reads: p
                .reads
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?,
            record: p.record,
            recorded_ns: p.recorded_ns,
            site: p.site,
        })
    }
}

impl From<&FeedChunk> for pb::FeedChunk {
    fn from(c: &FeedChunk) -> Self {
        pb::FeedChunk {
            hash: c.hash.0.to_vec(),
            len: c.len,
        }
    }
}

impl TryFrom<pb::FeedChunk> for FeedChunk {
    type Error = WireError;
    fn try_from(c: pb::FeedChunk) -> Result<Self, WireError> {
        let hash = ChunkHash::from_slice(&c.hash)
            .ok_or_else(|| invalid(format!("a chunk hash has 32 bytes, not {}", c.hash.len())))?;
        Ok(FeedChunk { hash, len: c.len })
    }
}

/// Chunks on the wire, checked.
pub fn feed_chunks_from_wire(chunks: Vec<pb::FeedChunk>) -> Result<Vec<FeedChunk>, WireError> {
    chunks.into_iter().map(TryInto::try_into).collect()
}

impl From<&FeedPage> for pb::ReadFeedReply {
    fn from(p: &FeedPage) -> Self {
        pb::ReadFeedReply {
            entries: p
                .entries
                .iter()
                .map(|e| pb::FeedEntry {
                    seq: e.seq,
                    chunks: e.chunks.iter().map(Into::into).collect(),
                })
                .collect(),
            first_seq: p.first_seq,
            next_seq: p.next_seq,
            cursor: p.cursor,
            resync: p.resync,
        }
    }
}

impl TryFrom<pb::ReadFeedReply> for FeedPage {
    type Error = WireError;
    fn try_from(p: pb::ReadFeedReply) -> Result<Self, WireError> {
        Ok(FeedPage {
            entries: p
                .entries
                .into_iter()
                .map(|e| {
                    Ok(FeedEntry {
                        seq: e.seq,
                        chunks: feed_chunks_from_wire(e.chunks)?,
                    })
                })
                .collect::<Result<_, WireError>>()?,
            first_seq: p.first_seq,
            next_seq: p.next_seq,
            cursor: p.cursor,
            resync: p.resync,
        })
    }
}

impl From<&Follower> for pb::Follower {
    fn from(f: &Follower) -> Self {
        pb::Follower {
            root: f.root,
            path: f.path.clone(),
            site: f.site.clone(),
            mode: f.mode.clone(),
            following: f.following,
            cursor: f.cursor,
            scanning: f.scanning,
            next_seq: f.next_seq,
            backlog_chunks: f.backlog_chunks,
            backlog_bytes: f.backlog_bytes,
            rate_bps: f.rate_bps,
            updated_ns: f.updated_ns,
            log_now_ns: f.log_now_ns,
        }
    }
}

impl From<pb::Follower> for Follower {
    fn from(f: pb::Follower) -> Self {
        Follower {
            root: f.root,
            path: f.path,
            site: f.site,
            mode: f.mode,
            following: f.following,
            cursor: f.cursor,
            scanning: f.scanning,
            next_seq: f.next_seq,
            backlog_chunks: f.backlog_chunks,
            backlog_bytes: f.backlog_bytes,
            rate_bps: f.rate_bps,
            updated_ns: f.updated_ns,
            log_now_ns: f.log_now_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_and_extents_round_trip() {
        let a = Attr {
            ino: 7,
            kind: FileKind::Symlink,
            mode: 0o777,
            uid: 1,
            gid: 2,
            size: 3,
            nlink: 1,
            atime_ns: -5,
            mtime_ns: 6,
            ctime_ns: 7,
            generation: 8,
            subtree: 1,
            rdev: 0,
            parent: 0,
        };
        assert_eq!(Attr::try_from(pb::Attr::from(&a)).unwrap(), a);
        let e = Extent {
            offset: 1,
            len: 2,
            chunk: Some(ChunkRef {
                hash: ChunkHash([9; 32]),
                offset: 3,
                len: 2,
            }),
        };
        assert_eq!(Extent::try_from(pb::Extent::from(&e)).unwrap(), e);
    }

    #[test]
    fn bad_messages_are_invalid_argument_not_panics() {
        let bad_hash = pb::ChunkRef {
            hash: vec![1, 2, 3],
            offset: 0,
            length: 1,
        };
        assert!(matches!(
            ChunkRef::try_from(bad_hash),
            Err(WireError::Other(Code::InvalidArgument, _))
        ));
        assert!(kind_from_wire(99).is_err());
        let empty = pb::AttrReply {
            attr: None,
            subtree_owner: String::new(),
        };
        assert!(attr_from_reply(empty).is_err());
    }
}
