//! The clone RPCs of the `Cluster` service (`namespace::clone`): decode, propose or
//! read, encode. Apart from `grpc.rs` only to keep that file to one screenful per
//! service.

use mobilus_proto::fs::{valid_site_name, CloneInfo};
use mobilus_proto::pb;
use tonic::{Response, Status};

use super::node::MetaNode;
use crate::namespace::MAX_CLONE_BATCH;
use crate::types::{Op, OpReply};

type Reply<T> = Result<Response<T>, Status>;

/// Steps asked with no limit copy this many inodes and slices.
const DEFAULT_CLONE_BATCH: u32 = 5_000;

fn clone_reply(r: OpReply) -> Reply<pb::CloneReply> {
    match r {
        OpReply::Clone(c) => Ok(Response::new(pb::CloneReply {
            clone: Some((&c).into()),
        })),
        other => Err(Status::internal(format!("unexpected reply {other:?}"))),
    }
}

fn limit(asked: u32) -> u32 {
    match asked {
        0 => DEFAULT_CLONE_BATCH,
        n => n.min(MAX_CLONE_BATCH),
    }
}

pub(super) async fn start(node: &MetaNode, r: pb::StartCloneRequest) -> Reply<pb::CloneReply> {
    let owner = match r.owner.as_str() {
        "" => None,
        site if valid_site_name(site) => Some(r.owner),
        _ => {
            return Err(Status::invalid_argument(
                "the owner must be a site name: 1 to 64 letters, digits, '-' and '_'",
            ))
        }
    };
    let op = Op::StartClone {
        src: r.src,
        parent: r.parent,
        name: r.name,
        owner,
        snapshot: false,
    };
    clone_reply(node.propose(None, op).await.map_err(|e| e.to_status())?)
}

pub(super) async fn step(node: &MetaNode, r: pb::CloneStepRequest) -> Reply<pb::CloneReply> {
    let op = Op::CloneStep {
        dst: r.dst,
        limit: limit(r.limit),
    };
    clone_reply(node.propose(None, op).await.map_err(|e| e.to_status())?)
}

pub(super) async fn abort_step(node: &MetaNode, r: pb::CloneStepRequest) -> Reply<pb::CloneReply> {
    let op = Op::AbortCloneStep {
        dst: r.dst,
        limit: limit(r.limit),
    };
    clone_reply(node.propose(None, op).await.map_err(|e| e.to_status())?)
}

pub(super) async fn start_refresh(
    node: &MetaNode,
    r: pb::CloneStepRequest,
) -> Reply<pb::CloneReply> {
    let op = Op::StartRefresh { dst: r.dst };
    clone_reply(node.propose(None, op).await.map_err(|e| e.to_status())?)
}

pub(super) async fn create_snapshot(
    node: &MetaNode,
    r: pb::SnapshotRequest,
) -> Reply<pb::CloneReply> {
    let op = Op::StartClone {
        src: r.src,
        parent: r.src,
        name: r.name,
        owner: None,
        snapshot: true,
    };
    clone_reply(node.propose(None, op).await.map_err(|e| e.to_status())?)
}

pub(super) async fn remove_snapshot(
    node: &MetaNode,
    r: pb::SnapshotRequest,
) -> Reply<pb::CloneReply> {
    let op = Op::RemoveSnapshot {
        src: r.src,
        name: r.name,
    };
    clone_reply(node.propose(None, op).await.map_err(|e| e.to_status())?)
}

pub(super) async fn list_snapshots(
    node: &MetaNode,
    r: pb::ListSnapshotsRequest,
) -> Reply<pb::ListSnapshotsReply> {
    let all = node
        .read(r.stale, |ns| ns.snapshots(r.src))
        .await
        .map_err(|e| e.to_status())?;
    Ok(Response::new(pb::ListSnapshotsReply {
        snapshots: all.iter().map(Into::into).collect(),
    }))
}

pub(super) async fn list(node: &MetaNode, r: pb::ListClonesRequest) -> Reply<pb::ListClonesReply> {
    let all: Vec<CloneInfo> = node
        .read(r.stale, |ns| ns.clones())
        .await
        .map_err(|e| e.to_status())?;
    Ok(Response::new(pb::ListClonesReply {
        clones: all.iter().map(Into::into).collect(),
    }))
}
