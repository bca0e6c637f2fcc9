//! The state machine store: the namespace database, the applied log id and membership
//! (written in the same batch as each entry's effects), and snapshots.
//!
//! Layout under `<data>/sm`: `CURRENT` names the live database directory (`db-N`);
//! `snapshots/` holds the current snapshot file `<id>.snap`. Installing a snapshot unpacks
//! it into a new `db-N+1`, then atomically repoints `CURRENT`.
// openraft's storage traits return its `StorageError`, large as it is.
#![allow(clippy::result_large_err)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftLogId, RaftSnapshotBuilder, StorageIOError};
use rocksdb::checkpoint::Checkpoint;

use super::archive::{self, fsync_dir};
use crate::error::StoreError;
use crate::namespace::{self, keys, Cf, KvStore, Namespace, RocksStore, Txn};
use crate::types::{
    Entry, LogId, NodeId, Proposal, Reply, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

struct Applied {
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

/// The live database: the namespace over it, and the RocksDB handle behind it for what
/// only RocksDB does (checkpoints).
#[derive(Clone)]
struct Live {
    rocks: Arc<RocksStore>,
    ns: Namespace,
}

impl Live {
    fn open(dir: &Path) -> Result<Self, StoreError> {
        let rocks = Arc::new(RocksStore::open(dir)?);
        let ns = Namespace::new(rocks.clone())?;
        Ok(Live { rocks, ns })
    }
}

struct Shared {
    root: PathBuf,
    live: RwLock<Live>,
    /// Held while applying and while taking a checkpoint, so a snapshot's contents and
    /// its metadata describe the same point of the log.
    applied: Mutex<Applied>,
    current: Mutex<Option<(SnapshotMeta, PathBuf)>>,
    entries_applied: AtomicU64,
    generation: AtomicU64,
    /// Bumped after every applied entry that may have released a lock (not state: a
    /// wake-up for the lock waiters of this member).
    lock_changes: tokio::sync::watch::Sender<u64>,
}

/// The state machine. Clones share one store.
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::<NodeId>::write_state_machine(&e).into()
}

fn snap_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::<NodeId>::write_snapshot(None, &e).into()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A wall-clock suffix that makes snapshot and temp-file names unique (never state).
fn nonce() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Write `contents` to `path` durably: temp file, fsync, rename, fsync the directory.
fn write_durably(path: &Path, contents: &[u8]) -> Result<(), StoreError> {
    let dir = path
        .parent()
        .ok_or_else(|| StoreError::Corrupt("no parent".into()))?;
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    fsync_dir(dir)
}

impl StateMachine {
    /// Open the state machine under `root`, cleaning up what a crash left half done.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let snaps = root.join("snapshots");
        fs::create_dir_all(&snaps)?;
        let current_name = match fs::read_to_string(root.join("CURRENT")) {
            Ok(s) => s.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_durably(&root.join("CURRENT"), b"db-0")?;
                "db-0".to_string()
            }
            Err(e) => return Err(e.into()),
        };
        let generation: u64 = current_name
            .strip_prefix("db-")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| StoreError::Corrupt(format!("CURRENT names {current_name:?}")))?;
        for entry in fs::read_dir(root)? {
            let name = entry?.file_name().to_string_lossy().to_string();
            if name.starts_with("db-") && name != current_name {
                fs::remove_dir_all(root.join(&name))?;
            }
        }
        let live = Live::open(&root.join(&current_name))?;
        let (last_applied, membership) = {
            let view = live.rocks.view()?;
            let txn = Txn::new(&*view);
            let last_applied: Option<LogId> = txn.get(Cf::Sys, keys::sys::APPLIED)?.flatten();
            let membership: StoredMembership =
                txn.get(Cf::Sys, keys::sys::MEMBERSHIP)?.unwrap_or_default();
            (last_applied, membership)
        };
        let current = newest_snapshot(&snaps)?;
        Ok(StateMachine {
            shared: Arc::new(Shared {
                root: root.to_path_buf(),
                live: RwLock::new(live),
                applied: Mutex::new(Applied {
                    last_applied,
                    membership,
                }),
                current: Mutex::new(current),
                entries_applied: AtomicU64::new(0),
                lock_changes: tokio::sync::watch::channel(0).0,
                generation: AtomicU64::new(generation),
            }),
        })
    }

    /// The live namespace, for reads.
    pub fn namespace(&self) -> Namespace {
        self.shared.namespace()
    }

    /// Changes whenever an applied entry may have released an advisory lock.
    pub fn lock_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.lock_changes.subscribe()
    }

    /// Commands applied since this process started.
    pub fn entries_applied(&self) -> u64 {
        self.shared.entries_applied.load(Ordering::Relaxed)
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogId> {
        lock(&self.shared.applied).last_applied
    }
}

