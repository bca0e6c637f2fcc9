//! Subtree ownership: create (and relabel), move, and report subtrees. A third `impl`
//! block of [`MetaClient`].

use mobilus_proto::convert::subtree_from_wire;
use mobilus_proto::fs::{InodeId, SubtreeInfo, SubtreeUsage};
use mobilus_proto::pb;
use mobilus_proto::pb::cluster_client::ClusterClient;
use tonic::transport::Channel;

use crate::{ClientError, MetaClient};

fn cluster(ch: Channel) -> ClusterClient<Channel> {
    ClusterClient::new(ch)
}

fn one(reply: pb::SubtreeReply) -> Result<SubtreeInfo, ClientError> {
    let s = reply
        .subtree
        .ok_or_else(|| ClientError::InvalidReply("no subtree in the reply".into()))?;
    Ok(subtree_from_wire(s)?)
}

impl MetaClient {
    /// Make directory `root` a subtree owned by `owner`. An existing tree comes back
    /// `Preparing`: call [`relabel_subtree`](Self::relabel_subtree) until it is owned.
    pub async fn create_subtree(
        &self,
        root: InodeId,
        owner: &str,
    ) -> Result<SubtreeInfo, ClientError> {
        let req = pb::CreateSubtreeRequest {
            root,
            owner: owner.to_string(),
        };
        let r = self
            .call("create_subtree", |ch| {
                let req = req.clone();
                async move { cluster(ch).create_subtree(req).await }
            })
            .await?;
        one(r.into_inner())
    }

    /// Relabel at most `limit` more inodes of a subtree being prepared.
    pub async fn relabel_subtree(
        &self,
        root: InodeId,
        limit: u32,
    ) -> Result<SubtreeInfo, ClientError> {
        let req = pb::RelabelSubtreeRequest { root, limit };
        let r = self
            .call("relabel_subtree", |ch| async move {
                cluster(ch).relabel_subtree(req).await
            })
            .await?;
        one(r.into_inner())
    }

    /// Give subtree `root` to site `to` (epoch + 1); `force` takes it from an owner whose
    /// lease has expired.
    pub async fn move_subtree(
        &self,
        root: InodeId,
        to: &str,
        force: bool,
    ) -> Result<SubtreeInfo, ClientError> {
        self.move_subtree_with(root, to, force, None).await
    }

    /// [`MetaClient::move_subtree`], the new owner holding the data as `data` says
    /// (`None`: eagerly), in the same step.
    pub async fn move_subtree_with(
        &self,
        root: InodeId,
        to: &str,
        force: bool,
        data: Option<mobilus_proto::fs::DataMode>,
    ) -> Result<SubtreeInfo, ClientError> {
        let req = pb::MoveSubtreeRequest {
            root,
            to: to.to_string(),
            force,
            data: data.map(|d| d.as_str().to_string()).unwrap_or_default(),
        };
        let r = self
            .call("move_subtree", |ch| {
                let req = req.clone();
                async move { cluster(ch).move_subtree(req).await }
            })
            .await?;
        one(r.into_inner())
    }

    /// Set the follow-writer policy: `Some(hold)` moves the subtree to the site of the
    /// first write from elsewhere once its owner has held it that long; `None`: off.
    pub async fn set_subtree_policy(
        &self,
        root: InodeId,
        follow_writer_hold: Option<std::time::Duration>,
    ) -> Result<SubtreeInfo, ClientError> {
        let req = pb::SetSubtreePolicyRequest {
            root,
            follow_writer_hold_ns: follow_writer_hold
                .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
        };
        let r = self
            .call("set_subtree_policy", |ch| async move {
                cluster(ch).set_subtree_policy(req).await
            })
            .await?;
        one(r.into_inner())
    }

    /// One subtree, by its root.
    pub async fn subtree(&self, root: InodeId, stale: bool) -> Result<SubtreeInfo, ClientError> {
        let req = pb::GetSubtreeRequest { root, stale };
        let r = self
            .call("get_subtree", |ch| async move {
                cluster(ch).get_subtree(req).await
            })
            .await?;
        one(r.into_inner())
    }

    /// What subtree `root` holds of the data, and what deleting it would free.
    pub async fn subtree_usage(&self, root: InodeId) -> Result<SubtreeUsage, ClientError> {
        let req = pb::GetSubtreeRequest { root, stale: false };
        let r = self
            .call("get_subtree_usage", |ch| async move {
                cluster(ch).get_subtree_usage(req).await
            })
            .await?;
        Ok(r.into_inner().into())
    }

    /// Every subtree, the shared root first.
    pub async fn subtrees(&self, stale: bool) -> Result<Vec<SubtreeInfo>, ClientError> {
        let req = pb::ListSubtreesRequest { stale };
        let r = self
            .call("list_subtrees", |ch| async move {
                cluster(ch).list_subtrees(req).await
            })
            .await?;
        r.into_inner()
            .subtrees
            .into_iter()
            .map(|s| Ok(subtree_from_wire(s)?))
            .collect()
    }
}
