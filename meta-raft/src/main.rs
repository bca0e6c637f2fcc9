//! `mobilus-meta`: run one member of the metadata cluster.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mobilus_meta::config::FileConfig;
use mobilus_meta::server;
use mobilus_meta_client::{ClientOptions, MetaClient};

/// One member of the Mobilus metadata cluster (Raft over RocksDB, gRPC API).
#[derive(Parser, Debug)]
#[command(name = "mobilus-meta", version)]
struct Args {
    #[command(flatten)]
    tls: mobilus_tls::TlsArgs,
    /// TOML config file; flags override its settings.
    #[arg(long, env = "MOBILUS_META_CONFIG")]
    config: Option<PathBuf>,
    /// This member's id (1 or more, unique in the cluster).
    #[arg(long)]
    id: Option<u64>,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long)]
    listen: Option<String>,
    /// Address other members and clients use, when it differs from the bound one.
    #[arg(long)]
    advertise: Option<String>,
    /// Where the Raft log, the state machine and snapshots live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Members of an existing cluster to join (host:port, comma separated).
    #[arg(long, value_delimiter = ',')]
    join: Vec<String>,
    /// Initialise a one-member cluster if this member is not in one yet.
    #[arg(long)]
    init: bool,
    /// Build a snapshot after this many entries since the last.
    #[arg(long)]
    snapshot_logs: Option<u64>,
    /// Entries kept behind a snapshot for lagging followers.
    #[arg(long)]
    keep_logs: Option<u64>,
    /// Raft heartbeat interval; election timeouts are 5-10 times it.
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// MiB of client requests held in memory at once, over all connections; a request
    /// past it, or past its connection's 64 MiB, is refused (RESOURCE_EXHAUSTED).
    #[arg(long)]
    request_buffer_mib: Option<u64>,
    /// TEST ONLY: serve reads from this member's local state without a read index (a
    /// deliberate linearizability bug, for the Jepsen harness to catch).
    #[arg(long, hide = true)]
    unsafe_local_reads: bool,
    /// Take a read-index round for every linearizable read (no leader-lease reads).
    #[arg(long)]
    no_lease_reads: bool,
    /// TEST ONLY: a read lease of this many milliseconds, however long (a deliberate
    /// bug past the election timeout, for the Jepsen harness to catch).
    #[arg(long, hide = true)]
    unsafe_read_lease_ms: Option<u64>,
    /// TEST ONLY: let any site change any subtree, under any epoch (a deliberate fencing
    /// bug, for the Jepsen harness to catch). Every member must run with it alike.
    #[arg(long, hide = true)]
    unsafe_no_ownership_check: bool,
    /// TEST ONLY: let any mount session change a subtree another one holds the
    /// delegation of (a deliberate bug: the holder then serves what it cached, stale).
    #[arg(long, hide = true)]
    unsafe_no_delegation_check: bool,
    /// TEST ONLY: read a subtree whose holder has closes not yet committed without
    /// recalling it first (a deliberate bug: a close there is not seen by an open here).
    #[arg(long, hide = true)]
    unsafe_no_write_back_recall: bool,
    /// TEST ONLY: answer a delegation holder's read from whatever this member has
    /// applied (a deliberate bug: the holder may not see its own last writes).
    #[arg(long, hide = true)]
    unsafe_holder_reads_ignore_applied: bool,
    /// TEST ONLY: let a subtree change while a clone copies it (a deliberate bug: the
    /// copy then mixes moments of its source).
    #[arg(long, hide = true)]
    unsafe_no_clone_freeze: bool,
    /// TEST ONLY: take the site a mount's request claims instead of its certificate's (a
    /// deliberate bug: a mount of one site may then write another site's subtrees).
    #[arg(long, hide = true)]
    unsafe_no_site_binding: bool,
    #[command(flatten)]
    telemetry: mobilus_telemetry::TelemetryArgs,
    /// Write the advertised address to this file once serving (for scripts and tests).
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

