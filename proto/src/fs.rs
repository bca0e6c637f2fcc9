//! Domain values of the namespace, shared by the metadata server and its clients.

use serde::{Deserialize, Serialize};

use crate::status::Errno;

/// An inode number. Never reused within a cluster.
pub type InodeId = u64;
/// The root directory of the namespace.
pub const ROOT_INO: InodeId = 1;

/// The name, in a subtree's root, of the directory that holds its snapshots: reachable
/// by lookup, not listed (like ZFS's `.zfs`), and read-only.
pub const SNAPSHOTS_DIR: &[u8] = b".snapshots";
/// The inode number of subtree `S`'s snapshots directory is `S | SNAPSHOTS_DIR_BIT`
/// (no stored inode has it: numbers are handed out from 2 upwards).
pub const SNAPSHOTS_DIR_BIT: InodeId = 1 << 62;

/// A snapshots directory's number, if `ino` is one, and its subtree.
pub fn snapshots_dir_of(ino: InodeId) -> Option<SubtreeId> {
    (ino & SNAPSHOTS_DIR_BIT != 0).then_some(ino & !SNAPSHOTS_DIR_BIT)
}
/// A subtree is named by the inode number of its root directory.
pub type SubtreeId = InodeId;
/// An ownership epoch; bumped every time a subtree changes owner.
pub type Epoch = u64;

/// Longest name of a directory entry, in bytes (as Linux NAME_MAX).
pub const NAME_MAX: usize = 255;
/// Longest symlink target, in bytes (PATH_MAX less the terminating NUL).
pub const SYMLINK_MAX: usize = 4095;
/// Largest xattr value, in bytes (as Linux XATTR_SIZE_MAX).
pub const XATTR_VALUE_MAX: usize = 65536;
/// Most chunk references one write may commit (E2BIG past it); it keeps every command,
/// and so every log entry, small enough to replicate within a heartbeat.
pub const MAX_CHUNKS_PER_WRITE: usize = 4096;
/// Largest file size: writes or truncates past it get EFBIG.
pub const MAX_FILE_SIZE: u64 = 1 << 50;
/// `rename` flags, with Linux's values.
pub const RENAME_NOREPLACE: u32 = 1;
/// Swap the two names atomically.
pub const RENAME_EXCHANGE: u32 = 2;
/// Check a directory entry name: 1..=[`NAME_MAX`] bytes, no `/`, no NUL (the namespace
/// refuses any other; a mount that answers a create itself checks the same).
pub fn validate_name(name: &[u8]) -> Result<(), Errno> {
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// Mobilus's own `rename` flag: the caller has the file the rename replaces open, so if
/// that was its last link it stays, as an orphan, until `ReleaseOrphan` (as
/// `UnlinkRequest.keep_open` does for an unlink).
pub const RENAME_KEEP_OPEN: u32 = 1 << 31;
/// `setxattr` flags, with Linux's values.
pub const XATTR_CREATE: u32 = 1;
/// Fail unless the attribute exists.
pub const XATTR_REPLACE: u32 = 2;

/// What an inode is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileKind {
    /// The `S_IFMT` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::Regular => 0o100000,
            FileKind::Directory => 0o040000,
            FileKind::Symlink => 0o120000,
            FileKind::Fifo => 0o010000,
            FileKind::Socket => 0o140000,
            FileKind::CharDevice => 0o020000,
            FileKind::BlockDevice => 0o060000,
        }
    }
}

/// The attributes of an inode, as stored and as returned.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: InodeId,
    pub kind: FileKind,
    /// Permission bits only (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub generation: u64,
    pub subtree: SubtreeId,
    pub rdev: u32,
    /// For directories, the parent directory (the root is its own parent); 0 otherwise.
    pub parent: InodeId,
}

/// How `setattr` sets a timestamp.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    /// The time the leader stamped on the operation.
    Now,
    /// An explicit time in nanoseconds since the epoch.
    Ns(i64),
}

/// A `setattr` request: every `Some` field is changed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    pub ctime_ns: Option<i64>,
}

/// One entry of a directory listing. `cookie` resumes the listing after this entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: InodeId,
    pub kind: FileKind,
    pub cookie: u64,
    pub attr: Option<Attr>,
}

