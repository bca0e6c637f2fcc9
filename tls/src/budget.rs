//! A bound on the request bytes a server holds in memory ([`BufferBudget`]).
//!
//! tonic reads a unary request's whole message before its handler runs, and the message
//! lives until the handler returns. Without a bound, one connection's 256 streams of
//! 16 MiB requests would have a server hold 4 GiB, and many connections many times that.
//!
//! Each request's body takes room frame by frame, as the server reads it, from its
//! connection's share ([`PeerInfo::buffered`]) and from the server's own pools, and
//! gives it back when its response is ready. The server's pools are two, so that large
//! requests cannot crowd out small ones: a request's first [`SMALL_REQUEST_BYTES`] come
//! from the small pool, the rest from the large one. A frame that does not fit is
//! refused at once with RESOURCE_EXHAUSTED: waiting would let half-read requests hold
//! the room that would finish them.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use crate::server::PeerInfo;

/// The part of each request that the server's small pool pays for: every metadata
/// request but a large write or xattr fits in it.
pub const SMALL_REQUEST_BYTES: usize = 64 << 10;

/// Paths (`/package.Service/Method`) a budget leaves alone.
pub type Exempt = fn(path: &str) -> bool;

/// The status a refused request gets, from a message for people (a server marks it as
/// retryable in its own way).
pub type Refusal = fn(message: String) -> Status;

/// The layer that bounds the request bytes held by the services under it: `bytes` in
/// all, a quarter of it for small requests.
#[derive(Clone)]
pub struct BufferBudget {
    small: Arc<Semaphore>,
    large: Arc<Semaphore>,
    exempt: Exempt,
    refuse: Refusal,
}

impl BufferBudget {
    pub fn new(bytes: usize, exempt: Exempt, refuse: Refusal) -> BufferBudget {
        let small = bytes / 4;
        BufferBudget {
            small: Arc::new(Semaphore::new(small)),
            large: Arc::new(Semaphore::new(bytes - small)),
            exempt,
            refuse,
        }
    }
}

impl<S> tower::Layer<S> for BufferBudget {
    type Service = Budgeted<S>;
    fn layer(&self, inner: S) -> Budgeted<S> {
        Budgeted {
            inner,
            budget: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Budgeted<S> {
    inner: S,
    budget: BufferBudget,
}

/// What one request holds: given back when its response is ready (or, for room taken
/// by a request stream still read after that, when its body is dropped).
type Held = Arc<Mutex<Option<Room>>>;

/// Permits of each pool a request holds.
#[derive(Default)]
struct Room {
    connection: Option<OwnedSemaphorePermit>,
    small: Option<OwnedSemaphorePermit>,
    large: Option<OwnedSemaphorePermit>,
}

impl Room {
    fn add(&mut self, pool: Pool, permit: OwnedSemaphorePermit) {
        let slot = match pool {
            Pool::Connection => &mut self.connection,
            Pool::Small => &mut self.small,
            Pool::Large => &mut self.large,
        };
        match slot {
            Some(p) => p.merge(permit),
            None => *slot = Some(permit),
        }
    }
}

impl<S, RB> tower::Service<http::Request<tonic::body::Body>> for Budgeted<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if (self.budget.exempt)(req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        let connection = req
            .extensions()
            .get::<PeerInfo>()
            .map(|p| p.buffered.clone());
        let held: Held = Arc::default();
        let budget = self.budget.clone();
        let body_held = held.clone();
        let req = req.map(move |inner| {
            tonic::body::Body::new(BudgetedBody {
                inner,
                connection,
                budget,
                read: 0,
                held: body_held,
            })
        });
        let response = self.inner.call(req);
        Box::pin(async move {
            let r = response.await;
            held.lock().unwrap_or_else(|e| e.into_inner()).take();
            r
        })
    }
}

/// A request body that takes room for each frame it yields.
struct BudgetedBody {
    inner: tonic::body::Body,
    connection: Option<Arc<Semaphore>>,
    budget: BufferBudget,
    /// Bytes of this request read so far.
    read: usize,
    held: Held,
}

impl BudgetedBody {
    /// Room for the next `len` bytes, or the status that refuses them.
    fn take(&mut self, len: usize) -> Result<(), Status> {
        let small = SMALL_REQUEST_BYTES.saturating_sub(self.read).min(len);
        self.read += len;
        let refuse = self.budget.refuse;
        let mut got = Room::default();
        if let Some(connection) = &self.connection {
            acquire(&mut got, connection, len, Pool::Connection, refuse)?;
        }
        acquire(&mut got, &self.budget.small, small, Pool::Small, refuse)?;
        acquire(
            &mut got,
            &self.budget.large,
            len - small,
            Pool::Large,
            refuse,
        )?;
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let held = held.get_or_insert_with(Room::default);
        for (pool, permit) in [
            (Pool::Connection, got.connection),
            (Pool::Small, got.small),
            (Pool::Large, got.large),
        ] {
            if let Some(permit) = permit {
                held.add(pool, permit);
            }
        }
        Ok(())
    }
}

/// Where a request's room comes from.
#[derive(Clone, Copy)]
enum Pool {
    Connection,
    Small,
    Large,
}

impl Pool {
    fn label(self) -> &'static str {
        match self {
            Pool::Connection => "connection",
            Pool::Small => "small",
            Pool::Large => "large",
        }
    }

    fn whose(self) -> &'static str {
        match self {
            Pool::Connection => "this connection",
            Pool::Small => "the server's pool for small requests",
            Pool::Large => "the server's pool for large requests",
        }
    }
}

