//! `mobilus-jepsen`: run a test against a cluster on namespaced hosts, check a history,
//! draw a report.
//!
//! Exit codes of `check`: 0 linearizable, 1 not linearizable, 2 unknown or unreadable.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use mobilus_jepsen::checker::{self, ModelKind, Verdict};
use mobilus_jepsen::cluster::Bugs;
use mobilus_jepsen::history::History;
use mobilus_jepsen::nemesis::NemesisKind;
use mobilus_jepsen::run::{RunOptions, Workload};

#[derive(Parser, Debug)]
#[command(name = "mobilus-jepsen", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Our JSON lines (see jepsen/HISTORY.md).
    Json,
    /// Jepsen's EDN.
    Edn,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a test: a cluster on namespaced hosts, a workload, faults; then check it.
    /// Exit 0 only when every check passed. Needs root.
    Run {
        #[arg(long, value_enum, default_value_t = Workload::Register)]
        workload: Workload,
        /// Faults to combine (comma separated); none for a fault-free run.
        #[arg(long, value_enum, value_delimiter = ',')]
        nemesis: Vec<NemesisKind>,
        /// Seconds of client operations.
        #[arg(long, default_value_t = 60)]
        time_limit: u64,
        /// Client processes.
        #[arg(long, default_value_t = 10)]
        concurrency: usize,
        /// Seed of every random choice (operations, faults).
        #[arg(long)]
        seed: Option<u64>,
        /// The run's folder (history, results, report, logs).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Mean seconds between faults (and of each fault).
        #[arg(long, default_value_t = 5)]
        nemesis_interval: u64,
        /// Milliseconds a client waits before calling an operation indeterminate.
        #[arg(long, default_value_t = 3000)]
        op_timeout_ms: u64,
        /// Seconds the checker may spend before answering unknown.
        #[arg(long, default_value_t = 120)]
        check_time_limit: u64,
        /// Where mobilus-meta and mobilus-data are (default: next to this binary).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Do not run `cargo build --bins` first.
        #[arg(long)]
        no_build: bool,
        /// TEST ONLY: start the metadata members with the deliberate stale-read bug.
        #[arg(long, hide = true)]
        unsafe_local_reads: bool,
        /// TEST ONLY: start the metadata members with a read lease of this many ms,
        /// longer than their election timeout (the deliberate lease bug).
        #[arg(long, hide = true)]
        unsafe_read_lease_ms: Option<u64>,
        /// TEST ONLY: start the metadata members letting any site change any subtree
        /// (the deliberate fencing bug).
        #[arg(long, hide = true)]
        unsafe_no_ownership_check: bool,
        /// TEST ONLY: start the metadata members letting any mount change a delegated
        /// subtree without recalling the delegation (the deliberate caching bug).
        #[arg(long, hide = true)]
        unsafe_no_delegation_check: bool,
        /// TEST ONLY: start the metadata members believing the site a mount's request
        /// claims over its certificate's (the deliberate site-binding bug; caught with
        /// `--forging-client`).
        #[arg(long, hide = true)]
        unsafe_no_site_binding: bool,
        /// The ownership workload: one more client host at site-b whose worker claims
        /// site-a in every request (with its own, site-b certificate). The members must
        /// refuse it; the ownership check catches any of its writes acknowledged.
        #[arg(long)]
        forging_client: bool,
        /// TEST ONLY: start the metadata members answering a delegation holder's read
        /// from whatever they have applied (the deliberate holder-read bug).
        #[arg(long, hide = true)]
        unsafe_holder_reads_ignore_applied: bool,
        /// TEST ONLY: start the data nodes taking replication fetches that failed as
        /// done (the deliberate replication bug).
        #[arg(long, hide = true)]
        unsafe_skip_failed_fetches: bool,
    },
    /// Draw (again) the report of a run folder: timeline, latency, throughput, index.html.
    Report { dir: PathBuf },
    /// (Internal) the client side, run by `run` inside a client host.
    #[command(hide = true)]
    Worker {
        #[arg(long, value_delimiter = ',')]
        meta: Vec<String>,
        #[arg(long, default_value_t = 3000)]
        rpc_timeout_ms: u64,
        /// Serve file operations on a mount of this site (the durability workload).
        #[arg(long)]
        mount_site: Option<String>,
        #[arg(long)]
        mount_bin: Option<PathBuf>,
        #[arg(long)]
        mountpoint: Option<PathBuf>,
        /// What the file operations on the mount are.
        #[arg(long, value_enum, default_value_t = mobilus_jepsen::worker_fs::FsOps::Files)]
        mount_ops: mobilus_jepsen::worker_fs::FsOps,
        /// The site this worker's mutations are issued for.
        #[arg(long)]
        site: Option<String>,
        /// The registers' folder under the root.
        #[arg(long, default_value = "jepsen-registers")]
        register_dir: String,
        /// The worker's certificate (a mount's, of its site), also its mount's.
        #[command(flatten)]
        tls: mobilus_tls::TlsArgs,
    },
    /// Check a history for linearizability and print the verdict (JSON).
    Check {
        /// The history's format (default: from the extension, `.edn` or JSON lines).
        #[arg(long, value_enum)]
        format: Option<Format>,
        #[arg(long, value_enum, default_value_t = ModelKind::CasRegister)]
        model: ModelKind,
        /// Give up and answer `unknown` after this many seconds.
        #[arg(long, default_value_t = 60)]
        time_limit: u64,
        /// Also write the history out as EDN (for Knossos) or JSON lines.
        #[arg(long, value_name = "FILE")]
        export: Option<PathBuf>,
        file: PathBuf,
    },
}

