//! The server side: accepted connections with their peer's identity, and authorization.
//!
//! [`incoming`] turns a listener into the connection stream tonic serves: TLS handshakes
//! (each in its own task, bounded in time, so a slow or silent peer holds up nobody) or,
//! with `--insecure`, plain TCP. Each connection carries a [`PeerInfo`], which tonic puts
//! into every request's extensions. [`Authorize`] is the one place that decides, per RPC
//! path, which roles may call it; handlers that need more (a mount's site) read
//! [`PeerInfo`] from the request.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::{PeerIdentity, Role, TlsConfig};

/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections (and handshakes) open at once per server; more are closed at accept. With
/// each connection's streams and messages bounded too, this bounds a server's memory
/// however many clients misbehave.
pub const MAX_CONNECTIONS: usize = 4096;
/// Concurrent requests (HTTP/2 streams) per connection: one client cannot take every
/// worker while the others wait.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// Bytes of request data one connection may have a server hold in memory at once
/// ([`PeerInfo::buffered`]): more is refused, and other connections are unaffected.
pub const BUFFER_BYTES_PER_CONNECTION: usize = 64 << 20;

/// Who is at the other end of a connection.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// The verified certificate's identity; `None` on an `--insecure` server.
    pub identity: Option<Arc<PeerIdentity>>,
    /// Room for the data this connection's requests have the server hold (a data node's
    /// puts), [`BUFFER_BYTES_PER_CONNECTION`], shared by its streams.
    pub buffered: Arc<tokio::sync::Semaphore>,
}

impl PeerInfo {
    /// The peer of a request (`None` for a request that did not come over a connection
    /// of ours: a test calling a service directly).
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&PeerInfo> {
        request.extensions().get::<PeerInfo>()
    }

    /// The site a peer's certificate binds it to, if the server runs with TLS and the
    /// peer has one.
    pub fn site_of<T>(request: &tonic::Request<T>) -> Option<&str> {
        PeerInfo::of(request)?.identity.as_ref()?.site.as_deref()
    }

    /// The verified identity of a request's peer (`None`: insecure, or no connection).
    pub fn identity_of<T>(request: &tonic::Request<T>) -> Option<&PeerIdentity> {
        PeerInfo::of(request)?.identity.as_deref()
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// One accepted connection.
pub struct Accepted {
    io: Io,
    info: PeerInfo,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for Accepted {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for Accepted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connections accepted on `listener`, for `serve_with_incoming`: TLS with `tls`,
/// plain TCP without. Sockets get TCP_NODELAY (small RPCs otherwise stall on Nagle and
/// delayed ACKs). Accepting stops when the server drops the stream.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<TlsConfig>>,
) -> ReceiverStream<Result<Accepted, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors, or a connection reset before accept: keep
                        // serving the others.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                metrics::counter!("mobilus_connections_refused_total").increment(1);
                tracing::warn!(%remote, max = MAX_CONNECTIONS, "too many connections: closed");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let Some(tls) = tls.clone() else {
                let info = PeerInfo {
                    remote: Some(remote),
                    identity: None,
                    buffered: connection_budget(),
                };
                let accepted = Accepted {
                    io: Io::Plain(tcp),
                    info,
                    _slot: slot,
                };
                if tx.send(Ok(accepted)).await.is_err() {
                    return;
                }
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let shake = handshake(tcp, remote, &tls, slot);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, shake).await {
                    Ok(Ok(accepted)) => {
                        let _ = tx.send(Ok(accepted)).await;
                    }
                    Ok(Err(e)) => {
                        metrics::counter!("mobilus_tls_refused_total").increment(1);
                        tracing::info!(%remote, error = %e, "TLS connection refused");
                    }
                    Err(_) => {
                        metrics::counter!("mobilus_tls_refused_total").increment(1);
                        tracing::info!(%remote, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

fn connection_budget() -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new(BUFFER_BYTES_PER_CONNECTION))
}

async fn handshake(
    tcp: TcpStream,
    remote: SocketAddr,
    tls: &TlsConfig,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> Result<Accepted, io::Error> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current().server.clone());
    let stream = acceptor.accept(tcp).await?;
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| crate::pki::identity_of(c))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the peer's certificate names no Mobilus identity",
            )
        })?;
    Ok(Accepted {
        io: Io::Tls(Box::new(stream)),
        info: PeerInfo {
            remote: Some(remote),
            identity: Some(Arc::new(identity)),
            buffered: connection_budget(),
        },
        _slot: slot,
    })
}

tokio::task_local! {
    static CURRENT_PEER: Option<Arc<PeerIdentity>>;
}

/// The verified identity of the caller whose RPC this task is serving (set by
/// [`Authorize`]; `None` over plaintext or outside a call).
pub fn current_peer() -> Option<Arc<PeerIdentity>> {
    CURRENT_PEER.try_with(Clone::clone).ok().flatten()
}

/// May a role call an RPC, by its path (`/mobilus.meta.v1.Meta/Mkdir`)?
pub type Policy = fn(role: Role, path: &str) -> bool;

/// The layer that refuses, with PermissionDenied, every call its policy does not allow
/// for the peer's role, and runs the others with the peer as [`current_peer`]. Calls
/// over a plaintext (`--insecure`) connection pass: there is no identity to judge.
#[derive(Clone, Copy)]
pub struct Authorize {
    policy: Policy,
}

impl Authorize {
    pub fn new(policy: Policy) -> Authorize {
        Authorize { policy }
    }
}

impl<S> tower::Layer<S> for Authorize {
    type Service = Authorized<S>;
    fn layer(&self, inner: S) -> Authorized<S> {
        Authorized {
            inner,
            policy: self.policy,
        }
    }
}

#[derive(Clone)]
pub struct Authorized<S> {
    inner: S,
    policy: Policy,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Authorized<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let identity = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.identity.clone());
        if let Some(who) = &identity {
            let path = req.uri().path();
            if !(self.policy)(who.role, path) {
                metrics::counter!("mobilus_authz_refused_total", "role" => who.role.as_str())
                    .increment(1);
                tracing::info!(peer = %who, path, "refused: not allowed for this role");
                let status = tonic::Status::permission_denied(format!(
                    "{path} is not allowed for a {} certificate ({who})",
                    who.role
                ));
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
        }
        Box::pin(CURRENT_PEER.scope(identity, self.inner.call(req)))
    }
}
