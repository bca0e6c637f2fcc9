//! `mobilusctl dev ...`: a local cluster of real processes under one folder: metadata
//! members, one data node per site, and one FUSE mount per site at `DIR/mnt/<site>`.
//!
//! Each process gets `DIR/<name>/` with its data, `log` and `pid`; `DIR/cluster.toml`
//! records the addresses. `dev up` on a folder that already has a cluster restarts the
//! processes that are not running, on the same addresses and data.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;
use mobilus_meta_client::MetaClient;
use mobilus_tls::Role;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use crate::cluster;
use crate::devconfig::{ClusterFile, DataMember, MetaMember, MountMember};
use crate::output::{emit, opt, table, OutputFormat};

#[derive(Subcommand, Debug)]
pub enum DevCmd {
    /// Start (or restart) the local cluster and wait until it is healthy.
    Up {
        #[arg(long, default_value = ".mobilus-dev")]
        dir: PathBuf,
        /// Metadata members (1, 3 or 5).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=7))]
        meta: u64,
        /// Sites (`site-a`, `site-b`, ...), each with a data node and a mount.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=8))]
        sites: u64,
        /// Data nodes per site (each site keeps 2 copies of a chunk when it has 2 or
        /// more); used when the cluster is first made.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=8))]
        nodes_per_site: u64,
        /// An emulated WAN between the sites, `RTT,BANDWIDTH` (say `50ms,100mbit`): each
        /// site gets a network namespace of its own, and every connection between sites
        /// crosses a link proxy with that round trip and bandwidth. Chosen when the
        /// cluster is made; given again, it changes the link's shape. Needs root.
        #[arg(long, value_name = "RTT,BANDWIDTH", value_parser = crate::wan::parse_wan)]
        wan: Option<(u64, u64)>,
        /// With `--wan`: connections to this port of any site's address from another
        /// site cross the link too (for a baseline on the same link: an rsync daemon,
        /// say). Repeatable.
        #[arg(long, value_name = "PORT", requires = "wan")]
        wan_forward: Vec<u16>,
        /// Plaintext with no authentication, instead of mutual TLS from a CA made for
        /// the cluster in DIR/tls (chosen when the cluster is made).
        #[arg(long)]
        insecure: bool,
    },
    /// The WAN's link proxy (started by `dev up --wan`).
    #[command(hide = true)]
    Link {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        ready_file: PathBuf,
    },
    /// Show each process of the local cluster.
    Status {
        #[arg(long, default_value = ".mobilus-dev")]
        dir: PathBuf,
    },
    /// Stop every process of the local cluster (data stays).
    Down {
        #[arg(long, default_value = ".mobilus-dev")]
        dir: PathBuf,
    },
    /// The story so far, narrated as it runs on the local cluster (a minute or two).
    Demo {
        #[arg(long, default_value = ".mobilus-dev")]
        dir: PathBuf,
        #[command(flatten)]
        postgres: crate::demo::PgArgs,
    },
}

/// Find a sibling binary (same build) or one on PATH.
fn binary(name: &str) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!("cannot find `{name}` next to mobilusctl or on PATH — build it with `cargo build --workspace`")
}

