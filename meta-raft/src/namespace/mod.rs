//! The namespace state machine: POSIX semantics over ordered key-value column families
//! (RocksDB in a member, memory in model tests; see [`kv`]).
//!
//! Deterministic by construction: an operation reads only the database and its
//! [`Command`](crate::types::Command), whose `time_ns` the leader stamped at proposal. The
//! same log therefore produces the same bytes on every member.

mod clone;
mod delegation;
mod dir;
pub mod feed;
mod file;
pub use file::COMPACT_AT;
mod fsck;
mod gc;
pub mod keys;
pub mod kv;
mod locks;
mod nodes;
mod profile;
mod query;
mod refresh;
mod reserved;
mod snapshot;
pub mod subtree;
pub mod txn;
mod usage;

pub use fsck::{FsckReport, MAX_LISTED_PROBLEMS};

use std::path::Path;
use std::sync::Arc;

use mobilus_proto::fs::{Attr, ChunkRef, FileKind, InodeId, ROOT_INO};
use mobilus_proto::status::Errno;
use serde::{Deserialize, Serialize};

pub use self::clone::{
    disable_clone_freeze_for_tests, CloneRecord, CLONE_LEASE_NS, MAX_CLONE_BATCH,
};
pub use self::delegation::{
    disable_delegation_check_for_tests, disable_write_back_recall_for_tests, DelegationRecord,
    REACQUIRE_HOLD_NS, RECALL_GRACE_NS,
};
pub use self::gc::TOMBSTONE_GENERATIONS;
pub use self::keys::Cf;
pub use self::kv::{KvRead, KvStore, MemStore, RocksStore};
pub use self::locks::{SessionRecord, SESSION_LEASE_NS};
pub use self::snapshot::SnapshotRecord;
pub use self::subtree::{SubtreeRecord, SITE_LEASE_NS};
pub use self::txn::Txn;
use crate::error::{NsError, StoreError};
use crate::types::{Command, Op, OpReply, Reply};

/// Most links an inode may have (ext4's limit); more is EMLINK.
pub const LINK_MAX: u32 = 65000;
/// Format marker of an initialised state-machine database. v2: writes carry one chunk
/// check per data node, and the replication column family exists; a v1 folder's log
/// entries do not decode as v2 commands, so it is refused rather than misread. v3: slice
/// records are keyed by 4 MiB blocks, not 64 MiB (`keys::BLOCK_SIZE`).
const FORMAT_NAME: &[u8] = b"mobilus-namespace-v3";

/// An inode as stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct InodeRecord {
    pub attr: Attr,
    /// Directories: the cookie the next entry gets. Cookies 0..=2 are reserved for the
    /// start of a listing and for `.` and `..`.
    pub next_cookie: u64,
    /// Symlinks: the target.
    #[serde(with = "serde_bytes")]
    pub target: Vec<u8>,
}

/// A directory entry as stored.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct DentryRecord {
    pub ino: InodeId,
    pub kind: FileKind,
    pub cookie: u64,
}

/// One stored piece of a write, within one logical block. No chunks = a hole.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SliceRecord {
    pub offset: u64,
    pub len: u64,
    pub chunks: Vec<ChunkRef>,
}

/// Counters kept in the same transaction as the data they count.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub next_ino: InodeId,
    pub next_seq: u64,
    pub inodes: u64,
    pub bytes: u64,
}

/// The first cookie a directory entry gets.
pub const FIRST_COOKIE: u64 = 3;

/// Write the root directory and counters into a new store. Identical on every member
/// (no clock), so a fresh member and a snapshot agree.
fn bootstrap(store: &dyn KvStore) -> Result<(), StoreError> {
    let view = store.view()?;
    let mut txn = Txn::new(&*view);
    match txn.get_raw(Cf::Sys, keys::sys::FORMAT)? {
        Some(format) if format == FORMAT_NAME => return Ok(()),
        Some(other) => {
            return Err(StoreError::Corrupt(format!(
                "this data folder was written by another version ({}; this build reads {}): start over in a new folder",
                String::from_utf8_lossy(&other),
                String::from_utf8_lossy(FORMAT_NAME)
            )))
        }
        None => {}
    }
    let root = InodeRecord {
        attr: Attr {
            ino: ROOT_INO,
            kind: FileKind::Directory,
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            nlink: 2,
            atime_ns: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            generation: 1,
            subtree: ROOT_INO,
            rdev: 0,
            parent: ROOT_INO,
        },
        next_cookie: FIRST_COOKIE,
        target: Vec::new(),
    };
    txn.put(Cf::Inodes, keys::ino(ROOT_INO), &root)?;
    txn.put(
        Cf::Subtrees,
        keys::ino(ROOT_INO),
        &SubtreeRecord::shared_root(),
    )?;
    let counters = Counters {
        next_ino: ROOT_INO + 1,
        next_seq: 1,
        inodes: 1,
        bytes: 0,
    };
    txn.put(Cf::Sys, keys::sys::COUNTERS.to_vec(), &counters)?;
    txn.put_raw(Cf::Sys, keys::sys::FORMAT.to_vec(), FORMAT_NAME.to_vec());
    let writes = txn.into_writes();
    drop(view);
    store.write(writes, true)
}

