//! `mobilus-mount`: mount Mobilus at a directory, as one site's app host.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use mobilus_client::mount::{self, MountFs, Tuning};
use mobilus_client::{Client, DataOptions};
use serde::Deserialize;

/// Mount Mobilus: a FUSE file system belonging to one site.
#[derive(Parser, Debug)]
#[command(name = "mobilus-mount", version)]
struct Args {
    #[command(flatten)]
    tls: mobilus_tls::TlsArgs,
    /// The site this mount belongs to (its data node stores what it writes).
    #[arg(long)]
    site: Option<String>,
    /// Metadata members (host:port, comma separated).
    #[arg(long, value_delimiter = ',', env = "MOBILUS_META")]
    meta: Vec<String>,
    /// A TOML file with `site`, `meta`, `mountpoint` and optional `threads`,
    /// `attr_ttl_ms`, `block_cache_mib`, `write_buffer_mib`, `local_chunks`; flags
    /// override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// FUSE threads serving the kernel.
    #[arg(long)]
    threads: Option<usize>,
    /// How long the kernel may cache attributes and entries, in milliseconds.
    #[arg(long)]
    attr_ttl_ms: Option<u64>,
    /// Memory for the block cache shared by all open files, in MiB (default 256).
    #[arg(long)]
    block_cache_mib: Option<u64>,
    /// Memory all open files' write buffers may hold together, in MiB (default 512):
    /// past it, a writer holding 1 MiB or more commits at its next write.
    #[arg(long)]
    write_buffer_mib: Option<u64>,
    /// The data directory (`--data-dir`) of this site's data node, when it runs on this
    /// host: reads then take verified blocks straight from its chunk files instead of
    /// asking it over gRPC (short-circuit reads; any miss still goes to the node).
    #[arg(long)]
    local_chunks: Option<PathBuf>,
    /// Record each subtree's access profile for this many seconds after the mount first
    /// reads it (default 10; 0: never).
    #[arg(long)]
    profile_window_secs: Option<u64>,
    /// A metadata member at this mount's site (host:port): reads of subtrees whose
    /// delegation this mount holds go there, answered from its state with no round to a
    /// leader at another site.
    #[arg(long)]
    near_meta: Option<String>,
    /// Never ask for the delegation of a subtree this site owns (no authoritative
    /// caching: every mount then keeps the short TTLs).
    #[arg(long)]
    no_delegations: bool,
    /// Write the mountpoint to this file once mounted.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    #[command(flatten)]
    telemetry: mobilus_telemetry::TelemetryArgs,
    /// Where to mount.
    mountpoint: Option<PathBuf>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    site: Option<String>,
    #[serde(default)]
    meta: Vec<String>,
    mountpoint: Option<PathBuf>,
    threads: Option<usize>,
    attr_ttl_ms: Option<u64>,
    block_cache_mib: Option<u64>,
    write_buffer_mib: Option<u64>,
    local_chunks: Option<PathBuf>,
}

struct Settings {
    site: String,
    meta: Vec<String>,
    mountpoint: PathBuf,
    threads: usize,
    tuning: Tuning,
    data: DataOptions,
}

