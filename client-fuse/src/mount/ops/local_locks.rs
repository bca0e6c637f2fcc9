//! Locks a delegation's holder grants itself, as an NFSv4 client with a write delegation
//! does: while this mount holds a subtree's delegation, no other mount may lock a file
//! in it without recalling the delegation first (the metadata refuses their `SetLock`
//! and recalls; their `GetLock` recalls before it reads), and the delegation is granted
//! only when no other mount holds a lock there. So the holder's table is the whole truth
//! for those files, and a lock costs no round: a database's every transaction takes and
//! drops several.
//!
//! A file is locked here or at the metadata, never both: one this mount's session
//! already holds metadata locks on stays with the metadata until they are all dropped.
//! When the delegation is given back (or runs out here), the subtree's local locks are
//! pushed to the metadata as this session's, before the delegation is released, so the
//! next holder of a conflicting lock waits for them; lock requests on the subtree wait
//! while that push runs. Locks of a delegation that ran out may have been taken by
//! others meanwhile: those cannot be pushed and are lost, as a lock session's are when
//! its lease ends.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use mobilus_meta_client::LockRequest;
use mobilus_proto::fs::{HeldLock, InodeId, LockKind, SubtreeId};
use mobilus_proto::status::Errno;

use super::{lock, FsResult, MountFs};
use crate::client::ClientError;

/// How often a blocked local request looks again without a release (a delegation can
/// also run out without one).
const RECHECK: Duration = Duration::from_millis(50);

/// A file's local locks.
struct LocalFile {
    subtree: SubtreeId,
    owners: HashMap<u64, Vec<HeldLock>>,
}

impl LocalFile {
    /// The first lock of an owner other than `owner` that refuses `kind` on `start..=end`.
    fn conflict(&self, owner: u64, start: u64, end: u64, kind: LockKind) -> Option<&HeldLock> {
        self.owners
            .iter()
            .filter(|(o, _)| **o != owner)
            .flat_map(|(_, held)| held.iter())
            .find(|h| h.conflicts(start, end, kind))
    }
}

/// The table of locks granted here.
#[derive(Default)]
pub(super) struct LocalLocks {
    files: HashMap<InodeId, LocalFile>,
    /// Subtrees whose locks are being pushed to the metadata.
    pushing: HashSet<SubtreeId>,
}

/// Where a lock request on a file goes now.
enum Route {
    Local(SubtreeId),
    Metadata,
    /// The subtree's local locks are on their way to the metadata: wait.
    Wait,
    /// The delegation ended here with local locks left: push them first.
    Push(SubtreeId),
}

impl MountFs {
    /// The subtree of `ino` (open here), if known.
    fn subtree_of(&self, ino: InodeId) -> Option<SubtreeId> {
        let open = self.open_inode(ino)?;
        let subtree = lock(&open.attr).0.subtree;
        Some(subtree)
    }

    fn route(&self, ino: InodeId) -> Route {
        let t = lock(&self.locks.local);
        let subtree = match t.files.get(&ino) {
            Some(f) => Some(f.subtree),
            None => self.subtree_of(ino),
        };
        let Some(subtree) = subtree else {
            return Route::Metadata;
        };
        if t.pushing.contains(&subtree) {
            return Route::Wait;
        }
        if self.deleg.trusted(subtree).is_none() {
            return if t.files.values().any(|f| f.subtree == subtree) {
                Route::Push(subtree)
            } else {
                Route::Metadata
            };
        }
        let at_metadata = lock(&self.locks.held).iter().any(|(i, _)| *i == ino);
        if at_metadata {
            Route::Metadata
        } else {
            Route::Local(subtree)
        }
    }

    /// Wait until `ino` can be routed to the metadata or locally (pushing what must be).
    async fn settled_route(&self, ino: InodeId) -> Option<SubtreeId> {
        loop {
            let released = self.locks.released.notified();
            match self.route(ino) {
                Route::Local(subtree) => return Some(subtree),
                Route::Metadata => return None,
                Route::Push(subtree) => self.push_local_locks(subtree).await,
                Route::Wait => {
                    let _ = tokio::time::timeout(RECHECK, released).await;
                }
            }
        }
    }

