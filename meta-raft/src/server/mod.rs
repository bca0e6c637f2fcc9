//! Starting and stopping a member: open the stores, start Raft, serve gRPC.

mod applied;
pub mod authz;
mod batch;
mod clones;
mod delegations;
mod grpc;
mod locks;
mod metrics;
mod node;
mod proposer;
mod read_index;
mod replication;

use std::sync::Arc;
use std::time::Duration;

use mobilus_proto::pb::cluster_server::ClusterServer;
use mobilus_proto::pb::meta_server::MetaServer;
use mobilus_proto::pb::raft_server::RaftServer;
use mobilus_proto::{MAX_MESSAGE_BYTES, RAFT_MAX_ENTRIES_PER_MESSAGE, RAFT_MAX_MESSAGE_BYTES};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use self::applied::{APPLIED_HEADER, NEAR_HEADER};
pub use self::delegations::MAX_RECALL_WAIT;
pub use self::locks::MAX_LOCK_WAIT;
pub use self::metrics::describe_metrics;
pub use self::node::{
    holder_reads_ignore_applied_for_tests, ForwardReply, Forwarded, MetaNode, NodeTimeouts,
};
use crate::config::NodeConfig;
use crate::error::MetaError;
use crate::network::{ChannelPool, GrpcNetwork, NetFaults};
use crate::store;
use crate::types::Raft;

/// A running member; [`ServerHandle::shutdown`] stops it cleanly.
pub struct ServerHandle {
    pub node: Arc<MetaNode>,
    stop: Option<oneshot::Sender<()>>,
    serving: JoinHandle<Result<(), tonic::transport::Error>>,
}

fn raft_config(cfg: &NodeConfig) -> Result<openraft::Config, MetaError> {
    let hb = cfg.heartbeat_ms;
    openraft::Config {
        cluster_name: "mobilus".into(),
        heartbeat_interval: hb,
        election_timeout_min: hb * 5,
        // `NodeConfig::leader_lease` relies on this (openraft's leader lease is it).
        election_timeout_max: hb * 10,
        install_snapshot_timeout: 10_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_logs),
        max_in_snapshot_log_to_keep: cfg.keep_logs,
        purge_batch_size: 256,
        snapshot_max_chunk_size: 1 << 20,
        max_payload_entries: RAFT_MAX_ENTRIES_PER_MESSAGE,
        ..Default::default()
    }
    .validate()
    .map_err(|e| MetaError::InvalidRequest(format!("raft config: {e}")))
}

