//! Unlinks the holder of a delegation answers before they commit (write-back, as closes).
//!
//! An unlink is one metadata commit, and a program that removes many files (`rm -r`, a
//! build's clean step, mdtest) waits for each. While this mount holds the subtree's
//! delegation nobody else can see or change the directory, so it can answer the unlink
//! itself and commit it in the background (with the closes of the same round, in one
//! request), under the rules of `write_back.rs`:
//! - **Other mounts.** The metadata is told first (`SetWriteBack`): their reads of the
//!   subtree recall the delegation, and a recall commits every unlink answered here
//!   before the delegation is given back.
//! - **This mount.** The name is absent in the cache at once, and every metadata call
//!   goes through [`MountFs::meta`], which first commits every unlink answered here
//!   ([`MountFs::settle`]), so no answer from the metadata shows the name still there.
//!   A create of the same name is then not answered here either: it goes through the
//!   metadata, after the unlink.
//! - **Losing the delegation.** The commits go out `holder_only`, refused (ESTALE) once
//!   the delegation has ended; the file is then back, as an unlink in a crashed host's
//!   page cache would be on a local file system: an fsync of the directory is the
//!   durability point, as there.
//!
//! Only what is simple to answer exactly is answered so: a file or symlink with one
//! link, known here with its attributes, and not open here (an open file's unlink keeps
//! it as an orphan, which the metadata must know at once).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use mobilus_proto::fs::{FileKind, InodeId, SubtreeId, ROOT_INO};
use mobilus_proto::status::Errno;

use super::delegation::Touches;
use super::write_back::{MAX_FILES, MAX_RETRY_PAUSE};
use super::{lock, wall_clock_ns, MountFs};
use crate::client::ClientError;

/// Most directories remembered with a lost unlink to report to their next fsync.
const MAX_LOST_DIRS: usize = 4_096;

/// A name unlinked here: its directory and the name.
pub(super) type Unbound = (InodeId, Vec<u8>);

/// An unlink answered here, waiting for its commit.
pub(super) struct UnlinkWaiting {
    pub(super) subtree: SubtreeId,
    /// The grant it was answered under (when it was asked for): it is sent only while
    /// this mount still trusts that grant, never under a later one.
    since: Instant,
    /// Held by the one committing it (the background task, a settle or a recall), so it
    /// is sent once at a time; `true` once it is committed or dropped.
    done: Arc<tokio::sync::Mutex<bool>>,
}

impl MountFs {
    /// Answer the unlink of `name` in `parent` here, if this mount may (see the module
    /// doc); returns whether it did.
    pub(super) async fn unlink_back(&self, parent: InodeId, name: &[u8]) -> bool {
        let Some(Some(attr)) = self.deleg.entry(parent, name) else {
            return false;
        };
        let subtree = attr.subtree;
        if !matches!(attr.kind, FileKind::Regular | FileKind::Symlink)
            || attr.nlink != 1
            || subtree == ROOT_INO
            || self.open_inode(attr.ino).is_some()
            || self.unmade(attr.ino)
        {
            return false;
        }
        let Some(me) = self.me.get().and_then(Weak::upgrade) else {
            return false;
        };
        let _marking = self.write_back.marking.read().await;
        let Some((since, marked)) = self.deleg.write_back_grant(subtree) else {
            return false;
        };
        if self.write_back.totals().0 >= MAX_FILES {
            metrics::counter!("mobilus_fuse_unlink_backs_total", "outcome" => "full").increment(1);
            return false;
        }
        if !self.mark_write_back(subtree, since, marked).await {
            return false;
        }
        let key: Unbound = (parent, name.to_vec());
        // Forgotten first: an open that comes now no longer finds the file in the cache
        // (it asks the metadata, which settles this unlink first).
        let changing = self.deleg.mutation(Touches::unbind(parent, name));
        {
            // Under the registry's lock, as a close's write-back: the grant still the one
            // marked, and the file still closed here.
            let mut unlinks = lock(&self.write_back.unlinks);
            if self.deleg.write_back_grant(subtree) != Some((since, true))
                || self.open_inode(attr.ino).is_some()
                || unlinks.contains_key(&key)
            {
                return false;
            }
            unlinks.insert(
                key.clone(),
                UnlinkWaiting {
                    subtree,
                    since,
                    done: Arc::default(),
                },
            );
        }
        changing.unbound(parent, name, wall_clock_ns());
        drop(changing);
        lock(&self.write_back.last).insert(subtree, Instant::now());
        metrics::counter!("mobilus_fuse_unlink_backs_total", "outcome" => "answered").increment(1);
        tokio::spawn(async move { me.commit_unlink_in_background(key).await });
        true
    }

    /// The error of an unlink answered in `dir` and then refused, if not yet reported
    /// (taken): an fsync of the directory, the durability point, reports it.
    pub(super) fn take_lost_unlink(&self, dir: InodeId) -> Option<Errno> {
        lock(&self.write_back.lost_unlinks).remove(&dir)
    }

    /// Whether an unlink of `name` in `parent` answered here is still to commit.
    pub(super) fn unlink_waiting(&self, parent: InodeId, name: &[u8]) -> bool {
        lock(&self.write_back.unlinks).contains_key(&(parent, name.to_vec()))
    }

