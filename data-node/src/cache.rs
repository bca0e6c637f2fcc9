//! The chunks a node keeps only as a cache: copies a mount faulted in from another site
//! for a subtree whose placement neither has this site hold the data (eager, or lazy
//! and owner) nor pins what it faults in. They may be evicted under space pressure,
//! least recently used first; every other chunk is *held* and only garbage collection
//! removes it. A cached chunk becomes held when a writer or the follower relies on it
//! (`Has` with `keep`, or a put that is not a cache fill), and never goes back.
//!
//! The order of use is kept in memory: a restart starts it again from the chunks'
//! store times, oldest first.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use mobilus_proto::fs::ChunkHash;

/// How much of the disk a node's cache may take: at most `capacity` bytes, and less
/// while the disk has under `min_free` of its space free.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CachePolicy {
    pub capacity: u64,
    /// 0.0 to 1.0.
    pub min_free: f64,
}

impl CachePolicy {
    /// Bytes to evict now, with `cached` bytes in the cache and the disk's `free` of
    /// `total` bytes.
    pub fn excess(&self, cached: u64, free: u64, total: u64) -> u64 {
        let over_capacity = cached.saturating_sub(self.capacity);
        let want_free = (total as f64 * self.min_free.clamp(0.0, 1.0)) as u64;
        let under_free = want_free.saturating_sub(free);
        over_capacity.max(under_free).min(cached)
    }
}

#[derive(Default)]
struct Inner {
    /// Cached chunk → (its last use, its size).
    chunks: HashMap<ChunkHash, (u64, u64)>,
    /// Last use → chunk: the eviction order.
    order: BTreeMap<u64, ChunkHash>,
    next_use: u64,
    bytes: u64,
}

/// The cached chunks, in their order of use.
#[derive(Default)]
pub struct CacheIndex {
    inner: Mutex<Inner>,
}

impl CacheIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A chunk is cached now (used just now).
    pub fn insert(&self, hash: ChunkHash, size: u64) {
        let mut i = self.lock();
        let at = i.next_use;
        i.next_use += 1;
        if let Some((old, old_size)) = i.chunks.insert(hash, (at, size)) {
            i.order.remove(&old);
            i.bytes -= old_size;
        }
        i.order.insert(at, hash);
        i.bytes += size;
    }

    /// A read used it (a no-op for a held chunk).
    pub fn touch(&self, hash: &ChunkHash) {
        let mut i = self.lock();
        let at = i.next_use;
        let Some(entry) = i.chunks.get_mut(hash) else {
            return;
        };
        let old = std::mem::replace(&mut entry.0, at);
        i.next_use += 1;
        i.order.remove(&old);
        i.order.insert(at, *hash);
    }

    /// It is no longer cached (held, or gone). Returns whether it was.
    pub fn remove(&self, hash: &ChunkHash) -> bool {
        let mut i = self.lock();
        match i.chunks.remove(hash) {
            Some((at, size)) => {
                i.order.remove(&at);
                i.bytes -= size;
                true
            }
            None => false,
        }
    }

    pub fn contains(&self, hash: &ChunkHash) -> bool {
        self.lock().chunks.contains_key(hash)
    }

    /// The `n` least recently used.
    pub fn coldest(&self, n: usize) -> Vec<ChunkHash> {
        self.lock().order.values().take(n).copied().collect()
    }

    /// Cached chunks and their bytes.
    pub fn totals(&self) -> (u64, u64) {
        let i = self.lock();
        (i.chunks.len() as u64, i.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u8) -> ChunkHash {
        ChunkHash::of(&[i])
    }

    #[test]
    fn the_least_recently_used_come_first_and_a_read_moves_a_chunk_last() {
        let c = CacheIndex::default();
        for i in 0..4 {
            c.insert(h(i), 10);
        }
        assert_eq!(c.coldest(2), vec![h(0), h(1)]);
        c.touch(&h(0));
        c.touch(&h(9)); // not cached: nothing happens
        assert_eq!(c.coldest(4), vec![h(1), h(2), h(3), h(0)]);
        assert!(c.remove(&h(2)));
        assert!(!c.remove(&h(2)));
        assert_eq!(c.totals(), (3, 30));
        c.insert(h(1), 15); // again: counted once, used now
        assert_eq!(c.totals(), (3, 35));
        assert_eq!(c.coldest(1), vec![h(3)]);
    }

    #[test]
    fn the_policy_evicts_down_to_its_capacity_and_its_free_space() {
        let p = CachePolicy {
            capacity: 100,
            min_free: 0.1,
        };
        // Within both bounds.
        assert_eq!(p.excess(50, 500, 1000), 0);
        // Over capacity.
        assert_eq!(p.excess(150, 500, 1000), 50);
        // Too little free: 100 wanted, 40 free.
        assert_eq!(p.excess(90, 40, 1000), 60);
        // Never more than the cache holds (the rest is held data).
        assert_eq!(p.excess(20, 0, 1000), 20);
    }
}
