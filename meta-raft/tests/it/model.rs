//! Property test: the namespace state machine against a simple in-memory POSIX model.
//!
//! Random sequences of operations run on both; every reply (attributes or errno) and,
//! after every step, the whole visible state (attributes, listings, symlinks, xattrs, file
//! bytes, statfs counters) must agree.

use std::collections::BTreeMap;

use mobilus_meta::namespace::keys::BLOCK_SIZE;
use mobilus_meta::namespace::Namespace;
use mobilus_meta::types::{Command, Op, OpError, OpReply};
use mobilus_proto::fs::{
    Attr, ChunkHash, ChunkRef, FileKind, SetAttr, SliceWrite, TimeSet, MAX_FILE_SIZE,
    RENAME_EXCHANGE, RENAME_NOREPLACE, ROOT_INO, XATTR_CREATE, XATTR_REPLACE,
};
use mobilus_proto::status::Errno;
use proptest::prelude::*;

type R<T> = Result<T, Errno>;

#[derive(Clone, Debug)]
struct Node {
    kind: FileKind,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    size: u64,
    atime: i64,
    mtime: i64,
    ctime: i64,
    parent: u64,
    children: BTreeMap<Vec<u8>, u64>,
    target: Vec<u8>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    data: BTreeMap<u64, u8>,
}

struct Model {
    nodes: BTreeMap<u64, Node>,
    next_ino: u64,
}

fn byte_of(chunk: u8, off: u64) -> u8 {
    (u64::from(chunk)
        .wrapping_mul(31)
        .wrapping_add(off.wrapping_mul(7))
        % 251) as u8
}

