//! The flags every binary shares, and the loaded configuration, reloaded in place.
//!
//! A running process picks up new files (a rotated certificate, a new CA bundle) on
//! SIGHUP or within a second of a file changing, for every connection made afterwards;
//! connections already open keep their session. A reload that fails (a half-copied key,
//! a certificate that does not match it) keeps the old configuration and logs why.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::{pki, PeerIdentity, TlsError};

/// `--ca`, `--cert`, `--key` (mutual TLS), or `--insecure` (plaintext).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// The cluster CA's certificate (PEM): peers must present a certificate it signed.
    #[arg(long, value_name = "FILE", requires_all = ["cert", "key"], conflicts_with = "insecure")]
    pub ca: Option<PathBuf>,
    /// This process's certificate (PEM), issued by `mobilusctl cert issue`.
    #[arg(long, value_name = "FILE", requires_all = ["ca", "key"])]
    pub cert: Option<PathBuf>,
    /// This process's private key (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["ca", "cert"])]
    pub key: Option<PathBuf>,
    /// Plaintext with no authentication: anyone who reaches a port is trusted. For a
    /// throwaway cluster on one machine only.
    #[arg(long)]
    pub insecure: bool,
}

/// The three files of a TLS configuration.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsArgs {
    /// The files, `None` with `--insecure`; an error if neither was given.
    pub fn files(&self, binary: &str) -> Result<Option<TlsFiles>, TlsError> {
        match (&self.ca, &self.cert, &self.key, self.insecure) {
            (Some(ca), Some(cert), Some(key), false) => Ok(Some(TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            })),
            (None, None, None, true) => Ok(None),
            _ => Err(TlsError::Usage(format!(
                "{binary} needs --ca, --cert and --key (mutual TLS), or --insecure for plaintext"
            ))),
        }
    }

    /// Load the configuration (`None` with `--insecure`, after a warning).
    pub fn load(&self, binary: &str) -> Result<Option<Arc<TlsConfig>>, TlsError> {
        match self.files(binary)? {
            Some(files) => Ok(Some(Arc::new(TlsConfig::load(&files)?))),
            None => {
                tracing::warn!(
                    "{binary}: --insecure: plaintext with no authentication; anyone who \
                     reaches a port is trusted"
                );
                Ok(None)
            }
        }
    }

    /// Load, make it the process's client configuration, and reload it when its files
    /// change until `stop` fires: what a binary does at start.
    pub fn install(
        &self,
        binary: &str,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Option<Arc<TlsConfig>>, TlsError> {
        let tls = self.load(binary)?;
        crate::client::set_process_default(tls.clone());
        if let Some(t) = &tls {
            tracing::info!(identity = %t.identity(), "mutual TLS on");
            t.watch(stop);
        }
        Ok(tls)
    }

    /// The flags that reproduce these arguments (for a process this one starts).
    pub fn to_flags(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (flag, v) in [
            ("--ca", &self.ca),
            ("--cert", &self.cert),
            ("--key", &self.key),
        ] {
            if let Some(p) = v {
                out.push(flag.to_string());
                out.push(p.display().to_string());
            }
        }
        if self.insecure {
            out.push("--insecure".into());
        }
        out
    }
}

/// One loaded generation of the files.
pub struct Loaded {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    /// Who this process is, by its own certificate.
    pub identity: PeerIdentity,
    stamps: Vec<Option<(SystemTime, u64)>>,
}

/// A process's TLS configuration: its certificate and key, and the CA its peers' must
/// chain to. Shared by its server and its clients.
pub struct TlsConfig {
    files: TlsFiles,
    current: RwLock<Arc<Loaded>>,
    reload_asked: AtomicBool,
}

/// ring: no C toolchain or cmake to build (aws-lc-rs needs them). rustls 0.23.48
/// deprecates it for lacking post-quantum key exchange, which aws-lc-rs would bring.
#[allow(deprecated)]
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::BadFile {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn stamps(files: &TlsFiles) -> Vec<Option<(SystemTime, u64)>> {
    [&files.ca, &files.cert, &files.key]
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

fn load_files(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let stamps = stamps(files);
    let certs = |p: &Path| -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let v = CertificateDer::pem_file_iter(p)
            .map_err(|e| bad(p, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(p, e))?;
        if v.is_empty() {
            return Err(bad(p, "no certificate in the file"));
        }
        Ok(v)
    };
    let mut roots = RootCertStore::empty();
    for c in certs(&files.ca)? {
        roots.add(c).map_err(|e| bad(&files.ca, e))?;
    }
    let roots = Arc::new(roots);
    let chain = certs(&files.cert)?;
    let identity = pki::identity_of(&chain[0]).ok_or_else(|| {
        bad(
            &files.cert,
            "not a Mobilus certificate (no mobilus://cluster/ROLE/SITE/NAME name)",
        )
    })?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| bad(&files.key, e))?;
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| bad(&files.ca, e))?;
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| {
            bad(
                &files.key,
                format!("does not match {}: {e}", files.cert.display()),
            )
        })?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| bad(&files.key, e))?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded {
        server: Arc::new(server),
        client: Arc::new(client),
        identity,
        stamps,
    })
}

impl TlsConfig {
    pub fn load(files: &TlsFiles) -> Result<TlsConfig, TlsError> {
        Ok(TlsConfig {
            files: files.clone(),
            current: RwLock::new(Arc::new(load_files(files)?)),
            reload_asked: AtomicBool::new(false),
        })
    }

    /// The generation in use now.
    pub fn current(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn identity(&self) -> PeerIdentity {
        self.current().identity.clone()
    }

    /// Read the files again now. On failure the old configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = load_files(&self.files)?;
        tracing::info!(identity = %loaded.identity, "TLS certificates reloaded");
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        Ok(())
    }

    /// Did a file change since the generation in use was loaded?
    fn changed(&self) -> bool {
        stamps(&self.files) != self.current().stamps
    }

    /// Reload on SIGHUP or when a file changes, until `stop` fires (the `tls-reload`
    /// worker). Call once per process, inside its runtime.
    pub fn watch(self: &Arc<Self>, stop: tokio::sync::watch::Receiver<bool>) {
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            let me = Arc::downgrade(self);
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    match me.upgrade() {
                        Some(c) => c.reload_asked.store(true, Ordering::Relaxed),
                        None => return,
                    }
                }
            });
        }
        let me = self.clone();
        mobilus_telemetry::worker::spawn_periodic(
            "tls-reload",
            Duration::from_secs(1),
            Duration::from_secs(30),
            stop,
            move || {
                let me = me.clone();
                async move {
                    if me.reload_asked.swap(false, Ordering::Relaxed) || me.changed() {
                        me.reload()?;
                    }
                    Ok::<(), TlsError>(())
                }
            },
        );
    }
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("identity", &self.identity().to_string())
            .field("files", &self.files)
            .finish()
    }
}
