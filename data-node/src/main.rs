//! `mobilus-data`: run a data node (the chunk store of a site).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use mobilus_data::cache::CachePolicy;
use mobilus_data::disk::LocalDisk;
use mobilus_data::evict::Evictor;
use mobilus_data::follow::Follower;
use mobilus_data::gc::{Collector, GcPolicy};
use mobilus_data::replicate::Replicator;
use mobilus_data::service;
use mobilus_data::store::ChunkStore;
use mobilus_data::worker::{self, Shutdown};
use mobilus_data_client::DataNodes;
use mobilus_meta_client::MetaClient;
use mobilus_proto::fs::{valid_site_name, DataNodeInfo};
use std::time::Duration;

/// A Mobilus data node: content-addressed chunks of one site.
#[derive(Parser, Debug)]
#[command(name = "mobilus-data", version)]
struct Args {
    #[command(flatten)]
    tls: mobilus_tls::TlsArgs,
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
    /// Metadata members to register with (host:port, comma separated).
    #[arg(long, value_delimiter = ',')]
    meta: Vec<String>,
    /// Address other nodes and clients dial, when it differs from the bound one.
    #[arg(long)]
    advertise: Option<String>,
    /// How often to heartbeat to the site registry.
    #[arg(long, default_value_t = 2000)]
    heartbeat_ms: u64,
    /// How often to run a garbage-collection round (0: only when asked, by the `Gc` RPC).
    #[arg(long, default_value_t = 60_000)]
    gc_interval_ms: u64,
    /// Chunks stored more recently than this are never collected (uploads whose slices
    /// are not committed yet).
    #[arg(long, default_value_t = 3_600_000)]
    gc_ttl_ms: u64,
    /// A chunk is collected only after having had no reference for this long.
    #[arg(long, default_value_t = 3_600_000)]
    gc_grace_ms: u64,
    /// How often to check that this node's chunks have their copies on the other nodes
    /// of its site (0: never).
    #[arg(long, default_value_t = 10_000)]
    replicate_interval_ms: u64,
    /// A node of this site whose last heartbeat is older than this is taken for gone:
    /// its chunks are copied to the nodes next in their placement.
    #[arg(long, default_value_t = 60_000)]
    node_down_after_ms: u64,
    /// How often the site's puller catches up with the subtrees its site follows
    /// (placement eager, or lazy and owner), by their change feeds (0: never).
    #[arg(long, default_value_t = 2_000)]
    follow_interval_ms: u64,
    /// Most bytes per second replication takes from each other site (`100mbit`,
    /// `50MiB`, bytes): less than the link, so reads that fault keep their share.
    #[arg(long, default_value = "100mbit", value_parser = mobilus_data_client::bandwidth::parse_bandwidth)]
    replication_bandwidth: u64,
    /// A chunk fetch from another site that has not finished in this long is abandoned
    /// and tried again (a stalled link: a partition holds a connection open, silent).
    /// Long enough for the largest chunk over the slowest link the site uses.
    #[arg(long, default_value_t = 60_000)]
    replication_fetch_timeout_ms: u64,
    /// Most MiB of chunks this node keeps only as a cache (faulted in for subtrees whose
    /// placement has its site neither hold nor pin them); beyond it the least recently
    /// used are evicted.
    #[arg(long, default_value_t = 100 << 10)]
    cache_capacity_mib: u64,
    /// Cached chunks are evicted, least recently used first, while the disk has less
    /// than this percentage of its space free.
    #[arg(long, default_value_t = 10)]
    cache_min_free_percent: u8,
    /// A deliberate bug, for the Jepsen harness: the follower takes fetches that failed
    /// as done. Never use it.
    #[arg(long, hide = true)]
    unsafe_skip_failed_fetches: bool,
    #[command(flatten)]
    telemetry: mobilus_telemetry::TelemetryArgs,
}

