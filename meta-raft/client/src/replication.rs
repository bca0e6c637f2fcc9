//! Replication: placement, the change feed and its scan, acknowledgements, status. An
//! `impl` block of [`MetaClient`], used by `mobilusctl`, the mount (sync sites) and the
//! data nodes' replicators.

use mobilus_proto::convert::feed_chunks_from_wire;
use mobilus_proto::fs::{
    ChunkHash, FeedChunk, FeedPage, Follower, InodeId, Placement, Profile, ProfileRead,
    SitePlacement,
};
use mobilus_proto::pb;
use mobilus_proto::pb::cluster_client::ClusterClient;
use tonic::transport::Channel;

use crate::{ClientError, MetaClient};

fn cluster(ch: Channel) -> ClusterClient<Channel> {
    ClusterClient::new(ch)
}

fn placement(reply: pb::PlacementReply) -> Result<Placement, ClientError> {
    let p = reply
        .placement
        .ok_or_else(|| ClientError::InvalidReply("no placement in the reply".into()))?;
    Ok(p.try_into()?)
}

/// A replicator's progress, reported with its acknowledgement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeedProgress {
    pub backlog_chunks: u64,
    pub backlog_bytes: u64,
    pub rate_bps: u64,
    /// Copying a scan made when `seq + 1` was the feed's next entry.
    pub scanning: bool,
}

fn profile(reply: pb::ProfileReply) -> Result<Profile, ClientError> {
    let p = reply
        .profile
        .ok_or_else(|| ClientError::InvalidReply("no profile in the reply".into()))?;
    Ok(p.try_into()?)
}

/// A page of a subtree's chunks (`MetaClient::scan_subtree_chunks_page`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// In hash order.
    pub chunks: Vec<FeedChunk>,
    /// The feed's next entry when this page was read.
    pub next_seq: u64,
    /// More chunks follow this page's last.
    pub more: bool,
}

impl MetaClient {
    /// Subtree `root`'s access profile.
    pub async fn profile(&self, root: InodeId, stale: bool) -> Result<Profile, ClientError> {
        let req = pb::GetSubtreeRequest { root, stale };
        let r = self
            .call("get_profile", |ch| async move {
                cluster(ch).get_profile(req).await
            })
            .await?;
        profile(r.into_inner())
    }

    /// Store the profile a mount of `site` recorded (EBUSY unless recording is armed).
    pub async fn set_profile(
        &self,
        root: InodeId,
        site: &str,
        reads: &[ProfileRead],
    ) -> Result<Profile, ClientError> {
        let req = pb::SetProfileRequest {
            root,
            reads: reads.iter().map(Into::into).collect(),
            site: site.to_string(),
        };
        let r = self
            .call("set_profile", |ch| {
                let req = req.clone();
                async move { cluster(ch).set_profile(req).await }
            })
            .await?;
        profile(r.into_inner())
    }

    /// Forget `root`'s profile; `record`: the next start records one.
    pub async fn arm_profile(&self, root: InodeId, record: bool) -> Result<Profile, ClientError> {
        let req = pb::ArmProfileRequest { root, record };
        let r = self
            .call("arm_profile", |ch| async move {
                cluster(ch).arm_profile(req).await
            })
            .await?;
        profile(r.into_inner())
    }

    /// Set which sites hold subtree `root`'s data, and how.
    pub async fn set_placement(
        &self,
        root: InodeId,
        sites: &[SitePlacement],
    ) -> Result<Placement, ClientError> {
        let req = pb::SetPlacementRequest {
            root,
            sites: sites.iter().map(Into::into).collect(),
        };
        let r = self
            .call("set_placement", |ch| {
                let req = req.clone();
                async move { cluster(ch).set_placement(req).await }
            })
            .await?;
        placement(r.into_inner())
    }

    /// Where subtree `root`'s data lives (`stale`: any member's view).
    pub async fn placement(&self, root: InodeId, stale: bool) -> Result<Placement, ClientError> {
        let req = pb::GetSubtreeRequest { root, stale };
        let r = self
            .call("get_placement", |ch| async move {
                cluster(ch).get_placement(req).await
            })
            .await?;
        placement(r.into_inner())
    }

    /// Up to `limit` entries of `root`'s change feed after `after` (default: `site`'s
    /// cursor).
    pub async fn read_feed(
        &self,
        root: InodeId,
        site: &str,
        after: Option<u64>,
        limit: u32,
    ) -> Result<FeedPage, ClientError> {
        let req = pb::ReadFeedRequest {
            root,
            site: site.to_string(),
            after,
            limit,
            stale: false,
        };
        let r = self
            .call("read_feed", |ch| {
                let req = req.clone();
                async move { cluster(ch).read_feed(req).await }
            })
            .await?;
        Ok(r.into_inner().try_into()?)
    }

    /// Every chunk `root` references, and its feed's next entry as of the first page
    /// (scan plus feed from there misses nothing), page after page.
    pub async fn scan_subtree_chunks(
        &self,
        root: InodeId,
    ) -> Result<(Vec<FeedChunk>, u64), ClientError> {
        let mut page = self.scan_subtree_chunks_page(root, None, 0).await?;
        let next = page.next_seq;
        let mut all = std::mem::take(&mut page.chunks);
        while page.more {
            let after = all.last().map(|c| c.hash);
            page = self.scan_subtree_chunks_page(root, after, 0).await?;
            all.append(&mut page.chunks);
        }
        Ok((all, next))
    }

    /// One page of `root`'s chunks, in hash order after `after` (`limit` 0: the most a
    /// page holds).
    pub async fn scan_subtree_chunks_page(
        &self,
        root: InodeId,
        after: Option<ChunkHash>,
        limit: u32,
    ) -> Result<ScanPage, ClientError> {
        let req = pb::ScanSubtreeChunksRequest {
            root,
            stale: false,
            after: after.map(|h| h.0.to_vec()).unwrap_or_default(),
            limit,
        };
        let r = self
            .call("scan_subtree_chunks", |ch| {
                let req = req.clone();
                async move { cluster(ch).scan_subtree_chunks(req).await }
            })
            .await?
            .into_inner();
        Ok(ScanPage {
            chunks: feed_chunks_from_wire(r.chunks)?,
            next_seq: r.next_seq,
            more: r.more,
        })
    }

    /// `site` has passed entry `seq` of `root`'s feed. Returns the entries pruned.
    pub async fn ack_feed(
        &self,
        root: InodeId,
        site: &str,
        seq: u64,
        progress: FeedProgress,
    ) -> Result<u64, ClientError> {
        let req = pb::AckFeedRequest {
            root,
            site: site.to_string(),
            seq,
            backlog_chunks: progress.backlog_chunks,
            backlog_bytes: progress.backlog_bytes,
            rate_bps: progress.rate_bps,
            scanning: progress.scanning,
        };
        let r = self
            .call("ack_feed", |ch| {
                let req = req.clone();
                async move { cluster(ch).ack_feed(req).await }
            })
            .await?;
        Ok(r.into_inner().pruned)
    }

    /// Each site following each subtree (or only `root`), as last reported.
    pub async fn replication_status(
        &self,
        root: Option<InodeId>,
    ) -> Result<Vec<Follower>, ClientError> {
        let req = pb::ReplicationStatusRequest { root, stale: false };
        let r = self
            .call("replication_status", |ch| async move {
                cluster(ch).replication_status(req).await
            })
            .await?;
        Ok(r.into_inner()
            .followers
            .into_iter()
            .map(Into::into)
            .collect())
    }
}
