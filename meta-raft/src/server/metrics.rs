//! Raft's state as Prometheus gauges, updated on every change openraft reports.
//! (Names and meanings: `docs/metrics.md`.)

use openraft::{RaftMetrics, ServerState};

use crate::types::{NodeId, Raft};

type Metrics = RaftMetrics<NodeId, openraft::BasicNode>;

/// Help texts of this member's metrics (shown by a scrape; call after installing the
/// recorder).
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!("mobilus_raft_term", "Raft term this member is in");
    describe_gauge!(
        "mobilus_raft_last_log_index",
        "Index of the last entry in this member's log"
    );
    describe_gauge!(
        "mobilus_raft_applied_index",
        "Index of the last entry applied to the namespace"
    );
    describe_gauge!(
        "mobilus_raft_apply_lag",
        "Entries in the log not applied yet"
    );
    describe_gauge!(
        "mobilus_raft_commit_index",
        "Index a quorum holds (the leader only)"
    );
    describe_gauge!(
        "mobilus_raft_snapshot_index",
        "Last index the newest snapshot covers"
    );
    describe_gauge!("mobilus_raft_is_leader", "1 on the leader, 0 elsewhere");
    describe_gauge!("mobilus_raft_voters", "Voting members in the membership");
    describe_gauge!(
        "mobilus_raft_replication_lag",
        "Entries a member is behind the leader (the leader only)"
    );
    describe_counter!(
        "mobilus_raft_leader_changes_total",
        "Times this member saw the leader change"
    );
    describe_counter!(
        "mobilus_meta_proposals_total",
        "Mutations proposed on this member, by op and outcome"
    );
    describe_counter!(
        "mobilus_meta_subtree_moves_total",
        "Subtree moves asked of this member, by kind (move, takeover)"
    );
    describe_histogram!(
        "mobilus_meta_commit_seconds",
        Unit::Seconds,
        "Time to commit and apply a mutation, by op"
    );
    describe_counter!(
        "mobilus_meta_linearizable_reads_total",
        "Linearizable reads, by path: under the leader's lease, or after a read-index round"
    );
    describe_counter!(
        "mobilus_meta_read_index_rounds_total",
        "Read-index rounds run (each shared by every read that waited for it)"
    );
    mobilus_telemetry::describe_grpc_metrics();
}

/// Follow `raft`'s metrics until it shuts down.
pub(super) fn spawn_raft_metrics(raft: &Raft) -> tokio::task::JoinHandle<()> {
    let mut rx = raft.metrics();
    tokio::spawn(async move {
        let mut leader: Option<Option<NodeId>> = None;
        loop {
            let m = rx.borrow_and_update().clone();
            record(&m, &mut leader);
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
}

/// The index a majority of voters hold: the leader's commit index.
fn quorum_index(m: &Metrics) -> Option<u64> {
    let replication = m.replication.as_ref()?;
    let mut held: Vec<u64> = m
        .membership_config
        .membership()
        .voter_ids()
        .map(|id| {
            if id == m.id {
                m.last_log_index.unwrap_or(0)
            } else {
                replication
                    .get(&id)
                    .and_then(|l| l.map(|l| l.index))
                    .unwrap_or(0)
            }
        })
        .collect();
    if held.is_empty() {
        return None;
    }
    held.sort_unstable_by(|a, b| b.cmp(a));
    held.get(held.len() / 2).copied()
}

fn record(m: &Metrics, last_leader: &mut Option<Option<NodeId>>) {
    let last_log = m.last_log_index.unwrap_or(0);
    let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
    metrics::gauge!("mobilus_raft_term").set(m.current_term as f64);
    metrics::gauge!("mobilus_raft_last_log_index").set(last_log as f64);
    metrics::gauge!("mobilus_raft_applied_index").set(applied as f64);
    metrics::gauge!("mobilus_raft_apply_lag").set(last_log.saturating_sub(applied) as f64);
    metrics::gauge!("mobilus_raft_snapshot_index")
        .set(m.snapshot.map(|l| l.index).unwrap_or(0) as f64);
    metrics::gauge!("mobilus_raft_is_leader")
        .set(f64::from(u8::from(m.state == ServerState::Leader)));
    metrics::gauge!("mobilus_raft_voters")
        .set(m.membership_config.membership().voter_ids().count() as f64);
    if let Some(commit) = quorum_index(m) {
        metrics::gauge!("mobilus_raft_commit_index").set(commit as f64);
    }
    if let Some(replication) = &m.replication {
        for (id, matched) in replication {
            let lag = last_log.saturating_sub(matched.map(|l| l.index).unwrap_or(0));
            metrics::gauge!("mobilus_raft_replication_lag", "member" => id.to_string())
                .set(lag as f64);
        }
    }
    match last_leader {
        Some(prev) if *prev != m.current_leader => {
            metrics::counter!("mobilus_raft_leader_changes_total").increment(1);
            *last_leader = Some(m.current_leader);
        }
        None => {
            // Exported from the start, at 0: a member that never sees a change still
            // shows the counter.
            metrics::counter!("mobilus_raft_leader_changes_total").increment(0);
            *last_leader = Some(m.current_leader);
        }
        _ => {}
    }
}
