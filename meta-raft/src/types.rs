//! The Raft type configuration and the commands the state machine applies.

use mobilus_proto::fs::{
    Attr, ChunkCheck, ChunkHash, CloneInfo, DataMode, DataNodeInfo, DelegationGrant, Epoch, Fence,
    FileKind, InodeId, LockRequest, Placement, Profile, ProfileRead, SetAttr, SitePlacement,
    SliceWrite, SubtreeId, SubtreeInfo,
};
use mobilus_proto::status::Errno;
use serde::{Deserialize, Serialize};

/// A member of the metadata group.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Mobilus's Raft types: commands in, replies out, snapshots as files.
    pub TypeConfig:
        D = Proposal,
        R = Vec<Reply>,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle of a member.
pub type Raft = openraft::Raft<TypeConfig>;
/// A stored log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// Storage errors, as openraft wants them.
pub type StorageError = openraft::StorageError<NodeId>;
/// A log id.
pub type LogId = openraft::LogId<NodeId>;
/// Membership as the state machine stores it.
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;

/// One log entry's payload: the commands the leader batched into it, applied in order as
/// one transaction (each command refused or applied on its own).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Proposal(pub Vec<Command>);

/// A command: an operation, stamped by the leader with the time it was proposed. The state machine never reads a clock: every time it stores comes from here.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub time_ns: i64,
    /// The site that issued it (a mount's); `None` for tools that speak for no site.
    pub site: Option<String>,
    pub fence: Option<Fence>,
    pub op: Op,
    /// The issuing mount's session, if any: the holder of a subtree's delegation is
    /// recognised by it (see `namespace::delegation`). Last, so that an entry written
    /// before it existed fails to decode rather than being misread.
    pub session: Option<u64>,
    /// Issued relying on `session`'s delegation of the subtree it touches (a holder's
    /// write-back): refused unless that delegation still lasts. Last, for the same reason.
    pub holder_only: bool,
}

