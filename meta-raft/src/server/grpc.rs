//! Thin gRPC adapters: decode the request, call the typed [`MetaNode`] method, map the
//! error once with `to_status`.

use std::sync::Arc;

use mobilus_proto::convert::{
    fence_from_wire, hashes_from_wire, hashes_to_wire, kind_from_wire, lock_kind_from_wire,
    lock_kind_to_wire, setattr_from_wire,
};
use mobilus_proto::fs::{
    valid_site_name, Attr, ChunkHash, DirEntry, LockKind, LockRequest, SliceWrite, SubtreeInfo,
};
use mobilus_proto::pb;
use mobilus_proto::pb::cluster_server::Cluster;
use mobilus_proto::pb::meta_server::Meta;
use mobilus_proto::pb::raft_server::Raft as RaftRpc;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::applied;
use super::node::MetaNode;
use crate::codec;
use crate::error::MetaError;
use crate::types::{NodeId, Op, OpReply};

type Reply<T> = Result<Response<T>, Status>;

fn status(e: MetaError) -> Status {
    e.to_status()
}

fn attr_reply(r: OpReply) -> Reply<pb::AttrReply> {
    match r {
        OpReply::Attr(a) => Ok(Response::new(pb::AttrReply {
            attr: Some((&a).into()),
            subtree_owner: String::new(),
        })),
        other => Err(Status::internal(format!("unexpected reply {other:?}"))),
    }
}

/// A lookup's or getattr's answer, with the owner of the inode's subtree.
fn attr_reply_owned(a: Attr, owner: Option<String>) -> Reply<pb::AttrReply> {
    Ok(Response::new(pb::AttrReply {
        attr: Some((&a).into()),
        subtree_owner: owner.unwrap_or_default(),
    }))
}

fn subtree_reply(r: OpReply) -> Reply<pb::SubtreeReply> {
    match r {
        OpReply::Subtree(s) => Ok(Response::new(subtree_to_wire(&s))),
        other => Err(Status::internal(format!("unexpected reply {other:?}"))),
    }
}

fn subtree_to_wire(s: &SubtreeInfo) -> pb::SubtreeReply {
    pb::SubtreeReply {
        subtree: Some(s.into()),
    }
}

fn site_arg(site: String, what: &str) -> Result<String, Status> {
    if valid_site_name(&site) {
        Ok(site)
    } else {
        Err(Status::invalid_argument(format!(
            "{what} must be a site name: 1 to 64 letters, digits, '-' and '_'"
        )))
    }
}

fn wire(e: mobilus_proto::status::WireError) -> Status {
    e.to_status()
}

/// The `Meta` service.
pub struct MetaSvc {
    pub node: Arc<MetaNode>,
}

impl MetaSvc {
    async fn op(&self, fence: Option<pb::Fence>, op: Op) -> Result<OpReply, Status> {
        let (issuer, fence) = fence_from_wire(super::authz::bind_site(fence)?);
        if issuer.site.as_deref().is_some_and(|s| !valid_site_name(s)) {
            return Err(Status::invalid_argument(
                "the fence's site must be 1 to 64 letters, digits, '-' and '_'",
            ));
        }
        self.node
            .propose_by(issuer, fence, op)
            .await
            .map_err(status)
    }
}

/// A read's answer speaks for no subtree but its inode's (`MetaNode::read_in`).
fn no_other<T>(_: &T) -> Vec<mobilus_proto::fs::SubtreeId> {
    Vec::new()
}

/// The mount session a read is made for (0 on the wire: none).
impl MetaSvc {
    /// The mount session a read or a lock query names (0: none), if it is the caller's
    /// site's: a mount may not read as another site's delegation holder, nor ask as
    /// another site's session. Checked on this member's state (a session's site never
    /// changes; one not applied here yet passes).
    fn reader(&self, session: u64) -> Result<Option<u64>, Status> {
        if session == 0 {
            return Ok(None);
        }
        if let Some(site) = super::authz::bound_site() {
            if let Ok(Some(Some(owner))) = self.node.sm.namespace().session_site(session) {
                if owner != site {
                    return Err(Status::permission_denied(format!(
                        "mount session {session} is of {owner}, not of {site}"
                    )));
                }
            }
        }
        Ok(Some(session))
    }
}

