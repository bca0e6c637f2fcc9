//! Log indexes that travel with replies, for reads by a delegation's holder at a nearby
//! member (`MetaNode::read_in`).
//!
//! Every reply to a client carries `x-mobilus-applied`: a log index its answer is as new
//! as. A mutation's reply carries an index at or past its own entry (the leader's, even
//! when a follower forwarded it); a linearizable read's, the leader's applied index. A
//! client keeps the largest it has seen. A mount that holds a subtree's delegation sends
//! its largest as `x-mobilus-near-applied` with a read to a member of its own site: that
//! member answers from its own state once it has applied that much, with no round to the
//! leader. Nobody but the holder changes a delegated subtree, and every change the holder
//! made was acknowledged with an index at most that large, so the member's state shows the
//! subtree as the holder last left it.
//!
//! The index is gathered per request in a task-local cell, set by the paths that know it
//! (the proposer, the reads) and turned into the header by [`AppliedLayer`], so no handler
//! builds it.
//!
//! A mutation a follower forwarded to the leader also answers `x-mobilus-leader`: the
//! client sends its next requests there, not through the follower again (each forward
//! is one more round between members on every write).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The reply header: a log index the answer is as new as.
pub use mobilus_proto::status::APPLIED_KEY as APPLIED_HEADER;
use mobilus_proto::status::LEADER_KEY;
/// The request header of a holder's read at a nearby member: the index that member must
/// have applied first.
pub use mobilus_proto::status::NEAR_APPLIED_KEY as NEAR_HEADER;

/// What a request's reply will say, gathered while it is answered.
#[derive(Default)]
struct Notes {
    /// A log index the answer is as new as (0: none).
    index: u64,
    /// The leader a follower forwarded the request's mutation to.
    forwarded_to: Option<String>,
}

tokio::task_local! {
    static NOTES: RefCell<Notes>;
}

/// This request's mutation was forwarded to, and committed by, the leader at `leader`
/// (`None`: an attempt starts; whatever an earlier one noted no longer holds).
pub(crate) fn note_forwarded(leader: Option<&str>) {
    let _ = NOTES.try_with(|c| c.borrow_mut().forwarded_to = leader.map(str::to_string));
}

/// The answer being built is as new as log index `index` (the largest noted wins).
pub(crate) fn note(index: u64) {
    let _ = NOTES.try_with(|c| {
        let mut notes = c.borrow_mut();
        notes.index = notes.index.max(index);
    });
}

/// What this request's reply says so far (0: nothing).
pub(crate) fn noted() -> u64 {
    NOTES.try_with(|c| c.borrow().index).unwrap_or(0)
}

/// The index a holder's read asks this member to have applied, if it is such a read.
pub(crate) fn near<T>(request: &tonic::Request<T>) -> Option<u64> {
    request
        .metadata()
        .get(NEAR_HEADER)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A tower layer giving each request its cell and each reply its header.
#[derive(Clone, Copy, Debug, Default)]
pub struct AppliedLayer;

impl<S> tower::Layer<S> for AppliedLayer {
    type Service = Applied<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Applied { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Applied<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Applied<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = self.inner.call(request);
        Box::pin(NOTES.scope(RefCell::new(Notes::default()), async move {
            let mut result = call.await;
            let notes = NOTES.with(RefCell::take);
            if let Ok(response) = &mut result {
                let headers = response.headers_mut();
                if notes.index > 0 {
                    headers.insert(APPLIED_HEADER, http::HeaderValue::from(notes.index));
                }
                // Not on an error (a status in the headers): its own leader header, if
                // any, is the newer word.
                let refused =
                    headers.contains_key("grpc-status") || headers.contains_key(LEADER_KEY);
                let leader = notes.forwarded_to.filter(|_| !refused);
                if let Some(Ok(value)) = leader.map(|l| http::HeaderValue::from_str(&l)) {
                    headers.insert(LEADER_KEY, value);
                }
            }
            result
        }))
    }
}