    /// F_SETLK/F_SETLKW granted here: `None` when the request must go to the metadata.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn local_setlk(
        &self,
        ino: InodeId,
        owner: u64,
        start: u64,
        end: u64,
        kind: LockKind,
        pid: u32,
        sleep: bool,
    ) -> Option<FsResult<()>> {
        let key = (ino, owner);
        let cancelled = sleep.then(|| self.locks.waiter(key));
        let outcome = loop {
            let released = self.locks.released.notified();
            let Some(subtree) = self.settled_route(ino).await else {
                break None;
            };
            {
                let mut t = lock(&self.locks.local);
                // Trust is checked again under the table: a give-back stops trusting
                // before it takes the table, so whatever is granted here is pushed.
                if self.deleg.trusted(subtree).is_none() || t.pushing.contains(&subtree) {
                    continue;
                }
                let file = t.files.entry(ino).or_insert_with(|| LocalFile {
                    subtree,
                    owners: HashMap::new(),
                });
                let refused = file.conflict(owner, start, end, kind).is_some();
                if !refused {
                    let held = file.owners.remove(&owner).unwrap_or_default();
                    let next = HeldLock::apply(held, start, end, kind, pid);
                    if !next.is_empty() {
                        file.owners.insert(owner, next);
                    }
                }
                if file.owners.is_empty() {
                    t.files.remove(&ino);
                }
                if !refused {
                    break Some(Ok(()));
                }
            }
            if !sleep {
                break Some(Err(ClientError::Refused(Errno::EAGAIN)));
            }
            if cancelled
                .as_ref()
                .is_some_and(|c| c.load(std::sync::atomic::Ordering::Acquire))
            {
                break Some(Err(ClientError::Refused(Errno::EINTR)));
            }
            let _ = tokio::time::timeout(RECHECK, released).await;
        };
        if let Some(flag) = &cancelled {
            self.locks.done_waiting(key, flag);
        }
        if outcome.is_some() {
            metrics::counter!("mobilus_fuse_local_locks_total", "op" => "set").increment(1);
        }
        outcome
    }

    /// F_GETLK answered here: `None` when it must go to the metadata.
    pub(super) async fn local_getlk(
        &self,
        ino: InodeId,
        owner: u64,
        start: u64,
        end: u64,
        kind: LockKind,
    ) -> Option<Option<HeldLock>> {
        let subtree = self.settled_route(ino).await?;
        let t = lock(&self.locks.local);
        if self.deleg.trusted(subtree).is_none() || t.pushing.contains(&subtree) {
            return None;
        }
        metrics::counter!("mobilus_fuse_local_locks_total", "op" => "get").increment(1);
        let Some(file) = t.files.get(&ino) else {
            return Some(None);
        };
        Some(file.conflict(owner, start, end, kind).copied())
    }

    /// Drop `start..=end` of `owner`'s local locks on `ino`; false if it holds none here
    /// (they are at the metadata, or on their way there).
    pub(super) async fn local_unlock(
        &self,
        ino: InodeId,
        owner: u64,
        start: u64,
        end: u64,
    ) -> bool {
        loop {
            let released = self.locks.released.notified();
            {
                let mut t = lock(&self.locks.local);
                if let Some(file) = t.files.get_mut(&ino) {
                    if let Some(held) = file.owners.remove(&owner) {
                        let next = HeldLock::apply(held, start, end, LockKind::Unlock, 0);
                        if !next.is_empty() {
                            file.owners.insert(owner, next);
                        }
                        if file.owners.is_empty() {
                            t.files.remove(&ino);
                        }
                        drop(t);
                        self.locks.released.notify_waiters();
                        return true;
                    }
                }
                // Being pushed: the unlock goes to the metadata once the push is done.
                let pushing = self.subtree_of(ino).is_some_and(|s| t.pushing.contains(&s));
                if !pushing {
                    return false;
                }
            }
            let _ = tokio::time::timeout(RECHECK, released).await;
        }
    }

    /// Whether `owner` holds local locks on `ino`.
    pub(super) fn holds_local(&self, ino: InodeId, owner: u64) -> bool {
        lock(&self.locks.local)
            .files
            .get(&ino)
            .is_some_and(|f| f.owners.contains_key(&owner))
    }

    /// Hand `subtree`'s local locks to the metadata as this session's (the delegation is
    /// no longer trusted here; it must not be released before this returns).
    pub(super) async fn push_local_locks(&self, subtree: SubtreeId) {
        // Another task pushing them: wait until it is done (a give-back must not release
        // the delegation before the locks are at the metadata), then take what is left.
        let taken: Vec<(InodeId, u64, Vec<HeldLock>)> = loop {
            let released = self.locks.released.notified();
            if let Some(taken) = self.claim_local_locks(subtree) {
                break taken;
            }
            let _ = tokio::time::timeout(RECHECK, released).await;
        };
        let mut lost = 0;
        if !taken.is_empty() {
            let meta = self.meta().await;
            let session = self.locks.current().await;
            for (ino, owner, locks) in &taken {
                for h in locks {
                    let req = LockRequest {
                        ino: *ino,
                        session: session.unwrap_or(0),
                        owner: *owner,
                        start: h.start,
                        end: h.end,
                        kind: if h.write {
                            LockKind::Write
                        } else {
                            LockKind::Read
                        },
                    };
                    let pushed = match &meta {
                        Ok(m) if session.is_some() => {
                            m.set_lock(req, h.pid, Duration::ZERO).await.is_ok()
                        }
                        _ => false,
                    };
                    if !pushed {
                        lost += 1;
                    }
                }
            }
        }
        if lost > 0 {
            tracing::error!(
                subtree,
                lost,
                "locks granted under the delegation could not be handed to the metadata: they are lost"
            );
            metrics::counter!("mobilus_fuse_local_locks_lost_total").increment(lost);
        } else if !taken.is_empty() {
            tracing::info!(
                subtree,
                owners = taken.len(),
                "handed the locks granted under the delegation to the metadata"
            );
        }
        lock(&self.locks.local).pushing.remove(&subtree);
        self.locks.released.notify_waiters();
    }

    /// Take `subtree`'s local locks out of the table to push them, counting them as at
    /// the metadata already (an unlock waits for the push, then goes there); `None` if
    /// another task is pushing them.
    fn claim_local_locks(&self, subtree: SubtreeId) -> Option<Vec<(InodeId, u64, Vec<HeldLock>)>> {
        let mut t = lock(&self.locks.local);
        if !t.pushing.insert(subtree) {
            return None;
        }
        let inos: Vec<InodeId> = t
            .files
            .iter()
            .filter(|(_, f)| f.subtree == subtree)
            .map(|(i, _)| *i)
            .collect();
        let mut taken = Vec::new();
        let mut held = lock(&self.locks.held);
        for ino in inos {
            if let Some(f) = t.files.remove(&ino) {
                for (owner, locks) in f.owners {
                    held.insert((ino, owner));
                    taken.push((ino, owner, locks));
                }
            }
        }
        Some(taken)
    }

    /// Subtrees with local locks this mount no longer trusts (their delegation ran out).
    pub(super) fn untrusted_with_local_locks(&self) -> Vec<SubtreeId> {
        let t = lock(&self.locks.local);
        let subtrees: HashSet<SubtreeId> = t.files.values().map(|f| f.subtree).collect();
        subtrees
            .into_iter()
            .filter(|s| !t.pushing.contains(s) && self.deleg.trusted(*s).is_none())
            .collect()
    }
}