/// Keep the newest snapshot file, delete the rest and any temporary files.
fn newest_snapshot(dir: &Path) -> Result<Option<(SnapshotMeta, PathBuf)>, StoreError> {
    let mut best: Option<(SnapshotMeta, PathBuf)> = None;
    let mut doomed = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let is_snap = path.extension().is_some_and(|e| e == "snap");
        if !is_snap {
            doomed.push(path);
            continue;
        }
        match archive::peek_meta(&path) {
            Ok(meta) => {
                if best
                    .as_ref()
                    .is_none_or(|(m, _)| m.last_log_id < meta.last_log_id)
                {
                    if let Some((_, old)) = best.take() {
                        doomed.push(old);
                    }
                    best = Some((meta, path));
                } else {
                    doomed.push(path);
                }
            }
            Err(e) => {
                tracing::warn!(?path, error = %e, "removing unreadable snapshot");
                doomed.push(path);
            }
        }
    }
    for path in doomed {
        if path.is_dir() {
            fs::remove_dir_all(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
    }
    Ok(best)
}

impl Shared {
    fn live(&self) -> Live {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn namespace(&self) -> Namespace {
        self.live().ns
    }

    fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    fn set_current(&self, meta: SnapshotMeta, path: PathBuf) {
        let old = lock(&self.current).replace((meta, path.clone()));
        if let Some((_, old_path)) = old {
            if old_path != path {
                // A transfer still reading the old file keeps its open handle.
                let _ = fs::remove_file(old_path);
            }
        }
    }

    fn build(&self) -> Result<(SnapshotMeta, PathBuf), StoreError> {
        let (meta, checkpoint) = {
            let applied = lock(&self.applied);
            let live = self.live();
            live.rocks.db().flush_wal(true)?;
            let index = applied.last_applied.map(|l| l.index).unwrap_or(0);
            let term = applied.last_applied.map(|l| l.leader_id.term).unwrap_or(0);
            let nonce = nonce();
            let id = format!("{term}-{index}-{nonce}");
            let checkpoint = self.snapshots().join(format!("build-{id}"));
            Checkpoint::new(live.rocks.db())?.create_checkpoint(&checkpoint)?;
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
                snapshot_id: id,
            };
            (meta, checkpoint)
        };
        let path = self.snapshots().join(format!("{}.snap", meta.snapshot_id));
        let tmp = path.with_extension("snap.tmp");
        let packed = archive::pack(&checkpoint, &meta, &tmp);
        fs::remove_dir_all(&checkpoint)?;
        packed?;
        fs::rename(&tmp, &path)?;
        fsync_dir(&self.snapshots())?;
        self.set_current(meta.clone(), path.clone());
        tracing::info!(id = %meta.snapshot_id, last = ?meta.last_log_id, "snapshot built");
        Ok((meta, path))
    }

    fn install(&self, meta: &SnapshotMeta, mut received: fs::File) -> Result<(), StoreError> {
        use std::io::Seek;
        let path = self.snapshots().join(format!("{}.snap", meta.snapshot_id));
        let tmp = path.with_extension("snap.tmp");
        received.seek(std::io::SeekFrom::Start(0))?;
        let mut out = fs::File::create(&tmp)?;
        std::io::copy(&mut received, &mut out)?;
        out.sync_all()?;
        fs::rename(&tmp, &path)?;
        fsync_dir(&self.snapshots())?;

        let generation = self.generation.load(Ordering::SeqCst) + 1;
        let name = format!("db-{generation}");
        let dir = self.root.join(&name);
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        let got = archive::unpack(&path, &dir)?;
        if got.last_log_id != meta.last_log_id || got.snapshot_id != meta.snapshot_id {
            return Err(StoreError::CorruptSnapshot(format!(
                "file holds snapshot {} at {:?}, expected {} at {:?}",
                got.snapshot_id, got.last_log_id, meta.snapshot_id, meta.last_log_id
            )));
        }
        let new_live = Live::open(&dir)?;
        let old_live = {
            let mut applied = lock(&self.applied);
            let old = std::mem::replace(
                &mut *self.live.write().unwrap_or_else(|p| p.into_inner()),
                new_live,
            );
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
            write_durably(&self.root.join("CURRENT"), name.as_bytes())?;
            self.generation.store(generation, Ordering::SeqCst);
            old
        };
        self.set_current(meta.clone(), path);
        // Remove the old database once no reader holds it; otherwise the next open does.
        let Live { rocks, ns } = old_live;
        drop(ns);
        let old_dir = rocks.db().path().to_path_buf();
        if Arc::strong_count(&rocks) == 1 {
            drop(rocks);
            let _ = fs::remove_dir_all(old_dir);
        }
        for entry in fs::read_dir(self.snapshots())? {
            let p = entry?.path();
            if p.extension().is_some_and(|e| e == "recv") {
                let _ = fs::remove_file(p);
            }
        }
        tracing::info!(id = %meta.snapshot_id, last = ?meta.last_log_id, "snapshot installed");
        Ok(())
    }
}

/// Builds snapshots in openraft's background task.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let shared = self.shared.clone();
        let (meta, path) = tokio::task::spawn_blocking(move || shared.build())
            .await
            .map_err(snap_err)?
            .map_err(snap_err)?;
        let file = tokio::fs::File::open(&path).await.map_err(snap_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = lock(&self.shared.applied);
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Reply>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applied = lock(&self.shared.applied);
        let live = self.shared.live();
        let store: &dyn KvStore = &*live.rocks;
        let mut replies = Vec::new();
        for entry in entries {
            let log_id = *entry.get_log_id();
            // One entry, one atomic batch: its commands and the applied log id together,
            // so a crash never leaves an entry half applied, and no reader's view holds
            // half of one. (Only apply writes, so its own view is the live state.)
            let view = store.view().map_err(sm_err)?;
            let mut txn = Txn::new(&*view);
            let mut entry_replies = Vec::new();
            let mut locks_changed = false;
            match &entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(Proposal(cmds)) => {
                    for cmd in cmds {
                        locks_changed |= cmd.op.changes_locks();
                        let reply = namespace::execute(&mut txn, cmd)
                            .map_err(|e| StorageIOError::<NodeId>::apply(log_id, &e))?;
                        entry_replies.push(reply);
                    }
                }
                EntryPayload::Membership(m) => {
                    applied.membership = StoredMembership::new(Some(log_id), m.clone());
                    txn.put(Cf::Sys, keys::sys::MEMBERSHIP.to_vec(), &applied.membership)
                        .map_err(sm_err)?;
                }
            }
            txn.put(Cf::Sys, keys::sys::APPLIED.to_vec(), &Some(log_id))
                .map_err(sm_err)?;
            let writes = txn.into_writes();
            drop(view);
            store.write(writes, false).map_err(sm_err)?;
            applied.last_applied = Some(log_id);
            if locks_changed {
                self.shared
                    .lock_changes
                    .send_modify(|n| *n = n.wrapping_add(1));
            }
            self.shared
                .entries_applied
                .fetch_add(entry_replies.len() as u64, Ordering::Relaxed);
            replies.push(entry_replies);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let n = self.shared.generation.load(Ordering::SeqCst);
        let nonce = nonce();
        let path = self
            .shared
            .snapshots()
            .join(format!("incoming-{n}-{nonce}.recv"));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(snap_err)?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let mut file = *snapshot;
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(snap_err)?;
        let std_file = file.into_std().await;
        let shared = self.shared.clone();
        let meta2 = meta.clone();
        tokio::task::spawn_blocking(move || shared.install(&meta2, std_file))
            .await
            .map_err(snap_err)?
            .map_err(|e| {
                StorageIOError::<NodeId>::write_snapshot(Some(meta.signature()), &e).into()
            })
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = lock(&self.shared.current).clone();
        match current {
            Some((meta, path)) => {
                let file = tokio::fs::File::open(&path).await.map_err(|e| {
                    StorageError::from(StorageIOError::<NodeId>::read_snapshot(
                        Some(meta.signature()),
                        &e,
                    ))
                })?;
                Ok(Some(Snapshot {
                    meta,
                    snapshot: Box::new(file),
                }))
            }
            None => Ok(None),
        }
    }
}
