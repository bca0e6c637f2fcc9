//! Cluster-wide advisory locks through the mount: fcntl record locks and flock (which
//! the kernel sends as a whole-file record lock; on Mobilus, as on NFS, the two kinds
//! therefore conflict with each other).
//!
//! The metadata service grants every lock (`SetLock`), held by this mount's lock
//! session, which a background worker renews; a mount that dies loses its locks when
//! the session's lease ends, never earlier. Locks also carry the cache coherence a
//! database relies on: taking a lock drops what this mount and the kernel cached of the
//! file (another mount may have written it under its own lock), and releasing one first
//! commits what was written here under it. A mount holding a subtree's delegation grants
//! locks on its files itself (`local_locks.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use mobilus_meta_client::{LockRequest, MetaClient};
use mobilus_proto::fs::{HeldLock, InodeId, LockKind};
use mobilus_proto::status::Errno;
use mobilus_telemetry::worker::{spawn_periodic, Shutdown};

use super::{lock, FsResult, MountFs};
use crate::client::ClientError;

/// How long one blocked request waits at the metadata service before the mount asks
/// again (inside the client's RPC timeout).
const WAIT_PER_CALL: Duration = Duration::from_secs(4);
/// How often the session is renewed (its lease is five times as long).
const RENEW_EVERY: Duration = Duration::from_secs(2);

/// This mount's side of the locks.
#[derive(Default)]
pub(super) struct Locks {
    /// The lock session, opened at the first lock and renewed until unmount.
    session: Arc<tokio::sync::Mutex<Option<u64>>>,
    renewing: AtomicBool,
    stop: Shutdown,
    /// (inode, owner) pairs that may hold locks: a close of a file that was never
    /// locked costs no round.
    pub(super) held: Mutex<HashSet<(InodeId, u64)>>,
    /// Blocked requests: an unlock or close by the same owner ends its wait (EINTR).
    waiting: Mutex<HashMap<(InodeId, u64), Arc<AtomicBool>>>,
    /// The mount, told of every renewal (the session also holds its delegations).
    owner: Arc<OnceLock<Weak<MountFs>>>,
    /// Locks granted here under a delegation (`local_locks.rs`).
    pub(super) local: Mutex<super::local_locks::LocalLocks>,
    /// Told of every local release, and of the end of a push to the metadata.
    pub(super) released: tokio::sync::Notify,
}

fn errno_of(e: &mobilus_meta_client::ClientError) -> Errno {
    e.to_errno()
}

impl Locks {
    pub(super) async fn current(&self) -> Option<u64> {
        *self.session.lock().await
    }

    pub(super) fn set_owner(&self, fs: Weak<MountFs>) {
        let _ = self.owner.set(fs);
    }

    /// Changes to true when the mount stops.
    pub(super) fn stop_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// The session, opened now if there is none. Every mutation of this mount carries
    /// it from then on (a delegation's holder is known by it).
    pub(super) async fn session(&self, meta: &MetaClient) -> FsResult<u64> {
        let mut slot = self.session.lock().await;
        if let Some(id) = *slot {
            return Ok(id);
        }
        let (id, lease) = meta.open_session().await?;
        tracing::info!(session = id, ?lease, "opened a lock session");
        meta.set_session(Some(id));
        *slot = Some(id);
        if !self.renewing.swap(true, Ordering::AcqRel) {
            self.start_renewing(meta.clone());
        }
        Ok(id)
    }

