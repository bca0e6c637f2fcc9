//! [`Client`]: buffered writes that become slices, reads that fault chunks in from other
//! sites.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::stream::{self, StreamExt, TryStreamExt};
use mobilus_meta_client::MetaClient;
use mobilus_proto::fs::{
    Attr, ChunkCheck, ChunkHash, ChunkRef, Extent, InodeId, SliceWrite, MAX_FILE_SIZE,
};
use mobilus_proto::status::Errno;

use crate::chunker;
use crate::data::{DataClient, DataClientError};

/// A file's write buffer is flushed as slices once it holds this many bytes...
pub const FLUSH_BYTES: usize = 64 << 20;
/// ... or this many separate writes (each is a slice of the metadata commit).
pub const FLUSH_WRITES: usize = 1024;
/// Chunk transfers in flight per flush or read.
const PARALLEL: usize = 4;
/// Attempts of a flush that keeps racing with garbage collection.
const STALE_CHUNK_ATTEMPTS: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("metadata: {0}")]
    Meta(#[from] mobilus_meta_client::ClientError),
    #[error(transparent)]
    Data(#[from] DataClientError),
    #[error("no data node is registered for site {0}")]
    NoDataNode(String),
    #[error("chunk {0:?} is on no reachable site")]
    ChunkUnavailable(ChunkHash),
    /// Refused here, before anything was sent.
    #[error("{}: {}", .0.name(), .0.description())]
    Refused(Errno),
}

impl ClientError {
    /// The errno a file system returns for this error.
    pub fn to_errno(&self) -> Errno {
        match self {
            ClientError::Refused(e) => *e,
            ClientError::Meta(e) => e.to_errno(),
            ClientError::Data(DataClientError::Rpc { status, .. })
                if status
                    .metadata()
                    .get(mobilus_proto::status::ERRNO_KEY)
                    .is_some() =>
            {
                match mobilus_proto::status::WireError::from_status(status) {
                    mobilus_proto::status::WireError::Errno(e, _) => e,
                    _ => Errno::EIO,
                }
            }
            _ => Errno::EIO,
        }
    }
}

/// What this client has moved, for tests, benchmarks and the demo.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Bytes of chunks sent to the local data node.
    pub bytes_sent: u64,
    pub chunks_sent: u64,
    /// Chunks not sent because the site already held them.
    pub chunks_deduped: u64,
    /// Chunks fetched from another site.
    pub remote_fetches: u64,
    pub bytes_fetched_remote: u64,
    /// Flushes retried because garbage collection raced with them.
    pub stale_chunk_retries: u64,
}

#[derive(Default)]
struct Counters {
    bytes_sent: AtomicU64,
    chunks_sent: AtomicU64,
    chunks_deduped: AtomicU64,
    remote_fetches: AtomicU64,
    bytes_fetched_remote: AtomicU64,
    stale_chunk_retries: AtomicU64,
    /// Fault injection: milliseconds a flush waits between its upload and its commit.
    flush_pause_ms: AtomicU64,
}

/// The data path of one site's client. Cheap to clone: clones share connections and
/// counters.
#[derive(Clone)]
pub struct Client {
    meta: MetaClient,
    site: String,
    local: DataClient,
    remotes: Vec<DataClient>,
    counters: Arc<Counters>,
}

impl Client {
    /// Connect to the metadata cluster and find this site's data node and the others.
    pub async fn connect(meta_addrs: &[String], site: &str) -> Result<Self, ClientError> {
        // Every mutation says which site issued it: the metadata lets only a subtree's
        // owner change it.
        let opts = mobilus_meta_client::ClientOptions {
            site: Some(site.to_string()),
            ..Default::default()
        };
        let meta = MetaClient::new(meta_addrs, opts)?;
        let (nodes, _) = meta.list_data_nodes(None, false).await?;
        let local = nodes
            .iter()
            .find(|n| n.site == site)
            .ok_or_else(|| ClientError::NoDataNode(site.to_string()))?;
        let local = DataClient::new(&local.addr)?;
        let remotes = nodes
            .iter()
            .filter(|n| n.site != site)
            .map(|n| DataClient::new(&n.addr))
            .collect::<Result<_, _>>()?;
        Ok(Client {
            meta,
            site: site.to_string(),
            local,
            remotes,
            counters: Arc::default(),
        })
    }

