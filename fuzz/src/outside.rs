//! Files people and tools hand us: Jepsen histories, and configuration (a member's TOML,
//! certificates and keys).

use std::time::Duration;

use mobilus_jepsen::checker::{self, durability, set, staleness, ModelKind};
use mobilus_jepsen::edn::read_edn;
use mobilus_meta::config::FileConfig;
use mobilus_tls::config::TlsFiles;
use mobilus_tls::pki::{self, Ca, Validity};
use mobilus_tls::rustls_pki_types::pem::PemObject;
use mobilus_tls::rustls_pki_types::CertificateDer;
use mobilus_tls::{PeerIdentity, Role, TlsConfig};

use crate::{framed, frames, scratch_dir};

/// A history in Jepsen's EDN (`mobilus-jepsen check FILE`), read and then checked by
/// every checker, each within a small budget.
pub fn edn_history(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let Ok(history) = read_edn(text) else {
        return;
    };
    let budget = Duration::from_millis(20);
    let _ = checker::check(&history, ModelKind::Register, budget);
    let _ = checker::check(&history, ModelKind::CasRegister, budget);
    let _ = set::check(&history);
    let _ = durability::check(&history);
    let _ = staleness::check(&history, Duration::from_secs(1));
    let mut out = Vec::new();
    mobilus_jepsen::edn::write_edn(&history, &mut out).expect("writes to memory");
}

/// A configuration file: the first byte says which. 0: a metadata member's TOML (read,
/// then resolved to a configuration); 1: three frames, the CA bundle, the certificate
/// chain and the key, as PEM files (loaded as a binary loads `--ca/--cert/--key`).
pub fn config_files(input: &[u8]) {
    let Some((&which, body)) = input.split_first() else {
        return;
    };
    if which % 2 == 0 {
        let Ok(text) = std::str::from_utf8(body) else {
            return;
        };
        if let Ok(file) = toml::from_str::<FileConfig>(text) {
            let _ = file.resolve();
        }
        return;
    }
    let parts: Vec<&[u8]> = frames(body).take(3).collect();
    for part in &parts {
        for der in CertificateDer::pem_slice_iter(part).flatten() {
            let _ = pki::identity_of(&der);
        }
    }
    let dir = scratch_dir();
    let path = |n: &str| dir.path().join(n);
    for (i, n) in ["ca.pem", "cert.pem", "key.pem"].iter().enumerate() {
        std::fs::write(path(n), parts.get(i).copied().unwrap_or_default()).expect("a scratch file");
    }
    let _ = TlsConfig::load(&TlsFiles {
        ca: path("ca.pem"),
        cert: path("cert.pem"),
        key: path("key.pem"),
    });
}

/// A real CA bundle, certificate and key, framed as [`config_files`] reads them.
pub fn seed_pem() -> Vec<u8> {
    let dir = scratch_dir();
    let ca = Ca::create(dir.path(), Validity::for_days(1)).expect("a CA");
    let who = PeerIdentity {
        role: Role::Mount,
        site: Some("site-a".into()),
        name: "mount-1".into(),
    };
    let issued = ca
        .issue(&who, Validity::for_days(1))
        .expect("a certificate");
    framed(&[
        ca.cert_pem().as_bytes(),
        issued.cert_pem.as_bytes(),
        issued.key_pem.as_bytes(),
    ])
}
