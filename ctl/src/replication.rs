//! `mobilusctl subtree placement` and `mobilusctl replication status`: which sites hold a
//! subtree's data, and how far each one's copy is behind (`namespace::feed` in the
//! metadata, `follow` in the data nodes).

use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use mobilus_meta_client::MetaClient;
use mobilus_proto::fs::{DataMode, Follower, Placement, SitePlacement, SubtreeInfo};
use serde::Serialize;

use crate::cluster::explain;
use crate::output::{emit, progress, table, OutputFormat};

/// `subtree placement PATH [...]`: with no flag, show it.
#[derive(Args, Debug)]
pub struct PlacementArgs {
    pub path: String,
    /// Sites that copy the subtree's data continuously (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub eager: Vec<String>,
    /// Sites that copy it once they own the subtree (after a move).
    #[arg(long, value_delimiter = ',')]
    pub lazy: Vec<String>,
    /// Sites that only fetch what their reads need, and keep it as a cache evicted under
    /// space pressure (the default for a site not named).
    #[arg(long, value_delimiter = ',')]
    pub on_demand: Vec<String>,
    /// Sites that only fetch what their reads need, and keep it for good (never
    /// evicted).
    #[arg(long, value_delimiter = ',')]
    pub pinned: Vec<String>,
    /// Sites a write's fsync waits for (they are named eager unless named otherwise).
    #[arg(long, value_delimiter = ',')]
    pub sync: Vec<String>,
    /// Forget the placement: the owner eager, every other site on demand.
    #[arg(long, conflicts_with_all = ["eager", "lazy", "on_demand", "pinned", "sync"])]
    pub clear: bool,
}

#[derive(Subcommand, Debug)]
pub enum ReplicationCmd {
    /// Per subtree and site: how the site holds the data, its place in the change feed,
    /// and what it still has to fetch (chunks, bytes, rate, ETA).
    Status {
        /// Only this subtree (its root's path).
        path: Option<String>,
    },
}

/// A subtree's placement, as `subtree placement --output json` reports it.
#[derive(Serialize, Debug)]
pub struct PlacementView {
    pub root: u64,
    pub owner: Option<String>,
    /// Per site named: `eager`, `lazy`, `on-demand` or `pinned`, and whether writes wait
    /// for it.
    pub sites: Vec<SitePlacementView>,
}

#[derive(Serialize, Debug)]
pub struct SitePlacementView {
    pub site: String,
    pub mode: &'static str,
    pub sync: bool,
}

fn placement_view(p: &Placement) -> PlacementView {
    PlacementView {
        root: p.root,
        owner: p.owner.clone(),
        sites: p
            .sites
            .iter()
            .map(|s| SitePlacementView {
                site: s.site.clone(),
                mode: s.mode.as_str(),
                sync: s.sync,
            })
            .collect(),
    }
}

fn render_placement(v: &PlacementView) -> comfy_table::Table {
    let mut t = table(&["SITE", "MODE", "SYNC"]);
    if let Some(owner) = &v.owner {
        if !v.sites.iter().any(|s| &s.site == owner) {
            t.add_row(vec![format!("{owner} (owner)"), "eager".into(), "-".into()]);
        }
    }
    for s in &v.sites {
        let name = if Some(&s.site) == v.owner.as_ref() {
            format!("{} (owner)", s.site)
        } else {
            s.site.clone()
        };
        t.add_row(vec![
            name,
            s.mode.to_string(),
            if s.sync { "yes" } else { "no" }.into(),
        ]);
    }
    t.add_row(vec!["(any other)", "on-demand", "no"]);
    t
}

/// The placement the flags describe (a site named twice is an error).
fn sites_from(args: &PlacementArgs) -> anyhow::Result<Vec<SitePlacement>> {
    let mut sites: Vec<SitePlacement> = Vec::new();
    let named = [
        (&args.eager, DataMode::Eager),
        (&args.lazy, DataMode::Lazy),
        (&args.on_demand, DataMode::OnDemand),
        (&args.pinned, DataMode::Pinned),
    ];
    for (list, mode) in named {
        for site in list {
            if sites.iter().any(|s| &s.site == site) {
                anyhow::bail!("site {site} is given two modes");
            }
            sites.push(SitePlacement {
                site: site.clone(),
                mode,
                sync: false,
            });
        }
    }
    for site in &args.sync {
        match sites.iter_mut().find(|s| &s.site == site) {
            Some(s) => s.sync = true,
            None => sites.push(SitePlacement {
                site: site.clone(),
                mode: DataMode::Eager,
                sync: true,
            }),
        }
    }
    Ok(sites)
}

