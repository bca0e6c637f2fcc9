//! Closes the holder of a delegation answers before their writes commit (write-back).
//!
//! A small file written and closed costs one metadata commit, and a close that waits for
//! it costs the application that round (about 2 ms with three members). A local file
//! system answers a close from its page cache; the holder of a subtree's delegation can
//! too, as long as nobody can see the file before its writes commit:
//! - **Other mounts.** Before the first such close under a grant, the metadata is told
//!   (`SetWriteBack`); while it knows, a read of the subtree by any other session first
//!   recalls the delegation, and a recall commits everything buffered here before the
//!   delegation is given back. So an open elsewhere after the close sees the bytes
//!   (close-to-open). When nothing has been left to commit for [`IDLE_UNMARK`], the mark
//!   is taken back.
//! - **This mount.** The closed inode stays open here until it commits, so reads, stats
//!   and reopens see its buffer; and every metadata call goes through
//!   [`MountFs::meta`], which first commits every write-back ([`MountFs::settle`]).
//! - **Losing the delegation.** The commits go out `holder_only`: once the delegation has
//!   ended (its holder paused or cut off past its lease), the metadata refuses them
//!   (ESTALE) rather than let a write appear after another mount read past it. They are
//!   then lost, as a crashed host's page cache is: `fsync` is the durability point, and
//!   an fsync of a file whose write-back was refused reports EIO.
//!
//! Each write-back is committed in the background at the next round of a shared cadence
//! ([`WRITE_BACK_ROUND`]), so those answered together commit in one request and one Raft
//! entry; one whose commit fails with an error that may pass is retried.
//! At most [`MAX_FILES`] files and [`MAX_BYTES`] bytes wait: past that, closes commit
//! before they answer, as they do outside a held delegation. Unlinks are written back
//! the same way, under the same mark, fence and bound (`unlink_back.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use mobilus_proto::fs::{InodeId, SubtreeId, ROOT_INO};
use mobilus_proto::status::Errno;

use super::{lock, FsResult, MountFs, OpenInode};
use crate::client::ClientError;

/// Most closed files waiting for their commit.
pub(super) const MAX_FILES: usize = 1_024;
/// Most bytes buffered by closed files waiting for their commit.
const MAX_BYTES: usize = 256 << 20;
/// With nothing left to commit for this long, the metadata is told so (other mounts then
/// read the subtree without recalling it).
pub(super) const IDLE_UNMARK: Duration = Duration::from_millis(300);
/// Longest pause between attempts of a commit that failed with an error that may pass.
pub(super) const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);
/// Background commits of write-backs go out on a shared cadence of this period, so
/// those answered within one period commit together: one request (`Meta.Batch`) and one
/// Raft entry for many files. Each commit of a file costs the three members far more as
/// its own request and entry than as one of many; what was answered waits at most this
/// long more (a recall, an fsync or any metadata call of this mount commits at once).
pub(super) const WRITE_BACK_ROUND: Duration = Duration::from_millis(20);

/// When the next round of background write-back commits starts.
pub(super) fn next_round() -> tokio::time::Instant {
    static FROM: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let round = WRITE_BACK_ROUND.as_nanos();
    let into = FROM.get_or_init(Instant::now).elapsed().as_nanos() % round;
    tokio::time::Instant::now() + Duration::from_nanos((round - into) as u64)
}

struct Waiting {
    subtree: SubtreeId,
    inode: Arc<OpenInode>,
    bytes: usize,
}

#[derive(Default)]
pub(super) struct WriteBack {
    /// Closed inodes whose writes are still to commit.
    waiting: Mutex<HashMap<InodeId, Waiting>>,
    /// Held shared by a close registering a write-back, whole while a subtree's mark is
    /// taken back: no close relies on a mark being removed.
    pub(super) marking: tokio::sync::RwLock<()>,
    /// The last write-back close of each marked subtree.
    pub(super) last: Mutex<HashMap<SubtreeId, Instant>>,
    /// Subtrees whose mark a task is waiting to take back.
    unmarking: Mutex<HashSet<SubtreeId>>,
    /// Held while a close tells the metadata of its subtree's first write-back.
    telling: tokio::sync::Mutex<()>,
    /// The last `SetWriteBack` sequence number sent (they only grow).
    seq: std::sync::atomic::AtomicU64,
    /// Files whose write-back was refused for good, and why: the next close or fsync of
    /// each here reports it (at most [`MAX_LOST`] remembered).
    lost: Mutex<HashMap<InodeId, Errno>>,
    /// Directories with an unlink answered here and then refused for good, and why: the
    /// next fsync of each reports it (`unlink_back.rs`).
    pub(super) lost_unlinks: Mutex<HashMap<InodeId, Errno>>,
    /// Unlinks answered here and not yet committed (`unlink_back.rs`).
    pub(super) unlinks:
        Mutex<HashMap<super::unlink_back::Unbound, super::unlink_back::UnlinkWaiting>>,
}