/// Bind, open the stores under `cfg.data_dir`, start Raft and serve. With `cfg.init`, a
/// member that is not yet part of a cluster initialises a one-member cluster.
pub async fn start(cfg: &NodeConfig) -> Result<ServerHandle, MetaError> {
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| MetaError::Unavailable(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| MetaError::Unavailable(format!("local address: {e}")))?;
    let addr = cfg.advertise.clone().unwrap_or_else(|| local.to_string());
    let (log, sm) = store::open(&cfg.data_dir)?;
    let log_stats = log.stats().clone();
    let pool = Arc::new(ChannelPool::new(match &cfg.tls {
        Some(t) => mobilus_tls::client::ClientTls::With(t.clone()),
        None => mobilus_tls::client::ClientTls::Plaintext,
    }));
    let faults = Arc::new(NetFaults::default());
    let network = GrpcNetwork::new(pool.clone(), faults.clone());
    let config = Arc::new(raft_config(cfg)?);
    let raft = Raft::new(cfg.id, config, network, log, sm.clone())
        .await
        .map_err(|e| MetaError::Raft(e.to_string()))?;
    // After a restart openraft refuses votes for a leader lease only if it had saved a
    // committed vote; a member that comes back without one (a wiped or restored disk
    // under the same id) would vote at once for a candidate while the leader's read lease
    // may count on it. So every start but that of a new cluster's first member neither
    // votes nor stands for a leader lease (one second at the default heartbeat).
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| MetaError::Raft(e.to_string()))?;
    let gated = initialized || !cfg.init;
    let vote_gate_until = gated.then(|| tokio::time::Instant::now() + cfg.leader_lease());
    if gated {
        raft.runtime_config().elect(false);
        let (raft, gate) = (raft.clone(), cfg.leader_lease());
        tokio::spawn(async move {
            tokio::time::sleep(gate).await;
            raft.runtime_config().elect(true);
        });
    }
    let timeouts = NodeTimeouts::default();
    let read_index = read_index::ReadIndex::new(raft.clone(), cfg.read_lease(), timeouts.read);
    let node = Arc::new(MetaNode {
        id: cfg.id,
        addr: addr.clone(),
        proposer: proposer::Proposer::start(raft.clone()),
        raft,
        sm,
        log_stats,
        faults,
        pool,
        timeouts,
        unsafe_local_reads: cfg.unsafe_local_reads,
        read_index,
        vote_gate_until,
        holder_reads: Default::default(),
        batched_items: Default::default(),
    });
    if let Some(ms) = cfg.unsafe_read_lease_ms {
        tracing::warn!(
            ms,
            leader_lease_ms = cfg.leader_lease().as_millis() as u64,
            "--unsafe-read-lease-ms: a read lease of any length (a test-only bug when it \
             outlives the leader lease)"
        );
    }
    if cfg.unsafe_local_reads {
        tracing::warn!("--unsafe-local-reads: reads skip the read index (a test-only bug)");
    }
    if cfg.init
        && !node
            .raft
            .is_initialized()
            .await
            .map_err(|e| MetaError::Raft(e.to_string()))?
    {
        node.init().await?;
        tracing::info!(id = cfg.id, %addr, "initialised a new cluster");
    }

    // Ends by itself when Raft shuts down.
    metrics::spawn_raft_metrics(&node.raft);
    let (stop, stopped) = oneshot::channel::<()>();
    let meta = MetaServer::new(grpc::MetaSvc { node: node.clone() })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let cluster = ClusterServer::new(grpc::ClusterSvc { node: node.clone() });
    let raft_svc = RaftServer::new(grpc::RaftSvc { node: node.clone() })
        .max_decoding_message_size(RAFT_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(RAFT_MAX_MESSAGE_BYTES);
    let incoming = mobilus_tls::server::incoming(listener, cfg.tls.clone());
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .timeout(Duration::from_secs(30))
            .max_concurrent_streams(mobilus_tls::server::MAX_STREAMS_PER_CONNECTION)
            .concurrency_limit_per_connection(
                mobilus_tls::server::MAX_STREAMS_PER_CONNECTION as usize,
            )
            // A peer that vanished without closing stops holding its connection.
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .layer(mobilus_telemetry::GrpcMetricsLayer)
            .layer(mobilus_tls::server::Authorize::new(authz::policy))
            .layer(mobilus_tls::budget::BufferBudget::new(
                cfg.request_buffer_bytes,
                authz::is_raft,
                |msg| mobilus_proto::status::WireError::Busy(msg).to_status(),
            ))
            .layer(applied::AppliedLayer)
            .add_service(meta)
            .add_service(cluster)
            .add_service(raft_svc)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );
    tracing::info!(id = cfg.id, %addr, data_dir = %cfg.data_dir.display(), "mobilus-meta serving");
    Ok(ServerHandle {
        node,
        stop: Some(stop),
        serving,
    })
}

impl ServerHandle {
    /// The address other members and clients use.
    pub fn addr(&self) -> &str {
        &self.node.addr
    }

    /// Stop serving, then stop Raft (which flushes nothing it has not already made
    /// durable: the log is fsynced on every append).
    pub async fn shutdown(mut self) -> Result<(), MetaError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.serving).await;
        self.node
            .raft
            .shutdown()
            .await
            .map_err(|e| MetaError::Raft(e.to_string()))?;
        Ok(())
    }
}