pub async fn placement(
    args: PlacementArgs,
    client: &MetaClient,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let s = crate::subtree::subtree_at(client, &args.path).await?;
    let changes = args.clear
        || !(args.eager.is_empty()
            && args.lazy.is_empty()
            && args.on_demand.is_empty()
            && args.pinned.is_empty()
            && args.sync.is_empty());
    let p = if changes {
        let sites = sites_from(&args)?;
        match client.set_placement(s.root, &sites).await {
            Ok(p) => p,
            Err(e) => {
                let site = sites
                    .iter()
                    .map(|s| s.site.clone())
                    .next()
                    .unwrap_or_default();
                return Err(crate::subtree::explain_site(client, e, &site).await);
            }
        }
    } else {
        client.placement(s.root, false).await.map_err(explain)?
    };
    emit(format, &placement_view(&p), render_placement)
}

/// One site's copy of one subtree, as `replication status --output json` reports it.
#[derive(Serialize, Debug)]
pub struct FollowerView {
    pub root: u64,
    pub path: String,
    pub site: String,
    pub mode: String,
    /// Whether the site copies the data ahead of reads now.
    pub following: bool,
    /// The last change-feed entry the site has passed, and the feed's last.
    pub cursor: u64,
    pub head: u64,
    pub chunks_to_go: u64,
    pub bytes_to_go: u64,
    pub rate_bytes_per_sec: u64,
    /// Seconds to go at that rate (`null` when unknown).
    pub eta_secs: Option<u64>,
    /// Milliseconds since the site last reported (`null`: never).
    pub reported_ms_ago: Option<i64>,
}

fn follower_view(f: &Follower) -> FollowerView {
    FollowerView {
        root: f.root,
        path: f.path.clone(),
        site: f.site.clone(),
        mode: f.mode.clone(),
        following: f.following,
        cursor: f.cursor,
        head: f.next_seq.saturating_sub(1),
        chunks_to_go: f.backlog_chunks,
        bytes_to_go: f.backlog_bytes,
        rate_bytes_per_sec: f.rate_bps,
        eta_secs: (f.rate_bps > 0).then(|| f.backlog_bytes / f.rate_bps),
        reported_ms_ago: (f.updated_ns > 0).then(|| (f.log_now_ns - f.updated_ns) / 1_000_000),
    }
}

pub fn render_followers(rows: &[FollowerView]) -> comfy_table::Table {
    let mut t = table(&[
        "PATH", "SITE", "MODE", "FEED", "TO GO", "RATE", "ETA", "REPORTED",
    ]);
    for r in rows {
        t.add_row(vec![
            r.path.clone(),
            r.site.clone(),
            if r.following {
                r.mode.clone()
            } else {
                format!("{} (not copying)", r.mode)
            },
            format!("{}/{}", r.cursor, r.head),
            format!("{} chunks, {}", r.chunks_to_go, bytes(r.bytes_to_go)),
            format!("{}/s", bytes(r.rate_bytes_per_sec)),
            r.eta_secs
                .map(|s| format!("{s} s"))
                .unwrap_or_else(|| "-".into()),
            r.reported_ms_ago
                .map(|ms| format!("{:.1} s ago", ms as f64 / 1000.0))
                .unwrap_or_else(|| "never".into()),
        ]);
    }
    t
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// The followers of one subtree (`root`) or of all.
pub async fn followers(
    client: &MetaClient,
    root: Option<u64>,
) -> anyhow::Result<Vec<FollowerView>> {
    let all = client.replication_status(root).await.map_err(explain)?;
    Ok(all.iter().map(follower_view).collect())
}

pub async fn run(
    cmd: ReplicationCmd,
    client: &MetaClient,
    format: OutputFormat,
) -> anyhow::Result<()> {
    match cmd {
        ReplicationCmd::Status { path } => {
            let root = match path {
                Some(p) => Some(crate::subtree::subtree_at(client, &p).await?.root),
                None => None,
            };
            let rows = followers(client, root).await?;
            emit(format, &rows, |r| render_followers(r))
        }
    }
}

/// After a move: wait (with a progress bar on a terminal) until site `to` holds the
/// subtree's data, as its follower reports, or `within` passes.
pub async fn wait_for_data(
    client: &MetaClient,
    s: &SubtreeInfo,
    to: &str,
    within: Duration,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let bar = progress(format, 0, "data");
    let until = Instant::now() + within;
    let mut most = 0u64;
    loop {
        let rows = client
            .replication_status(Some(s.root))
            .await
            .map_err(explain)?;
        if let Some(f) = rows.iter().find(|f| f.site == to) {
            if !f.following {
                bar.finish_and_clear();
                return Ok(());
            }
            if f.caught_up() {
                bar.finish_and_clear();
                return Ok(());
            }
            most = most.max(f.backlog_bytes);
            bar.set_length(most);
            bar.set_position(most - f.backlog_bytes);
            bar.set_message(format!(
                "{} chunks to go, {}/s",
                f.backlog_chunks,
                bytes(f.rate_bps)
            ));
        }
        if Instant::now() > until {
            bar.finish_and_clear();
            anyhow::bail!(
                "moved, but {to} has not caught up with the data in {} s (see `mobilusctl replication status`)",
                within.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