/// The namespace over one store. Cheap to clone.
#[derive(Clone)]
pub struct Namespace {
    store: Arc<dyn KvStore>,
}

impl Namespace {
    /// The namespace in `store`, bootstrapped (root directory, counters) if it is new.
    pub fn new(store: Arc<dyn KvStore>) -> Result<Self, StoreError> {
        bootstrap(&*store)?;
        Ok(Namespace { store })
    }

    /// Open a standalone namespace on RocksDB (tests, tools).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Namespace::new(Arc::new(RocksStore::open(path)?))
    }

    /// A namespace in memory (model tests).
    pub fn in_memory() -> Result<Self, StoreError> {
        Namespace::new(Arc::new(MemStore::new()))
    }

    pub fn store(&self) -> &Arc<dyn KvStore> {
        &self.store
    }

    /// Run `read` over one consistent view of the namespace: everything it reads is the
    /// state after one whole log entry, whatever commits meanwhile. Every query does.
    pub fn with_view<T>(
        &self,
        read: impl FnOnce(&Txn<'_>) -> Result<T, NsError>,
    ) -> Result<T, NsError> {
        let view = self.store.view()?;
        read(&Txn::new(&*view))
    }

    /// Run one command and commit its effects (not fsynced: the Raft log is the durable
    /// record). A refused command commits nothing. (The state machine runs whole batches
    /// in one transaction with [`execute`].)
    pub fn execute(&self, cmd: &Command) -> Result<Reply, StoreError> {
        let view = self.store.view()?;
        let mut txn = Txn::new(&*view);
        let reply = execute(&mut txn, cmd)?;
        let writes = txn.into_writes();
        drop(view);
        self.store.write(writes, false)?;
        Ok(reply)
    }
}

/// Run one command inside `txn`, after whatever it already holds. `Ok(Err(_))` is a
/// refused operation (its own writes were rolled back); `Err(_)` is a storage failure.
pub fn execute(txn: &mut Txn<'_>, cmd: &Command) -> Result<Reply, StoreError> {
    let savepoint = txn.savepoint();
    let result = subtree::check(txn, cmd)
        .and_then(|()| locks::check_session_site(txn, cmd))
        .and_then(|()| run(txn, cmd.time_ns, cmd.site.as_deref(), &cmd.op));
    match result {
        Ok(reply) => Ok(Ok(reply)),
        Err(NsError::Op(e)) => {
            txn.rollback(savepoint);
            Ok(Err(e))
        }
        Err(NsError::Store(e)) => Err(e),
    }
}

