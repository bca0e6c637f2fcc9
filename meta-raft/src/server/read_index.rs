//! Linearizable reads, cheaply: batched read-index rounds, and a leader lease.
//!
//! **Batching.** openraft 0.9 runs one heartbeat round per `ensure_linearizable` call.
//! Here at most one round is in flight: a read that arrives while one is in flight waits
//! for the *next* round (never one that started before it arrived, which could confirm
//! a leadership that ended before the read began) and shares it with every read that
//! arrived meanwhile.
//!
//! **Lease.** A follower that heard from the leader refuses votes for `leader_lease`
//! (openraft's `election_timeout_max`) afterwards and does not stand itself for longer
//! still. When a round that started at time `t` succeeds, every voter of a quorum
//! acknowledged a heartbeat sent after `t` (openraft sends fresh ones per round); the
//! followers among them refuse votes until `t + leader_lease` at least, and the leader
//! (counted in the quorum too) refuses them while it holds the lease
//! (`MetaNode::refuse_vote`). So no other leader can be elected before `t + lease`
//! (`lease` = 3/4 of `leader_lease`: room for clock-rate drift and scheduling), and until
//! then the leader answers reads from its applied state with no round at all: a write
//! this leader acknowledged was applied before its acknowledgement, and the term's first
//! round waited until everything its log held was applied (below). The lease is dropped
//! when the term or the membership changes, and it is measured on CLOCK_BOOTTIME, which
//! keeps counting while the machine is suspended (the monotonic clock does not).
//!
//! **The term's floor.** openraft restores a member whose saved vote is its own as leader
//! at once, reusing its term's first entry, and its committed and applied indexes are
//! not fsynced: after a power loss the read index could be below writes it acknowledged
//! before. So the first successful round of each term records the log's last index and
//! waits until that much is applied; no read in the term is answered before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::ServerState;
use tokio::sync::watch;

use crate::error::MetaError;
use crate::types::{LogId, NodeId, Raft};

/// Why a round failed: all a reader needs to answer its client (`MetaError` is not
/// `Clone`; these two are all a round can end in).
#[derive(Clone, Debug)]
enum RoundError {
    NotLeader(Option<String>),
    Unavailable(String),
}

impl From<RoundError> for MetaError {
    fn from(e: RoundError) -> Self {
        match e {
            RoundError::NotLeader(l) => MetaError::NotLeader(l),
            RoundError::Unavailable(m) => MetaError::Unavailable(m),
        }
    }
}

/// The outcome of one round, shared by its readers (`None` until it ends).
type RoundResult = Option<Result<(), RoundError>>;

/// A read lease: reads may skip the round until `until` (on [`boot_clock`]), while term
/// and membership stay.
#[derive(Clone, Copy, Debug)]
struct Lease {
    until: Duration,
    term: u64,
    membership: Option<LogId>,
}

#[derive(Default)]
struct State {
    in_flight: bool,
    /// The readers waiting for the round after the one in flight.
    next: Option<watch::Sender<RoundResult>>,
    lease: Option<Lease>,
    /// (term, index): this term's reads wait until the index is applied (module doc).
    floor: Option<(u64, u64)>,
}

/// Time since boot, counting suspended time (CLOCK_BOOTTIME): a leader suspended in the
/// middle of its lease must find it expired when it wakes.
/// `None` where the clock cannot be read: then there are no leases.
fn boot_clock() -> Option<Duration> {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
    Some(Duration::new(
        ts.tv_sec().max(0) as u64,
        ts.tv_nsec().max(0) as u32,
    ))
}

/// One per member; cheap to share.
pub struct ReadIndex {
    raft: Raft,
    /// `None`: every read takes a round.
    lease: Option<Duration>,
    /// Longest one round may take.
    timeout: Duration,
    state: Mutex<State>,
    rounds: AtomicU64,
}

/// How a read was made linearizable (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPath {
    Lease,
    Round,
}

impl ReadPath {
    pub fn label(self) -> &'static str {
        match self {
            ReadPath::Lease => "lease",
            ReadPath::Round => "read_index",
        }
    }
}

fn round_error(
    raft: &Raft,
    e: RaftError<NodeId, CheckIsLeaderError<NodeId, openraft::BasicNode>>,
) -> RoundError {
    match e {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => {
            let known = f
                .leader_node
                .map(|n| n.addr)
                .or_else(|| super::node::known_leader(raft).map(|(_, addr)| addr));
            RoundError::NotLeader(known)
        }
        other => RoundError::Unavailable(other.to_string()),
    }
}

impl ReadIndex {
    pub fn new(raft: Raft, lease: Option<Duration>, timeout: Duration) -> Arc<Self> {
        Arc::new(ReadIndex {
            raft,
            lease,
            timeout,
            state: Mutex::new(State::default()),
            rounds: AtomicU64::new(0),
        })
    }

