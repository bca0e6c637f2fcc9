//! Snapshots: read-only clones of a subtree, named in its `.snapshots` directory.
//!
//! A snapshot is made exactly as a clone is (`namespace::clone`: bounded steps, the
//! source frozen meanwhile, hidden until published), but published into the source's
//! snapshot registry instead of a directory entry, and marked read-only: the ownership
//! check refuses every change of it with EROFS, and no mount may hold its delegation. Its
//! slices count their chunks like any file's, so GC keeps them until it is removed.
//!
//! `.snapshots` is not a stored directory: a lookup of that name in a subtree's root
//! answers a synthetic directory (inode `S | SNAPSHOTS_DIR_BIT`, read-only, not listed in
//! the root, like ZFS's `.zfs`) whose entries are the snapshots' roots. Everything under
//! a snapshot's root is stored inodes, read as any others.
//!
//! Keys (`clones` cf): `n` ‖ S ‖ name → `SnapshotRecord`; `k` ‖ S ‖ cookie → name (the
//! listing's order); `N` ‖ S → the next cookie; `r` ‖ root → (S, name) (read-only).

use std::ops::ControlFlow;

use mobilus_proto::fs::{
    snapshots_dir_of, Attr, DirEntry, FileKind, InodeId, SnapshotInfo, SubtreeId, ROOT_INO,
    SNAPSHOTS_DIR, SNAPSHOTS_DIR_BIT,
};
use mobilus_proto::status::Errno;
use serde::{Deserialize, Serialize};

use super::keys::{self, Cf};
use super::txn::Txn;
use super::{load, subtree, FIRST_COOKIE};
use crate::error::NsError;
use crate::types::OpError;

/// A published snapshot (`n` ‖ S ‖ name).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub root: InodeId,
    pub cookie: u64,
    pub created_ns: i64,
}

fn key(tag: u8, src: SubtreeId, rest: &[u8]) -> Vec<u8> {
    let mut k = vec![tag];
    k.extend_from_slice(&src.to_be_bytes());
    k.extend_from_slice(rest);
    k
}

fn read_only_key(root: InodeId) -> Vec<u8> {
    key(b'r', root, &[])
}

/// Snapshot `name` of subtree `src`, if there is one.
pub(crate) fn get(
    txn: &Txn<'_>,
    src: SubtreeId,
    name: &[u8],
) -> Result<Option<SnapshotRecord>, NsError> {
    Ok(txn.get(Cf::Clones, &key(b'n', src, name))?)
}

/// Name the published root `root` as snapshot `name` of `src`, read-only from now on.
pub(crate) fn register(
    txn: &mut Txn<'_>,
    src: SubtreeId,
    name: &[u8],
    root: InodeId,
    now: i64,
) -> Result<(), NsError> {
    let next: u64 = txn
        .get(Cf::Clones, &key(b'N', src, &[]))?
        .unwrap_or(FIRST_COOKIE);
    txn.put(Cf::Clones, key(b'N', src, &[]), &(next + 1))?;
    let rec = SnapshotRecord {
        root,
        cookie: next,
        created_ns: now,
    };
    txn.put(Cf::Clones, key(b'n', src, name), &rec)?;
    txn.put_raw(
        Cf::Clones,
        key(b'k', src, &next.to_be_bytes()),
        name.to_vec(),
    );
    txn.put(Cf::Clones, read_only_key(root), &(src, name.to_vec()))?;
    Ok(())
}

/// Forget snapshot `name` of `src` (its tree is then removed like an aborted clone's);
/// its root.
pub(crate) fn unregister(
    txn: &mut Txn<'_>,
    src: SubtreeId,
    name: &[u8],
) -> Result<InodeId, NsError> {
    let rec = get(txn, src, name)?.ok_or_else(|| {
        NsError::from(OpError::explained(
            Errno::ENOENT,
            format!(
                "subtree {src} has no snapshot {:?}",
                String::from_utf8_lossy(name)
            ),
        ))
    })?;
    txn.delete(Cf::Clones, key(b'n', src, name));
    txn.delete(Cf::Clones, key(b'k', src, &rec.cookie.to_be_bytes()));
    txn.delete(Cf::Clones, read_only_key(rec.root));
    Ok(rec.root)
}

/// Is `root` a snapshot's root? Its source and name.
pub(crate) fn of(txn: &Txn<'_>, root: InodeId) -> Result<Option<(SubtreeId, Vec<u8>)>, NsError> {
    Ok(txn.get(Cf::Clones, &read_only_key(root))?)
}

/// A snapshot may not change: EROFS, for any site.
pub(crate) fn refuse_read_only(txn: &Txn<'_>, root: SubtreeId) -> Result<(), NsError> {
    match of(txn, root)? {
        Some((src, name)) => Err(OpError::explained(
            Errno::EROFS,
            format!(
                "subtree {root} is snapshot {:?} of subtree {src}: read-only",
                String::from_utf8_lossy(&name)
            ),
        )
        .into()),
        None => Ok(()),
    }
}

