//! The fuser adapter: each callback decodes its request, runs the typed [`MountFs`]
//! operation (polled once on the FUSE thread, then on the tokio runtime if it must wait,
//! so slow operations never block a FUSE thread), and encodes the reply. Errors map to
//! errnos here, once (`ClientError::to_errno`).

use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno as FuseErrno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use mobilus_proto::fs::{Attr, FileKind, LockKind, SetAttr, TimeSet, XATTR_CREATE, XATTR_REPLACE};
use mobilus_proto::status::Errno;
use tokio::runtime::Handle as Runtime;

use super::ops::{Caller, FsResult, MountFs};
use crate::client::ClientError;

/// Kernel settings, chosen and measured (see ARCHITECTURE.md, "The mount").
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// How long the kernel may trust attributes and entries.
    pub attr_ttl: Duration,
    pub max_write: u32,
    pub max_background: u16,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            attr_ttl: Duration::from_secs(1),
            max_write: 1 << 20,
            max_background: 64,
        }
    }
}

/// Help texts of the mount's metrics (call after installing the recorder).
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(
        "mobilus_fuse_ops_total",
        "FUSE operations answered, by op and outcome"
    );
    describe_histogram!(
        "mobilus_fuse_op_seconds",
        Unit::Seconds,
        "Time to answer a FUSE operation, by op"
    );
    describe_counter!(
        "mobilus_fuse_on_thread_answers_total",
        "Operations answered on the thread that read them from the kernel, by op"
    );
    describe_histogram!(
        "mobilus_client_flush_stage_seconds",
        Unit::Seconds,
        "Time of each stage of a flush, as the mount sees it: `upload` (chunks stored at \
         the site's data nodes) and `commit` (the slices committed)"
    );
    describe_counter!(
        "mobilus_client_chunks_sent_total",
        "Chunks uploaded to this site's data node"
    );
    describe_counter!(
        "mobilus_client_bytes_sent_total",
        Unit::Bytes,
        "Bytes of chunks uploaded"
    );
    describe_counter!(
        "mobilus_client_chunks_deduped_total",
        "Chunks not uploaded because the site had them"
    );
    describe_counter!(
        "mobilus_client_remote_fetches_total",
        "Chunks read from another site (on demand)"
    );
    describe_counter!(
        "mobilus_client_remote_fetch_bytes_total",
        Unit::Bytes,
        "Bytes read from another site"
    );
    describe_counter!(
        "mobilus_client_remote_range_reads_total",
        "Faults answered with only the blocks they needed from another site"
    );
    describe_counter!(
        "mobilus_client_remote_range_bytes_total",
        Unit::Bytes,
        "Bytes of blocks and outboards read from another site for those faults"
    );
    describe_counter!(
        "mobilus_client_stale_chunk_retries_total",
        "Flushes retried because garbage collection raced with them"
    );
}

pub struct FuseAdapter {
    fs: Arc<MountFs>,
    rt: Runtime,
    tuning: Tuning,
}

impl FuseAdapter {
    pub fn new(fs: Arc<MountFs>, rt: Runtime, tuning: Tuning) -> Self {
        FuseAdapter { fs, rt, tuning }
    }