fn check_name(name: &[u8]) -> R<()> {
    if name.len() > 255 {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

fn dot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

impl Model {
    fn new() -> Self {
        let root = Node {
            kind: FileKind::Directory,
            mode: 0o755,
            uid: 0,
            gid: 0,
            nlink: 2,
            size: 0,
            atime: 0,
            mtime: 0,
            ctime: 0,
            parent: ROOT_INO,
            children: BTreeMap::new(),
            target: vec![],
            xattrs: BTreeMap::new(),
            data: BTreeMap::new(),
        };
        Model {
            nodes: BTreeMap::from([(ROOT_INO, root)]),
            next_ino: 2,
        }
    }

    fn attr(&self, ino: u64) -> Attr {
        let n = &self.nodes[&ino];
        Attr {
            ino,
            kind: n.kind,
            mode: n.mode,
            uid: n.uid,
            gid: n.gid,
            size: n.size,
            nlink: n.nlink,
            atime_ns: n.atime,
            mtime_ns: n.mtime,
            ctime_ns: n.ctime,
            generation: 1,
            subtree: ROOT_INO,
            rdev: 0,
            parent: if n.kind == FileKind::Directory {
                n.parent
            } else {
                0
            },
        }
    }

    fn get(&self, ino: u64) -> R<&Node> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn dir(&self, ino: u64) -> R<&Node> {
        let n = self.get(ino)?;
        if n.kind != FileKind::Directory {
            return Err(Errno::ENOTDIR);
        }
        Ok(n)
    }

    fn node(&mut self, ino: u64) -> &mut Node {
        self.nodes.get_mut(&ino).expect("model inode")
    }

    fn touch(&mut self, ino: u64, now: i64) {
        let n = self.node(ino);
        n.mtime = now;
        n.ctime = now;
    }

    fn create(
        &mut self,
        now: i64,
        parent: u64,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        target: &[u8],
    ) -> R<Attr> {
        check_name(name)?;
        let p = self.dir(parent)?;
        if dot(name) || p.children.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let is_dir = kind == FileKind::Directory;
        let (mut mode, mut gid) = (mode & 0o7777, 7);
        if p.mode & 0o2000 != 0 {
            gid = p.gid;
            if is_dir {
                mode |= 0o2000;
            }
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(
            ino,
            Node {
                kind,
                mode,
                uid: 5,
                gid,
                nlink: if is_dir { 2 } else { 1 },
                size: target.len() as u64,
                atime: now,
                mtime: now,
                ctime: now,
                parent: if is_dir { parent } else { 0 },
                children: BTreeMap::new(),
                target: target.to_vec(),
                xattrs: BTreeMap::new(),
                data: BTreeMap::new(),
            },
        );
        let p = self.node(parent);
        p.children.insert(name.to_vec(), ino);
        if is_dir {
            p.nlink += 1;
        }
        self.touch(parent, now);
        Ok(self.attr(ino))
    }

    fn drop_link(&mut self, ino: u64, now: i64) -> u32 {
        let n = self.node(ino);
        n.nlink -= 1;
        n.ctime = now;
        let left = n.nlink;
        if left == 0 {
            self.nodes.remove(&ino);
        }
        left
    }

    fn is_ancestor_or_self(&self, anc: u64, mut dir: u64) -> bool {
        loop {
            if dir == anc {
                return true;
            }
            let p = self.nodes[&dir].parent;
            if p == dir {
                return false;
            }
            dir = p;
        }
    }

    fn apply(&mut self, now: i64, op: &Op) -> R<OpReply> {
        match op {
            Op::Mkdir {
                parent, name, mode, ..
            } => self
                .create(now, *parent, name, FileKind::Directory, *mode, b"")
                .map(OpReply::Attr),
            Op::Mknod {
                parent,
                name,
                kind,
                mode,
                ..
            } => self
                .create(now, *parent, name, *kind, *mode, b"")
                .map(OpReply::Attr),
            Op::Symlink {
                parent,
                name,
                target,
                ..
            } => {
                if target.is_empty() {
                    return Err(Errno::ENOENT);
                }
                if target.len() > 4095 {
                    return Err(Errno::ENAMETOOLONG);
                }
                self.create(now, *parent, name, FileKind::Symlink, 0o777, target)
                    .map(OpReply::Attr)
            }
            Op::Link {
                ino,
                new_parent,
                new_name,
            } => {
                check_name(new_name)?;
                let kind = self.get(*ino)?.kind;
                let p = self.dir(*new_parent)?;
                if dot(new_name) || p.children.contains_key(new_name.as_slice()) {
                    return Err(Errno::EEXIST);
                }
                if kind == FileKind::Directory {
                    return Err(Errno::EPERM);
                }
                self.node(*new_parent)
                    .children
                    .insert(new_name.clone(), *ino);
                self.touch(*new_parent, now);
                let n = self.node(*ino);
                n.nlink += 1;
                n.ctime = now;
                Ok(OpReply::Attr(self.attr(*ino)))
            }
            Op::Unlink { parent, name, .. } => {
                check_name(name)?;
                let p = self.dir(*parent)?;
                if dot(name) {
                    return Err(Errno::EISDIR);
                }
                let ino = *p.children.get(name.as_slice()).ok_or(Errno::ENOENT)?;
                if self.nodes[&ino].kind == FileKind::Directory {
                    return Err(Errno::EISDIR);
                }
                self.node(*parent).children.remove(name.as_slice());
                self.touch(*parent, now);
                let nlink = self.drop_link(ino, now);
                Ok(OpReply::Unlinked { ino, nlink })
            }
            Op::Rmdir { parent, name } => {
                check_name(name)?;
                let p = self.dir(*parent)?;
                match name.as_slice() {
                    b"." => return Err(Errno::EINVAL),
                    b".." => return Err(Errno::ENOTEMPTY),
                    _ => {}
                }
                let ino = *p.children.get(name.as_slice()).ok_or(Errno::ENOENT)?;
                let c = &self.nodes[&ino];
                if c.kind != FileKind::Directory {
                    return Err(Errno::ENOTDIR);
                }
                if !c.children.is_empty() {
                    return Err(Errno::ENOTEMPTY);
                }
                self.node(*parent).children.remove(name.as_slice());
                self.node(*parent).nlink -= 1;
                self.touch(*parent, now);
                self.nodes.remove(&ino);
                Ok(OpReply::Done)
            }
            Op::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
            } => self
                .rename(now, *parent, name, *new_parent, new_name, *flags)
                .map(|()| OpReply::Done),
            Op::SetAttr { ino, set } => {
                let n = self.get(*ino)?;
                let kind = n.kind;
                if let Some(size) = set.size {
                    match kind {
                        FileKind::Regular => {}
                        FileKind::Directory => return Err(Errno::EISDIR),
                        _ => return Err(Errno::EINVAL),
                    }
                    if size > MAX_FILE_SIZE {
                        return Err(Errno::EFBIG);
                    }
                }
                let n = self.node(*ino);
                if let Some(size) = set.size {
                    n.data.retain(|off, _| *off < size);
                    n.size = size;
                    n.mtime = now;
                }
                if let Some(m) = set.mode {
                    n.mode = m & 0o7777;
                }
                if let Some(u) = set.uid {
                    n.uid = u;
                }
                if let Some(g) = set.gid {
                    n.gid = g;
                }
                let at = |t: TimeSet| match t {
                    TimeSet::Now => now,
                    TimeSet::Ns(x) => x,
                };
                if let Some(t) = set.atime {
                    n.atime = at(t);
                }
                if let Some(t) = set.mtime {
                    n.mtime = at(t);
                }
                if *set != SetAttr::default() {
                    n.ctime = now;
                }
                Ok(OpReply::Attr(self.attr(*ino)))
            }
            Op::SetXattr {
                ino,
                name,
                value,
                flags,
            } => {
                if name.is_empty() {
                    return Err(Errno::EINVAL);
                }
                if name.len() > 255 {
                    return Err(Errno::ERANGE);
                }
                if flags & !(XATTR_CREATE | XATTR_REPLACE) != 0
                    || *flags == XATTR_CREATE | XATTR_REPLACE
                {
                    return Err(Errno::EINVAL);
                }
                if value.len() > 65536 {
                    return Err(Errno::E2BIG);
                }
                let exists = self.get(*ino)?.xattrs.contains_key(name.as_slice());
                if exists && flags & XATTR_CREATE != 0 {
                    return Err(Errno::EEXIST);
                }
                if !exists && flags & XATTR_REPLACE != 0 {
                    return Err(Errno::ENODATA);
                }
                let n = self.node(*ino);
                n.xattrs.insert(name.clone(), value.clone());
                n.ctime = now;
                Ok(OpReply::Done)
            }
            Op::CasXattr {
                ino,
                name,
                expected,
                value,
            } => {
                if name.is_empty() {
                    return Err(Errno::EINVAL);
                }
                if name.len() > 255 {
                    return Err(Errno::ERANGE);
                }
                if value.len() > 65536 {
                    return Err(Errno::E2BIG);
                }
                let current = self.get(*ino)?.xattrs.get(name.as_slice()).cloned();
                if current.as_deref() != expected.as_deref().map(|b| b.as_slice()) {
                    return Err(Errno::ECANCELED);
                }
                let n = self.node(*ino);
                n.xattrs.insert(name.clone(), value.clone());
                n.ctime = now;
                Ok(OpReply::Done)
            }
            Op::RemoveXattr { ino, name } => {
                if name.is_empty() {
                    return Err(Errno::EINVAL);
                }
                if name.len() > 255 {
                    return Err(Errno::ERANGE);
                }
                if !self.get(*ino)?.xattrs.contains_key(name.as_slice()) {
                    return Err(Errno::ENODATA);
                }
                let n = self.node(*ino);
                n.xattrs.remove(name.as_slice());
                n.ctime = now;
                Ok(OpReply::Done)
            }
            // Not generated: the registry is not POSIX state; `namespace.rs` tests it.
            Op::RegisterDataNode { .. } => Ok(OpReply::GcGen(0)),
            // Not generated: GC has its own tests (`gc.rs`).
            Op::Condemn { .. } | Op::ForgetCondemned { .. } => Ok(OpReply::Done),
            // Not generated: ownership has its own tests (`ownership.rs`).
            Op::CreateSubtree { .. }
            | Op::RelabelSubtree { .. }
            | Op::MoveSubtree { .. }
            | Op::SetSubtreePolicy { .. }
            | Op::SetPlacement { .. }
            | Op::SetNodeDraining { .. }
            | Op::RemoveDataNode { .. }
            | Op::SetProfile { .. }
            | Op::ArmProfile { .. }
            | Op::MoveSubtreeWith { .. }
            | Op::SetSiteReplicas { .. }
            | Op::AckFeed { .. } => Err(Errno::EOPNOTSUPP),
            // Not generated: locks have their own tests (`locks.rs`).
            Op::OpenSession
            | Op::RenewSession { .. }
            | Op::CloseSession { .. }
            | Op::SetLock { .. }
            | Op::AcquireDelegation { .. }
            | Op::ReleaseDelegation { .. }
            | Op::RecallDelegation { .. }
            | Op::SetWriteBack { .. } => Err(Errno::EOPNOTSUPP),
            // Not generated: reserved creates are tested in `ownership.rs` and through a
            // mount.
            Op::ReserveInodes { .. } | Op::CreateReserved { .. } => Err(Errno::EOPNOTSUPP),
            // Not generated: clones are tested in `clone.rs`.
            Op::StartClone { .. }
            | Op::CloneStep { .. }
            | Op::AbortCloneStep { .. }
            | Op::RemoveSnapshot { .. }
            | Op::StartRefresh { .. } => Err(Errno::EOPNOTSUPP),
            // Not generated: orphans are tested through a mount.
            Op::ReleaseOrphan { .. } => Ok(OpReply::Done),
            Op::Write { ino, slices, .. } => {
                match self.get(*ino)?.kind {
                    FileKind::Regular => {}
                    FileKind::Directory => return Err(Errno::EISDIR),
                    _ => return Err(Errno::EINVAL),
                }
                let n = self.node(*ino);
                for s in slices {
                    let mut pos = s.offset;
                    for c in &s.chunks {
                        for i in 0..c.len {
                            n.data.insert(pos + i, byte_of(c.hash.0[0], c.offset + i));
                        }
                        pos += c.len;
                    }
                    n.size = n.size.max(s.offset + s.len);
                }
                n.mtime = now;
                n.ctime = now;
                Ok(OpReply::Attr(self.attr(*ino)))
            }
        }
    }

    fn rename(&mut self, now: i64, p1: u64, n1: &[u8], p2: u64, n2: &[u8], flags: u32) -> R<()> {
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
        {
            return Err(Errno::EINVAL);
        }
        check_name(n1)?;
        check_name(n2)?;
        self.dir(p1)?;
        self.dir(p2)?;
        if dot(n1) || dot(n2) {
            return Err(Errno::EINVAL);
        }
        let src = *self.nodes[&p1].children.get(n1).ok_or(Errno::ENOENT)?;
        let tgt = self.nodes[&p2].children.get(n2).copied();
        let src_dir = self.nodes[&src].kind == FileKind::Directory;
        if flags & RENAME_EXCHANGE != 0 {
            let tgt = tgt.ok_or(Errno::ENOENT)?;
            if tgt == src {
                return Ok(());
            }
            let tgt_dir = self.nodes[&tgt].kind == FileKind::Directory;
            if (src_dir && self.is_ancestor_or_self(src, p2))
                || (tgt_dir && self.is_ancestor_or_self(tgt, p1))
            {
                return Err(Errno::EINVAL);
            }
            self.node(p1).children.insert(n1.to_vec(), tgt);
            self.node(p2).children.insert(n2.to_vec(), src);
            if p1 != p2 {
                let d = i64::from(tgt_dir) - i64::from(src_dir);
                self.node(p1).nlink = (i64::from(self.nodes[&p1].nlink) + d) as u32;
                self.node(p2).nlink = (i64::from(self.nodes[&p2].nlink) - d) as u32;
                if src_dir {
                    self.node(src).parent = p2;
                }
                if tgt_dir {
                    self.node(tgt).parent = p1;
                }
            }
            self.touch(p1, now);
            self.touch(p2, now);
            self.node(src).ctime = now;
            self.node(tgt).ctime = now;
            return Ok(());
        }
        if let Some(tgt) = tgt {
            if flags & RENAME_NOREPLACE != 0 {
                return Err(Errno::EEXIST);
            }
            if tgt == src {
                return Ok(());
            }
            let t = &self.nodes[&tgt];
            let tgt_dir = t.kind == FileKind::Directory;
            if src_dir && !tgt_dir {
                return Err(Errno::ENOTDIR);
            }
            if !src_dir && tgt_dir {
                return Err(Errno::EISDIR);
            }
            if tgt_dir && !t.children.is_empty() {
                return Err(Errno::ENOTEMPTY);
            }
        }
        if src_dir && self.is_ancestor_or_self(src, p2) {
            return Err(Errno::EINVAL);
        }
        self.node(p1).children.remove(n1);
        if let Some(tgt) = tgt {
            self.node(p2).children.remove(n2);
            if self.nodes[&tgt].kind == FileKind::Directory {
                self.node(p2).nlink -= 1;
                self.nodes.remove(&tgt);
            } else {
                self.drop_link(tgt, now);
            }
        }
        self.node(p2).children.insert(n2.to_vec(), src);
        if src_dir && p1 != p2 {
            self.node(p2).nlink += 1;
            self.node(p1).nlink -= 1;
            self.node(src).parent = p2;
        }
        self.touch(p2, now);
        self.touch(p1, now);
        self.node(src).ctime = now;
        Ok(())
    }
}

// ---- generated operations ----

#[derive(Clone, Debug)]
enum Gen {
    Mkdir(usize, usize, u32),
    Mknod(usize, usize, u8, u32),
    Symlink(usize, usize, usize),
    Link(usize, usize, usize),
    Unlink(usize, usize),
    Rmdir(usize, usize),
    Rename(usize, usize, usize, usize, u8),
    Truncate(usize, u8, u64),
    Chmod(usize, u32, bool),
    Utimes(usize, Option<i64>, bool),
    SetXattr(usize, usize, usize, u8),
    RemoveXattr(usize, usize),
    CasXattr(usize, usize, u8, u8),
    Write(usize, u8, u64, u64, u8, bool),
}

const NAMES: &[&[u8]] = &[
    b"a", b"b", b"c", b"d", b"a", b"b", b"c", b"d", b".", b"..", b"", b"x/y",
];

fn name(i: usize) -> Vec<u8> {
    if i % 40 == 39 {
        return vec![b'n'; 256];
    }
    NAMES[i % NAMES.len()].to_vec()
}

fn region_offset(region: u8, off: u64) -> u64 {
    match region % 3 {
        0 => off % 300_000,
        1 => BLOCK_SIZE - 5_000 + off % 10_000,
        _ => 2 * BLOCK_SIZE + off % 1_000,
    }
}

fn gen_op() -> impl Strategy<Value = Gen> {
    let i = || 0usize..64;
    prop_oneof![
        4 => (i(), i(), 0u32..0o10000).prop_map(|(p, n, m)| Gen::Mkdir(p, n, m)),
        4 => (i(), i(), 0u8..3, 0u32..0o10000).prop_map(|(p, n, k, m)| Gen::Mknod(p, n, k, m)),
        1 => (i(), i(), 0usize..5000).prop_map(|(p, n, t)| Gen::Symlink(p, n, t)),
        2 => (i(), i(), i()).prop_map(|(s, p, n)| Gen::Link(s, p, n)),
        3 => (i(), i()).prop_map(|(p, n)| Gen::Unlink(p, n)),
        2 => (i(), i()).prop_map(|(p, n)| Gen::Rmdir(p, n)),
        4 => (i(), i(), i(), i(), 0u8..5).prop_map(|(a, b, c, d, f)| Gen::Rename(a, b, c, d, f)),
        2 => (i(), 0u8..3, any::<u64>()).prop_map(|(n, r, s)| Gen::Truncate(n, r, s)),
        1 => (i(), 0u32..0o10000, any::<bool>()).prop_map(|(n, m, own)| Gen::Chmod(n, m, own)),
        1 => (i(), proptest::option::of(0i64..1_000_000), any::<bool>()).prop_map(|(n, t, a)| Gen::Utimes(n, t, a)),
        2 => (i(), i(), 0usize..70_000, 0u8..4).prop_map(|(n, x, l, f)| Gen::SetXattr(n, x, l, f)),
        1 => (i(), i()).prop_map(|(n, x)| Gen::RemoveXattr(n, x)),
        2 => (i(), i(), 0u8..4, 0u8..3).prop_map(|(n, x, e, v)| Gen::CasXattr(n, x, e, v)),
        5 => (i(), 0u8..3, any::<u64>(), 1u64..6000, 1u8..250, any::<bool>())
            .prop_map(|(n, r, o, l, c, split)| Gen::Write(n, r, o, l, c, split)),
    ]
}

/// Turn a generated step into an operation on inodes the model knows (deleted ones too,
/// and one that never existed).
fn to_op(g: &Gen, known: &[u64]) -> Op {
    let ino = |i: usize| {
        if i % 17 == 16 {
            999_999
        } else {
            known[i % known.len()]
        }
    };
    let xname = |i: usize| match i % 6 {
        4 => vec![],
        5 => vec![b'x'; 256],
        k => format!("user.{k}").into_bytes(),
    };
    match g.clone() {
        Gen::Mkdir(p, n, mode) => Op::Mkdir {
            parent: ino(p),
            name: name(n),
            mode,
            uid: 5,
            gid: 7,
        },
        Gen::Mknod(p, n, k, mode) => {
            let kind = [FileKind::Regular, FileKind::Fifo, FileKind::Socket][k as usize % 3];
            Op::Mknod {
                parent: ino(p),
                name: name(n),
                kind,
                mode,
                uid: 5,
                gid: 7,
                rdev: 0,
            }
        }
        Gen::Symlink(p, n, t) => Op::Symlink {
            parent: ino(p),
            name: name(n),
            target: vec![b't'; if t > 4200 { 0 } else { t.max(1) }],
            uid: 5,
            gid: 7,
        },
        Gen::Link(s, p, n) => Op::Link {
            ino: ino(s),
            new_parent: ino(p),
            new_name: name(n),
        },
        Gen::Unlink(p, n) => Op::Unlink {
            parent: ino(p),
            name: name(n),
            keep_open: false,
        },
        Gen::Rmdir(p, n) => Op::Rmdir {
            parent: ino(p),
            name: name(n),
        },
        Gen::Rename(a, b, c, d, f) => Op::Rename {
            parent: ino(a),
            name: name(b),
            new_parent: ino(c),
            new_name: name(d),
            flags: [0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE, 7][f as usize],
        },
        Gen::Truncate(n, r, s) => {
            let size = if r == 2 && s % 50 == 0 {
                u64::MAX
            } else {
                region_offset(r, s)
            };
            Op::SetAttr {
                ino: ino(n),
                set: SetAttr {
                    size: Some(size),
                    ..Default::default()
                },
            }
        }
        Gen::Chmod(n, m, own) => Op::SetAttr {
            ino: ino(n),
            set: SetAttr {
                mode: Some(m),
                uid: own.then_some(9),
                gid: own.then_some(10),
                ..Default::default()
            },
        },
        Gen::Utimes(n, t, a) => {
            let t = t.map(TimeSet::Ns).unwrap_or(TimeSet::Now);
            let set = if a {
                SetAttr {
                    atime: Some(t),
                    ..Default::default()
                }
            } else {
                SetAttr {
                    mtime: Some(t),
                    ..Default::default()
                }
            };
            Op::SetAttr { ino: ino(n), set }
        }
        Gen::SetXattr(n, x, l, f) => Op::SetXattr {
            ino: ino(n),
            name: xname(x),
            value: vec![b'v'; l % 3 * 40 + if l > 66_000 { 66_000 } else { 0 }],
            flags: [0, XATTR_CREATE, XATTR_REPLACE, 3][f as usize],
        },
        Gen::CasXattr(n, x, e, v) => Op::CasXattr {
            ino: ino(n),
            name: xname(x),
            // Absent, or one of the small values the generators write.
            expected: match e {
                0 => None,
                e => Some(serde_bytes::ByteBuf::from(vec![
                    b'v';
                    (e as usize - 1) * 40
                ])),
            },
            value: vec![b'v'; v as usize * 40],
        },
        Gen::RemoveXattr(n, x) => Op::RemoveXattr {
            ino: ino(n),
            name: xname(x),
        },
        Gen::Write(n, r, o, len, c, split) => {
            let offset = region_offset(r, o);
            let hash = ChunkHash([c; 32]);
            let chunks = if split && len > 1 {
                let first = len / 2;
                vec![
                    ChunkRef {
                        hash,
                        offset: 10,
                        len: first,
                    },
                    ChunkRef {
                        hash: ChunkHash([c.wrapping_add(1); 32]),
                        offset: 0,
                        len: len - first,
                    },
                ]
            } else {
                vec![ChunkRef {
                    hash,
                    offset: 3,
                    len,
                }]
            };
            Op::Write {
                ino: ino(n),
                slices: vec![SliceWrite {
                    offset,
                    len,
                    chunks,
                }],
                checks: Vec::new(),
            }
        }
    }
}

fn errno_of(e: OpError) -> Errno {
    match e {
        OpError::Errno(n) => Errno(n),
        other => panic!("unexpected {other:?}"),
    }
}

/// Everything visible must agree.
fn compare_state(ns: &Namespace, model: &Model, known: &[u64]) -> Result<(), TestCaseError> {
    for &ino in known {
        match model.nodes.get(&ino) {
            None => prop_assert_eq!(
                ns.getattr(ino).err().map(|e| format!("{e}")),
                Some("ENOENT".to_string())
            ),
            Some(n) => {
                prop_assert_eq!(ns.getattr(ino).unwrap(), model.attr(ino), "attr of {}", ino);
                let mut xs = ns.listxattr(ino).unwrap();
                xs.sort();
                prop_assert_eq!(xs, n.xattrs.keys().cloned().collect::<Vec<_>>());
                for (k, v) in &n.xattrs {
                    prop_assert_eq!(&ns.getxattr(ino, k).unwrap(), v);
                }
                match n.kind {
                    FileKind::Directory => {
                        let (entries, eof) = ns.readdir(ino, 0, 0, false).unwrap();
                        prop_assert!(eof);
                        let mut got: Vec<(Vec<u8>, u64)> =
                            entries.into_iter().map(|e| (e.name, e.ino)).collect();
                        got.sort();
                        let want: Vec<(Vec<u8>, u64)> =
                            n.children.iter().map(|(k, v)| (k.clone(), *v)).collect();
                        prop_assert_eq!(got, want, "listing of {}", ino);
                    }
                    FileKind::Symlink => prop_assert_eq!(&ns.readlink(ino).unwrap(), &n.target),
                    FileKind::Regular => {
                        let (extents, attr) = ns.read_slices(ino, 0, u64::MAX).unwrap();
                        let size = attr.size;
                        prop_assert_eq!(size, n.size);
                        let mut pos = 0;
                        for e in extents {
                            prop_assert_eq!(e.offset, pos, "extents of {} must tile the file", ino);
                            match e.chunk {
                                None => prop_assert!(
                                    n.data.range(e.offset..e.offset + e.len).next().is_none(),
                                    "hole over data in {} at {}",
                                    ino,
                                    e.offset
                                ),
                                Some(c) => {
                                    for i in 0..e.len {
                                        let want = n.data.get(&(e.offset + i)).copied();
                                        prop_assert_eq!(
                                            Some(byte_of(c.hash.0[0], c.offset + i)),
                                            want,
                                            "byte {} of {}",
                                            e.offset + i,
                                            ino
                                        );
                                    }
                                }
                            }
                            pos += e.len;
                        }
                        prop_assert_eq!(pos, n.size);
                    }
                    _ => {}
                }
            }
        }
    }
    let stat = ns.statfs().unwrap();
    prop_assert_eq!(stat.files, model.nodes.len() as u64);
    let bytes: u64 = model
        .nodes
        .values()
        .filter(|n| n.kind == FileKind::Regular)
        .map(|n| n.size)
        .sum();
    prop_assert_eq!(stat.used_bytes, bytes);
    Ok(())
}

fn run_against_model(ns: &Namespace, steps: &[Gen]) -> Result<(), TestCaseError> {
    let mut model = Model::new();
    let mut known = vec![ROOT_INO];
    for (i, g) in steps.iter().enumerate() {
        let now = 1_000_000 + i as i64 * 1000;
        let op = to_op(g, &known);
        let want = model.apply(now, &op);
        let got = ns
            .execute(&Command {
                time_ns: now,
                site: None,
                session: None,
                holder_only: false,
                fence: None,
                op: op.clone(),
            })
            .unwrap()
            .map_err(errno_of);
        prop_assert_eq!(&got, &want, "step {}: {:?}", i, op);
        if let Ok(OpReply::Attr(a)) = &got {
            if !known.contains(&a.ino) {
                known.push(a.ino);
            }
        }
        compare_state(ns, &model, &known)?;
    }
    // Whatever the operations did, fsck finds the namespace well formed.
    let report = ns.fsck().unwrap();
    prop_assert_eq!(report.problem_count, 0, "{:?}", report.problems);
    prop_assert_eq!(report.inodes, model.nodes.len() as u64);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    /// The namespace logic on the in-memory store: many cases, fast.
    #[test]
    fn state_machine_matches_the_posix_model(steps in proptest::collection::vec(gen_op(), 1..60)) {
        run_against_model(&Namespace::in_memory().unwrap(), &steps)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 500, ..ProptestConfig::default() })]

    /// The same on RocksDB, the store a member runs: both stores must behave alike.
    #[test]
    fn state_machine_on_rocksdb_matches_the_posix_model(steps in proptest::collection::vec(gen_op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        run_against_model(&Namespace::open(dir.path()).unwrap(), &steps)?;
    }
}
