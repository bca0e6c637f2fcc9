//! The chunk store: one file per chunk under `chunks/<first byte>/<hash>`, a RocksDB
//! index of hash → size, and counters.
//!
//! A chunk is stored once however many files use it. A put verifies the hash before
//! anything touches the disk; a get verifies it again on the bytes read, and quarantines
//! (moves to `quarantine/`, drops from the index) a chunk that no longer matches, so it is
//! never served and can be fetched again from another replica.
//!
//! Each chunk of more than one block also has its outboard (the chaining values of its
//! 16 KiB blocks, see `mobilus_proto::blocks`) in the `outboard` column family, written in
//! the same batch as its index entry: a range read reads and checks only the blocks it
//! needs, against the outboard kept in memory once verified (see [`ranges`]). A chunk
//! stored before outboards existed gets one at its first range read.
//!
//! A chunk of at most [`JOURNAL_MAX_BYTES`] is made durable by its index write alone, its
//! bytes journaled there until a round syncs its file (see [`journal`]).
//!
//! A chunk is *held* or *cached* (see [`crate::cache`]): a cached one, faulted in for a
//! subtree this site does not hold, may be evicted under space pressure, least recently
//! used first.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use mobilus_proto::blocks::Outboard;
use mobilus_proto::fs::ChunkHash;
use mobilus_proto::MAX_CHUNK_BYTES;
use rocksdb::{WriteBatch, WriteOptions, DB};

use crate::cache::CacheIndex;
use crate::disk::Disk;
use crate::error::DataError;

mod journal;
mod ranges;
pub use journal::JOURNAL_MAX_BYTES;
use journal::{Journal, JOURNAL_CF};
use ranges::OutboardCache;

/// Index values: format byte, size, when the chunk was stored (ns since the epoch; GC
/// leaves chunks younger than its TTL alone), and whether it is only cached. Format 2
/// (before caching) had no last byte: those chunks are held.
const INDEX_FORMAT: u8 = 3;
const INDEX_FORMAT_HELD_ONLY: u8 = 2;
/// Stripes of the put/delete lock: a delete never interleaves with a put of the same hash.
const LOCK_STRIPES: usize = 64;

/// The column family of outboards (hash → block chaining values).
const OUTBOARD_CF: &str = "outboard";

/// Blocks of a chunk, as a range read returns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRead {
    pub chunk_size: u64,
    pub first_block: u64,
    /// The blocks, concatenated, each checked against the chunk's outboard.
    pub data: Vec<u8>,
    /// The chunk's outboard, when asked for.
    pub outboard: Option<Vec<u8>>,
}

/// Counters, as `stats` reports them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub chunks: u64,
    pub bytes: u64,
    pub bytes_received: u64,
    pub bytes_served: u64,
    pub remote_fetches: u64,
    pub corrupt_chunks: u64,
    /// Of `chunks`/`bytes`, those only cached (evictable).
    pub cached_chunks: u64,
    pub cached_bytes: u64,
    pub evicted_chunks: u64,
}

/// What a scrub of one chunk found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verified {
    Ok,
    Missing,
    /// Its bytes did not hash right; it is quarantined now.
    Corrupt,
}

#[derive(Default)]
struct Counters {
    chunks: AtomicU64,
    bytes: AtomicU64,
    bytes_received: AtomicU64,
    bytes_served: AtomicU64,
    remote_fetches: AtomicU64,
    corrupt_chunks: AtomicU64,
    evicted_chunks: AtomicU64,
}

pub struct ChunkStore {
    root: PathBuf,
    disk: Arc<dyn Disk>,
    index: DB,
    counters: Counters,
    next_tmp: AtomicU64,
    locks: Vec<Mutex<()>>,
    /// The GC generation (see `gc`): bumped, durably, after each round's deletions.
    gc_gen: AtomicU64,
    cache: CacheIndex,
    journal: Journal,
    /// Empty files in `tmp/`, made ahead by rounds, that puts write their chunks into.
    spares: Mutex<Vec<PathBuf>>,
    /// `root`, open for the store's life: the descriptor rounds sync the file system by.
    fs: std::fs::File,
    outboards: OutboardCache,
}