    /// Run `op`, then `reply` with its result: polled first here, on the FUSE thread, and
    /// handed to the runtime only if it must wait. An operation answered from memory (a
    /// create or a close under a delegation, a write-back's release) then ends without
    /// two hand-offs between threads, which cost more than the answer: a delegated
    /// create, its close and its release took 35, 32 and 30 µs through the runtime, and
    /// take 17, 11 and 3 µs here.
    /// Counted and timed as `name` (`mobilus_fuse_ops_total`, `mobilus_fuse_op_seconds`).
    fn run<T, F, Fut>(
        &self,
        name: &'static str,
        op: F,
        reply: impl FnOnce(FsResult<T>) + Send + 'static,
    ) where
        T: Send + 'static,
        F: FnOnce(Arc<MountFs>) -> Fut,
        Fut: Future<Output = FsResult<T>> + Send + 'static,
    {
        let start = std::time::Instant::now();
        let fs = self.fs.clone();
        // Spawns, timers and blocking work it starts belong to the runtime.
        let _runtime = self.rt.enter();
        let fut = op(self.fs.clone());
        let mut answer = Box::pin(async move {
            let mut result = fut.await;
            if BY_INODE_OPS.contains(&name) {
                result = stale_if_gone(result);
            }
            // Before the kernel hears the answer: its next request must not be served
            // attributes answered before this operation ended.
            if !READ_ONLY_OPS.contains(&name) {
                fs.mutated();
                // A change whose outcome is unknown (a timeout) may still commit later.
                if matches!(&result, Err(e) if e.to_errno() == Errno::EIO) {
                    fs.outcome_unknown();
                }
            }
            record(name, result.is_ok(), start);
            reply(result)
        });
        // Polled with a waker that does nothing: a future that must wait is polled again
        // by its task, and every wait it then registers wakes that task.
        let mut cx = Context::from_waker(Waker::noop());
        // A panic ends the operation, not the FUSE thread (as a task's would on the
        // runtime): its reply is dropped with it, and the kernel hears EIO.
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            answer.as_mut().poll(&mut cx)
        }));
        match polled {
            Ok(Poll::Pending) => drop(self.rt.spawn(answer)),
            Ok(Poll::Ready(())) => count_answered_here(name),
            Err(_) => tracing::error!(op = name, "a FUSE operation panicked"),
        }
    }
}

/// The operations the kernel addresses to an inode by its number (not to a name in a
/// directory). Its inode gone means the kernel's handle is stale: another mount renamed
/// over it or removed it (this mount's own removals keep open files alive).
const BY_INODE_OPS: &[&str] = &[
    "getattr",
    "setattr",
    "readlink",
    "read",
    "write",
    "flush",
    "fsync",
    "getlk",
    "setlk",
    "readdir",
    "readdirplus",
    "setxattr",
    "getxattr",
    "listxattr",
    "removexattr",
];

/// ENOENT for an inode addressed by number becomes ESTALE, as over NFS: the kernel then
/// looks the path up again and retries a stat or an open (a permission check on an open
/// asks for the attributes of the inode its cached entry names), where ENOENT would tell
/// the caller that a file which never stopped existing is absent.
fn stale_if_gone<T>(result: FsResult<T>) -> FsResult<T> {
    match result {
        Err(e) if e.to_errno() == Errno::ENOENT => Err(ClientError::Refused(Errno::ESTALE)),
        other => other,
    }
}

/// Answer a write.
fn written(reply: ReplyWrite, result: FsResult<u32>) {
    match result {
        Ok(n) => reply.written(n),
        Err(e) => reply.error(errno(&e)),
    }
}

/// Count and time one operation answered on the FUSE thread that read it.
fn answered_here(name: &'static str, ok: bool, start: std::time::Instant) {
    count_answered_here(name);
    record(name, ok, start);
}

/// Count one operation answered on the FUSE thread (`run` times its own).
fn count_answered_here(name: &'static str) {
    metrics::counter!("mobilus_fuse_on_thread_answers_total", "op" => name).increment(1);
}

/// Count and time one operation.
fn record(name: &'static str, ok: bool, start: std::time::Instant) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::counter!("mobilus_fuse_ops_total", "op" => name, "outcome" => outcome).increment(1);
    metrics::histogram!("mobilus_fuse_op_seconds", "op" => name)
        .record(start.elapsed().as_secs_f64());
}

/// The operations that change nothing, neither at the metadata service nor in this
/// mount's buffers; every other one ends with [`MountFs::mutated`] (so a new operation is
/// a mutation until it is listed here). Closes and fsyncs are listed because they change
/// something only by committing buffered bytes or freeing an orphan, which call
/// `mutated` themselves: closing a file that was only read forgets nothing.
const READ_ONLY_OPS: &[&str] = &[
    "flush",
    "release",
    "fsync",
    "lookup",
    "getattr",
    "readlink",
    "open",
    "read",
    "readdir",
    "readdirplus",
    "statfs",
    "getxattr",
    "listxattr",
    "getlk",
];

