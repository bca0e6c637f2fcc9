//! Creates the holder of a delegation answers before it makes them.
//!
//! A new file costs a create and, at its close, a commit: two metadata rounds. While this
//! mount holds the subtree's delegation nobody else can change the directory, so it can
//! answer a create itself, when its cache knows the parent and knows the name is absent:
//! with an inode number reserved for its session (blocks of them, fetched ahead in the
//! background), and the attributes the metadata would give. The file is made at its
//! first commit, together with the bytes written ([`FileWriter::flush`]): one round for
//! a file created, written and closed.
//!
//! Until then the file is known only here. So every metadata call of an operation goes
//! through [`MountFs::meta`], which first makes every create answered but not yet made
//! ([`MountFs::settle`]); a recall makes them before the delegation is given back; a close
//! always makes its file. Making one twice is harmless: the metadata answers a create
//! under a number already made with the file it made (and still applies a write that
//! comes with it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use mobilus_meta_client::{MetaClient, ReservedCreate};

pub use crate::client::CreateSlot;
use mobilus_proto::fs::{validate_name, Attr, FileKind, InodeId};

use mobilus_proto::status::Errno;

use super::delegation::Touches;
use super::{lock, wall_clock_ns, Caller, FsResult, MountFs};
use crate::client::ClientError;

/// Ask for the next block when fewer numbers than this are left.
const REFILL_BELOW: u64 = 32;
const S_ISGID: u32 = 0o2000;

/// Inode numbers reserved for a session: `next..end`, and the block after them.
#[derive(Default)]
struct Reserved {
    session: u64,
    next: InodeId,
    end: InodeId,
    spare: Option<(InodeId, InodeId)>,
}

#[derive(Default)]
pub(super) struct Deferred {
    /// Creates answered here and not yet made, by inode.
    pending: Mutex<HashMap<InodeId, CreateSlot>>,
    /// Held while a `settle` runs.
    settling: tokio::sync::Mutex<()>,
    reserved: Mutex<Reserved>,
    refilling: AtomicBool,
}

impl Deferred {
    /// The next reserved number of `session`, if one is at hand; and whether to reserve
    /// more.
    fn take(&self, session: u64) -> (Option<InodeId>, bool) {
        let mut r = lock(&self.reserved);
        if r.session != session {
            *r = Reserved {
                session,
                ..Reserved::default()
            };
        }
        if r.next == r.end {
            if let Some((next, end)) = r.spare.take() {
                (r.next, r.end) = (next, end);
            }
        }
        let ino = (r.next < r.end).then(|| {
            r.next += 1;
            r.next - 1
        });
        let low = r.spare.is_none() && r.end - r.next < REFILL_BELOW;
        (ino, low)
    }

    fn add(&self, session: u64, first: InodeId, count: u32) {
        let mut r = lock(&self.reserved);
        if r.session != session {
            return;
        }
        let block = (first, first + u64::from(count));
        if r.next == r.end {
            (r.next, r.end) = block;
        } else {
            r.spare = Some(block);
        }
    }
}

impl MountFs {
    /// The metadata client, once every create answered here is made: every operation's
    /// metadata call goes through here, so none sees the namespace without them. Fails
    /// (EIO) while one cannot be made for a reason that may pass (the metadata is
    /// unreachable): answering without it could show its name absent.
    pub(super) async fn meta(&self) -> FsResult<&MetaClient> {
        match self.settle().await {
            0 => Ok(self.client.meta()),
            _ => Err(ClientError::Refused(Errno::EIO)),
        }
    }

    /// An fsync of directory `ino`: the creates and unlinks answered in it (in any, for
    /// simplicity) are made and committed, so durable; every other change of a directory
    /// is committed before it is answered. An unlink answered in it and then refused
    /// (the delegation ended first) is reported here, once.
    pub async fn fsyncdir(&self, ino: InodeId) -> FsResult<()> {
        let settled = self.meta().await.map(|_| ());
        match self.take_lost_unlink(ino) {
            Some(e) => Err(ClientError::Refused(e)),
            None => settled,
        }
    }

