//! Range reads: the blocks of a chunk a read needs, each checked against the chunk's
//! outboard, which is kept in memory once verified.
//!
//! An outboard is a function of the chunk's bytes, so of its name: a kept one stays
//! right whatever happens to the chunk (deleted, stored again, quarantined), and nothing
//! drops it but the bound. A 4 KiB read then costs one index lookup (the chunk is here,
//! and its size), one `pread` and one block's hash, not also the outboard's read from
//! the index and its 255 merges up to the chunk's name.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use mobilus_proto::blocks::{self, Outboard};
use mobilus_proto::fs::ChunkHash;
use quick_cache::sync::Cache;
use quick_cache::Weighter;

use super::{is_lost, synced, BlockRead, ChunkStore};
use crate::error::DataError;

/// Memory for verified outboards: 8 KiB per 4 MiB chunk, so 32 GiB of chunks' worth.
const OUTBOARD_CACHE_BYTES: u64 = 64 << 20;

#[derive(Clone)]
struct ByWeight;

impl Weighter<ChunkHash, Arc<Outboard>> for ByWeight {
    fn weight(&self, _: &ChunkHash, o: &Arc<Outboard>) -> u64 {
        o.weight()
    }
}

/// Verified outboards, by chunk.
pub(super) struct OutboardCache(Cache<ChunkHash, Arc<Outboard>, ByWeight>);

impl Default for OutboardCache {
    fn default() -> Self {
        let items = (OUTBOARD_CACHE_BYTES / (8 << 10)) as usize;
        OutboardCache(Cache::with_weighter(items, OUTBOARD_CACHE_BYTES, ByWeight))
    }
}

impl OutboardCache {
    fn get(&self, hash: &ChunkHash) -> Option<Arc<Outboard>> {
        self.0.get(hash)
    }

    /// Keep `outboard` (verified against its chunk's name) and return it.
    fn keep(&self, outboard: Outboard) -> Arc<Outboard> {
        let outboard = Arc::new(outboard);
        self.0.insert(outboard.hash(), outboard.clone());
        outboard
    }
}

impl ChunkStore {
    /// The blocks of a chunk that cover `[offset, offset+len)` (cut at the chunk's end,
    /// at most [`blocks::MAX_READ_BYTES`]; `len` 0: the block around `offset`), each
    /// checked against the chunk's outboard; only those blocks are read from disk. A
    /// block that fails its check quarantines the chunk, as a failed `get` does.
    pub fn read_blocks(
        &self,
        hash: &ChunkHash,
        offset: u64,
        len: u64,
        with_outboard: bool,
    ) -> Result<BlockRead, DataError> {
        let size = self.size_of(hash)?.ok_or(DataError::NotFound(*hash))?;
        if offset >= size.max(1) || len > blocks::MAX_READ_BYTES {
            return Err(DataError::BadRange { offset, len, size });
        }
        let outboard = self.outboard(hash, size)?;
        let (first, end) = blocks::blocks_covering(offset, len.min(size - offset));
        let (start, _) = blocks::block_span(size, first);
        let (_, stop) = blocks::block_span(size, end - 1);
        let data = match self
            .disk
            .read_at(&self.path(hash), start, (stop - start) as usize)
        {
            Ok(d) => d,
            Err(e) if is_lost(&e) => return Err(self.lost(hash)?),
            Err(e) => return Err(e.into()),
        };
        let intact = (first..end).all(|i| {
            let (a, b) = blocks::block_span(size, i);
            outboard.verify_block(i, &data[(a - start) as usize..(b - start) as usize])
        });
        if !intact {
            self.quarantine(hash)?;
            return Err(DataError::Corrupt(*hash));
        }
        self.cache.touch(hash);
        self.counters
            .bytes_served
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(BlockRead {
            chunk_size: size,
            first_block: first,
            data,
            outboard: with_outboard.then(|| outboard.to_bytes()),
        })
    }

    /// A chunk's outboard: stored with it, or (a chunk stored before outboards) computed
    /// from the whole chunk, verified, and stored now.
    fn outboard(&self, hash: &ChunkHash, size: u64) -> Result<Arc<Outboard>, DataError> {
        if let Some(o) = self.outboards.get(hash).filter(|o| o.size() == size) {
            return Ok(o);
        }
        if let Some(bytes) = self.index.get_cf(self.outboard_cf()?, hash.0)? {
            let outboard = Outboard::verified(*hash, size, &bytes).map_err(|e| {
                tracing::warn!(?hash, error = %e, "stored outboard is wrong");
                DataError::Corrupt(*hash)
            })?;
            return Ok(self.outboards.keep(outboard));
        }
        let data = match self.disk.read(&self.path(hash)) {
            Ok(d) => d,
            Err(e) if is_lost(&e) => return Err(self.lost(hash)?),
            Err(e) => return Err(e.into()),
        };
        let outboard = Outboard::compute(&data);
        if data.len() as u64 != size || outboard.hash() != *hash {
            self.quarantine(hash)?;
            return Err(DataError::Corrupt(*hash));
        }
        let _guard = self.lock(hash);
        // Not if a delete won the lock meanwhile: no outboard outlives its chunk.
        if self.size_of(hash)?.is_some() {
            self.index
                .put_cf_opt(self.outboard_cf()?, hash.0, outboard.to_bytes(), &synced())?;
        }
        Ok(self.outboards.keep(outboard))
    }
}