    fn start_renewing(&self, meta: MetaClient) {
        let slot = self.session.clone();
        let owner = self.owner.clone();
        spawn_periodic(
            "lock-session",
            RENEW_EVERY,
            RENEW_EVERY,
            self.stop.subscribe(),
            move || {
                let (meta, slot, owner) = (meta.clone(), slot.clone(), owner.clone());
                async move {
                    let Some(id) = *slot.lock().await else {
                        return Ok::<(), mobilus_meta_client::ClientError>(());
                    };
                    let fs = owner.get().and_then(Weak::upgrade);
                    let sent = Instant::now();
                    match meta.renew_session(id).await {
                        Ok((_, grants)) => {
                            if let Some(fs) = fs {
                                fs.session_renewed(sent, Some(&grants));
                            }
                            Ok(())
                        }
                        Err(e) if errno_of(&e) == Errno::ENOLCK => {
                            // Renewals stopped for a whole lease (a pause, a partition):
                            // the service has given its locks away. The next lock opens a
                            // new session.
                            tracing::error!(session = id, error = %e,
                                "the lock session ended: every lock this mount held is lost");
                            metrics::counter!("mobilus_fuse_lock_sessions_lost_total").increment(1);
                            let mut s = slot.lock().await;
                            if *s == Some(id) {
                                *s = None;
                                meta.set_session(None);
                            }
                            if let Some(fs) = fs {
                                fs.session_renewed(sent, None);
                            }
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
            },
        );
    }

    pub(super) fn waiter(&self, key: (InodeId, u64)) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        lock(&self.waiting).insert(key, flag.clone());
        flag
    }

    pub(super) fn done_waiting(&self, key: (InodeId, u64), flag: &Arc<AtomicBool>) {
        let mut waiting = lock(&self.waiting);
        if waiting.get(&key).is_some_and(|f| Arc::ptr_eq(f, flag)) {
            waiting.remove(&key);
        }
    }

    fn cancel_waiter(&self, key: (InodeId, u64)) {
        if let Some(flag) = lock(&self.waiting).remove(&key) {
            flag.store(true, Ordering::Release);
        }
    }
}

impl MountFs {
    /// F_GETLK: the lock of another owner (of any mount) that would refuse this one.
    pub async fn getlk(
        &self,
        ino: InodeId,
        owner: u64,
        start: u64,
        end: u64,
        kind: LockKind,
    ) -> FsResult<Option<HeldLock>> {
        if let Some(found) = self.local_getlk(ino, owner, start, end, kind).await {
            return Ok(found);
        }
        // Without a session this mount holds nothing: session 0 is nobody's.
        let session = self.locks.current().await.unwrap_or(0);
        let req = LockRequest {
            ino,
            session,
            owner,
            start,
            end,
            kind,
        };
        Ok(self.meta().await?.get_lock(req).await?)
    }

    /// F_SETLK (`sleep`: F_SETLKW) on behalf of the kernel's lock `owner`.
    #[allow(clippy::too_many_arguments)]
    pub async fn setlk(
        &self,
        fh: u64,
        ino: InodeId,
        owner: u64,
        start: u64,
        end: u64,
        kind: LockKind,
        pid: u32,
        sleep: bool,
    ) -> FsResult<()> {
        if kind == LockKind::Unlock {
            return self.unlock(fh, ino, owner, start, end).await;
        }
        if let Some(done) = self
            .local_setlk(ino, owner, start, end, kind, pid, sleep)
            .await
        {
            return done;
        }
        let meta = self.meta().await?;
        let session = self.locks.session(meta).await?;
        let req = LockRequest {
            ino,
            session,
            owner,
            start,
            end,
            kind,
        };
        let key = (ino, owner);
        let cancelled = sleep.then(|| self.locks.waiter(key));
        let wait = if sleep { WAIT_PER_CALL } else { Duration::ZERO };
        let result = loop {
            match meta.set_lock(req, pid, wait).await {
                Err(e) if sleep && errno_of(&e) == Errno::EAGAIN => {
                    if cancelled
                        .as_ref()
                        .is_some_and(|c| c.load(Ordering::Acquire))
                    {
                        break Err(ClientError::Refused(Errno::EINTR));
                    }
                }
                other => break other.map_err(ClientError::from),
            }
        };
        if let Some(flag) = &cancelled {
            self.locks.done_waiting(key, flag);
        }
        result?;
        lock(&self.locks.held).insert(key);
        self.revalidate_after_grant(ino).await;
        Ok(())
    }

    /// Release `start..=end` of the owner's locks, after committing what this mount
    /// buffered for the file: the next holder, at any mount, reads it.
    async fn unlock(
        &self,
        fh: u64,
        ino: InodeId,
        owner: u64,
        start: u64,
        end: u64,
    ) -> FsResult<()> {
        let key = (ino, owner);
        self.locks.cancel_waiter(key);
        // Granted here: dropped here, with nothing to commit first (a conflicting lock
        // elsewhere recalls the delegation, and the give-back commits everything).
        if self.local_unlock(ino, owner, start, end).await {
            return Ok(());
        }
        if !lock(&self.locks.held).contains(&key) {
            return Ok(());
        }
        // An unlock itself never fails: a flush that does (the subtree moved away, say)
        // is reported by the next fsync or close, and the lock goes all the same, or a
        // writer fenced off mid-transaction would keep everyone else waiting.
        if let Ok(h) = self.handle(fh) {
            if let Err(e) = self.flush_inode(&h.inode).await {
                tracing::warn!(ino, error = %e, "a flush before an unlock failed; unlocking anyway");
            }
        }
        let Some(session) = self.locks.current().await else {
            return Ok(());
        };
        let req = LockRequest {
            ino,
            session,
            owner,
            start,
            end,
            kind: LockKind::Unlock,
        };
        match self.meta().await?.set_lock(req, 0, Duration::ZERO).await {
            // The session ended: it holds nothing any more.
            Err(e) if errno_of(&e) == Errno::ENOLCK => {}
            other => other.map_err(ClientError::from)?,
        }
        if start == 0 && end == u64::MAX {
            lock(&self.locks.held).remove(&key);
        }
        Ok(())
    }

    /// Whether `owner` holds no lock on `ino` (so a close has none to drop); a wait of
    /// its for one is cancelled, as a close does.
    pub(crate) fn holds_no_lock(&self, ino: InodeId, owner: u64) -> bool {
        let key = (ino, owner);
        self.locks.cancel_waiter(key);
        !lock(&self.locks.held).contains(&key) && !self.holds_local(ino, owner)
    }

    /// A close by `owner` (FLUSH) or the last close of a flock holder (RELEASE): POSIX
    /// drops every lock the owner holds on the file.
    pub async fn release_locks(&self, fh: u64, ino: InodeId, owner: u64) -> FsResult<()> {
        self.unlock(fh, ino, owner, 0, u64::MAX).await
    }

    /// Unmount: release every lock at once (instead of when the lease ends) and stop
    /// renewing.
    pub async fn close_locks(self: &Arc<Self>) {
        self.give_back_all().await;
        self.locks.stop.stop();
        if let Some(id) = self.locks.session.lock().await.take() {
            if let Err(e) = self.client.meta().close_session(id).await {
                tracing::warn!(session = id, error = %e, "closing the lock session failed; its lease will end it");
            }
        }
    }
}
