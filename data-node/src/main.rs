//! `mobilus-data`: run a data node (the chunk store of a site).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use mobilus_data::disk::LocalDisk;
use mobilus_data::service;
use mobilus_data::store::ChunkStore;

/// A Mobilus data node: content-addressed chunks of one site.
#[derive(Parser, Debug)]
#[command(name = "mobilus-data", version)]
struct Args {
    /// The site this node stores chunks for.
    #[arg(long)]
    site: String,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7200")]
    listen: String,
    /// Where chunks and their index live.
    #[arg(long)]
    data_dir: PathBuf,
    /// Write the bound address to this file once serving.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.site.is_empty()
        || !args
            .site
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        anyhow::bail!("--site must be a non-empty name of letters, digits, '-' and '_'");
    }
    let store = Arc::new(
        ChunkStore::open(&args.data_dir, Arc::new(LocalDisk))
            .with_context(|| format!("opening the chunk store in {}", args.data_dir.display()))?,
    );
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?.to_string();
    if let Some(path) = &args.ready_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &addr)?;
        std::fs::rename(&tmp, path)?;
    }
    tracing::info!(site = %args.site, %addr, "mobilus-data serving");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut serving = tokio::spawn(service::serve(store, listener, async {
        let _ = stop_rx.await;
    }));
    tokio::select! {
        res = &mut serving => return Ok(res??),
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Graceful shutdown waits for clients to hang up; give them a few seconds, not forever.
    let _ = stop_tx.send(());
    match tokio::time::timeout(std::time::Duration::from_secs(5), serving).await {
        Ok(res) => res??,
        Err(_) => tracing::warn!("clients still connected after 5s; stopping anyway"),
    }
    tracing::info!("stopped");
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mobilus-data: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mobilus-data: {e:#}");
            ExitCode::FAILURE
        }
    }
}