/// A BLAKE3 hash naming an immutable chunk.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkHash(pub [u8; 32]);

impl ChunkHash {
    /// The hash of `data`.
    pub fn of(data: &[u8]) -> Self {
        ChunkHash(*blake3::hash(data).as_bytes())
    }

    /// Lower-case hex, as file names use it.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Its file under a data node's data directory, `chunks/<first byte>/<hex>`: where
    /// the node stores it and a mount on the same host reads it (short-circuit reads).
    pub fn file_in(&self, data_dir: &std::path::Path) -> std::path::PathBuf {
        let hex = self.to_hex();
        data_dir.join("chunks").join(&hex[..2]).join(hex)
    }

    /// From the 32 bytes of a wire message.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(ChunkHash(bytes.try_into().ok()?))
    }
}

impl std::fmt::Debug for ChunkHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A byte range of a chunk.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    pub hash: ChunkHash,
    pub offset: u64,
    pub len: u64,
}

/// One write of a file range: the chunk ranges, concatenated, are the bytes at `offset`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SliceWrite {
    pub offset: u64,
    pub len: u64,
    pub chunks: Vec<ChunkRef>,
}

/// The data node whose `has` answer a write relied on, and that answer's GC generation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ChunkCheck {
    pub node: String,
    pub gc_gen: u64,
}

/// Most hashes one GC request (condemn, forget, refs) may carry.
pub const MAX_GC_BATCH: usize = 4096;

/// A piece of the merged view of a file range: either bytes of a chunk or a hole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    /// `None` is a hole (reads as zeros).
    pub chunk: Option<ChunkRef>,
}

/// Replace what `extents` (sorted, covering a range) say about `[a, b)` with `pieces`.
///
/// Pieces that are a tidy run inside `[a, b)` (sorted, apart, none empty: what a record's
/// chunks cut to a block are) are spliced in where they belong, in O(log n + pieces)
/// comparisons and one move of the tail. A block fragmented by random writes holds
/// hundreds of extents, and the state machine overlays each of a block's records on them
/// when it compacts the block (`namespace::file::compact`) and when it reads it: sorting
/// the whole list again for each record made that records × n log n. Anything else is
/// merged by sorting, with the result the splice gives for tidy pieces.
///
/// `extents` must be sorted, apart and none empty, and stays so: an empty piece says
/// nothing about any byte and is dropped (a zero-length chunk reference, which a client
/// may send, would otherwise leave an empty extent that breaks the binary searches).
pub fn overlay_extents(extents: &mut Vec<Extent>, a: u64, b: u64, mut pieces: Vec<Extent>) {
    pieces.retain(|p| p.len > 0);
    if a >= b {
        return;
    }
    let tidy = pieces
        .iter()
        .all(|p| p.offset >= a && p.offset.saturating_add(p.len) <= b)
        && pieces
            .windows(2)
            .all(|w| w[0].offset + w[0].len <= w[1].offset);
    if !tidy {
        return overlay_extents_by_sorting(extents, a, b, pieces);
    }
    // The extents that meet [a, b): from the first that ends after `a` to the last that
    // starts before `b` (sorted and apart, their ends are sorted too).
    let first = extents.partition_point(|e| e.offset + e.len <= a);
    let last = first + extents[first..].partition_point(|e| e.offset < b);
    let mut middle = Vec::with_capacity(pieces.len() + 2);
    if let Some(e) = extents[first..last].first() {
        if e.offset < a {
            middle.push(head_of(e, a));
        }
    }
    middle.extend(pieces);
    if let Some(e) = extents[first..last].last() {
        if e.offset + e.len > b {
            middle.push(tail_of(e, b));
        }
    }
    extents.splice(first..last, middle);
}

/// `e` up to `a` (`e` starts before `a`).
fn head_of(e: &Extent, a: u64) -> Extent {
    Extent {
        offset: e.offset,
        len: a - e.offset,
        chunk: e.chunk.map(|c| ChunkRef {
            len: a - e.offset,
            ..c
        }),
    }
}

