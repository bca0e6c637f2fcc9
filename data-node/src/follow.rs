//! Data that follows: this site copies, ahead of any read, the data of every subtree
//! whose placement says it should (`Placement::follows`: eager, or lazy and owner).
//!
//! One node per site does it, the *puller* (the first of the site's healthy nodes in a
//! fixed rendezvous order, so every node agrees without talking; should two think they
//! are, for a moment, they fetch the same chunks and the stores keep one copy). For each
//! followed subtree it reads the change feed from the site's cursor
//! (`namespace::feed`), or, if it never followed the subtree or fell behind what the feed
//! keeps, scans the subtree's chunks first. It asks this site's nodes in batches which of
//! those chunks they lack, fetches only those, from the owner site first and any other
//! site after, verifies each against its hash, stores it on the chunk's nodes here, and
//! acknowledges the feed, which moves the cursor and reports progress (chunks and bytes
//! to go, rate) for `mobilusctl replication status`. A subtree the placement *pins* here
//! is walked the same way but nothing is fetched: the chunks already here (faulted in
//! before the pin, kept only as a cache) are made held, so none is evicted. Transfers from each remote site go
//! through a token bucket (`--replication-bandwidth`), so replication never takes a whole
//! WAN link from the reads that fault.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use mobilus_data_client::bandwidth::TokenBucket;
use mobilus_data_client::{placement, DataNodes, Registry};
use mobilus_meta_client::{FeedProgress, MetaClient};
use mobilus_proto::datapb::Priority;
use mobilus_proto::fs::{
    ChunkHash, DataMode, FeedChunk, InodeId, Placement, SubtreeState, MAX_GC_BATCH, ROOT_INO,
};

use crate::replicate::ReplicateError;

/// Chunks fetched at once: enough to keep `IN_FLIGHT_BYTES` on the way across a distant
/// link (a database's small chunks, one per round trip, would use a sliver of it), within
/// these bounds.
const MIN_PARALLEL: usize = 4;
const MAX_PARALLEL: usize = 32;
const IN_FLIGHT_BYTES: u64 = 8 << 20;

/// How many of `chunks` to fetch at once (see [`MIN_PARALLEL`]).
fn parallel_for(chunks: &[FeedChunk]) -> usize {
    let bytes: u64 = chunks.iter().map(|c| c.len).sum();
    let mean = (bytes / chunks.len().max(1) as u64).max(1);
    usize::try_from(IN_FLIGHT_BYTES / mean)
        .unwrap_or(MAX_PARALLEL)
        .clamp(MIN_PARALLEL, MAX_PARALLEL)
}
/// Feed entries read per page.
const PAGE: u32 = 256;
/// Chunks per page of a scan.
const SCAN_PAGE: u32 = 16_384;
/// Chunks asked about per `has`.
const HAS_BATCH: usize = 4096;
/// A remote fetch that takes longer than this has failed (a partitioned site), unless
/// the node is told otherwise (`--replication-fetch-timeout-ms`).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Progress is reported at most this often while a transfer runs.
const REPORT_EVERY: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The chunks of `queue` not `present`, those after the last present one first: a chunk
/// that arrived by other means (a fault) tells where the reader is, and the profile's
/// next chunks are what it reads next.
fn after_faults(queue: Vec<FeedChunk>, present: &[bool]) -> Vec<FeedChunk> {
    let last = present.iter().rposition(|p| *p);
    let (front, back): (Vec<_>, Vec<_>) = queue
        .into_iter()
        .zip(present)
        .enumerate()
        .filter(|(_, (_, p))| !**p)
        .partition(|(i, _)| last.is_some_and(|l| *i > l));
    front.into_iter().chain(back).map(|(_, (c, _))| c).collect()
}

/// What a round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FollowReport {
    /// Whether this node is its site's puller.
    pub puller: bool,
    pub subtrees: u64,
    pub fetched: u64,
    pub bytes_fetched: u64,
    /// Subtrees whose round failed, with why (they are tried again next round).
    pub failed: Vec<(InodeId, String)>,
}

