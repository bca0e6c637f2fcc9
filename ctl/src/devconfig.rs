//! `cluster.toml`, written by `dev up`: where each process of a local cluster lives.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MetaMember {
    pub id: u64,
    pub addr: String,
    pub dir: PathBuf,
    /// The site whose network it is in (clusters with an emulated WAN only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

/// The emulated WAN between the sites of a local cluster (`dev up --wan`): each site is a
/// network namespace, and every connection between sites goes through a link proxy.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WanLink {
    /// Round-trip time added between sites, in milliseconds.
    pub rtt_ms: u64,
    /// Bytes per second, each way.
    pub bandwidth: u64,
    /// Names the network's namespaces and bridge (from the cluster's folder).
    pub key: u32,
    /// The sites, in the order of their hosts on the network.
    pub sites: Vec<String>,
    /// Ports of every site's address whose connections from other sites cross the link
    /// too (`dev up --wan-forward`: an rsync daemon, say, for a baseline on the same link).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward_ports: Vec<u16>,
}

/// A data node of a local cluster.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DataMember {
    pub site: String,
    pub addr: String,
    pub dir: PathBuf,
}

/// A FUSE mount of a local cluster.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MountMember {
    pub site: String,
    pub mountpoint: PathBuf,
    pub dir: PathBuf,
}

/// The operator's certificate of a local cluster (issued by `dev up`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AdminTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl AdminTls {
    pub fn load(&self) -> anyhow::Result<std::sync::Arc<mobilus_tls::TlsConfig>> {
        let files = mobilus_tls::config::TlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        };
        Ok(std::sync::Arc::new(mobilus_tls::TlsConfig::load(&files)?))
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterFile {
    /// Addresses clients use.
    pub meta_addrs: Vec<String>,
    #[serde(default)]
    pub meta: Vec<MetaMember>,
    #[serde(default)]
    pub data: Vec<DataMember>,
    #[serde(default)]
    pub mounts: Vec<MountMember>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wan: Option<WanLink>,
    /// The operator's certificate (`None`: the cluster runs `--insecure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<AdminTls>,
}

impl ClusterFile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The `cluster.toml` of the local cluster in `dir`, or an error saying how to start
    /// one. From then on this process dials the cluster with its operator certificate.
    pub fn load_dev(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("cluster.toml");
        if !path.exists() {
            bail!(
                "no local cluster in {} — start one with `mobilusctl dev up --dir {}`",
                dir.display(),
                dir.display()
            );
        }
        let file = Self::load(&path)?;
        let tls = file.tls.as_ref().map(AdminTls::load).transpose()?;
        mobilus_tls::client::set_process_default(tls);
        Ok(file)
    }

    /// Write durably: temp file, fsync, rename.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        let tmp = path.with_extension("toml.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(toml::to_string_pretty(self)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

/// The metadata addresses from `--meta`/`MOBILUS_META`, else from `--config`/`MOBILUS_CONFIG`.
pub fn resolve_meta(meta: &[String], config: Option<&Path>) -> anyhow::Result<Vec<String>> {
    if !meta.is_empty() {
        return Ok(meta.to_vec());
    }
    if let Some(path) = config {
        let file = ClusterFile::load(path)?;
        if file.meta_addrs.is_empty() {
            bail!("{} lists no metadata addresses", path.display());
        }
        return Ok(file.meta_addrs);
    }
    bail!("no cluster given: pass --meta HOST:PORT[,...] or --config DIR/cluster.toml (or set MOBILUS_META / MOBILUS_CONFIG); for a local cluster run `mobilusctl dev up` first")
}

/// How this process dials: `--ca/--cert/--key`, `--insecure`, or the operator's
/// certificate in `--config`'s cluster file.
pub fn resolve_tls(
    args: &mobilus_tls::TlsArgs,
    config: Option<&Path>,
) -> anyhow::Result<Option<std::sync::Arc<mobilus_tls::TlsConfig>>> {
    if args.ca.is_some() || args.insecure {
        return Ok(args.load("mobilusctl")?);
    }
    if let Some(path) = config {
        let file = ClusterFile::load(path)?;
        return match &file.tls {
            Some(tls) => Ok(Some(tls.load()?)),
            None => Ok(None),
        };
    }
    Ok(args.load("mobilusctl")?)
}
