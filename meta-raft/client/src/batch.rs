//! Changes a delegation's holder wrote back, sent together (`Meta.Batch`).
//!
//! A holder answers closes, creates and unlinks before it commits them, then commits
//! each in the background: one request, one proposal and, at this load, one Raft entry
//! per file, so the members' work per file (a request's TLS and HTTP/2, an entry's append
//! and fsync on each member) bounds how fast files are made. Commits that wait together
//! go in one request instead, and the leader packs them into one entry.
//!
//! A batch is whatever queued while earlier batches were in flight, so a change someone
//! waits for (an fsync) is sent at once, as its own call if it is alone. Changes made in
//! the background ([`in_background`]: the mount's write-backs, which wake together on a
//! shared cadence and each store their chunks first) wait up to [`LINGER`] for the rest
//! of their round, unless a change someone waits for comes. Only holder-only changes come
//! here: the metadata refuses them at once when the delegation is gone, so none waits
//! for a recall and holds up the others (the metadata takes nothing else in a batch). A
//! batch holds its slot at most [`MAX_SLOT_HOLD`]: one retried for long (no leader)
//! does not stop the others. An item refused with an error its own call would retry
//! (no leader, busy) is sent again on its own, with the usual retries.

use std::sync::{Arc, Weak};
use std::time::Duration;

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
/// How long a batch that starts with a background change waits for more.
pub const LINGER: Duration = Duration::from_millis(2);
/// After this long a batch still unanswered (its call retrying) frees its slot.
pub const MAX_SLOT_HOLD: Duration = Duration::from_secs(1);

tokio::task_local! {
    static BACKGROUND: bool;
}

/// Run `f` as background work: the holder-only changes it makes may wait up to
/// [`LINGER`] for others to go with.
pub async fn in_background<F: std::future::Future>(f: F) -> F::Output {
    BACKGROUND.scope(true, f).await
}

struct Queued {
    op: ItemOp,
    bytes: usize,
    background: bool,
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
        let queued = Queued {
            bytes: encoded_len(&op),
            op,
            background: BACKGROUND.try_with(|b| *b).unwrap_or(false),
            done,
        };
        if let Err(mpsc::error::SendError(q)) = batcher.tx.send(queued) {
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
                        e if !worth_retrying(&e, self.inner.opts.retry_ambiguous) => Err(e.into()),
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

/// Whether a call refused this way would be tried again ([`MetaClient::call`]). A
/// refusal that did nothing (a known leader elsewhere, delegated, frozen, busy) always
/// is; one that may have been applied (no quorum) only for a client that accepts
/// ambiguous retries.
fn worth_retrying(e: &WireError, ambiguous: bool) -> bool {
    match e {
        WireError::NotLeader(Some(_))
        | WireError::Delegated(_)
        | WireError::Frozen(_)
        | WireError::Busy(_) => true,
        WireError::NotLeader(None)
        | WireError::Unavailable(_)
        | WireError::Other(Code::Unavailable | Code::Unknown, _) => ambiguous,
        _ => false,
    }
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
        // A background round waits a little for the rest of its changes.
        let linger = first
            .background
            .then(|| tokio::time::Instant::now() + LINGER);
        let mut batch = Batch {
            bytes: first.bytes,
            waited_for: !first.background,
            items: vec![first],
        };
        loop {
            while let Ok(q) = rx.try_recv() {
                if let Some(q) = batch.add(q) {
                    carried = Some(q);
                    break;
                }
            }
            let Some(until) = linger else { break };
            if carried.is_some() || batch.full() || batch.waited_for {
                break;
            }
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(q)) => {
                    if let Some(q) = batch.add(q) {
                        carried = Some(q);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        let Some(inner) = client.upgrade() else {
            return;
        };
        let client = MetaClient { inner };
        let sending = tokio::spawn(async move { client.send_batch(batch.items).await });
        tokio::spawn(async move {
            let _ = tokio::time::timeout(MAX_SLOT_HOLD, sending).await;
            drop(slot);
        });
    }
}

/// Changes gathered for one call.
struct Batch {
    items: Vec<Queued>,
    bytes: usize,
    /// Whether someone waits for one of them (not only background work).
    waited_for: bool,
}

impl Batch {
    fn full(&self) -> bool {
        self.items.len() >= MAX_ITEMS || self.bytes >= MAX_BYTES
    }

    /// Take `q`, or hand it back if it does not fit (it starts the next batch).
    fn add(&mut self, q: Queued) -> Option<Queued> {
        if self.full() || self.bytes + q.bytes > MAX_BYTES {
            return Some(q);
        }
        self.bytes += q.bytes;
        self.waited_for |= !q.background;
        self.items.push(q);
        None
    }
}