/// This node's follower.
pub struct Follower {
    meta: MetaClient,
    nodes: Arc<DataNodes>,
    site: String,
    me: String,
    bandwidth: u64,
    fetch_timeout: Duration,
    buckets: Mutex<HashMap<String, Arc<TokenBucket>>>,
    fetched: AtomicU64,
    bytes_fetched: AtomicU64,
    /// A deliberate bug, for the Jepsen harness to catch: fetches that fail are taken
    /// as done, so the feed moves past chunks that never arrived.
    unsafe_skip_failed_fetches: bool,
    /// Access profiles already prefetched: (subtree, when recorded, owner then).
    profiled: Mutex<std::collections::HashSet<(InodeId, i64, Option<String>)>>,
}

impl Follower {
    /// `bandwidth`: bytes per second from each remote site.
    pub fn new(
        meta: MetaClient,
        nodes: Arc<DataNodes>,
        site: String,
        me: String,
        bandwidth: u64,
    ) -> Self {
        Follower {
            meta,
            nodes,
            site,
            me,
            bandwidth,
            fetch_timeout: FETCH_TIMEOUT,
            buckets: Mutex::default(),
            fetched: AtomicU64::new(0),
            bytes_fetched: AtomicU64::new(0),
            unsafe_skip_failed_fetches: false,
            profiled: Mutex::default(),
        }
    }

    /// How long a fetch from another site may take before it is abandoned (and the
    /// chunk tried again at the next source, or the next round).
    pub fn with_fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    /// Switch on the deliberate bug of taking failed fetches as done (the harness shows
    /// it is caught: acknowledged files go missing once the source site is gone).
    pub fn with_unsafe_skip_failed_fetches(mut self, on: bool) -> Self {
        self.unsafe_skip_failed_fetches = on;
        self
    }

