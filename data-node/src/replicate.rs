//! Copies within a site: every chunk on the first R nodes of its placement.
//!
//! A site's chunks belong on the first [`Registry::replicas`] of their placement's
//! healthy nodes (`mobilus_data_client::placement`). Writers put them there, but a writer
//! that found a node down put them on the next candidates instead, a node that returns
//! has missed what was written meanwhile, and a node gone for good leaves its chunks one
//! copy short. So each node, in rounds, goes over the chunks it holds and makes sure every
//! other node they belong on holds them too: one `has` per peer per batch, then a push of
//! what is missing, read back and verified here first (a corrupt copy is quarantined,
//! never spread).
//!
//! Only referenced chunks are pushed (one stale `ChunkRefs` read per batch): an upload
//! whose commit has not come yet is pushed by a later round, and garbage is never spread,
//! so two nodes cannot keep handing a chunk their collectors delete back and forth.
//! A node counts as down once its heartbeat is older than `--node-down-after-ms`: then
//! its chunks' next candidates enter their placement and the survivors copy them there.
//! Copies left on nodes outside a chunk's placement are kept (until unreferenced).
//! Chunks kept only as a cache (`crate::cache`) are not copied.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::stream::{self, StreamExt};
use mobilus_data_client::{DataClient, DataNodes};
use mobilus_meta_client::MetaClient;
use mobilus_proto::fs::{ChunkHash, MAX_GC_BATCH};

use crate::error::DataError;
use crate::store::ChunkStore;

/// Pushes in flight per round.
const PARALLEL: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    #[error("metadata: {0}")]
    Meta(#[from] mobilus_meta_client::ClientError),
    #[error(transparent)]
    Store(#[from] DataError),
    #[error("store task failed: {0}")]
    Task(String),
    #[error("data node: {0}")]
    DataNode(#[from] mobilus_data_client::DataClientError),
    #[error("{0}")]
    Unavailable(String),
}

/// What a round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicateReport {
    /// Chunks held here that were looked at.
    pub examined: u64,
    /// Copies made on other nodes.
    pub pushed: u64,
    pub bytes_pushed: u64,
    /// Peers that failed during the round (their chunks wait for the next one).
    pub unreachable: Vec<String>,
}

/// This node's replicator.
pub struct Replicator {
    store: Arc<ChunkStore>,
    meta: MetaClient,
    nodes: Arc<DataNodes>,
    site: String,
    me: String,
    pushed: AtomicU64,
    bytes_pushed: AtomicU64,
}

impl Replicator {
    /// `nodes` judges a peer down as `--node-down-after-ms` says; `me` is this node's
    /// advertised address.
    pub fn new(
        store: Arc<ChunkStore>,
        meta: MetaClient,
        nodes: Arc<DataNodes>,
        site: String,
        me: String,
    ) -> Self {
        Replicator {
            store,
            meta,
            nodes,
            site,
            me,
            pushed: AtomicU64::new(0),
            bytes_pushed: AtomicU64::new(0),
        }
    }

    /// Copies made by this node since it started, and their bytes.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.pushed.load(Ordering::Relaxed),
            self.bytes_pushed.load(Ordering::Relaxed),
        )
    }

    /// One pass over every chunk held here.
    pub async fn round(&self) -> Result<ReplicateReport, ReplicateError> {
        let registry = self.nodes.refresh().await?;
        let want = registry.replicas(&self.site);
        let mut report = ReplicateReport::default();
        if registry.nodes(&self.site).len() < 2 {
            return Ok(report);
        }
        let mut after: Option<ChunkHash> = None;
        loop {
            let store = self.store.clone();
            let from = after;
            let (batch, done) = tokio::task::spawn_blocking(move || {
                store.stored_before(i64::MAX, from.as_ref(), MAX_GC_BATCH)
            })
            .await
            .map_err(|e| ReplicateError::Task(e.to_string()))??;
            after = batch.last().copied();
            report.examined += batch.len() as u64;
            // A cached chunk is one copy by design (its site neither holds nor pins it).
            let batch: Vec<ChunkHash> = batch
                .into_iter()
                .filter(|h| !self.store.is_cached(h))
                .collect();
            let referenced = self.referenced(&batch).await?;
            // Which peer should hold which of these.
            let mut owed: BTreeMap<String, Vec<ChunkHash>> = BTreeMap::new();
            for h in &referenced {
                for node in registry.candidates(&self.site, h).into_iter().take(want) {
                    let down = report.unreachable.contains(&node.addr);
                    if node.addr != self.me && node.healthy && !down {
                        owed.entry(node.addr.clone()).or_default().push(*h);
                    }
                }
            }
            for (addr, hashes) in owed {
                if let Err(e) = self.push_missing(&addr, &hashes, &mut report).await {
                    tracing::debug!(peer = %addr, error = %e, "replication to a peer failed");
                    report.unreachable.push(addr);
                }
            }
            if done {
                break;
            }
        }
        Ok(report)
    }

    /// Those of `batch` some file references (a stale read: a chunk committed this
    /// instant waits for the next round).
    async fn referenced(&self, batch: &[ChunkHash]) -> Result<Vec<ChunkHash>, ReplicateError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let (refs, _) = self.meta.chunk_refs(batch, true).await?;
        Ok(batch
            .iter()
            .zip(refs)
            .filter(|(_, (count, _))| *count > 0)
            .map(|(h, _)| *h)
            .collect())
    }

    async fn push_missing(
        &self,
        addr: &str,
        hashes: &[ChunkHash],
        report: &mut ReplicateReport,
    ) -> Result<(), mobilus_data_client::DataClientError> {
        let peer = self.nodes.client(addr)?;
        let present = peer.has_held(hashes).await?;
        let missing: Vec<ChunkHash> = hashes
            .iter()
            .zip(present)
            .filter(|(_, p)| !p)
            .map(|(h, _)| *h)
            .collect();
        let pushes: Vec<_> = missing.iter().map(|h| self.push(&peer, *h)).collect();
        let mut results = stream::iter(pushes).buffer_unordered(PARALLEL);
        while let Some(result) = results.next().await {
            match result {
                Ok(Some(bytes)) => {
                    report.pushed += 1;
                    report.bytes_pushed += bytes;
                }
                // Gone from here meanwhile (collected, or quarantined): nothing to copy.
                Ok(None) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Copy `hash` from this node's store to `peer`: its size, or `None` if it is no
    /// longer here in good shape.
    async fn push(
        &self,
        peer: &DataClient,
        hash: ChunkHash,
    ) -> Result<Option<u64>, mobilus_data_client::DataClientError> {
        let store = self.store.clone();
        let read = tokio::task::spawn_blocking(move || store.get(&hash, 0, 0)).await;
        let bytes = match read {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                tracing::debug!(?hash, error = %e, "not replicating a chunk this node lost");
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!(?hash, error = %e, "read task failed");
                return Ok(None);
            }
        };
        peer.put(&hash, &bytes, false).await?;
        let len = bytes.len() as u64;
        self.pushed.fetch_add(1, Ordering::Relaxed);
        self.bytes_pushed.fetch_add(len, Ordering::Relaxed);
        metrics::counter!("mobilus_data_replicated_chunks_total").increment(1);
        metrics::counter!("mobilus_data_replicated_bytes_total").increment(len);
        Ok(Some(len))
    }
}
