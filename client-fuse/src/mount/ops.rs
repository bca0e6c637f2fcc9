//! [`MountFs`]: the file system of a mount as typed async operations. The FUSE adapter
//! (`fuse.rs`) only decodes requests, calls these and encodes replies, so tests can
//! drive the same code without a kernel.
//!
//! Writes are buffered per inode (one [`FileWriter`] shared by every handle of the
//! inode in this mount), so a read through any handle, a truncate, or a getattr sees
//! them: reads and truncates flush first, getattr reports the buffered size.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use mobilus_proto::fs::{
    Attr, DirEntry, FileKind, InodeId, SetAttr, StatFs, RENAME_EXCHANGE, RENAME_KEEP_OPEN,
};
use mobilus_proto::status::Errno;
use std::time::{Duration, Instant};

use tracing::instrument;

use crate::client::{Client, ClientError, FileWriter};
use crate::read::FileReader;

mod deferred;
mod delegation;
mod dir_handles;
mod local_locks;
mod locks;
mod privileges;
mod unlink_back;
mod write_back;

pub use self::delegation::KernelTtl;
use self::delegation::{known_listing, Mutation, Touches};
pub use self::dir_handles::DirPage;

const SECURITY_CAPABILITY: &[u8] = b"security.capability";
/// Entries one readdir call asks the metadata for.
pub(super) const READDIR_BATCH: u32 = 2_048;

/// What a mount operation fails with; `to_errno` maps it once, at the FUSE boundary.
pub type FsResult<T> = Result<T, ClientError>;

/// Lock-free reads of a clean file that keep racing with commits fall back to locking.
const CLEAN_READ_ATTEMPTS: usize = 3;

fn refused<T>(e: Errno) -> FsResult<T> {
    Err(ClientError::Refused(e))
}

/// An inode open in this mount: its write buffer, shared by all its handles.
struct OpenInode {
    writer: tokio::sync::Mutex<FileWriter>,
    /// Handles open on it.
    handles: AtomicU64,
    /// Bumped by every flush or truncate: readers with an older view refetch.
    version: AtomicU64,
    /// The buffered size (see `FileWriter::pending_end`), readable without the lock.
    pending_end: AtomicU64,
    /// Unlinked while open here: the metadata keeps it until the last handle closes.
    orphan: AtomicBool,
    /// A close was answered before its writes committed (`write_back.rs`): it stays open
    /// here, with no handle, until they do.
    written_back: AtomicBool,
    /// Its attributes as this mount sees them, and when they were last committed ones:
    /// served without asking the metadata while writes are buffered or for the cache
    /// TTL after a commit (every write and truncate makes the kernel ask again).
    attr: Mutex<(Attr, Option<Instant>)>,
}

struct Handle {
    ino: InodeId,
    inode: Arc<OpenInode>,
    /// The reader of the inode's version it was made at (reads share it concurrently).
    reader: Mutex<Option<(u64, Arc<FileReader>)>>,
}

/// Who asks: the caller's credentials, for ownership of new inodes.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

pub struct MountFs {
    client: Client,
    inodes: Mutex<HashMap<InodeId, Arc<OpenInode>>>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    /// (mtime, ctime, size) of each inode at its last open, for FOPEN_KEEP_CACHE.
    seen: Mutex<HashMap<InodeId, (i64, i64, u64)>>,
    /// Inodes known, since the instant recorded, to have no `security.capability`: the
    /// kernel asks before every write, and the answer is almost always "none".
    no_caps: Mutex<HashMap<InodeId, Instant>>,
    /// How long such knowledge (like the kernel's attribute cache) is trusted.
    cache_ttl: Duration,
    /// Bumped with every inode's `version`: an open that fetched a slice map keeps it
    /// only if nothing in this mount changed a file meanwhile.
    changes: AtomicU64,
    /// Attributes of closed inodes as lookups and getattrs answered them.
    answered: Mutex<AnsweredAttrs>,
    /// The kernel's side of the mount, once mounted: to drop attributes it cached.
    kernel: OnceLock<fuser::Notifier>,
    /// Advisory locks (`locks.rs`).
    locks: locks::Locks,
    /// Delegations and the authoritative cache under them (`delegation.rs`).
    deleg: delegation::Delegations,
    /// Creates answered under a delegation before they are made (`deferred.rs`).
    deferred: deferred::Deferred,
    /// Closes answered under a delegation before their writes commit (`write_back.rs`).
    write_back: write_back::WriteBack,
    /// Open directories' last batches of entries (`dir_handles.rs`).
    dirs: dir_handles::DirHandles,
    /// This mount, for background work it starts itself (set once mounted).
    me: OnceLock<Weak<MountFs>>,
}

/// Attributes the metadata service answered, for the GETATTRs the kernel sends while its
/// own copy would still be fresh: it drops that copy after every read to refresh atime,
/// which Mobilus changes only on setattr. Trusted for `cache_ttl`, as long as the kernel
/// would have trusted its own copy, and forgotten whole whenever an operation of this
/// mount may have changed anything ([`MountFs::mutated`]); an answer to a request that
/// began before such an operation ended is not kept.
#[derive(Default)]
struct AnsweredAttrs {
    generation: u64,
    attrs: HashMap<InodeId, (Attr, Instant)>,
}

/// More answered attributes than this and they are forgotten (the kernel's own cache
/// holds the rest).
const MAX_ANSWERED_ATTRS: usize = 16_384;
/// Inodes known to have no `security.capability`, at most.
const MAX_NO_CAPS: usize = 16_384;
/// Inodes whose attributes at their last open are remembered (for FOPEN_KEEP_CACHE), at
/// most: past it they are forgotten, and the next open of each drops the kernel's pages.
const MAX_SEEN: usize = 65_536;