    /// Chunks and bytes fetched from other sites since start.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.fetched.load(Ordering::Relaxed),
            self.bytes_fetched.load(Ordering::Relaxed),
        )
    }

    fn bucket(&self, site: &str) -> Arc<TokenBucket> {
        let mut b = lock(&self.buckets);
        b.entry(site.to_string())
            .or_insert_with(|| Arc::new(TokenBucket::new(self.bandwidth)))
            .clone()
    }

    fn is_puller(&self, registry: &Registry) -> bool {
        let healthy: Vec<&str> = registry
            .nodes(&self.site)
            .iter()
            .filter(|n| n.healthy)
            .map(|n| n.addr.as_str())
            .collect();
        let key = ChunkHash::of(b"mobilus: the site's puller");
        placement::rank(&key, &healthy, |a| a)
            .first()
            .is_some_and(|a| **a == self.me)
    }

    /// One pass over the subtrees this site follows.
    pub async fn round(&self) -> Result<FollowReport, ReplicateError> {
        let registry = self.nodes.refresh().await?;
        let mut report = FollowReport {
            puller: self.is_puller(&registry),
            ..FollowReport::default()
        };
        if !report.puller {
            return Ok(report);
        }
        for s in self.meta.subtrees(true).await? {
            if s.root == ROOT_INO || s.state != SubtreeState::Owned {
                continue;
            }
            let place = match self.meta.placement(s.root, true).await {
                Ok(p) => p,
                Err(e) => {
                    report.failed.push((s.root, e.to_string()));
                    continue;
                }
            };
            let fetch = place.follows(&self.site);
            let mode = place.mode(&self.site);
            if !fetch && !matches!(mode, DataMode::Pinned | DataMode::Profile) {
                continue;
            }
            report.subtrees += 1;
            let before = self.totals();
            if place.prefetches_profile(&self.site) {
                if let Err(e) = self.prefetch_profile(s.root, &place).await {
                    tracing::debug!(subtree = s.root, error = %e, "prefetching the access profile failed");
                    report.failed.push((s.root, e.to_string()));
                }
            }
            // The profile is all a `profile` site copies ahead.
            if mode == DataMode::Profile {
                continue;
            }
            if let Err(e) = self.follow(s.root, &place, fetch).await {
                tracing::debug!(subtree = s.root, error = %e, "following a subtree failed");
                report.failed.push((s.root, e.to_string()));
            }
            let after = self.totals();
            report.fetched += after.0 - before.0;
            report.bytes_fetched += after.1 - before.1;
        }
        Ok(report)
    }

    /// Catch up with one subtree: a scan first if the feed cannot say what is missing,
    /// then the feed, page by page, acknowledging each. `fetch`: copy what is missing
    /// (else only keep what is here).
    async fn follow(
        &self,
        root: InodeId,
        place: &Placement,
        fetch: bool,
    ) -> Result<(), ReplicateError> {
        let mut page = self.meta.read_feed(root, &self.site, None, PAGE).await?;
        if page.resync {
            let scanning = FeedProgress {
                scanning: true,
                ..FeedProgress::default()
            };
            // Before the scan, the feed keeps what it has for this site, so no entry the
            // scan does not cover can go meanwhile; a restart before the end scans again.
            let kept = page.first_seq.saturating_sub(1);
            self.meta.ack_feed(root, &self.site, kept, scanning).await?;
            // Page by page; the first page's `next` holds for the whole scan: every
            // entry before it is covered (later pages see a later state, and what
            // changed since is in the feed after it).
            let mut hold = None;
            let mut after = None;
            loop {
                let scan = self
                    .meta
                    .scan_subtree_chunks_page(root, after, SCAN_PAGE)
                    .await?;
                let hold = *match hold {
                    Some(ref h) => h,
                    None => {
                        let h = scan.next_seq.saturating_sub(1);
                        self.meta.ack_feed(root, &self.site, h, scanning).await?;
                        hold.insert(h)
                    }
                };
                self.transfer(root, hold, true, place, &scan.chunks, fetch)
                    .await?;
                after = scan.chunks.last().map(|c| c.hash);
                if !scan.more || after.is_none() {
                    break;
                }
            }
            let hold = hold.unwrap_or(kept);
            self.meta
                .ack_feed(root, &self.site, hold, FeedProgress::default())
                .await?;
            page = self.meta.read_feed(root, &self.site, None, PAGE).await?;
            if page.resync {
                // Written past the feed's bound meanwhile: the next round scans again.
                return Ok(());
            }
        }
        let mut cursor = page.cursor.unwrap_or(0);
        while let Some(last) = page.entries.last().map(|e| e.seq) {
            let mut chunks: BTreeMap<ChunkHash, u64> = BTreeMap::new();
            for c in page.entries.iter().flat_map(|e| &e.chunks) {
                let len = chunks.entry(c.hash).or_default();
                *len = (*len).max(c.len);
            }
            let chunks: Vec<FeedChunk> = chunks
                .into_iter()
                .map(|(hash, len)| FeedChunk { hash, len })
                .collect();
            self.transfer(root, cursor, false, place, &chunks, fetch)
                .await?;
            let lag = page.next_seq.saturating_sub(1).saturating_sub(last);
            metrics::gauge!("mobilus_replication_lag_entries", "subtree" => root.to_string())
                .set(lag as f64);
            self.meta
                .ack_feed(root, &self.site, last, FeedProgress::default())
                .await?;
            cursor = last;
            page = self
                .meta
                .read_feed(root, &self.site, Some(cursor), PAGE)
                .await?;
            if page.resync {
                return Ok(());
            }
        }
        metrics::gauge!("mobilus_replication_lag_entries", "subtree" => root.to_string()).set(0.0);
        Ok(())
    }

    /// Make `chunks` present here: ask which are missing (keeping those present), fetch
    /// those if `fetch`, reporting progress against `cursor` (which does not move;
    /// `scanning`: copying a scan) as it goes.
    async fn transfer(
        &self,
        root: InodeId,
        cursor: u64,
        scanning: bool,
        place: &Placement,
        chunks: &[FeedChunk],
        fetch: bool,
    ) -> Result<(), ReplicateError> {
        let missing = self.missing(chunks).await?;
        if missing.is_empty() || !fetch {
            return Ok(());
        }
        let mut left = FeedProgress {
            backlog_chunks: missing.len() as u64,
            backlog_bytes: missing.iter().map(|c| c.len).sum(),
            rate_bps: 0,
            scanning,
        };
        self.report(root, cursor, left).await;
        let started = Instant::now();
        let mut last_report = Instant::now();
        let mut moved = 0u64;
        let fetches: Vec<_> = missing
            .iter()
            .map(|c| self.fetch_or_name(place, *c))
            .collect();
        let mut results = stream::iter(fetches).buffer_unordered(parallel_for(&missing));
        let mut failure = None;
        let mut failed: Vec<ChunkHash> = Vec::new();
        while let Some(result) = results.next().await {
            match result {
                Ok(len) => {
                    moved += len;
                    left.backlog_chunks -= 1;
                    left.backlog_bytes = left.backlog_bytes.saturating_sub(len);
                }
                Err((hash, e)) => {
                    failed.push(hash);
                    failure.get_or_insert(e);
                }
            }
            if last_report.elapsed() >= REPORT_EVERY {
                left.rate_bps = (moved as f64 / started.elapsed().as_secs_f64()) as u64;
                self.report(root, cursor, left).await;
                last_report = Instant::now();
            }
        }
        metrics::gauge!("mobilus_replication_backlog_bytes", "subtree" => root.to_string())
            .set(left.backlog_bytes as f64);
        drop(results);
        match failure {
            None => Ok(()),
            Some(e) if self.unsafe_skip_failed_fetches => {
                tracing::warn!(chunks = failed.len(), error = %e, "unsafe: skipped failed fetches");
                Ok(())
            }
            // A chunk no file references any more may be gone everywhere (collected
            // after its file was deleted): it is not waited for. Any other is.
            Some(e) if failed.len() <= MAX_GC_BATCH => {
                let (refs, _) = self.meta.chunk_refs(&failed, false).await?;
                if refs.iter().all(|(count, _)| *count == 0) {
                    tracing::debug!(
                        chunks = failed.len(),
                        "skipped chunks no file references any more"
                    );
                    Ok(())
                } else {
                    Err(e)
                }
            }
            Some(e) => Err(e),
        }
    }

    /// Fetch the chunks of the subtree's access profile this site lacks, in the
    /// profile's order (a few at a time), as prefetch: what the application read first
    /// when it last started, ahead of the rest. Once per recording and owner (so after
    /// each move); a round that fails is tried again.
    async fn prefetch_profile(
        &self,
        root: InodeId,
        place: &Placement,
    ) -> Result<(), ReplicateError> {
        let profile = self.meta.profile(root, true).await?;
        if profile.reads.is_empty() {
            return Ok(());
        }
        let key = (root, profile.recorded_ns, place.owner.clone());
        if lock(&self.profiled).contains(&key) {
            return Ok(());
        }
        let chunks: Vec<FeedChunk> = profile
            .chunks()
            .into_iter()
            .map(|hash| FeedChunk { hash, len: 0 })
            .collect();
        let mut queue = chunks;
        let mut n = 0;
        loop {
            // What is here already, or arrived since (the application faulted it in at
            // this site), goes; the chunks the profile read after the last such one come
            // next: where the application is reading now.
            let missing: std::collections::HashSet<ChunkHash> =
                self.missing(&queue).await?.iter().map(|c| c.hash).collect();
            let present: Vec<bool> = queue.iter().map(|c| !missing.contains(&c.hash)).collect();
            queue = after_faults(queue, &present);
            if queue.is_empty() {
                break;
            }
            // Small batches: each is followed by a look at what the application faulted.
            let batch: Vec<FeedChunk> = queue.drain(..MIN_PARALLEL.min(queue.len())).collect();
            let fetches: Vec<_> = batch
                .iter()
                .map(|c| self.fetch_as(place, *c, Priority::Prefetch))
                .collect();
            let mut failed = Vec::new();
            let mut failure = None;
            for (c, fetched) in batch.iter().zip(futures::future::join_all(fetches).await) {
                match fetched {
                    Ok(_) => n += 1,
                    Err(e) => {
                        failed.push(c.hash);
                        failure.get_or_insert(e);
                    }
                }
            }
            // A chunk of an old profile that no file references any more may be gone
            // everywhere: passed over. Any other is tried again next round.
            if let Some(e) = failure {
                let (refs, _) = self.meta.chunk_refs(&failed, false).await?;
                if refs.iter().any(|(count, _)| *count > 0) {
                    return Err(e);
                }
            }
        }
        metrics::counter!("mobilus_replication_profile_chunks_total", "to" => self.site.clone())
            .increment(n as u64);
        tracing::info!(subtree = root, chunks = n, "prefetched the access profile");
        lock(&self.profiled).insert(key);
        Ok(())
    }

    /// Progress, for status; a failure to report only delays it.
    async fn report(&self, root: InodeId, cursor: u64, progress: FeedProgress) {
        if let Err(e) = self.meta.ack_feed(root, &self.site, cursor, progress).await {
            tracing::debug!(subtree = root, error = %e, "could not report progress");
        }
    }

    /// Those of `chunks` that the first of their nodes here lacks (it keeps the others:
    /// any it held only as a cache becomes held).
    async fn missing(&self, chunks: &[FeedChunk]) -> Result<Vec<FeedChunk>, ReplicateError> {
        let mut per_node: BTreeMap<String, Vec<FeedChunk>> = BTreeMap::new();
        for c in chunks {
            if let Some(first) = self.nodes.candidates(&self.site, &c.hash).first() {
                per_node
                    .entry(first.addr().to_string())
                    .or_default()
                    .push(*c);
            }
        }
        let mut missing = Vec::new();
        for (addr, chunks) in per_node {
            let node = self.nodes.client(&addr)?;
            for batch in chunks.chunks(HAS_BATCH) {
                let hashes: Vec<ChunkHash> = batch.iter().map(|c| c.hash).collect();
                let (_, present) = node.has_keeping(&hashes).await?;
                missing.extend(
                    batch
                        .iter()
                        .zip(present)
                        .filter(|(_, p)| !p)
                        .map(|(c, _)| *c),
                );
            }
        }
        Ok(missing)
    }

    /// [`Follower::fetch`], its failure naming the chunk.
    async fn fetch_or_name(
        &self,
        place: &Placement,
        chunk: FeedChunk,
    ) -> Result<u64, (ChunkHash, ReplicateError)> {
        self.fetch(place, chunk).await.map_err(|e| (chunk.hash, e))
    }

    /// Fetch one chunk, owner site first, verify it, and store it on its nodes here.
    /// Returns its size.
    async fn fetch(&self, place: &Placement, chunk: FeedChunk) -> Result<u64, ReplicateError> {
        self.fetch_as(place, chunk, Priority::Background).await
    }

    /// [`Follower::fetch`], asked at `priority` at the remote node.
    async fn fetch_as(
        &self,
        place: &Placement,
        chunk: FeedChunk,
        priority: Priority,
    ) -> Result<u64, ReplicateError> {
        let registry = self.nodes.registry();
        let owner = place.owner.as_deref().filter(|o| *o != self.site);
        let others = registry
            .sites()
            .filter(|s| *s != self.site && Some(*s) != owner);
        let mut last_error = String::from("no other site has it");
        for site in owner.into_iter().chain(others) {
            let bucket = self.bucket(site);
            for node in self.nodes.candidates(site, &chunk.hash) {
                // The bytes are paid for before they cross: the rate holds while they do.
                bucket.take(chunk.len.max(1)).await;
                let read = node.get_as(&chunk.hash, 0, 0, priority);
                let got = tokio::time::timeout(self.fetch_timeout, read).await;
                let bytes = match got {
                    Ok(Ok(bytes)) if ChunkHash::of(&bytes) == chunk.hash => bytes,
                    Ok(Ok(_)) => {
                        last_error = format!("{} sent bytes that fail verification", node.addr());
                        continue;
                    }
                    Ok(Err(e)) => {
                        last_error = e.to_string();
                        continue;
                    }
                    Err(_) => {
                        last_error = format!("{} did not answer in time", node.addr());
                        self.nodes.suspect(node.addr());
                        continue;
                    }
                };
                // What crossed beyond the estimate is paid for too.
                let len = bytes.len() as u64;
                if len > chunk.len {
                    bucket.take(len - chunk.len).await;
                }
                self.store_here(&chunk.hash, &bytes).await?;
                self.fetched.fetch_add(1, Ordering::Relaxed);
                self.bytes_fetched.fetch_add(len, Ordering::Relaxed);
                metrics::counter!("mobilus_replication_bytes_received_total", "from" => site.to_string(), "to" => self.site.clone())
                    .increment(len);
                metrics::counter!("mobilus_replication_chunks_received_total", "from" => site.to_string(), "to" => self.site.clone())
                    .increment(1);
                return Ok(len);
            }
        }
        Err(ReplicateError::Unavailable(format!(
            "chunk {}: {last_error}",
            chunk.hash.to_hex()
        )))
    }

    /// Put a fetched chunk on the first of its nodes here that take it, as many as the
    /// site keeps copies (the replicator makes any that fail later).
    async fn store_here(&self, hash: &ChunkHash, bytes: &[u8]) -> Result<(), ReplicateError> {
        let want = self.nodes.replicas(&self.site).max(1);
        let mut stored = 0;
        let mut last_error = None;
        for node in self.nodes.candidates(&self.site, hash) {
            match node.put(hash, bytes, true).await {
                Ok(_) => stored += 1,
                Err(e) => last_error = Some(e),
            }
            if stored == want {
                break;
            }
        }
        match (stored, last_error) {
            (0, Some(e)) => Err(e.into()),
            (0, None) => Err(ReplicateError::Unavailable(format!(
                "{} has no data node",
                self.site
            ))),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(i: u8) -> FeedChunk {
        FeedChunk {
            hash: ChunkHash([i; 32]),
            len: 0,
        }
    }

    #[test]
    fn small_chunks_are_fetched_many_at_once_and_large_ones_few() {
        let of = |len: u64, n: usize| -> Vec<FeedChunk> {
            (0..n)
                .map(|i| FeedChunk {
                    hash: ChunkHash([i as u8; 32]),
                    len,
                })
                .collect()
        };
        // A database's pages: as many as allowed (8 MiB would be 180 of them).
        assert_eq!(parallel_for(&of(46 << 10, 100)), MAX_PARALLEL);
        // 1 MiB chunks: 8 MiB in flight.
        assert_eq!(parallel_for(&of(1 << 20, 100)), 8);
        // 4 MiB chunks: never fewer than the floor.
        assert_eq!(parallel_for(&of(4 << 20, 100)), MIN_PARALLEL);
        assert_eq!(parallel_for(&[]), MAX_PARALLEL);
    }

    #[test]
    fn a_fault_moves_the_chunks_after_it_to_the_front() {
        let queue: Vec<FeedChunk> = (0..6).map(c).collect();
        // Nothing arrived: the profile's order.
        assert_eq!(after_faults(queue.clone(), &[false; 6]), queue);
        // Chunk 3 was faulted in: 4 and 5 first, then 0, 1 and 2 (3 is done).
        let got = after_faults(queue.clone(), &[false, false, false, true, false, false]);
        assert_eq!(got, vec![c(4), c(5), c(0), c(1), c(2)]);
        // Several: after the last of them.
        let got = after_faults(queue, &[true, false, true, false, false, true]);
        assert_eq!(got, vec![c(1), c(3), c(4)]);
    }
}