/// A create under a reserved number (`MknodRequest.ino`), and the write that comes with
/// it, if any: only a regular file, by the session that reserved the number.
fn reserved_create(
    r: pb::MknodRequest,
    write: Option<(Vec<SliceWrite>, Vec<mobilus_proto::fs::ChunkCheck>)>,
) -> Result<Op, Status> {
    if kind_from_wire(r.kind).map_err(wire)? != mobilus_proto::fs::FileKind::Regular {
        return Err(Status::invalid_argument(
            "only a regular file is created under a reserved number",
        ));
    }
    let session = r.fence.as_ref().map_or(0, |f| f.session);
    if session == 0 {
        return Err(Status::invalid_argument(
            "a create under a reserved number must carry the session that reserved it",
        ));
    }
    Ok(Op::CreateReserved {
        parent: r.parent,
        name: r.name,
        ino: r.ino,
        mode: r.mode,
        uid: r.uid,
        gid: r.gid,
        time_ns: r.time_ns,
        session,
        write,
    })
}

fn lock_request(
    ino: u64,
    session: u64,
    owner: u64,
    (start, end): (u64, u64),
    kind: i32,
) -> Result<LockRequest, Status> {
    Ok(LockRequest {
        ino,
        session,
        owner,
        start,
        end,
        kind: lock_kind_from_wire(kind).map_err(wire)?,
    })
}

fn session_reply(r: OpReply, now_ns: i64) -> Reply<pb::SessionReply> {
    match r {
        OpReply::Session {
            id,
            lease_end_ns,
            delegations,
        } => Ok(Response::new(pb::SessionReply {
            session: id,
            delegations: delegations.iter().map(Into::into).collect(),
            lease_ms: u64::try_from((lease_end_ns - now_ns) / 1_000_000).unwrap_or(0),
        })),
        other => Err(Status::internal(format!("unexpected reply {other:?}"))),
    }
}

#[tonic::async_trait]
impl Meta for MetaSvc {
    async fn lookup(&self, r: Request<pb::LookupRequest>) -> Reply<pb::AttrReply> {
        let near = applied::near(&r);
        let r = r.into_inner();
        let reader = self.reader(r.session)?;
        let (a, owner) = self
            .node
            .read_in(
                r.stale,
                reader,
                r.parent,
                near,
                |(a, _): &(Attr, _)| vec![a.subtree],
                |ns| {
                    let a = ns.lookup(r.parent, &r.name)?;
                    let owner = ns.subtree_owner(a.subtree)?;
                    Ok((a, owner))
                },
            )
            .await
            .map_err(status)?;
        attr_reply_owned(a, owner)
    }

    async fn get_attr(&self, r: Request<pb::GetAttrRequest>) -> Reply<pb::AttrReply> {
        let near = applied::near(&r);
        let r = r.into_inner();
        let reader = self.reader(r.session)?;
        let (a, owner) = self
            .node
            .read_in(r.stale, reader, r.ino, near, no_other, |ns| {
                let a = ns.getattr(r.ino)?;
                let owner = ns.subtree_owner(a.subtree)?;
                Ok((a, owner))
            })
            .await
            .map_err(status)?;
        attr_reply_owned(a, owner)
    }

    async fn mknod(&self, r: Request<pb::MknodRequest>) -> Reply<pb::AttrReply> {
        let r = r.into_inner();
        if r.ino != 0 {
            let fence = r.fence.clone();
            return attr_reply(self.op(fence, reserved_create(r, None)?).await?);
        }
        let kind = kind_from_wire(r.kind).map_err(wire)?;
        let op = Op::Mknod {
            parent: r.parent,
            name: r.name,
            kind,
            mode: r.mode,
            uid: r.uid,
            gid: r.gid,
            rdev: r.rdev,
        };
        attr_reply(self.op(r.fence, op).await?)
    }

    async fn mkdir(&self, r: Request<pb::MkdirRequest>) -> Reply<pb::AttrReply> {
        let r = r.into_inner();
        let op = Op::Mkdir {
            parent: r.parent,
            name: r.name,
            mode: r.mode,
            uid: r.uid,
            gid: r.gid,
        };
        attr_reply(self.op(r.fence, op).await?)
    }

    async fn symlink(&self, r: Request<pb::SymlinkRequest>) -> Reply<pb::AttrReply> {
        let r = r.into_inner();
        let op = Op::Symlink {
            parent: r.parent,
            name: r.name,
            target: r.target,
            uid: r.uid,
            gid: r.gid,
        };
        attr_reply(self.op(r.fence, op).await?)
    }

    async fn link(&self, r: Request<pb::LinkRequest>) -> Reply<pb::AttrReply> {
        let r = r.into_inner();
        let op = Op::Link {
            ino: r.ino,
            new_parent: r.new_parent,
            new_name: r.new_name,
        };
        attr_reply(self.op(r.fence, op).await?)
    }

