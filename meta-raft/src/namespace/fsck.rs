//! `fsck` of the metadata: is the tree well formed, and do the chunk reference counts
//! equal the references? Read-only, over one consistent view of the store, so a check running beside
//! live writes sees one consistent state and reports no false problems.
//!
//! It keeps a few dozen bytes per inode and per distinct chunk in memory.

use std::collections::{BTreeMap, HashMap};

use mobilus_proto::fs::{ChunkHash, FileKind, InodeId, SubtreeState, ROOT_INO};
use serde::de::DeserializeOwned;

use super::keys::{self, Cf, BLOCK_SIZE};
use super::kv::KvRead;
use super::{Counters, DentryRecord, InodeRecord, Namespace, SliceRecord, SubtreeRecord};
use crate::codec;
use crate::error::{NsError, StoreError};

/// Problems listed in full; beyond this they are only counted.
pub const MAX_LISTED_PROBLEMS: usize = 100;

/// What `fsck` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsckReport {
    pub inodes: u64,
    pub directories: u64,
    pub files: u64,
    pub symlinks: u64,
    pub others: u64,
    pub dentries: u64,
    pub orphans: u64,
    pub slices: u64,
    /// Distinct chunks the slices reference, and references in all.
    pub referenced_chunks: u64,
    pub chunk_references: u64,
    /// Every problem found (only the first [`MAX_LISTED_PROBLEMS`] are listed).
    pub problem_count: u64,
    pub problems: Vec<String>,
}

impl FsckReport {
    fn problem(&mut self, text: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_LISTED_PROBLEMS {
            self.problems.push(text);
        }
    }
}

/// The facts of an inode fsck compares against.
struct InodeFacts {
    kind: FileKind,
    nlink: u32,
    parent: InodeId,
    subtree: InodeId,
    size: u64,
    /// Dentries naming it, and (directories) subdirectories in it.
    links: u32,
    subdirs: u32,
}

/// Visit every pair of a column family as of the view.
fn each(
    view: &dyn KvRead,
    which: Cf,
    mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), NsError>,
) -> Result<(), NsError> {
    for item in view.iter_from(which, &[])? {
        let (k, v) = item?;
        visit(&k, &v)?;
    }
    Ok(())
}

fn get<T: DeserializeOwned>(
    view: &dyn KvRead,
    which: Cf,
    key: &[u8],
) -> Result<Option<T>, NsError> {
    match view.get(which, key)? {
        Some(v) => Ok(Some(codec::decode(&v)?)),
        None => Ok(None),
    }
}

impl Namespace {
    /// Check the whole namespace (see the module doc).
    pub fn fsck(&self) -> Result<FsckReport, NsError> {
        let view = self.store().view()?;
        let view: &dyn KvRead = &*view;
        let mut r = FsckReport::default();
        let mut inodes: BTreeMap<InodeId, InodeFacts> = BTreeMap::new();
        each(view, Cf::Inodes, |k, v| {
            let rec: InodeRecord = codec::decode(v)?;
            let ino = keys::u64_at(k, 0);
            if rec.attr.ino != ino {
                r.problem(format!("inode key {ino} holds inode {}", rec.attr.ino));
            }
            match rec.attr.kind {
                FileKind::Directory => r.directories += 1,
                FileKind::Regular => r.files += 1,
                FileKind::Symlink => r.symlinks += 1,
                _ => r.others += 1,
            }
            inodes.insert(
                ino,
                InodeFacts {
                    kind: rec.attr.kind,
                    nlink: rec.attr.nlink,
                    parent: rec.attr.parent,
                    subtree: rec.attr.subtree,
                    size: rec.attr.size,
                    links: 0,
                    subdirs: 0,
                },
            );
            Ok(())
        })?;
        r.inodes = inodes.len() as u64;
        let mut subtrees = BTreeMap::new();
        each(view, Cf::Subtrees, |k, v| {
            let sub: SubtreeRecord = codec::decode(v)?;
            subtrees.insert(keys::u64_at(k, 0), sub);
            Ok(())
        })?;
        check_subtrees(&inodes, &subtrees, &mut r);
        self.check_dentries(view, &mut inodes, &subtrees, &mut r)?;
        self.check_cookies(view, &mut r)?;
        let mut orphans = Vec::new();
        each(view, Cf::Orphans, |k, _| {
            orphans.push(keys::u64_at(k, 0));
            Ok(())
        })?;
        r.orphans = orphans.len() as u64;
        // The hidden roots of clones being made are named by their clone records.
        let clone_roots = super::clone::roots(view)?;
        check_links(&inodes, &orphans, &clone_roots, &mut r);
        check_reachable(&inodes, &mut r);
        self.check_chunks(view, &inodes, &mut r)?;
        each(view, Cf::Xattrs, |k, _| {
            let ino = keys::u64_at(k, 0);
            if !inodes.contains_key(&ino) {
                r.problem(format!("xattr of missing inode {ino}"));
            }
            Ok(())
        })?;
        let counters: Counters = get(view, Cf::Sys, keys::sys::COUNTERS)?.unwrap_or_default();
        if counters.inodes != r.inodes {
            r.problem(format!(
                "the inode counter says {} but {} inodes exist",
                counters.inodes, r.inodes
            ));
        }
        if let Some(max) = inodes.keys().next_back() {
            if *max >= counters.next_ino {
                r.problem(format!(
                    "inode {max} exists but the next inode number is {}",
                    counters.next_ino
                ));
            }
        }
        Ok(r)
    }

