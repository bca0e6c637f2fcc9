//! [`DataNodes`]: the site registry as a caller of data nodes sees it.
//!
//! The registry (`Cluster.ListDataNodes`) says which nodes each site has and when each
//! last heartbeat. A caller keeps a copy, refreshed in the background every few seconds
//! (never on the path of a read or write), one lazily connected [`DataClient`] per node,
//! and a short list of nodes it found failing, so that a dead node costs one failed call
//! and not one per request until the registry notices.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mobilus_meta_client::MetaClient;
use mobilus_proto::fs::{ChunkHash, DataNodeInfo};

use crate::node::{DataClient, DataClientError};
use crate::placement;

/// A node whose last heartbeat is older than this is taken for down by readers and
/// writers (it is asked last). `mobilusctl node ls` uses the same bound.
pub const HEALTHY_WITHIN: Duration = Duration::from_secs(10);
/// How old a caller's copy of the registry may grow before it is fetched again.
const REFRESH_EVERY: Duration = Duration::from_secs(3);
/// How long a node that failed a call is asked last.
const SUSPECT_FOR: Duration = Duration::from_secs(5);

/// One registered data node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub site: String,
    pub addr: String,
    /// Its last heartbeat is recent enough (see [`Registry::new`]).
    pub healthy: bool,
    /// Being drained: no new copies go to it.
    pub draining: bool,
}

/// The registry at one moment: each site's nodes.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    sites: BTreeMap<String, Vec<Node>>,
    /// Copies each site keeps, where the operator set it.
    replicas: BTreeMap<String, usize>,
}

impl Registry {
    /// The registry from a `ListDataNodes` answer made at `now_ns` (the answering member's
    /// clock, the one the heartbeats were stamped with): a node is healthy if it heartbeat
    /// within `healthy_within`.
    pub fn new(nodes: Vec<DataNodeInfo>, now_ns: i64, healthy_within: Duration) -> Self {
        let within = i64::try_from(healthy_within.as_nanos()).unwrap_or(i64::MAX);
        let mut sites: BTreeMap<String, Vec<Node>> = BTreeMap::new();
        let mut replicas = BTreeMap::new();
        for n in nodes {
            if n.site_replicas > 0 {
                replicas.insert(n.site.clone(), n.site_replicas as usize);
            }
            let healthy = now_ns.saturating_sub(n.last_heartbeat_ns) < within;
            sites.entry(n.site.clone()).or_default().push(Node {
                site: n.site,
                addr: n.addr,
                healthy,
                draining: n.draining,
            });
        }
        Registry { sites, replicas }
    }

    pub fn sites(&self) -> impl Iterator<Item = &str> {
        self.sites.keys().map(String::as_str)
    }

    /// A site's nodes (none for an unknown site).
    pub fn nodes(&self, site: &str) -> &[Node] {
        self.sites.get(site).map(Vec::as_slice).unwrap_or_default()
    }

    /// Copies `site` keeps of each chunk: as set for the site (default 2), at most as many
    /// as it has nodes not being drained, and at least one.
    pub fn replicas(&self, site: &str) -> usize {
        let keeping = self.nodes(site).iter().filter(|n| !n.draining).count();
        let wanted = self
            .replicas
            .get(site)
            .copied()
            .unwrap_or(placement::DEFAULT_REPLICAS);
        wanted.min(keeping).max(1)
    }

    /// `site`'s nodes in the order `hash` prefers them: healthy ones first, then those
    /// being drained (they still serve what they hold), then the rest. A chunk's copies
    /// belong on the first [`Registry::replicas`] of these, and a reader asks them in
    /// this order.
    pub fn candidates(&self, site: &str, hash: &ChunkHash) -> Vec<&Node> {
        let mut ranked = placement::rank(hash, self.nodes(site), |n| &n.addr);
        // Stable: each group keeps the chunk's order.
        ranked.sort_by_key(|n| (!n.healthy, n.draining));
        ranked
    }
}

