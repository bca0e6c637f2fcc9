//! [`Client`]: buffered writes that become slices; the reads are in `read`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::stream::{self, StreamExt};
use mobilus_meta_client::{MetaClient, ReservedCreate};
use mobilus_proto::fs::{
    ChunkCheck, ChunkHash, InodeId, Placement, SubtreeId, MAX_FILE_SIZE, ROOT_INO,
};
use mobilus_proto::status::Errno;

use crate::block_cache::{BlockCache, BlockCacheStats};
use mobilus_data_client::{
    nodes::HEALTHY_WITHIN, DataClient, DataClientError, DataNodes, PutAnswer,
};

mod ahead;
mod budget;
mod cut;
mod flush;

/// A file's write buffer is flushed as slices once it holds this many bytes...
pub const FLUSH_BYTES: usize = 64 << 20;
/// ... or this many separate writes (each is a slice of the metadata commit).
pub const FLUSH_WRITES: usize = 1024;
/// While a sequential run's chunks are still being stored ahead (`client::ahead`), the
/// buffer grows past [`FLUSH_BYTES`] up to this, so writes go on while the stores catch
/// up, and the flush finds little left to store.
const MAX_BUFFERED: usize = 2 * FLUSH_BYTES;
/// Most bytes of one commit kept in the block cache as written.
const WRITE_THROUGH_BYTES: usize = 4 << 20;
/// Chunk transfers in flight per flush or read.
const PARALLEL: usize = 4;
/// Readahead fetches in flight per client (each up to 1 MiB of blocks): 16 MiB, enough
/// to keep a data node's disk busy while the mount hands out what has arrived.
const PREFETCHES: usize = 16;
/// How long a subtree's synchronous sites are remembered.
const PLACEMENT_FOR: std::time::Duration = std::time::Duration::from_secs(5);
/// A whole chunk from another site that takes longer has failed (a stalled link): the
/// fetch ends, so the chunk's next fault starts another.
const REMOTE_CHUNK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// Subtrees whose synchronous sites are remembered, at most.
const MAX_PLACEMENTS: usize = 4096;
/// Read repairs in flight per client, at most (more are left to the replicators).
const MAX_REPAIRS: usize = 16;
/// Attempts of a flush that keeps racing with garbage collection.
const STALE_CHUNK_ATTEMPTS: u32 = 8;
/// Chunks for one node adding up to at most this are put without asking the node first
/// which it has: a put answers that too, with the GC generation a `has` would give. At
/// 10 Gbit/s 64 KiB take about 50 µs, less than the round trip saved, and deduplicating
/// writes this small saves little.
const PUT_WITHOUT_ASKING_BYTES: usize = 64 << 10;

/// Per data node relied on, the oldest GC generation its answers carried (the
/// `ChunkCheck`s a commit carries).
type Generations = BTreeMap<String, u64>;

/// The checks a commit carries for `generations`.
fn chunk_checks(generations: &Generations) -> Vec<ChunkCheck> {
    generations
        .iter()
        .map(|(node, gc_gen)| ChunkCheck {
            node: node.clone(),
            gc_gen: *gc_gen,
        })
        .collect()
}

/// What the puts of some chunks to one node came to.
#[derive(Default)]
struct Puts {
    /// The chunks the node now holds.
    stored: Vec<usize>,
    /// The first failure.
    error: Option<ClientError>,
    /// The oldest GC generation the answers carried.
    gc_gen: Option<u64>,
    /// Some answer carried none (a node that predates them).
    unanswered_gen: bool,
}

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
    /// Bytes of chunks sent to this site's data nodes (every copy counts).
    pub bytes_sent: u64,
    pub chunks_sent: u64,
    /// Chunk copies not sent because the node already held them.
    pub chunks_deduped: u64,
    /// Whole chunks fetched from another site.
    pub remote_fetches: u64,
    pub bytes_fetched_remote: u64,
    /// Faults answered with only the blocks they needed from another site (the whole
    /// chunk then follows in the background), and the bytes those reads took (blocks
    /// and outboards).
    pub remote_range_reads: u64,
    pub remote_range_bytes: u64,
    /// Flushes retried because garbage collection raced with them.
    pub stale_chunk_retries: u64,
    /// Copies put back on a node of this site that lacked them (read repair).
    pub repairs: u64,
    /// Runs of blocks read straight from a local node's chunk files
    /// ([`DataOptions::local_chunks`]), and tries that missed (then asked of the node).
    pub local_reads: u64,
    pub local_misses: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    bytes_sent: AtomicU64,
    chunks_sent: AtomicU64,
    chunks_deduped: AtomicU64,
    remote_fetches: AtomicU64,
    bytes_fetched_remote: AtomicU64,
    pub(crate) remote_range_reads: AtomicU64,
    pub(crate) local_reads: AtomicU64,
    pub(crate) local_misses: AtomicU64,
    pub(crate) remote_range_bytes: AtomicU64,
    stale_chunk_retries: AtomicU64,
    repairs: AtomicU64,
    /// Fault injection: milliseconds a flush waits between its upload and its commit.
    flush_pause_ms: AtomicU64,
}

