//! Read-only queries on the namespace (they never go through the log).

use std::ops::ControlFlow;

use mobilus_proto::fs::{
    snapshots_dir_of, Attr, ChunkHash, DataNodeInfo, DirEntry, Extent, InodeId, StatFs,
    MAX_GC_BATCH, NAME_MAX, SNAPSHOTS_DIR,
};
use mobilus_proto::status::Errno;

use super::keys::{self, Cf};
use super::txn::Txn;
use super::{
    counters, dir, file, gc, load, load_dir, snapshot, validate_name, DentryRecord, Namespace,
};
use crate::codec;
use crate::error::{NsError, StoreError};

/// Most entries one readdir call returns.
pub const READDIR_MAX: u32 = 10_000;
/// Capacity reported by statfs until data nodes report theirs (1 PiB).
pub const DEFAULT_CAPACITY: u64 = 1 << 50;

// Every query reads one consistent view (`with_view`): a listing is the directory after
// one whole log entry, and a slice map sees each write whole or not at all, however
// entries are applied meanwhile.
impl Namespace {
    pub fn getattr(&self, ino: InodeId) -> Result<Attr, NsError> {
        self.with_view(|txn| match snapshots_dir_of(ino) {
            Some(src) => snapshot::dir_attr(txn, src),
            None => Ok(load(txn, ino)?.attr),
        })
    }

    /// Look `name` up in `parent`; `.` and `..` resolve to the directory and its parent.
    /// `.snapshots` in a subtree's root is its snapshots directory (`namespace::snapshot`).
    pub fn lookup(&self, parent: InodeId, name: &[u8]) -> Result<Attr, NsError> {
        validate_name(name)?;
        self.with_view(|txn| {
            if let Some(src) = snapshots_dir_of(parent) {
                return snapshot::lookup(txn, src, name);
            }
            let p = load_dir(txn, parent)?;
            match name {
                b"." => return Ok(p.attr),
                b".." => {
                    if let Some((src, _)) = snapshot::of(txn, parent)? {
                        return snapshot::dir_attr(txn, src);
                    }
                    return Ok(load(txn, p.attr.parent)?.attr);
                }
                // Only a subtree's root has one; elsewhere it is an ordinary name.
                SNAPSHOTS_DIR => {
                    if let Ok(attr) = snapshot::dir_attr(txn, parent) {
                        return Ok(attr);
                    }
                }
                _ => {}
            }
            let d: DentryRecord = txn
                .get(Cf::Dentries, &keys::with_name(parent, name))?
                .ok_or(Errno::ENOENT)?;
            Ok(load(txn, d.ino)?.attr)
        })
    }

    pub fn readlink(&self, ino: InodeId) -> Result<Vec<u8>, NsError> {
        let rec = self.with_view(|txn| load(txn, ino))?;
        if rec.attr.kind != mobilus_proto::fs::FileKind::Symlink {
            return Err(Errno::EINVAL.into());
        }
        Ok(rec.target)
    }

    /// Entries of `ino` after `cookie` (0 = from the start), at most `limit` (0 = the
    /// maximum). Cookies are stable: entries added or removed meanwhile never make a
    /// resumed listing skip or repeat another entry. Returns the entries and `eof`.
    pub fn readdir(
        &self,
        ino: InodeId,
        cookie: u64,
        limit: u32,
        plus: bool,
    ) -> Result<(Vec<DirEntry>, bool), NsError> {
        self.with_view(|txn| readdir(txn, ino, cookie, limit, plus))
    }

    pub fn getxattr(&self, ino: InodeId, name: &[u8]) -> Result<Vec<u8>, NsError> {
        dir::check_xattr_name(name)?;
        self.with_view(|txn| {
            if let Some(src) = snapshots_dir_of(ino) {
                snapshot::dir_attr(txn, src)?;
                return Err(Errno::ENODATA.into());
            }
            load(txn, ino)?;
            Ok(txn
                .get_raw(Cf::Xattrs, &keys::with_name(ino, name))?
                .ok_or(Errno::ENODATA)?)
        })
    }

    pub fn listxattr(&self, ino: InodeId) -> Result<Vec<Vec<u8>>, NsError> {
        self.with_view(|txn| {
            if let Some(src) = snapshots_dir_of(ino) {
                snapshot::dir_attr(txn, src)?;
                return Ok(Vec::new());
            }
            load(txn, ino)?;
            let pairs = txn.scan_all(Cf::Xattrs, &keys::ino(ino))?;
            Ok(pairs.into_iter().map(|(k, _)| k[8..].to_vec()).collect())
        })
    }

    /// The registered data nodes, of one site or (`None`) of all.
    pub fn data_nodes(&self, site: Option<&str>) -> Result<Vec<DataNodeInfo>, NsError> {
        self.with_view(|txn| data_nodes(txn, site))
    }