/// A namespace mutation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Mknod {
        parent: InodeId,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        kind: FileKind,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
    },
    Mkdir {
        parent: InodeId,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Symlink {
        parent: InodeId,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
        uid: u32,
        gid: u32,
    },
    Link {
        ino: InodeId,
        new_parent: InodeId,
        #[serde(with = "serde_bytes")]
        new_name: Vec<u8>,
    },
    Unlink {
        parent: InodeId,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        /// The caller has the file open: a last link leaves an orphan, not a deletion.
        keep_open: bool,
    },
    /// The last handle of an orphan closed: delete it if it still has no link.
    ReleaseOrphan {
        ino: InodeId,
    },
    Rmdir {
        parent: InodeId,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    Rename {
        parent: InodeId,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        new_parent: InodeId,
        #[serde(with = "serde_bytes")]
        new_name: Vec<u8>,
        flags: u32,
    },
    SetAttr {
        ino: InodeId,
        set: SetAttr,
    },
    SetXattr {
        ino: InodeId,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        flags: u32,
    },
    RemoveXattr {
        ino: InodeId,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    Write {
        ino: InodeId,
        slices: Vec<SliceWrite>,
        /// The data-node answers the writer relied on, one per node its chunks are on
        /// (see `namespace::gc`).
        checks: Vec<ChunkCheck>,
    },
    /// Reserve a block of inode numbers for `session`'s creates (`namespace::reserved`).
    ReserveInodes {
        session: u64,
    },
    /// A regular file that `session` (a delegation's holder) answered before creating
    /// it, under a number it reserved, made at `time_ns` (its own clock, never later than
    /// the command's); with its first write, if any, in the same command.
    CreateReserved {
        parent: InodeId,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        ino: InodeId,
        mode: u32,
        uid: u32,
        gid: u32,
        time_ns: i64,
        session: u64,
        write: Option<(Vec<SliceWrite>, Vec<ChunkCheck>)>,
    },
    /// A data node registers or heartbeats; its heartbeat time is the command's.
    RegisterDataNode {
        node: DataNodeInfo,
    },
    /// GC, step 1: of `hashes` (held by data node `node`), mark those unreferenced for at
    /// least `grace_ns` as condemned; writes that reference them are refused from now on.
    Condemn {
        node: String,
        hashes: Vec<ChunkHash>,
        grace_ns: i64,
    },
    /// GC, step 2, after the node deleted them: forget the condemnations and bump the
    /// node's GC generation, so writes that relied on its older answers are refused.
    ForgetCondemned {
        node: String,
        hashes: Vec<ChunkHash>,
    },
    /// Compare-and-set of an xattr: set `name` to `value` only if its current value is
    /// `expected` (`None`: absent); otherwise ECANCELED and nothing changes. (The Jepsen
    /// register workload's CAS.)
    CasXattr {
        ino: InodeId,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        expected: Option<serde_bytes::ByteBuf>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Make directory `root` a subtree owned by `owner`, epoch 1. An empty directory is
    /// owned at once; an existing tree is `Preparing` until `RelabelSubtree` has labelled
    /// every inode under it.
    CreateSubtree {
        root: InodeId,
        owner: String,
    },
    /// Relabel at most `limit` more inodes of a preparing subtree; the step that labels
    /// the last one makes it owned.
    RelabelSubtree {
        root: InodeId,
        limit: u32,
    },
    /// Give a subtree to site `to` with epoch + 1. `force` takes it from an owner whose
    /// lease has expired; without it, the owner's lease must be valid.
    MoveSubtree {
        root: InodeId,
        to: String,
        force: bool,
    },
    /// Set a subtree's follow-writer policy: `Some(hold)` lets the first write from
    /// another site (whose lease is valid) move ownership there, once the owner has held
    /// it `hold` ns; `None` turns it off.
    SetSubtreePolicy {
        root: InodeId,
        follow_writer_hold_ns: Option<i64>,
    },
    /// Drain a data node (or stop): no new copies go to it (`namespace::nodes`).
    SetNodeDraining {
        addr: String,
        draining: bool,
    },
    /// Set how many copies a site keeps of each chunk (`namespace::nodes`).
    SetSiteReplicas {
        site: String,
        replicas: u32,
    },
    /// Set which sites hold a subtree's data, and how (`namespace::feed`).
    SetPlacement {
        root: InodeId,
        sites: Vec<SitePlacement>,
    },
    /// `site`'s replicator has passed entry `seq` of the subtree's change feed; its
    /// progress, for status.
    AckFeed {
        root: InodeId,
        site: String,
        seq: u64,
        backlog_chunks: u64,
        backlog_bytes: u64,
        rate_bps: u64,
        /// Copying a scan (see `namespace::feed`).
        scanning: bool,
    },
    /// A mount opens a lock session (its site is the command's): it holds advisory locks
    /// while its lease lasts.
    OpenSession,
    /// The session's holder is alive: extend its lease. An expired session is gone
    /// (ENOLCK), and so are its locks.
    RenewSession {
        session: u64,
    },
    /// Release every lock of the session and end it (a clean unmount).
    CloseSession {
        session: u64,
    },
    /// Set, change or release the advisory lock of (`session`, `owner`) on bytes
    /// `start..=end` of `ino` (all in `lock`), with POSIX record-lock semantics; a conflicting lock of a
    /// live session is EAGAIN.
    SetLock {
        lock: LockRequest,
        pid: u32,
    },
    /// `session` (a mount of the owner site) takes the subtree's delegation, or renews
    /// it: while it holds it, no other session may change the subtree.
    AcquireDelegation {
        session: u64,
        subtree: SubtreeId,
    },
    /// The holder gives the delegation back (after a recall, or at unmount).
    ReleaseDelegation {
        session: u64,
        subtree: SubtreeId,
    },
    /// Another session (or a move) needs the subtree: ask its holder to give the
    /// delegation back; it stays valid at most a grace period longer.
    RecallDelegation {
        subtree: SubtreeId,
    },
    /// The holder says whether it has closes answered before their writes commit: while
    /// it has, another session's read of the subtree recalls the delegation first.
    SetWriteBack {
        session: u64,
        subtree: SubtreeId,
        on: bool,
        /// Grows with each such command of a mount: an older one applied late is void.
        seq: u64,
    },
    /// Start copying subtree `src` into a new subtree `name` in `parent` (a directory of
    /// the shared subtree), owned by `owner` (`None`: the source's). The source is frozen
    /// until the copy is published, or until no step has come for `CLONE_LEASE_NS`.
    StartClone {
        src: SubtreeId,
        parent: InodeId,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        owner: Option<String>,
        /// Publish it as snapshot `name` of `src` (then `parent` is `src`), read-only.
        snapshot: bool,
    },
    /// Bring published clone `dst` up to date with its source, for every file it has not
    /// changed (then `CloneStep` until done); both are frozen meanwhile.
    StartRefresh {
        dst: InodeId,
    },
    /// Forget snapshot `name` of subtree `src`; `AbortCloneStep`s then remove its tree.
    RemoveSnapshot {
        src: SubtreeId,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    /// Copy at most `limit` more inodes and slices; the step that copies the last
    /// publishes the clone.
    CloneStep {
        dst: InodeId,
        limit: u32,
    },
    /// Abort the clone (if it is still copying) and remove at most `limit` more of what
    /// it copied; the step that removes the last forgets it.
    AbortCloneStep {
        dst: InodeId,
        limit: u32,
    },
    /// Take a drained, stopped data node out of the site registry (`namespace::nodes`).
    RemoveDataNode {
        addr: String,
    },
    /// A mount stores the access profile it recorded (`namespace::profile`).
    SetProfile {
        root: InodeId,
        reads: Vec<ProfileRead>,
    },
    /// Forget a subtree's profile; `record`: the next start records one.
    ArmProfile {
        root: InodeId,
        record: bool,
    },
    /// [`Op::MoveSubtree`], and in the same step the new owner holds the data as `data`
    /// says instead of eagerly (`subtree move --data lazy|none`).
    MoveSubtreeWith {
        root: InodeId,
        to: String,
        force: bool,
        data: DataMode,
    },
}

/// Which inodes an operation changes, as the ownership check sees them.
pub enum Touches {
    /// Cluster administration (the site registry, GC, subtree changes): not a change of
    /// any subtree's contents by a site.
    Admin,
    /// The inodes whose subtree decides: a directory for changes to its entries, the inode
    /// itself for changes to it.
    Inodes(Vec<InodeId>),
    /// Deleting an orphan (an inode with no name left, whose last open handle closed):
    /// changes nothing any listing, lookup or read can reach, so any site may do it, and
    /// a mount that had the file open at the old owner can still let it go.
    Orphan(InodeId),
    /// Advisory locks and the sessions that hold them: they change no file's contents,
    /// names or attributes, so any site may take them on any subtree (a reader at a
    /// non-owner site takes read locks, as SQLite does before every query), and no lock
    /// makes a refused write possible.
    Advisory,
}

impl Op {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Mknod { .. } => "mknod",
            Op::Mkdir { .. } => "mkdir",
            Op::Symlink { .. } => "symlink",
            Op::Link { .. } => "link",
            Op::Unlink { .. } => "unlink",
            Op::ReleaseOrphan { .. } => "release_orphan",
            Op::Rmdir { .. } => "rmdir",
            Op::Rename { .. } => "rename",
            Op::SetAttr { .. } => "setattr",
            Op::SetXattr { .. } => "setxattr",
            Op::RemoveXattr { .. } => "removexattr",
            Op::Write { .. } => "write",
            Op::ReserveInodes { .. } => "reserve_inodes",
            Op::CreateReserved { write: None, .. } => "create_reserved",
            Op::CreateReserved { write: Some(_), .. } => "create_and_write",
            Op::RegisterDataNode { .. } => "register_data_node",
            Op::Condemn { .. } => "condemn",
            Op::ForgetCondemned { .. } => "forget_condemned",
            Op::CasXattr { .. } => "cas_xattr",
            Op::CreateSubtree { .. } => "create_subtree",
            Op::RelabelSubtree { .. } => "relabel_subtree",
            Op::MoveSubtree { .. } | Op::MoveSubtreeWith { .. } => "move_subtree",
            Op::SetSubtreePolicy { .. } => "set_subtree_policy",
            Op::SetPlacement { .. } => "set_placement",
            Op::SetNodeDraining { .. } => "set_node_draining",
            Op::SetSiteReplicas { .. } => "set_site_replicas",
            Op::AckFeed { .. } => "ack_feed",
            Op::OpenSession => "open_session",
            Op::RenewSession { .. } => "renew_session",
            Op::CloseSession { .. } => "close_session",
            Op::SetLock { .. } => "set_lock",
            Op::AcquireDelegation { .. } => "acquire_delegation",
            Op::ReleaseDelegation { .. } => "release_delegation",
            Op::RecallDelegation { .. } => "recall_delegation",
            Op::SetWriteBack { .. } => "set_write_back",
            Op::StartClone {
                snapshot: false, ..
            } => "start_clone",
            Op::StartClone { snapshot: true, .. } => "create_snapshot",
            Op::RemoveSnapshot { .. } => "remove_snapshot",
            Op::StartRefresh { .. } => "start_refresh",
            Op::CloneStep { .. } => "clone_step",
            Op::AbortCloneStep { .. } => "abort_clone_step",
            Op::RemoveDataNode { .. } => "remove_data_node",
            Op::SetProfile { .. } => "set_profile",
            Op::ArmProfile { .. } => "arm_profile",
        }
    }

    /// The mount session this operation names, if any (for the session check, which every
    /// command passes before it runs: a site names only its own sessions).
    pub fn session(&self) -> Option<u64> {
        match self {
            Op::ReserveInodes { session }
            | Op::CreateReserved { session, .. }
            | Op::RenewSession { session }
            | Op::CloseSession { session }
            | Op::AcquireDelegation { session, .. }
            | Op::ReleaseDelegation { session, .. }
            | Op::SetWriteBack { session, .. } => Some(*session),
            Op::SetLock { lock, .. } => Some(lock.session),
            _ => None,
        }
    }

    /// The inodes this operation changes (for the ownership check, which every command
    /// passes before it runs). Every variant is listed: a new one must say what it touches.
    pub fn touches(&self) -> Touches {
        match self {
            Op::Mknod { parent, .. }
            | Op::Mkdir { parent, .. }
            | Op::Symlink { parent, .. }
            | Op::Unlink { parent, .. }
            | Op::Rmdir { parent, .. }
            // The new inode takes the directory's subtree.
            | Op::CreateReserved { parent, .. } => Touches::Inodes(vec![*parent]),
            Op::Link {
                ino, new_parent, ..
            } => Touches::Inodes(vec![*ino, *new_parent]),
            Op::Rename {
                parent, new_parent, ..
            } => Touches::Inodes(vec![*parent, *new_parent]),
            Op::SetAttr { ino, .. }
            | Op::SetXattr { ino, .. }
            | Op::RemoveXattr { ino, .. }
            | Op::CasXattr { ino, .. }
            | Op::Write { ino, .. } => Touches::Inodes(vec![*ino]),
            Op::ReleaseOrphan { ino } => Touches::Orphan(*ino),
            Op::RegisterDataNode { .. }
            | Op::Condemn { .. }
            | Op::ForgetCondemned { .. }
            | Op::CreateSubtree { .. }
            | Op::RelabelSubtree { .. }
            | Op::MoveSubtree { .. }
            | Op::MoveSubtreeWith { .. }
            | Op::SetSubtreePolicy { .. }
            | Op::SetPlacement { .. }
            | Op::SetNodeDraining { .. }
            | Op::RemoveDataNode { .. }
            | Op::SetProfile { .. }
            | Op::ArmProfile { .. }
            | Op::SetSiteReplicas { .. }
            | Op::AckFeed { .. } => Touches::Admin,
            // A clone reads its source (frozen meanwhile) and writes only its own hidden
            // tree until one entry in the shared subtree publishes it.
            Op::StartClone { .. }
            | Op::CloneStep { .. }
            | Op::AbortCloneStep { .. }
            | Op::RemoveSnapshot { .. }
            | Op::StartRefresh { .. } => Touches::Admin,
            // They change who may change the subtree's contents, not the contents;
            // `namespace::delegation` checks the holder's site and lease itself.
            Op::AcquireDelegation { .. }
            | Op::ReleaseDelegation { .. }
            | Op::RecallDelegation { .. }
            | Op::SetWriteBack { .. } => Touches::Admin,
            Op::OpenSession
            | Op::RenewSession { .. }
            | Op::CloseSession { .. }
            | Op::SetLock { .. } => Touches::Advisory,
            // Numbers only: what uses them is checked when it does.
            Op::ReserveInodes { .. } => Touches::Advisory,
        }
    }

    /// Whether applying it may release a lock or a delegation someone waits for, or
    /// recall a delegation (see `StateMachine::lock_changes`).
    pub fn changes_locks(&self) -> bool {
        matches!(
            self,
            Op::RenewSession { .. }
                | Op::CloseSession { .. }
                | Op::SetLock { .. }
                | Op::AcquireDelegation { .. }
                | Op::ReleaseDelegation { .. }
                | Op::RecallDelegation { .. }
                | Op::MoveSubtree { .. }
                | Op::MoveSubtreeWith { .. }
        )
    }
}

/// Why an operation was refused by the state machine.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("{}", errno_name(*.0))]
    Errno(i32),
    #[error("stale epoch for subtree {subtree}: issued under {given}, current is {current}")]
    StaleEpoch {
        subtree: SubtreeId,
        given: Epoch,
        current: Epoch,
    },
    #[error("stale chunks: {0}")]
    StaleChunks(String),
    #[error("subtree {subtree} is owned by {owner}, not by {}", .site.as_deref().unwrap_or("a tool of no site"))]
    NotOwner {
        subtree: SubtreeId,
        owner: String,
        site: Option<String>,
    },
    #[error(
        "the lease of {owner} on subtree {subtree} has expired (its data node has not renewed it)"
    )]
    LeaseExpired { subtree: SubtreeId, owner: String },
    #[error("unknown site {0:?}: no data node of it has ever registered")]
    UnknownSite(String),
    #[error("subtree {subtree} is delegated to mount session {holder} for {remaining_ns} ns more; recalling it")]
    Delegated {
        subtree: SubtreeId,
        holder: u64,
        remaining_ns: i64,
    },
    #[error(
        "subtree {subtree} is frozen for {remaining_ns} ns more while clone {clone} copies it"
    )]
    Frozen {
        subtree: SubtreeId,
        clone: InodeId,
        remaining_ns: i64,
    },
    /// An errno with the reason spelled out (subtree administration).
    #[error("{}: {reason}", errno_name(*.errno))]
    Explained { errno: i32, reason: String },
}

