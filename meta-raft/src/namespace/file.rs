//! File data as slices: each write of a range is stored as one record per logical block
//! it touches, under a new sequence number; reads overlay a block's records in sequence
//! order, newest wins. Chunk reference counts change in the same transaction.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use mobilus_proto::fs::{overlay_extents, MAX_CHUNKS_PER_WRITE, MAX_FILE_SIZE};
use mobilus_proto::fs::{
    Attr, ChunkCheck, ChunkHash, ChunkRef, Extent, FileKind, InodeId, SliceWrite,
};
use mobilus_proto::status::Errno;
use mobilus_proto::MAX_CHUNK_BYTES;

use super::keys::{self, Cf, BLOCK_SIZE};
use super::txn::Txn;
use super::{load, save, subtree, update_counters, InodeRecord, SliceRecord};
use crate::codec;
use crate::error::NsError;

/// The bytes of `chunks` (laid end to end from file offset `start`) that fall in `[a, b)`,
/// as extents. No chunks means a hole.
pub fn cut(start: u64, len: u64, chunks: &[ChunkRef], a: u64, b: u64) -> Vec<Extent> {
    let (a, b) = (a.max(start), b.min(start + len));
    if a >= b {
        return Vec::new();
    }
    if chunks.is_empty() {
        return vec![Extent {
            offset: a,
            len: b - a,
            chunk: None,
        }];
    }
    let mut out = Vec::new();
    let mut pos = start;
    for c in chunks {
        let (s, e) = (pos.max(a), (pos + c.len).min(b));
        if s < e {
            let chunk = ChunkRef {
                hash: c.hash,
                offset: c.offset + (s - pos),
                len: e - s,
            };
            out.push(Extent {
                offset: s,
                len: e - s,
                chunk: Some(chunk),
            });
        }
        pos += c.len;
        if pos >= b {
            break;
        }
    }
    out
}

pub(crate) fn incref(txn: &mut Txn<'_>, hash: &ChunkHash) -> Result<(), NsError> {
    // A count that grows never reaches zero: no time is recorded.
    add_refs(txn, 0, hash, 1)
}

fn decref(txn: &mut Txn<'_>, now: i64, hash: &ChunkHash) -> Result<(), NsError> {
    add_refs(txn, now, hash, -1)
}

/// Add `delta` to a chunk's reference count, in one read and one write: at zero the
/// count goes and the chunk's time of becoming unreferenced (`now`) is kept for GC;
/// above zero that time goes.
fn add_refs(txn: &mut Txn<'_>, now: i64, hash: &ChunkHash, delta: i64) -> Result<(), NsError> {
    if delta == 0 {
        return Ok(());
    }
    let count: u64 = txn.get(Cf::ChunkRefs, &hash.0)?.unwrap_or(0);
    match count.saturating_add_signed(delta) {
        0 => {
            txn.delete(Cf::ChunkRefs, hash.0.to_vec());
            txn.put(Cf::ZeroRefs, hash.0.to_vec(), &now)?;
        }
        n => {
            if count == 0 {
                txn.delete(Cf::ZeroRefs, hash.0.to_vec());
            }
            txn.put(Cf::ChunkRefs, hash.0.to_vec(), &n)?;
        }
    }
    Ok(())
}

/// The bytes `chunks` cover together; `None` past `u64` (a request, or a stored record,
/// may claim anything).
pub(super) fn chunks_length(chunks: &[ChunkRef]) -> Option<u64> {
    chunks
        .iter()
        .try_fold(0u64, |acc, c| acc.checked_add(c.len))
}

fn put_record(txn: &mut Txn<'_>, ino: InodeId, seq: u64, rec: &SliceRecord) -> Result<(), NsError> {
    for c in &rec.chunks {
        incref(txn, &c.hash)?;
    }
    store_record(txn, ino, seq, rec)
}

/// [`put_record`] with the references already counted.
fn store_record(
    txn: &mut Txn<'_>,
    ino: InodeId,
    seq: u64,
    rec: &SliceRecord,
) -> Result<(), NsError> {
    let block = rec.offset / BLOCK_SIZE;
    txn.put(Cf::Slices, keys::slice(ino, block, seq), rec)?;
    Ok(())
}

fn next_seq(txn: &mut Txn<'_>) -> Result<u64, NsError> {
    Ok(update_counters(txn, |c| c.next_seq += 1)?.next_seq - 1)
}