/// fcntl's lock type as a lock request.
fn lock_kind(typ: i32) -> Option<LockKind> {
    match typ {
        libc::F_RDLCK => Some(LockKind::Read),
        libc::F_WRLCK => Some(LockKind::Write),
        libc::F_UNLCK => Some(LockKind::Unlock),
        _ => None,
    }
}

fn errno(e: &ClientError) -> FuseErrno {
    if let ClientError::Meta(
        m @ (mobilus_meta_client::ClientError::NotOwner(_)
        | mobilus_meta_client::ClientError::LeaseExpired(_)
        | mobilus_meta_client::ClientError::StaleEpoch(_)),
    ) = e
    {
        log_read_only(m);
    }
    let code = e.to_errno();
    tracing::debug!(error = %e, errno = code.0, "answering an error");
    if code == Errno::EIO {
        log_io_error(e);
    }
    FuseErrno::from_i32(code.0)
}

/// True at most once a second per `last`: a failure that repeats is said, not flooded.
fn once_a_second(last: &Mutex<Option<Instant>>) -> bool {
    let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
    let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
    if due {
        *last = Some(Instant::now());
    }
    due
}

/// Say why a write was refused as read-only (another site owns the subtree, or this
/// site's lease ran out), at most once a second.
fn log_read_only(why: &mobilus_meta_client::ClientError) {
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    if once_a_second(&LAST) {
        tracing::warn!(%why, "write refused: read-only here (EROFS)");
    }
}

/// Say what an application's EIO stands for: it names nothing itself.
fn log_io_error(why: &ClientError) {
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    if once_a_second(&LAST) {
        tracing::warn!(%why, "answering EIO");
    }
}

fn refuse(e: Errno) -> FuseErrno {
    FuseErrno::from_i32(e.0)
}

fn time(ns: i64) -> SystemTime {
    let d = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

fn ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Regular => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn kind_of_mode(mode: u32) -> Option<FileKind> {
    match mode & libc::S_IFMT {
        libc::S_IFREG | 0 => Some(FileKind::Regular),
        libc::S_IFIFO => Some(FileKind::Fifo),
        libc::S_IFSOCK => Some(FileKind::Socket),
        libc::S_IFCHR => Some(FileKind::CharDevice),
        libc::S_IFBLK => Some(FileKind::BlockDevice),
        _ => None,
    }
}

/// `st_blksize`: large, so tools like `cp` and `dd` move data in big I/Os.
const BLKSIZE: u32 = 1 << 20;

pub fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: time(a.atime_ns),
        mtime: time(a.mtime_ns),
        ctime: time(a.ctime_ns),
        crtime: time(a.ctime_ns),
        kind: file_type(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        flags: 0,
        blksize: BLKSIZE,
    }
}

/// What a lookup answers for a name that does not exist: inode 0.
fn negative_entry() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        flags: 0,
        blksize: BLKSIZE,
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::Ns(ns(t)),
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn name(n: &OsStr) -> Vec<u8> {
    n.as_bytes().to_vec()
}

/// The xattr reply protocol: a size probe (size 0), data that fits, or ERANGE.
fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() <= size as usize {
        reply.data(data);
    } else {
        reply.error(FuseErrno::ERANGE);
    }
}

/// The reply of an operation that answers nothing but success or an errno.
fn empty(reply: ReplyEmpty) -> impl FnOnce(FsResult<()>) + Send + 'static {
    move |r| match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

/// The reply of an operation that answers a directory entry.
fn entry(reply: ReplyEntry, ttl: Duration) -> impl FnOnce(FsResult<Attr>) + Send + 'static {
    move |r| match r {
        Ok(a) => reply.entry(&ttl, &file_attr(&a), Generation(a.generation)),
        Err(e) => reply.error(errno(&e)),
    }
}

