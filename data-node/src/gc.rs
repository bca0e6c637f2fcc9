//! Garbage collection of chunks no file references, driven by this node in rounds.
//!
//! A round offers the metadata every chunk stored here for longer than the TTL (so a
//! chunk just uploaded, whose slices are not committed yet, is left alone). The
//! metadata condemns those without a reference for at least the grace period; this node
//! deletes them, then has the condemnations forgotten, which bumps its GC generation
//! (the metadata's `namespace::gc` explains why that makes concurrent writers safe). The
//! new generation is stored durably before `has` answers carry it.

use std::sync::Arc;
use std::time::Duration;

use mobilus_meta_client::MetaClient;
use mobilus_proto::fs::{ChunkHash, MAX_GC_BATCH};

use crate::error::DataError;
use crate::store::{now_ns, ChunkStore};

/// When chunks become garbage.
#[derive(Clone, Copy, Debug)]
pub struct GcPolicy {
    /// A chunk stored more recently than this is never a candidate (it may be on its
    /// way to being committed).
    pub ttl: Duration,
    /// A chunk is condemned only after having had no reference for this long.
    pub grace: Duration,
}

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy {
            ttl: Duration::from_secs(3600),
            grace: Duration::from_secs(3600),
        }
    }
}

/// What a round did (or, dry, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub examined: u64,
    pub condemned: u64,
    pub deleted: u64,
    pub bytes_freed: u64,
    pub gc_gen: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("metadata: {0}")]
    Meta(#[from] mobilus_meta_client::ClientError),
    #[error(transparent)]
    Store(#[from] DataError),
    #[error("store task failed: {0}")]
    Task(String),
}

impl GcError {
    /// Map once, at the gRPC boundary.
    pub fn to_status(&self) -> tonic::Status {
        match self {
            GcError::Store(e) => e.to_status(),
            GcError::Meta(e) => tonic::Status::unavailable(e.to_string()),
            GcError::Task(m) => tonic::Status::internal(m.clone()),
        }
    }
}

/// The collector of one node: rounds never overlap.
pub struct Collector {
    store: Arc<ChunkStore>,
    meta: MetaClient,
    /// This node's registered address: its name in the metadata.
    node: String,
    policy: GcPolicy,
    running: tokio::sync::Mutex<()>,
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DataError> + Send + 'static,
) -> Result<T, GcError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => Ok(r?),
        Err(e) => Err(GcError::Task(e.to_string())),
    }
}

impl Collector {
    pub fn new(store: Arc<ChunkStore>, meta: MetaClient, node: String, policy: GcPolicy) -> Self {
        Collector {
            store,
            meta,
            node,
            policy,
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// One round over every chunk. A dry run only asks the metadata which chunks are
    /// collectable; it condemns and deletes nothing.
    #[tracing::instrument(skip(self), fields(node = %self.node))]
    pub async fn round(&self, dry_run: bool) -> Result<GcReport, GcError> {
        let _one_at_a_time = self.running.lock().await;
        let cutoff = now_ns().saturating_sub(nanos(self.policy.ttl));
        let mut report = GcReport::default();
        let mut after: Option<ChunkHash> = None;
        loop {
            let store = self.store.clone();
            let (batch, done) =
                blocking(move || store.stored_before(cutoff, after.as_ref(), MAX_GC_BATCH)).await?;
            after = batch.last().copied();
            report.examined += batch.len() as u64;
            if dry_run {
                report.condemned += self.collectable(&batch).await?;
            } else {
                // Also called on an empty batch: it returns what an interrupted round left.
                self.condemn_and_delete(&batch, &mut report).await?;
            }
            if done {
                break;
            }
        }
        report.gc_gen = self.store.gc_gen();
        if !dry_run {
            metrics::counter!("mobilus_data_gc_rounds_total").increment(1);
            metrics::counter!("mobilus_data_gc_deleted_chunks_total").increment(report.deleted);
            metrics::counter!("mobilus_data_gc_freed_bytes_total").increment(report.bytes_freed);
        }
        if report.deleted > 0 {
            tracing::info!(?report, "gc round");
        }
        Ok(report)
    }

    async fn collectable(&self, batch: &[ChunkHash]) -> Result<u64, GcError> {
        if batch.is_empty() {
            return Ok(0);
        }
        let (refs, now) = self.meta.chunk_refs(batch, false).await?;
        let grace = nanos(self.policy.grace);
        Ok(refs
            .iter()
            .filter(|(n, zero_since)| {
                *n == 0 && (*zero_since == 0 || now.saturating_sub(*zero_since) >= grace)
            })
            .count() as u64)
    }

    async fn condemn_and_delete(
        &self,
        batch: &[ChunkHash],
        report: &mut GcReport,
    ) -> Result<(), GcError> {
        let (condemned, _) = self
            .meta
            .condemn(&self.node, batch, self.policy.grace)
            .await?;
        if condemned.is_empty() {
            return Ok(());
        }
        report.condemned += condemned.len() as u64;
        let store = self.store.clone();
        let doomed = condemned.clone();
        let (deleted, bytes) = blocking(move || {
            let (mut n, mut bytes) = (0u64, 0u64);
            for h in &doomed {
                if let Some(size) = store.delete(h)? {
                    n += 1;
                    bytes += size;
                }
            }
            Ok((n, bytes))
        })
        .await?;
        report.deleted += deleted;
        report.bytes_freed += bytes;
        let gc_gen = self.meta.forget_condemned(&self.node, &condemned).await?;
        let store = self.store.clone();
        blocking(move || store.advance_gc_gen(gc_gen)).await?;
        Ok(())
    }
}