fn regular(rec: &InodeRecord) -> Result<(), NsError> {
    match rec.attr.kind {
        FileKind::Regular => Ok(()),
        FileKind::Directory => Err(Errno::EISDIR.into()),
        _ => Err(Errno::EINVAL.into()),
    }
}

/// Store the slices of a write; the file grows to cover them.
pub(crate) fn write(
    txn: &mut Txn<'_>,
    now: i64,
    ino: InodeId,
    slices: &[SliceWrite],
    checks: &[ChunkCheck],
) -> Result<Attr, NsError> {
    let mut rec = load(txn, ino)?;
    regular(&rec)?;
    if slices.iter().map(|s| s.chunks.len().max(1)).sum::<usize>() > MAX_CHUNKS_PER_WRITE {
        return Err(Errno::E2BIG.into());
    }
    for s in slices {
        let end = s.offset.checked_add(s.len).ok_or(Errno::EFBIG)?;
        if end > MAX_FILE_SIZE {
            return Err(Errno::EFBIG.into());
        }
        let covered = chunks_length(&s.chunks);
        if s.len == 0 || covered != Some(s.len) {
            return Err(Errno::EINVAL.into());
        }
        // No chunk is longer than a data node stores: this also bounds the records one
        // write can make (one per block it covers).
        if s.chunks.iter().any(|c| c.len > MAX_CHUNK_BYTES) {
            return Err(Errno::EINVAL.into());
        }
    }
    super::gc::check_write(
        txn,
        checks,
        slices.iter().flat_map(|s| s.chunks.iter().map(|c| &c.hash)),
    )?;
    let old_size = rec.attr.size;
    for s in slices {
        let seq = next_seq(txn)?;
        let end = s.offset + s.len;
        let mut block_start = s.offset / BLOCK_SIZE * BLOCK_SIZE;
        while block_start < end {
            let (a, b) = (s.offset.max(block_start), end.min(block_start + BLOCK_SIZE));
            let chunks = cut(s.offset, s.len, &s.chunks, a, b)
                .into_iter()
                .filter_map(|e| e.chunk)
                .collect();
            put_record(
                txn,
                ino,
                seq,
                &SliceRecord {
                    offset: a,
                    len: b - a,
                    chunks,
                },
            )?;
            block_start += BLOCK_SIZE;
        }
        rec.attr.size = rec.attr.size.max(end);
    }
    let mut blocks: Vec<u64> = slices
        .iter()
        .flat_map(|s| s.offset / BLOCK_SIZE..=(s.offset + s.len - 1) / BLOCK_SIZE)
        .collect();
    blocks.sort_unstable();
    blocks.dedup();
    for block in blocks {
        compact(txn, now, ino, block)?;
    }
    rec.attr.mtime_ns = now;
    rec.attr.ctime_ns = now;
    let grown = rec.attr.size - old_size;
    update_counters(txn, |c| c.bytes += grown)?;
    subtree::account(txn, rec.attr.subtree, 0, grown as i64)?;
    super::feed::record(txn, rec.attr.subtree, slices)?;
    save(txn, &rec)?;
    Ok(rec.attr)
}

/// Delete every slice record of `ino` in blocks `first_block..`, dropping their references.
pub(crate) fn drop_slices_from(
    txn: &mut Txn<'_>,
    now: i64,
    ino: InodeId,
    first_block: u64,
) -> Result<(), NsError> {
    let prefix = keys::ino(ino);
    let start = keys::slice(ino, first_block, 0);
    let mut found = Vec::new();
    txn.scan(Cf::Slices, &prefix, &start, |k, v| {
        found.push((k.to_vec(), codec::decode::<SliceRecord>(v)?));
        Ok(ControlFlow::Continue(()))
    })?;
    for (key, rec) in found {
        for c in &rec.chunks {
            decref(txn, now, &c.hash)?;
        }
        txn.delete(Cf::Slices, key);
    }
    let mut marks = Vec::new();
    txn.scan(
        Cf::Compacted,
        &prefix,
        &keys::block(ino, first_block),
        |k, _| {
            marks.push(k.to_vec());
            Ok(ControlFlow::Continue(()))
        },
    )?;
    for key in marks {
        txn.delete(Cf::Compacted, key);
    }
    Ok(())
}

/// A block with more records than this written since its last compaction is compacted
/// again (see [`compact`]).
pub const COMPACT_AT: usize = 32;