/// How a [`Client`] caches.
#[derive(Clone, Debug)]
pub struct DataOptions {
    /// Bytes of verified blocks kept for reads, shared by every open file.
    pub block_cache_bytes: u64,
    /// How long after its first read of a subtree this client records the blocks it
    /// reads there, as the subtree's access profile (`None`: never).
    pub profile_window: Option<std::time::Duration>,
    /// A metadata member at this client's site: reads of subtrees whose delegation this
    /// client's mount holds go there, with no round to a distant leader
    /// ([`MetaClient::set_holder_reads`]).
    pub near_meta: Option<String>,
    /// Bytes all open files' write buffers may hold together (`client::budget`).
    pub write_buffer_bytes: usize,
    /// The data directory of this site's data node, when it runs on this host: reads
    /// then take blocks straight from its chunk files ([`crate::local_chunks`]).
    pub local_chunks: Option<std::path::PathBuf>,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            block_cache_bytes: 256 << 20,
            profile_window: Some(crate::profile::DEFAULT_WINDOW),
            near_meta: None,
            write_buffer_bytes: 512 << 20,
            local_chunks: None,
        }
    }
}

/// The data path of one site's client. Cheap to clone: clones share connections,
/// caches and counters.
#[derive(Clone)]
pub struct Client {
    pub(crate) meta: MetaClient,
    site: String,
    /// The data nodes of every site, and where each chunk belongs among a site's.
    pub(crate) nodes: Arc<DataNodes>,
    /// The first of this site's nodes (its only one, in a one-node site).
    first_local: DataClient,
    pub(crate) counters: Arc<Counters>,
    pub(crate) blocks: Arc<BlockCache>,
    /// Readahead budget: a sequential stream starts a fetch only with a permit.
    pub(crate) prefetch: Arc<tokio::sync::Semaphore>,
    /// Chunks known present at the local node (see [`Client::upload`]).
    present: Arc<std::sync::Mutex<PresentChunks>>,
    /// Chunks being repaired (see [`Client::repair`]).
    repairing: Arc<std::sync::Mutex<HashSet<ChunkHash>>>,
    /// Per subtree: the other sites a write waits for, and when that was asked.
    placements: Arc<std::sync::Mutex<Placements>>,
    /// Access profiles being recorded.
    pub(crate) profiles: Arc<crate::profile::Profiles>,
    /// Bytes buffered by all writers, against their cap.
    budget: Arc<budget::WriteBudget>,
    /// A local node's chunk files, read directly (see [`crate::local_chunks`]).
    pub(crate) local: Option<crate::local_chunks::LocalChunks>,
}

/// Chunks this site's nodes answered present (or stored), each with the nodes that hold
/// it and the GC generation each answered under: a commit may carry those generations
/// instead of asking again, because the metadata refuses a commit whose generation a GC
/// round has passed (and any commit of a chunk condemned meanwhile), exactly as it would
/// after a fresh `has`.
#[derive(Default)]
struct PresentChunks {
    chunks: std::collections::HashMap<ChunkHash, (Vec<ChunkCheck>, std::time::Instant)>,
}

/// Per subtree: the other sites its writes wait for, and when that was asked.
/// Subtree placements, as last asked, and when.
type Placements = HashMap<SubtreeId, (Placement, std::time::Instant)>;

/// Chunks remembered present, at most (past it, all are forgotten).
const MAX_PRESENT: usize = 8192;
/// How long a chunk is remembered present.
const PRESENT_FOR: std::time::Duration = std::time::Duration::from_secs(60);

impl Client {
    /// Connect to the metadata cluster and find this site's data node and the others.
    pub async fn connect(meta_addrs: &[String], site: &str) -> Result<Self, ClientError> {
        Self::connect_with(meta_addrs, site, DataOptions::default()).await
    }