/// The registry and a connection per node, shared by every caller in a process. Cheap to
/// share (`Arc`).
pub struct DataNodes {
    meta: MetaClient,
    healthy_within: Duration,
    inner: Mutex<Inner>,
    refreshing: AtomicBool,
}

struct Inner {
    registry: Arc<Registry>,
    fetched: Instant,
    clients: HashMap<String, DataClient>,
    suspects: HashMap<String, Instant>,
}

impl DataNodes {
    /// Fetch the registry once; later fetches happen in the background.
    pub async fn connect(
        meta: MetaClient,
        healthy_within: Duration,
    ) -> Result<Arc<Self>, mobilus_meta_client::ClientError> {
        let (nodes, now_ns) = meta.list_data_nodes(None, false).await?;
        Ok(Arc::new(DataNodes {
            meta,
            healthy_within,
            inner: Mutex::new(Inner {
                registry: Arc::new(Registry::new(nodes, now_ns, healthy_within)),
                fetched: Instant::now(),
                clients: HashMap::new(),
                suspects: HashMap::new(),
            }),
            refreshing: AtomicBool::new(false),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fetch the registry now.
    pub async fn refresh(&self) -> Result<Arc<Registry>, mobilus_meta_client::ClientError> {
        let (nodes, now_ns) = self.meta.list_data_nodes(None, false).await?;
        let registry = Arc::new(Registry::new(nodes, now_ns, self.healthy_within));
        let mut inner = self.lock();
        inner.registry = registry.clone();
        inner.fetched = Instant::now();
        Ok(registry)
    }

    /// The registry as last fetched; starts a fetch in the background if it is old.
    pub fn registry(self: &Arc<Self>) -> Arc<Registry> {
        let (registry, stale) = {
            let inner = self.lock();
            (
                inner.registry.clone(),
                inner.fetched.elapsed() > REFRESH_EVERY,
            )
        };
        if stale && !self.refreshing.swap(true, Ordering::AcqRel) {
            let this = self.clone();
            tokio::spawn(async move {
                // Retried at the next use; meanwhile the copy we have serves.
                if let Err(e) = this.refresh().await {
                    tracing::warn!(error = %e, "could not refresh the data-node registry");
                }
                this.refreshing.store(false, Ordering::Release);
            });
        }
        registry
    }

    /// The connection to `addr`.
    pub fn client(&self, addr: &str) -> Result<DataClient, DataClientError> {
        let mut inner = self.lock();
        if let Some(c) = inner.clients.get(addr) {
            return Ok(c.clone());
        }
        let c = DataClient::new(addr)?;
        inner.clients.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// A call to `addr` failed as if it were down: ask it last for a few seconds.
    pub fn suspect(&self, addr: &str) {
        self.lock()
            .suspects
            .insert(addr.to_string(), Instant::now() + SUSPECT_FOR);
    }

    /// Whether a call to `addr` failed as if it were down in the last few seconds.
    pub fn suspected(&self, addr: &str) -> bool {
        Self::is_suspect(&self.lock(), addr)
    }

    /// A call to `addr` succeeded.
    pub fn absolve(&self, addr: &str) {
        let mut inner = self.lock();
        if !inner.suspects.is_empty() {
            inner.suspects.remove(addr);
        }
    }

    fn is_suspect(inner: &Inner, addr: &str) -> bool {
        inner
            .suspects
            .get(addr)
            .is_some_and(|until| Instant::now() < *until)
    }

    /// The nodes of `site` to ask for `hash`, in order: its placement's healthy nodes,
    /// then the others; nodes that failed a call lately go last.
    pub fn candidates(self: &Arc<Self>, site: &str, hash: &ChunkHash) -> Vec<DataClient> {
        let registry = self.registry();
        let mut ranked = registry.candidates(site, hash);
        {
            let inner = self.lock();
            ranked.sort_by_key(|n| Self::is_suspect(&inner, &n.addr));
        }
        ranked
            .into_iter()
            .filter_map(|n| self.client(&n.addr).ok())
            .collect()
    }

    /// Copies `site` keeps of each chunk.
    pub fn replicas(self: &Arc<Self>, site: &str) -> usize {
        self.registry().replicas(site)
    }
}