    /// Per hash: reference count and when it last dropped to zero (see `ChunkRefs`).
    pub fn chunk_refs(&self, hashes: &[ChunkHash]) -> Result<Vec<(u64, i64)>, NsError> {
        if hashes.len() > MAX_GC_BATCH {
            return Err(Errno::E2BIG.into());
        }
        self.with_view(|txn| hashes.iter().map(|h| gc::refs(txn, h)).collect())
    }

    /// Referenced chunks and their counts, in hash order, after `after` (exclusive), at
    /// most `limit` (capped at `MAX_GC_BATCH`). Returns them and whether the list ended.
    pub fn referenced_chunks(
        &self,
        after: Option<&ChunkHash>,
        limit: usize,
    ) -> Result<(Vec<(ChunkHash, u64)>, bool), NsError> {
        let limit = limit.clamp(1, MAX_GC_BATCH);
        let start = after.map(|h| h.0.to_vec()).unwrap_or_default();
        let mut out = Vec::new();
        let mut eof = true;
        self.with_view(|txn| {
            txn.scan(Cf::ChunkRefs, &[], &start, |k, v| {
                let hash = ChunkHash::from_slice(k).ok_or_else(|| {
                    StoreError::Corrupt(format!("chunk_refs key of {} bytes", k.len()))
                })?;
                if Some(&hash) == after {
                    return Ok(ControlFlow::Continue(()));
                }
                if out.len() == limit {
                    eof = false;
                    return Ok(ControlFlow::Break(()));
                }
                out.push((hash, codec::decode(v)?));
                Ok(ControlFlow::Continue(()))
            })?;
            Ok(())
        })?;
        Ok((out, eof))
    }

    pub fn statfs(&self) -> Result<StatFs, NsError> {
        let (c, nodes) = self.with_view(|txn| Ok((counters(txn)?, data_nodes(txn, None)?)))?;
        // Capacity is what the data nodes report, once any has registered.
        // Saturating: a node's report is its own word (found by fuzzing, two nodes
        // claiming near 2^64 bytes overflowed the sum).
        let registered = nodes
            .iter()
            .fold(0u64, |sum, n| sum.saturating_add(n.capacity_bytes));
        let capacity = if registered > 0 {
            registered
        } else {
            DEFAULT_CAPACITY
        };
        Ok(StatFs {
            total_bytes: capacity.max(c.bytes),
            used_bytes: c.bytes,
            files: c.inodes,
            max_files: 1 << 40,
            block_size: 4096,
            name_max: NAME_MAX as u32,
        })
    }

    /// The merged slice map of a range, and the file's attributes (the size included).
    pub fn read_slices(
        &self,
        ino: InodeId,
        offset: u64,
        len: u64,
    ) -> Result<(Vec<Extent>, Attr), NsError> {
        self.with_view(|txn| file::read(txn, ino, offset, len))
    }
}

fn data_nodes(txn: &Txn<'_>, site: Option<&str>) -> Result<Vec<DataNodeInfo>, NsError> {
    super::nodes::registered(txn, site)
}

fn readdir(
    txn: &Txn<'_>,
    ino: InodeId,
    cookie: u64,
    limit: u32,
    plus: bool,
) -> Result<(Vec<DirEntry>, bool), NsError> {
    let limit = if limit == 0 {
        READDIR_MAX
    } else {
        limit.min(READDIR_MAX)
    } as usize;
    if let Some(src) = snapshots_dir_of(ino) {
        return snapshot::readdir(txn, src, cookie, limit, plus);
    }
    load_dir(txn, ino)?;
    let prefix = keys::ino(ino);
    let start = keys::cookie(ino, cookie.saturating_add(1));
    let mut names = Vec::new();
    let mut eof = true;
    txn.scan(Cf::Cookies, &prefix, &start, |k, v| {
        if names.len() == limit {
            eof = false;
            return Ok(ControlFlow::Break(()));
        }
        names.push((keys::u64_at(k, 8), v.to_vec()));
        Ok(ControlFlow::Continue(()))
    })?;
    let mut out = Vec::with_capacity(names.len());
    for (cookie, name) in names {
        let d: DentryRecord = txn
            .get(Cf::Dentries, &keys::with_name(ino, &name))?
            .ok_or_else(|| StoreError::Corrupt(format!("cookie {cookie} of {ino} dangles")))?;
        let attr = if plus {
            Some(load(txn, d.ino)?.attr)
        } else {
            None
        };
        out.push(DirEntry {
            name,
            ino: d.ino,
            kind: d.kind,
            cookie,
            attr,
        });
    }
    Ok((out, eof))
}
