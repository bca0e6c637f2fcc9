//! Cluster administration: membership, status, the site registry, data-node GC and the
//! consistency checks (`fsck`). A second `impl` block of [`MetaClient`].

use mobilus_proto::convert::{hashes_from_wire, hashes_to_wire};
use mobilus_proto::fs::{ChunkHash, DataNodeInfo};
use mobilus_proto::pb;
use mobilus_proto::pb::cluster_client::ClusterClient;
use mobilus_proto::status::WireError;
use tonic::transport::Channel;

use std::time::Duration;

use crate::{normalize, ClientError, MetaClient};

impl MetaClient {
    fn cluster(ch: Channel) -> ClusterClient<Channel> {
        ClusterClient::new(ch)
    }

    /// The status of one member, asked directly (no redirect, one attempt).
    pub async fn status_of(&self, addr: &str) -> Result<pb::StatusReply, ClientError> {
        let ch = self.channel(&normalize(addr))?;
        let mut client = Self::cluster(ch);
        let fut = client.status(pb::StatusRequest {});
        match tokio::time::timeout(self.inner.opts.rpc_timeout, fut).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(WireError::from_status(&s).into()),
            Err(_) => Err(ClientError::Unavailable {
                addrs: addr.to_string(),
                last: "no answer".into(),
            }),
        }
    }

    /// The leader's status (following redirects).
    pub async fn status(&self) -> Result<pb::StatusReply, ClientError> {
        let r = self
            .call("status", |ch| async move {
                let r = Self::cluster(ch).status(pb::StatusRequest {}).await?;
                // Only the leader's view counts as the cluster's status.
                if r.get_ref().state != "Leader" {
                    let leader = r.get_ref().leader_addr.clone();
                    let w = WireError::NotLeader((!leader.is_empty()).then_some(leader));
                    return Err(w.to_status());
                }
                Ok(r)
            })
            .await?;
        Ok(r.into_inner())
    }

    /// Initialise a one-member cluster on the first endpoint.
    pub async fn init(&self) -> Result<pb::StatusReply, ClientError> {
        let ch = self.channel(&self.inner.endpoints[0])?;
        Self::cluster(ch)
            .init(pb::InitRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| WireError::from_status(&s).into())
    }

    pub async fn add_learner(&self, id: u64, addr: &str) -> Result<pb::StatusReply, ClientError> {
        let req = pb::AddLearnerRequest {
            id,
            addr: addr.to_string(),
        };
        let r = self
            .call("add_learner", |ch| {
                let req = req.clone();
                async move { Self::cluster(ch).add_learner(req).await }
            })
            .await?;
        Ok(r.into_inner())
    }

    pub async fn promote(&self, id: u64) -> Result<pb::StatusReply, ClientError> {
        let req = pb::PromoteRequest { id };
        let r = self
            .call("promote", |ch| async move {
                Self::cluster(ch).promote(req).await
            })
            .await?;
        Ok(r.into_inner())
    }

    pub async fn remove_member(&self, id: u64) -> Result<pb::StatusReply, ClientError> {
        let req = pb::RemoveMemberRequest { id };
        let r = self
            .call("remove_member", |ch| async move {
                Self::cluster(ch).remove_member(req).await
            })
            .await?;
        Ok(r.into_inner())
    }

    /// Register (or heartbeat) a data node in the site registry. Returns the node's GC
    /// generation as the metadata knows it.
    pub async fn register_data_node(&self, node: &DataNodeInfo) -> Result<u64, ClientError> {
        let req = pb::RegisterDataNodeRequest {
            node: Some(node.into()),
        };
        let r = self
            .call("register_data_node", |ch| {
                let req = req.clone();
                async move { Self::cluster(ch).register_data_node(req).await }
            })
            .await?;
        Ok(r.into_inner().gc_gen)
    }

    /// GC step 1 for data node `node`: condemn those of `hashes` unreferenced for at least
    /// `grace`. Returns every chunk condemned for the node, and its generation.
    pub async fn condemn(
        &self,
        node: &str,
        hashes: &[ChunkHash],
        grace: Duration,
    ) -> Result<(Vec<ChunkHash>, u64), ClientError> {
        let req = pb::CondemnRequest {
            node: node.to_string(),
            hashes: hashes_to_wire(hashes),
            grace_ns: i64::try_from(grace.as_nanos()).unwrap_or(i64::MAX),
        };
        let r = self
            .call("condemn", |ch| {
                let req = req.clone();
                async move { Self::cluster(ch).condemn(req).await }
            })
            .await?
            .into_inner();
        Ok((hashes_from_wire(&r.condemned)?, r.gc_gen))
    }

    /// GC step 2, after the node deleted them: forget the condemnations; returns the
    /// node's new generation.
    pub async fn forget_condemned(
        &self,
        node: &str,
        hashes: &[ChunkHash],
    ) -> Result<u64, ClientError> {
        let req = pb::ForgetCondemnedRequest {
            node: node.to_string(),
            hashes: hashes_to_wire(hashes),
        };
        let r = self
            .call("forget_condemned", |ch| {
                let req = req.clone();
                async move { Self::cluster(ch).forget_condemned(req).await }
            })
            .await?;
        Ok(r.into_inner().gc_gen)
    }

    /// Per hash: its reference count and when it last dropped to zero (0: never, or still
    /// referenced); and the answering member's clock.
    pub async fn chunk_refs(
        &self,
        hashes: &[ChunkHash],
        stale: bool,
    ) -> Result<(Vec<(u64, i64)>, i64), ClientError> {
        let req = pb::ChunkRefsRequest {
            hashes: hashes_to_wire(hashes),
            stale,
        };
        let r = self
            .call("chunk_refs", |ch| {
                let req = req.clone();
                async move { Self::cluster(ch).chunk_refs(req).await }
            })
            .await?
            .into_inner();
        if r.refs.len() != hashes.len() || r.zero_since_ns.len() != hashes.len() {
            return Err(ClientError::InvalidReply(format!(
                "{} refs for {} hashes",
                r.refs.len(),
                hashes.len()
            )));
        }
        Ok((r.refs.into_iter().zip(r.zero_since_ns).collect(), r.now_ns))
    }

    /// The data nodes of `site` (all sites when `None`), and the answering member's clock
    /// (to judge heartbeat ages against).
    pub async fn list_data_nodes(
        &self,
        site: Option<&str>,
        stale: bool,
    ) -> Result<(Vec<DataNodeInfo>, i64), ClientError> {
        let req = pb::ListDataNodesRequest {
            site: site.unwrap_or_default().to_string(),
            stale,
        };
        let r = self
            .call("list_data_nodes", |ch| {
                let req = req.clone();
                async move { Self::cluster(ch).list_data_nodes(req).await }
            })
            .await?
            .into_inner();
        Ok((r.nodes.into_iter().map(Into::into).collect(), r.now_ns))
    }

    /// Drain the data node at `addr` (or stop draining it): no new copies go to it, and
    /// its chunks are copied to its site's other nodes.
    pub async fn set_node_draining(
        &self,
        addr: &str,
        draining: bool,
    ) -> Result<DataNodeInfo, ClientError> {
        let req = pb::SetNodeDrainingRequest {
            addr: addr.to_string(),
            draining,
        };
        let r = self
            .call("set_node_draining", |ch| {
                let req = req.clone();
                async move { Self::cluster(ch).set_node_draining(req).await }
            })
            .await?
            .into_inner();
        Ok(r.into())
    }

    /// Take the data node at `addr` out of the registry: refused (EBUSY) unless it is
    /// drained and has stopped heartbeating.
    pub async fn remove_data_node(&self, addr: &str) -> Result<DataNodeInfo, ClientError> {
        let req = pb::RemoveDataNodeRequest {
            addr: addr.to_string(),
        };
        let r = self
            .call("remove_data_node", |ch| {
                let req = req.clone();
                async move { Self::cluster(ch).remove_data_node(req).await }
            })
            .await?
            .into_inner();
        Ok(r.into())
    }

    /// Set how many copies `site` keeps of each chunk (1 to 8).
    pub async fn set_site_replicas(&self, site: &str, replicas: u32) -> Result<u32, ClientError> {
        let req = pb::SetSiteReplicasRequest {
            site: site.to_string(),
            replicas,
        };
        let r = self
            .call("set_site_replicas", |ch| {
                let req = req.clone();
                async move { Self::cluster(ch).set_site_replicas(req).await }
            })
            .await?
            .into_inner();
        Ok(r.replicas)
    }

    /// Ask the leader to build a snapshot now (and purge its log).
    pub async fn trigger_snapshot(&self) -> Result<pb::StatusReply, ClientError> {
        let r = self
            .call("trigger_snapshot", |ch| async move {
                Self::cluster(ch)
                    .trigger_snapshot(pb::TriggerSnapshotRequest {})
                    .await
            })
            .await?;
        Ok(r.into_inner())
    }

    /// `fsck` of the metadata (tree shape and reference counts), on the leader.
    pub async fn fsck(&self) -> Result<pb::FsckReply, ClientError> {
        let r = self
            .call("fsck", |ch| async move {
                Self::cluster(ch).fsck(pb::FsckRequest {}).await
            })
            .await?;
        Ok(r.into_inner())
    }

    /// One page of referenced chunks (hash order, after `after`), their reference counts,
    /// and whether the list ended.
    pub async fn list_chunks(
        &self,
        after: Option<&ChunkHash>,
        limit: u32,
    ) -> Result<(Vec<(ChunkHash, u64)>, bool), ClientError> {
        let req = pb::ListChunksRequest {
            after: after.map(|h| h.0.to_vec()).unwrap_or_default(),
            limit,
        };
        let r = self
            .call("list_chunks", |ch| {
                let req = req.clone();
                async move { Self::cluster(ch).list_chunks(req).await }
            })
            .await?
            .into_inner();
        let hashes = hashes_from_wire(&r.hashes)?;
        if hashes.len() != r.refs.len() {
            return Err(ClientError::InvalidReply(format!(
                "{} counts for {} hashes",
                r.refs.len(),
                hashes.len()
            )));
        }
        Ok((hashes.into_iter().zip(r.refs).collect(), r.eof))
    }
}