/// Rewrite a block's records as its merged view when they have piled up: every write
/// adds records, and a read merges them all. The merged view's chunk extents become the
/// new records (holes need none: no record reads as zeros), under new sequence numbers;
/// references move with them in this transaction. Metadata only: no chunk is rewritten.
///
/// Only records written since the last compaction count toward the next, which the
/// block's [`Cf::Compacted`] mark tells apart (the last sequence number taken when it was
/// compacted; no mark: every record counts). A block written at random in a sparse file
/// compacts to one record per separate extent, hundreds of them; counted with the rest,
/// they kept the block over [`COMPACT_AT`] and every write rewrote them all (a Raft
/// member's CPU tripled under fsync'd 4 KiB random writes).
fn compact(txn: &mut Txn<'_>, now: i64, ino: InodeId, block: u64) -> Result<(), NsError> {
    let prefix = keys::block(ino, block);
    let since: Option<u64> = txn.get(Cf::Compacted, &prefix)?;
    let newer = match since {
        Some(seq) => keys::slice(ino, block, seq.saturating_add(1)),
        None => prefix.clone(),
    };
    // Counted first, without copying: most writes find too few to compact, and a
    // fragmented block's merged record can hold a thousand chunk references.
    let mut count = 0;
    txn.scan(Cf::Slices, &prefix, &newer, |_, _| {
        count += 1;
        Ok(if count > COMPACT_AT {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    })?;
    if count <= COMPACT_AT {
        return Ok(());
    }
    let records = txn.scan_all(Cf::Slices, &prefix)?;
    let (lo, hi) = (block * BLOCK_SIZE, (block + 1) * BLOCK_SIZE);
    let mut extents = vec![Extent {
        offset: lo,
        len: hi - lo,
        chunk: None,
    }];
    let mut refs: BTreeMap<ChunkHash, i64> = BTreeMap::new();
    for (key, value) in records {
        let r: SliceRecord = codec::decode(&value)?;
        let pieces = cut(r.offset, r.len, &r.chunks, lo, hi);
        if let (Some(first), Some(last)) = (pieces.first(), pieces.last()) {
            let (a, b) = (first.offset, last.offset + last.len);
            overlay_extents(&mut extents, a, b, pieces);
        }
        for c in &r.chunks {
            *refs.entry(c.hash).or_insert(0) -= 1;
        }
        txn.delete(Cf::Slices, key);
    }
    // Runs of adjacent chunk extents become one record each.
    let mut runs: Vec<SliceRecord> = Vec::new();
    for e in extents {
        let Some(chunk) = e.chunk else { continue };
        match runs.last_mut() {
            Some(r) if r.offset + r.len == e.offset => {
                r.len += e.len;
                r.chunks.push(chunk);
            }
            _ => runs.push(SliceRecord {
                offset: e.offset,
                len: e.len,
                chunks: vec![chunk],
            }),
        }
    }
    // The runs take consecutive sequence numbers, allocated at once. The mark is the
    // last number taken so far: every record of the block is at or before it (with no
    // runs too, so the next count still starts past the tombstones just left).
    let next = update_counters(txn, |c| c.next_seq += runs.len() as u64)?.next_seq;
    let first = next - runs.len() as u64;
    for (seq, r) in (first..).zip(runs) {
        for c in &r.chunks {
            *refs.entry(c.hash).or_insert(0) += 1;
        }
        store_record(txn, ino, seq, &r)?;
    }
    txn.put(Cf::Compacted, prefix, &next.saturating_sub(1))?;
    // Most references only move from the old records to the new: counted once, net.
    for (hash, delta) in refs {
        add_refs(txn, now, &hash, delta)?;
    }
    Ok(())
}

/// Change the size of a regular file (the caller saves `rec`). Shrinking drops whole
/// blocks past the end and covers the rest of the last block with a hole, so that growing
/// the file again reads zeros, not old bytes.
pub(crate) fn truncate(
    txn: &mut Txn<'_>,
    now: i64,
    rec: &mut InodeRecord,
    size: u64,
) -> Result<(), NsError> {
    let (ino, old) = (rec.attr.ino, rec.attr.size);
    if size < old {
        let first_whole = size.div_ceil(BLOCK_SIZE);
        if !size.is_multiple_of(BLOCK_SIZE) {
            let block = size / BLOCK_SIZE;
            let mut stale = false;
            let prefix = keys::block(ino, block);
            txn.scan(Cf::Slices, &prefix, &prefix, |_, v| {
                let r: SliceRecord = codec::decode(v)?;
                stale = r.offset + r.len > size;
                Ok(if stale {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                })
            })?;
            if stale {
                let end = (first_whole * BLOCK_SIZE).min(old);
                let seq = next_seq(txn)?;
                let hole = SliceRecord {
                    offset: size,
                    len: end - size,
                    chunks: Vec::new(),
                };
                put_record(txn, ino, seq, &hole)?;
                compact(txn, now, ino, block)?;
            }
        }
        drop_slices_from(txn, now, ino, first_whole)?;
        update_counters(txn, |c| c.bytes = c.bytes.saturating_sub(old - size))?;
        subtree::account(txn, rec.attr.subtree, 0, -((old - size) as i64))?;
    } else {
        update_counters(txn, |c| c.bytes += size - old)?;
        subtree::account(txn, rec.attr.subtree, 0, (size - old) as i64)?;
    }
    rec.attr.size = size;
    rec.attr.ctime_ns = now;
    Ok(())
}

/// The merged view of `[offset, offset+len)` clamped to the file size: chunk extents and
/// holes, in order, covering the range exactly; and the file's attributes.
pub(crate) fn read(
    txn: &Txn<'_>,
    ino: InodeId,
    offset: u64,
    len: u64,
) -> Result<(Vec<Extent>, Attr), NsError> {
    let rec = load(txn, ino)?;
    regular(&rec)?;
    let size = rec.attr.size;
    let end = offset.saturating_add(len).min(size);
    let mut out: Vec<Extent> = Vec::new();
    if offset >= end {
        return Ok((out, rec.attr));
    }
    for block in offset / BLOCK_SIZE..=(end - 1) / BLOCK_SIZE {
        let lo = offset.max(block * BLOCK_SIZE);
        let hi = end.min((block + 1) * BLOCK_SIZE);
        let mut extents = vec![Extent {
            offset: lo,
            len: hi - lo,
            chunk: None,
        }];
        let prefix = keys::block(ino, block);
        txn.scan(Cf::Slices, &prefix, &prefix, |_, v| {
            let r: SliceRecord = codec::decode(v)?;
            let pieces = cut(r.offset, r.len, &r.chunks, lo, hi);
            if let (Some(first), Some(last)) = (pieces.first(), pieces.last()) {
                let (a, b) = (first.offset, last.offset + last.len);
                overlay_extents(&mut extents, a, b, pieces);
            }
            Ok(ControlFlow::Continue(()))
        })?;
        for e in extents {
            match out.last_mut() {
                Some(prev) if prev.chunk.is_none() && e.chunk.is_none() => prev.len += e.len,
                _ => out.push(e),
            }
        }
    }
    Ok((out, rec.attr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(h: u8, offset: u64, len: u64) -> ChunkRef {
        ChunkRef {
            hash: ChunkHash([h; 32]),
            offset,
            len,
        }
    }

    #[test]
    fn cut_takes_the_middle_of_several_chunks() {
        let chunks = [c(1, 0, 10), c(2, 5, 10)];
        let got = cut(100, 20, &chunks, 105, 115);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            Extent {
                offset: 105,
                len: 5,
                chunk: Some(c(1, 5, 5))
            }
        );
        assert_eq!(
            got[1],
            Extent {
                offset: 110,
                len: 5,
                chunk: Some(c(2, 5, 5))
            }
        );
        assert!(cut(100, 20, &chunks, 0, 100).is_empty());
    }

    #[test]
    fn overlay_splits_the_older_extent() {
        let mut ext = vec![Extent {
            offset: 0,
            len: 10,
            chunk: Some(c(1, 0, 10)),
        }];
        overlay_extents(
            &mut ext,
            3,
            5,
            vec![Extent {
                offset: 3,
                len: 2,
                chunk: None,
            }],
        );
        assert_eq!(
            ext,
            vec![
                Extent {
                    offset: 0,
                    len: 3,
                    chunk: Some(c(1, 0, 3))
                },
                Extent {
                    offset: 3,
                    len: 2,
                    chunk: None
                },
                Extent {
                    offset: 5,
                    len: 5,
                    chunk: Some(c(1, 5, 5))
                },
            ]
        );
    }
}