/// `e` from `b` on (`e` ends after `b`).
fn tail_of(e: &Extent, b: u64) -> Extent {
    let end = e.offset + e.len;
    Extent {
        offset: b,
        len: end - b,
        chunk: e.chunk.map(|c| ChunkRef {
            offset: c.offset + (b - e.offset),
            len: end - b,
            ..c
        }),
    }
}

/// [`overlay_extents`] for any pieces: every extent is trimmed, the pieces appended, and
/// the list sorted again (stable, so ties keep the older extent first).
pub fn overlay_extents_by_sorting(extents: &mut Vec<Extent>, a: u64, b: u64, pieces: Vec<Extent>) {
    let mut out = Vec::with_capacity(extents.len() + pieces.len() + 2);
    for e in extents.drain(..) {
        let end = e.offset + e.len;
        if end <= a || e.offset >= b {
            out.push(e);
            continue;
        }
        if e.offset < a {
            out.push(head_of(&e, a));
        }
        if end > b {
            out.push(tail_of(&e, b));
        }
    }
    out.extend(pieces);
    out.sort_by_key(|e| e.offset);
    *extents = out;
}

/// File system usage, as `statfs` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatFs {
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub files: u64,
    pub max_files: u64,
    pub block_size: u32,
    pub name_max: u32,
}

/// A subtree's delegation as its holder sees it: held for `remaining_ns` more of log time
/// (from the command that answered it), and whether it is being recalled.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct DelegationGrant {
    pub subtree: SubtreeId,
    pub epoch: Epoch,
    pub remaining_ns: i64,
    pub recalled: bool,
}

/// The (subtree, epoch) under which a mutation was issued.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence {
    pub subtree: SubtreeId,
    pub epoch: Epoch,
}

/// What an advisory lock request asks for (fcntl's F_RDLCK, F_WRLCK, F_UNLCK).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    Read,
    Write,
    Unlock,
}

/// A lock request, or a question about one: whose (a lock session and the kernel's lock
/// owner within it), on which file, for which bytes (`end` inclusive; `u64::MAX`: to the
/// end of the file).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockRequest {
    pub ino: InodeId,
    pub session: u64,
    pub owner: u64,
    pub start: u64,
    pub end: u64,
    pub kind: LockKind,
}

/// An advisory lock held on bytes `start..=end` of a file (`end` = `u64::MAX`: to the end,
/// however far the file grows).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldLock {
    pub start: u64,
    pub end: u64,
    pub write: bool,
    /// The holder's process id, as its mount saw it (for F_GETLK; not unique across hosts).
    pub pid: u32,
}

impl HeldLock {
    /// Whether it keeps an owner from taking `kind` on `start..=end`.
    pub fn conflicts(&self, start: u64, end: u64, kind: LockKind) -> bool {
        let overlaps = self.start <= end && start <= self.end;
        overlaps && (self.write || kind == LockKind::Write)
    }

    /// An owner's locks after it asks for `kind` on `start..=end` (an unlock included):
    /// what it held there is replaced, as fcntl does; the result is sorted and merged.
    pub fn apply(
        held: Vec<HeldLock>,
        start: u64,
        end: u64,
        kind: LockKind,
        pid: u32,
    ) -> Vec<HeldLock> {
        let mut next = HeldLock::carve(held, start, end);
        if kind != LockKind::Unlock {
            next.push(HeldLock {
                start,
                end,
                write: kind == LockKind::Write,
                pid,
            });
        }
        HeldLock::merge(next)
    }

    /// `held` without bytes `start..=end` (locks that straddle it are split).
    pub fn carve(held: Vec<HeldLock>, start: u64, end: u64) -> Vec<HeldLock> {
        let mut out = Vec::with_capacity(held.len() + 1);
        for h in held {
            if h.end < start || h.start > end {
                out.push(h);
                continue;
            }
            if h.start < start {
                out.push(HeldLock {
                    end: start - 1,
                    ..h
                });
            }
            if h.end > end {
                out.push(HeldLock {
                    start: end + 1,
                    ..h
                });
            }
        }
        out
    }

