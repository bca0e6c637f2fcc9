//! A running member: typed operations that the gRPC adapters, tests and tools call.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mobilus_proto::convert::Issuer;
use mobilus_proto::fs::Fence;
use mobilus_proto::pb;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use tracing::instrument;

use super::proposer::Proposer;
use super::read_index::ReadIndex;
use crate::codec;
use crate::error::{MetaError, NsError};
use crate::namespace::Namespace;
use crate::network::{ChannelPool, NetFaults};
use crate::store::{LogStats, StateMachine};
use crate::types::{Command, NodeId, Op, OpError, OpReply, Raft, Reply};

/// Timeouts of a member's client-facing operations.
#[derive(Clone, Debug)]
pub struct NodeTimeouts {
    /// Longest a write waits to commit before answering Unavailable.
    pub write: Duration,
    /// Longest a linearizable read waits for its read index.
    pub read: Duration,
}

impl Default for NodeTimeouts {
    fn default() -> Self {
        NodeTimeouts {
            write: Duration::from_secs(8),
            read: Duration::from_secs(5),
        }
    }
}

/// A forwarded mutation, as a follower sends it to the leader.
#[derive(Serialize, Deserialize, Debug)]
pub struct Forwarded {
    pub site: Option<String>,
    pub fence: Option<Fence>,
    pub op: Op,
    pub session: Option<u64>,
    pub holder_only: bool,
}

/// The leader's answer to a forwarded mutation.
#[derive(Serialize, Deserialize, Debug)]
pub enum ForwardReply {
    /// The reply, and the leader's log index it is as new as (`applied.rs`).
    Applied(Reply, u64),
    NotLeader(Option<String>),
    Unavailable(String),
}

pub struct MetaNode {
    pub id: NodeId,
    pub addr: String,
    pub raft: Raft,
    pub sm: StateMachine,
    pub log_stats: Arc<LogStats>,
    pub faults: Arc<NetFaults>,
    pub(crate) pool: Arc<ChannelPool>,
    pub(crate) proposer: Proposer,
    pub timeouts: NodeTimeouts,
    /// See `NodeConfig::unsafe_local_reads`.
    pub unsafe_local_reads: bool,
    pub(crate) read_index: Arc<ReadIndex>,
    /// A member that restarted refuses votes until then (see `refuse_vote`).
    pub(crate) vote_gate_until: Option<tokio::time::Instant>,
    /// Delegation holders' reads this member answered from its own state.
    pub(crate) holder_reads: std::sync::atomic::AtomicU64,
    /// Changes this member answered as items of a `Batch` call.
    pub(crate) batched_items: std::sync::atomic::AtomicU64,
}

/// The leader's id and address, as `raft` knows them.
pub(crate) fn known_leader(raft: &Raft) -> Option<(NodeId, String)> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    let id = m.current_leader?;
    let addr = m
        .membership_config
        .membership()
        .get_node(&id)
        .map(|n| n.addr.clone())?;
    Some((id, addr))
}

/// How long a delegation holder's read waits for this member to apply what the holder
/// has seen, before it goes to the leader instead.
const HOLDER_READ_WAIT: Duration = Duration::from_secs(1);

fn holder_read(outcome: &'static str) {
    metrics::counter!("mobilus_meta_holder_reads_total", "outcome" => outcome).increment(1);
}