/// Most refused write-backs remembered for their next close or fsync.
const MAX_LOST: usize = 4_096;
/// How long a recall keeps retrying write-backs that fail in a way that may pass before
/// it gives the delegation back anyway (within the recall's 10 s grace).
const RECALL_RETRY_FOR: Duration = Duration::from_secs(8);

impl WriteBack {
    /// Files and unlinks waiting, and the bytes buffered.
    pub(super) fn totals(&self) -> (usize, usize) {
        let unlinks = lock(&self.unlinks).len();
        let w = lock(&self.waiting);
        (w.len() + unlinks, w.values().map(|x| x.bytes).sum())
    }

    pub(super) fn is_empty(&self) -> bool {
        lock(&self.waiting).is_empty() && lock(&self.unlinks).is_empty()
    }

    /// The inodes waiting, of `subtree` only if given.
    fn inodes(&self, subtree: Option<SubtreeId>) -> Vec<Arc<OpenInode>> {
        lock(&self.waiting)
            .values()
            .filter(|w| subtree.is_none_or(|s| s == w.subtree))
            .map(|w| w.inode.clone())
            .collect()
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::AcqRel) + 1
    }

    pub(super) fn waits_in(&self, subtree: SubtreeId) -> bool {
        lock(&self.waiting).values().any(|w| w.subtree == subtree)
            || lock(&self.unlinks).values().any(|u| u.subtree == subtree)
    }

    /// The error of `ino`'s last refused write-back, if not yet reported (taken).
    pub(super) fn take_lost(&self, ino: InodeId) -> Option<Errno> {
        lock(&self.lost).remove(&ino)
    }

    /// Whether `ino` has a refused write-back to report (without taking it).
    pub(super) fn has_lost(&self, ino: InodeId) -> bool {
        lock(&self.lost).contains_key(&ino)
    }
}

impl MountFs {
    /// A close (FLUSH): answered at once if this mount holds the subtree's delegation and
    /// may write back; else its writes commit first.
    pub async fn close(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        if let Some(e) = self.write_back.take_lost(h.ino) {
            return Err(ClientError::Refused(e));
        }
        if self.write_back(&h.inode).await {
            return Ok(());
        }
        self.flush_inode(&h.inode).await
    }

    /// Register `inode`'s buffered writes as a write-back, if this mount may: returns
    /// whether it did (the close is then answered).
    async fn write_back(&self, inode: &Arc<OpenInode>) -> bool {
        let subtree = lock(&inode.attr).0.subtree;
        if subtree == ROOT_INO {
            return false;
        }
        let Some(me) = self.me.get().and_then(Weak::upgrade) else {
            return false;
        };
        // The writer first: an unmark waiting for `marking` holds up no close behind
        // one slow file (it takes no writer).
        let mut w = inode.writer.lock().await;
        if !w.needs_commit() {
            return false;
        }
        let _marking = self.write_back.marking.read().await;
        let Some((since, marked)) = self.deleg.write_back_grant(subtree) else {
            refused(subtree, "not_held");
            return false;
        };
        let (files, bytes) = self.write_back.totals();
        if files >= MAX_FILES || bytes + w.pending_bytes() > MAX_BYTES {
            refused(subtree, "full");
            return false;
        }
        if !self.mark_write_back(subtree, since, marked).await {
            refused(subtree, "mark_refused");
            return false;
        }
        // Still the grant that was marked, after the waits above (lost, or replaced by
        // one the metadata has not marked)? Else the close commits first.
        if self.deleg.write_back_grant(subtree) != Some((since, true)) {
            refused(subtree, "grant_changed");
            return false;
        }
        w.written_back();
        inode.written_back.store(true, Ordering::Release);
        lock(&self.write_back.last).insert(subtree, Instant::now());
        let ino = w.ino();
        let pending = w.pending_bytes();
        lock(&self.write_back.waiting)
            .entry(ino)
            .and_modify(|x| x.bytes = pending)
            .or_insert_with(|| Waiting {
                subtree,
                inode: inode.clone(),
                bytes: pending,
            });
        drop(w);
        metrics::counter!("mobilus_fuse_write_backs_total", "outcome" => "answered").increment(1);
        tokio::spawn(async move { me.commit_written_back(ino).await });
        true
    }

