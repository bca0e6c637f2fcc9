//! The mount's block cache: verified 16 KiB blocks of chunks (`mobilus_proto::blocks`),
//! shared by every open file, bounded in bytes; and the outboards that verify them.
//!
//! Concurrent misses on one block share one fetch: a fetch registers itself for each of
//! its blocks before it starts, and a reader that finds a block registered awaits that
//! fetch instead of starting another.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::{BoxFuture, Shared};
use mobilus_proto::blocks::{self, Outboard};
use mobilus_proto::fs::ChunkHash;
use quick_cache::sync::Cache;
use quick_cache::Weighter;

/// A block: its chunk and its index in the chunk.
pub(crate) type BlockKey = (ChunkHash, u64);

/// Blocks `first..` of one chunk, fetched together and verified.
#[derive(Debug)]
pub struct Run {
    pub first: u64,
    pub blocks: Vec<Bytes>,
}

impl Run {
    pub fn block(&self, index: u64) -> Option<&Bytes> {
        self.blocks
            .get(usize::try_from(index.checked_sub(self.first)?).ok()?)
    }
}

/// A fetch of an outboard under way (`None`: it failed).
pub(crate) type OutboardFetch = Shared<BoxFuture<'static, Option<Arc<Outboard>>>>;

/// A fetch under way. It fails as `None`: an awaiting reader then fetches by itself, so
/// the error it returns is its own.
pub(crate) type Fetch = Shared<BoxFuture<'static, Option<Arc<Run>>>>;

#[derive(Clone)]
struct ByBytes;

impl Weighter<BlockKey, Bytes> for ByBytes {
    fn weight(&self, _: &BlockKey, block: &Bytes) -> u64 {
        block.len() as u64 + 64
    }
}

impl Weighter<ChunkHash, Arc<Outboard>> for ByBytes {
    fn weight(&self, _: &ChunkHash, ob: &Arc<Outboard>) -> u64 {
        ob.weight()
    }
}

/// Counters, for tests and the benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockCacheStats {
    pub hits: u64,
    pub misses: u64,
    pub bytes: u64,
    pub capacity: u64,
    /// Blocks readahead asked for before a read did.
    pub prefetched: u64,
}

/// Fetches under way, at most one per chunk: a later asker shares the one started.
struct PerChunk<T>(Mutex<HashMap<ChunkHash, Shared<BoxFuture<'static, T>>>>);

impl<T> Default for PerChunk<T> {
    fn default() -> Self {
        PerChunk(Mutex::new(HashMap::new()))
    }
}

impl<T: Clone> PerChunk<T> {
    /// The fetch of `hash` under way, or a new one made by `start`; and whether it is new.
    fn get_or_start(
        &self,
        hash: ChunkHash,
        start: impl FnOnce() -> BoxFuture<'static, T>,
    ) -> (Shared<BoxFuture<'static, T>>, bool) {
        let mut fetches = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut started = false;
        let fetch = fetches
            .entry(hash)
            .or_insert_with(|| {
                started = true;
                futures::FutureExt::shared(start())
            })
            .clone();
        (fetch, started)
    }

    /// The fetch of `hash` is over: the next asker starts another.
    fn done(&self, hash: &ChunkHash) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(hash);
    }
}

pub(crate) struct BlockCache {
    blocks: Cache<BlockKey, Bytes, ByBytes>,
    outboards: Cache<ChunkHash, Arc<Outboard>, ByBytes>,
    inflight: Mutex<HashMap<BlockKey, Fetch>>,
    /// Chunks being fetched whole from another site: one fetch per chunk.
    remote: PerChunk<Option<Arc<Run>>>,
    /// Outboards being fetched for short-circuit reads: one fetch per chunk.
    outboards_inflight: PerChunk<Option<Arc<Outboard>>>,
    hits: AtomicU64,
    misses: AtomicU64,
    prefetched: AtomicU64,
}

impl BlockCache {
    /// A cache of at most `bytes` of blocks (and a sixteenth of that, at least 1 MiB, of
    /// outboards: 8 KiB per 4 MiB chunk).
    pub fn new(bytes: u64) -> Self {
        let blocks = bytes.max(1 << 20);
        let outboards = (bytes / 16).max(1 << 20);
        BlockCache {
            blocks: Cache::with_weighter((blocks / (16 << 10)) as usize, blocks, ByBytes),
            outboards: Cache::with_weighter((outboards / (8 << 10)) as usize, outboards, ByBytes),
            inflight: Mutex::new(HashMap::new()),
            remote: PerChunk::default(),
            outboards_inflight: PerChunk::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            prefetched: AtomicU64::new(0),
        }
    }

