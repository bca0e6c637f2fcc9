//! The read path. A [`FileReader`] maps a range of a file to chunk ranges through the
//! slice map of a window, and reads those through the mount's block cache: a miss reads
//! only the verified 16 KiB blocks around it from the local data node (one round trip),
//! or, for a chunk not at this site, the whole chunk from another site (verified, and
//! kept here). A sequential stream gets readahead that grows with it.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::FutureExt;
use mobilus_proto::blocks::{self, Outboard, BLOCK};
use mobilus_proto::datapb as pb;
use mobilus_proto::fs::{
    overlay_extents, Attr, ChunkHash, ChunkRef, Extent, InodeId, SliceWrite, SubtreeId,
};
use mobilus_proto::status::Errno;

use crate::block_cache::Run;
use crate::client::{Client, ClientError};

/// Slice map fetched per call of a [`FileReader`] (readahead stays inside it).
pub const READ_WINDOW: u64 = 64 << 20;
/// Windows a [`FileReader`] keeps (the most recently used): a database read at random
/// across a large file fetches each window's map once, not at every jump (each is a
/// metadata round, a WAN round trip away from the leader).
const MAX_WINDOWS: usize = 32;
/// Readahead of a sequential stream: it starts at this many bytes past the read...
const AHEAD_MIN: u64 = 256 << 10;
/// ... doubles with each sequential read, up to this; a random read stops it.
const AHEAD_MAX: u64 = 8 << 20;
/// How far from where a sequential stream was expected a read may land and still be
/// part of it (a few of the kernel's largest reads, 128 KiB each).
const SEQUENTIAL_SLACK: u64 = 1 << 20;
/// Blocks fetched by one call to the data node.
const MAX_RUN: u64 = blocks::MAX_READ_BYTES / BLOCK;
/// A read of blocks from another site that takes longer has failed (a stalled link).
const REMOTE_BLOCKS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// A fault of at most this many blocks (128 KiB: the kernel's largest FUSE read) of a
/// chunk at another site reads just those blocks across; a larger one (readahead, a
/// whole-file read) waits for the whole chunk, which it would fetch anyway.
const MAX_FAULT_BLOCKS: u64 = (128 << 10) / BLOCK;

impl Client {
    /// `[offset, offset+len)` of a file, clamped to its size; holes read as zeros.
    pub async fn read(&self, ino: InodeId, offset: u64, len: u64) -> Result<Vec<u8>, ClientError> {
        self.reader(ino).read(offset, len).await
    }

    /// A reader for an open file (it sees the file as of its window's slice map).
    pub fn reader(&self, ino: InodeId) -> FileReader {
        FileReader {
            client: self.clone(),
            ino,
            subtree: None,
            windows: tokio::sync::Mutex::new(VecDeque::new()),
            stream: Mutex::new(Stream::default()),
        }
    }

    /// A reader that starts with a slice map fetched before (a delegation's cache: the
    /// file cannot have changed since).
    pub fn reader_with(&self, ino: InodeId, map: SliceMap) -> FileReader {
        let reader = self.reader(ino);
        if let Ok(mut w) = reader.windows.try_lock() {
            w.push_front(map.0);
        }
        reader
    }

