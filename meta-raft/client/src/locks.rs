//! Advisory locks and the sessions that hold them (see the `SetLock` RPC).

use std::time::Duration;

use mobilus_proto::convert::{lock_kind_from_wire, lock_kind_to_wire};
use mobilus_proto::fs::{DelegationGrant, HeldLock, LockKind, LockRequest};
use mobilus_proto::pb;

use crate::{ClientError, MetaClient};

impl MetaClient {
    /// Open a lock session for this client's site; returns it and its lease.
    pub async fn open_session(&self) -> Result<(u64, Duration), ClientError> {
        let req = pb::OpenSessionRequest {
            fence: self.fence(None),
        };
        let r = self
            .call("open_session", |ch| {
                let req = req.clone();
                async move { Self::meta(ch).open_session(req).await }
            })
            .await?
            .into_inner();
        Ok((r.session, Duration::from_millis(r.lease_ms)))
    }

    /// Extend a session's lease; ENOLCK if it has already ended (its locks and
    /// delegations are gone). Answers the lease and the delegations it still holds.
    pub async fn renew_session(
        &self,
        session: u64,
    ) -> Result<(Duration, Vec<DelegationGrant>), ClientError> {
        let req = pb::SessionRequest { session };
        let r = self
            .call("renew_session", |ch| async move {
                Self::meta(ch).renew_session(req).await
            })
            .await?
            .into_inner();
        let grants = r.delegations.iter().map(DelegationGrant::from).collect();
        Ok((Duration::from_millis(r.lease_ms), grants))
    }

    /// Take (or renew) `subtree`'s delegation for `session`: refused unless the session's
    /// site owns the subtree and no other session holds it.
    pub async fn acquire_delegation(
        &self,
        session: u64,
        subtree: u64,
    ) -> Result<DelegationGrant, ClientError> {
        let req = pb::DelegationRequest { session, subtree };
        let r = self
            .call("acquire_delegation", |ch| async move {
                Self::meta(ch).acquire_delegation(req).await
            })
            .await?
            .into_inner();
        Ok(DelegationGrant::from(&r))
    }

    /// Give `subtree`'s delegation back.
    pub async fn release_delegation(&self, session: u64, subtree: u64) -> Result<(), ClientError> {
        let req = pb::DelegationRequest { session, subtree };
        self.call("release_delegation", |ch| async move {
            Self::meta(ch).release_delegation(req).await
        })
        .await?;
        Ok(())
    }

    /// Say whether `session`, the holder of `subtree`'s delegation, has closes answered
    /// before their writes commit (`on`): while it has, other sessions' reads of the
    /// subtree recall the delegation first. `seq` must grow with every call for the
    /// session: one applied after a later one is void.
    pub async fn set_write_back(
        &self,
        session: u64,
        subtree: u64,
        on: bool,
        seq: u64,
    ) -> Result<(), ClientError> {
        let req = pb::WriteBackRequest {
            session,
            subtree,
            on,
            seq,
        };
        self.call("set_write_back", |ch| async move {
            Self::meta(ch).set_write_back(req).await
        })
        .await?;
        Ok(())
    }

    /// The recalls of `session`'s delegations, as a stream from one member (the current
    /// ones first). The stream ends when that member goes: open another.
    pub async fn watch_delegations(
        &self,
        session: u64,
    ) -> Result<tonic::Streaming<pb::DelegationGrant>, ClientError> {
        let req = pb::SessionRequest { session };
        let r = self
            .call("watch_delegations", |ch| async move {
                Self::meta(ch).watch_delegations(req).await
            })
            .await?;
        Ok(r.into_inner())
    }

    /// End a session, releasing every lock it holds.
    pub async fn close_session(&self, session: u64) -> Result<(), ClientError> {
        let req = pb::SessionRequest { session };
        self.call("close_session", |ch| async move {
            Self::meta(ch).close_session(req).await
        })
        .await?;
        Ok(())
    }

    /// Take, change or release a lock. A conflicting lock answers EAGAIN, after the
    /// member waited up to `wait` (it caps the wait at a few seconds; ask again to wait
    /// longer). Retrying a request is harmless: the same request sets the same state.
    pub async fn set_lock(
        &self,
        r: LockRequest,
        pid: u32,
        wait: Duration,
    ) -> Result<(), ClientError> {
        let req = pb::SetLockRequest {
            ino: r.ino,
            session: r.session,
            owner: r.owner,
            start: r.start,
            end: r.end,
            kind: lock_kind_to_wire(r.kind) as i32,
            pid,
            wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        };
        self.call("set_lock", |ch| async move {
            Self::meta(ch).set_lock(req).await
        })
        .await?;
        Ok(())
    }

    /// F_GETLK: the lock of another owner that `r` would conflict with, if any.
    pub async fn get_lock(&self, r: LockRequest) -> Result<Option<HeldLock>, ClientError> {
        self.get_lock_as_of(r, false).await
    }

    /// [`MetaClient::get_lock`]; `stale`: from whatever member answers, as it stands, and
    /// without recalling a delegation whose holder grants locks itself (so it shows only
    /// what the metadata holds: tools, tests).
    pub async fn get_lock_as_of(
        &self,
        r: LockRequest,
        stale: bool,
    ) -> Result<Option<HeldLock>, ClientError> {
        let req = pb::GetLockRequest {
            ino: r.ino,
            session: r.session,
            owner: r.owner,
            start: r.start,
            end: r.end,
            kind: lock_kind_to_wire(r.kind) as i32,
            stale,
        };
        let g = self
            .call("get_lock", |ch| async move {
                Self::meta(ch).get_lock(req).await
            })
            .await?
            .into_inner();
        if !g.found {
            return Ok(None);
        }
        let kind = lock_kind_from_wire(g.kind)?;
        Ok(Some(HeldLock {
            start: g.start,
            end: g.end,
            write: kind == LockKind::Write,
            pid: g.pid,
        }))
    }
}
