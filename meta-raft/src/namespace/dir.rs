//! Namespace mutations: entries, links, renames, attributes and xattrs.
//!
//! Times follow POSIX: creating or removing an entry updates the parent's mtime and
//! ctime; any change to an inode's attributes or link count updates its ctime.

use mobilus_proto::fs::{
    Attr, FileKind, InodeId, SetAttr, TimeSet, MAX_FILE_SIZE, RENAME_EXCHANGE, RENAME_KEEP_OPEN,
    RENAME_NOREPLACE, ROOT_INO, SYMLINK_MAX, XATTR_CREATE, XATTR_REPLACE, XATTR_VALUE_MAX,
};
use mobilus_proto::status::Errno;

use super::keys::{self, Cf};
use super::txn::Txn;
use super::{
    file, is_dot, load, load_dir, save, subtree, update, update_counters, validate_name,
    DentryRecord, InodeRecord, FIRST_COOKIE, LINK_MAX,
};
use crate::error::NsError;
use crate::types::OpReply;

const S_ISGID: u32 = 0o2000;

pub(crate) struct NewInode {
    pub kind: FileKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
}

pub(crate) fn dentry(
    txn: &Txn<'_>,
    parent: InodeId,
    name: &[u8],
) -> Result<Option<DentryRecord>, NsError> {
    Ok(txn.get(Cf::Dentries, &keys::with_name(parent, name))?)
}

/// Add `name → ino` to `parent`, taking the parent's next cookie.
pub(crate) fn add_entry(
    txn: &mut Txn<'_>,
    parent: &mut InodeRecord,
    name: &[u8],
    ino: InodeId,
    kind: FileKind,
) -> Result<(), NsError> {
    let cookie = parent.next_cookie;
    parent.next_cookie += 1;
    let rec = DentryRecord { ino, kind, cookie };
    txn.put(Cf::Dentries, keys::with_name(parent.attr.ino, name), &rec)?;
    txn.put_raw(
        Cf::Cookies,
        keys::cookie(parent.attr.ino, cookie),
        name.to_vec(),
    );
    Ok(())
}

fn remove_entry(txn: &mut Txn<'_>, parent: InodeId, name: &[u8], d: &DentryRecord) {
    txn.delete(Cf::Dentries, keys::with_name(parent, name));
    txn.delete(Cf::Cookies, keys::cookie(parent, d.cookie));
}

fn touch_dir(rec: &mut InodeRecord, now: i64) {
    rec.attr.mtime_ns = now;
    rec.attr.ctime_ns = now;
}

pub(crate) fn is_empty_dir(txn: &Txn<'_>, ino: InodeId) -> Result<bool, NsError> {
    let mut empty = true;
    let prefix = keys::ino(ino);
    txn.scan(Cf::Cookies, &prefix, &prefix, |_, _| {
        empty = false;
        Ok(std::ops::ControlFlow::Break(()))
    })?;
    Ok(empty)
}

pub(crate) fn create(
    txn: &mut Txn<'_>,
    now: i64,
    parent: InodeId,
    name: &[u8],
    new: NewInode,
    target: Vec<u8>,
) -> Result<Attr, NsError> {
    create_numbered(txn, now, parent, name, new, target, None)
}

/// `create`, under `reserved` (a number reserved for the issuing session) if given, else
/// the next free number.
pub(crate) fn create_numbered(
    txn: &mut Txn<'_>,
    now: i64,
    parent: InodeId,
    name: &[u8],
    new: NewInode,
    target: Vec<u8>,
    reserved: Option<InodeId>,
) -> Result<Attr, NsError> {
    validate_name(name)?;
    let mut p = load_dir(txn, parent)?;
    if is_dot(name) || dentry(txn, parent, name)?.is_some() {
        return Err(Errno::EEXIST.into());
    }
    super::snapshot::refuse_reserved_name(txn, parent, name)?;
    let is_dir = new.kind == FileKind::Directory;
    if is_dir && p.attr.nlink >= LINK_MAX {
        return Err(Errno::EMLINK.into());
    }
    let counters = update_counters(txn, |c| {
        if reserved.is_none() {
            c.next_ino += 1;
        }
        c.inodes += 1;
    })?;
    subtree::account(txn, p.attr.subtree, 1, 0)?;
    let ino = reserved.unwrap_or(counters.next_ino - 1);
    // BSD group semantics under a setgid directory, as Linux applies them.
    let (mut mode, mut gid) = (new.mode & 0o7777, new.gid);
    if p.attr.mode & S_ISGID != 0 {
        gid = p.attr.gid;
        if is_dir {
            mode |= S_ISGID;
        }
    }
    let attr = Attr {
        ino,
        kind: new.kind,
        mode,
        uid: new.uid,
        gid,
        size: target.len() as u64,
        nlink: if is_dir { 2 } else { 1 },
        atime_ns: now,
        mtime_ns: now,
        ctime_ns: now,
        generation: 1,
        subtree: p.attr.subtree,
        rdev: new.rdev,
        parent: if is_dir { parent } else { 0 },
    };
    let rec = InodeRecord {
        attr: attr.clone(),
        next_cookie: FIRST_COOKIE,
        target,
    };
    save(txn, &rec)?;
    add_entry(txn, &mut p, name, ino, new.kind)?;
    if is_dir {
        p.attr.nlink += 1;
    }
    // A holder's creates carry its own times and are made in any order: never backwards.
    let touched = match reserved {
        Some(_) => now.max(p.attr.mtime_ns).max(p.attr.ctime_ns),
        None => now,
    };
    touch_dir(&mut p, touched);
    save(txn, &p)?;
    Ok(attr)
}

