//! Proposal batching: commands proposed concurrently on the leader are packed into one log
//! entry, so that one Raft round (and one fsync per member) commits many of them.
//!
//! openraft 0.9 appends and fsyncs every entry on its own, one at a time; batching here is
//! what lets a loaded leader do less than one fsync per command. There is no timer: a
//! batch is whatever queued while the previous entries were in flight, so a lone client
//! pays no extra latency.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::error::MetaError;
use crate::types::{Command, Proposal, Raft, Reply};

/// Most commands in one entry.
const MAX_BATCH: usize = 64;
/// A batch stops growing once its commands add up to this many bytes (a single larger
/// command still gets an entry of its own), so entries stay small for replication.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Entries proposed and not yet committed, at most.
const MAX_IN_FLIGHT: usize = 4;

struct Pending {
    cmd: Command,
    /// Encoded size, for the batch budget.
    bytes: usize,
    /// The reply and the index of the entry it was applied in.
    done: oneshot::Sender<Result<(Reply, u64), MetaError>>,
}

/// The handle proposals go through; the batching task stops when it is dropped.
pub struct Proposer {
    tx: mpsc::UnboundedSender<Pending>,
}

impl Proposer {
    pub fn start(raft: Raft) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(batch_loop(raft, rx));
        Proposer { tx }
    }

    /// Propose one command; answers when its entry is committed and applied (and notes
    /// the entry's index for the reply, `applied.rs`).
    pub async fn propose(&self, cmd: Command) -> Result<Reply, MetaError> {
        let (done, answer) = oneshot::channel();
        let bytes = crate::codec::encode(&cmd)
            .map(|b| b.len())
            .unwrap_or(MAX_BATCH_BYTES);
        self.tx
            .send(Pending { cmd, bytes, done })
            .map_err(|_| MetaError::Unavailable("the member is shutting down".into()))?;
        let (reply, index) = answer
            .await
            .map_err(|_| MetaError::Unavailable("the proposal was dropped".into()))??;
        super::applied::note(index);
        Ok(reply)
    }
}

async fn batch_loop(raft: Raft, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // A command that did not fit the previous batch's byte budget starts the next one.
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        // Waiting for a slot is what lets a batch fill up under load.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) if bytes + p.bytes > MAX_BATCH_BYTES => {
                    carried = Some(p);
                    break;
                }
                Ok(p) => {
                    bytes += p.bytes;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            commit(&raft, batch).await;
            drop(slot);
        });
    }
}

async fn commit(raft: &Raft, batch: Vec<Pending>) {
    let n = batch.len();
    let (cmds, dones): (Vec<Command>, Vec<_>) = batch.into_iter().map(|p| (p.cmd, p.done)).unzip();
    let fail = |dones: Vec<oneshot::Sender<Result<(Reply, u64), MetaError>>>,
                err: &dyn Fn() -> MetaError| {
        for d in dones {
            let _ = d.send(Err(err()));
        }
    };
    match raft.client_write(Proposal(cmds)).await {
        Ok(resp) if resp.data.len() == n => {
            let index = resp.log_id.index;
            for (d, reply) in dones.into_iter().zip(resp.data) {
                let _ = d.send(Ok((reply, index)));
            }
        }
        Ok(resp) => {
            let got = resp.data.len();
            fail(dones, &|| {
                MetaError::Raft(format!("{got} replies for {n} commands"))
            });
        }
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            let leader = f.leader_node.map(|n| n.addr);
            fail(dones, &|| MetaError::NotLeader(leader.clone()));
        }
        Err(e) => {
            let msg = e.to_string();
            fail(dones, &|| MetaError::Unavailable(msg.clone()));
        }
    }
}
