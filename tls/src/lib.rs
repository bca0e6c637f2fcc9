//! Mutual TLS for every Mobilus connection, and who a peer is.
//!
//! - [`pki`]: the cluster CA (`mobilusctl cluster init --ca-dir`, `dev up`) and the
//!   certificates it issues. Each carries its holder's [`Role`], site and name in a
//!   SPIFFE-style URI, `mobilus://cluster/ROLE/SITE/NAME`; a server reads them from the
//!   verified peer certificate, never from a field the client fills in. Servers also carry
//!   the DNS name of their role (`meta.mobilus`, `data.mobilus`), which a client verifies,
//!   so a mount's certificate cannot pose as a metadata member.
//! - [`config`]: the `--ca/--cert/--key/--insecure` flags every binary shares, and the
//!   loaded configuration, reloaded on SIGHUP or when a file changes.
//! - [`server`]: the accepted connections (TLS or, with `--insecure`, plain TCP), each with
//!   its peer's identity as tonic connect info, and [`server::Authorize`], the one layer
//!   that decides which role may call which RPC.
//! - [`client`]: dialing a server, TLS by the process's configuration.
//! - [`budget`]: the bound on request bytes a server holds, per connection and in all.

pub mod budget;
pub mod client;
pub mod config;
pub mod pki;
pub mod server;

use std::fmt;
use std::str::FromStr;

pub use config::{TlsArgs, TlsConfig};
// For tests and tools that shake hands themselves.
pub use {rustls, rustls_pki_types, tokio_rustls};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadFile { path: String, reason: String },
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0}")]
    Usage(String),
}

/// What a certificate's holder may do (the server decides per RPC, [`server::Authorize`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A metadata member: Raft traffic.
    Meta,
    /// A data node: registration, GC's references, replication and following.
    Data,
    /// A FUSE mount of one site.
    Mount,
    /// An operator (`mobilusctl`): membership, subtrees, clones, gc, fsck.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Meta, Role::Data, Role::Mount, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Meta => "meta",
            Role::Data => "data",
            Role::Mount => "mount",
            Role::Admin => "admin",
        }
    }

    /// The DNS name a server of this role carries and its clients verify (`None`: the
    /// role is a client only).
    pub fn server_name(self) -> Option<&'static str> {
        match self {
            Role::Meta => Some("meta.mobilus"),
            Role::Data => Some("data.mobilus"),
            Role::Mount | Role::Admin => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, TlsError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                TlsError::Usage(format!(
                    "unknown role {s:?}: one of meta, data, mount, admin"
                ))
            })
    }
}

/// Who a verified peer certificate says its holder is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub role: Role,
    /// The holder's site (`None` for an operator, who belongs to no site).
    pub site: Option<String>,
    pub name: String,
}

const URI_PREFIX: &str = "mobilus://cluster/";

impl PeerIdentity {
    /// The URI the certificate carries.
    pub fn to_uri(&self) -> String {
        format!(
            "{URI_PREFIX}{}/{}/{}",
            self.role,
            self.site.as_deref().unwrap_or("-"),
            self.name
        )
    }

    /// Read back [`Self::to_uri`]; `None` for anything else.
    pub fn from_uri(uri: &str) -> Option<PeerIdentity> {
        let rest = uri.strip_prefix(URI_PREFIX)?;
        let mut parts = rest.split('/');
        let role = parts.next()?.parse().ok()?;
        let site = parts.next()?;
        let name = parts.next()?;
        if parts.next().is_some() || !valid_label(name) || (site != "-" && !valid_label(site)) {
            return None;
        }
        Some(PeerIdentity {
            role,
            site: (site != "-").then(|| site.to_string()),
            name: name.to_string(),
        })
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.site {
            Some(site) => write!(f, "{} {} of {site}", self.role, self.name),
            None => write!(f, "{} {}", self.role, self.name),
        }
    }
}

/// A site or a name: 1 to 64 letters, digits, '-', '_' and '.'.
pub fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s != "-"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_through_its_uri() {
        for id in [
            PeerIdentity {
                role: Role::Mount,
                site: Some("site-b".into()),
                name: "mount-1".into(),
            },
            PeerIdentity {
                role: Role::Admin,
                site: None,
                name: "ops".into(),
            },
        ] {
            assert_eq!(PeerIdentity::from_uri(&id.to_uri()), Some(id));
        }
        for bad in [
            "mobilus://cluster/root/site-a/x",
            "mobilus://cluster/mount/site-a/x/y",
            "mobilus://cluster/mount/site-a/",
            "mobilus://other/mount/site-a/x",
            "mobilus://cluster/mount/si te/x",
        ] {
            assert_eq!(PeerIdentity::from_uri(bad), None, "{bad}");
        }
    }
}