    /// Rounds run since start.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lease this leader holds now, if any: unexpired, same term, same membership,
    /// and still leader.
    fn current_lease(&self, state: &State) -> Option<Lease> {
        let lease = state.lease?;
        if boot_clock()? >= lease.until {
            return None;
        }
        // Every read passes here: look at the metrics in place, without copying them.
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let same = m.state == ServerState::Leader
            && m.current_term == lease.term
            && m.membership_config.log_id() == &lease.membership;
        same.then_some(lease)
    }

    /// Whether this member holds a read lease now (it must then refuse votes).
    pub fn holds_lease(&self) -> bool {
        let state = self.lock();
        self.current_lease(&state).is_some()
    }

    /// Return once a read of the local state machine is linearizable: after a round that
    /// started after this call, or at once under a lease.
    pub async fn linearize(self: &Arc<Self>) -> Result<ReadPath, MetaError> {
        let mut rx = {
            let mut state = self.lock();
            if let Some(lease) = self.current_lease(&state) {
                // Renew ahead of expiry, so that a steady stream of reads never waits.
                let half = self.lease.map(|l| l / 2).unwrap_or_default();
                let left = boot_clock().map(|now| lease.until.saturating_sub(now));
                if !state.in_flight && left.is_some_and(|left| left < half) {
                    state.in_flight = true;
                    self.spawn_rounds(None);
                }
                return Ok(ReadPath::Lease);
            }
            let rx = match &state.next {
                Some(tx) => tx.subscribe(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    state.next = Some(tx);
                    rx
                }
            };
            if !state.in_flight {
                state.in_flight = true;
                let next = state.next.take();
                self.spawn_rounds(next);
            }
            rx
        };
        let done = tokio::time::timeout(self.timeout, rx.wait_for(|r| r.is_some())).await;
        match done {
            Err(_) => Err(MetaError::Unavailable(format!(
                "read index not confirmed within {:?} (no quorum?)",
                self.timeout
            ))),
            Ok(Err(_)) => Err(MetaError::Unavailable("read index round abandoned".into())),
            Ok(Ok(result)) => match result.as_ref() {
                Some(Ok(())) => Ok(ReadPath::Round),
                Some(Err(e)) => Err(e.clone().into()),
                None => Err(MetaError::Unavailable("read index round abandoned".into())),
            },
        }
    }

    /// Run rounds until nobody waits for another: `first` gets this round's outcome.
    fn spawn_rounds(self: &Arc<Self>, first: Option<watch::Sender<RoundResult>>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut readers = first;
            loop {
                let result = me.round().await;
                if let Some(tx) = readers.take() {
                    let _ = tx.send(Some(result));
                }
                let mut state = me.lock();
                match state.next.take() {
                    Some(tx) => readers = Some(tx),
                    None => {
                        state.in_flight = false;
                        return;
                    }
                }
            }
        });
    }

    /// One read-index round; on success, extend the lease from the round's start.
    async fn round(&self) -> Result<(), RoundError> {
        let started = boot_clock();
        let before = self.raft.metrics().borrow().clone();
        metrics::counter!("mobilus_meta_read_index_rounds_total").increment(1);
        self.rounds.fetch_add(1, Ordering::Relaxed);
        let confirmed = tokio::time::timeout(self.timeout, self.raft.ensure_linearizable()).await;
        match confirmed {
            Err(_) => Err(RoundError::Unavailable(format!(
                "read index not confirmed within {:?} (no quorum?)",
                self.timeout
            ))),
            Ok(Err(e)) => Err(round_error(&self.raft, e)),
            Ok(Ok(_)) => {
                self.reach_floor().await?;
                if let (Some(lease), Some(started)) = (self.lease, started) {
                    // Keyed to the term and membership seen before the round: if either
                    // changed while it ran, the lease never matches and is never used.
                    let mut state = self.lock();
                    state.lease = Some(Lease {
                        until: started + lease,
                        term: before.current_term,
                        membership: *before.membership_config.log_id(),
                    });
                }
                Ok(())
            }
        }
    }

    /// Wait until this term's floor is applied, recording it on the term's first round.
    async fn reach_floor(&self) -> Result<(), RoundError> {
        let now = self.raft.metrics().borrow().clone();
        let floor = {
            let mut state = self.lock();
            match state.floor {
                Some((term, index)) if term == now.current_term => index,
                _ => {
                    let index = now.last_log_index.unwrap_or(0);
                    state.floor = Some((now.current_term, index));
                    index
                }
            }
        };
        if now.last_applied.map(|l| l.index).unwrap_or(0) >= floor {
            return Ok(());
        }
        self.raft
            .wait(Some(self.timeout))
            .applied_index_at_least(Some(floor), "read floor of the term")
            .await
            .map(|_| ())
            .map_err(|e| RoundError::Unavailable(format!("applying up to the read floor: {e}")))
    }
}