/// Add `n` of `from`'s permits to `got`, or refuse: `pool` has none left.
fn acquire(
    got: &mut Room,
    from: &Arc<Semaphore>,
    n: usize,
    pool: Pool,
    refuse: Refusal,
) -> Result<(), Status> {
    if n == 0 {
        return Ok(());
    }
    let Some(permit) = u32::try_from(n)
        .ok()
        .and_then(|n| from.clone().try_acquire_many_owned(n).ok())
    else {
        metrics::counter!("mobilus_request_buffer_refused_total", "pool" => pool.label())
            .increment(1);
        return Err(refuse(format!(
            "{} is holding all the request data the server keeps in memory for it; \
             retry when earlier requests finish",
            pool.whose()
        )));
    };
    got.add(pool, permit);
    Ok(())
}

impl Body for BudgetedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(data) = f.data_ref() {
                this.take(data.len())?;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn body_of(frames: Vec<usize>) -> tonic::body::Body {
        let stream = tokio_stream::iter(
            frames
                .into_iter()
                .map(|n| Ok::<_, Status>(Frame::data(Bytes::from(vec![1u8; n])))),
        );
        tonic::body::Body::new(http_body_util::StreamBody::new(stream))
    }

    fn budgeted(
        frames: Vec<usize>,
        connection: &Arc<Semaphore>,
        budget: &BufferBudget,
    ) -> (BudgetedBody, Held) {
        let held = Held::default();
        let body = BudgetedBody {
            inner: body_of(frames),
            connection: Some(connection.clone()),
            budget: budget.clone(),
            read: 0,
            held: held.clone(),
        };
        (body, held)
    }

    #[tokio::test]
    async fn room_is_taken_per_frame_split_between_the_pools_and_given_back() {
        let budget = BufferBudget::new(4 << 20, |_| false, Status::resource_exhausted);
        let connection = Arc::new(Semaphore::new(2 << 20));
        let (body, held) = budgeted(vec![48 << 10, 48 << 10], &connection, &budget);
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 96 << 10);
        // 64 KiB from the small pool, 32 KiB from the large one, all from the connection.
        assert_eq!(budget.small.available_permits(), (1 << 20) - (64 << 10));
        assert_eq!(budget.large.available_permits(), (3 << 20) - (32 << 10));
        assert_eq!(connection.available_permits(), (2 << 20) - (96 << 10));
        held.lock().unwrap().take();
        assert_eq!(budget.small.available_permits(), 1 << 20);
        assert_eq!(budget.large.available_permits(), 3 << 20);
        assert_eq!(connection.available_permits(), 2 << 20);
    }

    #[tokio::test]
    async fn a_frame_past_the_connections_share_is_refused() {
        let budget = BufferBudget::new(64 << 20, |_| false, Status::resource_exhausted);
        let connection = Arc::new(Semaphore::new(1 << 20));
        let (first, _held) = budgeted(vec![768 << 10], &connection, &budget);
        first.collect().await.unwrap();
        let (second, _) = budgeted(vec![128 << 10, 512 << 10], &connection, &budget);
        let status = second.collect().await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
        assert!(status.message().contains("this connection"), "{status}");
    }

    #[tokio::test]
    async fn large_requests_cannot_take_the_room_of_small_ones() {
        let budget = BufferBudget::new(4 << 20, |_| false, Status::resource_exhausted);
        let connection = Arc::new(Semaphore::new(64 << 20));
        // The large pool (3 MiB) is taken...
        let (large, _held) = budgeted(vec![64 << 10, 3 << 20], &connection, &budget);
        large.collect().await.unwrap();
        let (more, _) = budgeted(vec![64 << 10, 1], &connection, &budget);
        let status = more.collect().await.unwrap_err();
        assert!(status.message().contains("large requests"), "{status}");
        // ...and small requests are still served.
        let (small, _held) = budgeted(vec![4 << 10], &connection, &budget);
        small.collect().await.unwrap();
    }
}