fn settings(args: &Args) -> anyhow::Result<Settings> {
    let file: FileConfig = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("bad config {}", p.display()))?
        }
        None => FileConfig::default(),
    };
    let site = args
        .site
        .clone()
        .or(file.site)
        .context("--site is required (or `site` in --config)")?;
    if !mobilus_proto::fs::valid_site_name(&site) {
        anyhow::bail!("--site must be 1 to 64 letters, digits, '-' and '_'");
    }
    let meta = if args.meta.is_empty() {
        file.meta
    } else {
        args.meta.clone()
    };
    if meta.is_empty() {
        anyhow::bail!("--meta is required (or `meta` in --config, or MOBILUS_META)");
    }
    let mountpoint = args
        .mountpoint
        .clone()
        .or(file.mountpoint)
        .context("a MOUNTPOINT is required")?;
    if !mountpoint.is_dir() {
        anyhow::bail!("{} is not a directory", mountpoint.display());
    }
    let mut tuning = Tuning::default();
    if let Some(ms) = args.attr_ttl_ms.or(file.attr_ttl_ms) {
        tuning.attr_ttl = Duration::from_millis(ms);
    }
    let mut data = DataOptions::default();
    if let Some(mib) = args.block_cache_mib.or(file.block_cache_mib) {
        if !(1..=1 << 20).contains(&mib) {
            anyhow::bail!("--block-cache-mib must be 1 to 1048576");
        }
        data.block_cache_bytes = mib << 20;
    }
    if let Some(mib) = args.write_buffer_mib.or(file.write_buffer_mib) {
        if !(1..=1 << 20).contains(&mib) {
            anyhow::bail!("--write-buffer-mib must be 1 to 1048576");
        }
        data.write_buffer_bytes = usize::try_from(mib << 20)?;
    }
    if let Some(dir) = args.local_chunks.clone().or(file.local_chunks) {
        if !dir.join("chunks").is_dir() {
            anyhow::bail!(
                "--local-chunks {}: not a data node's data directory (no chunks/ in it)",
                dir.display()
            );
        }
        data.local_chunks = Some(dir);
    }
    if let Some(secs) = args.profile_window_secs {
        if secs > 3600 {
            anyhow::bail!("--profile-window-secs must be 0 to 3600");
        }
        data.profile_window = (secs > 0).then(|| Duration::from_secs(secs));
    }
    data.near_meta = args.near_meta.clone();
    Ok(Settings {
        site,
        meta,
        mountpoint,
        threads: args.threads.or(file.threads).unwrap_or(4),
        tuning,
        data,
    })
}

async fn connect(s: &Settings) -> anyhow::Result<Client> {
    // The cluster may still be electing a leader or waiting for its data node.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Client::connect_with(&s.meta, &s.site, s.data.clone()).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() < deadline => {
                tracing::info!(error = %e, "waiting for the cluster");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot reach the metadata service at {}", s.meta.join(","))
                })
            }
        }
    }
}

/// Detach the mount even if busy; a clean unmount is tried first.
fn force_unmount(mountpoint: &std::path::Path) {
    let _ = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(mountpoint)
        .status();
}

async fn run(args: Args) -> anyhow::Result<()> {
    mount::describe_metrics();
    let s = settings(&args)?;
    let tls_stop = mobilus_telemetry::worker::Shutdown::default();
    if let Some(t) = args.tls.install("mobilus-mount", tls_stop.subscribe())? {
        let me = t.identity();
        if me.role != mobilus_tls::Role::Mount || me.site.as_deref() != Some(s.site.as_str()) {
            anyhow::bail!(
                "--cert is of {me}, not of a mount of {}: issue one with \
                 `mobilusctl cert issue --role mount --site {}`",
                s.site,
                s.site
            );
        }
    }
    let client = connect(&s).await?;
    let fs =
        Arc::new(MountFs::new(client, s.tuning.attr_ttl).with_delegations(!args.no_delegations));
    let config = mount::config(&s.site, s.threads);
    let session = mount::spawn(
        fs.clone(),
        tokio::runtime::Handle::current(),
        s.tuning,
        &s.mountpoint,
        &config,
    )
    .with_context(|| format!("cannot mount at {}", s.mountpoint.display()))?;
    if let Some(path) = &args.ready_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, s.mountpoint.to_string_lossy().as_bytes())?;
        std::fs::rename(&tmp, path)?;
    }
    tracing::info!(site = %s.site, mountpoint = %s.mountpoint.display(), "mounted");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if session.guard.is_finished() {
                    // Unmounted from outside (`fusermount3 -u`): buffered writes still go.
                    let failed = fs.flush_all().await;
                    fs.close_locks().await;
                    tracing::info!(failed, "unmounted from outside");
                    return session.join().context("the FUSE session failed");
                }
            }
        }
    }
    tracing::info!("stopping: flushing buffered writes, then unmounting");
    let failed = fs.flush_all().await;
    fs.close_locks().await;
    let mountpoint = s.mountpoint.clone();
    let unmounted = tokio::task::spawn_blocking(move || session.umount_and_join()).await;
    if !matches!(unmounted, Ok(Ok(()))) {
        tracing::warn!(?unmounted, "clean unmount failed; detaching");
        force_unmount(&mountpoint);
    }
    if failed > 0 {
        anyhow::bail!("{failed} files could not be flushed before unmounting");
    }
    tracing::info!("stopped");
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let telemetry = args.telemetry.clone();
    mobilus_telemetry::main_with("mobilus-mount", &telemetry, "info", || run(args))
}