/// An index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    size: u64,
    stored_at_ns: i64,
    cached: bool,
}

fn encode(e: Entry) -> Vec<u8> {
    let mut v = vec![INDEX_FORMAT];
    v.extend_from_slice(&e.size.to_be_bytes());
    v.extend_from_slice(&e.stored_at_ns.to_be_bytes());
    v.push(u8::from(e.cached));
    v
}

fn decode(v: &[u8]) -> Option<Entry> {
    let cached = match (v.first(), v.len()) {
        (Some(&INDEX_FORMAT), 18) => v[17] == 1,
        (Some(&INDEX_FORMAT_HELD_ONLY), 17) => false,
        _ => return None,
    };
    Some(Entry {
        size: u64::from_be_bytes(v.get(1..9)?.try_into().ok()?),
        stored_at_ns: i64::from_be_bytes(v.get(9..17)?.try_into().ok()?),
        cached,
    })
}

fn synced() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    wo
}

/// A read that found the chunk's file gone or shorter than its index says.
fn is_lost(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof
    )
}

/// The wall clock in nanoseconds since the epoch (chunk ages, GC cutoffs).
pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

const GC_GEN_FILE: &str = "gc_gen";

impl ChunkStore {
    /// Open (or create) a store under `root`; removes temporary files a crash left and
    /// replays the journal.
    pub fn open(root: &Path, disk: Arc<dyn Disk>) -> Result<Self, DataError> {
        let gc_gen = match std::fs::read_to_string(root.join(GC_GEN_FILE)) {
            Ok(s) => s.trim().parse::<u64>().map_err(|_| {
                DataError::Invalid(format!(
                    "{} is not a number",
                    root.join(GC_GEN_FILE).display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e.into()),
        };
        // Every folder a chunk may go in, made now and made durable once: a chunk file's
        // own syncs do not make a folder created for it durable.
        std::fs::create_dir_all(root)?;
        let mut created = false;
        let chunk_dirs = (0..=255u8).map(|b| Path::new("chunks").join(format!("{b:02x}")));
        for dir in ["chunks", "tmp", "quarantine"]
            .map(PathBuf::from)
            .into_iter()
            .chain(chunk_dirs)
        {
            match std::fs::create_dir(root.join(dir)) {
                Ok(()) => created = true,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let index = DB::open_cf(
            &opts,
            root.join("index"),
            ["default", OUTBOARD_CF, JOURNAL_CF],
        )?;
        // After the index's lock: a second opener of a live store fails before it
        // removes the live one's files.
        for entry in std::fs::read_dir(root.join("tmp"))? {
            std::fs::remove_file(entry?.path())?;
        }
        let fs = std::fs::File::open(root)?;
        if created {
            disk.sync_fs(&fs)?;
        }
        let counters = Counters::default();
        let mut cached = Vec::new();
        for item in index.iterator(rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            let entry = decode(&v);
            counters.chunks.fetch_add(1, Ordering::Relaxed);
            counters
                .bytes
                .fetch_add(entry.map_or(0, |e| e.size), Ordering::Relaxed);
            if let (Some(e), Some(hash)) = (entry.filter(|e| e.cached), ChunkHash::from_slice(&k)) {
                cached.push((e.stored_at_ns, hash, e.size));
            }
        }
        // The order of use is not stored: the oldest stored are taken as the coldest.
        cached.sort();
        let cache = CacheIndex::default();
        for (_, hash, size) in cached {
            cache.insert(hash, size);
        }
        let store = ChunkStore {
            root: root.to_path_buf(),
            disk,
            index,
            counters,
            next_tmp: AtomicU64::new(0),
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            gc_gen: AtomicU64::new(gc_gen),
            cache,
            journal: Journal::default(),
            spares: Mutex::new(Vec::new()),
            fs,
            outboards: OutboardCache::default(),
        };
        store.replay_journal()?;
        Ok(store)
    }

    fn path(&self, hash: &ChunkHash) -> PathBuf {
        hash.file_in(&self.root)
    }

    fn entry(&self, hash: &ChunkHash) -> Result<Option<Entry>, DataError> {
        Ok(self.index.get(hash.0)?.and_then(|v| decode(&v)))
    }

    fn size_of(&self, hash: &ChunkHash) -> Result<Option<u64>, DataError> {
        Ok(self.entry(hash)?.map(|e| e.size))
    }

    fn lock(&self, hash: &ChunkHash) -> MutexGuard<'_, ()> {
        let m = &self.locks[hash.0[0] as usize % LOCK_STRIPES];
        m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Store `data` as chunk `hash`, held. Returns whether it was already there (then
    /// nothing is written: dedup; a cached copy becomes held). Refused, with nothing
    /// written, if the bytes do not hash to `hash`.
    pub fn put(&self, hash: &ChunkHash, data: &[u8]) -> Result<bool, DataError> {
        self.put_as(hash, data, false)
    }

    /// [`ChunkStore::put`]; `cached`: a cache fill, evictable (an existing chunk stays
    /// as it is).
    pub fn put_as(&self, hash: &ChunkHash, data: &[u8], cached: bool) -> Result<bool, DataError> {
        self.counters
            .bytes_received
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        if data.len() as u64 > MAX_CHUNK_BYTES {
            return Err(DataError::TooLarge(data.len() as u64));
        }
        // One pass hashes the chunk and computes its outboard.
        let outboard = Outboard::compute(data);
        let actual = outboard.hash();
        if actual != *hash {
            return Err(DataError::HashMismatch {
                claimed: *hash,
                actual,
            });
        }
        let guard = self.lock(hash);
        if let Some(entry) = self.entry(hash)? {
            if entry.cached && !cached {
                self.hold_locked(hash, entry)?;
            }
            return Ok(true);
        }
        let mut batch = WriteBatch::default();
        let ticket = if data.len() <= JOURNAL_MAX_BYTES {
            // Taken before the file is written: see `Journal::doubt_below`.
            let ticket = self.journal.ticket();
            self.write_file(hash, data, false)?;
            batch.put_cf(self.journal_cf()?, hash.0, journal::encode(ticket, data));
            Some(ticket)
        } else {
            self.write_file_durably(hash, data)?;
            None
        };
        batch.put(
            hash.0,
            encode(Entry {
                size: data.len() as u64,
                stored_at_ns: now_ns(),
                cached,
            }),
        );
        batch.put_cf(self.outboard_cf()?, hash.0, outboard.to_bytes());
        self.index.write_opt(batch, &synced())?;
        if cached {
            self.cache.insert(*hash, data.len() as u64);
        }
        self.counters.chunks.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        drop(guard);
        // Outside the chunk's lock: a round takes the locks of the chunks it drops.
        if ticket.is_some_and(|t| self.journal.push(*hash, t)) {
            // The chunk is stored whatever the round does: its failure is the next
            // round's to retry, not this put's.
            if let Err(e) = self.sync_journal() {
                tracing::warn!(error = %e, "a journal round run by a put failed");
            }
        }
        Ok(false)
    }

    /// Write chunk `hash`'s file, durably (temp file, fsync, rename, fsync directory).
    fn write_file_durably(&self, hash: &ChunkHash, data: &[u8]) -> Result<(), DataError> {
        self.write_file(hash, data, true)
    }

    /// Write chunk `hash`'s file through a temporary one, durably or not.
    fn write_file(&self, hash: &ChunkHash, data: &[u8], durably: bool) -> Result<(), DataError> {
        let path = self.path(hash);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self
            .spare()
            .unwrap_or_else(|| self.tmp_path(&hash.to_hex()));
        let written = if durably {
            self.disk.write_durably(&tmp, &path, data)
        } else {
            self.disk.write_unsynced(&tmp, &path, data)
        };
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        Ok(())
    }

    /// A new path in `tmp/`, named after `what`.
    fn tmp_path(&self, what: &str) -> PathBuf {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        self.root.join("tmp").join(format!("{what}-{n}"))
    }

    /// A spare empty file to write a chunk into, if a round made one.
    fn spare(&self) -> Option<PathBuf> {
        self.spares().pop()
    }

    fn spares(&self) -> MutexGuard<'_, Vec<PathBuf>> {
        self.spares.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes `[offset, offset+len)` of a chunk (`len` 0: to its end), verified.
    pub fn get(&self, hash: &ChunkHash, offset: u64, len: u64) -> Result<Vec<u8>, DataError> {
        let size = self.size_of(hash)?.ok_or(DataError::NotFound(*hash))?;
        let end = if len == 0 {
            size
        } else {
            offset.saturating_add(len)
        };
        if offset > size || end > size {
            return Err(DataError::BadRange { offset, len, size });
        }
        let data = match self.disk.read(&self.path(hash)) {
            Ok(d) => d,
            Err(e) if is_lost(&e) => return Err(self.lost(hash)?),
            Err(e) => return Err(e.into()),
        };
        if data.len() as u64 != size || ChunkHash::of(&data) != *hash {
            self.quarantine(hash)?;
            return Err(DataError::Corrupt(*hash));
        }
        let out = data[offset as usize..end as usize].to_vec();
        self.cache.touch(hash);
        self.counters
            .bytes_served
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out)
    }

    fn outboard_cf(&self) -> Result<&rocksdb::ColumnFamily, DataError> {
        self.index
            .cf_handle(OUTBOARD_CF)
            .ok_or_else(|| DataError::Invalid("the index has no outboard column family".into()))
    }

    /// Drop a chunk's index entry, outboard and journal entry, durably, in one batch.
    fn forget(&self, hash: &ChunkHash) -> Result<(), DataError> {
        let mut batch = WriteBatch::default();
        batch.delete(hash.0);
        batch.delete_cf(self.outboard_cf()?, hash.0);
        batch.delete_cf(self.journal_cf()?, hash.0);
        self.index.write_opt(batch, &synced())?;
        self.cache.remove(hash);
        Ok(())
    }

    /// Make a cached chunk held (under its lock).
    fn hold_locked(&self, hash: &ChunkHash, entry: Entry) -> Result<(), DataError> {
        let held = Entry {
            cached: false,
            ..entry
        };
        self.index.put_opt(hash.0, encode(held), &synced())?;
        self.cache.remove(hash);
        Ok(())
    }

    /// The caller relies on these chunks: any of them only cached becomes held.
    pub fn keep(&self, hashes: &[ChunkHash]) -> Result<(), DataError> {
        self.has_keeping(hashes).map(|_| ())
    }

    /// [`ChunkStore::has`] for a caller that will rely on the present chunks: each is
    /// looked at under its lock and, if only cached, made held before it is answered
    /// present, so nothing answered present can be evicted afterwards (a cache fill
    /// racing with the question is either not seen or made held).
    pub fn has_keeping(&self, hashes: &[ChunkHash]) -> Result<(u64, Vec<bool>), DataError> {
        let gc_gen = self.gc_gen.load(Ordering::SeqCst);
        let mut present = Vec::with_capacity(hashes.len());
        for hash in hashes {
            let _guard = self.lock(hash);
            let entry = self.entry(hash)?;
            if let Some(e) = entry.filter(|e| e.cached) {
                self.hold_locked(hash, e)?;
            }
            present.push(entry.is_some());
        }
        Ok((gc_gen, present))
    }

    /// Which of `hashes` this store holds for good (a copy only cached may be evicted:
    /// not counted). For another site or node deciding whether its copy is the last.
    pub fn has_held(&self, hashes: &[ChunkHash]) -> Result<Vec<bool>, DataError> {
        self.index
            .multi_get(hashes.iter().map(|h| h.0))
            .into_iter()
            .map(|r| Ok(r?.and_then(|v| decode(&v)).is_some_and(|e| !e.cached)))
            .collect()
    }

    /// Evict cached chunks, least recently used first, until `bytes` are freed or none
    /// is left. Returns the chunks and bytes evicted.
    pub fn evict(&self, bytes: u64) -> Result<(u64, u64), DataError> {
        let (mut chunks, mut freed) = (0, 0);
        while freed < bytes {
            let coldest = self.cache.coldest(64);
            if coldest.is_empty() {
                break;
            }
            // Each is evicted, or found held or gone (and dropped from the cache): the
            // loop always moves on.
            let (c, b) = self.evict_these(&coldest, bytes - freed)?;
            chunks += c;
            freed += b;
        }
        Ok((chunks, freed))
    }

    /// Evict those of `hashes` still cached (under each one's lock), in order, until
    /// `bytes` are freed. Returns the chunks and bytes evicted.
    pub fn evict_these(&self, hashes: &[ChunkHash], bytes: u64) -> Result<(u64, u64), DataError> {
        let (mut chunks, mut freed) = (0, 0);
        for hash in hashes {
            if freed >= bytes {
                break;
            }
            let _guard = self.lock(hash);
            let Some(entry) = self.entry(hash)?.filter(|e| e.cached) else {
                self.cache.remove(hash);
                continue;
            };
            self.remove_locked(hash, entry.size)?;
            self.counters.evicted_chunks.fetch_add(1, Ordering::Relaxed);
            chunks += 1;
            freed += entry.size;
        }
        Ok((chunks, freed))
    }

    /// The `n` cached chunks used least recently.
    pub fn coldest_cached(&self, n: usize) -> Vec<ChunkHash> {
        self.cache.coldest(n)
    }

    /// Whether a chunk is here only as a cache.
    pub fn is_cached(&self, hash: &ChunkHash) -> bool {
        self.cache.contains(hash)
    }

    /// The error for a chunk whose file was not there: deleted meanwhile (under the lock,
    /// so not mistaken for damage; or deleted and stored again, its file back), or lost,
    /// and then quarantined.
    fn lost(&self, hash: &ChunkHash) -> Result<DataError, DataError> {
        let _guard = self.lock(hash);
        let Some(size) = self.size_of(hash)? else {
            return Ok(DataError::NotFound(*hash));
        };
        let back = std::fs::metadata(self.path(hash)).is_ok_and(|m| m.len() == size);
        if back {
            return Ok(DataError::NotFound(*hash));
        }
        self.quarantine(hash)?;
        Ok(DataError::Corrupt(*hash))
    }

    /// Move a bad chunk aside and forget it; it is never served again.
    fn quarantine(&self, hash: &ChunkHash) -> Result<(), DataError> {
        tracing::warn!(?hash, "chunk failed verification; quarantined");
        let size = self.size_of(hash)?.unwrap_or(0);
        self.forget(hash)?;
        let _ = self.disk.rename(
            &self.path(hash),
            &self.root.join("quarantine").join(hash.to_hex()),
        );
        self.counters.corrupt_chunks.fetch_add(1, Ordering::Relaxed);
        self.counters.chunks.fetch_sub(1, Ordering::Relaxed);
        self.counters.bytes.fetch_sub(size, Ordering::Relaxed);
        Ok(())
    }

    /// Which of `hashes` this store holds, and the GC generation of the answer: read
    /// first, so an answer never claims a generation newer than the deletions it saw.
    pub fn has(&self, hashes: &[ChunkHash]) -> Result<(u64, Vec<bool>), DataError> {
        let gc_gen = self.gc_gen.load(Ordering::SeqCst);
        let present = self
            .index
            .multi_get(hashes.iter().map(|h| h.0))
            .into_iter()
            .map(|r| Ok(r?.is_some()))
            .collect::<Result<_, DataError>>()?;
        Ok((gc_gen, present))
    }

    /// Read a chunk back and check its hash (a scrub). A corrupt chunk is quarantined,
    /// as a failed `get` would.
    pub fn verify(&self, hash: &ChunkHash) -> Result<Verified, DataError> {
        // Under the chunk's lock: a GC deletion in between is not mistaken for corruption.
        let _guard = self.lock(hash);
        let Some(size) = self.size_of(hash)? else {
            return Ok(Verified::Missing);
        };
        let intact = match self.disk.read(&self.path(hash)) {
            Ok(data) => data.len() as u64 == size && ChunkHash::of(&data) == *hash,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(e.into()),
        };
        if intact {
            Ok(Verified::Ok)
        } else {
            self.quarantine(hash)?;
            Ok(Verified::Corrupt)
        }
    }

    pub fn gc_gen(&self) -> u64 {
        self.gc_gen.load(Ordering::SeqCst)
    }

    /// Move to GC generation `gc_gen` (never backwards), durably first: a restarted node
    /// must not answer with a generation older than deletions it already made.
    pub fn advance_gc_gen(&self, gc_gen: u64) -> Result<(), DataError> {
        if gc_gen <= self.gc_gen.load(Ordering::SeqCst) {
            return Ok(());
        }
        let tmp = self.tmp_path(GC_GEN_FILE);
        let path = self.root.join(GC_GEN_FILE);
        if let Err(e) = self
            .disk
            .write_durably(&tmp, &path, gc_gen.to_string().as_bytes())
        {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        self.gc_gen.fetch_max(gc_gen, Ordering::SeqCst);
        Ok(())
    }

    /// GC candidates: up to `limit` chunks stored at or before `cutoff_ns`, in hash
    /// order after `after`.
    pub fn stored_before(
        &self,
        cutoff_ns: i64,
        after: Option<&ChunkHash>,
        limit: usize,
    ) -> Result<(Vec<ChunkHash>, bool), DataError> {
        let mode = match after {
            Some(h) => rocksdb::IteratorMode::From(&h.0, rocksdb::Direction::Forward),
            None => rocksdb::IteratorMode::Start,
        };
        let mut out = Vec::new();
        for item in self.index.iterator(mode) {
            let (k, v) = item?;
            let Some(hash) = ChunkHash::from_slice(&k) else {
                continue;
            };
            if Some(&hash) == after {
                continue;
            }
            if decode(&v).is_none_or(|e| e.stored_at_ns <= cutoff_ns) {
                out.push(hash);
                if out.len() == limit {
                    return Ok((out, false));
                }
            }
        }
        Ok((out, true))
    }

    /// Delete a chunk; returns its size if it was there.
    pub fn delete(&self, hash: &ChunkHash) -> Result<Option<u64>, DataError> {
        let _guard = self.lock(hash);
        let Some(size) = self.size_of(hash)? else {
            return Ok(None);
        };
        self.remove_locked(hash, size)?;
        Ok(Some(size))
    }

    /// Forget a chunk of `size` bytes and remove its file (under its lock).
    fn remove_locked(&self, hash: &ChunkHash, size: u64) -> Result<(), DataError> {
        self.forget(hash)?;
        match self.disk.remove(&self.path(hash)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.counters.chunks.fetch_sub(1, Ordering::Relaxed);
        self.counters.bytes.fetch_sub(size, Ordering::Relaxed);
        Ok(())
    }

    /// Count a chunk fetched from another site (the fetch itself is the caller's).
    pub fn count_remote_fetch(&self) {
        self.counters.remote_fetches.fetch_add(1, Ordering::Relaxed);
    }

    /// Help texts of the data node's metrics (call after installing the recorder).
    pub fn describe_metrics() {
        use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
        describe_gauge!("mobilus_data_chunks", "Chunks stored");
        describe_histogram!(
            "mobilus_data_put_stage_seconds",
            Unit::Seconds,
            "Time of each stage of a put: receiving its body, storing it (hash, write, fsync)"
        );
        describe_gauge!(
            "mobilus_data_bytes_stored",
            Unit::Bytes,
            "Bytes of chunks stored"
        );
        describe_counter!(
            "mobilus_data_bytes_received_total",
            Unit::Bytes,
            "Bytes received by put"
        );
        describe_counter!(
            "mobilus_data_bytes_served_total",
            Unit::Bytes,
            "Bytes served by get"
        );
        describe_counter!(
            "mobilus_data_site_lease_renewals_total",
            "Heartbeats committed, each renewing this site's lease"
        );
        describe_counter!(
            "mobilus_data_remote_fetches_total",
            "Chunks this node fetched from another site"
        );
        describe_counter!(
            "mobilus_data_corrupt_chunks_total",
            "Chunks that failed their hash and were quarantined"
        );
        describe_gauge!(
            "mobilus_data_journaled_chunks",
            "Chunks durable by their journal entry, waiting for a round to sync their files"
        );
        describe_gauge!(
            "mobilus_data_cached_bytes",
            Unit::Bytes,
            "Bytes of chunks kept only as a cache (evictable under space pressure)"
        );
        describe_counter!(
            "mobilus_data_evicted_chunks_total",
            "Cached chunks evicted under space pressure"
        );
        describe_gauge!(
            "mobilus_data_gc_generation",
            "This node's garbage-collection generation"
        );
        describe_counter!(
            "mobilus_data_gc_rounds_total",
            "Garbage-collection rounds run"
        );
        describe_counter!(
            "mobilus_data_gc_deleted_chunks_total",
            "Chunks deleted by garbage collection"
        );
        describe_counter!(
            "mobilus_data_gc_freed_bytes_total",
            Unit::Bytes,
            "Bytes freed by garbage collection"
        );
        mobilus_telemetry::describe_grpc_metrics();
    }

    /// Publish the counters as metrics (`mobilus_data_*`; a no-op without a recorder).
    pub fn publish_metrics(&self) {
        let s = self.stats();
        metrics::gauge!("mobilus_data_chunks").set(s.chunks as f64);
        metrics::gauge!("mobilus_data_bytes_stored").set(s.bytes as f64);
        metrics::counter!("mobilus_data_bytes_received_total").absolute(s.bytes_received);
        metrics::counter!("mobilus_data_bytes_served_total").absolute(s.bytes_served);
        metrics::counter!("mobilus_data_remote_fetches_total").absolute(s.remote_fetches);
        metrics::counter!("mobilus_data_corrupt_chunks_total").absolute(s.corrupt_chunks);
        metrics::gauge!("mobilus_data_gc_generation")
            .set(self.gc_gen.load(Ordering::Relaxed) as f64);
        metrics::gauge!("mobilus_data_cached_bytes").set(s.cached_bytes as f64);
        metrics::gauge!("mobilus_data_journaled_chunks").set(self.journaled() as f64);
        metrics::counter!("mobilus_data_evicted_chunks_total").absolute(s.evicted_chunks);
    }

    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        let (cached_chunks, cached_bytes) = self.cache.totals();
        Stats {
            cached_chunks,
            cached_bytes,
            evicted_chunks: c.evicted_chunks.load(Ordering::Relaxed),
            chunks: c.chunks.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            bytes_served: c.bytes_served.load(Ordering::Relaxed),
            remote_fetches: c.remote_fetches.load(Ordering::Relaxed),
            corrupt_chunks: c.corrupt_chunks.load(Ordering::Relaxed),
        }
    }
}