    pub fn meta(&self) -> &MetaClient {
        &self.meta
    }

    pub fn site(&self) -> &str {
        &self.site
    }

    pub fn local(&self) -> &DataClient {
        &self.local
    }

    /// Fault injection: make every flush wait `pause` between uploading its chunks and
    /// its first commit attempt, as a slow or paused writer would. Tests and the Jepsen
    /// harness use it to widen the window garbage collection must be safe against.
    pub fn set_flush_pause(&self, pause: std::time::Duration) {
        let ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
        self.counters.flush_pause_ms.store(ms, Ordering::Relaxed);
    }

    pub fn stats(&self) -> ClientStats {
        let c = &self.counters;
        ClientStats {
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            chunks_sent: c.chunks_sent.load(Ordering::Relaxed),
            chunks_deduped: c.chunks_deduped.load(Ordering::Relaxed),
            remote_fetches: c.remote_fetches.load(Ordering::Relaxed),
            bytes_fetched_remote: c.bytes_fetched_remote.load(Ordering::Relaxed),
            stale_chunk_retries: c.stale_chunk_retries.load(Ordering::Relaxed),
        }
    }

    /// A write buffer for an open file.
    pub fn writer(&self, ino: InodeId) -> FileWriter {
        FileWriter {
            client: self.clone(),
            ino,
            pending: Vec::new(),
            pending_bytes: 0,
        }
    }

    /// `[offset, offset+len)` of a file, clamped to its size; holes read as zeros.
    pub async fn read(&self, ino: InodeId, offset: u64, len: u64) -> Result<Vec<u8>, ClientError> {
        self.reader(ino).read(offset, len).await
    }

    /// A reader for an open file: it keeps the slice map of a window and a few whole
    /// chunks, so sequential reads do one metadata call per window and fetch each chunk
    /// once.
    pub fn reader(&self, ino: InodeId) -> FileReader {
        FileReader {
            client: self.clone(),
            ino,
            window: None,
            cache: VecDeque::new(),
        }
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
        let mut reader = self.reader(ino);
        reader.window = Some(Window {
            start: 0,
            end: READ_WINDOW.min(attr.size),
            size: attr.size,
            extents,
        });
        Ok(Some((attr, reader)))
    }

    async fn chunk_of(&self, hash: ChunkHash) -> Result<(ChunkHash, Vec<u8>), ClientError> {
        Ok((hash, self.chunk(&hash).await?))
    }

    /// A whole chunk, verified: from the local node, else from another site (then stored
    /// locally, so the next read is local).
    async fn chunk(&self, hash: &ChunkHash) -> Result<Vec<u8>, ClientError> {
        match self.local.get(hash, 0, 0).await {
            Ok(b) if ChunkHash::of(&b) == *hash => return Ok(b),
            Ok(_) => tracing::warn!(?hash, "local chunk failed verification in transit"),
            Err(e) if e.is_missing() => {}
            Err(e) => return Err(e.into()),
        }
        let whole = self.fetch_remote(hash).await?;
        if let Err(e) = self.local.put(hash, &whole, true).await {
            tracing::warn!(?hash, error = %e, "could not keep a fetched chunk locally");
        }
        Ok(whole)
    }