fn run(txn: &mut Txn<'_>, now: i64, site: Option<&str>, op: &Op) -> Result<OpReply, NsError> {
    match op {
        Op::Mknod {
            parent,
            name,
            kind,
            mode,
            uid,
            gid,
            rdev,
        } => {
            if *kind == FileKind::Directory || *kind == FileKind::Symlink {
                return Err(Errno::EINVAL.into());
            }
            let new = dir::NewInode {
                kind: *kind,
                mode: *mode,
                uid: *uid,
                gid: *gid,
                rdev: *rdev,
            };
            dir::create(txn, now, *parent, name, new, Vec::new()).map(OpReply::Attr)
        }
        Op::Mkdir {
            parent,
            name,
            mode,
            uid,
            gid,
        } => {
            let new = dir::NewInode {
                kind: FileKind::Directory,
                mode: *mode,
                uid: *uid,
                gid: *gid,
                rdev: 0,
            };
            dir::create(txn, now, *parent, name, new, Vec::new()).map(OpReply::Attr)
        }
        Op::Symlink {
            parent,
            name,
            target,
            uid,
            gid,
        } => dir::symlink(txn, now, *parent, name, target, *uid, *gid).map(OpReply::Attr),
        Op::Link {
            ino,
            new_parent,
            new_name,
        } => dir::link(txn, now, *ino, *new_parent, new_name).map(OpReply::Attr),
        Op::Unlink {
            parent,
            name,
            keep_open,
        } => dir::unlink(txn, now, *parent, name, *keep_open),
        Op::ReleaseOrphan { ino } => dir::release_orphan(txn, now, *ino).map(|()| OpReply::Done),
        Op::Rmdir { parent, name } => dir::rmdir(txn, now, *parent, name).map(|()| OpReply::Done),
        Op::Rename {
            parent,
            name,
            new_parent,
            new_name,
            flags,
        } => dir::rename(txn, now, *parent, name, *new_parent, new_name, *flags)
            .map(|()| OpReply::Done),
        Op::SetAttr { ino, set } => dir::setattr(txn, now, *ino, set).map(OpReply::Attr),
        Op::SetXattr {
            ino,
            name,
            value,
            flags,
        } => dir::setxattr(txn, now, *ino, name, value, *flags).map(|()| OpReply::Done),
        Op::CasXattr {
            ino,
            name,
            expected,
            value,
        } => dir::cas_xattr(
            txn,
            now,
            *ino,
            name,
            expected.as_ref().map(|b| b.as_slice()),
            value,
        )
        .map(|()| OpReply::Done),
        Op::RemoveXattr { ino, name } => {
            dir::removexattr(txn, now, *ino, name).map(|()| OpReply::Done)
        }
        Op::Write {
            ino,
            slices,
            checks,
        } => file::write(txn, now, *ino, slices, checks).map(OpReply::Attr),
        Op::Condemn {
            node,
            hashes,
            grace_ns,
        } => gc::condemn(txn, now, node, hashes, *grace_ns)
            .map(|(hashes, gc_gen)| OpReply::Condemned { hashes, gc_gen }),
        Op::ForgetCondemned { node, hashes } => gc::forget(txn, node, hashes).map(OpReply::GcGen),
        Op::RegisterDataNode { node } => {
            if !mobilus_proto::fs::valid_site_name(&node.site)
                || node.addr.is_empty()
                || node.addr.len() > 255
                || node.workers.len() > mobilus_proto::fs::MAX_WORKER_REPORTS
                || node.workers.iter().any(|w| {
                    w.name.len() > 64 || w.last_error.len() > mobilus_proto::fs::MAX_WORKER_ERROR
                })
            {
                return Err(Errno::EINVAL.into());
            }
            let record = mobilus_proto::fs::DataNodeInfo {
                last_heartbeat_ns: now,
                ..node.clone()
            };
            txn.put(Cf::Nodes, keys::node(&node.site, &node.addr), &record)?;
            // The data node is its site's agent: its heartbeat renews the site's lease.
            subtree::renew_site_lease(txn, now, &node.site)?;
            gc::generation(txn, &node.addr).map(OpReply::GcGen)
        }
        Op::CreateSubtree { root, owner } => {
            subtree::create(txn, now, *root, owner).map(OpReply::Subtree)
        }
        Op::RelabelSubtree { root, limit } => {
            subtree::relabel(txn, *root, *limit).map(OpReply::Subtree)
        }
        Op::MoveSubtree { root, to, force } => {
            subtree::give(txn, now, *root, to, *force).map(OpReply::Subtree)
        }
        Op::MoveSubtreeWith {
            root,
            to,
            force,
            data,
        } => {
            let moved = subtree::give(txn, now, *root, to, *force)?;
            feed::set_mode(txn, *root, to, *data)?;
            Ok(OpReply::Subtree(moved))
        }
        Op::SetSubtreePolicy {
            root,
            follow_writer_hold_ns,
        } => subtree::set_policy(txn, *root, *follow_writer_hold_ns).map(OpReply::Subtree),
        Op::SetNodeDraining { addr, draining } => {
            nodes::set_draining(txn, addr, *draining).map(OpReply::DataNode)
        }
        Op::RemoveDataNode { addr } => nodes::remove(txn, now, addr).map(OpReply::DataNode),
        Op::SetProfile { root, reads } => {
            profile::set(txn, now, site, *root, reads).map(OpReply::Profile)
        }
        Op::ArmProfile { root, record } => profile::arm(txn, *root, *record).map(OpReply::Profile),
        Op::SetSiteReplicas { site, replicas } => {
            nodes::set_replicas(txn, site, *replicas).map(|r| OpReply::Count(u64::from(r)))
        }
        Op::SetPlacement { root, sites } => {
            feed::set_placement(txn, *root, sites).map(OpReply::Placement)
        }
        Op::AckFeed {
            root,
            site,
            seq,
            backlog_chunks,
            backlog_bytes,
            rate_bps,
            scanning,
        } => {
            let progress = (*backlog_chunks, *backlog_bytes, *rate_bps);
            feed::ack(txn, now, *root, site, *seq, progress, *scanning).map(OpReply::Count)
        }
        Op::StartClone {
            src,
            parent,
            name,
            owner,
            snapshot,
        } => clone::start(txn, now, *src, *parent, name, owner.as_deref(), *snapshot)
            .map(OpReply::Clone),
        Op::StartRefresh { dst } => refresh::start(txn, now, *dst).map(OpReply::Clone),
        Op::RemoveSnapshot { src, name } => {
            clone::remove_snapshot(txn, now, *src, name).map(OpReply::Clone)
        }
        Op::CloneStep { dst, limit } => clone::step(txn, now, *dst, *limit).map(OpReply::Clone),
        Op::AbortCloneStep { dst, limit } => {
            clone::abort_step(txn, now, *dst, *limit).map(OpReply::Clone)
        }
        Op::OpenSession => {
            locks::open_session(txn, now, site).map(|(id, lease_end_ns)| OpReply::Session {
                id,
                lease_end_ns,
                delegations: Vec::new(),
            })
        }
        Op::RenewSession { session } => {
            locks::renew(txn, now, *session).map(|(lease_end_ns, delegations)| OpReply::Session {
                id: *session,
                lease_end_ns,
                delegations,
            })
        }
        Op::AcquireDelegation { session, subtree } => {
            delegation::acquire(txn, now, *session, *subtree).map(OpReply::Delegation)
        }
        Op::ReleaseDelegation { session, subtree } => {
            delegation::release(txn, *session, *subtree).map(|()| OpReply::Done)
        }
        Op::RecallDelegation { subtree } => delegation::recall(txn, now, *subtree)
            .map(|remaining_ns| OpReply::Recalled { remaining_ns }),
        Op::SetWriteBack {
            session,
            subtree,
            on,
            seq,
        } => delegation::set_write_back(txn, now, *session, *subtree, *on, *seq)
            .map(|()| OpReply::Done),
        Op::CloseSession { session } => locks::close(txn, *session).map(|()| OpReply::Done),
        Op::ReserveInodes { session } => {
            reserved::reserve(txn, *session).map(|(first, count)| OpReply::Inodes { first, count })
        }
        Op::CreateReserved {
            parent,
            name,
            ino,
            mode,
            uid,
            gid,
            time_ns,
            session,
            write,
        } => {
            let new = reserved::Create {
                parent: *parent,
                name,
                ino: *ino,
                mode: *mode,
                uid: *uid,
                gid: *gid,
                session: *session,
                // Never later than the log's time: a fast clock cannot stamp the future.
                time_ns: (*time_ns).min(now),
            };
            reserved::create(txn, now, new, write.as_ref()).map(OpReply::Attr)
        }
        Op::SetLock { lock, pid } => locks::set_lock(txn, now, *lock, *pid).map(|()| OpReply::Done),
    }
}