    /// Sort disjoint locks and join neighbours of the same kind.
    pub fn merge(mut held: Vec<HeldLock>) -> Vec<HeldLock> {
        held.sort_by_key(|h| h.start);
        let mut out: Vec<HeldLock> = Vec::with_capacity(held.len());
        for h in held {
            match out.last_mut() {
                Some(last) if last.write == h.write && last.end.checked_add(1) == Some(h.start) => {
                    last.end = h.end;
                }
                _ => out.push(h),
            }
        }
        out
    }
}

/// What a site may be asked to prove about a subtree: the state of its ownership.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubtreeState {
    /// An existing tree is being relabelled into the subtree; until that ends, its inodes
    /// still belong to the shared root subtree, and those already relabelled are frozen.
    Preparing,
    /// Owned by one site (or, for the root, shared).
    Owned,
}

impl SubtreeState {
    pub fn name(self) -> &'static str {
        match self {
            SubtreeState::Preparing => "preparing",
            SubtreeState::Owned => "owned",
        }
    }
}

/// A subtree as the metadata service reports it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SubtreeInfo {
    pub root: SubtreeId,
    /// `None`: shared (the namespace root).
    pub owner: Option<String>,
    pub epoch: Epoch,
    pub state: SubtreeState,
    /// The owner site's lease, in log time; 0 when it has none.
    pub lease_expiry_ns: i64,
    /// The log's clock when this was read (compare with `lease_expiry_ns`).
    pub log_now_ns: i64,
    pub inodes: u64,
    pub bytes: u64,
    pub pending_dirs: u64,
    /// Where the subtree's root is now; empty if no path reaches it.
    pub path: String,
    pub created_ns: i64,
    pub moved_ns: i64,
    /// follow-writer: a write from another site moves ownership there once the owner
    /// has held it this long (ns); `None`: only the operator moves it.
    pub follow_writer_hold_ns: Option<i64>,
    /// The mount session holding the subtree's delegation, and whether it is recalled.
    pub delegation: Option<(u64, bool)>,
}

impl SubtreeInfo {
    /// Does the owner hold a lease at the time this was read?
    pub fn lease_valid(&self) -> bool {
        self.lease_expiry_ns > self.log_now_ns
    }
}

/// Where a clone stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloneState {
    /// Copying the source's metadata, step by step; the source is frozen meanwhile.
    Copying,
    /// Interrupted or refused: what was copied is being removed, step by step.
    Aborting,
    /// Published: the clone is a subtree of its own.
    Done,
    /// Removed: nothing of it is left (or a refresh stopped: the clone stays).
    Gone,
    /// A published clone being brought up to date with its source (both frozen).
    Refreshing,
}

impl CloneState {
    pub fn name(self) -> &'static str {
        match self {
            CloneState::Copying => "copying",
            CloneState::Aborting => "aborting",
            CloneState::Done => "done",
            CloneState::Gone => "gone",
            CloneState::Refreshing => "refreshing",
        }
    }
}

/// A clone as the metadata service reports it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CloneInfo {
    /// The new subtree's root, hidden until the clone is published.
    pub dst: InodeId,
    pub src: SubtreeId,
    pub parent: InodeId,
    pub name: Vec<u8>,
    pub owner: String,
    pub state: CloneState,
    /// The source's inodes when the clone began.
    pub total_inodes: u64,
    pub copied_inodes: u64,
    pub copied_bytes: u64,
    pub started_ns: i64,
    /// Copying: the source's freeze ends then (log time) unless a step renews it.
    pub deadline_ns: i64,
    pub log_now_ns: i64,
    /// Aborting: why.
    pub why: String,
    /// A refresh: what it did so far.
    pub refresh: Option<RefreshInfo>,
}

/// What a refresh of a clone did to its files (each a file the clone copied).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct RefreshInfo {
    pub files: u64,
    /// Changed in the source only: now as the source has them.
    pub refreshed: u64,
    /// Changed in the clone only: left as the clone has them.
    pub kept: u64,
    /// Gone from the source (or from the clone): left alone.
    pub gone: u64,
    /// Changed on both sides: left alone; the first of them (the clone's inodes).
    pub conflicts: Vec<InodeId>,
    pub conflict_count: u64,
}