/// A `.snapshots` directory may not change either (its entries are made by `snapshot
/// create` only).
pub(crate) fn refuse_snapshots_dir(ino: InodeId) -> Result<(), NsError> {
    match snapshots_dir_of(ino) {
        Some(src) => Err(OpError::explained(
            Errno::EROFS,
            format!("{ino} is the snapshots directory of subtree {src}: read-only"),
        )
        .into()),
        None => Ok(()),
    }
}

/// `.snapshots` is taken in a subtree's root (EEXIST for a new entry of that name).
pub(crate) fn refuse_reserved_name(
    txn: &Txn<'_>,
    parent: InodeId,
    name: &[u8],
) -> Result<(), NsError> {
    if name == SNAPSHOTS_DIR && parent != ROOT_INO && subtree::get(txn, parent)?.is_some() {
        return Err(OpError::explained(
            Errno::EEXIST,
            "\".snapshots\" in a subtree's root is its snapshots directory",
        )
        .into());
    }
    Ok(())
}

/// The synthetic `.snapshots` directory of subtree `src`: read-only, times and owner of
/// the subtree's root, labelled with itself (no subtree: no delegation covers it).
pub(crate) fn dir_attr(txn: &Txn<'_>, src: SubtreeId) -> Result<Attr, NsError> {
    if src == ROOT_INO || subtree::get(txn, src)?.is_none() {
        return Err(Errno::ENOENT.into());
    }
    let root = load(txn, src)?.attr;
    let ino = src | SNAPSHOTS_DIR_BIT;
    Ok(Attr {
        ino,
        kind: FileKind::Directory,
        mode: 0o555,
        size: 0,
        nlink: 2,
        subtree: ino,
        parent: src,
        rdev: 0,
        generation: 1,
        ..root
    })
}

/// Lookup in a snapshots directory: a snapshot's root.
pub(crate) fn lookup(txn: &Txn<'_>, src: SubtreeId, name: &[u8]) -> Result<Attr, NsError> {
    match name {
        b"." => return dir_attr(txn, src),
        b".." => return Ok(load(txn, src)?.attr),
        _ => {}
    }
    dir_attr(txn, src)?;
    let rec = get(txn, src, name)?.ok_or(Errno::ENOENT)?;
    Ok(load(txn, rec.root)?.attr)
}

/// The snapshots of `src` after `cookie`, in the order they were made.
pub(crate) fn readdir(
    txn: &Txn<'_>,
    src: SubtreeId,
    cookie: u64,
    limit: usize,
    plus: bool,
) -> Result<(Vec<DirEntry>, bool), NsError> {
    dir_attr(txn, src)?;
    let prefix = key(b'k', src, &[]);
    let start = key(b'k', src, &cookie.saturating_add(1).to_be_bytes());
    let (mut names, mut eof) = (Vec::new(), true);
    txn.scan(Cf::Clones, &prefix, &start, |k, v| {
        if names.len() == limit {
            eof = false;
            return Ok(ControlFlow::Break(()));
        }
        names.push((keys::u64_at(k, 9), v.to_vec()));
        Ok(ControlFlow::Continue(()))
    })?;
    let mut out = Vec::with_capacity(names.len());
    for (cookie, name) in names {
        let Some(rec) = get(txn, src, &name)? else {
            continue;
        };
        let attr = if plus {
            Some(load(txn, rec.root)?.attr)
        } else {
            None
        };
        out.push(DirEntry {
            name,
            ino: rec.root,
            kind: FileKind::Directory,
            cookie,
            attr,
        });
    }
    Ok((out, eof))
}

/// Every snapshot of `src`, in the order they were made.
pub(crate) fn list(txn: &Txn<'_>, src: SubtreeId) -> Result<Vec<SnapshotInfo>, NsError> {
    let (entries, _) = readdir(txn, src, 0, usize::MAX, false)?;
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let rec = get(txn, src, &e.name)?.ok_or(Errno::ENOENT)?;
        let sub = subtree::must_get(txn, rec.root)?;
        out.push(SnapshotInfo {
            name: e.name,
            root: rec.root,
            created_ns: rec.created_ns,
            inodes: sub.inodes,
            bytes: sub.bytes,
        });
    }
    Ok(out)
}

/// Every snapshot root (fsck counts them named).
pub(crate) fn roots(view: &dyn super::KvRead) -> Result<Vec<InodeId>, NsError> {
    let mut out = Vec::new();
    for item in view.iter_from(Cf::Clones, b"r")? {
        let (k, _) = item?;
        if k.first() != Some(&b'r') {
            break;
        }
        out.push(keys::u64_at(&k, 1));
    }
    Ok(out)
}

impl super::Namespace {
    /// Every snapshot of subtree `src`.
    pub fn snapshots(&self, src: SubtreeId) -> Result<Vec<SnapshotInfo>, NsError> {
        self.with_view(|txn| {
            subtree::must_get(txn, src)?;
            list(txn, src)
        })
    }
}