    async fn unlink(&self, r: Request<pb::UnlinkRequest>) -> Reply<pb::UnlinkReply> {
        let r = r.into_inner();
        match self
            .op(
                r.fence,
                Op::Unlink {
                    parent: r.parent,
                    name: r.name,
                    keep_open: r.keep_open,
                },
            )
            .await?
        {
            OpReply::Unlinked { ino, nlink } => Ok(Response::new(pb::UnlinkReply { ino, nlink })),
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    async fn release_orphan(&self, r: Request<pb::ReleaseOrphanRequest>) -> Reply<pb::Empty> {
        let op = Op::ReleaseOrphan {
            ino: r.into_inner().ino,
        };
        self.op(None, op).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn rmdir(&self, r: Request<pb::RmdirRequest>) -> Reply<pb::Empty> {
        let r = r.into_inner();
        self.op(
            r.fence,
            Op::Rmdir {
                parent: r.parent,
                name: r.name,
            },
        )
        .await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn rename(&self, r: Request<pb::RenameRequest>) -> Reply<pb::Empty> {
        let r = r.into_inner();
        let op = Op::Rename {
            parent: r.parent,
            name: r.name,
            new_parent: r.new_parent,
            new_name: r.new_name,
            flags: r.flags,
        };
        self.op(r.fence, op).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn set_attr(&self, r: Request<pb::SetAttrRequest>) -> Reply<pb::AttrReply> {
        let r = r.into_inner();
        let op = Op::SetAttr {
            ino: r.ino,
            set: setattr_from_wire(&r),
        };
        attr_reply(self.op(r.fence, op).await?)
    }

    async fn read_link(&self, r: Request<pb::ReadLinkRequest>) -> Reply<pb::ReadLinkReply> {
        let near = applied::near(&r);
        let r = r.into_inner();
        let reader = self.reader(r.session)?;
        let target = self
            .node
            .read_in(r.stale, reader, r.ino, near, no_other, |ns| {
                ns.readlink(r.ino)
            })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ReadLinkReply { target }))
    }

    async fn read_dir(&self, r: Request<pb::ReadDirRequest>) -> Reply<pb::ReadDirReply> {
        let near = applied::near(&r);
        let r = r.into_inner();
        let reader = self.reader(r.session)?;
        let (entries, eof) = self
            .node
            .read_in(
                r.stale,
                reader,
                r.ino,
                near,
                |(entries, _): &(Vec<DirEntry>, bool)| {
                    entries
                        .iter()
                        .filter_map(|e| e.attr.as_ref().map(|a| a.subtree))
                        .collect()
                },
                |ns| ns.readdir(r.ino, r.cookie, r.limit, r.plus),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ReadDirReply {
            entries: entries.iter().map(Into::into).collect(),
            eof,
        }))
    }

    async fn set_xattr(&self, r: Request<pb::SetXattrRequest>) -> Reply<pb::Empty> {
        let r = r.into_inner();
        let op = Op::SetXattr {
            ino: r.ino,
            name: r.name,
            value: r.value,
            flags: r.flags,
        };
        self.op(r.fence, op).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn cas_xattr(&self, r: Request<pb::CasXattrRequest>) -> Reply<pb::Empty> {
        let r = r.into_inner();
        let op = Op::CasXattr {
            ino: r.ino,
            name: r.name,
            expected: (!r.expect_absent).then(|| serde_bytes::ByteBuf::from(r.expected)),
            value: r.value,
        };
        self.op(r.fence, op).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn get_xattr(&self, r: Request<pb::GetXattrRequest>) -> Reply<pb::GetXattrReply> {
        let near = applied::near(&r);
        let r = r.into_inner();
        let reader = self.reader(r.session)?;
        let value = self
            .node
            .read_in(r.stale, reader, r.ino, near, no_other, |ns| {
                ns.getxattr(r.ino, &r.name)
            })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetXattrReply { value }))
    }

    async fn list_xattr(&self, r: Request<pb::ListXattrRequest>) -> Reply<pb::ListXattrReply> {
        let near = applied::near(&r);
        let r = r.into_inner();
        let reader = self.reader(r.session)?;
        let names = self
            .node
            .read_in(r.stale, reader, r.ino, near, no_other, |ns| {
                ns.listxattr(r.ino)
            })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListXattrReply { names }))
    }