/// What a subtree holds of the data.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct SubtreeUsage {
    pub root: SubtreeId,
    /// Regular files (each once, however many names it has).
    pub files: u64,
    /// The sum of its files' sizes.
    pub logical_bytes: u64,
    /// Distinct chunks its files reference, and their bytes.
    pub chunks: u64,
    pub referenced_bytes: u64,
    /// Chunks nothing outside it references, and their bytes: what deleting it would
    /// free (once GC has run).
    pub exclusive_chunks: u64,
    pub exclusive_bytes: u64,
}

/// A snapshot as the metadata service reports it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub name: Vec<u8>,
    /// Its root: a read-only subtree.
    pub root: InodeId,
    pub created_ns: i64,
    pub inodes: u64,
    pub bytes: u64,
}

/// A data node in the site registry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DataNodeInfo {
    pub site: String,
    pub addr: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    /// When its last heartbeat committed (the leader's clock); 0 in a registration request.
    pub last_heartbeat_ns: i64,
    /// Being drained (`mobilusctl node drain`): no new copies go to it, and its chunks are
    /// copied to the site's other nodes. Kept apart from the registration record (which
    /// every heartbeat rewrites) and filled in by a listing.
    #[serde(skip)]
    pub draining: bool,
    /// Copies its site keeps of each chunk, as the operator set it (0: the default, 2);
    /// filled in by a listing.
    #[serde(skip)]
    pub site_replicas: u32,
    /// Its background workers (heartbeat, gc, replicate, follow), as its last heartbeat
    /// reported them.
    pub workers: Vec<WorkerReport>,
}

/// One background worker of a data node, as its heartbeat reports it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerReport {
    pub name: String,
    /// Its last step failed and it is waiting longer before the next.
    pub backing_off: bool,
    /// Its last failure (empty: none since the node started).
    pub last_error: String,
    pub failures: u64,
}

/// Workers one heartbeat may report, at most.
pub const MAX_WORKER_REPORTS: usize = 16;
/// Longest error one worker report may carry.
pub const MAX_WORKER_ERROR: usize = 256;

/// Is `site` a valid site name: 1 to 64 of `[A-Za-z0-9_-]`?
pub fn valid_site_name(site: &str) -> bool {
    !site.is_empty()
        && site.len() <= 64
        && site
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// How a site holds a subtree's data (`mobilusctl subtree placement`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataMode {
    /// Replicated continuously: the site follows the subtree's change feed.
    Eager,
    /// Only once the subtree is owned there (after a move); before, reads fault.
    Lazy,
    /// Never copied ahead: reads fault, and faulted chunks are kept as a cache (evicted
    /// under space pressure, least recently used first).
    OnDemand,
    /// Never copied ahead, as on demand, but what reads fault in is kept for good: never
    /// evicted (until garbage collection).
    Pinned,
    /// Only the subtree's access profile is copied ahead (what its application read
    /// first); the rest is faulted in on demand, and kept (`subtree move --data lazy`).
    Profile,
}

impl DataMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DataMode::Eager => "eager",
            DataMode::Lazy => "lazy",
            DataMode::OnDemand => "on-demand",
            DataMode::Pinned => "pinned",
            DataMode::Profile => "profile",
        }
    }

    pub fn parse(s: &str) -> Option<DataMode> {
        match s {
            "eager" => Some(DataMode::Eager),
            "lazy" => Some(DataMode::Lazy),
            "on-demand" => Some(DataMode::OnDemand),
            "pinned" => Some(DataMode::Pinned),
            "profile" => Some(DataMode::Profile),
            _ => None,
        }
    }
}

/// One read of an access profile: blocks `first_block..first_block + blocks` of a chunk.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProfileRead {
    pub hash: ChunkHash,
    pub first_block: u32,
    pub blocks: u32,
}

/// Most reads a profile keeps.
pub const MAX_PROFILE_READS: usize = 4096;

/// A subtree's access profile: what an application read in the first seconds after it
/// opened the subtree's files, in order. A site the subtree moves to fetches these first.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    pub root: SubtreeId,
    pub reads: Vec<ProfileRead>,
    /// The next start (at any site) records it anew.
    pub record: bool,
    /// Log time of the recording; 0: never recorded.
    pub recorded_ns: i64,
    /// The site it was recorded at.
    pub site: String,
}

