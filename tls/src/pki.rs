//! The cluster CA and the certificates it issues.
//!
//! A CA folder holds `ca.pem` (given to every process as `--ca`) and `ca.key` (kept by the
//! operator, mode 0600). An issued certificate is `NAME.pem` and `NAME.key` in a folder
//! of the operator's choosing. Every file is written durably (temp file, fsync, rename)
//! and never overwritten: a CA made twice would split the cluster in two.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use crate::{PeerIdentity, Role, TlsError};

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";

/// A certificate's validity: from an hour ago (clocks differ) for `lifetime`.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    pub fn for_days(days: u32) -> Validity {
        Validity::starting_now(Duration::from_secs(u64::from(days) * 86_400))
    }

    /// From `not_before` to `not_after` (one that has ended: an expired certificate).
    pub fn between(
        not_before: std::time::SystemTime,
        not_after: std::time::SystemTime,
    ) -> Validity {
        Validity {
            not_before: not_before.into(),
            not_after: not_after.into(),
        }
    }

    pub fn starting_now(lifetime: Duration) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - time::Duration::hours(1),
            not_after: now + lifetime,
        }
    }
}

/// The cluster's certificate authority.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, in PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Where [`Issued::write`] put the files.
#[derive(Clone, Debug)]
pub struct IssuedFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn cert_err(e: rcgen::Error) -> TlsError {
    TlsError::Certificate(e.to_string())
}