pub(crate) fn symlink(
    txn: &mut Txn<'_>,
    now: i64,
    parent: InodeId,
    name: &[u8],
    target: &[u8],
    uid: u32,
    gid: u32,
) -> Result<Attr, NsError> {
    if target.is_empty() {
        return Err(Errno::ENOENT.into());
    }
    if target.len() > SYMLINK_MAX {
        return Err(Errno::ENAMETOOLONG.into());
    }
    if target.contains(&0) {
        return Err(Errno::EINVAL.into());
    }
    let new = NewInode {
        kind: FileKind::Symlink,
        mode: 0o777,
        uid,
        gid,
        rdev: 0,
    };
    create(txn, now, parent, name, new, target.to_vec())
}

pub(crate) fn link(
    txn: &mut Txn<'_>,
    now: i64,
    ino: InodeId,
    new_parent: InodeId,
    new_name: &[u8],
) -> Result<Attr, NsError> {
    validate_name(new_name)?;
    let mut src = load(txn, ino)?;
    let mut p = load_dir(txn, new_parent)?;
    if is_dot(new_name) || dentry(txn, new_parent, new_name)?.is_some() {
        return Err(Errno::EEXIST.into());
    }
    super::snapshot::refuse_reserved_name(txn, new_parent, new_name)?;
    if src.attr.kind == FileKind::Directory {
        return Err(Errno::EPERM.into());
    }
    if src.attr.subtree != p.attr.subtree {
        return Err(Errno::EXDEV.into());
    }
    if src.attr.nlink >= LINK_MAX {
        return Err(Errno::EMLINK.into());
    }
    add_entry(txn, &mut p, new_name, ino, src.attr.kind)?;
    touch_dir(&mut p, now);
    save(txn, &p)?;
    src.attr.nlink += 1;
    src.attr.ctime_ns = now;
    save(txn, &src)?;
    Ok(src.attr)
}

/// Remove an inode whose last link is gone: its attributes, xattrs and data.
pub(crate) fn destroy(txn: &mut Txn<'_>, rec: &InodeRecord, now: i64) -> Result<(), NsError> {
    let ino = rec.attr.ino;
    txn.delete(Cf::Inodes, keys::ino(ino));
    for (k, _) in txn.scan_all(Cf::Xattrs, &keys::ino(ino))? {
        txn.delete(Cf::Xattrs, k);
    }
    if rec.attr.kind == FileKind::Regular {
        file::drop_slices_from(txn, now, ino, 0)?;
    }
    let bytes = if rec.attr.kind == FileKind::Regular {
        rec.attr.size
    } else {
        0
    };
    update_counters(txn, |c| {
        c.inodes = c.inodes.saturating_sub(1);
        c.bytes = c.bytes.saturating_sub(bytes);
    })?;
    subtree::account(txn, rec.attr.subtree, -1, -(bytes as i64))
}

/// Drop one link of `child` (already removed from its directory).
fn drop_link(txn: &mut Txn<'_>, now: i64, child: InodeId, keep_open: bool) -> Result<u32, NsError> {
    let mut rec = load(txn, child)?;
    rec.attr.nlink = rec.attr.nlink.saturating_sub(1);
    rec.attr.ctime_ns = now;
    if rec.attr.nlink == 0 && !keep_open {
        destroy(txn, &rec, now)?;
    } else {
        if rec.attr.nlink == 0 {
            txn.put(Cf::Orphans, keys::ino(child), &now)?;
        }
        save(txn, &rec)?;
    }
    Ok(rec.attr.nlink)
}