    /// Commit every close written back here (`write_back.rs`) and make every create
    /// answered here and not yet made; returns how many are still to be committed or
    /// made (they failed with an error that may pass). A create refused for
    /// good (the subtree moved, the name was taken after the delegation was lost) is
    /// left to its file's own commit, which reports the error to the application.
    pub(super) async fn settle(&self) -> usize {
        if lock(&self.deferred.pending).is_empty() && self.write_back.is_empty() {
            return 0;
        }
        // One at a time: a second caller finds the first one's work done.
        let _one = self.deferred.settling.lock().await;
        // Closes written back first: a file created here is made with its bytes.
        let unwritten = self.settle_write_backs().await;
        let pending: Vec<(InodeId, CreateSlot)> = {
            let p = lock(&self.deferred.pending);
            if p.is_empty() {
                return unwritten;
            }
            p.iter().map(|(i, s)| (*i, s.clone())).collect()
        };
        let makes = pending.into_iter().map(|(ino, slot)| async move {
            let create = lock(&slot).clone();
            if let Some(create) = create {
                match self
                    .client
                    .meta()
                    .create_reserved(&create, None, false)
                    .await
                {
                    Ok(_) => {
                        let mut s = lock(&slot);
                        if s.as_ref() == Some(&create) {
                            *s = None;
                        }
                    }
                    Err(e) => {
                        let e = ClientError::from(e);
                        tracing::warn!(ino, error = %e, "making a file created here failed");
                        if e.to_errno() == Errno::EIO {
                            return true;
                        }
                    }
                }
            }
            lock(&self.deferred.pending).remove(&ino);
            false
        });
        let failed = futures::future::join_all(makes).await;
        unwritten + failed.into_iter().filter(|f| *f).count()
    }

    /// Whether `ino` is a create answered here and not yet made.
    pub(super) fn unmade(&self, ino: InodeId) -> bool {
        lock(&self.deferred.pending)
            .get(&ino)
            .is_some_and(|slot| lock(slot).is_some())
    }

    /// Answer a create of a regular file without a round, if this mount may: it holds
    /// the delegation, knows the directory and that `name` is absent, and has a number
    /// at hand. Returns the file's attributes and a handle open on it.
    pub(super) async fn deferred_create(
        &self,
        parent: InodeId,
        name: &[u8],
        mode: u32,
        who: Caller,
    ) -> Option<(Attr, u64)> {
        let dir = self.deleg.attr(parent)?;
        if dir.kind != FileKind::Directory
            || !matches!(self.deleg.entry(parent, name), Some(None))
            || self.unlink_waiting(parent, name)
            || validate_name(name).is_err()
            || name == b"."
            || name == b".."
        {
            return None;
        }
        let session = self.locks.current().await?;
        let (ino, low) = self.deferred.take(session);
        if low {
            self.reserve_more(session);
        }
        let ino = ino?;
        // As the namespace makes it (`dir::create`), setgid-directory inheritance too.
        let (mode, mut gid) = (mode & 0o7777, who.gid);
        if dir.mode & S_ISGID != 0 {
            gid = dir.gid;
        }
        let now = wall_clock_ns();
        let attr = Attr {
            ino,
            kind: FileKind::Regular,
            mode,
            uid: who.uid,
            gid,
            size: 0,
            nlink: 1,
            atime_ns: now,
            mtime_ns: now,
            ctime_ns: now,
            generation: 1,
            subtree: dir.subtree,
            rdev: 0,
            parent: 0,
        };
        let create = ReservedCreate {
            parent,
            name: name.to_vec(),
            ino,
            mode,
            uid: who.uid,
            gid: who.gid,
            time_ns: now,
            session,
        };
        let slot: CreateSlot = Arc::new(Mutex::new(Some(create)));
        {
            // Under the registry's lock: a recall stops the trust before it makes what
            // is registered, so a create is either refused here or made by the recall.
            let mut pending = lock(&self.deferred.pending);
            self.deleg.trusted(dir.subtree)?;
            pending.insert(ino, slot.clone());
        }
        let changing = self.deleg.mutation(Touches::create(parent, name, None));
        changing.created(parent, name, &attr);
        drop(changing);
        let (fh, _) = self.open_as(ino, attr.clone());
        if let Ok(h) = self.handle(fh) {
            h.inode.writer.lock().await.create_first(slot);
        }
        self.remember_no_caps(ino);
        super::delegation::hit("create");
        Some((attr, fh))
    }

    /// Reserve the next block of numbers for `session`, in the background.
    fn reserve_more(&self, session: u64) {
        if self.deferred.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(me) = self.me.get().and_then(std::sync::Weak::upgrade) else {
            self.deferred.refilling.store(false, Ordering::Release);
            return;
        };
        tokio::spawn(async move {
            match me.client.meta().reserve_inodes(session).await {
                Ok((first, count)) => me.deferred.add(session, first, count),
                Err(e) => tracing::debug!(session, error = %e, "reserving inode numbers failed"),
            }
            me.deferred.refilling.store(false, Ordering::Release);
        });
    }
}