/// Set by the hidden `--unsafe-holder-reads-ignore-applied` (a deliberate bug a test must
/// catch): a holder's read at a member answers from whatever that member has applied.
static HOLDER_READS_IGNORE_APPLIED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// TEST ONLY: holders' reads at this process's members do not wait for what the holder
/// has seen (`on`), or do again.
pub fn holder_reads_ignore_applied_for_tests(on: bool) {
    HOLDER_READS_IGNORE_APPLIED.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// The wall clock in nanoseconds: the leader stamps commands with it.
pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn reply_to_result(reply: Reply) -> Result<OpReply, MetaError> {
    reply.map_err(MetaError::Op)
}

impl MetaNode {
    /// The leader's id and address, as this member knows them.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        known_leader(&self.raft)
    }

    fn leader_addr(&self) -> Option<String> {
        self.leader().map(|(_, a)| a)
    }

    /// Propose a mutation: on the leader it is stamped and committed; a follower forwards
    /// it to the leader once, and answers NotLeader if that is not possible.
    #[instrument(skip(self, op), fields(op = op.name()))]
    pub async fn propose(&self, fence: Option<Fence>, op: Op) -> Result<OpReply, MetaError> {
        self.propose_as(None, fence, op).await
    }

    /// Propose a mutation issued by `site` (a mount's): the ownership check judges it by
    /// that site.
    #[instrument(skip(self, op), fields(op = op.name()))]
    pub async fn propose_as(
        &self,
        site: Option<String>,
        fence: Option<Fence>,
        op: Op,
    ) -> Result<OpReply, MetaError> {
        let issuer = Issuer {
            site,
            ..Issuer::default()
        };
        self.propose_by(issuer, fence, op).await
    }

    /// Propose a mutation issued by `site` and mount `session`. A refusal because
    /// another session holds the subtree's delegation is not final: this member recalls
    /// the delegation, waits until it is given back or runs out, and proposes again
    /// (`server/delegations.rs`).
    pub async fn propose_by(
        &self,
        issuer: Issuer,
        fence: Option<Fence>,
        op: Op,
    ) -> Result<OpReply, MetaError> {
        let deadline = tokio::time::Instant::now() + super::delegations::MAX_RECALL_WAIT;
        loop {
            let result = self.propose_once(issuer.clone(), fence, op.clone()).await;
            match result {
                Err(MetaError::Op(OpError::Delegated { subtree, .. }))
                    if tokio::time::Instant::now() < deadline =>
                {
                    self.recall_and_wait(subtree, issuer.session, deadline)
                        .await?;
                }
                other => return other,
            }
        }
    }

    pub(super) async fn propose_once(
        &self,
        issuer: Issuer,
        fence: Option<Fence>,
        op: Op,
    ) -> Result<OpReply, MetaError> {
        super::applied::note_forwarded(None);
        match self.propose_local(issuer.clone(), fence, op.clone()).await {
            Err(MetaError::NotLeader(Some(leader))) if leader != self.addr => {
                let fwd = Forwarded {
                    site: issuer.site,
                    session: issuer.session,
                    fence,
                    op,
                    holder_only: issuer.holder_only,
                };
                self.forward(&leader, fwd).await
            }
            other => other,
        }
    }

    /// Propose on this member only (the leader's half of forwarding).
    pub async fn propose_local(
        &self,
        issuer: Issuer,
        fence: Option<Fence>,
        op: Op,
    ) -> Result<OpReply, MetaError> {
        let name = op.name();
        let start = std::time::Instant::now();
        let cmd = Command {
            time_ns: now_ns(),
            site: issuer.site,
            session: issuer.session,
            fence,
            op,
            holder_only: issuer.holder_only,
        };
        let result =
            match tokio::time::timeout(self.timeouts.write, self.proposer.propose(cmd)).await {
                Err(_) => Err(MetaError::Unavailable(format!(
                    "not committed within {:?} (no quorum?); it may still commit",
                    self.timeouts.write
                ))),
                Ok(result) => result.and_then(reply_to_result),
            };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(MetaError::Op(OpError::NotOwner { .. })) => "not_owner",
            Err(MetaError::Op(OpError::LeaseExpired { .. })) => "lease_expired",
            Err(MetaError::Op(OpError::StaleEpoch { .. })) => "stale_epoch",
            Err(MetaError::Op(OpError::Delegated { .. })) => "delegated",
            Err(MetaError::Op(_)) => "refused",
            Err(MetaError::NotLeader(_)) => "not_leader",
            Err(_) => "unavailable",
        };
        metrics::counter!("mobilus_meta_proposals_total", "op" => name, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("mobilus_meta_commit_seconds", "op" => name)
            .record(start.elapsed().as_secs_f64());
        result
    }

    async fn forward(&self, leader: &str, fwd: Forwarded) -> Result<OpReply, MetaError> {
        let data = codec::encode(&fwd).map_err(|e| MetaError::Raft(e.to_string()))?;
        let mut client = self
            .pool
            .raft_client(leader)
            .map_err(|e| MetaError::Unavailable(e.to_string()))?;
        let mut req = tonic::Request::new(pb::RaftBytes { data });
        req.set_timeout(self.timeouts.write + Duration::from_secs(1));
        let bytes = match client.forward(req).await {
            Ok(r) => r.into_inner().data,
            // The leader may have just changed: let the client find the new one.
            Err(_) => return Err(MetaError::NotLeader(Some(leader.to_string()))),
        };
        match codec::decode::<ForwardReply>(&bytes).map_err(|e| MetaError::Raft(e.to_string()))? {
            ForwardReply::Applied(reply, index) => {
                super::applied::note(index);
                if reply.is_ok() {
                    super::applied::note_forwarded(Some(leader));
                }
                reply_to_result(reply)
            }
            ForwardReply::NotLeader(l) => Err(MetaError::NotLeader(l)),
            ForwardReply::Unavailable(m) => Err(MetaError::Unavailable(m)),
        }
    }

    /// Apply a forwarded mutation (on the leader).
    pub async fn accept_forwarded(&self, bytes: &[u8]) -> Result<ForwardReply, MetaError> {
        let fwd: Forwarded =
            codec::decode(bytes).map_err(|e| MetaError::InvalidRequest(e.to_string()))?;
        Ok(
            match self
                .propose_local(
                    Issuer {
                        site: fwd.site,
                        session: fwd.session,
                        holder_only: fwd.holder_only,
                    },
                    fwd.fence,
                    fwd.op,
                )
                .await
            {
                Ok(r) => ForwardReply::Applied(Ok(r), super::applied::noted()),
                Err(MetaError::Op(e)) => ForwardReply::Applied(Err(e), super::applied::noted()),
                Err(MetaError::NotLeader(l)) => ForwardReply::NotLeader(l),
                Err(e) => ForwardReply::Unavailable(e.to_string()),
            },
        )
    }

    /// Run a read against the state machine: linearizable (read index confirmed by a
    /// quorum, then applied up to it) unless `stale`, which reads local state as it is.
    #[instrument(skip(self, read))]
    pub async fn read<T>(
        &self,
        stale: bool,
        read: impl FnOnce(&Namespace) -> Result<T, NsError>,
    ) -> Result<T, MetaError> {
        if !stale && !self.unsafe_local_reads {
            self.ensure_linearizable().await?;
        }
        self.note_applied();
        Ok(read(&self.sm.namespace())?)
    }

    /// The reply being built is as new as this member's applied state (`applied.rs`).
    fn note_applied(&self) {
        if let Some(applied) = self.sm.last_applied() {
            super::applied::note(applied.index);
        }
    }

    /// A read of inode `ino` (or of its entries) by mount session `reader`: as
    /// [`MetaNode::read`], and, unless `stale`, after recalling the delegation of its
    /// subtree if another session holds it with closes not yet committed (close-to-open
    /// across mounts, `server/delegations.rs`).
    ///
    /// `near`: the reader holds the delegation of `ino`'s subtree and has seen replies as
    /// new as this log index (`applied.rs`). Once this member has applied that much, and
    /// its state shows the reader holding the delegation, it answers from that state with
    /// no round to the leader, on any member. `also` names the other subtrees the answer
    /// speaks for (a lookup's child may be a subtree's root), which must be held too.
    /// Otherwise the read goes the usual way.
    pub async fn read_in<T>(
        &self,
        stale: bool,
        reader: Option<u64>,
        ino: mobilus_proto::fs::InodeId,
        near: Option<u64>,
        also: impl Fn(&T) -> Vec<mobilus_proto::fs::SubtreeId>,
        read: impl Fn(&Namespace) -> Result<T, NsError>,
    ) -> Result<T, MetaError> {
        if let (Some(min_applied), Some(session), false) = (near, reader, stale) {
            if let Some(answer) = self
                .read_as_holder(session, min_applied, ino, &also, &read)
                .await
            {
                return answer;
            }
        }
        if !stale {
            if !self.unsafe_local_reads {
                self.ensure_linearizable().await?;
            }
            self.wait_for_write_back(ino, reader).await?;
        }
        self.note_applied();
        Ok(read(&self.sm.namespace())?)
    }

    /// [`MetaNode::read_in`]'s read for a delegation's holder, from this member's state;
    /// `None` when it cannot be answered so.
    async fn read_as_holder<T>(
        &self,
        session: u64,
        min_applied: u64,
        ino: mobilus_proto::fs::InodeId,
        also: &impl Fn(&T) -> Vec<mobilus_proto::fs::SubtreeId>,
        read: &impl Fn(&Namespace) -> Result<T, NsError>,
    ) -> Option<Result<T, MetaError>> {
        let applied = |sm: &crate::store::StateMachine| sm.last_applied().map_or(0, |l| l.index);
        if applied(&self.sm) < min_applied
            && !HOLDER_READS_IGNORE_APPLIED.load(std::sync::atomic::Ordering::Relaxed)
        {
            let waited = self
                .raft
                .wait(Some(HOLDER_READ_WAIT))
                .applied_index_at_least(Some(min_applied), "a delegation holder's read")
                .await;
            if waited.is_err() {
                holder_read("behind");
                return None;
            }
        }
        let ns = self.sm.namespace();
        let held = |subtree| ns.held_by(subtree, session).unwrap_or(false);
        let Ok(subtree) = ns.getattr(ino).map(|a| a.subtree) else {
            holder_read("unknown");
            return None;
        };
        if !held(subtree) {
            holder_read("not_held");
            return None;
        }
        let answer = read(&ns);
        if let Ok(t) = &answer {
            if also(t)
                .into_iter()
                .any(|other| other != subtree && !held(other))
            {
                holder_read("not_held");
                return None;
            }
        }
        holder_read("answered");
        self.holder_reads.fetch_add(1, Ordering::Relaxed);
        super::applied::note(applied(&self.sm).max(min_applied));
        Some(answer.map_err(MetaError::from))
    }

    /// F_GETLK for `q`: a linearizable read, after the delegation of the file's subtree,
    /// if another session holds it, has come back with the locks its holder granted.
    pub async fn get_lock(
        &self,
        stale: bool,
        q: mobilus_proto::fs::LockRequest,
    ) -> Result<Option<mobilus_proto::fs::HeldLock>, MetaError> {
        if !stale {
            if !self.unsafe_local_reads {
                self.ensure_linearizable().await?;
            }
            self.wait_for_delegated_locks(q.ino, Some(q.session))
                .await?;
        }
        Ok(self.sm.namespace().get_lock(q)?)
    }

    /// `fsck` of the namespace as of now (a linearizable point), off the async threads:
    /// it reads every key.
    #[instrument(skip(self))]
    pub async fn fsck(&self) -> Result<crate::namespace::FsckReport, MetaError> {
        self.ensure_linearizable().await?;
        let ns = self.sm.namespace();
        tokio::task::spawn_blocking(move || ns.fsck())
            .await
            .map_err(|e| MetaError::Unavailable(format!("fsck task: {e}")))?
            .map_err(MetaError::from)
    }

    /// What subtree `root` holds of the data, as of now (a linearizable point), off the
    /// async threads: it walks the subtree.
    pub async fn subtree_usage(
        &self,
        root: mobilus_proto::fs::SubtreeId,
    ) -> Result<mobilus_proto::fs::SubtreeUsage, MetaError> {
        self.ensure_linearizable().await?;
        let ns = self.sm.namespace();
        tokio::task::spawn_blocking(move || ns.subtree_usage(root))
            .await
            .map_err(|e| MetaError::Unavailable(format!("usage task: {e}")))?
            .map_err(MetaError::from)
    }

    /// Every chunk of subtree `root` and the feed's next entry, in one view (a walk of
    /// the subtree: off the async threads).
    pub async fn subtree_chunks(
        &self,
        root: mobilus_proto::fs::SubtreeId,
        stale: bool,
    ) -> Result<(Vec<mobilus_proto::fs::FeedChunk>, u64), MetaError> {
        if !stale {
            self.ensure_linearizable().await?;
        }
        let ns = self.sm.namespace();
        tokio::task::spawn_blocking(move || ns.subtree_chunks(root))
            .await
            .map_err(|e| MetaError::Unavailable(format!("scan task: {e}")))?
            .map_err(MetaError::from)
    }

    /// Wait until a read of the local state is linearizable: under the leader's read
    /// lease at once, else after a (shared) read-index round (`read_index.rs`).
    pub async fn ensure_linearizable(&self) -> Result<(), MetaError> {
        let path = self.read_index.linearize().await?;
        metrics::counter!("mobilus_meta_linearizable_reads_total", "path" => path.label())
            .increment(1);
        Ok(())
    }

    /// Delegation holders' reads this member answered from its own state (`applied.rs`).
    pub fn holder_reads_answered(&self) -> u64 {
        self.holder_reads.load(Ordering::Relaxed)
    }

    /// Changes this member answered as items of a `Batch` call (`batch.rs`).
    pub fn batched_items_answered(&self) -> u64 {
        self.batched_items.load(Ordering::Relaxed)
    }

    /// Read-index rounds this member has run (each shared by the reads that waited).
    pub fn read_rounds(&self) -> u64 {
        self.read_index.rounds()
    }

    /// Why this member must not grant a vote now, if it must not: it started less than a
    /// leader lease ago (it may have acknowledged a leader before and remember nothing of
    /// it), or it holds a read lease itself.
    pub fn refuse_vote(&self) -> Option<&'static str> {
        if self
            .vote_gate_until
            .is_some_and(|t| tokio::time::Instant::now() < t)
        {
            return Some("restarted less than a leader lease ago");
        }
        self.read_index
            .holds_lease()
            .then_some("the leader holds a read lease")
    }

    // ---- membership ----

    /// Initialise a one-member cluster made of this member.
    pub async fn init(&self) -> Result<(), MetaError> {
        let members = BTreeMap::from([(
            self.id,
            BasicNode {
                addr: self.addr.clone(),
            },
        )]);
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(e)) => Err(MetaError::InvalidRequest(e.to_string())),
            Err(e) => Err(MetaError::Raft(e.to_string())),
        }
    }

    fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> MetaError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                MetaError::NotLeader(f.leader_node.map(|n| n.addr))
            }
            // Another change is still being committed: worth retrying.
            RaftError::APIError(ClientWriteError::ChangeMembershipError(
                c @ openraft::error::ChangeMembershipError::InProgress(_),
            )) => MetaError::Unavailable(c.to_string()),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
                MetaError::InvalidRequest(c.to_string())
            }
            other => MetaError::Unavailable(other.to_string()),
        }
    }

    /// Add a learner and wait until it has caught up.
    #[instrument(skip(self))]
    pub async fn add_learner(&self, id: NodeId, addr: String) -> Result<(), MetaError> {
        if addr.parse::<std::net::SocketAddr>().is_err() && !addr.contains(':') {
            return Err(MetaError::InvalidRequest(format!(
                "address {addr:?} is not host:port"
            )));
        }
        self.raft
            .add_learner(id, BasicNode { addr }, true)
            .await
            .map(|_| ())
            .map_err(Self::membership_error)
    }

    async fn change(&self, change: ChangeMembers<NodeId, BasicNode>) -> Result<(), MetaError> {
        self.raft
            .change_membership(change, false)
            .await
            .map(|_| ())
            .map_err(Self::membership_error)
    }

    /// Make a learner a voter.
    #[instrument(skip(self))]
    pub async fn promote(&self, id: NodeId) -> Result<(), MetaError> {
        self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
            .await
    }

    /// Remove a member (voter or learner) from the cluster.
    #[instrument(skip(self))]
    pub async fn remove(&self, id: NodeId) -> Result<(), MetaError> {
        let m = self.raft.metrics().borrow().clone();
        if m.membership_config.membership().get_node(&id).is_none() {
            return Err(MetaError::InvalidRequest(format!(
                "member {id} is not in the cluster"
            )));
        }
        let is_voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == id);
        if is_voter {
            self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id])))
                .await?;
        }
        self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id])))
            .await
    }

    /// Build a snapshot now (the log is then purged up to it).
    pub async fn trigger_snapshot(&self) -> Result<(), MetaError> {
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| MetaError::Raft(e.to_string()))
    }

    /// This member's view of the cluster.
    pub fn status(&self) -> pb::StatusReply {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| pb::Member {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
                matched_index: m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map(|l| l.index),
            })
            .collect();
        let state = match m.state {
            ServerState::Leader => "Leader",
            ServerState::Follower => "Follower",
            ServerState::Candidate => "Candidate",
            ServerState::Learner => "Learner",
            ServerState::Shutdown => "Shutdown",
        };
        pb::StatusReply {
            id: self.id,
            addr: self.addr.clone(),
            state: state.to_string(),
            term: m.current_term,
            leader_id: m.current_leader,
            leader_addr: self.leader_addr().unwrap_or_default(),
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            members,
            log_fsyncs: self.log_stats.fsyncs.load(Ordering::Relaxed),
            log_appends: self.log_stats.appends.load(Ordering::Relaxed),
            entries_applied: self.sm.entries_applied(),
        }
    }
}