/// Delete an orphan whose last handle closed (a no-op for an inode that is not one).
pub(crate) fn release_orphan(txn: &mut Txn<'_>, now: i64, ino: InodeId) -> Result<(), NsError> {
    if txn.get::<i64>(Cf::Orphans, &keys::ino(ino))?.is_none() {
        return Ok(());
    }
    txn.delete(Cf::Orphans, keys::ino(ino));
    let rec = load(txn, ino)?;
    if rec.attr.nlink == 0 {
        destroy(txn, &rec, now)?;
    }
    Ok(())
}

pub(crate) fn unlink(
    txn: &mut Txn<'_>,
    now: i64,
    parent: InodeId,
    name: &[u8],
    keep_open: bool,
) -> Result<OpReply, NsError> {
    validate_name(name)?;
    let mut p = load_dir(txn, parent)?;
    if is_dot(name) {
        return Err(Errno::EISDIR.into());
    }
    let d = dentry(txn, parent, name)?.ok_or(Errno::ENOENT)?;
    if d.kind == FileKind::Directory {
        return Err(Errno::EISDIR.into());
    }
    remove_entry(txn, parent, name, &d);
    touch_dir(&mut p, now);
    save(txn, &p)?;
    let nlink = drop_link(txn, now, d.ino, keep_open)?;
    Ok(OpReply::Unlinked { ino: d.ino, nlink })
}

pub(crate) fn rmdir(
    txn: &mut Txn<'_>,
    now: i64,
    parent: InodeId,
    name: &[u8],
) -> Result<(), NsError> {
    validate_name(name)?;
    let mut p = load_dir(txn, parent)?;
    match name {
        b"." => return Err(Errno::EINVAL.into()),
        b".." => return Err(Errno::ENOTEMPTY.into()),
        _ => {}
    }
    let d = dentry(txn, parent, name)?.ok_or(Errno::ENOENT)?;
    let child = load(txn, d.ino)?;
    if child.attr.kind != FileKind::Directory {
        return Err(Errno::ENOTDIR.into());
    }
    subtree::refuse_subtree_root(txn, d.ino)?;
    if !is_empty_dir(txn, d.ino)? {
        return Err(Errno::ENOTEMPTY.into());
    }
    super::clone::refuse_publishing_parent(txn, d.ino)?;
    remove_entry(txn, parent, name, &d);
    p.attr.nlink = p.attr.nlink.saturating_sub(1);
    touch_dir(&mut p, now);
    save(txn, &p)?;
    destroy(txn, &child, now)
}

