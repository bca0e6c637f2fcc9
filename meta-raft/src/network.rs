//! Raft traffic between members over gRPC.
//!
//! [`ChannelPool`] keeps one lazily connected HTTP/2 channel per peer address, shared by
//! every RPC to it. [`GrpcNetwork`] is the real network; [`NetFaults`] makes it drop
//! traffic to chosen peers, for tests that cut a member off inside one process.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use mobilus_proto::pb;
use mobilus_proto::pb::raft_client::RaftClient;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::codec;
use crate::types::{NodeId, TypeConfig};

/// Largest AppendEntries we send with more than one entry (one entry always goes).
const APPEND_BUDGET_BYTES: usize = 1 << 20;

/// One channel per peer address, over TLS when the member has it.
#[derive(Default)]
pub struct ChannelPool {
    channels: Mutex<HashMap<String, Channel>>,
    tls: mobilus_tls::client::ClientTls,
}

impl ChannelPool {
    pub fn new(tls: mobilus_tls::client::ClientTls) -> ChannelPool {
        ChannelPool {
            channels: Mutex::default(),
            tls,
        }
    }

    pub fn get(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5));
        let ch = mobilus_tls::client::channel(endpoint, mobilus_tls::Role::Meta, &self.tls);
        channels.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    pub fn raft_client(&self, addr: &str) -> Result<RaftClient<Channel>, tonic::transport::Error> {
        Ok(RaftClient::new(self.get(addr)?)
            .max_decoding_message_size(mobilus_proto::RAFT_MAX_MESSAGE_BYTES)
            .max_encoding_message_size(mobilus_proto::RAFT_MAX_MESSAGE_BYTES))
    }
}

/// Peers whose traffic this member drops (both what it sends and what it accepts).
#[derive(Default, Debug)]
pub struct NetFaults {
    blocked: RwLock<HashSet<NodeId>>,
}

impl NetFaults {
    pub fn block(&self, peer: NodeId) {
        self.blocked
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer);
    }
    pub fn heal(&self) {
        self.blocked
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
    pub fn is_blocked(&self, peer: NodeId) -> bool {
        self.blocked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&peer)
    }
}

/// The Raft network factory.
#[derive(Clone)]
pub struct GrpcNetwork {
    pool: Arc<ChannelPool>,
    faults: Arc<NetFaults>,
}

impl GrpcNetwork {
    pub fn new(pool: Arc<ChannelPool>, faults: Arc<NetFaults>) -> Self {
        GrpcNetwork { pool, faults }
    }
}

/// The link to one peer.
pub struct Peer {
    target: NodeId,
    addr: String,
    pool: Arc<ChannelPool>,
    faults: Arc<NetFaults>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Dropped(String);

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            addr: node.addr.clone(),
            pool: self.pool.clone(),
            faults: self.faults.clone(),
        }
    }
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, E>>;

impl Peer {
    async fn send<Req, Resp, E>(
        &self,
        rpc: &Req,
        option: &RPCOption,
        kind: RpcKind,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if self.faults.is_blocked(self.target) {
            let e = Dropped(format!("traffic to {} is blocked", self.target));
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        }
        let data = codec::encode(rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client = self
            .pool
            .raft_client(&self.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut req = tonic::Request::new(pb::RaftBytes { data });
        req.set_timeout(option.hard_ttl());
        let reply = match kind {
            RpcKind::Append => client.append_entries(req).await,
            RpcKind::Vote => client.vote(req).await,
            RpcKind::Snapshot => client.install_snapshot(req).await,
        };
        let bytes = match reply {
            Ok(r) => r.into_inner().data,
            Err(s) if s.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&s)))
            }
            Err(s) => return Err(RPCError::Network(NetworkError::new(&s))),
        };
        let result: Result<Resp, E> =
            codec::decode(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Clone, Copy)]
enum RpcKind {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        // openraft gives each AppendEntries one heartbeat interval to complete; a message
        // over the budget could never make it, so ask for fewer entries instead.
        let n = rpc.entries.len();
        if n > 1 {
            let size = codec::encode(&rpc).map(|b| b.len()).unwrap_or(usize::MAX);
            if size > APPEND_BUDGET_BYTES {
                let fit = (n * APPEND_BUDGET_BYTES / size).clamp(1, n - 1);
                return Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(fit as u64),
                ));
            }
        }
        self.send(&rpc, &option, RpcKind::Append).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        self.send(&rpc, &option, RpcKind::Snapshot).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        self.send(&rpc, &option, RpcKind::Vote).await
    }
}
