//! What a subtree holds of the data: its logical bytes, the chunks it references, and
//! the bytes only it references (what deleting it would free), found by walking it over
//! one view. Clones and snapshots share chunks, so a subtree's size says little about
//! what its removal would give back.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;

use mobilus_proto::fs::{ChunkHash, FileKind, InodeId, SubtreeId, SubtreeUsage};

use super::keys::{self, Cf};
use super::txn::Txn;
use super::{load, subtree, DentryRecord, SliceRecord};
use crate::codec;
use crate::error::{NsError, StoreError};

/// Per chunk: references from the subtree, and the furthest byte of it they use (its
/// size, as far as the subtree knows it).
#[derive(Default)]
pub(crate) struct Held {
    pub(crate) refs: u64,
    pub(crate) end: u64,
}

pub(crate) fn walk(
    txn: &Txn<'_>,
    root: SubtreeId,
) -> Result<(u64, HashMap<ChunkHash, Held>), NsError> {
    let mut chunks: HashMap<ChunkHash, Held> = HashMap::new();
    let mut seen_linked: HashSet<InodeId> = HashSet::new();
    // A directory has one parent: one reached twice is a damaged store (a cycle would
    // walk forever; found by fuzzing stored values).
    let mut seen_dirs: HashSet<InodeId> = HashSet::from([root]);
    let (mut files, mut todo) = (0u64, vec![root]);
    while let Some(dir) = todo.pop() {
        let prefix = keys::ino(dir);
        let mut entries = Vec::new();
        txn.scan(Cf::Dentries, &prefix, &prefix, |_, v| {
            entries.push(v.to_vec());
            Ok(ControlFlow::Continue(()))
        })?;
        for v in entries {
            let d: DentryRecord = codec::decode(&v)?;
            match d.kind {
                FileKind::Directory => {
                    if !seen_dirs.insert(d.ino) {
                        return Err(StoreError::Corrupt(format!(
                            "directory {} is in two places in subtree {root}",
                            d.ino
                        ))
                        .into());
                    }
                    todo.push(d.ino);
                }
                FileKind::Regular => {
                    let attr = load(txn, d.ino)?.attr;
                    // A file of another subtree (linked before either was one) is its.
                    if attr.subtree != root || (attr.nlink > 1 && !seen_linked.insert(d.ino)) {
                        continue;
                    }
                    files += 1;
                    for (_, v) in txn.scan_all(Cf::Slices, &keys::ino(d.ino))? {
                        let s: SliceRecord = codec::decode(&v)?;
                        for c in s.chunks {
                            let h = chunks.entry(c.hash).or_default();
                            h.refs += 1;
                            h.end = h.end.max(c.offset.saturating_add(c.len));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok((files, chunks))
}

/// `root`'s usage (the shared root's is not computed: it is everything else).
pub(crate) fn usage(txn: &Txn<'_>, root: SubtreeId) -> Result<SubtreeUsage, NsError> {
    let sub = subtree::must_get(txn, root)?;
    let (files, chunks) = walk(txn, root)?;
    let mut u = SubtreeUsage {
        root,
        files,
        logical_bytes: sub.bytes,
        chunks: chunks.len() as u64,
        ..SubtreeUsage::default()
    };
    // Sums saturate: a record that claims absurd lengths (a damaged store) must not
    // panic a report.
    for (hash, held) in chunks {
        u.referenced_bytes = u.referenced_bytes.saturating_add(held.end);
        let total: u64 = txn.get(Cf::ChunkRefs, &hash.0)?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "chunk {} is referenced but not counted",
                hash.to_hex()
            ))
        })?;
        if total == held.refs {
            u.exclusive_chunks += 1;
            u.exclusive_bytes = u.exclusive_bytes.saturating_add(held.end);
        }
    }
    Ok(u)
}

impl super::Namespace {
    /// What subtree `root` holds of the data (a walk of it: use off the async threads).
    pub fn subtree_usage(&self, root: SubtreeId) -> Result<SubtreeUsage, NsError> {
        self.with_view(|txn| usage(txn, root))
    }
}