fn load(file: &Path, format: Option<Format>) -> anyhow::Result<History> {
    let format = format.unwrap_or(if file.extension().is_some_and(|e| e == "edn") {
        Format::Edn
    } else {
        Format::Json
    });
    Ok(match format {
        Format::Json => History::read_jsonl(file)?,
        Format::Edn => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            mobilus_jepsen::edn::read_edn(&text)?
        }
    })
}

fn export(history: &History, to: &Path) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(to)?);
    if to.extension().is_some_and(|e| e == "edn") {
        mobilus_jepsen::edn::write_edn(history, &mut out)?;
    } else {
        history.write_jsonl(&mut out)?;
    }
    std::io::Write::flush(&mut out)?;
    Ok(())
}

fn check(
    file: &Path,
    format: Option<Format>,
    model: ModelKind,
    limit: Duration,
    to: Option<&Path>,
) -> anyhow::Result<Verdict> {
    let history = load(file, format)?;
    if let Some(to) = to {
        export(&history, to)?;
    }
    let report = checker::check(&history, model, limit)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(report.verdict)
}

/// Build the server binaries with the profile this binary was built with.
fn build(bin_dir: &Path) -> anyhow::Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = std::process::Command::new("cargo");
    cmd.current_dir(&workspace).args(["build", "--bins"]);
    if bin_dir.ends_with("release") {
        cmd.arg("--release");
    }
    let status = cmd.status()?;
    if !status.success() {
        anyhow::bail!("cargo build failed ({status})");
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run_test(opts: RunOptions, no_build: bool) -> anyhow::Result<bool> {
    if !no_build {
        build(&opts.bin_dir)?;
    }
    let summary = runtime()?.block_on(mobilus_jepsen::run::run(opts.clone()))?;
    mobilus_jepsen::report::write(&opts.out)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    println!(
        "{}: {} operations ({} ok, {} fail, {} info), {} faults; report: {}",
        if summary.valid { "VALID" } else { "INVALID" },
        summary.operations.invoked,
        summary.operations.ok,
        summary.operations.fail,
        summary.operations.info,
        summary.faults.len(),
        opts.out.join("index.html").display()
    );
    Ok(summary.valid)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Run {
            workload,
            nemesis,
            time_limit,
            concurrency,
            seed,
            out,
            nemesis_interval,
            op_timeout_ms,
            check_time_limit,
            bin_dir,
            no_build,
            unsafe_local_reads,
            unsafe_read_lease_ms,
            unsafe_no_ownership_check,
            unsafe_no_delegation_check,
            unsafe_no_site_binding,
            forging_client,
            unsafe_holder_reads_ignore_applied,
            unsafe_skip_failed_fetches,
        } => {
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0)
            });
            let bin_dir = bin_dir.or_else(|| {
                std::env::current_exe()
                    .ok()?
                    .parent()
                    .map(Path::to_path_buf)
            });
            let Some(bin_dir) = bin_dir else {
                eprintln!("mobilus-jepsen: cannot find the binaries; give --bin-dir");
                return ExitCode::from(2);
            };
            let out = out.unwrap_or_else(|| {
                PathBuf::from("jepsen-runs").join(format!("{workload:?}-{seed}").to_lowercase())
            });
            let opts = RunOptions {
                workload,
                nemeses: nemesis,
                time_limit: Duration::from_secs(time_limit),
                concurrency: concurrency.max(1),
                seed,
                out,
                bin_dir,
                bugs: Bugs {
                    local_reads: unsafe_local_reads,
                    read_lease_ms: unsafe_read_lease_ms,
                    no_ownership_check: unsafe_no_ownership_check,
                    no_delegation_check: unsafe_no_delegation_check,
                    holder_reads_ignore_applied: unsafe_holder_reads_ignore_applied,
                    skip_failed_fetches: unsafe_skip_failed_fetches,
                    no_site_binding: unsafe_no_site_binding,
                },
                forging_client,
                nemesis_interval: Duration::from_secs(nemesis_interval.max(1)),
                op_timeout: Duration::from_millis(op_timeout_ms.max(100)),
                check_budget: Duration::from_secs(check_time_limit),
            };
            match run_test(opts, no_build) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("mobilus-jepsen: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Report { dir } => match mobilus_jepsen::report::write(&dir) {
            Ok(()) => {
                println!("{}", dir.join("index.html").display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mobilus-jepsen: {e}");
                ExitCode::from(2)
            }
        },
        Command::Worker {
            meta,
            rpc_timeout_ms,
            mount_site,
            mount_bin,
            mountpoint,
            mount_ops,
            site,
            register_dir,
            tls,
        } => {
            let mount = match (mount_site, mount_bin, mountpoint) {
                (Some(site), Some(bin), Some(mountpoint)) => {
                    Some(mobilus_jepsen::worker::MountArgs {
                        bin,
                        site,
                        mountpoint,
                        ops: mount_ops,
                        tls: tls.to_flags(),
                    })
                }
                (None, None, None) => None,
                _ => {
                    eprintln!("mobilus-jepsen worker: --mount-site, --mount-bin and --mountpoint go together");
                    return ExitCode::from(2);
                }
            };
            let (_stop, stopped) = tokio::sync::watch::channel(false);
            let result = runtime().and_then(|rt| {
                let _entered = rt.enter();
                tls.install("mobilus-jepsen worker", stopped)?;
                rt.block_on(mobilus_jepsen::worker::serve(
                    meta,
                    Duration::from_millis(rpc_timeout_ms),
                    mount,
                    mobilus_jepsen::worker::Issuer {
                        site,
                        register_dir: register_dir.into_bytes(),
                    },
                ))
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mobilus-jepsen worker: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check {
            format,
            model,
            time_limit,
            export,
            file,
        } => match check(
            &file,
            format,
            model,
            Duration::from_secs(time_limit),
            export.as_deref(),
        ) {
            Ok(Verdict::Linearizable) => ExitCode::SUCCESS,
            Ok(Verdict::NotLinearizable) => ExitCode::from(1),
            Ok(Verdict::Unknown) => ExitCode::from(2),
            Err(e) => {
                eprintln!("mobilus-jepsen: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}