impl Profile {
    /// The chunks it names, each once, in the order first read.
    pub fn chunks(&self) -> Vec<ChunkHash> {
        let mut seen = std::collections::HashSet::new();
        self.reads
            .iter()
            .map(|r| r.hash)
            .filter(|h| seen.insert(*h))
            .collect()
    }
}

/// One site's part in a subtree's placement.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SitePlacement {
    pub site: String,
    pub mode: DataMode,
    /// A write's fsync returns only once this site holds its chunks too.
    pub sync: bool,
}

/// Where a subtree's data lives: the sites named, and the owner, which always holds it
/// eagerly (a move makes the new owner eager).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    pub root: SubtreeId,
    pub owner: Option<String>,
    /// As the operator set it (empty: never set).
    pub sites: Vec<SitePlacement>,
}

impl Placement {
    /// How `site` holds the data: the owner eagerly unless told otherwise, a site not
    /// named on demand.
    pub fn mode(&self, site: &str) -> DataMode {
        match self.sites.iter().find(|s| s.site == site) {
            Some(s) => s.mode,
            None if self.owner.as_deref() == Some(site) => DataMode::Eager,
            None => DataMode::OnDemand,
        }
    }

    /// Whether `site` copies the data ahead of reads now: eager, or lazy and owner.
    pub fn follows(&self, site: &str) -> bool {
        match self.mode(site) {
            DataMode::Eager => true,
            DataMode::Lazy => self.owner.as_deref() == Some(site),
            DataMode::OnDemand | DataMode::Pinned | DataMode::Profile => false,
        }
    }

    /// Whether `site` keeps for good what its reads fault in: it holds the data (it
    /// follows), or its placement pins it. Otherwise faulted chunks are a cache.
    pub fn keeps_faults(&self, site: &str) -> bool {
        self.follows(site) || matches!(self.mode(site), DataMode::Pinned | DataMode::Profile)
    }

    /// Whether `site` fetches the subtree's access profile ahead of reads: it follows,
    /// or its mode is `profile`.
    pub fn prefetches_profile(&self, site: &str) -> bool {
        self.follows(site) || self.mode(site) == DataMode::Profile
    }

    /// Sites whose copy a write waits for (besides the writer's own).
    pub fn sync_sites(&self) -> impl Iterator<Item = &str> {
        self.sites
            .iter()
            .filter(|s| s.sync)
            .map(|s| s.site.as_str())
    }
}

/// A chunk a write added to a subtree, and the bytes of it the subtree uses.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedChunk {
    pub hash: ChunkHash,
    pub len: u64,
}

/// One committed write's chunks, in a subtree's change feed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FeedEntry {
    pub seq: u64,
    pub chunks: Vec<FeedChunk>,
}

/// A page of a subtree's change feed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedPage {
    pub entries: Vec<FeedEntry>,
    /// The oldest entry kept, and the one the next write gets.
    pub first_seq: u64,
    pub next_seq: u64,
    /// The asking site's cursor: the last entry it has passed.
    pub cursor: Option<u64>,
    /// The site must start over from a scan of the subtree (it never followed it, or the
    /// entries after its cursor are no longer kept).
    pub resync: bool,
}

/// A site following a subtree's feed, as its replicator last reported.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Follower {
    pub root: SubtreeId,
    pub path: String,
    pub site: String,
    pub mode: String,
    /// Whether the placement has it copy ahead now.
    pub following: bool,
    /// 0: it has not passed any entry yet.
    pub cursor: u64,
    /// It is copying a scan of the subtree (entries after `cursor` are kept for it).
    pub scanning: bool,
    pub next_seq: u64,
    pub backlog_chunks: u64,
    pub backlog_bytes: u64,
    pub rate_bps: u64,
    /// When it last reported (log time); 0: never.
    pub updated_ns: i64,
    pub log_now_ns: i64,
}

impl Follower {
    /// Whether the site has reported, is not copying a scan, has passed every entry
    /// written before this was read, and has nothing left to fetch.
    pub fn caught_up(&self) -> bool {
        self.updated_ns > 0
            && !self.scanning
            && self.cursor + 1 >= self.next_seq
            && self.backlog_chunks == 0
    }
}
