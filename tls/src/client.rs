//! The client side: channels to servers, over TLS when the process has a configuration.
//!
//! A binary sets its configuration once at start ([`set_process_default`]); every client
//! crate (the metadata client, the data-node client, Raft's channel pool) dials through
//! [`channel`], so no constructor has to thread it through. A caller that speaks for
//! another identity (a test acting as several) passes one explicitly.
//!
//! The client verifies that the server's certificate chains to the cluster CA and names
//! the role it expects (`meta.mobilus`, `data.mobilus`): a mount's certificate cannot pose
//! as a metadata member. Every new connection uses the configuration current at that
//! moment, so a reload reaches the next reconnect.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{Role, TlsConfig};

static PROCESS_DEFAULT: RwLock<Option<Arc<TlsConfig>>> = RwLock::new(None);

/// The configuration every channel of this process uses unless given another.
pub fn set_process_default(tls: Option<Arc<TlsConfig>>) {
    *PROCESS_DEFAULT.write().unwrap_or_else(|p| p.into_inner()) = tls;
}

pub fn process_default() -> Option<Arc<TlsConfig>> {
    PROCESS_DEFAULT
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// How a client dials: with the process's configuration, another one, or plaintext.
#[derive(Clone, Default)]
pub enum ClientTls {
    /// Whatever [`set_process_default`] set (plaintext if nothing).
    #[default]
    ProcessDefault,
    With(Arc<TlsConfig>),
    Plaintext,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientTls::ProcessDefault => f.write_str("ProcessDefault"),
            ClientTls::With(c) => write!(f, "With({})", c.identity()),
            ClientTls::Plaintext => f.write_str("Plaintext"),
        }
    }
}

impl ClientTls {
    fn resolve(&self) -> Option<Arc<TlsConfig>> {
        match self {
            ClientTls::ProcessDefault => process_default(),
            ClientTls::With(c) => Some(c.clone()),
            ClientTls::Plaintext => None,
        }
    }
}

/// A lazily connected channel to a server of `role` at `endpoint` (an `http://` URI;
/// TLS is the connector's business).
pub fn channel(endpoint: Endpoint, role: Role, tls: &ClientTls) -> Channel {
    match tls.resolve() {
        None => endpoint.connect_lazy(),
        Some(tls) => endpoint.connect_with_connector_lazy(Connector { tls, role }),
    }
}

#[derive(Clone)]
struct Connector {
    tls: Arc<TlsConfig>,
    /// The role the server's certificate must name.
    role: Role,
}

impl Connector {
    /// The name the server's certificate must carry (a role that serves nothing fails
    /// every connection, with this error).
    fn server_name(&self) -> io::Result<ServerName<'static>> {
        let name = self.role.server_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a {} serves nothing to dial", self.role),
            )
        })?;
        ServerName::try_from(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.tls.current().client.clone();
        let name = self.server_name();
        Box::pin(async move {
            let name = name?;
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(stream))
        })
    }
}
