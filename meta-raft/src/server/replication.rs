//! The replication RPCs of the `Cluster` service (`namespace::feed`): placement, the
//! change feed, its scan, acknowledgements and status. Apart from `grpc.rs` only to keep
//! that file to one screenful per service.

use mobilus_proto::fs::ChunkHash;
use mobilus_proto::fs::{valid_site_name, ProfileRead, SitePlacement};
use mobilus_proto::pb;
use tonic::{Response, Status};

use super::node::MetaNode;
use crate::types::{Op, OpReply};

type Reply<T> = Result<Response<T>, Status>;

/// Entries a feed read returns when asked for no particular number.
const DEFAULT_PAGE: u32 = 1_000;

fn placement_reply(r: OpReply) -> Reply<pb::PlacementReply> {
    match r {
        OpReply::Placement(p) => Ok(Response::new(pb::PlacementReply {
            placement: Some((&p).into()),
        })),
        other => Err(Status::internal(format!("unexpected reply {other:?}"))),
    }
}

fn site(site: &str) -> Result<(), Status> {
    if valid_site_name(site) {
        Ok(())
    } else {
        Err(Status::invalid_argument(
            "the site must be a site name: 1 to 64 letters, digits, '-' and '_'",
        ))
    }
}

pub(super) async fn set_placement(
    node: &MetaNode,
    r: pb::SetPlacementRequest,
) -> Reply<pb::PlacementReply> {
    let sites = r
        .sites
        .into_iter()
        .map(SitePlacement::try_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_status())?;
    let op = Op::SetPlacement {
        root: r.root,
        sites,
    };
    placement_reply(node.propose(None, op).await.map_err(|e| e.to_status())?)
}

pub(super) async fn get_placement(
    node: &MetaNode,
    r: pb::GetSubtreeRequest,
) -> Reply<pb::PlacementReply> {
    let p = node
        .read(r.stale, |ns| ns.placement(r.root))
        .await
        .map_err(|e| e.to_status())?;
    Ok(Response::new(pb::PlacementReply {
        placement: Some((&p).into()),
    }))
}

pub(super) async fn set_profile(
    node: &MetaNode,
    r: pb::SetProfileRequest,
) -> Reply<pb::ProfileReply> {
    site(&r.site)?;
    // The profile of the owner's mount; site-b's mount may not record as site-a.
    super::authz::own_site(&r.site)?;
    if r.reads.len() > mobilus_proto::fs::MAX_PROFILE_READS {
        return Err(Status::invalid_argument(format!(
            "a profile keeps at most {} reads",
            mobilus_proto::fs::MAX_PROFILE_READS
        )));
    }
    let reads = r
        .reads
        .into_iter()
        .map(ProfileRead::try_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_status())?;
    let op = Op::SetProfile {
        root: r.root,
        reads,
    };
    profile_reply(
        node.propose_as(Some(r.site), None, op)
            .await
            .map_err(|e| e.to_status())?,
    )
}

pub(super) fn profile_reply(reply: OpReply) -> Reply<pb::ProfileReply> {
    match reply {
        OpReply::Profile(p) => Ok(Response::new(pb::ProfileReply {
            profile: Some((&p).into()),
        })),
        other => Err(Status::internal(format!("unexpected reply {other:?}"))),
    }
}

pub(super) async fn read_feed(node: &MetaNode, r: pb::ReadFeedRequest) -> Reply<pb::ReadFeedReply> {
    site(&r.site)?;
    let limit = if r.limit == 0 { DEFAULT_PAGE } else { r.limit };
    let page = node
        .read(r.stale, |ns| ns.read_feed(r.root, &r.site, r.after, limit))
        .await
        .map_err(|e| e.to_status())?;
    Ok(Response::new((&page).into()))
}

/// Most chunks in one page of a scan (about 3 MB on the wire, under the 4 MiB limit).
pub const MAX_SCAN_PAGE: u32 = 65_536;

pub(super) async fn scan(
    node: &MetaNode,
    r: pb::ScanSubtreeChunksRequest,
) -> Reply<pb::ScanSubtreeChunksReply> {
    let after = match r.after.as_slice() {
        [] => None,
        bytes => Some(
            ChunkHash::from_slice(bytes)
                .ok_or_else(|| Status::invalid_argument("`after` must be a 32-byte chunk hash"))?,
        ),
    };
    let limit = match r.limit {
        0 => MAX_SCAN_PAGE,
        n => n.min(MAX_SCAN_PAGE),
    } as usize;
    // The whole subtree is walked for each page (sorted by hash), and the page cut
    // from it: a page never costs more than one walk, and no cursor is kept here.
    let (chunks, next_seq) = node
        .subtree_chunks(r.root, r.stale)
        .await
        .map_err(|e| e.to_status())?;
    let start = after.map_or(0, |a| chunks.partition_point(|c| c.hash <= a));
    let end = start.saturating_add(limit).min(chunks.len());
    Ok(Response::new(pb::ScanSubtreeChunksReply {
        chunks: chunks[start..end].iter().map(Into::into).collect(),
        next_seq,
        more: end < chunks.len(),
    }))
}

pub(super) async fn ack(node: &MetaNode, r: pb::AckFeedRequest) -> Reply<pb::AckFeedReply> {
    site(&r.site)?;
    // A site's cursor moves by its own nodes only: an ack for another site would prune
    // entries that site has not fetched yet.
    super::authz::own_site(&r.site)?;
    let op = Op::AckFeed {
        root: r.root,
        site: r.site,
        seq: r.seq,
        backlog_chunks: r.backlog_chunks,
        backlog_bytes: r.backlog_bytes,
        rate_bps: r.rate_bps,
        scanning: r.scanning,
    };
    match node.propose(None, op).await.map_err(|e| e.to_status())? {
        OpReply::Count(pruned) => Ok(Response::new(pb::AckFeedReply { pruned })),
        other => Err(Status::internal(format!("unexpected reply {other:?}"))),
    }
}

pub(super) async fn status(
    node: &MetaNode,
    r: pb::ReplicationStatusRequest,
) -> Reply<pb::ReplicationStatusReply> {
    let all = node
        .read(r.stale, |ns| ns.followers(r.root))
        .await
        .map_err(|e| e.to_status())?;
    Ok(Response::new(pb::ReplicationStatusReply {
        followers: all.iter().map(Into::into).collect(),
    }))
}