    fn check_dentries(
        &self,
        view: &dyn KvRead,
        inodes: &mut BTreeMap<InodeId, InodeFacts>,
        subtrees: &BTreeMap<InodeId, SubtreeRecord>,
        r: &mut FsckReport,
    ) -> Result<(), NsError> {
        each(view, Cf::Dentries, |k, v| {
            r.dentries += 1;
            let parent = keys::u64_at(k, 0);
            let name = String::from_utf8_lossy(k.get(8..).unwrap_or_default()).into_owned();
            let d: DentryRecord = codec::decode(v)?;
            match inodes.get(&parent).map(|p| p.kind) {
                Some(FileKind::Directory) => {}
                Some(_) => r.problem(format!("entry {name:?} is in {parent}, not a directory")),
                None => r.problem(format!("entry {name:?} is in missing directory {parent}")),
            }
            let named_cookie: Option<Vec<u8>> =
                view.get(Cf::Cookies, &keys::cookie(parent, d.cookie))?;
            if named_cookie.as_deref() != k.get(8..) {
                r.problem(format!(
                    "entry {name:?} in {parent} has cookie {} that does not name it",
                    d.cookie
                ));
            }
            let parent_label = inodes.get(&parent).map(|p| p.subtree);
            let Some(child) = inodes.get_mut(&d.ino) else {
                r.problem(format!(
                    "entry {name:?} in {parent} names missing inode {}",
                    d.ino
                ));
                return Ok(());
            };
            child.links += 1;
            if let Some(parent_label) = parent_label {
                let preparing = |s: InodeId| {
                    subtrees
                        .get(&s)
                        .is_some_and(|t| t.state == SubtreeState::Preparing)
                };
                let fits = child.subtree == parent_label
                    // A subtree's root, named in the shared subtree.
                    || (child.subtree == d.ino && parent_label == ROOT_INO)
                    // Mid-relabel: relabelled directories list entries not reached yet.
                    || preparing(child.subtree)
                    || preparing(parent_label)
                    // A file with several names keeps the subtree it got; names of it on
                    // both sides can only come from links made before the subtree was.
                    || (child.kind != FileKind::Directory && child.nlink > 1);
                if !fits {
                    r.problem(format!(
                        "entry {name:?} in {parent} (subtree {parent_label}) names inode {} of subtree {}",
                        d.ino, child.subtree
                    ));
                }
            }
            if child.kind != d.kind {
                r.problem(format!(
                    "entry {name:?} in {parent} says {:?} but inode {} is {:?}",
                    d.kind, d.ino, child.kind
                ));
            }
            if child.kind == FileKind::Directory {
                if child.parent != parent {
                    r.problem(format!(
                        "directory {} is named in {parent} but its parent is {}",
                        d.ino, child.parent
                    ));
                }
                if let Some(p) = inodes.get_mut(&parent) {
                    p.subdirs += 1;
                }
            }
            Ok(())
        })
    }

    fn check_cookies(&self, view: &dyn KvRead, r: &mut FsckReport) -> Result<(), NsError> {
        each(view, Cf::Cookies, |k, name| {
            let parent = keys::u64_at(k, 0);
            let cookie = keys::u64_at(k, 8);
            let d: Option<DentryRecord> = get(view, Cf::Dentries, &keys::with_name(parent, name))?;
            if d.map(|d| d.cookie) != Some(cookie) {
                r.problem(format!(
                    "cookie {cookie} of {parent} names {:?}, which has no entry with it",
                    String::from_utf8_lossy(name)
                ));
            }
            Ok(())
        })
    }