    /// [`Client::connect`], caching as `data` says.
    pub async fn connect_with(
        meta_addrs: &[String],
        site: &str,
        data: DataOptions,
    ) -> Result<Self, ClientError> {
        // Every mutation says which site issued it: the metadata lets only a subtree's
        // owner change it.
        let opts = mobilus_meta_client::ClientOptions {
            site: Some(site.to_string()),
            near: data.near_meta.clone(),
            ..Default::default()
        };
        let meta = MetaClient::new(meta_addrs, opts)?;
        let nodes = DataNodes::connect(meta.clone(), HEALTHY_WITHIN).await?;
        let first_local = match nodes.registry().nodes(site).first() {
            Some(n) => nodes.client(&n.addr)?,
            None => return Err(ClientError::NoDataNode(site.to_string())),
        };
        Ok(Client {
            site: site.to_string(),
            nodes,
            first_local,
            counters: Arc::default(),
            blocks: Arc::new(BlockCache::new(data.block_cache_bytes)),
            prefetch: Arc::new(tokio::sync::Semaphore::new(PREFETCHES)),
            present: Arc::default(),
            repairing: Arc::default(),
            placements: Arc::default(),
            profiles: Arc::new(crate::profile::Profiles::new(
                meta.clone(),
                site.to_string(),
                data.profile_window,
            )),
            budget: Arc::new(budget::WriteBudget::new(data.write_buffer_bytes)),
            local: data.local_chunks.map(crate::local_chunks::LocalChunks::new),
            meta,
        })
    }

    /// Bytes buffered by all of this client's writers, not yet committed.
    pub fn buffered_bytes(&self) -> usize {
        self.budget.used()
    }

    /// The block cache's counters.
    pub fn block_cache_stats(&self) -> BlockCacheStats {
        self.blocks.stats()
    }

    pub fn meta(&self) -> &MetaClient {
        &self.meta
    }

    pub fn site(&self) -> &str {
        &self.site
    }

    /// The first of this site's data nodes (its only one, in a one-node site).
    pub fn local(&self) -> &DataClient {
        &self.first_local
    }

