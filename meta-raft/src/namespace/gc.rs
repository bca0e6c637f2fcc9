//! The metadata's half of data-node garbage collection.
//!
//! The danger GC must avoid: a writer asks data node D "do you have chunk H?", D says
//! yes, D deletes H (nothing referenced it), and then the writer commits a slice that
//! references H. Each data node D therefore collects in rounds, and each round is two
//! commands in this log:
//!
//! 1. `Condemn`: of D's candidates, those with no reference (for at least the grace
//!    period, or ever) are marked condemned. From here on a write referencing them is
//!    refused, whoever checked them and when.
//! 2. D deletes them, then `ForgetCondemned` replaces each mark by a tombstone and bumps
//!    D's GC generation; the tombstone records that generation. D's `has` answers carry
//!    the generation current when they were made (D adopts a new one only after its
//!    deletions), and a write carries the one it relied on. A write referencing a chunk
//!    whose tombstone is newer than the answer is refused: the chunk it was told about
//!    may be gone.
//!
//! Tombstones are kept for [`TOMBSTONE_GENERATIONS`] generations; a write relying on an
//! answer older than that is refused whatever it references. A refused write gets
//! `StaleChunks`; the client asks D again (re-uploading what is gone) and retries. So a
//! write commits only if, for every chunk it references, either the chunk was referenced
//! before its condemnation could happen, or D answered after every deletion of it.

use std::ops::ControlFlow;

use mobilus_proto::fs::{ChunkCheck, ChunkHash, MAX_GC_BATCH};
use mobilus_proto::status::Errno;

use super::keys::{self, Cf};
use super::txn::Txn;
use crate::error::NsError;
use crate::types::OpError;

fn valid_node(node: &str) -> Result<(), NsError> {
    if node.is_empty() || node.len() > 255 {
        return Err(Errno::EINVAL.into());
    }
    Ok(())
}

fn valid_batch(hashes: &[ChunkHash]) -> Result<(), NsError> {
    if hashes.len() > MAX_GC_BATCH {
        return Err(Errno::E2BIG.into());
    }
    Ok(())
}

/// A data node's GC generation (0 before its first completed round).
pub(crate) fn generation(txn: &Txn<'_>, node: &str) -> Result<u64, NsError> {
    Ok(txn.get(Cf::Gc, &keys::gc_gen(node))?.unwrap_or(0))
}

/// References to `hash`, and when they last dropped to zero (0: never, or still held).
pub(crate) fn refs(txn: &Txn<'_>, hash: &ChunkHash) -> Result<(u64, i64), NsError> {
    let count: u64 = txn.get(Cf::ChunkRefs, &hash.0)?.unwrap_or(0);
    let zero_since: i64 = if count == 0 {
        txn.get(Cf::ZeroRefs, &hash.0)?.unwrap_or(0)
    } else {
        0
    };
    Ok((count, zero_since))
}

/// How many generations of tombstones each node keeps (see the module docs).
pub const TOMBSTONE_GENERATIONS: u64 = 64;

fn is_condemned(txn: &Txn<'_>, hash: &ChunkHash) -> Result<bool, NsError> {
    let prefix = keys::condemned(hash, "");
    Ok(!txn.scan_all(Cf::Gc, &prefix)?.is_empty())
}

/// Most data nodes one write may say it relied on: its chunks are spread over the site's
/// nodes (and synchronous sites'), so a large write on a large site names many.
pub const MAX_CHECKS: usize = 1024;

/// Refuse a write whose chunks may have been collected since the writer checked them.
/// `checks` names every node whose answer the write relies on (each holds a copy): each
/// is checked, so a copy deleted after its node answered refuses the write even when
/// another node's copy is intact; the writer asks again and stores the copies anew.
pub(crate) fn check_write<'h>(
    txn: &Txn<'_>,
    checks: &[ChunkCheck],
    hashes: impl Iterator<Item = &'h ChunkHash>,
) -> Result<(), NsError> {
    let stale = |why: String| Err(OpError::StaleChunks(why).into());
    if checks.len() > MAX_CHECKS {
        return Err(Errno::E2BIG.into());
    }
    for c in checks {
        valid_node(&c.node)?;
    }
    let mut hashes = hashes.peekable();
    if hashes.peek().is_none() {
        return Ok(());
    }
    for c in checks {
        // A node being drained must end with nothing only it holds: no write may rely on
        // a copy there (the writer reads the registry again and stores them elsewhere).
        if super::nodes::is_draining(txn, &c.node)? {
            return stale(format!("data node {} is being drained", c.node));
        }
        let current = generation(txn, &c.node)?;
        if c.gc_gen.saturating_add(TOMBSTONE_GENERATIONS) < current {
            return stale(format!(
                "data node {} answered {} collections ago",
                c.node,
                current - c.gc_gen
            ));
        }
    }
    for h in hashes {
        if is_condemned(txn, h)? {
            return stale(format!("chunk {h:?} is being collected"));
        }
        for c in checks {
            let deleted_at: Option<u64> = txn.get(Cf::Gc, &keys::tombstone(h, &c.node))?;
            if deleted_at.is_some_and(|g| g > c.gc_gen) {
                return stale(format!(
                    "data node {} deleted chunk {h:?} after it was asked",
                    c.node
                ));
            }
        }
    }
    Ok(())
}

