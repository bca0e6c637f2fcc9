//! `mobilusctl subtree create|ls|status|move`: units of ownership, which site owns each,
//! and moving them between sites.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use mobilus_meta_client::{ClientError, MetaClient};
use mobilus_proto::fs::{
    DataMode, FileKind, InodeId, SubtreeInfo, SubtreeState, SubtreeUsage, ROOT_INO,
};
use serde::Serialize;

use crate::cluster::explain;
use crate::output::{emit, progress, table, OutputFormat};

#[derive(Subcommand, Debug)]
pub enum SubtreeCmd {
    /// Make a directory a unit of ownership, owned by one site. An existing tree is
    /// relabelled in bounded steps (resumable: run the same command again after a crash).
    /// Subtrees do not nest.
    Create {
        /// The directory, as a path in the Mobilus namespace (`/apps/db`).
        path: String,
        /// The site that may change it (see `mobilusctl site ls`).
        #[arg(long)]
        owner: String,
        /// Inodes relabelled per step (one Raft entry each).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        batch: u32,
    },
    /// Every subtree: owner, epoch, lease, state, inodes and bytes.
    Ls,
    /// Who moves a subtree: the operator only (`--manual`, the default), or also the
    /// first write from another site once the owner has held it HOLD_MS
    /// (`--follow-writer HOLD_MS`; the hold keeps two writers from bouncing it).
    Policy {
        path: String,
        #[arg(
            long,
            value_name = "HOLD_MS",
            conflicts_with = "manual",
            required_unless_present = "manual"
        )]
        follow_writer: Option<u64>,
        #[arg(long)]
        manual: bool,
    },
    /// One subtree, by its root's path: its usage, and each site's copy of its data.
    Status { path: String },
    /// Which sites hold the subtree's data, and how: eagerly (copied continuously),
    /// lazily (copied once they own it), or on demand (reads fault). The owner is eager
    /// unless named otherwise, and a move makes the new owner eager. With no flag, show
    /// it.
    Placement(crate::replication::PlacementArgs),
    /// A subtree's access profile: the blocks an application read first when it last
    /// started there, fetched first by a site the subtree moves to. `show` (default),
    /// `record` (the next start records it anew) or `clear`.
    Profile(crate::profile::ProfileArgs),
    /// Give a subtree to another site at once (epoch + 1); nothing is copied first. The
    /// old owner can never change it again.
    Move {
        path: String,
        /// The new owner.
        #[arg(long)]
        to: String,
        /// Take it from an owner that stopped renewing its lease (a dead or partitioned
        /// site); refused while that lease is valid.
        #[arg(long)]
        force: bool,
        /// Wait until the new owner holds a valid lease (its data node heartbeats), so its
        /// mounts can write at once, and (with `--data eager`) until its copy of the data
        /// has caught up (a progress bar on a terminal).
        #[arg(long)]
        wait: bool,
        /// What the new owner copies ahead: `eager` everything (its access profile
        /// first), `lazy` only the access profile (the rest faulted in on demand, and
        /// kept), `none` nothing (faults only).
        #[arg(long, value_enum, default_value = "eager")]
        data: MoveData,
    },
}

/// `subtree move --data`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveData {
    Eager,
    Lazy,
    None,
}

/// One subtree, as `subtree ls|status --output json` reports it (a stable schema).
#[derive(Serialize, Debug)]
pub struct SubtreeView {
    pub root: InodeId,
    pub path: String,
    /// `null` for the shared root, which any site may write.
    pub owner: Option<String>,
    pub epoch: u64,
    pub state: &'static str,
    /// Milliseconds the owner's lease has left (negative: expired that long ago); `null`
    /// for the shared root.
    pub lease_left_ms: Option<i64>,
    pub inodes: u64,
    pub bytes: u64,
    pub pending_dirs: u64,
    pub created_ns: i64,
    pub moved_ns: i64,
    /// `manual`, or `follow-writer` with its hold.
    pub policy: String,
    /// The mount session holding the subtree's delegation (it caches the subtree
    /// authoritatively), if any.
    pub delegated_to: Option<u64>,
    pub delegation_recalled: bool,
}

fn view(s: &SubtreeInfo) -> SubtreeView {
    SubtreeView {
        root: s.root,
        path: if s.root == ROOT_INO {
            "/".into()
        } else {
            s.path.clone()
        },
        owner: s.owner.clone(),
        epoch: s.epoch,
        state: s.state.name(),
        lease_left_ms: s
            .owner
            .as_ref()
            .map(|_| (s.lease_expiry_ns - s.log_now_ns) / 1_000_000),
        inodes: s.inodes,
        bytes: s.bytes,
        pending_dirs: s.pending_dirs,
        created_ns: s.created_ns,
        moved_ns: s.moved_ns,
        policy: match s.follow_writer_hold_ns {
            None => "manual".into(),
            Some(ns) => format!("follow-writer (hold {} ms)", ns / 1_000_000),
        },
        delegated_to: s.delegation.map(|(session, _)| session),
        delegation_recalled: s.delegation.is_some_and(|(_, r)| r),
    }
}