/// Is `ancestor` the directory `dir` or one of its ancestors?
fn is_ancestor_or_self(txn: &Txn<'_>, ancestor: InodeId, dir: InodeId) -> Result<bool, NsError> {
    let mut cur = dir;
    for _ in 0..1_000_000 {
        if cur == ancestor {
            return Ok(true);
        }
        let rec = load(txn, cur)?;
        if rec.attr.parent == cur || rec.attr.parent == 0 {
            return Ok(false);
        }
        cur = rec.attr.parent;
    }
    Err(crate::error::StoreError::Corrupt(format!("directory loop above inode {dir}")).into())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn rename(
    txn: &mut Txn<'_>,
    now: i64,
    parent: InodeId,
    name: &[u8],
    new_parent: InodeId,
    new_name: &[u8],
    flags: u32,
) -> Result<(), NsError> {
    let keep_open = flags & RENAME_KEEP_OPEN != 0;
    let flags = flags & !RENAME_KEEP_OPEN;
    if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
        || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
    {
        return Err(Errno::EINVAL.into());
    }
    validate_name(name)?;
    validate_name(new_name)?;
    let sp = load_dir(txn, parent)?;
    let dp = load_dir(txn, new_parent)?;
    if is_dot(name) || is_dot(new_name) {
        return Err(Errno::EINVAL.into());
    }
    let sd = dentry(txn, parent, name)?.ok_or(Errno::ENOENT)?;
    let td = dentry(txn, new_parent, new_name)?;
    if sp.attr.subtree != dp.attr.subtree {
        return Err(Errno::EXDEV.into());
    }
    super::snapshot::refuse_reserved_name(txn, new_parent, new_name)?;
    subtree::refuse_subtree_root(txn, sd.ino)?;
    if let Some(td) = &td {
        subtree::refuse_subtree_root(txn, td.ino)?;
    }
    let moves_a_dir = sd.kind == FileKind::Directory
        || (flags & RENAME_EXCHANGE != 0 && td.is_some_and(|t| t.kind == FileKind::Directory));
    if moves_a_dir && sp.attr.subtree == ROOT_INO {
        subtree::refuse_move_across_preparing(txn, parent, new_parent)?;
    }
    if flags & RENAME_EXCHANGE != 0 {
        let td = td.ok_or(Errno::ENOENT)?;
        return exchange(txn, now, (parent, name, sd), (new_parent, new_name, td));
    }
    let src_is_dir = sd.kind == FileKind::Directory;
    if let Some(td) = td {
        if flags & RENAME_NOREPLACE != 0 {
            return Err(Errno::EEXIST.into());
        }
        if td.ino == sd.ino {
            return Ok(()); // two links to one file: POSIX says do nothing
        }
        let tgt_is_dir = td.kind == FileKind::Directory;
        if src_is_dir && !tgt_is_dir {
            return Err(Errno::ENOTDIR.into());
        }
        if !src_is_dir && tgt_is_dir {
            return Err(Errno::EISDIR.into());
        }
        if tgt_is_dir && !is_empty_dir(txn, td.ino)? {
            return Err(Errno::ENOTEMPTY.into());
        }
        if tgt_is_dir {
            super::clone::refuse_publishing_parent(txn, td.ino)?;
        }
    }
    if src_is_dir && is_ancestor_or_self(txn, sd.ino, new_parent)? {
        return Err(Errno::EINVAL.into());
    }
    if src_is_dir && parent != new_parent && dp.attr.nlink >= LINK_MAX && td.is_none() {
        return Err(Errno::EMLINK.into());
    }
    // Unhook the source, then the replaced target.
    remove_entry(txn, parent, name, &sd);
    if let Some(td) = td {
        remove_entry(txn, new_parent, new_name, &td);
        if td.kind == FileKind::Directory {
            // The replaced directory's `..` no longer links the new parent.
            update(txn, new_parent, |r| {
                r.attr.nlink = r.attr.nlink.saturating_sub(1)
            })?;
            let tgt = load(txn, td.ino)?;
            destroy(txn, &tgt, now)?;
        } else {
            drop_link(txn, now, td.ino, keep_open)?;
        }
    }
    let mut dp = load(txn, new_parent)?;
    add_entry(txn, &mut dp, new_name, sd.ino, sd.kind)?;
    if src_is_dir && parent != new_parent {
        dp.attr.nlink += 1;
    }
    touch_dir(&mut dp, now);
    save(txn, &dp)?;
    update(txn, parent, |r| {
        if src_is_dir && parent != new_parent {
            r.attr.nlink = r.attr.nlink.saturating_sub(1);
        }
        touch_dir(r, now);
    })?;
    update(txn, sd.ino, |r| {
        r.attr.ctime_ns = now;
        if src_is_dir {
            r.attr.parent = new_parent;
        }
    })?;
    Ok(())
}

fn exchange(
    txn: &mut Txn<'_>,
    now: i64,
    (a_parent, a_name, a): (InodeId, &[u8], DentryRecord),
    (b_parent, b_name, b): (InodeId, &[u8], DentryRecord),
) -> Result<(), NsError> {
    if a.ino == b.ino {
        return Ok(());
    }
    let a_dir = a.kind == FileKind::Directory;
    let b_dir = b.kind == FileKind::Directory;
    if (a_dir && is_ancestor_or_self(txn, a.ino, b_parent)?)
        || (b_dir && is_ancestor_or_self(txn, b.ino, a_parent)?)
    {
        return Err(Errno::EINVAL.into());
    }
    // Each slot keeps its cookie and takes the other's inode.
    let slot_a = DentryRecord {
        ino: b.ino,
        kind: b.kind,
        cookie: a.cookie,
    };
    let slot_b = DentryRecord {
        ino: a.ino,
        kind: a.kind,
        cookie: b.cookie,
    };
    txn.put(Cf::Dentries, keys::with_name(a_parent, a_name), &slot_a)?;
    txn.put(Cf::Dentries, keys::with_name(b_parent, b_name), &slot_b)?;
    if a_parent != b_parent {
        let delta_a = i64::from(b_dir) - i64::from(a_dir); // a_parent gains b, loses a
        update(txn, a_parent, |r| {
            r.attr.nlink = (i64::from(r.attr.nlink) + delta_a) as u32;
            touch_dir(r, now);
        })?;
        update(txn, b_parent, |r| {
            r.attr.nlink = (i64::from(r.attr.nlink) - delta_a) as u32;
            touch_dir(r, now);
        })?;
    } else {
        update(txn, a_parent, |r| touch_dir(r, now))?;
    }
    update(txn, a.ino, |r| {
        r.attr.ctime_ns = now;
        if a_dir {
            r.attr.parent = b_parent;
        }
    })?;
    update(txn, b.ino, |r| {
        r.attr.ctime_ns = now;
        if b_dir {
            r.attr.parent = a_parent;
        }
    })?;
    Ok(())
}

pub(crate) fn setattr(
    txn: &mut Txn<'_>,
    now: i64,
    ino: InodeId,
    set: &SetAttr,
) -> Result<Attr, NsError> {
    let mut rec = load(txn, ino)?;
    if let Some(size) = set.size {
        match rec.attr.kind {
            FileKind::Regular => {}
            FileKind::Directory => return Err(Errno::EISDIR.into()),
            _ => return Err(Errno::EINVAL.into()),
        }
        if size > MAX_FILE_SIZE {
            return Err(Errno::EFBIG.into());
        }
        file::truncate(txn, now, &mut rec, size)?;
        rec.attr.mtime_ns = now;
    }
    if let Some(mode) = set.mode {
        rec.attr.mode = mode & 0o7777;
    }
    if let Some(uid) = set.uid {
        rec.attr.uid = uid;
    }
    if let Some(gid) = set.gid {
        rec.attr.gid = gid;
    }
    let at = |t: TimeSet| match t {
        TimeSet::Now => now,
        TimeSet::Ns(ns) => ns,
    };
    if let Some(t) = set.atime {
        rec.attr.atime_ns = at(t);
    }
    if let Some(t) = set.mtime {
        rec.attr.mtime_ns = at(t);
    }
    if *set != SetAttr::default() {
        rec.attr.ctime_ns = set.ctime_ns.unwrap_or(now);
    }
    save(txn, &rec)?;
    Ok(rec.attr)
}

fn validate_xattr_name(name: &[u8]) -> Result<(), Errno> {
    if name.is_empty() || name.contains(&0) {
        return Err(Errno::EINVAL);
    }
    if name.len() > 255 {
        return Err(Errno::ERANGE);
    }
    Ok(())
}

pub(crate) fn setxattr(
    txn: &mut Txn<'_>,
    now: i64,
    ino: InodeId,
    name: &[u8],
    value: &[u8],
    flags: u32,
) -> Result<(), NsError> {
    validate_xattr_name(name)?;
    if flags & !(XATTR_CREATE | XATTR_REPLACE) != 0 || flags == XATTR_CREATE | XATTR_REPLACE {
        return Err(Errno::EINVAL.into());
    }
    if value.len() > XATTR_VALUE_MAX {
        return Err(Errno::E2BIG.into());
    }
    let mut rec = load(txn, ino)?;
    let key = keys::with_name(ino, name);
    let exists = txn.get_raw(Cf::Xattrs, &key)?.is_some();
    if exists && flags & XATTR_CREATE != 0 {
        return Err(Errno::EEXIST.into());
    }
    if !exists && flags & XATTR_REPLACE != 0 {
        return Err(Errno::ENODATA.into());
    }
    txn.put_raw(Cf::Xattrs, key, value.to_vec());
    rec.attr.ctime_ns = now;
    save(txn, &rec)
}

pub(crate) fn cas_xattr(
    txn: &mut Txn<'_>,
    now: i64,
    ino: InodeId,
    name: &[u8],
    expected: Option<&[u8]>,
    value: &[u8],
) -> Result<(), NsError> {
    validate_xattr_name(name)?;
    if value.len() > XATTR_VALUE_MAX {
        return Err(Errno::E2BIG.into());
    }
    let mut rec = load(txn, ino)?;
    let key = keys::with_name(ino, name);
    if txn.get_raw(Cf::Xattrs, &key)?.as_deref() != expected {
        return Err(Errno::ECANCELED.into());
    }
    txn.put_raw(Cf::Xattrs, key, value.to_vec());
    rec.attr.ctime_ns = now;
    save(txn, &rec)
}

pub(crate) fn removexattr(
    txn: &mut Txn<'_>,
    now: i64,
    ino: InodeId,
    name: &[u8],
) -> Result<(), NsError> {
    validate_xattr_name(name)?;
    let mut rec = load(txn, ino)?;
    let key = keys::with_name(ino, name);
    if txn.get_raw(Cf::Xattrs, &key)?.is_none() {
        return Err(Errno::ENODATA.into());
    }
    txn.delete(Cf::Xattrs, key);
    rec.attr.ctime_ns = now;
    save(txn, &rec)
}

pub(crate) fn check_xattr_name(name: &[u8]) -> Result<(), Errno> {
    validate_xattr_name(name)
}