impl OpError {
    /// An errno with a reason for people.
    pub fn explained(errno: Errno, reason: impl Into<String>) -> OpError {
        OpError::Explained {
            errno: errno.0,
            reason: reason.into(),
        }
    }
}

fn errno_name(n: i32) -> &'static str {
    Errno(n).name()
}

impl From<Errno> for OpError {
    fn from(e: Errno) -> Self {
        OpError::Errno(e.0)
    }
}

/// What an applied operation answers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum OpReply {
    Attr(Attr),
    Unlinked {
        ino: InodeId,
        nlink: u32,
    },
    Done,
    /// A data node's GC generation.
    GcGen(u64),
    /// Every chunk condemned for a node, and its GC generation.
    Condemned {
        hashes: Vec<ChunkHash>,
        gc_gen: u64,
    },
    Subtree(SubtreeInfo),
    Placement(Placement),
    Profile(Profile),
    DataNode(DataNodeInfo),
    /// How many (entries pruned from a change feed).
    Count(u64),
    /// A lock session and when its lease ends (log time, ns).
    Session {
        id: u64,
        lease_end_ns: i64,
        /// The delegations the session holds (a renewal answers them).
        delegations: Vec<DelegationGrant>,
    },
    Delegation(DelegationGrant),
    /// Inode numbers `first..first + count`, reserved.
    Inodes {
        first: InodeId,
        count: u32,
    },
    /// A recall: how long the holder's delegation may still last (0: nobody holds it).
    Recalled {
        remaining_ns: i64,
    },
    Clone(CloneInfo),
}

/// The state machine's answer to one command. An entry answers one per command
/// (membership and blank entries, none).
pub type Reply = Result<OpReply, OpError>;