    /// Reference counts against the references the slices hold.
    fn check_chunks(
        &self,
        view: &dyn KvRead,
        inodes: &BTreeMap<InodeId, InodeFacts>,
        r: &mut FsckReport,
    ) -> Result<(), NsError> {
        let mut held: HashMap<ChunkHash, u64> = HashMap::new();
        each(view, Cf::Slices, |k, v| {
            r.slices += 1;
            let (ino, block) = (keys::u64_at(k, 0), keys::u64_at(k, 8));
            let s: SliceRecord = codec::decode(v)?;
            match inodes.get(&ino).map(|i| i.kind) {
                Some(FileKind::Regular) => {}
                Some(kind) => r.problem(format!("slice of inode {ino}, a {kind:?}")),
                None => r.problem(format!("slice of missing inode {ino}")),
            }
            if s.offset / BLOCK_SIZE != block {
                r.problem(format!(
                    "slice at {} of inode {ino} is filed under block {block}",
                    s.offset
                ));
            }
            let covered = super::file::chunks_length(&s.chunks);
            if !s.chunks.is_empty() && covered != Some(s.len) {
                let covered = covered.map_or("more than 2^64".to_string(), |n| n.to_string());
                r.problem(format!(
                    "slice at {} of inode {ino} is {} bytes but its chunks give {covered}",
                    s.offset, s.len
                ));
            }
            for c in &s.chunks {
                *held.entry(c.hash).or_default() += 1;
                r.chunk_references += 1;
            }
            Ok(())
        })?;
        r.referenced_chunks = held.len() as u64;
        each(view, Cf::ChunkRefs, |k, v| {
            let count: u64 = codec::decode(v)?;
            let hash = ChunkHash::from_slice(k).ok_or_else(|| {
                StoreError::Corrupt(format!("chunk_refs key of {} bytes", k.len()))
            })?;
            let actual = held.remove(&hash).unwrap_or(0);
            if actual != count {
                r.problem(format!(
                    "chunk {} is counted {count} times but referenced {actual}",
                    hash.to_hex()
                ));
            }
            Ok(())
        })?;
        for (hash, actual) in held {
            r.problem(format!(
                "chunk {} is referenced {actual} times but has no count",
                hash.to_hex()
            ));
        }
        Ok(())
    }
}

/// Link counts: a directory has 2 plus its subdirectories; anything else one per entry;
/// an inode with none is an orphan (open somewhere) or leaked.
fn check_links(
    inodes: &BTreeMap<InodeId, InodeFacts>,
    orphans: &[InodeId],
    clone_roots: &[InodeId],
    r: &mut FsckReport,
) {
    for (ino, f) in inodes {
        let expected = if f.kind == FileKind::Directory {
            2 + f.subdirs
        } else {
            f.links
        };
        if f.nlink != expected {
            r.problem(format!(
                "inode {ino} has nlink {} but {expected} links",
                f.nlink
            ));
        }
        let hidden_clone = clone_roots.contains(ino);
        let named = f.links > 0 || *ino == ROOT_INO || hidden_clone;
        if f.kind == FileKind::Directory && *ino != ROOT_INO && !hidden_clone && f.links != 1 {
            r.problem(format!("directory {ino} is named {} times", f.links));
        }
        if !named && !orphans.contains(ino) {
            r.problem(format!("inode {ino} has no name and is not open (leaked)"));
        }
    }
    for ino in orphans {
        match inodes.get(ino) {
            None => r.problem(format!("orphan {ino} does not exist")),
            Some(f) if f.links > 0 => r.problem(format!("orphan {ino} still has a name")),
            Some(_) => {}
        }
    }
}

/// Every directory's parent chain ends at the root (no cycles, no detached subtrees).
fn check_reachable(inodes: &BTreeMap<InodeId, InodeFacts>, r: &mut FsckReport) {
    let mut reaches_root: HashMap<InodeId, bool> = HashMap::from([(ROOT_INO, true)]);
    for (ino, f) in inodes {
        if f.kind != FileKind::Directory {
            continue;
        }
        let mut path = Vec::new();
        let mut at = *ino;
        let verdict = loop {
            if let Some(v) = reaches_root.get(&at) {
                break *v;
            }
            if path.contains(&at) || path.len() > inodes.len() {
                break false;
            }
            path.push(at);
            match inodes.get(&at) {
                Some(d) if d.kind == FileKind::Directory => at = d.parent,
                _ => break false,
            }
        };
        for p in &path {
            reaches_root.insert(*p, verdict);
        }
        if !verdict {
            r.problem(format!("directory {ino} is not reachable from the root"));
        }
    }
}

/// Every label names a subtree, and each owned subtree's counts are its inodes'.
fn check_subtrees(
    inodes: &BTreeMap<InodeId, InodeFacts>,
    subtrees: &BTreeMap<InodeId, SubtreeRecord>,
    r: &mut FsckReport,
) {
    let mut usage: BTreeMap<InodeId, (u64, u64)> = BTreeMap::new();
    for (ino, f) in inodes {
        if !subtrees.contains_key(&f.subtree) {
            r.problem(format!(
                "inode {ino} is labelled with unknown subtree {}",
                f.subtree
            ));
        }
        let u = usage.entry(f.subtree).or_default();
        u.0 += 1;
        if f.kind == FileKind::Regular {
            u.1 += f.size;
        }
    }
    for (root, sub) in subtrees {
        if *root == ROOT_INO || sub.state != SubtreeState::Owned {
            continue;
        }
        let (n, bytes) = usage.get(root).copied().unwrap_or_default();
        if (n, bytes) != (sub.inodes, sub.bytes) {
            r.problem(format!(
                "subtree {root} counts {} inodes and {} bytes but holds {n} and {bytes}",
                sub.inodes, sub.bytes
            ));
        }
    }
}