fn delegation_cell(v: &SubtreeView) -> String {
    match (v.delegated_to, v.delegation_recalled) {
        (None, _) => "-".into(),
        (Some(s), false) => format!("mount session {s}"),
        (Some(s), true) => format!("mount session {s} (recalled)"),
    }
}

fn lease_cell(v: &SubtreeView) -> String {
    match v.lease_left_ms {
        None => "-".into(),
        Some(ms) if ms > 0 => format!("{:.1} s left", ms as f64 / 1000.0),
        Some(ms) => format!("expired {:.1} s ago", -ms as f64 / 1000.0),
    }
}

fn render(rows: &[SubtreeView]) -> comfy_table::Table {
    let mut t = table(&[
        "PATH",
        "ROOT",
        "OWNER",
        "EPOCH",
        "LEASE",
        "STATE",
        "POLICY",
        "DELEGATED TO",
        "INODES",
        "BYTES",
    ]);
    for r in rows {
        t.add_row(vec![
            r.path.clone(),
            r.root.to_string(),
            r.owner.clone().unwrap_or_else(|| "(shared)".into()),
            r.epoch.to_string(),
            lease_cell(r),
            if r.pending_dirs > 0 {
                format!("{} ({} dirs left)", r.state, r.pending_dirs)
            } else {
                r.state.to_string()
            },
            r.policy.clone(),
            delegation_cell(r),
            r.inodes.to_string(),
            r.bytes.to_string(),
        ]);
    }
    t
}

/// `subtree status`: the subtree, and what it holds of the data (not for the shared
/// root, which holds everything else).
#[derive(Serialize, Debug)]
pub struct StatusView {
    #[serde(flatten)]
    pub subtree: SubtreeView,
    /// Files, logical bytes, chunks referenced and their bytes, and the chunks and bytes
    /// nothing outside the subtree references (what deleting it would free).
    pub usage: Option<SubtreeUsage>,
    /// Each site's copy of the data (see `replication status`).
    pub sites: Vec<crate::replication::FollowerView>,
}

fn render_status(v: &StatusView) -> comfy_table::Table {
    let mut t = render(std::slice::from_ref(&v.subtree));
    if let Some(u) = &v.usage {
        t.add_row(vec![String::new(); 10]);
        t.add_row(vec![
            "usage".to_string(),
            format!("{} files", u.files),
            format!("{} chunks", u.chunks),
            format!("{} bytes referenced", u.referenced_bytes),
            String::new(),
            String::new(),
            String::new(),
            format!("only its: {} chunks", u.exclusive_chunks),
            String::new(),
            format!("{} (freed by deleting it)", u.exclusive_bytes),
        ]);
    }
    if !v.sites.is_empty() {
        println!("{t}");
        return crate::replication::render_followers(&v.sites);
    }
    t
}

/// The directory at `path` in the namespace (absolute, `/`-separated).
pub async fn resolve_dir(client: &MetaClient, path: &str) -> anyhow::Result<InodeId> {
    if !path.starts_with('/') {
        anyhow::bail!("{path:?} is not an absolute path in the Mobilus namespace (like /apps/db)");
    }
    let mut ino = ROOT_INO;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let attr = match client.lookup(ino, part.as_bytes(), false).await {
            Ok(a) => a,
            Err(e) if e.errno() == Some(mobilus_proto::status::Errno::ENOENT) => {
                anyhow::bail!("{path}: no such file or directory (no {part:?})")
            }
            Err(e) => return Err(explain(e)).with_context(|| format!("looking up {path}")),
        };
        ino = attr.ino;
        if attr.kind != FileKind::Directory {
            anyhow::bail!("{path}: not a directory ({part:?} is a {:?})", attr.kind);
        }
    }
    Ok(ino)
}

/// Explain a refusal naming `site`: an unknown one gets `node ls --site`'s message, which
/// lists the real sites.
pub async fn explain_site(client: &MetaClient, e: ClientError, site: &str) -> anyhow::Error {
    if let ClientError::UnknownSite(_) = e {
        if let Err(listed) = crate::nodes::nodes(client, Some(site)).await {
            return listed;
        }
    }
    explain(e)
}

/// The subtree rooted at `path`, or an error saying where `path` belongs instead.
pub async fn subtree_at(client: &MetaClient, path: &str) -> anyhow::Result<SubtreeInfo> {
    let ino = resolve_dir(client, path).await?;
    match client.subtree(ino, false).await {
        Ok(s) => Ok(s),
        Err(ClientError::Errno(mobilus_proto::status::Errno::EINVAL, _)) => {
            let attr = client.getattr(ino, false).await.map_err(explain)?;
            let within = client.subtree(attr.subtree, false).await.map_err(explain)?;
            anyhow::bail!(
                "{path} is not a subtree; it is inside {} (see `mobilusctl subtree ls`)",
                if within.root == ROOT_INO {
                    "the shared root".to_string()
                } else {
                    format!("subtree {}", within.path)
                }
            )
        }
        Err(e) => Err(explain(e)),
    }
}

