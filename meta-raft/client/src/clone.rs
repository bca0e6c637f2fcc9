//! Clones: start one, step it to the end (or remove an aborted one), list them. Another
//! `impl` block of [`MetaClient`].

use mobilus_proto::convert::clone_from_wire;
use mobilus_proto::fs::{CloneInfo, InodeId, SnapshotInfo, SubtreeId};
use mobilus_proto::pb;
use mobilus_proto::pb::cluster_client::ClusterClient;
use tonic::transport::Channel;

use crate::{ClientError, MetaClient};

fn cluster(ch: Channel) -> ClusterClient<Channel> {
    ClusterClient::new(ch)
}

fn one(reply: pb::CloneReply) -> Result<CloneInfo, ClientError> {
    let c = reply
        .clone
        .ok_or_else(|| ClientError::InvalidReply("no clone in the reply".into()))?;
    Ok(clone_from_wire(c)?)
}

impl MetaClient {
    /// Start copying subtree `src` into a new subtree `name` in directory `parent`,
    /// owned by `owner` (`None`: the source's owner). The source is frozen until the
    /// clone is published: call [`clone_step`](Self::clone_step) until it is `Done`
    /// (or `Aborting`: then [`abort_clone_step`](Self::abort_clone_step) until `Gone`).
    pub async fn start_clone(
        &self,
        src: SubtreeId,
        parent: InodeId,
        name: &[u8],
        owner: Option<&str>,
    ) -> Result<CloneInfo, ClientError> {
        let req = pb::StartCloneRequest {
            src,
            parent,
            name: name.to_vec(),
            owner: owner.unwrap_or_default().to_string(),
        };
        let r = self
            .call("start_clone", |ch| {
                let req = req.clone();
                async move { cluster(ch).start_clone(req).await }
            })
            .await?;
        one(r.into_inner())
    }

    /// Copy at most `limit` more inodes and slices of clone `dst` (0: the server's
    /// default); the step that copies the last publishes it.
    pub async fn clone_step(&self, dst: InodeId, limit: u32) -> Result<CloneInfo, ClientError> {
        let req = pb::CloneStepRequest { dst, limit };
        let r = self
            .call("clone_step", |ch| async move {
                cluster(ch).clone_step(req).await
            })
            .await?;
        one(r.into_inner())
    }

    /// Abort clone `dst` if it is still copying, and remove at most `limit` more of
    /// what it copied; the step that removes the last forgets it (`Gone`).
    pub async fn abort_clone_step(
        &self,
        dst: InodeId,
        limit: u32,
    ) -> Result<CloneInfo, ClientError> {
        let req = pb::CloneStepRequest { dst, limit };
        let r = self
            .call("abort_clone_step", |ch| async move {
                cluster(ch).abort_clone_step(req).await
            })
            .await?;
        one(r.into_inner())
    }

    /// Start refreshing published clone `dst` from its source: step it with
    /// [`clone_step`](Self::clone_step) until `Done`.
    pub async fn start_refresh(&self, dst: InodeId) -> Result<CloneInfo, ClientError> {
        let req = pb::CloneStepRequest { dst, limit: 0 };
        let r = self
            .call("start_refresh", |ch| async move {
                cluster(ch).start_refresh(req).await
            })
            .await?;
        one(r.into_inner())
    }

    /// Start snapshot `name` of subtree `src`: step it with
    /// [`clone_step`](Self::clone_step) as a clone.
    pub async fn create_snapshot(
        &self,
        src: SubtreeId,
        name: &[u8],
    ) -> Result<CloneInfo, ClientError> {
        let req = pb::SnapshotRequest {
            src,
            name: name.to_vec(),
        };
        let r = self
            .call("create_snapshot", |ch| {
                let req = req.clone();
                async move { cluster(ch).create_snapshot(req).await }
            })
            .await?;
        one(r.into_inner())
    }

    /// Forget snapshot `name` of subtree `src`: remove its tree with
    /// [`abort_clone_step`](Self::abort_clone_step) until `Gone`.
    pub async fn remove_snapshot(
        &self,
        src: SubtreeId,
        name: &[u8],
    ) -> Result<CloneInfo, ClientError> {
        let req = pb::SnapshotRequest {
            src,
            name: name.to_vec(),
        };
        let r = self
            .call("remove_snapshot", |ch| {
                let req = req.clone();
                async move { cluster(ch).remove_snapshot(req).await }
            })
            .await?;
        one(r.into_inner())
    }

    /// The snapshots of subtree `src`, oldest first.
    pub async fn snapshots(
        &self,
        src: SubtreeId,
        stale: bool,
    ) -> Result<Vec<SnapshotInfo>, ClientError> {
        let req = pb::ListSnapshotsRequest { src, stale };
        let r = self
            .call("list_snapshots", |ch| async move {
                cluster(ch).list_snapshots(req).await
            })
            .await?;
        Ok(r.into_inner()
            .snapshots
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Every clone being made or removed.
    pub async fn clones(&self, stale: bool) -> Result<Vec<CloneInfo>, ClientError> {
        let req = pb::ListClonesRequest { stale };
        let r = self
            .call("list_clones", |ch| async move {
                cluster(ch).list_clones(req).await
            })
            .await?;
        r.into_inner()
            .clones
            .into_iter()
            .map(|c| Ok(clone_from_wire(c)?))
            .collect()
    }
}