    async fn commit_unlink_in_background(self: Arc<Self>, key: Unbound) {
        tokio::time::sleep_until(super::write_back::next_round()).await;
        let mut pause = Duration::from_millis(50);
        while !mobilus_meta_client::in_background(self.commit_unlink(&key)).await {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RETRY_PAUSE);
        }
    }

    /// Commit one unlink answered here; `false` if it failed with an error that may pass
    /// (it stays waiting). A refusal for good drops it: the file is back.
    async fn commit_unlink(&self, key: &Unbound) -> bool {
        let Some((done, subtree, since)) = lock(&self.write_back.unlinks)
            .get(key)
            .map(|u| (u.done.clone(), u.subtree, u.since))
        else {
            return true;
        };
        let mut done = done.lock().await;
        if *done {
            return true;
        }
        // Only under the grant it was answered under (a recall commits it before the
        // grant is given back): after that one ended, a later grant of the same session
        // must not carry it.
        let under_its_grant = || self.deleg.grant_since(subtree) == Some(since);
        if !under_its_grant() {
            self.lose_unlink(key, &ClientError::Refused(Errno::ESTALE));
            *done = true;
            self.unlink_done(key);
            return true;
        }
        let (parent, name) = key;
        match self
            .client
            .meta()
            .unlink_holder_only(*parent, name)
            .await
            .map_err(ClientError::from)
        {
            Ok(_) => {
                metrics::counter!("mobilus_fuse_unlink_backs_total", "outcome" => "committed")
                    .increment(1);
            }
            // Nobody else changes the directory while the delegation is held here: the
            // name is gone because an earlier attempt of this commit took it.
            Err(e) if e.to_errno() == Errno::ENOENT => {}
            // Retried while its grant lasts; one that ended meanwhile drops it.
            Err(e) if e.to_errno() == Errno::EIO && under_its_grant() => return false,
            Err(e) => self.lose_unlink(key, &e),
        }
        *done = true;
        self.unlink_done(key);
        true
    }

    /// An unlink answered here will not be committed: its name is back, or (`e` not a
    /// refusal: an attempt's outcome is unknown, and its grant has ended) may be.
    fn lose_unlink(&self, key: &Unbound, e: &ClientError) {
        let (parent, name) = key;
        let shown = String::from_utf8_lossy(name);
        if matches!(e, ClientError::Refused(_)) || e.to_errno() == Errno::ESTALE {
            // (A retry refused after an attempt whose answer was lost may have landed:
            // reported all the same, as a lost close is.)
            tracing::error!(parent, name = %shown, error = %e,
                "an unlink was refused after it was answered; the file is back");
        } else {
            tracing::error!(parent, name = %shown, error = %e,
                "an unlink answered here could not be committed before its delegation ended; the file may be back");
        }
        metrics::counter!("mobilus_fuse_unlink_backs_total", "outcome" => "lost").increment(1);
        {
            let mut lost = lock(&self.write_back.lost_unlinks);
            if lost.len() >= MAX_LOST_DIRS {
                lost.clear();
            }
            lost.insert(*parent, e.to_errno());
        }
        // Forget what the cache says of the name and its directory (nothing recorded).
        drop(self.deleg.mutation(Touches::remove(&[(*parent, name)])));
        self.forget_kernel_attrs(*parent);
    }

    fn unlink_done(&self, key: &Unbound) {
        let Some(u) = lock(&self.write_back.unlinks).remove(key) else {
            return;
        };
        if !self.write_back.waits_in(u.subtree) {
            self.unmark_when_idle(u.subtree);
        }
    }

    /// The unlinks waiting (of `subtree` only, if given).
    fn unlinks_of(&self, subtree: Option<SubtreeId>) -> Vec<Unbound> {
        lock(&self.write_back.unlinks)
            .iter()
            .filter(|(_, u)| subtree.is_none_or(|s| s == u.subtree))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Commit the unlinks answered here (of `subtree` only, if given); returns how many
    /// failed with an error that may pass.
    pub(super) async fn commit_unlinks(&self, subtree: Option<SubtreeId>) -> usize {
        let keys = self.unlinks_of(subtree);
        if keys.is_empty() {
            return 0;
        }
        let commits = keys.iter().map(|k| self.commit_unlink(k));
        futures::future::join_all(commits)
            .await
            .into_iter()
            .filter(|ok| !ok)
            .count()
    }

    /// The delegation of `subtree` ended: its unlinks still waiting can never commit.
    pub(super) fn drop_unlinks(&self, subtree: SubtreeId) {
        for key in self.unlinks_of(Some(subtree)) {
            let Some(done) = lock(&self.write_back.unlinks)
                .get(&key)
                .map(|u| u.done.clone())
            else {
                continue;
            };
            // One being committed right now is left to its commit's answer.
            let Ok(mut done) = done.try_lock() else {
                continue;
            };
            if !*done {
                self.lose_unlink(&key, &ClientError::Refused(Errno::ESTALE));
                *done = true;
            }
            lock(&self.write_back.unlinks).remove(&key);
        }
    }
}
