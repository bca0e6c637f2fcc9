//! Changes a delegation's holder wrote back, sent together (`Meta.Batch`).
//!
//! A holder answers closes, creates and unlinks before it commits them, then commits
//! each in the background: one request, one proposal and, at this load, one Raft entry
//! per file, so the members' work per file (a request's TLS and HTTP/2, an entry's append
//! and fsync on each member) bounds how fast files are made. Commits that wait together
//! go in one request instead, and the leader packs them into one entry.
//!
//! As the members' proposer does (`server/proposer.rs`), there is no timer: a batch is
//! whatever queued while earlier batches were in flight, so a lone commit is sent at once
//! as its own call. Only holder-only changes come here: the metadata refuses them at once
//! when the delegation is gone, so none waits for a recall and holds up the others.
//! An item refused with an error its own call would retry (no leader, busy) is sent
//! again on its own, with the usual retries.

use std::sync::{Arc, Weak};

use mobilus_proto::pb;
use mobilus_proto::pb::batch_item::Op as ItemOp;
use mobilus_proto::pb::batch_result::Outcome;
use mobilus_proto::status::{status_of_item, WireError};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::Code;

use super::{ClientError, Inner, MetaClient};

/// Most items in one call (the metadata takes up to 256).
const MAX_ITEMS: usize = 128;
/// A batch stops growing at this many bytes of requests.
const MAX_BYTES: usize = 1 << 20;
/// Batches sent and not yet answered, at most.
const MAX_IN_FLIGHT: usize = 2;

struct Queued {
    op: ItemOp,
    bytes: usize,
    done: oneshot::Sender<Result<Outcome, ClientError>>,
}

/// The queue a client's holder-only changes go through; its task ends with the client.
pub(crate) struct Batcher {
    tx: mpsc::UnboundedSender<Queued>,
}

impl Batcher {
    pub(crate) fn start(client: Weak<Inner>) -> Batcher {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(batch_loop(client, rx));
        Batcher { tx }
    }
}

fn encoded_len(op: &ItemOp) -> usize {
    use prost::Message;
    match op {
        ItemOp::Write(w) => w.encoded_len(),
        ItemOp::Create(c) => c.encoded_len(),
        ItemOp::Unlink(u) => u.encoded_len(),
    }
}

impl MetaClient {
    /// Send `op` with whatever other holder-only changes are waiting.
    pub(crate) async fn batched(&self, op: ItemOp) -> Result<Outcome, ClientError> {
        // Counted from now: a holder read must not answer from before this change.
        let _changing = super::InFlight::start(&self.inner.changes_in_flight);
        let batcher = self
            .inner
            .batcher
            .get_or_init(|| Batcher::start(Arc::downgrade(&self.inner)));
        let (done, answer) = oneshot::channel();
        let bytes = encoded_len(&op);
        if let Err(mpsc::error::SendError(q)) = batcher.tx.send(Queued { op, bytes, done }) {
            return self.send_alone(q.op).await;
        }
        answer.await.map_err(|_| ClientError::Unavailable {
            addrs: self.inner.endpoints.join(","),
            last: "the client was dropped".into(),
        })?
    }

    /// `op` as its own call.
    async fn send_alone(&self, op: ItemOp) -> Result<Outcome, ClientError> {
        match op {
            ItemOp::Write(req) => {
                let r = self
                    .call("write", |ch| {
                        let req = req.clone();
                        async move { Self::meta(ch).write(req).await }
                    })
                    .await?;
                Ok(Outcome::Attr(r.into_inner()))
            }
            ItemOp::Create(req) => {
                let r = self
                    .call("mknod", |ch| {
                        let req = req.clone();
                        async move { Self::meta(ch).mknod(req).await }
                    })
                    .await?;
                Ok(Outcome::Attr(r.into_inner()))
            }
            ItemOp::Unlink(req) => Ok(Outcome::Unlink(self.send_unlink(req).await?)),
        }
    }

    /// Send `batch` in one call and hand each item its result.
    async fn send_batch(&self, mut batch: Vec<Queued>) {
        if batch.len() == 1 {
            let q = batch.remove(0);
            let _ = q.done.send(self.send_alone(q.op).await);
            return;
        }
        let req = pb::BatchRequest {
            items: batch
                .iter()
                .map(|q| pb::BatchItem {
                    op: Some(q.op.clone()),
                })
                .collect(),
        };
        let reply = self
            .call("batch", |ch| {
                let req = req.clone();
                async move { Self::meta(ch).batch(req).await }
            })
            .await;
        let results = match reply {
            Ok(r) => r.into_inner().results,
            // A member from before batches: each on its own.
            Err(ClientError::Rpc {
                code: Code::Unimplemented,
                ..
            }) => Vec::new(),
            Err(e) => {
                for q in batch {
                    let _ = q.done.send(Err(e.clone()));
                }
                return;
            }
        };
        if results.len() != batch.len() && !results.is_empty() {
            let e = ClientError::InvalidReply(format!(
                "{} results for a batch of {}",
                results.len(),
                batch.len()
            ));
            for q in batch {
                let _ = q.done.send(Err(e.clone()));
            }
            return;
        }
        let mut results = results.into_iter();
        for q in batch {
            let outcome = match results.next().and_then(|r| r.outcome) {
                Some(Outcome::Error(refused)) => {
                    let status = status_of_item(&refused);
                    match WireError::from_status(&status) {
                        e if !worth_retrying(&e) => Err(e.into()),
                        _ => {
                            self.again_alone(q);
                            continue;
                        }
                    }
                }
                Some(outcome) => Ok(outcome),
                None => {
                    self.again_alone(q);
                    continue;
                }
            };
            let _ = q.done.send(outcome);
        }
    }

    /// Send `q` on its own (with the usual retries), without holding up the batch.
    fn again_alone(&self, q: Queued) {
        let me = self.clone();
        tokio::spawn(async move {
            let _ = q.done.send(me.send_alone(q.op).await);
        });
    }
}

/// Whether a call refused this way would be tried again ([`MetaClient::call`]): nothing
/// was done, so sending the item again is safe.
fn worth_retrying(e: &WireError) -> bool {
    matches!(
        e,
        WireError::NotLeader(_)
            | WireError::Unavailable(_)
            | WireError::Delegated(_)
            | WireError::Frozen(_)
            | WireError::Busy(_)
            | WireError::Other(Code::Unavailable | Code::Unknown, _)
    )
}

async fn batch_loop(client: Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Queued>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut carried: Option<Queued> = None;
    loop {
        let first = match carried.take() {
            Some(q) => q,
            None => match rx.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        // Waiting for a slot is what lets a batch fill up.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < MAX_ITEMS && bytes < MAX_BYTES {
            match rx.try_recv() {
                Ok(q) if bytes + q.bytes > MAX_BYTES => {
                    carried = Some(q);
                    break;
                }
                Ok(q) => {
                    bytes += q.bytes;
                    batch.push(q);
                }
                Err(_) => break,
            }
        }
        let Some(inner) = client.upgrade() else {
            return;
        };
        let client = MetaClient { inner };
        tokio::spawn(async move {
            client.send_batch(batch).await;
            drop(slot);
        });
    }
}