/// Register this node, then keep its registration fresh.
fn start_heartbeat(
    args: &Args,
    addr: String,
    store: Arc<ChunkStore>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if args.meta.is_empty() {
        return Ok(None);
    }
    let client = MetaClient::connect(&args.meta).context("bad --meta address")?;
    let (site, dir) = (args.site.clone(), args.data_dir.clone());
    let every = Duration::from_millis(args.heartbeat_ms.max(100));
    Ok(Some(worker::spawn_periodic(
        "heartbeat",
        every,
        Duration::from_secs(30),
        stop,
        move || {
            let (client, store, dir) = (client.clone(), store.clone(), dir.clone());
            let node = DataNodeInfo {
                site: site.clone(),
                addr: addr.clone(),
                capacity_bytes: nix::sys::statvfs::statvfs(&dir)
                    .map(|s| s.blocks().saturating_mul(s.fragment_size()))
                    .unwrap_or(0),
                used_bytes: store.stats().bytes,
                last_heartbeat_ns: 0,
                draining: false,
                site_replicas: 0,
                workers: worker::states()
                    .into_iter()
                    .map(|w| mobilus_proto::fs::WorkerReport {
                        name: w.name,
                        backing_off: w.backing_off,
                        last_error: w.last_error.unwrap_or_default(),
                        failures: w.failures,
                    })
                    .collect(),
            };
            async move {
                // The metadata's generation is never behind ours; adopting it matters after
                // a crash between a round's "forget" and our durable write of its result.
                let gc_gen = client.register_data_node(&node).await?;
                // The node is its site's agent: each committed heartbeat renews the lease.
                metrics::counter!("mobilus_data_site_lease_renewals_total").increment(1);
                store.advance_gc_gen(gc_gen)?;
                anyhow::Ok(())
            }
        },
    )))
}

/// Evict cached chunks while the cache is over its capacity or the disk too full (only
/// those another site still holds: see `mobilus_data::evict`).
fn start_evictor(
    args: &Args,
    store: Arc<ChunkStore>,
    shutdown: &Shutdown,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let policy = CachePolicy {
        capacity: args.cache_capacity_mib.saturating_mul(1 << 20),
        min_free: f64::from(args.cache_min_free_percent.min(100)) / 100.0,
    };
    let meta = if args.meta.is_empty() {
        None
    } else {
        Some(MetaClient::connect(&args.meta).context("bad --meta address")?)
    };
    let down_after = Duration::from_millis(args.node_down_after_ms.max(1));
    let (dir, site) = (args.data_dir.clone(), args.site.clone());
    let evictor = Arc::new(tokio::sync::OnceCell::<Arc<Evictor>>::new());
    Ok(worker::spawn_periodic(
        "evict",
        Duration::from_secs(1),
        Duration::from_secs(30),
        shutdown.subscribe(),
        move || {
            let (store, dir, site, meta, evictor) = (
                store.clone(),
                dir.clone(),
                site.clone(),
                meta.clone(),
                evictor.clone(),
            );
            async move {
                if store.stats().cached_bytes == 0 {
                    return anyhow::Ok(());
                }
                let e = evictor
                    .get_or_try_init(|| async {
                        let nodes = match meta {
                            Some(m) => Some(DataNodes::connect(m, down_after).await?),
                            None => None,
                        };
                        anyhow::Ok(Arc::new(Evictor::new(store, nodes, site, policy)))
                    })
                    .await?;
                let disk = nix::sys::statvfs::statvfs(&dir)?;
                let free = disk.blocks_available().saturating_mul(disk.fragment_size());
                let total = disk.blocks().saturating_mul(disk.fragment_size());
                let r = e.round(free, total).await?;
                if r.evicted > 0 || r.kept_as_last_copy > 0 || r.unverified > 0 {
                    tracing::info!(
                        evicted = r.evicted,
                        bytes = r.bytes_freed,
                        kept_as_last_copy = r.kept_as_last_copy,
                        unverified = r.unverified,
                        "eviction round"
                    );
                }
                anyhow::Ok(())
            }
        },
    ))
}