fn pid_of(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

fn running_pid(dir: &Path) -> Option<i32> {
    pid_of(dir).filter(|p| alive(*p))
}

/// Where a process runs: on the machine's own network, or in its site's namespace on the
/// emulated WAN.
#[derive(Clone, Debug)]
struct Place {
    ns: Option<String>,
    /// The address it listens on (for metrics, and for its service unless given).
    host: String,
}

impl Place {
    fn local() -> Place {
        Place {
            ns: None,
            host: "127.0.0.1".into(),
        }
    }

    /// Site `site`'s place in the cluster `file` (the machine's network without a WAN).
    fn of(file: &ClusterFile, site: Option<&str>) -> Place {
        match (&file.wan, site) {
            (Some(w), Some(site)) => Place {
                ns: Some(crate::wan::site_ns(w, site)),
                host: crate::wan::site_ip(w, site)
                    .map(|ip| ip.to_string())
                    .unwrap_or_else(|| "127.0.0.1".into()),
            },
            _ => Place::local(),
        }
    }
}

/// Start one metadata member in the background; returns its advertised address.
fn spawn_meta(
    bin: &Path,
    id: u64,
    dir: &Path,
    listen: &str,
    extra: &[String],
    place: &Place,
    tls: &DevTls,
) -> anyhow::Result<String> {
    let mut args = tls.flags(Role::Meta, None, &format!("meta-{id}"))?;
    args.extend([
        "--id".to_string(),
        id.to_string(),
        "--listen".into(),
        listen.into(),
        "--data-dir".into(),
        dir.join("data").to_string_lossy().into_owned(),
    ]);
    args.extend_from_slice(extra);
    spawn(bin, &format!("mobilus-meta {id}"), dir, &args, place, true)
}

/// Where a process of the local cluster records its metrics endpoint.
const METRICS_FILE: &str = "metrics";

/// The metrics endpoint (host:port) of the process whose folder is `dir`.
pub fn metrics_addr(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(METRICS_FILE))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Start a process in the background at `place` with `args`, `--ready-file` and (if
/// `with_metrics`) a metrics endpoint; returns what it wrote to the ready file (its address or
/// mountpoint).
fn spawn(
    bin: &Path,
    what: &str,
    dir: &Path,
    args: &[String],
    place: &Place,
    with_metrics: bool,
) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    let ready = dir.join("ready");
    let _ = std::fs::remove_file(&ready);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))?;
    // Metrics on a free port the first time, and on the same one after a restart.
    let metrics = dir.join(METRICS_FILE);
    // (A port taken meanwhile by another program would stop the process: take a new one.)
    // (Inside a site's namespace the address is the site's, which only that namespace
    // can bind: keep it unless the host changed.)
    let metrics_listen = metrics_addr(dir)
        .filter(|a| {
            a.starts_with(&format!("{}:", place.host))
                && (place.ns.is_some() || std::net::TcpListener::bind(a.as_str()).is_ok())
        })
        .unwrap_or_else(|| format!("{}:0", place.host));
    let _ = std::fs::remove_file(&metrics);
    let mut cmd = match &place.ns {
        Some(ns) => mobilus_netem::net::enter(ns, bin),
        None => Command::new(bin),
    };
    cmd.args(args).arg("--ready-file").arg(&ready);
    if with_metrics {
        cmd.arg("--metrics-listen")
            .arg(&metrics_listen)
            .arg("--metrics-ready-file")
            .arg(&metrics);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    std::fs::write(dir.join("pid"), child.id().to_string())?;
    // Generous: on a loaded machine (a test suite starting several clusters on two
    // cores) a start has taken more than 30 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    let log_tail = || {
        let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    loop {
        if let Ok(addr) = std::fs::read_to_string(&ready) {
            return Ok(addr);
        }
        if !alive(child.id() as i32) {
            bail!("{what} exited at start; its log ends with:\n{}", log_tail());
        }
        if Instant::now() > deadline {
            bail!(
                "{what} did not start within 60s (see {}); its log ends with:\n{}",
                dir.join("log").display(),
                log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn wait_healthy(addrs: &[String], voters: usize) -> anyhow::Result<()> {
    let client = MetaClient::connect(addrs)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(view) = cluster::status(&client).await {
            let healthy = view
                .members
                .iter()
                .filter(|m| m.voter && m.reachable)
                .count();
            if healthy == voters {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the cluster did not become healthy within 60s; see `mobilusctl dev status` and the logs");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn site_name(i: u64) -> String {
    format!("site-{}", (b'a' + i as u8) as char)
}

fn is_mounted(point: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let point = point.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(point.as_ref()))
}

/// Clear a mountpoint a killed mount left behind.
fn clear_mount(point: &Path) {
    if is_mounted(point) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(point)
            .status();
    }
}

fn start_data(
    bin: &Path,
    d: &DataMember,
    listen: &str,
    metas: &str,
    place: &Place,
    tls: &DevTls,
) -> anyhow::Result<String> {
    let name = d
        .dir
        .file_name()
        .map_or("data".into(), |n| n.to_string_lossy());
    let mut args = tls.flags(Role::Data, Some(&d.site), &name)?;
    args.extend([
        "--site".into(),
        d.site.clone(),
        "--listen".into(),
        listen.into(),
        "--data-dir".into(),
        d.dir.join("data").to_string_lossy().into_owned(),
        "--meta".into(),
        metas.into(),
        // A dev cluster shares its disk with everything else on the machine: how full that
        // disk is says nothing about the cluster, so it does not evict its cache for it.
        "--cache-min-free-percent".into(),
        "0".into(),
    ]);
    spawn(
        bin,
        &format!("mobilus-data {}", d.site),
        &d.dir,
        &args,
        place,
        true,
    )
}

fn start_mount(
    bin: &Path,
    m: &MountMember,
    metas: &str,
    near: Option<&str>,
    local_chunks: Option<&Path>,
    place: &Place,
    tls: &DevTls,
) -> anyhow::Result<()> {
    clear_mount(&m.mountpoint);
    std::fs::create_dir_all(&m.mountpoint)?;
    let mut args = tls.flags(Role::Mount, Some(&m.site), &format!("mount-{}", m.site))?;
    args.extend([
        "--site".into(),
        m.site.clone(),
        "--meta".into(),
        metas.into(),
        // Access profiles on the demo's time scale: an application's first 3 s.
        "--profile-window-secs".into(),
        "3".into(),
        m.mountpoint.to_string_lossy().into_owned(),
    ]);
    if let Some(addr) = near {
        args.extend(["--near-meta".into(), addr.into()]);
    }
    if let Some(dir) = local_chunks {
        args.extend(["--local-chunks".into(), dir.to_string_lossy().into_owned()]);
    }
    spawn(
        bin,
        &format!("mobilus-mount {}", m.site),
        &m.dir,
        &args,
        place,
        true,
    )
    .context("mounting needs root (or fuse3's fusermount3 set up for your user)")?;
    Ok(())
}

/// What `dev up` makes when the cluster is new.
struct Shape {
    meta: u64,
    sites: u64,
    nodes_per_site: u64,
    /// Round trip (ms) and bandwidth (bytes/s) of an emulated WAN between the sites.
    wan: Option<(u64, u64)>,
    /// Ports of every site carried over the WAN besides the cluster's own.
    wan_forward: Vec<u16>,
    insecure: bool,
}

/// How the processes of a local cluster authenticate: certificates from the CA in its
/// `tls` folder (one per process, issued when it first starts), or none.
enum DevTls {
    Certs(Box<mobilus_tls::pki::DevPki>),
    Insecure,
}

impl DevTls {
    /// The cluster's: a new cluster gets a CA unless `insecure`; an existing one keeps
    /// what it was made with.
    fn open(
        dir: &Path,
        file: &mut ClusterFile,
        fresh: bool,
        insecure: bool,
    ) -> anyhow::Result<DevTls> {
        if (fresh && insecure) || (!fresh && file.tls.is_none()) {
            return Ok(DevTls::Insecure);
        }
        let pki = mobilus_tls::pki::DevPki::open(&dir.join("tls"))?;
        let admin = pki.flags(Role::Admin, None, "admin")?;
        file.tls = Some(crate::devconfig::AdminTls {
            ca: admin[1].clone().into(),
            cert: admin[3].clone().into(),
            key: admin[5].clone().into(),
        });
        Ok(DevTls::Certs(Box::new(pki)))
    }

    fn flags(&self, role: Role, site: Option<&str>, name: &str) -> anyhow::Result<Vec<String>> {
        Ok(match self {
            DevTls::Certs(pki) => pki.flags(role, site, name)?,
            DevTls::Insecure => vec!["--insecure".into()],
        })
    }
}

/// A new cluster on an emulated WAN, every address fixed before anything starts (so the
/// redirects through the link proxy are in place before the first connection): the
/// metadata members spread over the sites, round robin.
fn plan_wan_cluster(
    dir: &Path,
    shape: &Shape,
    (rtt_ms, bandwidth): (u64, u64),
) -> anyhow::Result<ClusterFile> {
    if shape.sites < 2 {
        bail!("--wan emulates the link between sites: it needs --sites 2 or more");
    }
    let sites: Vec<String> = (0..shape.sites).map(site_name).collect();
    let mut wan = crate::wan::plan(dir, rtt_ms, bandwidth, &sites);
    wan.forward_ports = shape.wan_forward.clone();
    let ip = |site: &str| {
        crate::wan::site_ip(&wan, site)
            .with_context(|| format!("{site} is not among the WAN's sites"))
    };
    let meta: Vec<MetaMember> = (1..=shape.meta)
        .map(|id| {
            let site = &sites[(id as usize - 1) % sites.len()];
            Ok(MetaMember {
                id,
                addr: format!("{}:{}", ip(site)?, crate::wan::META_PORT + id as u16),
                dir: dir.join(format!("meta-{id}")),
                site: Some(site.clone()),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let mut data = Vec::new();
    let mut mounts = Vec::new();
    for site in &sites {
        for k in 1..=shape.nodes_per_site {
            let name = match k {
                1 => format!("data-{site}"),
                k => format!("data-{site}-{k}"),
            };
            data.push(DataMember {
                site: site.clone(),
                addr: format!("{}:{}", ip(site)?, crate::wan::DATA_PORT + k as u16),
                dir: dir.join(name),
            });
        }
        mounts.push(MountMember {
            mountpoint: dir.join("mnt").join(site),
            dir: dir.join(format!("mount-{site}")),
            site: site.clone(),
        });
    }
    Ok(ClusterFile {
        meta_addrs: meta.iter().map(|m| m.addr.clone()).collect(),
        meta,
        data,
        mounts,
        wan: Some(wan),
        tls: None,
    })
}

/// Start the WAN's link proxy unless it runs (restart it if `restart`).
fn start_link(dir: &Path, restart: bool) -> anyhow::Result<()> {
    let link = crate::wan::link_dir(dir);
    if restart {
        stop(&link, Duration::from_secs(5));
    }
    if running_pid(&link).is_some() {
        return Ok(());
    }
    let me = std::env::current_exe().context("finding mobilusctl itself")?;
    let args: Vec<String> = vec![
        "dev".into(),
        "link".into(),
        "--dir".into(),
        dir.to_string_lossy().into_owned(),
    ];
    spawn(
        &me,
        "the WAN link proxy",
        &link,
        &args,
        &Place::local(),
        false,
    )?;
    Ok(())
}

async fn up(dir: &Path, shape: Shape, format: OutputFormat) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let bin = binary("mobilus-meta")?;
    let file_path = dir.join("cluster.toml");
    let fresh = !file_path.exists();
    let mut file = if !fresh {
        ClusterFile::load(&file_path)?
    } else if let Some(wan) = shape.wan {
        let file = plan_wan_cluster(&dir, &shape, wan)?;
        file.save(&file_path)?;
        file
    } else {
        ClusterFile::default()
    };
    // The link's shape may change on a cluster that has one; a cluster without one keeps
    // its single network.
    let mut reshaped = false;
    if let (Some((rtt_ms, bandwidth)), false) = (shape.wan, fresh) {
        let Some(w) = file.wan.as_mut() else {
            bail!(
                "the cluster in {} was made without --wan; the WAN is chosen when a cluster is made (`dev down`, remove the folder, and `dev up --wan` again)",
                dir.display()
            );
        };
        let mut ports = shape.wan_forward.clone();
        ports.sort_unstable();
        ports.dedup();
        reshaped = (w.rtt_ms, w.bandwidth, &w.forward_ports) != (rtt_ms, bandwidth, &ports);
        (w.rtt_ms, w.bandwidth, w.forward_ports) = (rtt_ms, bandwidth, ports);
        file.save(&file_path)?;
    }
    let tls = DevTls::open(&dir, &mut file, fresh, shape.insecure)?;
    if let DevTls::Certs(_) = &tls {
        file.save(&file_path)?;
        let admin = file.tls.as_ref().map(|t| t.load()).transpose()?;
        mobilus_tls::client::set_process_default(admin);
    }
    if file.wan.is_some() {
        crate::wan::network(&file)?;
        start_link(&dir, reshaped)?;
    }
    if fresh && file.meta.is_empty() {
        let first = dir.join("meta-1");
        let local = Place::local();
        let seed = spawn_meta(
            &bin,
            1,
            &first,
            "127.0.0.1:0",
            &["--init".into()],
            &local,
            &tls,
        )?;
        file.meta.push(MetaMember {
            id: 1,
            addr: seed.clone(),
            dir: first,
            site: None,
        });
        for id in 2..=shape.meta {
            let d = dir.join(format!("meta-{id}"));
            let join = ["--join".into(), seed.clone()];
            let addr = spawn_meta(&bin, id, &d, "127.0.0.1:0", &join, &local, &tls)?;
            file.meta.push(MetaMember {
                id,
                addr,
                dir: d,
                site: None,
            });
        }
        file.meta_addrs = file.meta.iter().map(|m| m.addr.clone()).collect();
        file.save(&file_path)?;
    } else {
        let seed = file
            .meta
            .first()
            .map(|m| m.addr.clone())
            .unwrap_or_default();
        for m in &file.meta {
            if running_pid(&m.dir).is_none() {
                // A member of a new planned cluster is made by --init (the first) or
                // --join; after that it restarts from its data.
                let extra: Vec<String> = match (fresh, m.id) {
                    (false, _) => vec![],
                    (true, 1) => vec!["--init".into()],
                    (true, _) => vec!["--join".into(), seed.clone()],
                };
                let place = Place::of(&file, m.site.as_deref());
                spawn_meta(&bin, m.id, &m.dir, &m.addr, &extra, &place, &tls)?;
            }
        }
    }
    wait_healthy(&file.meta_addrs, file.meta.len()).await?;

    // Sites: a data node each (restarted on its address), then a mount each.
    let metas = file.meta_addrs.join(",");
    let data_bin = binary("mobilus-data")?;
    if file.data.is_empty() && shape.sites > 0 {
        for i in 0..shape.sites {
            let site = site_name(i);
            for k in 1..=shape.nodes_per_site {
                // The first node's folder keeps the one-node name.
                let name = match k {
                    1 => format!("data-{site}"),
                    k => format!("data-{site}-{k}"),
                };
                let mut d = DataMember {
                    addr: String::new(),
                    dir: dir.join(name),
                    site: site.clone(),
                };
                d.addr = start_data(&data_bin, &d, "127.0.0.1:0", &metas, &Place::local(), &tls)?;
                file.data.push(d);
            }
            file.mounts.push(MountMember {
                mountpoint: dir.join("mnt").join(&site),
                dir: dir.join(format!("mount-{site}")),
                site,
            });
        }
        file.save(&file_path)?;
    } else {
        for d in &file.data {
            if running_pid(&d.dir).is_none() {
                let place = Place::of(&file, Some(&d.site));
                start_data(&data_bin, d, &d.addr, &metas, &place, &tls)?;
            }
        }
    }
    if !file.mounts.is_empty() {
        let mount_bin = binary("mobilus-mount")?;
        for m in &file.mounts {
            if running_pid(&m.dir).is_none() {
                // Across a WAN, the holder of a delegation reads at its own site.
                let near = file
                    .meta
                    .iter()
                    .find(|x| x.site.as_deref() == Some(m.site.as_str()))
                    .map(|x| x.addr.as_str());
                // The site's one data node runs on this host: its chunk files are read
                // directly (short-circuit reads). With several, most chunks would be on
                // the others.
                let mut nodes = file.data.iter().filter(|d| d.site == m.site);
                let local = match (nodes.next(), nodes.next()) {
                    (Some(d), None) => Some(d.dir.join("data")),
                    _ => None,
                };
                let place = Place::of(&file, Some(&m.site));
                start_mount(&mount_bin, m, &metas, near, local.as_deref(), &place, &tls)?;
            }
        }
    }
    if format == OutputFormat::Table {
        println!("Local Mobilus cluster is up in {}", dir.display());
        println!("  metadata: {metas}");
        for d in &file.data {
            println!("  {}:   data node {}", d.site, d.addr);
        }
        for m in &file.mounts {
            println!("  {}:   mounted at {}", m.site, m.mountpoint.display());
        }
        if let Some(w) = &file.wan {
            println!(
                "  WAN:      {} ms round trip, {:.0} Mbit/s between sites (each site its own network namespace)",
                w.rtt_ms,
                w.bandwidth as f64 * 8.0 / 1e6
            );
        }
        println!(
            "  try:      mobilusctl --config {} cluster status",
            file_path.display()
        );
        println!("  stop:     mobilusctl dev down --dir {}", dir.display());
    }
    status(&dir, format).await
}

/// One process of the local cluster, as `dev status` shows it (stable JSON schema).
#[derive(Serialize, Debug)]
struct ProcessView {
    name: String,
    /// `meta`, `data`, `mount` or `wan` (the link proxy).
    kind: &'static str,
    /// Metadata member id (0 for other kinds).
    id: u64,
    /// Listening address, or the mountpoint of a mount.
    addr: String,
    site: Option<String>,
    pid: Option<i32>,
    running: bool,
    state: Option<String>,
    term: Option<u64>,
    last_applied: Option<u64>,
    /// Its Prometheus endpoint (`http://<metrics>/metrics`).
    metrics: Option<String>,
    log: PathBuf,
}

async fn status(dir: &Path, format: OutputFormat) -> anyhow::Result<()> {
    let file = ClusterFile::load_dev(dir)?;
    let client = cluster::connect(&file.meta_addrs)?;
    let mut rows = Vec::new();
    for m in &file.meta {
        let pid = running_pid(&m.dir);
        let s = if pid.is_some() {
            client.status_of(&m.addr).await.ok()
        } else {
            None
        };
        rows.push(ProcessView {
            name: format!("meta-{}", m.id),
            kind: "meta",
            id: m.id,
            addr: m.addr.clone(),
            site: None,
            pid,
            running: pid.is_some(),
            state: s.as_ref().map(|s| s.state.clone()),
            term: s.as_ref().map(|s| s.term),
            last_applied: s.as_ref().and_then(|s| s.last_applied),
            metrics: metrics_addr(&m.dir),
            log: m.dir.join("log"),
        });
    }
    let others = file
        .data
        .iter()
        .map(|d| {
            let name = d.dir.file_name().map(|n| n.to_string_lossy().into_owned());
            (
                "data",
                name.unwrap_or_else(|| format!("data-{}", d.site)),
                d.addr.clone(),
                &d.site,
                &d.dir,
            )
        })
        .chain(file.mounts.iter().map(|m| {
            let point = m.mountpoint.to_string_lossy().into_owned();
            ("mount", format!("mount-{}", m.site), point, &m.site, &m.dir)
        }));
    for (kind, name, addr, site, pdir) in others {
        let pid = running_pid(pdir);
        rows.push(ProcessView {
            name,
            kind,
            id: 0,
            addr,
            site: Some(site.clone()),
            pid,
            running: pid.is_some(),
            state: None,
            term: None,
            last_applied: None,
            metrics: metrics_addr(pdir),
            log: pdir.join("log"),
        });
    }
    if let Some(w) = &file.wan {
        let link = crate::wan::link_dir(dir);
        let pid = running_pid(&link);
        rows.push(ProcessView {
            name: "wan-link".into(),
            kind: "wan",
            id: 0,
            addr: format!(
                "{} ms, {:.0} Mbit/s",
                w.rtt_ms,
                w.bandwidth as f64 * 8.0 / 1e6
            ),
            site: None,
            pid,
            running: pid.is_some(),
            state: None,
            term: None,
            last_applied: None,
            metrics: None,
            log: link.join("log"),
        });
    }
    emit(format, &rows, |rows| {
        let mut t = table(&[
            "PROCESS",
            "ADDRESS / MOUNTPOINT",
            "PID",
            "RUNNING",
            "RAFT STATE",
            "TERM",
            "APPLIED",
            "METRICS",
        ]);
        for r in rows {
            t.add_row(vec![
                r.name.clone(),
                r.addr.clone(),
                r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                if r.running { "yes" } else { "no" }.into(),
                r.state.clone().unwrap_or_else(|| "-".into()),
                opt(r.term),
                opt(r.last_applied),
                r.metrics.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        t
    })
}

/// SIGTERM, then SIGKILL after `grace`; true if it had been running.
fn stop(pdir: &Path, grace: Duration) -> bool {
    let Some(pid) = running_pid(pdir) else {
        return false;
    };
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = std::fs::remove_file(pdir.join("pid"));
    true
}

fn down(dir: &Path) -> anyhow::Result<()> {
    let file = ClusterFile::load_dev(dir)?;
    let mut stopped = 0;
    // Mounts first (they flush to the data nodes and the metadata), metadata last.
    for m in &file.mounts {
        stopped += usize::from(stop(&m.dir, Duration::from_secs(30)));
        clear_mount(&m.mountpoint);
    }
    for d in &file.data {
        stopped += usize::from(stop(&d.dir, Duration::from_secs(10)));
    }
    for m in &file.meta {
        stopped += usize::from(stop(&m.dir, Duration::from_secs(10)));
    }
    if let Some(w) = &file.wan {
        stopped += usize::from(stop(&crate::wan::link_dir(dir), Duration::from_secs(5)));
        crate::wan::remove_network(w);
    }
    println!(
        "stopped {stopped} processes; data kept in {}",
        dir.display()
    );
    Ok(())
}

pub async fn run(cmd: DevCmd, format: OutputFormat) -> anyhow::Result<()> {
    match cmd {
        DevCmd::Up {
            dir,
            meta,
            sites,
            nodes_per_site,
            wan,
            wan_forward,
            insecure,
        } => {
            let shape = Shape {
                meta,
                sites,
                nodes_per_site,
                wan,
                wan_forward,
                insecure,
            };
            up(&dir, shape, format).await
        }
        DevCmd::Link { dir, ready_file } => crate::wan::run_link(&dir, &ready_file).await,
        DevCmd::Status { dir } => status(&dir, format).await,
        DevCmd::Down { dir } => down(&dir),
        DevCmd::Demo { dir, postgres } => crate::demo::run(&dir, postgres).await,
    }
}