fn merge(args: &Args) -> anyhow::Result<FileConfig> {
    let mut file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    macro_rules! flag {
        ($($f:ident),*) => { $( if args.$f.is_some() { file.$f = args.$f.clone(); } )* };
    }
    flag!(
        id,
        listen,
        advertise,
        data_dir,
        snapshot_logs,
        keep_logs,
        heartbeat_ms,
        request_buffer_mib
    );
    if !args.join.is_empty() {
        file.join = Some(args.join.clone());
    }
    if args.init {
        file.init = Some(true);
    }
    if args.no_lease_reads {
        file.lease_reads = Some(false);
    }
    Ok(file)
}

async fn join(node: &server::MetaNode, seeds: &[String]) -> anyhow::Result<()> {
    let opts = ClientOptions {
        deadline: Duration::from_secs(60),
        ..Default::default()
    };
    let client = MetaClient::new(seeds, opts)?;
    client
        .add_learner(node.id, &node.addr)
        .await
        .with_context(|| {
            format!(
                "adding member {} as a learner via {}",
                node.id,
                seeds.join(",")
            )
        })?;
    client
        .promote(node.id)
        .await
        .with_context(|| format!("promoting member {}", node.id))?;
    tracing::info!(id = node.id, "joined the cluster as a voter");
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    server::describe_metrics();
    let mut cfg = merge(&args)?.resolve()?;
    let tls_stop = mobilus_telemetry::worker::Shutdown::default();
    cfg.tls = args.tls.install("mobilus-meta", tls_stop.subscribe())?;
    cfg.unsafe_local_reads = args.unsafe_local_reads;
    cfg.unsafe_read_lease_ms = args.unsafe_read_lease_ms;
    if args.unsafe_no_ownership_check {
        tracing::warn!(
            "--unsafe-no-ownership-check: any site may change any subtree (a test-only bug)"
        );
        mobilus_meta::namespace::subtree::disable_ownership_check_for_tests();
    }
    if args.unsafe_no_site_binding {
        tracing::warn!(
            "--unsafe-no-site-binding: a request's claimed site is believed (a test-only bug)"
        );
        mobilus_meta::server::authz::disable_site_binding_for_tests();
    }
    if args.unsafe_no_clone_freeze {
        tracing::warn!(
            "--unsafe-no-clone-freeze: a subtree may change while it is cloned (a test-only bug)"
        );
        mobilus_meta::namespace::disable_clone_freeze_for_tests();
    }
    if args.unsafe_no_delegation_check {
        tracing::warn!(
            "--unsafe-no-delegation-check: any mount may change a delegated subtree (a test-only bug)"
        );
        mobilus_meta::namespace::disable_delegation_check_for_tests();
    }
    if args.unsafe_holder_reads_ignore_applied {
        tracing::warn!(
            "--unsafe-holder-reads-ignore-applied: holders' reads here may miss their own writes (a test-only bug)"
        );
        mobilus_meta::server::holder_reads_ignore_applied_for_tests(true);
    }
    if args.unsafe_no_write_back_recall {
        tracing::warn!(
            "--unsafe-no-write-back-recall: reads ignore closes a holder has not committed (a test-only bug)"
        );
        mobilus_meta::namespace::disable_write_back_recall_for_tests();
    }
    let handle = server::start(&cfg).await?;
    if let Some(path) = &args.ready_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, handle.addr()).context("writing the ready file")?;
        std::fs::rename(&tmp, path).context("writing the ready file")?;
    }
    let node = handle.node.clone();
    let is_member = node
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&node.id)
        .is_some();
    let mut joining = None;
    if !cfg.join.is_empty() && !is_member {
        let (node, seeds) = (node.clone(), cfg.join.clone());
        joining = Some(tokio::spawn(async move { join(&node, &seeds).await }));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        _ = term.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
        res = async { match joining.as_mut() { Some(j) => j.await, None => std::future::pending().await } } => {
            match res {
                Ok(Ok(())) => {
                    // Joined: keep serving until told to stop.
                    tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
                    Ok(())
                }
                Ok(Err(e)) => Err(e),
                Err(e) => Err(anyhow::anyhow!("join task: {e}")),
            }
        }
    };
    tracing::info!("shutting down");
    handle.shutdown().await?;
    tls_stop.stop();
    result
}

fn main() -> ExitCode {
    let args = Args::parse();
    let telemetry = args.telemetry.clone();
    mobilus_telemetry::main_with("mobilus-meta", &telemetry, "info,openraft=warn", || {
        run(args)
    })
}