/// Rounds of [`Replicator`]: this node's chunks copied where their placement says.
fn start_replicator(
    args: &Args,
    addr: String,
    store: Arc<ChunkStore>,
    shutdown: &Shutdown,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if args.meta.is_empty() || args.replicate_interval_ms == 0 {
        return Ok(None);
    }
    let meta = MetaClient::connect(&args.meta).context("bad --meta address")?;
    let down_after = Duration::from_millis(args.node_down_after_ms.max(1));
    let site = args.site.clone();
    let replicator = tokio::sync::OnceCell::<Arc<Replicator>>::new();
    let replicator = Arc::new(replicator);
    Ok(Some(worker::spawn_periodic(
        "replicate",
        Duration::from_millis(args.replicate_interval_ms),
        Duration::from_secs(60),
        shutdown.subscribe(),
        move || {
            let (meta, store, site, addr) =
                (meta.clone(), store.clone(), site.clone(), addr.clone());
            let replicator = replicator.clone();
            async move {
                // Made at the first round: the registry may be unreachable at start.
                let r = replicator
                    .get_or_try_init(|| async {
                        let nodes = DataNodes::connect(meta.clone(), down_after).await?;
                        anyhow::Ok(Arc::new(Replicator::new(store, meta, nodes, site, addr)))
                    })
                    .await?;
                let report = r.round().await?;
                if report.pushed > 0 || !report.unreachable.is_empty() {
                    tracing::info!(
                        examined = report.examined,
                        pushed = report.pushed,
                        bytes = report.bytes_pushed,
                        unreachable = ?report.unreachable,
                        "replication round"
                    );
                }
                anyhow::Ok(())
            }
        },
    )))
}

/// Rounds of [`Follower`]: other sites' data that this site's placement says it holds.
fn start_follower(
    args: &Args,
    addr: String,
    shutdown: &Shutdown,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if args.meta.is_empty() || args.follow_interval_ms == 0 {
        return Ok(None);
    }
    let meta = MetaClient::connect(&args.meta).context("bad --meta address")?;
    let down_after = Duration::from_millis(args.node_down_after_ms.max(1));
    let (site, bandwidth) = (args.site.clone(), args.replication_bandwidth);
    let skip_failed = args.unsafe_skip_failed_fetches;
    let fetch_timeout = Duration::from_millis(args.replication_fetch_timeout_ms.max(1));
    if skip_failed {
        tracing::warn!("--unsafe-skip-failed-fetches: replication may lose data");
    }
    let follower = Arc::new(tokio::sync::OnceCell::<Arc<Follower>>::new());
    Ok(Some(worker::spawn_periodic(
        "follow",
        Duration::from_millis(args.follow_interval_ms),
        Duration::from_secs(60),
        shutdown.subscribe(),
        move || {
            let (meta, site, addr, follower) =
                (meta.clone(), site.clone(), addr.clone(), follower.clone());
            async move {
                let f = follower
                    .get_or_try_init(|| async {
                        let nodes = DataNodes::connect(meta.clone(), down_after).await?;
                        let f = Follower::new(meta, nodes, site, addr, bandwidth)
                            .with_fetch_timeout(fetch_timeout)
                            .with_unsafe_skip_failed_fetches(skip_failed);
                        anyhow::Ok(Arc::new(f))
                    })
                    .await?;
                let report = f.round().await?;
                if report.fetched > 0 || !report.failed.is_empty() {
                    tracing::info!(
                        subtrees = report.subtrees,
                        fetched = report.fetched,
                        bytes = report.bytes_fetched,
                        failed = ?report.failed,
                        "follow round"
                    );
                }
                anyhow::Ok(())
            }
        },
    )))
}

/// Rounds of the small-chunk journal (see `mobilus_data::store`): sync the files of the
/// chunks journaled since the last round and drop their entries, then make spare files
/// for the next puts. Often, so the journal stays small: a round of nothing costs
/// nothing.
fn start_journal(store: Arc<ChunkStore>, shutdown: &Shutdown) -> tokio::task::JoinHandle<()> {
    worker::spawn_periodic(
        "journal",
        Duration::from_millis(100),
        Duration::from_secs(10),
        shutdown.subscribe(),
        move || {
            let store = store.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    // Spares only save time: failing to make them (no inodes left) must
                    // not slow the rounds down.
                    if let Err(e) = store.make_spares() {
                        tracing::warn!(error = %e, "could not make spare files");
                    }
                    store.sync_journal()
                })
                .await?
                .map(|_| ())
                .map_err(anyhow::Error::from)
            }
        },
    )
}