    async fn remove_xattr(&self, r: Request<pb::RemoveXattrRequest>) -> Reply<pb::Empty> {
        let r = r.into_inner();
        self.op(
            r.fence,
            Op::RemoveXattr {
                ino: r.ino,
                name: r.name,
            },
        )
        .await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn stat_fs(&self, r: Request<pb::StatFsRequest>) -> Reply<pb::StatFsReply> {
        let r = r.into_inner();
        let s = self
            .node
            .read(r.stale, |ns| ns.statfs())
            .await
            .map_err(status)?;
        Ok(Response::new((&s).into()))
    }

    async fn write(&self, r: Request<pb::WriteRequest>) -> Reply<pb::AttrReply> {
        let r = r.into_inner();
        let slices = r
            .slices
            .into_iter()
            .map(SliceWrite::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(wire)?;
        let checks: Vec<_> = r.checks.into_iter().map(Into::into).collect();
        let op = match r.create {
            Some(create) if create.ino == r.ino => reserved_create(create, Some((slices, checks)))?,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "a write that creates its file must name the file it creates",
                ))
            }
            None => Op::Write {
                ino: r.ino,
                slices,
                checks,
            },
        };
        attr_reply(self.op(r.fence, op).await?)
    }

    async fn open_session(&self, r: Request<pb::OpenSessionRequest>) -> Reply<pb::SessionReply> {
        let r = r.into_inner();
        let now = super::node::now_ns();
        session_reply(self.op(r.fence, Op::OpenSession).await?, now)
    }

    async fn renew_session(&self, r: Request<pb::SessionRequest>) -> Reply<pb::SessionReply> {
        let session = r.into_inner().session;
        let now = super::node::now_ns();
        session_reply(self.op(None, Op::RenewSession { session }).await?, now)
    }

    async fn reserve_inodes(
        &self,
        r: Request<pb::SessionRequest>,
    ) -> Reply<pb::ReserveInodesReply> {
        let session = r.into_inner().session;
        match self.op(None, Op::ReserveInodes { session }).await? {
            OpReply::Inodes { first, count } => {
                Ok(Response::new(pb::ReserveInodesReply { first, count }))
            }
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    async fn batch(&self, r: Request<pb::BatchRequest>) -> Reply<pb::BatchReply> {
        self.batch_items(r.into_inner()).await
    }

    async fn set_write_back(&self, r: Request<pb::WriteBackRequest>) -> Reply<pb::Empty> {
        let r = r.into_inner();
        let op = Op::SetWriteBack {
            session: r.session,
            subtree: r.subtree,
            on: r.on,
            seq: r.seq,
        };
        self.op(None, op).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn close_session(&self, r: Request<pb::SessionRequest>) -> Reply<pb::Empty> {
        let session = r.into_inner().session;
        self.op(None, Op::CloseSession { session }).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn acquire_delegation(
        &self,
        r: Request<pb::DelegationRequest>,
    ) -> Reply<pb::DelegationGrant> {
        let r = r.into_inner();
        let op = Op::AcquireDelegation {
            session: r.session,
            subtree: r.subtree,
        };
        match self.op(None, op).await? {
            OpReply::Delegation(g) => Ok(Response::new((&g).into())),
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    async fn release_delegation(&self, r: Request<pb::DelegationRequest>) -> Reply<pb::Empty> {
        let r = r.into_inner();
        let op = Op::ReleaseDelegation {
            session: r.session,
            subtree: r.subtree,
        };
        self.op(None, op).await?;
        Ok(Response::new(pb::Empty {}))
    }

    type WatchDelegationsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::DelegationGrant, Status>> + Send>,
    >;

    async fn watch_delegations(
        &self,
        r: Request<pb::SessionRequest>,
    ) -> Reply<Self::WatchDelegationsStream> {
        let session = r.into_inner().session;
        let rx = self.node.clone().watch_delegations(session);
        let stream =
            tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |g| {
                g.map(|g| pb::DelegationGrant::from(&g)).map_err(status)
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn set_lock(&self, r: Request<pb::SetLockRequest>) -> Reply<pb::Empty> {
        let r = r.into_inner();
        let q = lock_request(r.ino, r.session, r.owner, (r.start, r.end), r.kind)?;
        let wait = std::time::Duration::from_millis(u64::from(r.wait_ms));
        // The caller's site, from its certificate: the state machine refuses a session
        // of another site (`locks::check_session_site`).
        self.node
            .set_lock(super::authz::bound_site(), q, r.pid, wait)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn get_lock(&self, r: Request<pb::GetLockRequest>) -> Reply<pb::GetLockReply> {
        let r = r.into_inner();
        let q = lock_request(r.ino, r.session, r.owner, (r.start, r.end), r.kind)?;
        self.reader(q.session)?;
        let held = self.node.get_lock(r.stale, q).await.map_err(status)?;
        Ok(Response::new(match held {
            Some(h) => pb::GetLockReply {
                found: true,
                start: h.start,
                end: h.end,
                kind: if h.write {
                    lock_kind_to_wire(LockKind::Write)
                } else {
                    lock_kind_to_wire(LockKind::Read)
                } as i32,
                pid: h.pid,
            },
            None => pb::GetLockReply {
                found: false,
                kind: lock_kind_to_wire(LockKind::Unlock) as i32,
                ..Default::default()
            },
        }))
    }

    async fn read_slices(&self, r: Request<pb::ReadSlicesRequest>) -> Reply<pb::ReadSlicesReply> {
        let near = applied::near(&r);
        let r = r.into_inner();
        let reader = self.reader(r.session)?;
        let (extents, attr) = self
            .node
            .read_in(r.stale, reader, r.ino, near, no_other, |ns| {
                ns.read_slices(r.ino, r.offset, r.length)
            })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ReadSlicesReply {
            extents: extents.iter().map(Into::into).collect(),
            size: attr.size,
            attr: Some((&attr).into()),
        }))
    }
}

/// The `Cluster` service.
pub struct ClusterSvc {
    pub node: Arc<MetaNode>,
}

impl ClusterSvc {
    fn status(&self) -> Reply<pb::StatusReply> {
        Ok(Response::new(self.node.status()))
    }
}

#[tonic::async_trait]
impl Cluster for ClusterSvc {
    async fn status(&self, _: Request<pb::StatusRequest>) -> Reply<pb::StatusReply> {
        ClusterSvc::status(self)
    }

    async fn init(&self, _: Request<pb::InitRequest>) -> Reply<pb::StatusReply> {
        self.node.init().await.map_err(status)?;
        ClusterSvc::status(self)
    }

    async fn add_learner(&self, r: Request<pb::AddLearnerRequest>) -> Reply<pb::StatusReply> {
        let r = r.into_inner();
        self.node.add_learner(r.id, r.addr).await.map_err(status)?;
        ClusterSvc::status(self)
    }

    async fn promote(&self, r: Request<pb::PromoteRequest>) -> Reply<pb::StatusReply> {
        self.node.promote(r.into_inner().id).await.map_err(status)?;
        ClusterSvc::status(self)
    }

    async fn remove_member(&self, r: Request<pb::RemoveMemberRequest>) -> Reply<pb::StatusReply> {
        self.node.remove(r.into_inner().id).await.map_err(status)?;
        ClusterSvc::status(self)
    }

    async fn register_data_node(
        &self,
        r: Request<pb::RegisterDataNodeRequest>,
    ) -> Reply<pb::RegisterDataNodeReply> {
        let node = r
            .into_inner()
            .node
            .ok_or_else(|| Status::invalid_argument("no node given"))?;
        super::authz::own_site(&node.site)?;
        let op = Op::RegisterDataNode { node: node.into() };
        match self.node.propose(None, op).await.map_err(status)? {
            OpReply::GcGen(gc_gen) => Ok(Response::new(pb::RegisterDataNodeReply { gc_gen })),
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    async fn condemn(&self, r: Request<pb::CondemnRequest>) -> Reply<pb::CondemnReply> {
        let r = r.into_inner();
        let op = Op::Condemn {
            node: r.node,
            hashes: hashes_from_wire(&r.hashes).map_err(wire)?,
            grace_ns: r.grace_ns,
        };
        match self.node.propose(None, op).await.map_err(status)? {
            OpReply::Condemned { hashes, gc_gen } => Ok(Response::new(pb::CondemnReply {
                condemned: hashes_to_wire(&hashes),
                gc_gen,
            })),
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    async fn forget_condemned(
        &self,
        r: Request<pb::ForgetCondemnedRequest>,
    ) -> Reply<pb::ForgetCondemnedReply> {
        let r = r.into_inner();
        let op = Op::ForgetCondemned {
            node: r.node,
            hashes: hashes_from_wire(&r.hashes).map_err(wire)?,
        };
        match self.node.propose(None, op).await.map_err(status)? {
            OpReply::GcGen(gc_gen) => Ok(Response::new(pb::ForgetCondemnedReply { gc_gen })),
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    async fn chunk_refs(&self, r: Request<pb::ChunkRefsRequest>) -> Reply<pb::ChunkRefsReply> {
        let r = r.into_inner();
        let hashes = hashes_from_wire(&r.hashes).map_err(wire)?;
        let refs = self
            .node
            .read(r.stale, |ns| ns.chunk_refs(&hashes))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ChunkRefsReply {
            refs: refs.iter().map(|(n, _)| *n).collect(),
            zero_since_ns: refs.iter().map(|(_, t)| *t).collect(),
            now_ns: super::node::now_ns(),
        }))
    }

    async fn fsck(&self, _: Request<pb::FsckRequest>) -> Reply<pb::FsckReply> {
        let r = self.node.fsck().await.map_err(status)?;
        Ok(Response::new(fsck_to_wire(r)))
    }

    async fn list_chunks(&self, r: Request<pb::ListChunksRequest>) -> Reply<pb::ListChunksReply> {
        let r = r.into_inner();
        let after = if r.after.is_empty() {
            None
        } else {
            Some(
                ChunkHash::from_slice(&r.after)
                    .ok_or_else(|| Status::invalid_argument("`after` is not a 32-byte hash"))?,
            )
        };
        let (chunks, eof) = self
            .node
            .read(false, |ns| {
                ns.referenced_chunks(after.as_ref(), r.limit as usize)
            })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListChunksReply {
            hashes: chunks.iter().map(|(h, _)| h.0.to_vec()).collect(),
            refs: chunks.iter().map(|(_, n)| *n).collect(),
            eof,
        }))
    }

    async fn create_subtree(
        &self,
        r: Request<pb::CreateSubtreeRequest>,
    ) -> Reply<pb::SubtreeReply> {
        let r = r.into_inner();
        let op = Op::CreateSubtree {
            root: r.root,
            owner: site_arg(r.owner, "the owner")?,
        };
        subtree_reply(self.node.propose(None, op).await.map_err(status)?)
    }

    async fn relabel_subtree(
        &self,
        r: Request<pb::RelabelSubtreeRequest>,
    ) -> Reply<pb::SubtreeReply> {
        let r = r.into_inner();
        let op = Op::RelabelSubtree {
            root: r.root,
            limit: if r.limit == 0 { 1000 } else { r.limit },
        };
        subtree_reply(self.node.propose(None, op).await.map_err(status)?)
    }

    async fn move_subtree(&self, r: Request<pb::MoveSubtreeRequest>) -> Reply<pb::SubtreeReply> {
        let r = r.into_inner();
        let to = site_arg(r.to, "the target")?;
        let op = match r.data.as_str() {
            "" | "eager" => Op::MoveSubtree {
                root: r.root,
                to,
                force: r.force,
            },
            mode => Op::MoveSubtreeWith {
                root: r.root,
                to,
                force: r.force,
                data: mobilus_proto::fs::DataMode::parse(mode).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "data {mode:?}: expected eager, lazy, on-demand, pinned or profile"
                    ))
                })?,
            },
        };
        let reply = self.node.propose(None, op).await.map_err(status)?;
        let kind = if r.force { "takeover" } else { "move" };
        metrics::counter!("mobilus_meta_subtree_moves_total", "kind" => kind).increment(1);
        subtree_reply(reply)
    }

    async fn set_subtree_policy(
        &self,
        r: Request<pb::SetSubtreePolicyRequest>,
    ) -> Reply<pb::SubtreeReply> {
        let r = r.into_inner();
        let op = Op::SetSubtreePolicy {
            root: r.root,
            follow_writer_hold_ns: r.follow_writer_hold_ns,
        };
        subtree_reply(self.node.propose(None, op).await.map_err(status)?)
    }

    async fn get_subtree(&self, r: Request<pb::GetSubtreeRequest>) -> Reply<pb::SubtreeReply> {
        let r = r.into_inner();
        let s = self
            .node
            .read(r.stale, |ns| ns.subtree(r.root))
            .await
            .map_err(status)?;
        Ok(Response::new(subtree_to_wire(&s)))
    }

    async fn get_subtree_usage(
        &self,
        r: Request<pb::GetSubtreeRequest>,
    ) -> Reply<pb::SubtreeUsage> {
        let u = self
            .node
            .subtree_usage(r.into_inner().root)
            .await
            .map_err(status)?;
        Ok(Response::new((&u).into()))
    }

    async fn list_subtrees(
        &self,
        r: Request<pb::ListSubtreesRequest>,
    ) -> Reply<pb::ListSubtreesReply> {
        let r = r.into_inner();
        let all = self
            .node
            .read(r.stale, |ns| ns.subtrees())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListSubtreesReply {
            subtrees: all.iter().map(Into::into).collect(),
        }))
    }

    async fn set_placement(
        &self,
        r: Request<pb::SetPlacementRequest>,
    ) -> Reply<pb::PlacementReply> {
        super::replication::set_placement(&self.node, r.into_inner()).await
    }

    async fn get_placement(&self, r: Request<pb::GetSubtreeRequest>) -> Reply<pb::PlacementReply> {
        super::replication::get_placement(&self.node, r.into_inner()).await
    }

    async fn read_feed(&self, r: Request<pb::ReadFeedRequest>) -> Reply<pb::ReadFeedReply> {
        super::replication::read_feed(&self.node, r.into_inner()).await
    }

    async fn scan_subtree_chunks(
        &self,
        r: Request<pb::ScanSubtreeChunksRequest>,
    ) -> Reply<pb::ScanSubtreeChunksReply> {
        super::replication::scan(&self.node, r.into_inner()).await
    }

    async fn ack_feed(&self, r: Request<pb::AckFeedRequest>) -> Reply<pb::AckFeedReply> {
        super::replication::ack(&self.node, r.into_inner()).await
    }

    async fn replication_status(
        &self,
        r: Request<pb::ReplicationStatusRequest>,
    ) -> Reply<pb::ReplicationStatusReply> {
        super::replication::status(&self.node, r.into_inner()).await
    }

    async fn start_clone(&self, r: Request<pb::StartCloneRequest>) -> Reply<pb::CloneReply> {
        super::clones::start(&self.node, r.into_inner()).await
    }

    async fn clone_step(&self, r: Request<pb::CloneStepRequest>) -> Reply<pb::CloneReply> {
        super::clones::step(&self.node, r.into_inner()).await
    }

    async fn abort_clone_step(&self, r: Request<pb::CloneStepRequest>) -> Reply<pb::CloneReply> {
        super::clones::abort_step(&self.node, r.into_inner()).await
    }

    async fn list_clones(&self, r: Request<pb::ListClonesRequest>) -> Reply<pb::ListClonesReply> {
        super::clones::list(&self.node, r.into_inner()).await
    }

    async fn start_refresh(&self, r: Request<pb::CloneStepRequest>) -> Reply<pb::CloneReply> {
        super::clones::start_refresh(&self.node, r.into_inner()).await
    }

    async fn create_snapshot(&self, r: Request<pb::SnapshotRequest>) -> Reply<pb::CloneReply> {
        super::clones::create_snapshot(&self.node, r.into_inner()).await
    }

    async fn remove_snapshot(&self, r: Request<pb::SnapshotRequest>) -> Reply<pb::CloneReply> {
        super::clones::remove_snapshot(&self.node, r.into_inner()).await
    }

    async fn list_snapshots(
        &self,
        r: Request<pb::ListSnapshotsRequest>,
    ) -> Reply<pb::ListSnapshotsReply> {
        super::clones::list_snapshots(&self.node, r.into_inner()).await
    }

    async fn list_data_nodes(
        &self,
        r: Request<pb::ListDataNodesRequest>,
    ) -> Reply<pb::ListDataNodesReply> {
        let r = r.into_inner();
        let site = (!r.site.is_empty()).then_some(r.site);
        let nodes = self
            .node
            .read(r.stale, |ns| ns.data_nodes(site.as_deref()))
            .await
            .map_err(status)?;
        let now_ns = super::node::now_ns();
        Ok(Response::new(pb::ListDataNodesReply {
            nodes: nodes.iter().map(Into::into).collect(),
            now_ns,
        }))
    }

    async fn set_node_draining(
        &self,
        r: Request<pb::SetNodeDrainingRequest>,
    ) -> Reply<pb::DataNode> {
        let r = r.into_inner();
        let op = Op::SetNodeDraining {
            addr: r.addr,
            draining: r.draining,
        };
        match self.node.propose(None, op).await.map_err(status)? {
            OpReply::DataNode(n) => Ok(Response::new((&n).into())),
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    async fn set_profile(&self, r: Request<pb::SetProfileRequest>) -> Reply<pb::ProfileReply> {
        super::replication::set_profile(&self.node, r.into_inner()).await
    }

    async fn arm_profile(&self, r: Request<pb::ArmProfileRequest>) -> Reply<pb::ProfileReply> {
        let r = r.into_inner();
        let op = Op::ArmProfile {
            root: r.root,
            record: r.record,
        };
        super::replication::profile_reply(self.node.propose(None, op).await.map_err(status)?)
    }

    async fn get_profile(&self, r: Request<pb::GetSubtreeRequest>) -> Reply<pb::ProfileReply> {
        let r = r.into_inner();
        let p = self
            .node
            .read(r.stale, |ns| ns.profile(r.root))
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::ProfileReply {
            profile: Some((&p).into()),
        }))
    }

    async fn remove_data_node(&self, r: Request<pb::RemoveDataNodeRequest>) -> Reply<pb::DataNode> {
        let op = Op::RemoveDataNode {
            addr: r.into_inner().addr,
        };
        match self.node.propose(None, op).await.map_err(status)? {
            OpReply::DataNode(n) => Ok(Response::new((&n).into())),
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    async fn set_site_replicas(
        &self,
        r: Request<pb::SetSiteReplicasRequest>,
    ) -> Reply<pb::SetSiteReplicasReply> {
        let r = r.into_inner();
        let op = Op::SetSiteReplicas {
            site: site_arg(r.site, "the site")?,
            replicas: r.replicas,
        };
        match self.node.propose(None, op).await.map_err(status)? {
            OpReply::Count(n) => Ok(Response::new(pb::SetSiteReplicasReply {
                replicas: u32::try_from(n).unwrap_or(u32::MAX),
            })),
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    async fn trigger_snapshot(
        &self,
        _: Request<pb::TriggerSnapshotRequest>,
    ) -> Reply<pb::StatusReply> {
        if self.node.status().state != "Leader" {
            return Err(MetaError::NotLeader(self.node.leader().map(|(_, a)| a)).to_status());
        }
        self.node.trigger_snapshot().await.map_err(status)?;
        ClusterSvc::status(self)
    }
}

/// The `Raft` service: openraft's RPCs, and forwarded writes.
pub struct RaftSvc {
    pub node: Arc<MetaNode>,
}

fn decode<T: DeserializeOwned>(r: Request<pb::RaftBytes>) -> Result<T, Status> {
    codec::decode(&r.into_inner().data).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn encode<T: Serialize>(v: &T) -> Reply<pb::RaftBytes> {
    let data = codec::encode(v).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(pb::RaftBytes { data }))
}

impl RaftSvc {
    /// Drop traffic from a blocked peer, as if the network had lost it.
    fn admit(&self, from: NodeId) -> Result<(), Status> {
        if self.node.faults.is_blocked(from) {
            return Err(Status::unavailable(format!(
                "traffic from {from} is blocked"
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftSvc {
    async fn append_entries(&self, r: Request<pb::RaftBytes>) -> Reply<pb::RaftBytes> {
        let req: openraft::raft::AppendEntriesRequest<crate::types::TypeConfig> = decode(r)?;
        self.admit(req.vote.leader_id().voted_for().unwrap_or_default())?;
        encode(&self.node.raft.append_entries(req).await)
    }

    async fn vote(&self, r: Request<pb::RaftBytes>) -> Reply<pb::RaftBytes> {
        let req: openraft::raft::VoteRequest<NodeId> = decode(r)?;
        self.admit(req.vote.leader_id().voted_for().unwrap_or_default())?;
        if let Some(why) = self.node.refuse_vote() {
            // An error, not a denial: the candidate counts neither, and retries later.
            return Err(Status::unavailable(format!("vote refused: {why}")));
        }
        encode(&self.node.raft.vote(req).await)
    }

    async fn install_snapshot(&self, r: Request<pb::RaftBytes>) -> Reply<pb::RaftBytes> {
        let req: openraft::raft::InstallSnapshotRequest<crate::types::TypeConfig> = decode(r)?;
        self.admit(req.vote.leader_id().voted_for().unwrap_or_default())?;
        encode(&self.node.raft.install_snapshot(req).await)
    }

    async fn forward(&self, r: Request<pb::RaftBytes>) -> Reply<pb::RaftBytes> {
        let reply = self
            .node
            .accept_forwarded(&r.into_inner().data)
            .await
            .map_err(status)?;
        encode(&reply)
    }
}

fn fsck_to_wire(r: crate::namespace::FsckReport) -> pb::FsckReply {
    pb::FsckReply {
        inodes: r.inodes,
        directories: r.directories,
        files: r.files,
        symlinks: r.symlinks,
        others: r.others,
        dentries: r.dentries,
        orphans: r.orphans,
        slices: r.slices,
        referenced_chunks: r.referenced_chunks,
        chunk_references: r.chunk_references,
        problem_count: r.problem_count,
        problems: r.problems,
    }
}