    /// Open a regular file for reading in one metadata round: its attributes and the
    /// slice map of its first window, from the same state. `Ok(None)`: not a regular
    /// file (the caller asks for its attributes instead).
    pub async fn open_reader(
        &self,
        ino: InodeId,
    ) -> Result<Option<(Attr, FileReader)>, ClientError> {
        let (extents, attr) = match self.meta.read_slices_attr(ino, 0, READ_WINDOW, false).await {
            Ok(answer) => answer,
            Err(e) if matches!(e.errno(), Some(Errno::EISDIR | Errno::EINVAL)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let reader = self.reader(ino).in_subtree(attr.subtree);
        reader.windows.lock().await.push_front(Arc::new(Window {
            start: 0,
            end: READ_WINDOW.min(attr.size),
            size: attr.size,
            extents,
        }));
        Ok(Some((attr, reader)))
    }

    /// Bytes `[offset, offset+len)` of chunk `hash`, verified, for a read of file `ino`
    /// (whose subtree's placement says whether a fault is kept or only cached).
    pub(crate) async fn chunk_bytes(
        &self,
        hash: ChunkHash,
        offset: u64,
        len: u64,
        ino: InodeId,
        scan: bool,
    ) -> Result<Vec<u8>, ClientError> {
        let (first, blocks) = self.blocks_of(hash, offset, len, ino, scan).await?;
        bytes_of_blocks(first, &blocks, offset, len).ok_or(ClientError::ChunkUnavailable(hash))
    }

    /// Bytes `[offset, offset+len)` of chunk `hash` from the block cache alone, if every
    /// block they need is there (no fetch, no wait).
    fn chunk_bytes_cached(
        &self,
        hash: ChunkHash,
        offset: u64,
        len: u64,
        scan: bool,
    ) -> Option<Vec<u8>> {
        let (first, end) = blocks::blocks_covering(offset, len);
        // Looked at first without counting, so a read that goes the long way counts its
        // misses once.
        if !(first..end).all(|i| self.blocks.has_block(&(hash, i))) {
            return None;
        }
        let blocks = (first..end)
            .map(|i| self.blocks.lookup(&(hash, i), scan))
            .collect::<Option<Vec<Bytes>>>()?;
        bytes_of_blocks(first, &blocks, offset, len)
    }

    /// The blocks of `hash` covering `[offset, offset+len)`: cached, or fetched (sharing
    /// fetches already under way).
    async fn blocks_of(
        &self,
        hash: ChunkHash,
        offset: u64,
        len: u64,
        ino: InodeId,
        scan: bool,
    ) -> Result<(u64, Vec<Bytes>), ClientError> {
        let (first, end) = blocks::blocks_covering(offset, len);
        let mut got: Vec<Option<Bytes>> = (first..end)
            .map(|i| self.blocks.lookup(&(hash, i), scan))
            .collect();
        let missing: Vec<u64> = (first..end)
            .filter(|i| got[(i - first) as usize].is_none())
            .collect();
        if missing.is_empty() {
            return Ok((first, got.into_iter().flatten().collect()));
        }
        let runs = self.fetch_blocks(hash, &missing, ino).await;
        for &i in &missing {
            got[(i - first) as usize] = runs
                .iter()
                .find_map(|r| r.block(i).cloned())
                .or_else(|| self.blocks.block_since(&(hash, i)));
        }
        // A shared fetch failed: fetch what is still missing here, for our own error,
        // in calls of at most MAX_RUN blocks.
        let left: Vec<u64> = missing
            .into_iter()
            .filter(|i| got[(i - first) as usize].is_none())
            .collect();
        let mut left = left.into_iter().peekable();
        while let Some(a) = left.next() {
            let run = self.fetch_run(hash, a, (a + MAX_RUN).min(end), ino).await?;
            got[(a - first) as usize] = run.block(a).cloned();
            while let Some(i) = left.next_if(|i| run.block(*i).is_some()) {
                got[(i - first) as usize] = run.block(i).cloned();
            }
        }
        got.into_iter()
            .collect::<Option<Vec<Bytes>>>()
            .map(|blocks| (first, blocks))
            .ok_or(ClientError::ChunkUnavailable(hash))
    }

    /// Fetch `missing` blocks of `hash` (ascending), each run of them in one call, or
    /// await the fetch another reader has under way. Failed fetches are left out.
    async fn fetch_blocks(&self, hash: ChunkHash, missing: &[u64], ino: InodeId) -> Vec<Arc<Run>> {
        let fetches = self
            .blocks
            .fetches_for(hash, missing, MAX_RUN, |first, end| {
                self.clone().fetch_shared(hash, first, end, ino).boxed()
            });
        futures::future::join_all(fetches)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    async fn fetch_shared(
        self,
        hash: ChunkHash,
        first: u64,
        end: u64,
        ino: InodeId,
    ) -> Option<Arc<Run>> {
        let result = self.fetch_run(hash, first, end, ino).await;
        self.blocks.fetched(hash, first, end);
        shared_outcome(hash, result)
    }

    /// Blocks `first..end` of `hash` (or more), verified, and cached: from this site's
    /// nodes in the chunk's placement order (a node that lacks it, fails, or sends bytes
    /// that fail verification hands over to the next), else (not at this site) from
    /// another site: just these blocks if they are less than half the chunk and no
    /// fetch of the whole chunk is under way (the whole chunk then follows in the
    /// background, and is kept here), else the whole chunk, once however many runs of it
    /// missed. A copy found missing or corrupt on a node the chunk belongs on is put back
    /// in the background.
    async fn fetch_run(
        &self,
        hash: ChunkHash,
        first: u64,
        end: u64,
        ino: InodeId,
    ) -> Result<Arc<Run>, ClientError> {
        let known = self.blocks.outboard(&hash);
        if let Some(local) = &self.local {
            if let Some(run) = self
                .short_circuit_run(local, hash, known.clone(), first, end)
                .await
            {
                return Ok(Arc::new(run));
            }
        }
        let known = known.or_else(|| self.blocks.outboard(&hash));
        let candidates = self.nodes.candidates(self.site(), &hash);
        let owed = self.nodes.replicas(self.site());
        let mut lacking = Vec::new();
        let mut failure = None;
        for (rank, node) in candidates.iter().enumerate() {
            let asked = node
                .read_blocks(&hash, first * BLOCK, (end - first) * BLOCK, known.is_none())
                .await;
            let reply = match asked {
                Ok(reply) => reply,
                Err(e) if e.is_missing() => {
                    if rank < owed {
                        lacking.push(node.clone());
                    }
                    continue;
                }
                Err(e) => {
                    tracing::debug!(?hash, node = node.addr(), error = %e, "data node failed a read");
                    self.nodes.suspect(node.addr());
                    failure.get_or_insert(e);
                    continue;
                }
            };
            match self.cache_run(hash, known.clone(), first, reply) {
                Ok(run) => {
                    if !lacking.is_empty() {
                        self.repair(hash, node.clone(), lacking);
                    }
                    return Ok(Arc::new(run));
                }
                Err(why) => {
                    tracing::warn!(?hash, node = node.addr(), %why, "blocks failed verification")
                }
            }
        }
        let (fetch, started) = self
            .blocks
            .whole_fetch(hash, || self.clone().whole_shared(hash, ino).boxed());
        let small = end - first <= MAX_FAULT_BLOCKS
            && known
                .as_ref()
                .is_none_or(|o| (end - first) * BLOCK * 2 < o.size());
        if started {
            // It goes on in the background, whoever waits for it.
            tokio::spawn(fetch.clone());
        }
        if small {
            // A point read does not wait for the chunk (which may cross a slow link, or
            // stall): it reads its own blocks across, even while the chunk is on its way.
            match self.remote_run(hash, first, end, known).await {
                Ok(run) => return Ok(Arc::new(run)),
                Err(e) => {
                    tracing::debug!(?hash, error = %e, "no other site served the blocks; waiting for the whole chunk")
                }
            }
        }
        match fetch.await {
            Some(run) => Ok(run),
            // Failed for whoever started it: once more here, for our own error.
            None => match self.whole_run(hash, ino).await {
                // Not at another site either: this site's failure is the one to report.
                Err(ClientError::ChunkUnavailable(_)) if failure.is_some() => Err(failure
                    .map(ClientError::from)
                    .unwrap_or(ClientError::ChunkUnavailable(hash))),
                other => other,
            },
        }
    }

    /// Check a `ReadBlocks` reply ([`verify_run`]) and keep its blocks (and the
    /// outboard, if it was not known) in the block cache.
    pub(crate) fn cache_run(
        &self,
        hash: ChunkHash,
        known: Option<Arc<Outboard>>,
        first: u64,
        reply: pb::ReadBlocksReply,
    ) -> Result<Run, String> {
        self.cache_verified(hash, known, first, reply)
            .map(|(_, run)| run)
    }

    /// [`Client::cache_run`], also returning the outboard that verified the run.
    pub(crate) fn cache_verified(
        &self,
        hash: ChunkHash,
        known: Option<Arc<Outboard>>,
        first: u64,
        reply: pb::ReadBlocksReply,
    ) -> Result<(Arc<Outboard>, Run), String> {
        let (outboard, run) = verify_run(hash, known.clone(), first, reply)?;
        if known.is_none_or(|k| !Arc::ptr_eq(&k, &outboard)) {
            self.blocks.insert_outboard(outboard.clone());
        }
        for (i, block) in run.blocks.iter().enumerate() {
            self.blocks
                .insert_block((hash, first + i as u64), block.clone());
        }
        Ok((outboard, run))
    }

    /// Blocks `first..end` of `hash` from another site's nodes, verified against the
    /// chunk's own hash (its outboard, checked first unless known), and cached: what a
    /// fault needs, at the cost of a round trip rather than a chunk.
    async fn remote_run(
        &self,
        hash: ChunkHash,
        first: u64,
        end: u64,
        known: Option<Arc<Outboard>>,
    ) -> Result<Run, ClientError> {
        let registry = self.nodes.registry();
        for site in registry.sites().filter(|s| *s != self.site()) {
            for node in self.nodes.candidates(site, &hash) {
                let asked =
                    node.read_blocks(&hash, first * BLOCK, (end - first) * BLOCK, known.is_none());
                let reply = match tokio::time::timeout(REMOTE_BLOCKS_TIMEOUT, asked).await {
                    Ok(Ok(reply)) => reply,
                    Ok(Err(e)) => {
                        tracing::debug!(?hash, node = node.addr(), error = %e, "remote block read failed");
                        continue;
                    }
                    Err(_) => {
                        self.nodes.suspect(node.addr());
                        continue;
                    }
                };
                let bytes = (reply.data.len() + reply.outboard.len()) as u64;
                match self.cache_run(hash, known.clone(), first, reply) {
                    Ok(run) => {
                        let c = &self.counters;
                        c.remote_range_reads.fetch_add(1, Ordering::Relaxed);
                        c.remote_range_bytes.fetch_add(bytes, Ordering::Relaxed);
                        metrics::counter!("mobilus_client_remote_range_reads_total").increment(1);
                        metrics::counter!("mobilus_client_remote_range_bytes_total")
                            .increment(bytes);
                        return Ok(run);
                    }
                    Err(why) => {
                        tracing::warn!(?hash, node = node.addr(), %why, "remote blocks failed verification")
                    }
                }
            }
        }
        Err(ClientError::ChunkUnavailable(hash))
    }

    async fn whole_shared(self, hash: ChunkHash, ino: InodeId) -> Option<Arc<Run>> {
        let result = self.whole_run(hash, ino).await;
        self.blocks.whole_fetched(&hash);
        shared_outcome(hash, result)
    }

    /// The whole chunk from another site (verified, and kept locally), as cached blocks.
    /// (Shared by every reader of the chunk: the first one's file decides whether the
    /// copy kept here is held or cached.)
    async fn whole_run(&self, hash: ChunkHash, ino: InodeId) -> Result<Arc<Run>, ClientError> {
        let whole = self.chunk_from_elsewhere(&hash, ino).await?;
        let outboard = Arc::new(Outboard::compute(&whole));
        let size = whole.len() as u64;
        let blocks: Vec<Bytes> = (0..blocks::block_count(size))
            .map(|i| {
                let (a, b) = blocks::block_span(size, i);
                Bytes::copy_from_slice(&whole[a as usize..b as usize])
            })
            .collect();
        for (i, block) in blocks.iter().enumerate() {
            self.blocks.insert_block((hash, i as u64), block.clone());
        }
        self.blocks.insert_outboard(outboard);
        Ok(Arc::new(Run { first: 0, blocks }))
    }

    /// Start fetching the blocks of `hash` covering `[offset, offset+len)` in the
    /// background. `false`: the mount's readahead budget is spent (nothing started).
    fn prefetch(&self, hash: ChunkHash, offset: u64, len: u64, ino: InodeId) -> bool {
        let (first, end) = blocks::blocks_covering(offset, len);
        let missing: Vec<u64> = (first..end)
            .filter(|i| !self.blocks.has_block(&(hash, *i)))
            .collect();
        if missing.is_empty() {
            return true;
        }
        let Ok(permit) = self.prefetch.clone().try_acquire_owned() else {
            return false;
        };
        self.blocks.count_prefetch(missing.len());
        // Registered now, not when the task first runs: a read that comes first finds
        // these fetches and awaits them instead of starting its own.
        let fetches = self
            .blocks
            .fetches_for(hash, &missing, MAX_RUN, |first, end| {
                self.clone().fetch_shared(hash, first, end, ino).boxed()
            });
        tokio::spawn(async move {
            futures::future::join_all(fetches).await;
            drop(permit);
        });
        true
    }
}

/// What a shared fetch hands its waiters: its blocks, or `None` (each then fetches by
/// itself, for an error of its own; this one is only logged).
fn shared_outcome(hash: ChunkHash, result: Result<Arc<Run>, ClientError>) -> Option<Arc<Run>> {
    result
        .inspect_err(|e| tracing::debug!(?hash, error = %e, "shared block fetch failed"))
        .ok()
}

/// Check a `ReadBlocks` reply: the outboard against the chunk's name (unless already
/// known), and each block against the outboard. The outboard returned is the one to
/// keep: a new one, or `known` with its size proven or corrected (an outboard proves the
/// size only with its last block, so until then another node may claim another size of
/// the same shape; the blocks it sends settle which).
pub fn verify_run(
    hash: ChunkHash,
    known: Option<Arc<Outboard>>,
    first: u64,
    reply: pb::ReadBlocksReply,
) -> Result<(Arc<Outboard>, Run), String> {
    let mut outboard = match known {
        Some(o) if o.size_proven() || o.size() == reply.chunk_size => o,
        Some(o) => Arc::new(
            Outboard::verified(hash, reply.chunk_size, &o.to_bytes()).map_err(|e| e.to_string())?,
        ),
        None => Arc::new(
            Outboard::verified(hash, reply.chunk_size, &reply.outboard)
                .map_err(|e| e.to_string())?,
        ),
    };
    let size = outboard.size();
    if reply.chunk_size != size || reply.first_block != first {
        return Err(format!(
            "reply for blocks from {} of a chunk of {} bytes, asked from {first} of {size}",
            reply.first_block, reply.chunk_size
        ));
    }
    // A reply of no block proves nothing, not even the size it claims: a chunk of one
    // block has no outboard, so only its block, hashed, shows its size (found by fuzzing:
    // an empty reply claiming size 0 was accepted, and its outboard kept).
    if reply.data.is_empty() {
        return Err(format!("a reply with no block, from block {first}"));
    }
    let data = reply.data;
    let mut blocks = Vec::new();
    let mut pos = 0usize;
    let mut index = first;
    while pos < data.len() {
        let (a, b) = blocks::block_span(size, index);
        let n = (b - a) as usize;
        let block = data
            .get(pos..pos + n)
            .filter(|_| n > 0)
            .ok_or_else(|| format!("block {index} cut short"))?;
        if !outboard.verify_block(index, block) {
            return Err(format!("block {index} does not hash right"));
        }
        // Single blocks share the reply's buffer; a run is copied apart, so a block the
        // cache keeps does not pin the others' memory.
        blocks.push(if n == data.len() {
            data.clone()
        } else {
            Bytes::copy_from_slice(block)
        });
        pos += n;
        index += 1;
    }
    if blocks.is_empty() && size > 0 {
        return Err("no blocks in the reply".into());
    }
    if blocks.is_empty() {
        blocks.push(Bytes::new());
    }
    if !outboard.size_proven() && index == blocks::block_count(size) {
        let last = blocks.last().map(|b| &b[..]).unwrap_or_default();
        if let Some(proven) = outboard.with_size_proven(last) {
            outboard = Arc::new(proven);
        }
    }
    Ok((outboard, Run { first, blocks }))
}

struct Window {
    start: u64,
    end: u64,
    size: u64,
    extents: Vec<Extent>,
}

impl Window {
    /// The chunk ranges of `[offset, end)`: (file offset, length, chunk range); holes
    /// are left out.
    fn pieces(&self, offset: u64, end: u64) -> Vec<(u64, u64, ChunkRef)> {
        self.extents
            .iter()
            .filter(|e| e.offset < end && e.offset + e.len > offset)
            .filter_map(|e| {
                let c = e.chunk?;
                let (a, b) = (e.offset.max(offset), (e.offset + e.len).min(end));
                Some((
                    a,
                    b - a,
                    ChunkRef {
                        hash: c.hash,
                        offset: c.offset + (a - e.offset),
                        len: b - a,
                    },
                ))
            })
            .collect()
    }
}

/// What a reader knows of its caller's access pattern.
#[derive(Default)]
struct Stream {
    /// Where the next read starts if the stream is sequential.
    next: u64,
    /// Bytes of readahead past each read (0: random access).
    ahead: u64,
    /// Readahead already started up to here.
    prefetched_to: u64,
    /// The last read's range, and how many reads in a row each began exactly where the
    /// one before ended (a scan, once there are [`SCAN_AFTER`]).
    last: (u64, u64),
    contiguous: u32,
}

impl Stream {
    /// Note a read of `[offset, end)`; returns whether it goes on with a scan.
    fn scan_goes_on(&mut self, offset: u64, end: u64) -> bool {
        // The same read again (answered from memory failed, now the long way) changes
        // nothing.
        if self.last != (offset, end) {
            self.contiguous = if offset == self.last.1 {
                self.contiguous + 1
            } else {
                0
            };
            self.last = (offset, end);
        }
        self.contiguous >= SCAN_AFTER
    }
}

/// Reads in a row, each starting exactly where the last ended, that make a scan. Exact,
/// unlike readahead's test: random pages of a small file fall within readahead's slack
/// of each other, and must still be marked used.
const SCAN_AFTER: u32 = 4;

/// Bytes `[offset, offset+len)` of a chunk out of its blocks `first..` (`None`: they do
/// not cover it).
fn bytes_of_blocks(first: u64, blocks: &[Bytes], offset: u64, len: u64) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(len as usize);
    let mut at = first * BLOCK;
    for block in blocks {
        let (a, b) = (offset.max(at), (offset + len).min(at + block.len() as u64));
        if a < b {
            out.extend_from_slice(&block[(a - at) as usize..(b - at) as usize]);
        }
        at += block.len() as u64;
    }
    (out.len() as u64 == len).then_some(out)
}

/// A file's slice map as one reader fetched it (opaque: see [`Client::reader_with`]).
#[derive(Clone)]
pub struct SliceMap(Arc<Window>);

impl SliceMap {
    /// The map of an empty file.
    pub fn empty() -> SliceMap {
        SliceMap(Arc::new(Window {
            start: 0,
            end: 0,
            size: 0,
            extents: Vec::new(),
        }))
    }

    /// This map with `slices` committed over it, in order, for a file now `size` bytes
    /// long (what the metadata would answer, without asking it). `None` unless the map
    /// covers the whole file and the result fits one window.
    pub fn overlaid(&self, slices: &[SliceWrite], size: u64) -> Option<SliceMap> {
        let w = &self.0;
        if w.start != 0 || w.end < w.size || size > READ_WINDOW {
            return None;
        }
        let mut extents = w.extents.clone();
        for s in slices {
            let mut at = s.offset;
            for c in &s.chunks {
                let piece = Extent {
                    offset: at,
                    len: c.len,
                    chunk: Some(*c),
                };
                overlay_extents(&mut extents, at, at + c.len, vec![piece]);
                at += c.len;
            }
        }
        extents.retain(|e| e.offset < size);
        Some(SliceMap(Arc::new(Window {
            start: 0,
            end: size,
            size,
            extents,
        })))
    }
}

/// The read side of one open file (close-to-open: it sees the file as it was when its
/// window was fetched). Reads run concurrently; only fetching a new window is serialized.
pub struct FileReader {
    client: Client,
    ino: InodeId,
    /// The file's subtree, if known: its reads go into the subtree's access profile.
    subtree: Option<SubtreeId>,
    /// The windows of the slice map fetched so far, most recently used first.
    windows: tokio::sync::Mutex<VecDeque<Arc<Window>>>,
    stream: Mutex<Stream>,
}

/// The window of `windows` that covers `[offset, end)`, moved to the front.
fn covering(windows: &mut VecDeque<Arc<Window>>, offset: u64, end: u64) -> Option<Arc<Window>> {
    let at = windows
        .iter()
        .position(|w| offset >= w.start && (end <= w.end || w.end >= w.size))?;
    let w = windows.remove(at)?;
    windows.push_front(w.clone());
    Some(w)
}

impl FileReader {
    /// The reader of a file of `subtree` (its reads are recorded in the subtree's access
    /// profile while that records).
    pub fn in_subtree(mut self, subtree: SubtreeId) -> Self {
        self.subtree = Some(subtree);
        self
    }

    /// The slice map this reader holds now, if any.
    pub async fn slice_map(&self) -> Option<SliceMap> {
        let windows = self.windows.lock().await;
        // The map from the start of the file (what an open fetched) if held.
        windows
            .iter()
            .find(|w| w.start == 0)
            .or(windows.front())
            .cloned()
            .map(SliceMap)
    }

    async fn window_for(&self, offset: u64, len: u64) -> Result<Arc<Window>, ClientError> {
        let end = offset.saturating_add(len);
        let mut windows = self.windows.lock().await;
        if let Some(w) = covering(&mut windows, offset, end) {
            return Ok(w);
        }
        // Windows on READ_WINDOW boundaries when the read fits one, so windows tile the
        // file rather than overlap.
        let aligned = offset - offset % READ_WINDOW;
        let (start, span) = if end <= aligned + READ_WINDOW {
            (aligned, READ_WINDOW)
        } else {
            (offset, len.max(READ_WINDOW))
        };
        let (extents, size) = self
            .client
            .meta
            .read_slices(self.ino, start, span, false)
            .await?;
        let w = Arc::new(Window {
            start,
            end: start.saturating_add(span).min(size),
            size,
            extents,
        });
        windows.push_front(w.clone());
        windows.truncate(MAX_WINDOWS);
        Ok(w)
    }

    /// `[offset, offset+len)`, clamped to the file size; holes read as zeros.
    pub async fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, ClientError> {
        Ok(self.read_sized(offset, len).await?.0)
    }

    /// Like [`FileReader::read`], also returning the file size the bytes were cut at.
    pub async fn read_sized(&self, offset: u64, len: u64) -> Result<(Vec<u8>, u64), ClientError> {
        let w = self.window_for(offset, len).await?;
        let end = offset.saturating_add(len).min(w.size);
        if offset >= end {
            return Ok((Vec::new(), w.size));
        }
        let scan = self.scanning(offset, end);
        self.read_ahead(&w, offset, end);
        let pieces = w.pieces(offset, end);
        if let Some(subtree) = self.subtree {
            for (_, _, c) in &pieces {
                let (first, end) = blocks::blocks_covering(c.offset, c.len);
                self.client
                    .profiles
                    .note(subtree, c.hash, first, end.saturating_sub(first));
            }
        }
        let parts = futures::future::try_join_all(pieces.iter().map(|(_, _, c)| {
            self.client
                .chunk_bytes(c.hash, c.offset, c.len, self.ino, scan)
        }))
        .await?;
        if let [(at, len, _)] = pieces[..] {
            if at == offset && len == end - offset {
                // One piece is the whole answer: no copy into another buffer.
                return Ok((parts.into_iter().next().unwrap_or_default(), w.size));
            }
        }
        let mut out = vec![0u8; (end - offset) as usize];
        for ((at, len, _), bytes) in pieces.iter().zip(parts) {
            let dst = (at - offset) as usize;
            out[dst..dst + *len as usize].copy_from_slice(&bytes);
        }
        Ok((out, w.size))
    }

    /// [`FileReader::read_sized`] from memory alone (the window held, every block it
    /// needs cached), with no wait: `None` when anything must be fetched. Call inside
    /// the runtime's context (readahead may start fetches).
    pub fn read_cached(&self, offset: u64, len: u64) -> Option<(Vec<u8>, u64)> {
        let end = offset.saturating_add(len);
        let w = covering(&mut *self.windows.try_lock().ok()?, offset, end)?;
        let end = end.min(w.size);
        if offset >= end {
            return Some((Vec::new(), w.size));
        }
        let pieces = w.pieces(offset, end);
        let scan = self.scanning(offset, end);
        let out = match pieces[..] {
            // One piece is the whole answer: no copy into another buffer.
            [(at, len, c)] if at == offset && len == end - offset => self
                .client
                .chunk_bytes_cached(c.hash, c.offset, c.len, scan)?,
            _ => self.assemble_cached(&pieces, offset, end, scan)?,
        };
        self.read_ahead(&w, offset, end);
        Some((out, w.size))
    }

    /// The bytes of `[offset, end)` out of cached pieces (holes as zeros).
    fn assemble_cached(
        &self,
        pieces: &[(u64, u64, ChunkRef)],
        offset: u64,
        end: u64,
        scan: bool,
    ) -> Option<Vec<u8>> {
        let mut out = vec![0u8; (end - offset) as usize];
        for &(at, len, c) in pieces {
            let bytes = self
                .client
                .chunk_bytes_cached(c.hash, c.offset, c.len, scan)?;
            let dst = (at - offset) as usize;
            out[dst..dst + len as usize].copy_from_slice(&bytes);
        }
        Some(out)
    }

    /// Whether the read of `[offset, end)` goes on with a scan (its cache hits then do
    /// not mark blocks used, [`crate::block_cache::BlockCache::lookup`]).
    fn scanning(&self, offset: u64, end: u64) -> bool {
        let mut s = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        s.scan_goes_on(offset, end)
    }

    /// Follow the access pattern; for a sequential stream, start fetching what comes
    /// next (inside the window) in the background.
    fn read_ahead(&self, w: &Window, offset: u64, end: u64) {
        let (from, to) = {
            let mut s = self.stream.lock().unwrap_or_else(|p| p.into_inner());
            if is_sequential(offset, s.next) {
                s.ahead = (s.ahead * 2).clamp(AHEAD_MIN, AHEAD_MAX);
                s.next = s.next.max(end);
            } else {
                s.ahead = 0;
                s.prefetched_to = 0;
                s.next = end;
            }
            // Once a stream is established, whole pieces of the largest fetch: a 128 KiB
            // read moving the target by 128 KiB would otherwise start a 128 KiB fetch
            // each time. A stream's first read (a file's first read at 0, say) fetches
            // no more than AHEAD_MIN past it: an application started by its access
            // profile reads what the profile holds, and no more.
            let to = match s.ahead {
                0 => s.next,
                AHEAD_MIN => s.next + AHEAD_MIN,
                ahead => (s.next + ahead).next_multiple_of(blocks::MAX_READ_BYTES),
            };
            (s.prefetched_to.max(s.next), to.min(w.end))
        };
        if from >= to {
            return;
        }
        // Up to where readahead was started (holes need none).
        let mut done = to;
        'pieces: for (file_at, len, c) in w.pieces(from, to) {
            let mut at = 0;
            while at < len {
                let n = (len - at).min(blocks::MAX_READ_BYTES);
                if !self.client.prefetch(c.hash, c.offset + at, n, self.ino) {
                    done = file_at + at;
                    break 'pieces;
                }
                at += n;
            }
        }
        let mut s = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        if s.ahead > 0 {
            s.prefetched_to = s.prefetched_to.max(done);
        }
    }
}

/// Is a read at `offset` part of a sequential stream whose next read was expected at
/// `next`? The kernel sends a stream's reads a few at a time, and the mount's threads
/// may take them out of order, so a read a little before or after still counts.
fn is_sequential(offset: u64, next: u64) -> bool {
    offset.abs_diff(next) <= SEQUENTIAL_SLACK
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn only_reads_that_each_start_where_the_last_ended_make_a_scan() {
        let mut s = Stream::default();
        // Random pages of a 2 MiB file (all within readahead's slack of each other).
        for k in 0..200u64 {
            let at = (k * 7_919 * 4096) % ((2 << 20) - 4096);
            assert!(!s.scan_goes_on(at, at + 4096), "page {k} at {at}");
        }
        // A stream of 128 KiB reads: a scan from its fifth read on.
        let read = 128 << 10;
        let scans: Vec<bool> = (0..8u64)
            .map(|k| s.scan_goes_on((64 << 20) + k * read, (64 << 20) + (k + 1) * read))
            .collect();
        assert_eq!(scans, [false, false, false, false, true, true, true, true]);
        // The same read asked again (memory, then the long way) is still one.
        let at = (64 << 20) + 8 * read;
        assert!(s.scan_goes_on(at, at + read));
        assert!(s.scan_goes_on(at, at + read));
        // A jump ends it.
        assert!(!s.scan_goes_on(0, read));
    }

    #[test]
    fn reads_taken_out_of_order_stay_sequential_and_jumps_do_not() {
        let next = 8 << 20;
        // The kernel's next two 128 KiB reads, in either order.
        assert!(is_sequential(next, next));
        assert!(is_sequential(next + (128 << 10), next));
        assert!(is_sequential(next - (128 << 10), next));
        // A database's page elsewhere in the file.
        assert!(!is_sequential(next + (4 << 20), next));
        assert!(!is_sequential(0, next));
    }

    /// Which chunk byte each file byte reads, by the map.
    fn bytes_of(map: &SliceMap) -> Vec<Option<(u8, u64)>> {
        let w = &map.0;
        (0..w.size)
            .map(|at| {
                let e = w
                    .extents
                    .iter()
                    .find(|e| e.offset <= at && at < e.offset + e.len)?;
                let c = e.chunk?;
                Some((c.hash.0[0], c.offset + (at - e.offset)))
            })
            .collect()
    }

    proptest! {
        /// Laying commits over a map answers, for every byte, the chunk byte the last
        /// write of it put there (as the metadata's slices do).
        #[test]
        fn overlaid_maps_read_what_was_written_last(
            writes in prop::collection::vec((0u64..300, prop::collection::vec(1u64..80, 1..4)), 1..12)
        ) {
            let mut map = SliceMap::empty();
            let mut model: Vec<Option<(u8, u64)>> = Vec::new();
            let mut next = 1u8;
            for (offset, lens) in writes {
                let mut chunks = Vec::new();
                let mut at = offset;
                for len in lens {
                    let hash = ChunkHash([next; 32]);
                    chunks.push(ChunkRef { hash, offset: 0, len });
                    for i in 0..len {
                        let pos = (at + i) as usize;
                        if model.len() <= pos {
                            model.resize(pos + 1, None);
                        }
                        model[pos] = Some((next, i));
                    }
                    at += len;
                    next = next.wrapping_add(1).max(1);
                }
                let slice = SliceWrite { offset, len: at - offset, chunks };
                map = map.overlaid(&[slice], model.len() as u64).unwrap();
                prop_assert_eq!(bytes_of(&map), model.clone());
            }
        }
    }
}