    /// Commit `ino`'s write-back in the background, retrying what may pass.
    async fn commit_written_back(self: Arc<Self>, ino: InodeId) {
        // Not at once: on the shared cadence, with whatever else was written back.
        tokio::time::sleep_until(next_round()).await;
        let mut pause = Duration::from_millis(50);
        loop {
            let inode = match lock(&self.write_back.waiting).get(&ino) {
                Some(w) => w.inode.clone(),
                None => return,
            };
            // Background work: its commit may wait a little for the rest of its round.
            let committed = mobilus_meta_client::in_background(self.commit_waiting(&inode)).await;
            if committed.is_ok() {
                // Committed, or refused for good; more written meanwhile goes round again.
                if !lock(&self.write_back.waiting).contains_key(&ino) {
                    return;
                }
                continue;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RETRY_PAUSE);
        }
    }

    /// Commit one waiting inode: `Err` if it failed with an error that may pass (it
    /// stays waiting). A refusal for good drops what was buffered (as a local file
    /// system's write-back error does), reported to the next close or fsync of the file
    /// here.
    async fn commit_waiting(&self, inode: &Arc<OpenInode>) -> FsResult<()> {
        match self.flush_inode(inode).await {
            Ok(()) => {}
            Err(e) if e.to_errno() == Errno::EIO => return Err(e),
            Err(e) => self.lose(inode, e.to_errno(), &e.to_string()).await,
        }
        self.write_back_done(inode).await;
        Ok(())
    }

    /// Drop what a close of `inode` answered and has not committed, if anything.
    async fn lose(&self, inode: &Arc<OpenInode>, errno: Errno, why: &str) {
        let mut w = inode.writer.lock().await;
        if !w.holder_only() {
            return;
        }
        let ino = w.ino();
        tracing::error!(
            ino,
            error = why,
            "a closed file's writes were refused after its close was answered; they are lost"
        );
        metrics::counter!("mobilus_fuse_write_backs_total", "outcome" => "lost").increment(1);
        w.discard();
        inode.pending_end.store(0, Ordering::Release);
        lock(&inode.attr).1 = None;
        self.changed(inode);
        {
            let mut lost = lock(&self.write_back.lost);
            if lost.len() >= MAX_LOST {
                lost.clear();
            }
            lost.insert(ino, errno);
        }
        // The kernel's pages and attributes may show the lost bytes.
        lock(&self.seen).remove(&ino);
        self.forget_kernel_attrs(ino);
    }

    /// The delegation of `subtree` is given back or lost: a write-back of it still
    /// waiting can never commit (the metadata refuses it), so it is dropped now rather
    /// than left to land under a later grant.
    pub(super) async fn drop_write_backs(&self, subtree: SubtreeId) {
        self.drop_unlinks(subtree);
        for inode in self.write_back.inodes(Some(subtree)) {
            self.lose(&inode, Errno::EIO, "the delegation ended first")
                .await;
            self.write_back_done(&inode).await;
        }
    }