    /// Make `chunks` present on the local data node: one `has` call, then put what is
    /// missing. Returns the check a metadata write must carry (see `namespace::gc`).
    async fn upload(&self, chunks: &[(ChunkHash, &[u8])]) -> Result<ChunkCheck, ClientError> {
        let hashes: Vec<ChunkHash> = chunks.iter().map(|(h, _)| *h).collect();
        let (gc_gen, present) = self.local.has(&hashes).await?;
        let missing: Vec<_> = chunks
            .iter()
            .zip(&present)
            .filter(|(_, p)| !**p)
            .map(|(c, _)| *c)
            .collect();
        self.counters
            .chunks_deduped
            .fetch_add((chunks.len() - missing.len()) as u64, Ordering::Relaxed);
        metrics::counter!("mobilus_client_chunks_deduped_total")
            .increment((chunks.len() - missing.len()) as u64);
        // Futures made by a named fn, not a closure: the flush future stays `Send` for
        // callers that spawn it.
        let puts: Vec<_> = missing
            .into_iter()
            .map(|(hash, bytes)| self.put_local(hash, bytes))
            .collect();
        stream::iter(puts)
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(ChunkCheck {
            node: self.local.addr().to_string(),
            gc_gen,
        })
    }

    async fn put_local(&self, hash: ChunkHash, bytes: &[u8]) -> Result<(), ClientError> {
        let existed = self.local.put(&hash, bytes, false).await?;
        if !existed {
            self.counters
                .bytes_sent
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            self.counters.chunks_sent.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("mobilus_client_chunks_sent_total").increment(1);
            metrics::counter!("mobilus_client_bytes_sent_total").increment(bytes.len() as u64);
        }
        Ok(())
    }

    async fn fetch_remote(&self, hash: &ChunkHash) -> Result<Vec<u8>, ClientError> {
        for remote in &self.remotes {
            match remote.get(hash, 0, 0).await {
                // Verified here too: a remote site's bytes are trusted only if they hash right.
                Ok(bytes) if ChunkHash::of(&bytes) == *hash => {
                    self.counters.remote_fetches.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("mobilus_client_remote_fetches_total").increment(1);
                    metrics::counter!("mobilus_client_remote_fetch_bytes_total")
                        .increment(bytes.len() as u64);
                    self.counters
                        .bytes_fetched_remote
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    return Ok(bytes);
                }
                Ok(_) => tracing::warn!(
                    ?hash,
                    node = remote.addr(),
                    "remote chunk failed verification"
                ),
                Err(e) => {
                    tracing::debug!(?hash, node = remote.addr(), error = %e, "remote fetch failed")
                }
            }
        }
        Err(ClientError::ChunkUnavailable(*hash))
    }
}

/// Slice map fetched per call of a [`FileReader`] (the read-ahead window).
pub const READ_WINDOW: u64 = 64 << 20;
/// Whole chunks a [`FileReader`] keeps.
const CACHED_CHUNKS: usize = 8;
/// Chunks past the end of a read fetched with it.
const READAHEAD_CHUNKS: usize = 2;

struct Window {
    start: u64,
    end: u64,
    size: u64,
    extents: Vec<Extent>,
}

/// The read side of one open file (close-to-open: it sees the file as it was when its
/// window was fetched).
pub struct FileReader {
    client: Client,
    ino: InodeId,
    window: Option<Window>,
    cache: VecDeque<(ChunkHash, Arc<Vec<u8>>)>,
}

impl FileReader {
    async fn window_for(&mut self, offset: u64, len: u64) -> Result<&Window, ClientError> {
        let end = offset.saturating_add(len);
        let fresh = match &self.window {
            Some(w) => offset < w.start || (end > w.end && w.end < w.size),
            None => true,
        };
        if fresh {
            let span = len.max(READ_WINDOW);
            let (extents, size) = self
                .client
                .meta
                .read_slices(self.ino, offset, span, false)
                .await?;
            let end = offset.saturating_add(span).min(size);
            self.window = Some(Window {
                start: offset,
                end,
                size,
                extents,
            });
        }
        self.window
            .as_ref()
            .ok_or(ClientError::ChunkUnavailable(ChunkHash([0; 32])))
    }

    async fn cached_chunk(&mut self, hash: &ChunkHash) -> Result<Arc<Vec<u8>>, ClientError> {
        if let Some((_, bytes)) = self.cache.iter().find(|(h, _)| h == hash) {
            return Ok(bytes.clone());
        }
        let bytes = Arc::new(self.client.chunk(hash).await?);
        if self.cache.len() == CACHED_CHUNKS {
            self.cache.pop_front();
        }
        self.cache.push_back((*hash, bytes.clone()));
        Ok(bytes)
    }