/// Step 1 of a round: condemn the unreferenced candidates. Returns every chunk condemned
/// for `node` (including any an interrupted round left) and its generation.
pub(crate) fn condemn(
    txn: &mut Txn<'_>,
    now: i64,
    node: &str,
    hashes: &[ChunkHash],
    grace_ns: i64,
) -> Result<(Vec<ChunkHash>, u64), NsError> {
    valid_node(node)?;
    valid_batch(hashes)?;
    if grace_ns < 0 {
        return Err(Errno::EINVAL.into());
    }
    for h in hashes {
        let (count, zero_since) = refs(txn, h)?;
        let unreferenced_long_enough =
            zero_since == 0 || now.saturating_sub(zero_since) >= grace_ns;
        if count == 0 && unreferenced_long_enough {
            txn.put(Cf::Gc, keys::condemned(h, node), &now)?;
            txn.put(Cf::Gc, keys::condemned_by(node, Some(h)), &now)?;
        }
    }
    let prefix = keys::condemned_by(node, None);
    let mut condemned = Vec::new();
    txn.scan(Cf::Gc, &prefix, &prefix, |key, _| {
        condemned.extend(key.get(prefix.len()..).and_then(ChunkHash::from_slice));
        Ok(if condemned.len() < MAX_GC_BATCH {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        })
    })?;
    Ok((condemned, generation(txn, node)?))
}

/// Drop every condemnation `node` made (it was removed: nobody will forget them).
pub(crate) fn forget_node_condemnations(txn: &mut Txn<'_>, node: &str) -> Result<(), NsError> {
    let prefix = keys::condemned_by(node, None);
    let mut hashes = Vec::new();
    txn.scan(Cf::Gc, &prefix, &prefix, |key, _| {
        hashes.extend(key.get(prefix.len()..).and_then(ChunkHash::from_slice));
        Ok(ControlFlow::Continue(()))
    })?;
    for h in hashes {
        txn.delete(Cf::Gc, keys::condemned(&h, node));
        txn.delete(Cf::Gc, keys::condemned_by(node, Some(&h)));
    }
    Ok(())
}

/// Step 2 of a round, after `node` deleted them: forget the condemnations and bump the
/// node's generation. Returns the new generation.
pub(crate) fn forget(txn: &mut Txn<'_>, node: &str, hashes: &[ChunkHash]) -> Result<u64, NsError> {
    valid_node(node)?;
    valid_batch(hashes)?;
    let next = generation(txn, node)? + 1;
    for h in hashes {
        txn.delete(Cf::Gc, keys::condemned(h, node));
        txn.delete(Cf::Gc, keys::condemned_by(node, Some(h)));
        if let Some(old) = txn.get::<u64>(Cf::Gc, &keys::tombstone(h, node))? {
            txn.delete(Cf::Gc, keys::tombstone_by_gen(node, old, Some(h)));
        }
        txn.put(Cf::Gc, keys::tombstone(h, node), &next)?;
        txn.put(Cf::Gc, keys::tombstone_by_gen(node, next, Some(h)), &())?;
    }
    txn.put(Cf::Gc, keys::gc_gen(node), &next)?;
    prune_tombstones(txn, node, next)?;
    Ok(next)
}

/// Drop the tombstones no write can need any more (their generation has fallen out of
/// the window `check_write` still accepts).
fn prune_tombstones(txn: &mut Txn<'_>, node: &str, current: u64) -> Result<(), NsError> {
    let Some(last) = current.checked_sub(TOMBSTONE_GENERATIONS + 1) else {
        return Ok(());
    };
    let prefix = keys::tombstone_by_gen(node, 0, None);
    let prefix = &prefix[..prefix.len() - 8];
    let mut doomed = Vec::new();
    txn.scan(Cf::Gc, prefix, prefix, |key, _| {
        let gen = keys::u64_at(key, prefix.len());
        if gen > last {
            return Ok(ControlFlow::Break(()));
        }
        doomed.push(key.to_vec());
        Ok(ControlFlow::Continue(()))
    })?;
    for key in doomed {
        if let Some(h) = key.get(prefix.len() + 8..).and_then(ChunkHash::from_slice) {
            txn.delete(Cf::Gc, keys::tombstone(&h, node));
        }
        txn.delete(Cf::Gc, key);
    }
    Ok(())
}