impl Ca {
    /// Make a new CA in `dir` (created if missing). Refuses if `dir` has one already.
    pub fn create(dir: &Path, validity: Validity) -> Result<Ca, TlsError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        for f in [CA_CERT, CA_KEY] {
            let p = dir.join(f);
            if p.exists() {
                return Err(TlsError::Usage(format!(
                    "{} exists: a cluster has one CA (use it, or choose another folder)",
                    p.display()
                )));
            }
        }
        let key = KeyPair::generate().map_err(cert_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Mobilus cluster CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.self_signed(&key).map_err(cert_err)?;
        write_durably(&dir.join(CA_KEY), key.serialize_pem().as_bytes(), true)?;
        write_durably(&dir.join(CA_CERT), cert.pem().as_bytes(), false)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA in `dir`.
    pub fn load(dir: &Path) -> Result<Ca, TlsError> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        let cert_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::BadFile {
            path: key_path.display().to_string(),
            reason: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| TlsError::BadFile {
            path: cert_path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Ca { cert_pem, issuer })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for `who`: its identity URI, its role's server name if it serves,
    /// and both TLS usages (every server is also a client of another).
    pub fn issue(&self, who: &PeerIdentity, validity: Validity) -> Result<Issued, TlsError> {
        let key = KeyPair::generate().map_err(cert_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, who.name.as_str());
        if let Some(site) = &who.site {
            dn.push(DnType::OrganizationalUnitName, site.as_str());
        }
        params.distinguished_name = dn;
        let ia5 = |s: String| s.try_into().map_err(cert_err);
        params.subject_alt_names = vec![SanType::URI(ia5(who.to_uri())?)];
        if let Some(name) = who.role.server_name() {
            params
                .subject_alt_names
                .push(SanType::DnsName(ia5(name.to_string())?));
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(cert_err)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl Issued {
    /// Write `NAME.pem` and `NAME.key` into `dir` (created if missing); refuses to
    /// overwrite unless `replace` (a rotation).
    pub fn write(&self, dir: &Path, name: &str, replace: bool) -> Result<IssuedFiles, TlsError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let files = IssuedFiles {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        };
        if !replace {
            for p in [&files.cert, &files.key] {
                if p.exists() {
                    return Err(TlsError::Usage(format!(
                        "{} exists (--replace to rotate it)",
                        p.display()
                    )));
                }
            }
        }
        // The key first: a reload that sees the new certificate must find its key.
        write_durably(&files.key, self.key_pem.as_bytes(), true)?;
        write_durably(&files.cert, self.cert_pem.as_bytes(), false)?;
        Ok(files)
    }
}

/// The identity in a verified certificate (DER), if it carries one of ours.
pub fn identity_of(cert_der: &[u8]) -> Option<PeerIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(uri) => PeerIdentity::from_uri(uri),
        _ => None,
    })
}

/// Temp file, fsync, rename, fsync the folder; `secret` files are 0600.
pub fn write_durably(path: &Path, bytes: &[u8], secret: bool) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

/// Everything a local cluster needs: a CA in `dir/ca` and, per process, `dir/NAME.pem`
/// and `.key`. Used by `dev up`, the tests, the benchmarks and the harness.
pub struct DevPki {
    pub dir: PathBuf,
    ca: Ca,
    /// One certificate issued at a time: two threads issuing one name at once could
    /// leave one's certificate beside the other's key.
    issuing: std::sync::Mutex<()>,
}

impl DevPki {
    /// A new CA under `dir` (or the one already there).
    pub fn open(dir: &Path) -> Result<DevPki, TlsError> {
        let ca_dir = dir.join("ca");
        let ca = if ca_dir.join(CA_CERT).exists() {
            Ca::load(&ca_dir)?
        } else {
            Ca::create(&ca_dir, Validity::for_days(3650))?
        };
        Ok(DevPki {
            dir: dir.to_path_buf(),
            ca,
            issuing: std::sync::Mutex::new(()),
        })
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca").join(CA_CERT)
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The certificate of `name` (issued now if it does not exist yet), as the flags
    /// a binary takes: `--ca A --cert B --key C`.
    pub fn flags(
        &self,
        role: Role,
        site: Option<&str>,
        name: &str,
    ) -> Result<Vec<String>, TlsError> {
        let files = IssuedFiles {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        };
        let _one_at_a_time = self.issuing.lock().unwrap_or_else(|p| p.into_inner());
        if !files.cert.exists() {
            let who = PeerIdentity {
                role,
                site: site.map(str::to_string),
                name: name.to_string(),
            };
            self.ca
                .issue(&who, Validity::for_days(3650))?
                .write(&self.dir, name, true)?;
        }
        Ok(vec![
            "--ca".into(),
            self.ca_cert().display().to_string(),
            "--cert".into(),
            files.cert.display().to_string(),
            "--key".into(),
            files.key.display().to_string(),
        ])
    }

    /// The loaded configuration of `name` (issued now if needed), for a client in a test.
    pub fn config(
        &self,
        role: Role,
        site: Option<&str>,
        name: &str,
    ) -> Result<crate::TlsConfig, TlsError> {
        let flags = self.flags(role, site, name)?;
        crate::TlsConfig::load(&crate::config::TlsFiles {
            ca: flags[1].clone().into(),
            cert: flags[3].clone().into(),
            key: flags[5].clone().into(),
        })
    }
}

/// The CA of a whole test process, whatever clusters it starts (made, and its operator's
/// certificate installed as the process default, on the first call): the tests' own
/// clients use the process default, so every cluster of the process must trust the same
/// CA. For test suites and benchmarks, not for production.
pub fn test_pki() -> Result<&'static DevPki, TlsError> {
    static PKI: std::sync::OnceLock<Result<(tempfile::TempDir, DevPki), String>> =
        std::sync::OnceLock::new();
    let made = PKI.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("mobilus-test-pki-")
            .tempdir()
            .map_err(|e| format!("a folder for the tests' CA: {e}"))?;
        let pki = DevPki::open(dir.path()).map_err(|e| e.to_string())?;
        let admin = pki
            .config(Role::Admin, None, "admin")
            .map_err(|e| e.to_string())?;
        crate::client::set_process_default(Some(std::sync::Arc::new(admin)));
        Ok((dir, pki))
    });
    match made {
        Ok((_, pki)) => Ok(pki),
        Err(e) => Err(TlsError::Certificate(format!("the tests' CA: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_certificate_carries_its_identity_and_a_ca_is_never_made_twice() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create(dir.path(), Validity::for_days(1)).unwrap();
        assert!(Ca::create(dir.path(), Validity::for_days(1)).is_err());
        let who = PeerIdentity {
            role: Role::Data,
            site: Some("site-a".into()),
            name: "data-a1".into(),
        };
        let issued = Ca::load(dir.path())
            .unwrap()
            .issue(&who, Validity::for_days(1))
            .unwrap();
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(issued.cert_pem.as_bytes())
            .map(|c: rustls_pki_types::CertificateDer<'static>| c)
            .unwrap();
        assert_eq!(identity_of(&der), Some(who));
        assert!(ca.cert_pem().contains("BEGIN CERTIFICATE"));
        let files = issued.write(dir.path(), "data-a1", false).unwrap();
        assert!(issued.write(dir.path(), "data-a1", false).is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&files.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