fn wall_clock_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MountFs {
    pub fn new(client: Client, cache_ttl: Duration) -> Self {
        MountFs {
            client,
            inodes: Mutex::default(),
            handles: Mutex::default(),
            next_fh: AtomicU64::new(1),
            seen: Mutex::default(),
            no_caps: Mutex::default(),
            cache_ttl,
            changes: AtomicU64::new(0),
            answered: Mutex::default(),
            kernel: OnceLock::new(),
            locks: locks::Locks::default(),
            deleg: delegation::Delegations::new(true),
            deferred: deferred::Deferred::default(),
            write_back: write_back::WriteBack::default(),
            dirs: dir_handles::DirHandles::default(),
            me: OnceLock::new(),
        }
    }

    /// Whether this mount asks for the delegations of subtrees its site owns (on by
    /// default; `--no-delegations`).
    pub fn with_delegations(mut self, on: bool) -> Self {
        self.deleg = delegation::Delegations::new(on);
        self
    }

    /// The mount is up: `notifier` reaches the kernel's caches of it.
    pub fn mounted(self: &Arc<Self>, notifier: fuser::Notifier) {
        let _ = self.kernel.set(notifier);
        self.start_background();
    }

    /// Background work of this mount (delegations, lock-session renewals) may start;
    /// `mounted` does this, and tests that drive a `MountFs` without a kernel call it.
    pub fn start_background(self: &Arc<Self>) {
        let _ = self.me.set(Arc::downgrade(self));
        self.locks.set_owner(Arc::downgrade(self));
        // The delegation's holder reads what it holds at its own site's member.
        let me = Arc::downgrade(self);
        self.client
            .meta()
            .set_holder_reads(Arc::new(move |subtree| {
                me.upgrade()
                    .is_some_and(|fs| fs.deleg.trusted(subtree).is_some())
            }));
    }

    /// Make the kernel ask for `ino`'s attributes again (not its pages: an open without
    /// FOPEN_KEEP_CACHE drops those already).
    fn forget_kernel_attrs(&self, ino: InodeId) {
        if let Some(kernel) = self.kernel.get() {
            // ENOENT: the kernel holds nothing of the inode, which is as good.
            if let Err(e) = kernel.inval_inode(fuser::INodeNo(ino), -1, 0) {
                if e.raw_os_error() != Some(libc::ENOENT) {
                    tracing::debug!(ino, error = %e, "dropping the kernel's cache failed");
                }
            }
        }
    }

    /// A lock on `ino` was just granted: another mount may have changed the file under
    /// its own lock. If the file is not as this mount last knew it (at its last open or
    /// its own last commit), drop every cache of it; if it is, what is cached is right
    /// (one metadata read instead of rereading the file: writers on one mount).
    async fn revalidate_after_grant(&self, ino: InodeId) {
        let known = lock(&self.seen).get(&ino).copied();
        let fresh = match self.meta().await {
            Ok(meta) => meta.getattr(ino, false).await.map_err(ClientError::from),
            Err(e) => Err(e),
        };
        match fresh {
            Ok(a) if known == Some((a.mtime_ns, a.ctime_ns, a.size)) => {}
            Ok(a) => {
                self.revalidate(ino).await;
                self.remember_seen(ino, (a.mtime_ns, a.ctime_ns, a.size));
            }
            Err(_) => self.revalidate(ino).await,
        }
    }

    /// Drop everything this mount and the kernel cached of `ino`'s bytes and attributes.
    async fn revalidate(&self, ino: InodeId) {
        if let Some(open) = self.open_inode(ino) {
            self.changed(&open);
            lock(&open.attr).1 = None;
        }
        lock(&self.seen).remove(&ino);
        lock(&self.answered).attrs.remove(&ino);
        // Dropping pages waits for each page a read has locked, and that read is answered
        // by this runtime: never block its workers with it (two such waits deadlocked a
        // mount of four SQLite writers).
        let Some(kernel) = self.kernel.get().cloned() else {
            return;
        };
        let dropped =
            tokio::task::spawn_blocking(move || kernel.inval_inode(fuser::INodeNo(ino), 0, 0))
                .await;
        if let Ok(Err(e)) = dropped {
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::debug!(ino, error = %e, "dropping the kernel's pages failed");
            }
        }
    }

    /// An operation of this mount that may have changed something ended: forget every
    /// answered attribute, and those still in flight. The FUSE adapter calls it after
    /// every operation but the few that only read; closes and fsyncs call it here, when
    /// they commit buffered bytes or free an orphan.
    pub fn mutated(&self) {
        let mut a = lock(&self.answered);
        a.generation += 1;
        if !a.attrs.is_empty() {
            a.attrs = HashMap::new();
        }
    }

    fn answered_generation(&self) -> u64 {
        lock(&self.answered).generation
    }

    /// Keep `attr`, answered to a request that began at `generation`.
    fn keep_answered(&self, generation: u64, attr: &Attr) {
        let mut a = lock(&self.answered);
        if a.generation != generation {
            return;
        }
        if a.attrs.len() >= MAX_ANSWERED_ATTRS {
            a.attrs.clear();
        }
        a.attrs.insert(attr.ino, (attr.clone(), Instant::now()));
    }

    fn fresh_answer(&self, ino: InodeId) -> Option<Attr> {
        let a = lock(&self.answered);
        let (attr, at) = a.attrs.get(&ino)?;
        (at.elapsed() < self.cache_ttl).then(|| attr.clone())
    }

    /// Remember `ino`'s (mtime, ctime, size) at an open; returns what was remembered.
    fn remember_seen(&self, ino: InodeId, now: (i64, i64, u64)) -> Option<(i64, i64, u64)> {
        let mut seen = lock(&self.seen);
        if seen.len() >= MAX_SEEN && !seen.contains_key(&ino) {
            seen.clear();
        }
        seen.insert(ino, now)
    }

    /// This mount committed its own writes to `attr.ino`: they changed its mtime, but what
    /// the kernel cached is still right (it saw those writes), so the next open keeps the
    /// kernel's pages. Every commit, not just the one at close: a database keeps its files
    /// open and fsyncs them, and each new connection's open would otherwise drop the
    /// cached pages of its tables.
    fn committed_here(&self, attr: &Attr) {
        self.remember_seen(attr.ino, (attr.mtime_ns, attr.ctime_ns, attr.size));
    }

    /// The kernel forgot `ino` (FORGET: it holds no reference to it any more): so does
    /// this mount, but for what open handles hold. Forgetting only costs a refetch, so
    /// the per-inode tables stay as small as the kernel's inode cache.
    pub fn forget(&self, ino: InodeId) {
        lock(&self.seen).remove(&ino);
        lock(&self.no_caps).remove(&ino);
        lock(&self.answered).attrs.remove(&ino);
    }

    /// `ino` is known, as of now, to have no `security.capability`.
    fn remember_no_caps(&self, ino: InodeId) {
        let mut known = lock(&self.no_caps);
        if known.len() >= MAX_NO_CAPS {
            let ttl = self.cache_ttl;
            known.retain(|_, at| at.elapsed() < ttl);
            if known.len() >= MAX_NO_CAPS {
                known.clear();
            }
        }
        known.insert(ino, Instant::now());
    }

    /// This mount committed a change to `inode`'s bytes or size: its readers refetch.
    fn changed(&self, inode: &OpenInode) {
        inode.version.fetch_add(1, Ordering::AcqRel);
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn open_inode(&self, ino: InodeId) -> Option<Arc<OpenInode>> {
        lock(&self.inodes).get(&ino).cloned()
    }

    /// The inode open here that `name` in `parent` names, if any (a round only when
    /// something is open): what an unlink or a replacing rename must keep as an orphan.
    async fn open_under(&self, parent: InodeId, name: &[u8]) -> FsResult<Option<Arc<OpenInode>>> {
        if lock(&self.inodes).is_empty() {
            return Ok(None);
        }
        Ok(match self.meta().await?.lookup(parent, name, false).await {
            Ok(a) => self.open_inode(a.ino),
            Err(_) => None,
        })
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        lock(&self.handles)
            .get(&fh)
            .cloned()
            .ok_or(ClientError::Refused(Errno::EBADF))
    }

    /// The attributes as this mount sees them: buffered writes extend the size.
    fn merge(&self, mut attr: Attr) -> Attr {
        if let Some(open) = self.open_inode(attr.ino) {
            attr.size = attr.size.max(open.pending_end.load(Ordering::Acquire));
        }
        attr
    }

    /// An operation answered `attr` for an inode open here: keep its cached attributes
    /// (buffered writes still extend the size and set the times).
    fn refresh_cached(&self, attr: &Attr) {
        let Some(open) = self.open_inode(attr.ino) else {
            return;
        };
        let mut guard = lock(&open.attr);
        let old = guard.0.clone();
        guard.0 = attr.clone();
        if open.pending_end.load(Ordering::Acquire) > 0 {
            guard.0.size = attr.size.max(old.size);
            guard.0.mtime_ns = attr.mtime_ns.max(old.mtime_ns);
            guard.0.ctime_ns = attr.ctime_ns.max(old.ctime_ns);
        }
        guard.1 = Some(Instant::now());
    }

    /// Forget the cached attributes of an inode open here (an operation changed them
    /// without answering them).
    fn invalidate_cached(&self, ino: InodeId) {
        if let Some(open) = self.open_inode(ino) {
            lock(&open.attr).1 = None;
        }
    }

    async fn flush_inode(&self, inode: &OpenInode) -> FsResult<()> {
        let mut w = inode.writer.lock().await;
        if w.needs_commit() {
            let changing = self.deleg.mutation(Touches::write(w.ino()));
            let result = w.flush().await;
            if matches!(&result, Err(e) if e.to_errno() == Errno::EIO) {
                // The commit may still land: cache nothing for a while.
                self.deleg.outcome_unknown();
            }
            // What was committed is cached before the buffer stops extending the size:
            // a stat meanwhile sees one or the other.
            if let Ok(Some((attr, slices))) = &result {
                *lock(&inode.attr) = (attr.clone(), Some(Instant::now()));
                changing.written(attr, slices);
            }
            inode.pending_end.store(w.pending_end(), Ordering::Release);
            self.changed(inode);
            self.mutated();
            if let Ok(Some((attr, _))) = &result {
                self.committed_here(attr);
                self.consider_delegation_writing(attr.subtree);
            }
            result?;
        }
        Ok(())
    }

    /// A lookup answered from the delegated cache, with no round and no wait, if it can
    /// be: the FUSE thread answers it itself.
    pub fn delegated_lookup(&self, parent: InodeId, name: &[u8]) -> Option<FsResult<Attr>> {
        let known = self.deleg.entry(parent, name)?;
        delegation::hit("lookup");
        Some(match known {
            Some(attr) => Ok(self.merge(attr)),
            None => refused(Errno::ENOENT),
        })
    }

    #[instrument(skip(self))]
    pub async fn lookup(&self, parent: InodeId, name: &[u8]) -> FsResult<Attr> {
        if let Some(answer) = self.delegated_lookup(parent, name) {
            return answer;
        }
        if self.deleg.wants_listing(parent) {
            if let Some(answer) = self.lookup_in_listing(parent, name).await? {
                return answer;
            }
        }
        let generation = self.answered_generation();
        let ticket = self.deleg.ticket();
        let attr = match self.meta().await?.lookup(parent, name, false).await {
            Ok(attr) => attr,
            Err(e) => {
                if e.errno() == Some(Errno::ENOENT) {
                    self.deleg.keep_entry(ticket, parent, name, None);
                }
                return Err(e.into());
            }
        };
        self.keep_answered(generation, &attr);
        self.deleg.keep_entry(ticket, parent, name, Some(&attr));
        self.consider_delegation(attr.subtree).await;
        Ok(self.merge(attr))
    }

    /// Fetch `parent`'s whole listing, keep it, and answer the lookup of `name` from it
    /// if the cache now can (`None`: it cannot, or the listing failed; look the name up).
    async fn lookup_in_listing(
        &self,
        parent: InodeId,
        name: &[u8],
    ) -> FsResult<Option<FsResult<Attr>>> {
        let meta = self.meta().await?;
        // After the settle (its commits move the cache's epoch).
        let ticket = self.deleg.ticket();
        let limit = delegation::MAX_LISTING as u32;
        // With attributes: a name the listing has is then answered too.
        let listed = meta.readdir(parent, 0, limit, true, false).await;
        let Ok((entries, eof)) = listed else {
            return Ok(None);
        };
        if eof {
            self.deleg.keep_listing(ticket, parent, &entries);
        } else {
            self.deleg.listing_too_big(parent);
        }
        Ok(self.delegated_lookup(parent, name))
    }

    /// The kernel TTL for an entry (`name` in `parent`) or the attributes of `attr`:
    /// the delegation's length if this mount holds one for it, else `ordinary`.
    pub fn ttl_for(
        &self,
        entry: Option<(InodeId, &[u8])>,
        attr: &Attr,
        ordinary: Duration,
    ) -> KernelTtl {
        self.deleg.ttl(entry, attr, ordinary)
    }

    /// A mutation answered with an error of unknown outcome (it may still commit).
    pub fn outcome_unknown(&self) {
        self.deleg.outcome_unknown();
    }

    /// The kernel TTL for a negative entry.
    pub fn negative_ttl(&self, parent: InodeId, name: &[u8], ordinary: Duration) -> KernelTtl {
        self.deleg.negative_ttl(parent, name, ordinary)
    }

    /// The attributes of `ino` if this mount can answer them without a round: an open
    /// inode's (fresh, or extended by buffered writes), or a closed one's fresh answer.
    pub fn known_attr(&self, ino: InodeId) -> Option<Attr> {
        match self.open_inode(ino) {
            Some(open) => {
                let (attr, at) = lock(&open.attr).clone();
                let fresh = at.is_some_and(|at| at.elapsed() < self.cache_ttl);
                (open.pending_end.load(Ordering::Acquire) > 0 || fresh).then_some(attr)
            }
            None => self.fresh_answer(ino).or_else(|| {
                let a = self.deleg.attr(ino)?;
                delegation::hit("getattr");
                Some(a)
            }),
        }
    }

    /// Whether `name` of `ino` is known, without a round, to be absent (only
    /// `security.capability` is tracked: the kernel asks before every write).
    pub fn known_absent_xattr(&self, ino: InodeId, name: &[u8]) -> bool {
        name == SECURITY_CAPABILITY
            && lock(&self.no_caps)
                .get(&ino)
                .is_some_and(|at| at.elapsed() < self.cache_ttl)
    }

    #[instrument(skip(self))]
    pub async fn getattr(&self, ino: InodeId) -> FsResult<Attr> {
        if let Some(attr) = self.known_attr(ino) {
            return Ok(attr);
        }
        let open = self.open_inode(ino);
        let generation = self.answered_generation();
        let ticket = self.deleg.ticket();
        let attr = self.meta().await?.getattr(ino, false).await?;
        if open.is_none() {
            self.deleg.keep_attr(ticket, &attr);
        }
        self.consider_delegation(attr.subtree).await;
        match &open {
            Some(open) => {
                if open.pending_end.load(Ordering::Acquire) == 0 {
                    *lock(&open.attr) = (attr.clone(), Some(Instant::now()));
                }
            }
            None => self.keep_answered(generation, &attr),
        }
        Ok(self.merge(attr))
    }

    #[instrument(skip(self))]
    pub async fn setattr(&self, ino: InodeId, set: SetAttr, who: Caller) -> FsResult<Attr> {
        let set = self.with_kills(ino, set, who).await?;
        self.setattr_as_asked(ino, set).await
    }

    /// [`MountFs::setattr`] with nothing taken away that `set` does not name.
    async fn setattr_as_asked(&self, ino: InodeId, set: SetAttr) -> FsResult<Attr> {
        let changing = self.deleg.mutation(Touches::inode(ino));
        let open = self.open_inode(ino);
        if let (Some(open), Some(_)) = (&open, set.size) {
            // Buffered writes land before the truncate, as they were issued.
            self.flush_inode(open).await?;
        }
        let attr = self.meta().await?.setattr(ino, &set, None).await?;
        if let Some(open) = &open {
            self.changed(open);
        }
        changing.changed(&attr);
        self.refresh_cached(&attr);
        Ok(self.merge(attr))
    }

    #[instrument(skip(self))]
    pub async fn mknod(
        &self,
        parent: InodeId,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        rdev: u32,
        who: Caller,
    ) -> FsResult<Attr> {
        let changing = self.deleg.mutation(Touches::create(parent, name, None));
        // The namespace applies setgid-directory inheritance itself, atomically.
        let attr = self
            .meta()
            .await?
            .mknod(
                parent,
                name,
                kind,
                mode & 0o7777,
                who.uid,
                who.gid,
                rdev,
                None,
            )
            .await?;
        self.made(&changing, parent, name, &attr);
        Ok(attr)
    }

    /// `attr` was made as `name` in `parent` (a create, mkdir or symlink).
    fn made(&self, changing: &Mutation<'_>, parent: InodeId, name: &[u8], attr: &Attr) {
        changing.created(parent, name, attr);
        self.consider_delegation_writing(attr.subtree);
    }

    #[instrument(skip(self))]
    pub async fn mkdir(
        &self,
        parent: InodeId,
        name: &[u8],
        mode: u32,
        who: Caller,
    ) -> FsResult<Attr> {
        let changing = self.deleg.mutation(Touches::create(parent, name, None));
        let attr = self
            .meta()
            .await?
            .mkdir(parent, name, mode & 0o7777, who.uid, who.gid, None)
            .await?;
        self.made(&changing, parent, name, &attr);
        Ok(attr)
    }

    #[instrument(skip(self))]
    pub async fn symlink(
        &self,
        parent: InodeId,
        name: &[u8],
        target: &[u8],
        who: Caller,
    ) -> FsResult<Attr> {
        let changing = self.deleg.mutation(Touches::create(parent, name, None));
        let attr = self
            .meta()
            .await?
            .symlink(parent, name, target, who.uid, who.gid, None)
            .await?;
        self.made(&changing, parent, name, &attr);
        Ok(attr)
    }

    #[instrument(skip(self))]
    pub async fn readlink(&self, ino: InodeId) -> FsResult<Vec<u8>> {
        Ok(self.meta().await?.readlink(ino, false).await?)
    }

    #[instrument(skip(self))]
    pub async fn unlink(&self, parent: InodeId, name: &[u8]) -> FsResult<()> {
        if self.unlink_back(parent, name).await {
            return Ok(());
        }
        let changing = self.deleg.mutation(Touches::remove(&[(parent, name)]));
        // A file open here stays usable through its handles until the last one closes.
        let open = self.open_under(parent, name).await?;
        if let Some(open) = &open {
            open.orphan.store(true, Ordering::Release);
        }
        let (_, nlink) = self
            .meta()
            .await?
            .unlink_open(parent, name, None, open.is_some())
            .await?;
        changing.removed(parent, name);
        if let Some(open) = &open {
            let mut guard = lock(&open.attr);
            guard.0.nlink = nlink;
            guard.0.ctime_ns = wall_clock_ns();
            guard.1 = None;
        }
        Ok(())
    }

    #[instrument(skip(self))]
    pub async fn rmdir(&self, parent: InodeId, name: &[u8]) -> FsResult<()> {
        let changing = self.deleg.mutation(Touches::remove(&[(parent, name)]));
        self.meta().await?.rmdir(parent, name, None).await?;
        changing.removed(parent, name);
        Ok(())
    }

    #[instrument(skip(self))]
    pub async fn rename(
        &self,
        parent: InodeId,
        name: &[u8],
        new_parent: InodeId,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        let _changing = self
            .deleg
            .mutation(Touches::remove(&[(parent, name), (new_parent, new_name)]));
        // A file it replaces that is open here stays usable through its handles until
        // the last one closes, as after an unlink.
        let replaced = match flags & RENAME_EXCHANGE {
            0 => self.open_under(new_parent, new_name).await?,
            _ => None,
        };
        let flags = match &replaced {
            Some(_) => flags | RENAME_KEEP_OPEN,
            None => flags,
        };
        if let Some(open) = &replaced {
            open.orphan.store(true, Ordering::Release);
        }
        // Which inodes move is not answered: look the (few) open ones up again.
        self.meta()
            .await?
            .rename(parent, name, new_parent, new_name, flags, None)
            .await?;
        let open: Vec<InodeId> = lock(&self.inodes).keys().copied().collect();
        for ino in open {
            self.invalidate_cached(ino);
        }
        Ok(())
    }

    #[instrument(skip(self))]
    pub async fn link(&self, ino: InodeId, new_parent: InodeId, new_name: &[u8]) -> FsResult<Attr> {
        let changing = self
            .deleg
            .mutation(Touches::create(new_parent, new_name, Some(ino)));
        let attr = self
            .meta()
            .await?
            .link(ino, new_parent, new_name, None)
            .await?;
        changing.created(new_parent, new_name, &attr);
        self.refresh_cached(&attr);
        Ok(self.merge(attr))
    }

    /// Open `ino`; returns the handle, and whether the kernel may keep the pages it
    /// cached.
    /// An open answered from the delegated cache, with no round and no wait, if it can
    /// be (the FUSE thread answers it itself): the handle, and whether the kernel may
    /// keep its pages.
    pub fn delegated_open(&self, ino: InodeId) -> Option<(u64, bool)> {
        let changes = self.changes.load(Ordering::Acquire);
        let (attr, map) = self.deleg.opened(ino)?;
        let subtree = attr.subtree;
        // Delegated: nobody else can have changed it since this mount read it.
        delegation::hit("open");
        let (fh, keep_cache) = self.open_as(ino, attr);
        // A commit here since the map was read: the first read fetches a fresh one.
        let unchanged = self.changes.load(Ordering::Acquire) == changes;
        if let (Ok(h), true) = (self.handle(fh), unchanged) {
            let version = h.inode.version.load(Ordering::Acquire);
            let reader = self.client.reader_with(ino, map).in_subtree(subtree);
            *lock(&h.reader) = Some((version, Arc::new(reader)));
        }
        Some((fh, keep_cache))
    }

    #[instrument(skip(self))]
    pub async fn open(&self, ino: InodeId) -> FsResult<(u64, bool)> {
        // Keep the kernel's cached pages only if the file is as it was at the last open
        // (close-to-open: a change made elsewhere is seen at open).
        // One round for a regular file: its attributes and first slice map together,
        // so the first read needs no metadata call (the reader then sees the file as of
        // this open, as close-to-open asks).
        if let Some(opened) = self.delegated_open(ino) {
            return Ok(opened);
        }
        let changes = self.changes.load(Ordering::Acquire);
        let generation = self.answered_generation();
        let ticket = self.deleg.ticket();
        // The reader asks the metadata itself: the file made first, if it was created
        // here (what else this mount answered cannot change this file's map; its own
        // buffered writes are its open inode's, which the open shares).
        self.meta_about(ino).await?;
        let opened = match self.client.open_reader(ino).await {
            Ok(Some((attr, reader))) => Ok((attr, Some(reader))),
            Ok(None) => self
                .meta_about(ino)
                .await?
                .getattr(ino, false)
                .await
                .map(|a| (a, None))
                .map_err(ClientError::from),
            Err(e) => Err(e),
        };
        let (attr, reader) = match opened {
            // The kernel's entry named an inode another mount has deleted since: ESTALE
            // makes it look the name up again and retry the open (as NFS does).
            Err(e) if e.to_errno() == Errno::ENOENT => return refused(Errno::ESTALE),
            // Unlinked, and alive only for another mount's open handles: the kernel's
            // entry is stale here too. Opening it would hand out what is no longer at
            // that name (SQLite took another mount's deleted journal for a hot one and
            // rolled back a committed transaction).
            Ok((a, _)) if a.nlink == 0 && self.open_inode(ino).is_none() => {
                return refused(Errno::ESTALE)
            }
            other => other?,
        };
        // What the open saw replaces an older answer: a stat after this file is closed
        // again never shows the file as it was before this open.
        self.keep_answered(generation, &attr);
        let subtree = attr.subtree;
        let (fh, keep_cache) = self.open_as(ino, attr.clone());
        if !keep_cache {
            // The file changed since the kernel may have cached its attributes (a stat
            // here before a change elsewhere): drop them, or a read would stop at the
            // size the kernel remembers (close-to-open).
            self.forget_kernel_attrs(ino);
        }
        // A flush here since the fetch may have committed bytes the map predates.
        let unchanged = self.changes.load(Ordering::Acquire) == changes;
        if let (Some(reader), Ok(h), true) = (reader, self.handle(fh), unchanged) {
            if let Some(map) = reader.slice_map().await {
                self.deleg.keep_opened(ticket, &attr, map);
            }
            let version = h.inode.version.load(Ordering::Acquire);
            *lock(&h.reader) = Some((version, Arc::new(reader)));
        }
        self.consider_delegation(subtree).await;
        Ok((fh, keep_cache))
    }

    /// Open `ino`, whose attributes were just answered by the metadata service.
    fn open_as(&self, ino: InodeId, attr: Attr) -> (u64, bool) {
        let now = (attr.mtime_ns, attr.ctime_ns, attr.size);
        let keep_cache = self.remember_seen(ino, now) == Some(now);
        let inode = {
            let mut inodes = lock(&self.inodes);
            let inode = inodes
                .entry(ino)
                .or_insert_with(|| {
                    Arc::new(OpenInode {
                        writer: tokio::sync::Mutex::new(self.client.writer(ino)),
                        handles: AtomicU64::new(0),
                        version: AtomicU64::new(0),
                        pending_end: AtomicU64::new(0),
                        orphan: AtomicBool::new(false),
                        written_back: AtomicBool::new(false),
                        attr: Mutex::new((attr.clone(), Some(Instant::now()))),
                    })
                })
                .clone();
            // Counted under the table's lock: a last close meanwhile must not drop an
            // entry this open is about to use.
            inode.handles.fetch_add(1, Ordering::AcqRel);
            inode
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(Handle {
            ino,
            inode,
            reader: Mutex::new(None),
        });
        lock(&self.handles).insert(fh, handle);
        (fh, keep_cache)
    }

    #[instrument(skip(self))]
    pub async fn create(
        &self,
        parent: InodeId,
        name: &[u8],
        mode: u32,
        flags: i32,
        who: Caller,
    ) -> FsResult<(Attr, u64)> {
        if let Some(made) = self.deferred_create(parent, name, mode, who).await {
            return Ok(made);
        }
        let attr = match self
            .mknod(parent, name, FileKind::Regular, mode, 0, who)
            .await
        {
            // The kernel's negative entry was stale (another mount made the name since):
            // without O_EXCL, open what is there, as a local create would.
            Err(e) if e.to_errno() == Errno::EEXIST && flags & libc::O_EXCL == 0 => {
                return self.open_existing(parent, name, flags, who).await;
            }
            other => other?,
        };
        // The create answered the attributes: no second round to open what it made.
        let (fh, _) = self.open_as(attr.ino, attr.clone());
        // A file just made has no xattrs: the kernel's question before the first write
        // needs no round either.
        self.remember_no_caps(attr.ino);
        Ok((attr, fh))
    }

    /// `create` found the name taken: open that file instead. The kernel believes it made
    /// the file, so it neither checks write permission nor truncates: this does both.
    async fn open_existing(
        &self,
        parent: InodeId,
        name: &[u8],
        flags: i32,
        who: Caller,
    ) -> FsResult<(Attr, u64)> {
        let attr = self.meta().await?.lookup(parent, name, false).await?;
        if attr.kind != FileKind::Regular {
            return refused(Errno::EEXIST);
        }
        let writable = match (who.uid, who.gid) {
            (0, _) => true,
            (uid, _) if uid == attr.uid => attr.mode & 0o200 != 0,
            (_, gid) if gid == attr.gid => attr.mode & 0o020 != 0,
            _ => attr.mode & 0o002 != 0,
        };
        if !writable {
            return refused(Errno::EACCES);
        }
        let (fh, _) = self.open(attr.ino).await?;
        if flags & libc::O_TRUNC != 0 {
            let set = SetAttr {
                size: Some(0),
                ..SetAttr::default()
            };
            let truncated = self.setattr(attr.ino, set, who).await?;
            return Ok((truncated, fh));
        }
        Ok((self.merge(attr), fh))
    }

    /// Committed bytes with this mount's buffered writes laid over them.
    #[instrument(skip(self))]
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let h = self.handle(fh)?;
        // With nothing buffered, read without the writer's lock, so reads of one file
        // (several handles, or the kernel's concurrent readahead) run in parallel. A
        // flush or truncate that commits meanwhile bumps the version: read again.
        for _ in 0..CLEAN_READ_ATTEMPTS {
            let version = {
                let writer = h.inode.writer.lock().await;
                if writer.needs_commit() {
                    break;
                }
                h.inode.version.load(Ordering::Acquire)
            };
            let reader = self.reader_at(&h, version);
            let (committed, _) = reader.read_sized(offset, u64::from(size)).await?;
            if h.inode.version.load(Ordering::Acquire) == version {
                return Ok(committed);
            }
        }
        // Writes are buffered: the writer stays locked throughout, so a flush cannot move
        // bytes between the committed file and the buffer meanwhile.
        let writer = h.inode.writer.lock().await;
        if !writer.is_made() {
            // Answered created here and not yet made: nothing committed to read.
            return Ok(writer.overlay(offset, u64::from(size), Vec::new(), 0));
        }
        let version = h.inode.version.load(Ordering::Acquire);
        let reader = self.reader_at(&h, version);
        let (committed, committed_size) = reader.read_sized(offset, u64::from(size)).await?;
        if !writer.is_dirty() {
            return Ok(committed);
        }
        Ok(writer.overlay(offset, u64::from(size), committed, committed_size))
    }

    /// A read answered from memory with no wait, if it can be (the FUSE thread answers
    /// it itself): nothing buffered for the file, its window and blocks in memory. Call
    /// inside the runtime's context.
    pub fn read_cached(&self, fh: u64, offset: u64, size: u32) -> Option<Vec<u8>> {
        let h = self.handle(fh).ok()?;
        let version = {
            let writer = h.inode.writer.try_lock().ok()?;
            if writer.needs_commit() {
                return None;
            }
            h.inode.version.load(Ordering::Acquire)
        };
        let reader = self.reader_at(&h, version);
        let (bytes, _) = reader.read_cached(offset, u64::from(size))?;
        // A commit meanwhile: the long way reads again.
        (h.inode.version.load(Ordering::Acquire) == version).then_some(bytes)
    }

    /// The handle's reader for the inode's `version` (a new one if it changed since).
    fn reader_at(&self, h: &Handle, version: u64) -> Arc<FileReader> {
        let mut slot = lock(&h.reader);
        match &*slot {
            Some((v, r)) if *v == version => r.clone(),
            _ => {
                let subtree = lock(&h.inode.attr).0.subtree;
                let r = Arc::new(self.client.reader(h.ino).in_subtree(subtree));
                *slot = Some((version, r.clone()));
                r
            }
        }
    }

    /// `kill_suidgid`: the kernel flagged the write (its caller, `who`, lacks
    /// `CAP_FSETID`), so it takes the file's set-ID bits away (see `privileges`).
    #[instrument(skip(self, data), fields(len = data.len()))]
    pub async fn write(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
        who: Caller,
    ) -> FsResult<u32> {
        let h = self.handle(fh)?;
        let len = u32::try_from(data.len()).map_err(|_| ClientError::Refused(Errno::EINVAL))?;
        self.kill_for_write(h.ino, &h.inode, kill_suidgid, who)
            .await?;
        let mut w = h.inode.writer.lock().await;
        // A write that fills the buffer commits: forget the file's cached attributes and
        // map before the commit, as a flush does, not after it.
        let plan = w.plan(data.len());
        let _changing = (!data.is_empty() && w.may_flush(plan))
            .then(|| self.deleg.mutation(Touches::inode(h.ino)));
        let result = w.write_planned(offset, data, plan).await;
        self.buffered(&h.inode, &w, offset, data.len(), result.is_ok());
        if !data.is_empty() && !w.is_dirty() {
            // The buffer filled and was flushed: readers must refetch, and nothing cached
            // from before (or during) the commit may be trusted.
            self.changed(&h.inode);
        }
        result?;
        Ok(len)
    }

    /// A write answered on the FUSE thread, with no wait: `None` if it must go the long
    /// way ([`MountFs::write`]): it would fill its buffer and commit, the writer is busy
    /// (a flush), or something may have to be taken away first (`privileges`). Call
    /// inside the runtime (storing ahead spawns on it). Saves the two thread hand-offs
    /// of an answer from the runtime, most of a small write's time on a loaded machine.
    pub fn write_now(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
        who: Caller,
    ) -> Option<FsResult<u32>> {
        let h = self.handle(fh).ok()?;
        let len = u32::try_from(data.len()).ok()?;
        if !self.nothing_to_kill(h.ino, &h.inode, kill_suidgid, who) {
            return None;
        }
        let mut w = h.inode.writer.try_lock().ok()?;
        let plan = w.plan(data.len());
        if data.is_empty() || w.may_flush(plan) {
            return None;
        }
        let result = w.write_buffered(offset, data, plan);
        self.buffered(&h.inode, &w, offset, data.len(), result.is_ok());
        Some(result.map(|()| len))
    }

    /// After a write was buffered (`ok`) or refused: what readers and `stat` see of the
    /// buffer, the size and times it gives the file.
    fn buffered(&self, inode: &OpenInode, w: &FileWriter, offset: u64, len: usize, ok: bool) {
        inode.pending_end.store(w.pending_end(), Ordering::Release);
        if ok && w.is_dirty() {
            let mut guard = lock(&inode.attr);
            let cached = &mut guard.0;
            let now = wall_clock_ns();
            cached.size = cached.size.max(offset + len as u64);
            cached.mtime_ns = now;
            cached.ctime_ns = now;
        }
    }

    /// Make a handle's inode's buffered writes durable (fsync; a close that may not
    /// be written back).
    #[instrument(skip(self))]
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        if let Some(e) = self.write_back.take_lost(h.ino) {
            return Err(ClientError::Refused(e));
        }
        self.flush_inode(&h.inode).await
    }

    #[instrument(skip(self))]
    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        // A close written back is committing in the background already.
        let result = if h.inode.written_back.load(Ordering::Acquire) {
            Ok(())
        } else {
            self.flush_inode(&h.inode).await
        };
        if self.drop_handle(fh, &h) {
            self.release_orphan(h.ino).await?;
        }
        result
    }

    /// Forget handle `fh`; returns whether it was the last one of an unlinked file (which
    /// the caller then frees with [`MountFs::release_orphan`]).
    fn drop_handle(&self, fh: u64, h: &Handle) -> bool {
        lock(&self.handles).remove(&fh);
        if h.inode.handles.fetch_sub(1, Ordering::AcqRel) != 1 {
            return false;
        }
        self.close_if_unused(h.ino, &h.inode)
    }

    /// `inode` is closed here if no handle is open on it (reopened meanwhile?) and no
    /// write-back of it waits; returns whether it was unlinked (the caller frees it).
    fn close_if_unused(&self, ino: InodeId, inode: &Arc<OpenInode>) -> bool {
        let mut inodes = lock(&self.inodes);
        let unused = inode.handles.load(Ordering::Acquire) == 0
            && !inode.written_back.load(Ordering::Acquire)
            && inodes.get(&ino).is_some_and(|i| Arc::ptr_eq(i, inode));
        if unused {
            inodes.remove(&ino);
        }
        unused && inode.orphan.load(Ordering::Acquire)
    }

    /// Free an unlinked file whose last handle here closed.
    pub async fn release_orphan(&self, ino: InodeId) -> FsResult<()> {
        let _changing = self.deleg.mutation(Touches::inode(ino));
        let released = self.meta().await?.release_orphan(ino).await;
        self.mutated();
        Ok(released?)
    }

    /// Whether handle `fh` has nothing buffered to commit (so a close needs no round).
    fn is_clean(&self, fh: u64) -> bool {
        self.handle(fh)
            .is_ok_and(|h| h.inode.writer.try_lock().is_ok_and(|w| !w.needs_commit()))
    }

    /// A close (FLUSH) by `owner` answered with no wait, if it can be: nothing buffered,
    /// no lock of the owner's to drop. Called on the FUSE thread.
    pub fn flush_if_clean(&self, fh: u64, ino: InodeId, owner: u64) -> bool {
        self.is_clean(fh) && self.holds_no_lock(ino, owner) && !self.write_back.has_lost(ino)
    }

    /// The last close of a handle (RELEASE) with nothing buffered, done with no wait
    /// (called on the FUSE thread): `None` if it must go the long way; else whether an
    /// unlinked file must still be freed.
    pub fn release_if_clean(&self, fh: u64) -> Option<bool> {
        if !self.is_clean(fh) {
            return None;
        }
        let h = self.handle(fh).ok()?;
        Some(self.drop_handle(fh, &h))
    }

    /// Flush every open inode of `subtree` (a recall of its delegation). Returns how many
    /// failed.
    async fn flush_subtree(&self, subtree: InodeId) -> usize {
        let open: Vec<Arc<OpenInode>> = lock(&self.inodes)
            .values()
            .filter(|i| lock(&i.attr).0.subtree == subtree)
            .cloned()
            .collect();
        let mut failed = 0;
        for inode in open {
            if let Err(e) = self.flush_inode(&inode).await {
                tracing::error!(error = %e, subtree, "flushing at a recall failed");
                failed += 1;
            }
        }
        failed
    }

    /// Flush every open inode (clean shutdown). Returns how many failed.
    pub async fn flush_all(&self) -> usize {
        let open: Vec<Arc<OpenInode>> = lock(&self.inodes).values().cloned().collect();
        let mut failed = 0;
        for inode in open {
            if let Err(e) = self.flush_inode(&inode).await {
                tracing::error!(error = %e, "flushing at shutdown failed");
                failed += 1;
            }
        }
        failed
    }

    /// Entries' attributes as this mount answers them ([`MountFs::merge`]).
    fn merge_entries(&self, entries: &mut [DirEntry]) {
        for e in entries {
            if let Some(a) = e.attr.take() {
                e.attr = Some(self.merge(a));
            }
        }
    }

    /// Entries of a directory after `cookie`, at most one batch; `fh`: the handle's
    /// (OPENDIR) last batch answers if it can (`dir_handles.rs`).
    #[instrument(skip(self))]
    pub async fn readdir(
        &self,
        ino: InodeId,
        fh: u64,
        cookie: u64,
        plus: bool,
    ) -> FsResult<DirPage> {
        if let Some(page) = self.answer_from_batch(fh, ino, cookie, plus) {
            return Ok(page);
        }
        if known_listing::is_local(cookie) {
            return self.resume_in_inode_order(fh, ino, cookie, plus).await;
        }
        if let Some(page) = self.deleg.listing(ino, cookie, plus) {
            delegation::hit("readdir");
            if !plus {
                return Ok(page);
            }
            let mut merged = page.entries().to_vec();
            self.merge_entries(&mut merged);
            return Ok(DirPage::whole(Arc::new(merged)));
        }
        // With no TTL a handle keeps no batch, and each page would build it all again.
        if cookie <= 2 && !self.cache_ttl.is_zero() {
            if let Some(entries) = self.deleg.known_listing(ino, plus) {
                delegation::hit("readdir");
                return Ok(self.keep_in_inode_order(fh, ino, cookie, plus, entries));
            }
        }
        let ticket = self.deleg.ticket();
        let whole = cookie <= 2 && self.deleg.wants_whole_listing(ino);
        let limit = match whole {
            true => delegation::MAX_LISTING as u32,
            false => READDIR_BATCH,
        };
        let (mut entries, eof, fetched) = match self.take_prefetch(fh, ino, cookie, plus).await {
            Some(prefetched) => prefetched,
            None => {
                let fetched = Instant::now();
                let (entries, eof) = self
                    .meta()
                    .await?
                    .readdir(ino, cookie, limit, plus, false)
                    .await?;
                (entries, eof, fetched)
            }
        };
        // Entries' cookies start at 3 (1 and 2 are "." and ".."): from 2 is all of it.
        if cookie <= 2 && eof {
            self.deleg.keep_listing(ticket, ino, &entries);
        } else if whole {
            self.deleg.listing_too_big(ino);
        }
        self.merge_entries(&mut entries);
        let entries = Arc::new(entries);
        self.keep_batch(fh, ino, plus, &entries, eof, fetched);
        if !eof {
            self.prefetch_after(fh, ino, plus, &entries);
        }
        Ok(DirPage::whole(entries))
    }

    #[instrument(skip(self))]
    pub async fn statfs(&self) -> FsResult<StatFs> {
        Ok(self.meta().await?.statfs(false).await?)
    }

    #[instrument(skip(self, value), fields(len = value.len()))]
    pub async fn setxattr(
        &self,
        ino: InodeId,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        let _changing = self.deleg.mutation(Touches::inode(ino));
        if name == SECURITY_CAPABILITY {
            lock(&self.no_caps).remove(&ino);
        }
        self.meta()
            .await?
            .setxattr(ino, name, value, flags, None)
            .await?;
        self.invalidate_cached(ino);
        Ok(())
    }

    #[instrument(skip(self))]
    pub async fn getxattr(&self, ino: InodeId, name: &[u8]) -> FsResult<Vec<u8>> {
        let caps = name == SECURITY_CAPABILITY;
        if self.known_absent_xattr(ino, name) {
            return refused(Errno::ENODATA);
        }
        let result = self.meta_about(ino).await?.getxattr(ino, name, false).await;
        if caps && matches!(&result, Err(e) if e.to_errno() == Errno::ENODATA) {
            self.remember_no_caps(ino);
        }
        Ok(result?)
    }

    #[instrument(skip(self))]
    pub async fn listxattr(&self, ino: InodeId) -> FsResult<Vec<Vec<u8>>> {
        Ok(self.meta_about(ino).await?.listxattr(ino, false).await?)
    }

    /// The metadata client for a read about `ino` alone (its map at an open, its extended
    /// attributes), which what this mount answered and has not committed cannot change,
    /// unless `ino` is a create not made yet: only then is everything settled first
    /// ([`MountFs::meta`]). Each open of a file not in the delegation's cache, and the
    /// kernel's question for `security.capability` before its first write, settling
    /// everything made each close written back commit at the next file's open, alone.
    async fn meta_about(&self, ino: InodeId) -> FsResult<&mobilus_meta_client::MetaClient> {
        if self.unmade(ino) {
            return self.meta().await;
        }
        Ok(self.client.meta())
    }

    #[instrument(skip(self))]
    pub async fn removexattr(&self, ino: InodeId, name: &[u8]) -> FsResult<()> {
        let _changing = self.deleg.mutation(Touches::inode(ino));
        self.meta().await?.removexattr(ino, name, None).await?;
        self.invalidate_cached(ino);
        Ok(())
    }
}