/// The reply of an operation that answers attributes.
fn attr(reply: ReplyAttr, ttl: Duration) -> impl FnOnce(FsResult<Attr>) + Send + 'static {
    move |r| match r {
        Ok(a) => reply.attr(&ttl, &file_attr(&a)),
        Err(e) => reply.error(errno(&e)),
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each setting is best effort: an older kernel keeps its own limit.
        let _ = config.set_max_write(self.tuning.max_write);
        // The kernel offers its default (128 KiB) and refuses more here; `mount::spawn`
        // raises it afterwards through sysfs.
        let _ = config.set_max_readahead(self.tuning.max_write);
        let _ = config.set_max_background(self.tuning.max_background);
        // Locks go to the metadata service (cluster-wide), not the kernel's own table.
        if let Err(missing) =
            config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS)
        {
            tracing::warn!(?missing, "the kernel keeps these locks to this host only");
        }
        // Set-ID bits and file capabilities are taken away here (`ops::privileges`), so
        // the kernel stops asking for `security.capability` before every write.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2) {
            tracing::warn!(
                ?missing,
                "the kernel asks for security.capability before each write"
            );
        }
        Ok(())
    }

    // BATCH_FORGET comes here too (fuser's default `batch_forget`).
    fn forget(&self, _req: &Request, ino: INodeNo, _nlookup: u64) {
        self.fs.forget(ino.0);
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEntry) {
        let (n, ttl) = (name(n), self.tuning.attr_ttl);
        // Answered here, on the FUSE thread, when the delegated cache knows the name (as
        // `getattr` does): a stat after the kernel dropped its caches is one lookup.
        let start = std::time::Instant::now();
        if let Some(answer) = self.fs.delegated_lookup(parent.0, &n) {
            answered_here("lookup", true, start);
            return match answer {
                Ok(a) => {
                    let ttl = self.fs.ttl_for(Some((parent.0, &n)), &a, ttl);
                    reply.entry(&ttl.ttl, &file_attr(&a), Generation(a.generation))
                }
                Err(_) => {
                    let ttl = self.fs.negative_ttl(parent.0, &n, ttl);
                    reply.entry(&ttl.ttl, &negative_entry(), Generation(0))
                }
            };
        }
        self.run(
            "lookup",
            move |fs| async move {
                // A delegation's holder gives the kernel TTLs as long as the delegation.
                match fs.lookup(parent.0, &n).await {
                    Ok(a) => Ok((fs.ttl_for(Some((parent.0, &n)), &a, ttl), Some(a))),
                    Err(e) if e.to_errno() == Errno::ENOENT => {
                        Ok((fs.negative_ttl(parent.0, &n, ttl), None))
                    }
                    Err(e) => Err(e),
                }
            },
            move |r| match r {
                Ok((ttl, Some(a))) => {
                    reply.entry(&ttl.ttl, &file_attr(&a), Generation(a.generation))
                }
                // No such name: a negative entry (inode 0) the kernel keeps for the same
                // TTL as a positive one. Without it every check for an absent file
                // (SQLite's journal before each transaction, a compiler's include path)
                // is a metadata round.
                Ok((ttl, None)) => reply.entry(&ttl.ttl, &negative_entry(), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let ttl = self.tuning.attr_ttl;
        // Answered here, on the FUSE thread, when no round is needed: handing the request
        // to the runtime would cost more than the answer.
        let start = std::time::Instant::now();
        if let Some(a) = self.fs.known_attr(ino.0) {
            answered_here("getattr", true, start);
            let ttl = self.fs.ttl_for(None, &a, ttl);
            return reply.attr(&ttl.ttl, &file_attr(&a));
        }
        self.run(
            "getattr",
            move |fs| async move {
                let a = fs.getattr(ino.0).await?;
                Ok((fs.ttl_for(None, &a, ttl), a))
            },
            move |r| match r {
                Ok((ttl, a)) => reply.attr(&ttl.ttl, &file_attr(&a)),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            ctime_ns: ctime.map(ns),
        };
        let (ttl, who) = (self.tuning.attr_ttl, caller(req));
        self.run(
            "setattr",
            move |fs| async move { fs.setattr(ino.0, set, who).await },
            attr(reply, ttl),
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.run(
            "readlink",
            move |fs| async move { fs.readlink(ino.0).await },
            move |r| match r {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let Some(kind) = kind_of_mode(mode) else {
            return reply.error(FuseErrno::EINVAL);
        };
        let (n, who, ttl) = (name(n), caller(req), self.tuning.attr_ttl);
        self.run(
            "mknod",
            move |fs| async move { fs.mknod(parent.0, &n, kind, mode & !umask, rdev, who).await },
            entry(reply, ttl),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (n, who, ttl) = (name(n), caller(req), self.tuning.attr_ttl);
        self.run(
            "mkdir",
            move |fs| async move { fs.mkdir(parent.0, &n, mode & !umask, who).await },
            entry(reply, ttl),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let n = name(n);
        self.run(
            "unlink",
            move |fs| async move { fs.unlink(parent.0, &n).await },
            empty(reply),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let n = name(n);
        self.run(
            "rmdir",
            move |fs| async move { fs.rmdir(parent.0, &n).await },
            empty(reply),
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (n, t) = (name(link_name), target.as_os_str().as_bytes().to_vec());
        let (who, ttl) = (caller(req), self.tuning.attr_ttl);
        self.run(
            "symlink",
            move |fs| async move { fs.symlink(parent.0, &n, &t, who).await },
            entry(reply, ttl),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        n: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut wire = 0;
        if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            wire |= mobilus_proto::fs::RENAME_NOREPLACE;
        }
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            wire |= mobilus_proto::fs::RENAME_EXCHANGE;
        }
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return reply.error(FuseErrno::EINVAL);
        }
        let (n, nn) = (name(n), name(new_name));
        self.run(
            "rename",
            move |fs| async move { fs.rename(parent.0, &n, new_parent.0, &nn, wire).await },
            empty(reply),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        new_parent: INodeNo,
        new_name: &OsStr,
        reply: ReplyEntry,
    ) {
        let (nn, ttl) = (name(new_name), self.tuning.attr_ttl);
        self.run(
            "link",
            move |fs| async move { fs.link(ino.0, new_parent.0, &nn).await },
            entry(reply, ttl),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let opened = |reply: ReplyOpen, fh: u64, keep: bool| {
            let flags = if keep {
                FopenFlags::FOPEN_KEEP_CACHE
            } else {
                FopenFlags::empty()
            };
            reply.opened(FileHandle(fh), flags)
        };
        // Answered here, on the FUSE thread, when the delegated cache has the file.
        let start = std::time::Instant::now();
        if let Some((fh, keep)) = self.fs.delegated_open(ino.0) {
            answered_here("open", true, start);
            return opened(reply, fh, keep);
        }
        self.run(
            "open",
            move |fs| async move { fs.open(ino.0).await },
            move |r| match r {
                Ok((fh, keep)) => opened(reply, fh, keep),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if kind_of_mode(mode) != Some(FileKind::Regular) {
            return reply.error(FuseErrno::EINVAL);
        }
        let (n, who, ttl) = (name(n), caller(req), self.tuning.attr_ttl);
        self.run(
            "create",
            move |fs| async move { fs.create(parent.0, &n, mode & !umask, flags, who).await },
            move |r| match r {
                Ok((a, fh)) => reply.created(
                    &ttl,
                    &file_attr(&a),
                    Generation(a.generation),
                    FileHandle(fh),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // Answered here, on the FUSE thread, when every byte is in memory.
        let start = std::time::Instant::now();
        let cached = {
            let _in_runtime = self.rt.enter();
            self.fs.read_cached(fh.0, offset, size)
        };
        if let Some(bytes) = cached {
            answered_here("read", true, start);
            return reply.data(&bytes);
        }
        self.run(
            "read",
            move |fs| async move { fs.read(fh.0, offset, size).await },
            move |r| match r {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill_suidgid = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        let who = caller(req);
        let start = std::time::Instant::now();
        let answered = {
            let _runtime = self.rt.enter();
            self.fs.write_now(fh.0, offset, data, kill_suidgid, who)
        };
        if let Some(result) = answered {
            // As `run` ends every change: no attribute answered before it is served after.
            self.fs.mutated();
            answered_here("write", result.is_ok(), start);
            return written(reply, result);
        }
        let data = data.to_vec();
        self.run(
            "write",
            move |fs| async move { fs.write(fh.0, offset, &data, kill_suidgid, who).await },
            move |r| written(reply, r),
        );
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // A close: POSIX drops the closing process's locks on the file. With nothing to
        // commit and no lock to drop, it is answered here, on the FUSE thread.
        let start = std::time::Instant::now();
        if self.fs.flush_if_clean(fh.0, ino.0, lock_owner.0) {
            answered_here("flush", true, start);
            return reply.ok();
        }
        self.run(
            "flush",
            move |fs| async move {
                fs.close(fh.0).await?;
                fs.release_locks(fh.0, ino.0, lock_owner.0).await
            },
            empty(reply),
        );
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // `lock_owner`: the file held a flock, released with its last close. With nothing
        // to commit and no flock, it is done here, on the FUSE thread (but for freeing an
        // unlinked file).
        let start = std::time::Instant::now();
        let clean = match lock_owner {
            None => self.fs.release_if_clean(fh.0),
            Some(_) => None,
        };
        match clean {
            Some(false) => {
                answered_here("release", true, start);
                return reply.ok();
            }
            Some(true) => {
                return self.run(
                    "release",
                    move |fs| async move { fs.release_orphan(ino.0).await },
                    empty(reply),
                )
            }
            None => {}
        }
        self.run(
            "release",
            move |fs| async move {
                let unlocked = match lock_owner {
                    Some(owner) => fs.release_locks(fh.0, ino.0, owner.0).await,
                    None => Ok(()),
                };
                let released = fs.release(fh.0).await;
                unlocked.and(released)
            },
            empty(reply),
        );
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        let Some(kind) = lock_kind(typ) else {
            return reply.error(refuse(Errno::EINVAL));
        };
        self.run(
            "getlk",
            move |fs| async move { fs.getlk(ino.0, lock_owner.0, start, end, kind).await },
            move |r| match r {
                Ok(Some(h)) => {
                    let typ = if h.write {
                        libc::F_WRLCK
                    } else {
                        libc::F_RDLCK
                    };
                    reply.locked(h.start, h.end, typ, h.pid)
                }
                Ok(None) => reply.locked(start, end, libc::F_UNLCK, 0),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let Some(kind) = lock_kind(typ) else {
            return reply.error(refuse(Errno::EINVAL));
        };
        self.run(
            "setlk",
            move |fs| async move {
                fs.setlk(fh.0, ino.0, lock_owner.0, start, end, kind, pid, sleep)
                    .await
            },
            empty(reply),
        );
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.run(
            "fsync",
            move |fs| async move { fs.flush(fh.0).await },
            empty(reply),
        );
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(self.fs.opendir()), FopenFlags::empty());
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.run(
            "readdir",
            move |fs| async move {
                let parent = if offset < 2 {
                    fs.getattr(ino.0).await?.parent
                } else {
                    0
                };
                Ok((parent, fs.readdir(ino.0, fh.0, offset.max(2), false).await?))
            },
            move |r| match r {
                Ok((parent, entries)) => {
                    // Offsets 1 and 2 are `.` and `..`; entries carry their cookies (≥ 3).
                    if offset < 1 && reply.add(ino, 1, FileType::Directory, ".") {
                        return reply.ok();
                    }
                    if offset < 2 && reply.add(INodeNo(parent), 2, FileType::Directory, "..") {
                        return reply.ok();
                    }
                    for e in entries.entries() {
                        if reply.add(
                            INodeNo(e.ino),
                            e.cookie,
                            file_type(e.kind),
                            OsStr::from_bytes(&e.name),
                        ) {
                            break;
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let ttl = self.tuning.attr_ttl;
        self.run(
            "readdirplus",
            move |fs| async move {
                let this = fs.getattr(ino.0).await?;
                // The kernel links no inode for "." or ".." from a READDIRPLUS reply
                // (fuse_direntplus_link skips them): ".." needs its inode number only,
                // not a round for its attributes.
                let parent = (offset < 2).then(|| Attr {
                    ino: this.parent,
                    ..this.clone()
                });
                Ok((
                    this,
                    parent,
                    fs.readdir(ino.0, fh.0, offset.max(2), true).await?,
                ))
            },
            move |r| match r {
                Ok((this, parent, entries)) => {
                    if offset < 1 && reply.add(ino, 1, ".", &ttl, &file_attr(&this), Generation(0))
                    {
                        return reply.ok();
                    }
                    if let Some(p) = parent {
                        if reply.add(INodeNo(p.ino), 2, "..", &ttl, &file_attr(&p), Generation(0)) {
                            return reply.ok();
                        }
                    }
                    for e in entries.entries() {
                        let Some(a) = &e.attr else { continue };
                        let n = OsStr::from_bytes(&e.name);
                        if reply.add(
                            INodeNo(e.ino),
                            e.cookie,
                            n,
                            &ttl,
                            &file_attr(a),
                            Generation(a.generation),
                        ) {
                            break;
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Every directory change is committed by a Raft quorum before it is answered,
        // but for creates the holder of a delegation answered first: those are made now.
        self.run(
            "fsyncdir",
            move |fs| async move { fs.fsyncdir(ino.0).await },
            move |r| match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.run(
            "statfs",
            move |fs| async move { fs.statfs().await },
            move |r| match r {
                Ok(s) => {
                    let bsize = u64::from(s.block_size.max(1));
                    let blocks = s.total_bytes / bsize;
                    let free = s.total_bytes.saturating_sub(s.used_bytes) / bsize;
                    let ffree = s.max_files.saturating_sub(s.files);
                    reply.statfs(
                        blocks,
                        free,
                        free,
                        s.max_files,
                        ffree,
                        s.block_size,
                        s.name_max,
                        s.block_size,
                    )
                }
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        n: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        if position != 0 {
            return reply.error(FuseErrno::EINVAL);
        }
        let mut wire = 0;
        if flags & libc::XATTR_CREATE != 0 {
            wire |= XATTR_CREATE;
        }
        if flags & libc::XATTR_REPLACE != 0 {
            wire |= XATTR_REPLACE;
        }
        let (n, v) = (name(n), value.to_vec());
        self.run(
            "setxattr",
            move |fs| async move { fs.setxattr(ino.0, &n, &v, wire).await },
            empty(reply),
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, n: &OsStr, size: u32, reply: ReplyXattr) {
        let n = name(n);
        let start = std::time::Instant::now();
        if self.fs.known_absent_xattr(ino.0, &n) {
            answered_here("getxattr", false, start);
            return reply.error(refuse(Errno::ENODATA));
        }
        self.run(
            "getxattr",
            move |fs| async move { fs.getxattr(ino.0, &n).await },
            move |r| match r {
                Ok(v) => reply_xattr(reply, size, &v),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.run(
            "listxattr",
            move |fs| async move { fs.listxattr(ino.0).await },
            move |r| match r {
                Ok(names) => {
                    let mut buf = Vec::new();
                    for n in names {
                        buf.extend_from_slice(&n);
                        buf.push(0);
                    }
                    reply_xattr(reply, size, &buf)
                }
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let n = name(n);
        self.run(
            "removexattr",
            move |fs| async move { fs.removexattr(ino.0, &n).await },
            empty(reply),
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // The mount uses default_permissions: the kernel has checked the mode bits.
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        // Space is not reserved ahead in a content-addressed store: say so.
        reply.error(refuse(Errno::EOPNOTSUPP));
    }
}
