//! The `evict` worker: under space pressure ([`CachePolicy`]), cached chunks go, least
//! recently used first, but only those another site still holds. A cached chunk no
//! other site has (its source lost it) is the last copy: it is made held instead, so
//! garbage collection alone may ever remove it. A chunk whose other sites cannot be asked
//! (a partition) is left for a later round.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use mobilus_data_client::DataNodes;
use mobilus_proto::fs::ChunkHash;

use crate::cache::CachePolicy;
use crate::replicate::ReplicateError;
use crate::store::ChunkStore;

/// Cached chunks weighed at once.
const BATCH: usize = 256;

/// What a round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EvictReport {
    pub evicted: u64,
    pub bytes_freed: u64,
    /// Cached chunks no other site holds, made held.
    pub kept_as_last_copy: u64,
    /// Cached chunks left because their other sites did not answer.
    pub unverified: u64,
}

pub struct Evictor {
    store: Arc<ChunkStore>,
    /// The other sites, to ask; `None`: a node with no registry (every cached chunk is
    /// taken as held elsewhere).
    nodes: Option<Arc<DataNodes>>,
    site: String,
    policy: CachePolicy,
}

impl Evictor {
    pub fn new(
        store: Arc<ChunkStore>,
        nodes: Option<Arc<DataNodes>>,
        site: String,
        policy: CachePolicy,
    ) -> Self {
        Evictor {
            store,
            nodes,
            site,
            policy,
        }
    }

    /// Evict down to the policy, given the disk's `free` of `total` bytes.
    pub async fn round(&self, free: u64, total: u64) -> Result<EvictReport, ReplicateError> {
        let mut report = EvictReport::default();
        let cached = self.store.stats().cached_bytes;
        let excess = self.policy.excess(cached, free, total);
        let mut passed: HashSet<ChunkHash> = HashSet::new();
        while report.bytes_freed < excess {
            let batch: Vec<ChunkHash> = self
                .store
                .coldest_cached(BATCH + passed.len())
                .into_iter()
                .filter(|h| !passed.contains(h))
                .take(BATCH)
                .collect();
            if batch.is_empty() {
                break;
            }
            let (elsewhere, nowhere, unknown) = self.held_elsewhere(&batch).await;
            let store = self.store.clone();
            let want = excess - report.bytes_freed;
            let (chunks, bytes) = tokio::task::spawn_blocking(move || {
                store.keep(&nowhere)?;
                store
                    .evict_these(&elsewhere, want)
                    .map(|r| (r, nowhere.len() as u64))
            })
            .await
            .map_err(|e| ReplicateError::Task(e.to_string()))?
            .map(|((c, b), kept)| {
                report.kept_as_last_copy += kept;
                (c, b)
            })?;
            report.evicted += chunks;
            report.bytes_freed += bytes;
            report.unverified += unknown.len() as u64;
            passed.extend(unknown);
        }
        Ok(report)
    }

    /// Split `batch` into chunks another site holds, chunks none does, and chunks whose
    /// other sites did not answer. Each other site is asked at each chunk's first node.
    async fn held_elsewhere(
        &self,
        batch: &[ChunkHash],
    ) -> (Vec<ChunkHash>, Vec<ChunkHash>, Vec<ChunkHash>) {
        let Some(nodes) = &self.nodes else {
            return (batch.to_vec(), Vec::new(), Vec::new());
        };
        let registry = nodes.registry();
        let mut per_node: BTreeMap<String, Vec<ChunkHash>> = BTreeMap::new();
        for site in registry.sites().filter(|s| *s != self.site) {
            for h in batch {
                if let Some(first) = registry.candidates(site, h).first() {
                    per_node.entry(first.addr.clone()).or_default().push(*h);
                }
            }
        }
        let mut found: HashSet<ChunkHash> = HashSet::new();
        let mut unanswered: HashSet<ChunkHash> = HashSet::new();
        for (addr, hashes) in per_node {
            let answer = match nodes.client(&addr) {
                // Held there, not merely cached: two sites' caches must not each take
                // the other's for the copy that stays.
                Ok(c) => c.has_held(&hashes).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match answer {
                Ok(present) => found.extend(
                    hashes
                        .iter()
                        .zip(present)
                        .filter(|(_, p)| *p)
                        .map(|(h, _)| *h),
                ),
                Err(e) => {
                    tracing::debug!(node = %addr, error = %e, "could not ask whether it holds cached chunks");
                    unanswered.extend(hashes);
                }
            }
        }
        let (mut elsewhere, mut nowhere, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
        for h in batch {
            if found.contains(h) {
                elsewhere.push(*h);
            } else if unanswered.contains(h) {
                unknown.push(*h);
            } else {
                nowhere.push(*h);
            }
        }
        (elsewhere, nowhere, unknown)
    }
}