// ---- helpers shared by the operation modules ----

pub(crate) fn load(txn: &Txn<'_>, ino: InodeId) -> Result<InodeRecord, NsError> {
    Ok(txn.get(Cf::Inodes, &keys::ino(ino))?.ok_or(Errno::ENOENT)?)
}

pub(crate) fn load_dir(txn: &Txn<'_>, ino: InodeId) -> Result<InodeRecord, NsError> {
    let rec = load(txn, ino)?;
    if rec.attr.kind != FileKind::Directory {
        return Err(Errno::ENOTDIR.into());
    }
    Ok(rec)
}

pub(crate) fn save(txn: &mut Txn<'_>, rec: &InodeRecord) -> Result<(), NsError> {
    Ok(txn.put(Cf::Inodes, keys::ino(rec.attr.ino), rec)?)
}

/// Load, change and save one inode; returns the saved record.
pub(crate) fn update(
    txn: &mut Txn<'_>,
    ino: InodeId,
    change: impl FnOnce(&mut InodeRecord),
) -> Result<InodeRecord, NsError> {
    let mut rec = load(txn, ino)?;
    change(&mut rec);
    save(txn, &rec)?;
    Ok(rec)
}

pub(crate) fn counters(txn: &Txn<'_>) -> Result<Counters, NsError> {
    Ok(txn
        .get(Cf::Sys, keys::sys::COUNTERS)?
        .ok_or_else(|| StoreError::Corrupt("no counters".into()))?)
}

pub(crate) fn update_counters(
    txn: &mut Txn<'_>,
    change: impl FnOnce(&mut Counters),
) -> Result<Counters, NsError> {
    let mut c = counters(txn)?;
    change(&mut c);
    txn.put(Cf::Sys, keys::sys::COUNTERS.to_vec(), &c)?;
    Ok(c)
}

pub use mobilus_proto::fs::validate_name;

pub(crate) fn is_dot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}