    /// At a recall: commit `subtree`'s write-backs, retrying those that fail in a way
    /// that may pass for up to [`RECALL_RETRY_FOR`]; returns how many are left.
    pub(super) async fn commit_write_backs_of(&self, subtree: SubtreeId) -> usize {
        let start = Instant::now();
        loop {
            let waiting = self.write_back.inodes(Some(subtree));
            let unlinks = self.commit_unlinks(Some(subtree)).await;
            if waiting.is_empty() && unlinks == 0 {
                return 0;
            }
            for inode in &waiting {
                let _ = self.commit_waiting(inode).await;
            }
            if start.elapsed() >= RECALL_RETRY_FOR {
                return waiting.len() + unlinks;
            }
            if self.write_back.waits_in(subtree) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// After a commit of `inode`: if nothing is left to commit, it no longer waits, and
    /// with no handle left it is closed here (and freed, if unlinked meanwhile).
    async fn write_back_done(&self, inode: &Arc<OpenInode>) {
        let w = inode.writer.lock().await;
        // What the close answered is committed (or dropped); what was written since, by
        // a handle opened again, is that handle's to commit.
        if w.holder_only() {
            return;
        }
        let ino = w.ino();
        let subtree = {
            let mut waiting = lock(&self.write_back.waiting);
            match waiting.get(&ino) {
                Some(x) if Arc::ptr_eq(&x.inode, inode) => waiting.remove(&ino).map(|x| x.subtree),
                _ => None,
            }
        };
        inode.written_back.store(false, Ordering::Release);
        let free = self.close_if_unused(ino, inode);
        drop(w);
        if let Some(subtree) = subtree {
            metrics::counter!("mobilus_fuse_write_backs_total", "outcome" => "committed")
                .increment(1);
            if !self.write_back.waits_in(subtree) {
                self.unmark_when_idle(subtree);
            }
        }
        if free {
            // Straight to the metadata: a file with no name has nothing to settle first.
            let meta = self.client.meta().clone();
            tokio::spawn(async move {
                if let Err(e) = meta.release_orphan(ino).await {
                    tracing::warn!(ino, error = %e, "freeing an unlinked file failed");
                }
            });
        }
    }

    /// Commit every write-back (the barrier before a metadata call); returns how many
    /// failed with an error that may pass.
    /// Only a file not yet made counts: one that exists answers this mount from its open
    /// inode meanwhile, so its failing commit need not stop unrelated operations.
    pub(super) async fn settle_write_backs(&self) -> usize {
        // Unlinks first: a file created again under a name unlinked here is made after.
        let unlinks = self.commit_unlinks(None).await;
        let waiting = self.write_back.inodes(None);
        let commits = waiting.iter().map(|inode| async move {
            self.commit_waiting(inode).await.is_err() && !inode.writer.lock().await.is_made()
        });
        unlinks
            + futures::future::join_all(commits)
                .await
                .into_iter()
                .filter(|f| *f)
                .count()
    }

    /// Before the first write-back (a close or an unlink) under the grant of `subtree`
    /// asked for at `since`: tell the metadata, unless it knows (`marked`). Returns
    /// whether it knows; if not, the operation commits before it answers. Call with
    /// `marking` held shared.
    pub(super) async fn mark_write_back(
        &self,
        subtree: SubtreeId,
        since: Instant,
        marked: bool,
    ) -> bool {
        if marked {
            return true;
        }
        // One at a time: concurrent first closes mark once, not once each (a Raft
        // commit apiece).
        let _one = self.write_back.telling.lock().await;
        if self.deleg.write_back_grant(subtree) == Some((since, true)) {
            return true;
        }
        if let Err(e) = self.tell_write_back(subtree, true).await {
            tracing::debug!(subtree, error = %e, "write-back refused; committing before answering");
            return false;
        }
        self.deleg.set_marked(subtree, since, true);
        tracing::info!(
            subtree,
            "writing back closes and unlinks: other mounts' reads recall the delegation first"
        );
        true
    }

    /// Tell the metadata whether this mount has write-backs in `subtree` (`on`), under
    /// its session and the next sequence number.
    async fn tell_write_back(&self, subtree: SubtreeId, on: bool) -> FsResult<()> {
        let session = self
            .locks
            .current()
            .await
            .ok_or(ClientError::Refused(Errno::ENOLCK))?;
        let seq = self.write_back.next_seq();
        let meta = self.client.meta();
        Ok(meta.set_write_back(session, subtree, on, seq).await?)
    }

    /// Take back `subtree`'s mark once no write-back has waited in it for
    /// [`IDLE_UNMARK`] (one task per subtree).
    pub(super) fn unmark_when_idle(&self, subtree: SubtreeId) {
        if !lock(&self.write_back.unmarking).insert(subtree) {
            return;
        }
        let Some(me) = self.me.get().and_then(Weak::upgrade) else {
            lock(&self.write_back.unmarking).remove(&subtree);
            return;
        };
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(IDLE_UNMARK).await;
                let idle = lock(&me.write_back.last)
                    .get(&subtree)
                    .is_none_or(|t| t.elapsed() >= IDLE_UNMARK);
                if !idle || me.write_back.waits_in(subtree) {
                    continue;
                }
                let _all = me.write_back.marking.write().await;
                if me.write_back.waits_in(subtree) {
                    continue;
                }
                lock(&me.write_back.unmarking).remove(&subtree);
                lock(&me.write_back.last).remove(&subtree);
                let Some((since, true)) = me.deleg.write_back_grant(subtree) else {
                    return;
                };
                // Forgotten here first: a close that comes next marks again.
                me.deleg.set_marked(subtree, since, false);
                match me.tell_write_back(subtree, false).await {
                    Ok(()) => tracing::info!(subtree, "no closes left to write back"),
                    Err(e) => {
                        tracing::debug!(subtree, error = %e, "taking back the write-back mark failed")
                    }
                }
                return;
            }
        });
    }
}

/// A close in a delegated subtree that commits before it answers, and why (a test that
/// expects a write-back shows this when it waits instead).
fn refused(subtree: SubtreeId, why: &'static str) {
    tracing::debug!(subtree, why, "this close commits before it answers");
    metrics::counter!("mobilus_fuse_write_backs_total", "outcome" => why).increment(1);
}