    /// A block, for a read that is part of a scan (reads each starting where the last
    /// ended) or not. A scan's hit does not mark the block used: a block fetched by
    /// readahead and then read once would otherwise be promoted to the hot part (97% of
    /// the cache) at the next sweep, and a long scan pushed the pages random reads use
    /// out (`block_reads::a_scan_does_not_push_...`: 23 of 64).
    pub fn lookup(&self, key: &BlockKey, scan: bool) -> Option<Bytes> {
        let hit = if scan {
            self.blocks.peek(key)
        } else {
            self.blocks.get(key)
        };
        let (counter, outcome) = match hit {
            Some(_) => (&self.hits, "hit"),
            None => (&self.misses, "miss"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("mobilus_client_block_cache_total", "outcome" => outcome).increment(1);
        hit
    }

    /// Whether a block is cached, without counting it as a use.
    pub fn has_block(&self, key: &BlockKey) -> bool {
        self.blocks.contains_key(key)
    }

    /// A block cached since the caller's lookup counted its miss (not counted again).
    pub fn block_since(&self, key: &BlockKey) -> Option<Bytes> {
        self.blocks.get(key)
    }

    pub fn insert_block(&self, key: BlockKey, block: Bytes) {
        self.blocks.insert(key, block);
    }

    pub fn outboard(&self, hash: &ChunkHash) -> Option<Arc<Outboard>> {
        self.outboards.get(hash)
    }

    /// Keep every block of a chunk whose bytes this mount hashed itself.
    pub fn insert_chunk(&self, hash: ChunkHash, bytes: &[u8]) {
        let size = bytes.len() as u64;
        for i in 0..blocks::block_count(size) {
            let (a, b) = blocks::block_span(size, i);
            let block = Bytes::copy_from_slice(&bytes[a as usize..b as usize]);
            self.insert_block((hash, i), block);
        }
    }

    pub fn insert_outboard(&self, outboard: Arc<Outboard>) {
        // A size a chunk's last block proved is not replaced by a size only claimed.
        let kept = self.outboards.get(&outboard.hash());
        if !outboard.size_proven() && kept.is_some_and(|o| o.size_proven()) {
            return;
        }
        self.outboards.insert(outboard.hash(), outboard);
    }

    /// For each of `missing` (blocks of chunk `hash`, ascending): the fetch under way for
    /// it, or a new one made by `start(first, end)` for each run of blocks nobody fetches
    /// yet (at most `max_run` blocks each), registered before it is returned. A block
    /// cached meanwhile is left out: a fetch caches its blocks before it unregisters, so
    /// under this lock a block is either registered or cached, never neither while its
    /// fetch ends.
    pub fn fetches_for(
        &self,
        hash: ChunkHash,
        missing: &[u64],
        max_run: u64,
        start: impl Fn(u64, u64) -> BoxFuture<'static, Option<Arc<Run>>>,
    ) -> Vec<Fetch> {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let mut fetches = Vec::new();
        let mut run: Option<(u64, u64)> = None;
        let begin = |first: u64, end: u64, inflight: &mut HashMap<BlockKey, Fetch>| {
            let fetch = futures::FutureExt::shared(start(first, end));
            for i in first..end {
                inflight.insert((hash, i), fetch.clone());
            }
            fetch
        };
        for &i in missing {
            if self.blocks.contains_key(&(hash, i)) {
                if let Some((a, b)) = run.take() {
                    fetches.push(begin(a, b, &mut inflight));
                }
                continue;
            }
            if let Some(f) = inflight.get(&(hash, i)).cloned() {
                if let Some((a, b)) = run.take() {
                    fetches.push(begin(a, b, &mut inflight));
                }
                fetches.push(f);
                continue;
            }
            run = match run {
                Some((a, b)) if b == i && b - a < max_run => Some((a, b + 1)),
                Some((a, b)) => {
                    fetches.push(begin(a, b, &mut inflight));
                    Some((i, i + 1))
                }
                None => Some((i, i + 1)),
            };
        }
        if let Some((a, b)) = run {
            fetches.push(begin(a, b, &mut inflight));
        }
        fetches
    }

    /// A fetch of blocks `first..end` of `hash` is over (its blocks are cached, or it
    /// failed): later misses start their own.
    pub fn fetched(&self, hash: ChunkHash, first: u64, end: u64) {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        for i in first..end {
            inflight.remove(&(hash, i));
        }
    }

    /// The fetch of whole chunk `hash` from another site under way, or a new one made by
    /// `start`; and whether it is new.
    pub fn whole_fetch(
        &self,
        hash: ChunkHash,
        start: impl FnOnce() -> BoxFuture<'static, Option<Arc<Run>>>,
    ) -> (Fetch, bool) {
        self.remote.get_or_start(hash, start)
    }

    /// The whole fetch of `hash` is over.
    pub fn whole_fetched(&self, hash: &ChunkHash) {
        self.remote.done(hash);
    }

    /// The fetch of `hash`'s outboard under way, or a new one made by `start`.
    pub fn outboard_fetch(
        &self,
        hash: ChunkHash,
        start: impl FnOnce() -> BoxFuture<'static, Option<Arc<Outboard>>>,
    ) -> OutboardFetch {
        self.outboards_inflight.get_or_start(hash, start).0
    }

    /// The fetch of `hash`'s outboard is over (it is cached, or it failed).
    pub fn outboard_fetched(&self, hash: &ChunkHash) {
        self.outboards_inflight.done(hash);
    }

    /// Count blocks readahead asked for.
    pub fn count_prefetch(&self, blocks: usize) {
        self.prefetched.fetch_add(blocks as u64, Ordering::Relaxed);
    }

    pub fn stats(&self) -> BlockCacheStats {
        BlockCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes: self.blocks.weight(),
            capacity: self.blocks.capacity(),
            prefetched: self.prefetched.load(Ordering::Relaxed),
        }
    }
}