    /// `[offset, offset+len)`, clamped to the file size; holes read as zeros.
    pub async fn read(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, ClientError> {
        Ok(self.read_sized(offset, len).await?.0)
    }

    /// Like [`FileReader::read`], also returning the file size the bytes were cut at.
    pub async fn read_sized(
        &mut self,
        offset: u64,
        len: u64,
    ) -> Result<(Vec<u8>, u64), ClientError> {
        let size = self.window_for(offset, len).await?.size;
        Ok((self.read_window(offset, len).await?, size))
    }

    async fn read_window(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, ClientError> {
        let w = self.window_for(offset, len).await?;
        let end = offset.saturating_add(len).min(w.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let wanted: Vec<(u64, u64, ChunkRef)> = w
            .extents
            .iter()
            .filter(|e| e.offset < end && e.offset + e.len > offset)
            .filter_map(|e| Some((e.offset, e.len, e.chunk?)))
            .collect();
        // Sequential readahead: the next chunks of the window are fetched along with
        // this read's, concurrently, so the reads that follow find them cached.
        let ahead: Vec<ChunkHash> = w
            .extents
            .iter()
            .filter(|e| e.offset >= end)
            .filter_map(|e| e.chunk.map(|c| c.hash))
            .take(READAHEAD_CHUNKS)
            .collect();
        let mut fetched = self
            .fetch_missing(wanted.iter().map(|(_, _, c)| c.hash).chain(ahead))
            .await?;
        let mut out = vec![0u8; (end - offset) as usize];
        for (at, len, c) in wanted {
            let whole = match fetched.get(&c.hash) {
                Some(bytes) => bytes.clone(),
                None => self.cached_chunk(&c.hash).await?,
            };
            let (a, b) = (at.max(offset), (at + len).min(end));
            let src = (c.offset + (a - at)) as usize;
            let piece = whole
                .get(src..src + (b - a) as usize)
                .ok_or(ClientError::ChunkUnavailable(c.hash))?;
            out[(a - offset) as usize..(b - offset) as usize].copy_from_slice(piece);
        }
        fetched.clear();
        Ok(out)
    }

    /// Fetch, `PARALLEL` at a time, those of `hashes` not cached; each is cached as it
    /// arrives (the newest last, so the readahead survives), and all are returned, so a
    /// read wider than the cache still has every chunk it needs.
    async fn fetch_missing(
        &mut self,
        hashes: impl Iterator<Item = ChunkHash>,
    ) -> Result<HashMap<ChunkHash, Arc<Vec<u8>>>, ClientError> {
        let mut seen = HashSet::new();
        let todo: Vec<ChunkHash> = hashes
            .filter(|h| seen.insert(*h) && !self.cache.iter().any(|(c, _)| c == h))
            .collect();
        let client = &self.client;
        let got: Vec<(ChunkHash, Vec<u8>)> =
            stream::iter(todo.into_iter().map(|h| client.chunk_of(h)))
                .buffered(PARALLEL)
                .try_collect()
                .await?;
        let mut out = HashMap::with_capacity(got.len());
        for (h, bytes) in got {
            let bytes = Arc::new(bytes);
            if self.cache.len() == CACHED_CHUNKS {
                self.cache.pop_front();
            }
            self.cache.push_back((h, bytes.clone()));
            out.insert(h, bytes);
        }
        Ok(out)
    }
}

/// The write buffer of one open file: writes accumulate, and [`FileWriter::flush`] turns
/// them into chunks on the local data node and slices committed in one metadata operation.
pub struct FileWriter {
    client: Client,
    ino: InodeId,
    pending: Vec<(u64, Vec<u8>)>,
    pending_bytes: usize,
}

impl FileWriter {
    /// Buffer a write; flushes when the buffer is full.
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        if data.is_empty() {
            return Ok(());
        }
        if offset.saturating_add(data.len() as u64) > MAX_FILE_SIZE {
            return Err(ClientError::Refused(Errno::EFBIG));
        }
        // Sequential writes grow one buffer, so chunking sees long runs.
        match self.pending.last_mut() {
            Some((at, buf)) if *at + buf.len() as u64 == offset => buf.extend_from_slice(data),
            _ => self.pending.push((offset, data.to_vec())),
        }
        self.pending_bytes += data.len();
        if self.pending_bytes >= FLUSH_BYTES || self.pending.len() >= FLUSH_WRITES {
            self.flush().await?;
        }
        Ok(())
    }

    /// The file as this writer sees it: `committed` holds the committed bytes from
    /// `offset` (as a reader returned them, so cut at the committed size
    /// `committed_size`), and the buffered writes are laid over them. Returns at most
    /// `len` bytes, cut at the size the buffered writes give the file.
    pub fn overlay(
        &self,
        offset: u64,
        len: u64,
        mut committed: Vec<u8>,
        committed_size: u64,
    ) -> Vec<u8> {
        let size = committed_size.max(self.pending_end());
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Vec::new();
        }
        committed.resize((end - offset) as usize, 0);
        for (at, buf) in &self.pending {
            let (a, b) = ((*at).max(offset), (at + buf.len() as u64).min(end));
            if a < b {
                committed[(a - offset) as usize..(b - offset) as usize]
                    .copy_from_slice(&buf[(a - at) as usize..(b - at) as usize]);
            }
        }
        committed
    }

    /// Whether writes are buffered, not yet flushed.
    pub fn is_dirty(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The end of the furthest buffered write (0 when clean): the file's size as its
    /// writer sees it is at least this.
    pub fn pending_end(&self) -> u64 {
        self.pending
            .iter()
            .map(|(at, buf)| at + buf.len() as u64)
            .max()
            .unwrap_or(0)
    }

    /// Make every buffered write durable: chunks on the local data node (fsynced there),
    /// then the slices committed by a Raft quorum. Returns the new attributes, if anything
    /// was written.
    pub async fn flush(&mut self) -> Result<Option<Attr>, ClientError> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let mut slices = Vec::with_capacity(self.pending.len());
        let mut chunks: Vec<(ChunkHash, &[u8])> = Vec::new();
        let mut seen = HashSet::new();
        for (offset, buf) in &self.pending {
            let pieces = chunker::chunk(buf);
            let refs = pieces
                .iter()
                .map(|p| ChunkRef {
                    hash: p.hash,
                    offset: 0,
                    len: p.len as u64,
                })
                .collect();
            slices.push(SliceWrite {
                offset: *offset,
                len: buf.len() as u64,
                chunks: refs,
            });
            for p in pieces {
                if seen.insert(p.hash) {
                    chunks.push((p.hash, &buf[p.offset..p.offset + p.len]));
                }
            }
        }
        let mut attempt = 0;
        let attr = loop {
            attempt += 1;
            let checked = self.client.upload(&chunks).await?;
            let pause = self.client.counters.flush_pause_ms.load(Ordering::Relaxed);
            if pause > 0 && attempt == 1 {
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
            match self
                .client
                .meta
                .write(self.ino, &slices, None, Some(&checked))
                .await
            {
                Ok(attr) => break attr,
                // Garbage collection raced with this write: ask the data node again.
                Err(mobilus_meta_client::ClientError::StaleChunks(why))
                    if attempt < STALE_CHUNK_ATTEMPTS =>
                {
                    tracing::debug!(attempt, %why, "write raced with gc; checking the chunks again");
                    self.client
                        .counters
                        .stale_chunk_retries
                        .fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("mobilus_client_stale_chunk_retries_total").increment(1);
                    tokio::time::sleep(std::time::Duration::from_millis(20 << attempt.min(6)))
                        .await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.pending.clear();
        self.pending_bytes = 0;
        Ok(Some(attr))
    }
}
