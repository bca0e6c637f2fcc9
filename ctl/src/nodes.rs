//! `mobilusctl node ls`, `site ls`, `gc`: the data nodes of each site, from the site
//! registry in the metadata, and garbage collection on them.

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use mobilus_data_client::DataClient;
use mobilus_meta_client::MetaClient;
use mobilus_proto::fs::DataNodeInfo;
use serde::Serialize;

use crate::cluster::explain;
use crate::output::{emit, opt, progress, table, OutputFormat};

/// A node whose last heartbeat is older than this is reported unhealthy (and readers and
/// writers ask it last).
use mobilus_data_client::nodes::HEALTHY_WITHIN;

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Data nodes: site, address, capacity, used, health.
    Ls {
        /// Only this site's nodes.
        #[arg(long)]
        site: Option<String>,
    },
    /// Empty a data node before removing it: no new copies go to it, and its chunks are
    /// copied onto its site's other nodes by their replicators.
    Drain {
        /// The node's address, as `node ls` shows it.
        addr: String,
        /// Follow until every chunk it holds has its copies elsewhere (a progress bar).
        #[arg(long)]
        wait: bool,
        /// Stop draining it: it takes new copies again.
        #[arg(long, conflicts_with = "wait")]
        undo: bool,
    },
    /// Take a drained data node out of the registry, once it has been stopped (refused
    /// while it is not drained, or heartbeated in the last 10 s).
    Rm {
        /// The node's address, as `node ls` shows it.
        addr: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SiteCmd {
    /// Sites: their data nodes, space, and copies kept of each chunk.
    Ls,
    /// Set how many copies a site keeps of each chunk (1 to 8; default 2, never more than
    /// it has nodes). Each node's replicator makes or restores them.
    Replicas { site: String, replicas: u32 },
}

/// One data node, as `node ls --output json` reports it (a stable schema).
#[derive(Serialize, Debug)]
pub struct NodeView {
    pub site: String,
    pub addr: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    /// Since its last heartbeat committed, by the answering member's clock.
    pub heartbeat_age_ms: u64,
    pub healthy: bool,
    /// Being drained (`node drain`): it takes no new copies.
    pub draining: bool,
    /// Copies its site keeps of each chunk, as set (0: the default, 2).
    pub site_replicas: u32,
    /// Its background workers, as its last heartbeat reported them.
    pub workers: Vec<WorkerView>,
}

/// One background worker of a data node (`node ls --output json`).
#[derive(Serialize, Debug)]
pub struct WorkerView {
    pub name: String,
    /// `running`, or `backing off` after a failed step.
    pub state: &'static str,
    pub failures: u64,
    /// Its last failure, if any since the node started.
    pub last_error: Option<String>,
}

fn workers_cell(workers: &[WorkerView]) -> String {
    if workers.is_empty() {
        return "-".into();
    }
    workers
        .iter()
        .map(|w| match &w.last_error {
            Some(e) if w.state != "running" => format!("{} {} ({e})", w.name, w.state),
            _ => format!("{} {}", w.name, w.state),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One site, as `site ls --output json` reports it (a stable schema).
#[derive(Serialize, Debug)]
pub struct SiteView {
    pub site: String,
    pub nodes: usize,
    pub healthy_nodes: usize,
    /// Copies kept of each chunk (as set, at most as many as the nodes).
    pub replicas: usize,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
}

/// What a GC round did on one node, as `gc --output json` reports it (a stable schema).
#[derive(Serialize, Debug, Default)]
pub struct GcView {
    pub site: String,
    pub addr: String,
    pub dry_run: bool,
    pub examined: u64,
    /// Chunks collectable (dry run) or condemned.
    pub condemned: u64,
    pub deleted: u64,
    pub bytes_freed: u64,
    pub error: Option<String>,
}

/// The registered data nodes, of one site (which must exist) or of all.
pub async fn nodes(client: &MetaClient, site: Option<&str>) -> anyhow::Result<Vec<NodeView>> {
    let (nodes, now) = client.list_data_nodes(None, false).await.map_err(explain)?;
    let all: Vec<NodeView> = nodes.iter().map(|n| view(n, now)).collect();
    let Some(site) = site else {
        return Ok(all);
    };
    let known = sites(&all);
    if !known.iter().any(|s| s.site == site) {
        let names: Vec<&str> = known.iter().map(|s| s.site.as_str()).collect();
        anyhow::bail!(
            "unknown site {site:?}: the sites are {} (see `mobilusctl site ls`)",
            if names.is_empty() {
                "none yet".to_string()
            } else {
                names.join(", ")
            }
        );
    }
    Ok(all.into_iter().filter(|n| n.site == site).collect())
}

fn view(n: &DataNodeInfo, now_ns: i64) -> NodeView {
    let age = Duration::from_nanos(now_ns.saturating_sub(n.last_heartbeat_ns).max(0) as u64);
    NodeView {
        site: n.site.clone(),
        addr: n.addr.clone(),
        capacity_bytes: n.capacity_bytes,
        used_bytes: n.used_bytes,
        heartbeat_age_ms: age.as_millis() as u64,
        healthy: age < HEALTHY_WITHIN,
        draining: n.draining,
        site_replicas: n.site_replicas,
        workers: n
            .workers
            .iter()
            .map(|w| WorkerView {
                name: w.name.clone(),
                state: if w.backing_off {
                    "backing off"
                } else {
                    "running"
                },
                failures: w.failures,
                last_error: Some(w.last_error.clone()).filter(|e| !e.is_empty()),
            })
            .collect(),
    }
}

fn sites(nodes: &[NodeView]) -> Vec<SiteView> {
    let mut out: Vec<SiteView> = Vec::new();
    for n in nodes {
        let i = match out.iter().position(|s| s.site == n.site) {
            Some(i) => i,
            None => {
                out.push(SiteView {
                    site: n.site.clone(),
                    nodes: 0,
                    healthy_nodes: 0,
                    replicas: 0,
                    capacity_bytes: 0,
                    used_bytes: 0,
                });
                out.len() - 1
            }
        };
        let s = &mut out[i];
        s.nodes += 1;
        s.healthy_nodes += usize::from(n.healthy);
        let wanted = match n.site_replicas {
            0 => mobilus_data_client::placement::DEFAULT_REPLICAS,
            r => r as usize,
        };
        s.replicas = wanted.min(s.nodes);
        s.capacity_bytes += n.capacity_bytes;
        s.used_bytes += n.used_bytes;
    }
    out
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / f64::from(1u32 << 30))
}

pub async fn node(cmd: NodeCmd, client: &MetaClient, format: OutputFormat) -> anyhow::Result<()> {
    let site = match cmd {
        NodeCmd::Ls { site } => site,
        NodeCmd::Drain { addr, wait, undo } => {
            return crate::drain::drain(client, &addr, wait, undo, format).await
        }
        NodeCmd::Rm { addr } => {
            let node = client
                .remove_data_node(&addr)
                .await
                .map_err(crate::cluster::explain)?;
            println!("{addr} is no longer a data node of {}", node.site);
            return Ok(());
        }
    };
    let rows = nodes(client, site.as_deref()).await?;
    emit(format, &rows, |rows| {
        let mut t = table(&[
            "SITE",
            "ADDRESS",
            "CAPACITY",
            "USED",
            "HEARTBEAT",
            "HEALTH",
            "WORKERS",
        ]);
        for r in rows {
            t.add_row(vec![
                r.site.clone(),
                r.addr.clone(),
                gib(r.capacity_bytes),
                gib(r.used_bytes),
                format!("{} ms ago", r.heartbeat_age_ms),
                match (r.healthy, r.draining) {
                    (true, false) => "ok",
                    (true, true) => "ok, draining",
                    (false, false) => "stale",
                    (false, true) => "stale, draining",
                }
                .into(),
                workers_cell(&r.workers),
            ]);
        }
        t
    })
}

pub async fn site(cmd: SiteCmd, client: &MetaClient, format: OutputFormat) -> anyhow::Result<()> {
    if let SiteCmd::Replicas { site, replicas } = cmd {
        let set = client
            .set_site_replicas(&site, replicas)
            .await
            .map_err(|e| match e {
                mobilus_meta_client::ClientError::UnknownSite(_) => {
                    anyhow::anyhow!("unknown site {site:?} (see `mobilusctl site ls`)")
                }
                e => explain(e),
            })?;
        println!("{site} keeps {set} copies of each chunk (at most one per node); its replicators make them");
        return Ok(());
    }
    let rows = sites(&nodes(client, None).await?);
    emit(format, &rows, |rows| {
        let mut t = table(&["SITE", "NODES", "HEALTHY", "COPIES", "CAPACITY", "USED"]);
        for r in rows {
            t.add_row(vec![
                r.site.clone(),
                r.nodes.to_string(),
                r.healthy_nodes.to_string(),
                r.replicas.to_string(),
                gib(r.capacity_bytes),
                gib(r.used_bytes),
            ]);
        }
        t
    })
}

/// A client of one data node (the data-node client crate's, shared with the mount).
pub fn data_client(n: &NodeView) -> anyhow::Result<DataClient> {
    DataClient::new(&n.addr).with_context(|| format!("data node of {}", n.site))
}

async fn gc_one(n: &NodeView, dry_run: bool) -> anyhow::Result<GcView> {
    let r = data_client(n)?.gc(dry_run).await?;
    Ok(GcView {
        site: n.site.clone(),
        addr: n.addr.clone(),
        dry_run,
        examined: r.examined,
        condemned: r.condemned,
        deleted: r.deleted,
        bytes_freed: r.bytes_freed,
        error: None,
    })
}

/// One GC round on every data node. Fails (exit 1) if any node could not collect.
pub async fn gc(
    client: &MetaClient,
    site: Option<&str>,
    dry_run: bool,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let targets = nodes(client, site).await?;
    let bar = progress(format, targets.len() as u64, "gc");
    for n in targets {
        bar.set_message(n.addr.clone());
        let row = match gc_one(&n, dry_run).await {
            Ok(v) => v,
            Err(e) => GcView {
                site: n.site.clone(),
                addr: n.addr.clone(),
                dry_run,
                error: Some(format!("{e:#}")),
                ..GcView::default()
            },
        };
        rows.push(row);
        bar.inc(1);
    }
    bar.finish_and_clear();
    emit(format, &rows, |rows| {
        let collect = if dry_run { "COLLECTABLE" } else { "CONDEMNED" };
        let mut t = table(&[
            "SITE", "ADDRESS", "EXAMINED", collect, "DELETED", "FREED", "ERROR",
        ]);
        for r in rows {
            t.add_row(vec![
                r.site.clone(),
                r.addr.clone(),
                r.examined.to_string(),
                r.condemned.to_string(),
                r.deleted.to_string(),
                format!("{} B", r.bytes_freed),
                r.error.clone().unwrap_or_else(|| opt(None)),
            ]);
        }
        t
    })?;
    let failed = rows.iter().filter(|r| r.error.is_some()).count();
    if failed > 0 {
        anyhow::bail!("{failed} data nodes could not collect; see the ERROR column");
    }
    Ok(())
}