pub async fn run(cmd: SubtreeCmd, client: &MetaClient, format: OutputFormat) -> anyhow::Result<()> {
    match cmd {
        SubtreeCmd::Placement(args) => crate::replication::placement(args, client, format).await,
        SubtreeCmd::Profile(args) => crate::profile::profile(args, client, format).await,
        SubtreeCmd::Ls => {
            let all = client.subtrees(false).await.map_err(explain)?;
            let rows: Vec<SubtreeView> = all.iter().map(view).collect();
            emit(format, &rows, |r| render(r))
        }
        SubtreeCmd::Policy {
            path,
            follow_writer,
            manual,
        } => {
            let s = subtree_at(client, &path).await?;
            let hold = if manual {
                None
            } else {
                follow_writer.map(Duration::from_millis)
            };
            let s = client
                .set_subtree_policy(s.root, hold)
                .await
                .map_err(explain)?;
            emit(format, &view(&s), |v| render(std::slice::from_ref(v)))
        }
        SubtreeCmd::Status { path } => {
            let s = subtree_at(client, &path).await?;
            let usage = if s.root == ROOT_INO {
                None
            } else {
                Some(client.subtree_usage(s.root).await.map_err(explain)?)
            };
            let sites = if s.root == ROOT_INO {
                Vec::new()
            } else {
                crate::replication::followers(client, Some(s.root)).await?
            };
            let v = StatusView {
                subtree: view(&s),
                usage,
                sites,
            };
            emit(format, &v, render_status)
        }
        SubtreeCmd::Create { path, owner, batch } => {
            let ino = resolve_dir(client, &path).await?;
            let mut s = match client.create_subtree(ino, &owner).await {
                Ok(s) => s,
                // Resuming a creation that stopped halfway.
                Err(ClientError::Errno(mobilus_proto::status::Errno::EEXIST, _)) => {
                    let s = client.subtree(ino, false).await.map_err(explain)?;
                    if s.state != SubtreeState::Preparing {
                        anyhow::bail!(
                            "{path} is a subtree already, owned by {} (epoch {})",
                            s.owner.as_deref().unwrap_or("nobody"),
                            s.epoch
                        );
                    }
                    if s.owner.as_deref() != Some(owner.as_str()) {
                        anyhow::bail!(
                            "{path} is being made a subtree for {}, not {owner}; finish that with --owner {0}",
                            s.owner.as_deref().unwrap_or("nobody")
                        );
                    }
                    s
                }
                Err(e) => return Err(explain_site(client, e, &owner).await).context(path.clone()),
            };
            let bar = progress(format, 0, "relabel");
            while s.state == SubtreeState::Preparing {
                s = client.relabel_subtree(ino, batch).await.map_err(explain)?;
                bar.set_length(s.inodes + s.pending_dirs);
                bar.set_position(s.inodes);
                bar.set_message(format!("{} directories left", s.pending_dirs));
            }
            bar.finish_and_clear();
            emit(format, &view(&s), |v| render(std::slice::from_ref(v)))
        }
        SubtreeCmd::Move {
            path,
            to,
            force,
            wait,
            data,
        } => {
            let before = subtree_at(client, &path).await?;
            let start = Instant::now();
            // A mount of the owner may hold the subtree's delegation: the move waits for
            // its recall (a holder that is gone blocks it until its lease ends, 10 s).
            let patient = client.with_timeouts(Duration::from_secs(30), Duration::from_secs(9));
            // What the new owner copies ahead, set in the same step as the move.
            let mode = match data {
                MoveData::Eager => None,
                MoveData::Lazy => Some(DataMode::Profile),
                MoveData::None => Some(DataMode::OnDemand),
            };
            let s = match patient
                .move_subtree_with(before.root, &to, force, mode)
                .await
            {
                Ok(s) => s,
                Err(e @ ClientError::LeaseExpired(_)) if !force => {
                    anyhow::bail!(
                        "{e}; if {} is down or cut off, take the subtree over with --force",
                        before.owner.as_deref().unwrap_or("the owner")
                    )
                }
                Err(e) => return Err(explain_site(client, e, &to).await).context(path.clone()),
            };
            let mut s = s;
            if wait {
                let until = Instant::now() + Duration::from_secs(30);
                while !s.lease_valid() {
                    if Instant::now() > until {
                        anyhow::bail!(
                            "moved, but {to} has held no valid lease for 30 s: is its data node running?"
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    s = client.subtree(s.root, false).await.map_err(explain)?;
                }
                if data == MoveData::Eager {
                    let within = Duration::from_secs(3600);
                    crate::replication::wait_for_data(client, &s, &to, within, format).await?;
                }
            } else if !s.lease_valid() {
                eprintln!(
                    "mobilusctl: warning: {to} holds no valid lease (is its data node running?); its mounts cannot write {path} until it does"
                );
            }
            if format == OutputFormat::Table {
                eprintln!(
                    "moved {path} from {} to {to} (epoch {} -> {}) in {:.1} ms",
                    before.owner.as_deref().unwrap_or("nobody"),
                    before.epoch,
                    s.epoch,
                    start.elapsed().as_secs_f64() * 1e3
                );
            }
            emit(format, &view(&s), |v| render(std::slice::from_ref(v)))
        }
    }
}