async fn run(args: Args) -> anyhow::Result<()> {
    ChunkStore::describe_metrics();
    if !valid_site_name(&args.site) {
        anyhow::bail!("--site must be 1 to 64 letters, digits, '-' and '_'");
    }
    let shutdown = Shutdown::default();
    let tls = args.tls.install("mobilus-data", shutdown.subscribe())?;
    if let Some(t) = &tls {
        let me = t.identity();
        if me.role != mobilus_tls::Role::Data || me.site.as_deref() != Some(args.site.as_str()) {
            anyhow::bail!(
                "--cert is of {me}, not of a data node of {}: issue one with \
                 `mobilusctl cert issue --role data --site {}`",
                args.site,
                args.site
            );
        }
    }
    let store = Arc::new(
        ChunkStore::open(&args.data_dir, Arc::new(LocalDisk))
            .with_context(|| format!("opening the chunk store in {}", args.data_dir.display()))?,
    );
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = args
        .advertise
        .clone()
        .unwrap_or(listener.local_addr()?.to_string());
    let heartbeat = start_heartbeat(&args, addr.clone(), store.clone(), shutdown.subscribe())?;
    let collector = if args.meta.is_empty() {
        None
    } else {
        let meta = MetaClient::connect(&args.meta).context("bad --meta address")?;
        let policy = GcPolicy {
            ttl: Duration::from_millis(args.gc_ttl_ms),
            grace: Duration::from_millis(args.gc_grace_ms),
        };
        Some(Arc::new(Collector::new(
            store.clone(),
            meta,
            addr.clone(),
            policy,
        )))
    };
    let gc_worker = match &collector {
        Some(c) if args.gc_interval_ms > 0 => {
            let c = c.clone();
            Some(worker::spawn_periodic(
                "gc",
                Duration::from_millis(args.gc_interval_ms),
                Duration::from_secs(300),
                shutdown.subscribe(),
                move || {
                    let c = c.clone();
                    async move { c.round(false).await.map(|_| ()) }
                },
            ))
        }
        _ => None,
    };
    let replicate_worker = start_replicator(&args, addr.clone(), store.clone(), &shutdown)?;
    let follow_worker = start_follower(&args, addr.clone(), &shutdown)?;
    let evict_worker = Some(start_evictor(&args, store.clone(), &shutdown)?);
    let journal_worker = Some(start_journal(store.clone(), &shutdown));
    // Counters become metrics once a second (cheaper than on every chunk).
    let metrics_worker = args.telemetry.metrics_listen.is_some().then(|| {
        let store = store.clone();
        worker::spawn_periodic(
            "metrics",
            Duration::from_secs(1),
            Duration::from_secs(1),
            shutdown.subscribe(),
            move || {
                store.publish_metrics();
                std::future::ready(Ok::<(), std::convert::Infallible>(()))
            },
        )
    });
    if let Some(path) = &args.ready_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &addr)?;
        std::fs::rename(&tmp, path)?;
    }
    tracing::info!(site = %args.site, %addr, "mobilus-data serving");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serve_opts = service::ServeOptions {
        site: Some(args.site.clone()),
        tls,
        forward: if args.meta.is_empty() {
            None
        } else {
            Some(Arc::new(service::Forwarder::new(
                MetaClient::connect(&args.meta).context("bad --meta address")?,
                Duration::from_millis(args.node_down_after_ms.max(1)),
            )))
        },
    };
    let mut serving = tokio::spawn(service::serve(
        store.clone(),
        collector,
        listener,
        serve_opts,
        async {
            let _ = stop_rx.await;
        },
    ));
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
    shutdown.stop();
    for h in [
        heartbeat,
        gc_worker,
        replicate_worker,
        follow_worker,
        evict_worker,
        journal_worker,
        metrics_worker,
    ]
    .into_iter()
    .flatten()
    {
        let _ = h.await;
    }
    // A clean stop leaves its files synced (open still writes again what is journaled).
    if let Err(e) = store.sync_journal() {
        tracing::warn!(error = %e, "could not sync the journal at stop; it is replayed at start");
    }
    tracing::info!("stopped");
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let telemetry = args.telemetry.clone();
    mobilus_telemetry::main_with("mobilus-data", &telemetry, "info", || run(args))
}
