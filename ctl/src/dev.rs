//! `mobilusctl dev ...`: a local cluster of real processes under one folder.
//!
//! Each process gets `DIR/<name>/` with its data, `log` and `pid`; `DIR/cluster.toml`
//! records the addresses. `dev up` on a folder that already has a cluster restarts the
//! members that are not running, on the same addresses and data.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;
use mobilus_meta_client::MetaClient;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use crate::cluster;
use crate::devconfig::{ClusterFile, MetaMember};
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

/// Start one metadata member in the background; returns its advertised address.
fn spawn_meta(
    bin: &Path,
    id: u64,
    dir: &Path,
    listen: &str,
    extra: &[String],
) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    let ready = dir.join("ready");
    let _ = std::fs::remove_file(&ready);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))?;
    let child = Command::new(bin)
        .args(["--id", &id.to_string(), "--listen", listen])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--ready-file")
        .arg(&ready)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    std::fs::write(dir.join("pid"), child.id().to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(addr) = std::fs::read_to_string(&ready) {
            return Ok(addr);
        }
        if !alive(child.id() as i32) {
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            bail!(
                "mobilus-meta {id} exited at start; its log ends with:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if Instant::now() > deadline {
            bail!(
                "mobilus-meta {id} did not start within 30s (see {})",
                dir.join("log").display()
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

async fn up(dir: &Path, n: u64, format: OutputFormat) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let bin = binary("mobilus-meta")?;
    let file_path = dir.join("cluster.toml");
    let file = if file_path.exists() {
        let file = ClusterFile::load(&file_path)?;
        for m in &file.meta {
            if running_pid(&m.dir).is_none() {
                spawn_meta(&bin, m.id, &m.dir, &m.addr, &[])?;
            }
        }
        file
    } else {
        let mut meta = Vec::new();
        let first = dir.join("meta-1");
        let seed = spawn_meta(&bin, 1, &first, "127.0.0.1:0", &["--init".into()])?;
        meta.push(MetaMember {
            id: 1,
            addr: seed.clone(),
            dir: first,
        });
        for id in 2..=n {
            let d = dir.join(format!("meta-{id}"));
            let addr = spawn_meta(
                &bin,
                id,
                &d,
                "127.0.0.1:0",
                &["--join".into(), seed.clone()],
            )?;
            meta.push(MetaMember { id, addr, dir: d });
        }
        let file = ClusterFile {
            meta_addrs: meta.iter().map(|m| m.addr.clone()).collect(),
            meta,
        };
        file.save(&file_path)?;
        file
    };
    wait_healthy(&file.meta_addrs, file.meta.len()).await?;
    if format == OutputFormat::Table {
        println!("Local Mobilus cluster is up in {}", dir.display());
        println!("  metadata: {}", file.meta_addrs.join(","));
        println!(
            "  try:      mobilusctl --config {} cluster status",
            file_path.display()
        );
        println!("  stop:     mobilusctl dev down --dir {}", dir.display());
    }
    status(&dir, format).await
}

#[derive(Serialize, Debug)]
struct ProcessView {
    name: String,
    id: u64,
    addr: String,
    pid: Option<i32>,
    running: bool,
    state: Option<String>,
    term: Option<u64>,
    last_applied: Option<u64>,
    log: PathBuf,
}

async fn status(dir: &Path, format: OutputFormat) -> anyhow::Result<()> {
    let path = dir.join("cluster.toml");
    if !path.exists() {
        bail!(
            "no local cluster in {} — start one with `mobilusctl dev up --dir {}`",
            dir.display(),
            dir.display()
        );
    }
    let file = ClusterFile::load(&path)?;
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
            id: m.id,
            addr: m.addr.clone(),
            pid,
            running: pid.is_some(),
            state: s.as_ref().map(|s| s.state.clone()),
            term: s.as_ref().map(|s| s.term),
            last_applied: s.as_ref().and_then(|s| s.last_applied),
            log: m.dir.join("log"),
        });
    }
    emit(format, &rows, |rows| {
        let mut t = table(&[
            "PROCESS",
            "ADDRESS",
            "PID",
            "RUNNING",
            "RAFT STATE",
            "TERM",
            "APPLIED",
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
            ]);
        }
        t
    })
}

fn down(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("cluster.toml");
    if !path.exists() {
        bail!("no local cluster in {}", dir.display());
    }
    let file = ClusterFile::load(&path)?;
    let mut stopped = 0;
    for m in &file.meta {
        let Some(pid) = running_pid(&m.dir) else {
            continue;
        };
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = std::fs::remove_file(m.dir.join("pid"));
        stopped += 1;
    }
    println!(
        "stopped {stopped} processes; data kept in {}",
        dir.display()
    );
    Ok(())
}

pub async fn run(cmd: DevCmd, format: OutputFormat) -> anyhow::Result<()> {
    match cmd {
        DevCmd::Up { dir, meta } => up(&dir, meta, format).await,
        DevCmd::Status { dir } => status(&dir, format).await,
        DevCmd::Down { dir } => down(&dir),
    }
}