    /// The data nodes of every site.
    pub fn data_nodes(&self) -> &Arc<DataNodes> {
        &self.nodes
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
            remote_range_reads: c.remote_range_reads.load(Ordering::Relaxed),
            remote_range_bytes: c.remote_range_bytes.load(Ordering::Relaxed),
            stale_chunk_retries: c.stale_chunk_retries.load(Ordering::Relaxed),
            repairs: c.repairs.load(Ordering::Relaxed),
            local_reads: c.local_reads.load(Ordering::Relaxed),
            local_misses: c.local_misses.load(Ordering::Relaxed),
        }
    }

    /// A write buffer for an open file.
    pub fn writer(&self, ino: InodeId) -> FileWriter {
        FileWriter {
            client: self.clone(),
            ino,
            pending: Vec::new(),
            pending_bytes: 0,
            ahead: Vec::new(),
            create_first: None,
            holder_only: false,
        }
    }

    /// Make `chunks` durable at this site: each on the first [`DataNodes::replicas`] of
    /// its placement's nodes that answer (one `has` call per node, then puts of what each
    /// lacks). A node that fails hands its chunks to the chunk's next candidates; a chunk
    /// that none of them could take fails the upload, one that fewer took than wanted
    /// does not (the replicators restore its copies). Returns the checks a metadata write
    /// must carry: one per node relied on (see `namespace::gc`).
    ///
    /// Chunks known present recently are not asked about again (a file written again, a
    /// copy of one, a run's chunks stored ahead of its flush): their checks are those
    /// they were known under. Those among `stored_ahead` (this writer's own, stored
    /// moments ago) are not counted as deduplicated.
    async fn upload(
        &self,
        chunks: &[(ChunkHash, &[u8])],
        stored_ahead: &HashSet<ChunkHash>,
    ) -> Result<Vec<ChunkCheck>, ClientError> {
        let (mut checks, todo) = self.known_present(chunks);
        let asked: HashSet<&ChunkHash> = todo.iter().map(|(h, _)| h).collect();
        let deduped = chunks
            .iter()
            .filter(|(h, _)| !asked.contains(h) && !stored_ahead.contains(h))
            .count();
        self.count_deduped(deduped);
        if !todo.is_empty() {
            for (node, gc_gen) in self.store(&todo).await? {
                let g = checks.entry(node).or_insert(gc_gen);
                *g = (*g).min(gc_gen);
            }
        }
        Ok(chunk_checks(&checks))
    }

    /// [`Client::upload`] of chunks not known present: per node relied on, the oldest
    /// GC generation its answers carried.
    async fn store(&self, chunks: &[(ChunkHash, &[u8])]) -> Result<Generations, ClientError> {
        let hashes: Vec<ChunkHash> = chunks.iter().map(|(h, _)| *h).collect();
        let want = self.nodes.replicas(&self.site).max(1);
        let candidates: Vec<Vec<DataClient>> = hashes
            .iter()
            .map(|h| self.nodes.candidates(&self.site, h))
            .collect();
        // Per chunk: the next candidate to try, and the copies made.
        let mut next = vec![0usize; chunks.len()];
        let mut copies = vec![0usize; chunks.len()];
        let mut checks = Generations::new();
        let mut first_error: Option<ClientError> = None;
        loop {
            let mut per_node: BTreeMap<String, (DataClient, Vec<usize>)> = BTreeMap::new();
            for (i, cands) in candidates.iter().enumerate() {
                let mut planned = 0;
                while copies[i] + planned < want && next[i] < cands.len() {
                    let node = &cands[next[i]];
                    per_node
                        .entry(node.addr().to_string())
                        .or_insert_with(|| (node.clone(), Vec::new()))
                        .1
                        .push(i);
                    next[i] += 1;
                    planned += 1;
                }
            }
            if per_node.is_empty() {
                break;
            }
            let rounds = per_node
                .into_values()
                .map(|(node, idx)| self.store_at(node, idx, chunks));
            for (node, gc_gen, stored, error) in futures::future::join_all(rounds).await {
                if let Some(gc_gen) = gc_gen.filter(|_| !stored.is_empty()) {
                    let g = checks.entry(node.addr().to_string()).or_insert(gc_gen);
                    *g = (*g).min(gc_gen);
                }
                for i in stored {
                    copies[i] += 1;
                }
                match error {
                    Some(e) => {
                        tracing::debug!(node = node.addr(), error = %e, "a data node failed; trying the next candidates");
                        self.nodes.suspect(node.addr());
                        first_error.get_or_insert(e);
                    }
                    None => self.nodes.absolve(node.addr()),
                }
            }
        }
        if copies.contains(&0) {
            return Err(first_error.unwrap_or_else(|| ClientError::NoDataNode(self.site.clone())));
        }
        self.remember_present(&hashes, &chunk_checks(&checks));
        Ok(checks)
    }

    /// The chunks `idx` of `chunks` made durable at `node`: one `has`, then puts of what
    /// it lacks; or, for at most [`PUT_WITHOUT_ASKING_BYTES`], puts alone. Returns the generation its answer carried, the chunks it now holds, and
    /// the error that stopped it, if one did.
    async fn store_at(
        &self,
        node: DataClient,
        idx: Vec<usize>,
        chunks: &[(ChunkHash, &[u8])],
    ) -> (DataClient, Option<u64>, Vec<usize>, Option<ClientError>) {
        let bytes: usize = idx.iter().map(|i| chunks[*i].1.len()).sum();
        if bytes <= PUT_WITHOUT_ASKING_BYTES {
            let puts = self.put_each(&node, &idx, chunks).await;
            // A node that predates put generations: ask it first.
            if !puts.unanswered_gen {
                return (node, puts.gc_gen, puts.stored, puts.error);
            }
        }
        let hashes: Vec<ChunkHash> = idx.iter().map(|i| chunks[*i].0).collect();
        let (gc_gen, present) = match node.has_keeping(&hashes).await {
            Ok(answer) => answer,
            Err(e) => return (node, None, Vec::new(), Some(e.into())),
        };
        let (held, missing): (Vec<_>, Vec<_>) = idx.iter().zip(&present).partition(|(_, p)| **p);
        let mut stored: Vec<usize> = held.into_iter().map(|(i, _)| *i).collect();
        let missing: Vec<usize> = missing.into_iter().map(|(i, _)| *i).collect();
        self.count_deduped(stored.len());
        let puts = self.put_each(&node, &missing, chunks).await;
        stored.extend(puts.stored);
        (node, Some(gc_gen), stored, puts.error)
    }

    /// Put chunks `idx` of `chunks` at `node`, [`PARALLEL`] at a time.
    async fn put_each(
        &self,
        node: &DataClient,
        idx: &[usize],
        chunks: &[(ChunkHash, &[u8])],
    ) -> Puts {
        // Futures made by a named fn, not a closure: the flush future stays `Send` for
        // callers that spawn it.
        let puts: Vec<_> = idx
            .iter()
            .map(|i| self.put_at(node, *i, chunks[*i]))
            .collect();
        let mut results = stream::iter(puts).buffer_unordered(PARALLEL);
        let mut out = Puts::default();
        while let Some(result) = results.next().await {
            match result {
                Ok((i, answer)) => {
                    match answer.gc_gen {
                        Some(g) => out.gc_gen = Some(out.gc_gen.map_or(g, |old| old.min(g))),
                        None => out.unanswered_gen = true,
                    }
                    out.stored.push(i);
                }
                Err(e) => {
                    out.error.get_or_insert(e);
                }
            }
        }
        out
    }

    fn count_deduped(&self, n: usize) {
        self.counters
            .chunks_deduped
            .fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!("mobilus_client_chunks_deduped_total").increment(n as u64);
    }

    /// Which of `chunks` were known present recently: per node, the oldest generation
    /// any of those was answered under; and the chunks that were not.
    fn known_present<'a>(
        &self,
        chunks: &[(ChunkHash, &'a [u8])],
    ) -> (Generations, Vec<(ChunkHash, &'a [u8])>) {
        let p = self.present.lock().unwrap_or_else(|e| e.into_inner());
        let mut oldest = Generations::new();
        let mut todo = Vec::new();
        for (hash, bytes) in chunks {
            let Some((checks, _)) = p
                .chunks
                .get(hash)
                .filter(|(_, at)| at.elapsed() < PRESENT_FOR)
            else {
                todo.push((*hash, *bytes));
                continue;
            };
            for c in checks {
                let g = oldest.entry(c.node.clone()).or_insert(c.gc_gen);
                *g = (*g).min(c.gc_gen);
            }
        }
        (oldest, todo)
    }

    fn remember_present(&self, hashes: &[ChunkHash], checks: &[ChunkCheck]) {
        let mut p = self.present.lock().unwrap_or_else(|e| e.into_inner());
        if p.chunks.len() + hashes.len() > MAX_PRESENT {
            p.chunks = std::collections::HashMap::new();
        }
        let now = std::time::Instant::now();
        for h in hashes {
            p.chunks.insert(*h, (checks.to_vec(), now));
        }
    }

    /// A commit met garbage collection: ask the nodes again next time.
    fn forget_present(&self) {
        self.present
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .chunks = std::collections::HashMap::new();
    }

    async fn put_at(
        &self,
        node: &DataClient,
        i: usize,
        (hash, bytes): (ChunkHash, &[u8]),
    ) -> Result<(usize, PutAnswer), ClientError> {
        let answer = node.put_keeping(&hash, bytes).await?;
        if answer.existed {
            self.count_deduped(1);
        } else {
            self.counters
                .bytes_sent
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            self.counters.chunks_sent.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("mobilus_client_chunks_sent_total").increment(1);
            metrics::counter!("mobilus_client_bytes_sent_total").increment(bytes.len() as u64);
        }
        Ok((i, answer))
    }

    /// Put chunks `idx` of `chunks` at `remote`, a node of another site, through this
    /// site's nodes: a mount stores chunks at its own site only, and its site's node, a
    /// data node, sends them on (`DataClient::put_forwarded`).
    async fn forward_each(
        &self,
        remote: DataClient,
        idx: Vec<usize>,
        chunks: &[(ChunkHash, &[u8])],
    ) -> (DataClient, Option<u64>, Vec<usize>, Option<ClientError>) {
        let sends: Vec<_> = idx
            .iter()
            .map(|i| self.forward_one(&remote, *i, chunks[*i]))
            .collect();
        let (mut stored, mut error) = (Vec::new(), None);
        for r in futures::future::join_all(sends).await {
            match r {
                Ok(i) => stored.push(i),
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        (remote, None, stored, error)
    }

    async fn forward_one(
        &self,
        remote: &DataClient,
        i: usize,
        (hash, bytes): (ChunkHash, &[u8]),
    ) -> Result<usize, ClientError> {
        // The first of this site's nodes that answers; a failure at the other site
        // (Aborted) is the remote node's, and the caller tries another node there.
        let mut last = ClientError::NoDataNode(self.site.clone());
        for local in self.nodes.candidates(&self.site, &hash) {
            match local.put_forwarded(&hash, bytes, remote.addr()).await {
                Ok(_) => return Ok(i),
                Err(e) => {
                    let remote_failed = matches!(
                        &e,
                        DataClientError::Rpc { status, .. } if status.code() == tonic::Code::Aborted
                    );
                    if remote_failed {
                        return Err(e.into());
                    }
                    self.nodes.suspect(local.addr());
                    last = e.into();
                }
            }
        }
        Err(last)
    }

    /// A whole chunk not at this site, verified, from another site; then stored on the
    /// first of this site's nodes that takes it (its replicator makes the other copies),
    /// so the next read is local: held if the placement of `ino`'s subtree has this site
    /// hold or pin it, else as a cache entry the node may evict.
    pub(crate) async fn chunk_from_elsewhere(
        &self,
        hash: &ChunkHash,
        ino: InodeId,
    ) -> Result<Vec<u8>, ClientError> {
        let whole = self.fetch_remote(hash).await?;
        let keep = self.keeps_faults_of(ino).await;
        for node in self.nodes.candidates(&self.site, hash) {
            let stored = if keep {
                node.put(hash, &whole, true).await
            } else {
                node.put_cached(hash, &whole).await
            };
            match stored {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(?hash, node = node.addr(), error = %e, "could not keep a fetched chunk here")
                }
            }
        }
        Ok(whole)
    }

    async fn fetch_remote(&self, hash: &ChunkHash) -> Result<Vec<u8>, ClientError> {
        let registry = self.nodes.registry();
        let sites = registry.sites().filter(|s| *s != self.site);
        for site in sites {
            for remote in self.nodes.candidates(site, hash) {
                let got = tokio::time::timeout(REMOTE_CHUNK_TIMEOUT, remote.get(hash, 0, 0))
                    .await
                    .unwrap_or_else(|_| {
                        self.nodes.suspect(remote.addr());
                        Err(DataClientError::Rpc {
                            addr: remote.addr().to_string(),
                            status: tonic::Status::deadline_exceeded("the chunk did not come"),
                        })
                    });
                match got {
                    // Verified here too: a remote site's bytes are trusted only if they
                    // hash right.
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
        }
        Err(ClientError::ChunkUnavailable(*hash))
    }

    /// A subtree's placement (asked again after a few seconds).
    async fn placement(&self, subtree: SubtreeId) -> Result<Placement, ClientError> {
        {
            let cache = self.placements.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((place, at)) = cache.get(&subtree) {
                if at.elapsed() < PLACEMENT_FOR {
                    return Ok(place.clone());
                }
            }
        }
        let place = self.meta.placement(subtree, true).await?;
        let mut cache = self.placements.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_PLACEMENTS {
            cache.clear();
        }
        cache.insert(subtree, (place.clone(), std::time::Instant::now()));
        Ok(place)
    }

    /// Sites whose copy a write to `subtree` waits for, besides this one.
    async fn sync_sites(&self, subtree: SubtreeId) -> Result<Vec<String>, ClientError> {
        if subtree == ROOT_INO {
            return Ok(Vec::new());
        }
        let place = self.placement(subtree).await?;
        Ok(place
            .sync_sites()
            .filter(|s| *s != self.site)
            .map(String::from)
            .collect())
    }

    /// Whether this site keeps for good what a read of `ino` faults in (its placement
    /// has the site hold or pin the file's subtree), or only caches it. Outside every
    /// subtree, and when the metadata cannot say, it keeps it.
    async fn keeps_faults_of(&self, ino: InodeId) -> bool {
        let subtree = match self.meta.getattr(ino, true).await {
            Ok(attr) if attr.subtree != ROOT_INO => attr.subtree,
            _ => return true,
        };
        match self.placement(subtree).await {
            Ok(place) => place.keeps_faults(&self.site),
            Err(_) => true,
        }
    }

    /// Make `chunks` durable at every synchronous site of `subtree`'s placement.
    async fn push_to_sync_sites(
        &self,
        subtree: SubtreeId,
        chunks: &[(ChunkHash, &[u8])],
    ) -> Result<(), ClientError> {
        for site in self.sync_sites(subtree).await? {
            let mut left: Vec<usize> = (0..chunks.len()).collect();
            let mut first_error = None;
            // One copy there (its replicator makes the others): each chunk on the first
            // of its nodes that takes it, in an order fixed now (a node that fails is
            // moved last by later lookups, which would skip the next one).
            let candidates: Vec<Vec<DataClient>> = chunks
                .iter()
                .map(|(h, _)| self.nodes.candidates(&site, h))
                .collect();
            let mut tried = 0;
            while !left.is_empty() {
                let mut per_node: BTreeMap<String, (DataClient, Vec<usize>)> = BTreeMap::new();
                for &i in &left {
                    if let Some(node) = candidates[i].get(tried) {
                        per_node
                            .entry(node.addr().to_string())
                            .or_insert_with(|| (node.clone(), Vec::new()))
                            .1
                            .push(i);
                    }
                }
                if per_node.is_empty() {
                    return Err(
                        first_error.unwrap_or_else(|| ClientError::NoDataNode(site.clone()))
                    );
                }
                let rounds = per_node
                    .into_values()
                    .map(|(node, idx)| self.forward_each(node, idx, chunks));
                for (node, _, stored, error) in futures::future::join_all(rounds).await {
                    left.retain(|i| !stored.contains(i));
                    if let Some(e) = error {
                        self.nodes.suspect(node.addr());
                        first_error.get_or_insert(e);
                    }
                }
                tried += 1;
            }
        }
        Ok(())
    }

    /// Put `hash` back on `lacking` (nodes of its placement found without it, or with a
    /// corrupt copy, now quarantined), from `from`, which served it: in the background,
    /// verified, and only once per chunk at a time.
    pub(crate) fn repair(&self, hash: ChunkHash, from: DataClient, lacking: Vec<DataClient>) {
        {
            let mut busy = self.repairing.lock().unwrap_or_else(|p| p.into_inner());
            if busy.len() >= MAX_REPAIRS || !busy.insert(hash) {
                return;
            }
        }
        let this = self.clone();
        tokio::spawn(async move {
            match from.get(&hash, 0, 0).await {
                Ok(whole) if ChunkHash::of(&whole) == hash => {
                    for node in lacking {
                        match node.put(&hash, &whole, false).await {
                            Ok(_) => {
                                this.counters.repairs.fetch_add(1, Ordering::Relaxed);
                                metrics::counter!("mobilus_client_repairs_total").increment(1);
                            }
                            Err(e) => {
                                tracing::debug!(?hash, node = node.addr(), error = %e, "repair failed")
                            }
                        }
                    }
                }
                Ok(_) => tracing::warn!(
                    ?hash,
                    node = from.addr(),
                    "repair source failed verification"
                ),
                Err(e) => {
                    tracing::debug!(?hash, node = from.addr(), error = %e, "repair source failed")
                }
            }
            this.repairing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&hash);
        });
    }
}

/// The write buffer of one open file: writes accumulate, and [`FileWriter::flush`] turns
/// them into chunks on the local data node and slices committed in one metadata operation.
pub struct FileWriter {
    client: Client,
    ino: InodeId,
    pending: Vec<(u64, Vec<u8>)>,
    pending_bytes: usize,
    /// Sequential runs' chunks cut and stored before their commit (`client::ahead`).
    ahead: Vec<ahead::Ahead>,
    /// A create answered before the file was made (`mount::ops::deferred`): the first
    /// commit makes it.
    create_first: Option<CreateSlot>,
    /// A close was answered before these writes committed, relying on the subtree's
    /// delegation (`mount::ops::write_back`): they commit only while it lasts.
    holder_only: bool,
}

/// What one write may do, decided before it ([`FileWriter::plan`]).
#[derive(Clone, Copy, Debug)]
pub struct WritePlan {
    len: usize,
    /// The client's writers hold more than their budget: this one commits its buffer.
    over_budget: bool,
}

/// A create answered and not yet made (shared with the mount's registry of them).
pub type CreateSlot = Arc<std::sync::Mutex<Option<ReservedCreate>>>;

fn slot_create(slot: &CreateSlot) -> Option<ReservedCreate> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

impl FileWriter {
    /// The file written.
    pub fn ino(&self) -> InodeId {
        self.ino
    }

    /// Decide, once, what a write of `len` bytes may do: the budget is shared with other
    /// files' writers and changes meanwhile, so [`FileWriter::may_flush`] and
    /// [`FileWriter::write_planned`] must read the same decision.
    pub fn plan(&self, len: usize) -> WritePlan {
        WritePlan {
            len,
            over_budget: self.client.budget.must_flush(self.pending_bytes, len),
        }
    }

    /// Whether a write planned as `plan` may fill the buffer and so commit (an
    /// overestimate: a write appended to the last one adds no entry).
    pub fn may_flush(&self, plan: WritePlan) -> bool {
        plan.over_budget
            || self.pending_bytes + plan.len >= FLUSH_BYTES
            || self.pending.len() + 1 >= FLUSH_WRITES
    }

    /// Buffer a write; flushes when the buffer is full (see [`FLUSH_BYTES`]), or when
    /// the client's writers together hold more than their budget (`client::budget`).
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        let plan = self.plan(data.len());
        self.write_planned(offset, data, plan).await
    }

    /// Buffer a write that `plan` (of this writer, for `data`) found commits nothing
    /// ([`FileWriter::may_flush`] false), with no wait: the mount answers it on the
    /// thread that read it from the kernel. Storing ahead spawns on the current runtime.
    pub fn write_buffered(
        &mut self,
        offset: u64,
        data: &[u8],
        plan: WritePlan,
    ) -> Result<(), ClientError> {
        debug_assert!(!self.may_flush(plan));
        if data.is_empty() {
            return Ok(());
        }
        self.append(offset, data)?;
        self.upload_ahead();
        Ok(())
    }

    /// Add a write to the buffer (sequential writes grow one entry, so chunking sees
    /// long runs).
    fn append(&mut self, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        if offset.saturating_add(data.len() as u64) > MAX_FILE_SIZE {
            return Err(ClientError::Refused(Errno::EFBIG));
        }
        match self.pending.last_mut() {
            Some((at, buf)) if *at + buf.len() as u64 == offset => buf.extend_from_slice(data),
            _ => self.pending.push((offset, data.to_vec())),
        }
        self.set_pending_bytes(self.pending_bytes + data.len());
        Ok(())
    }

    /// [`FileWriter::write`] as `plan` (of this writer, for `data`) decided.
    pub async fn write_planned(
        &mut self,
        offset: u64,
        data: &[u8],
        plan: WritePlan,
    ) -> Result<(), ClientError> {
        if data.is_empty() {
            return Ok(());
        }
        self.append(offset, data)?;
        if plan.over_budget
            || self.pending_bytes >= MAX_BUFFERED
            || self.pending.len() >= FLUSH_WRITES
        {
            self.flush().await?;
            return Ok(());
        }
        let storing = self.upload_ahead();
        if self.pending_bytes >= FLUSH_BYTES && !storing {
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

    /// The file was answered created before it was made: `slot` holds how to make it,
    /// until the first commit (or the mount) does.
    pub fn create_first(&mut self, slot: CreateSlot) {
        self.create_first = Some(slot);
    }

    /// A close was answered with these writes still buffered, under the subtree's
    /// delegation: from now until they commit, they commit only while it lasts.
    pub fn written_back(&mut self) {
        self.holder_only = true;
    }

    /// Whether what a close answered is still to commit ([`FileWriter::written_back`]).
    pub fn holder_only(&self) -> bool {
        self.holder_only
    }

    /// Drop what is buffered (its commit was refused for good after the close that
    /// buffered it was answered; the error was reported where it could be).
    pub fn discard(&mut self) {
        self.pending.clear();
        self.set_pending_bytes(0);
        self.ahead.clear();
        self.holder_only = false;
        // A create refused with them is not made by anyone either.
        self.made();
    }

    /// The bytes buffered.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Every change of the bytes buffered passes here, so the client's budget counts them.
    fn set_pending_bytes(&mut self, bytes: usize) {
        self.client.budget.resize(self.pending_bytes, bytes);
        self.pending_bytes = bytes;
    }

    /// Whether the file exists in the metadata (not a create still to make).
    pub fn is_made(&self) -> bool {
        self.create_first
            .as_ref()
            .is_none_or(|s| slot_create(s).is_none())
    }

    /// Whether a flush has anything to do: buffered writes, or the file still to make.
    pub fn needs_commit(&self) -> bool {
        self.is_dirty() || !self.is_made()
    }

    fn made(&mut self) {
        if let Some(slot) = self.create_first.take() {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
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
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        self.set_pending_bytes(0);
    }
}
