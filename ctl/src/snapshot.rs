//! `mobilusctl snapshot create|ls|rm|restore`: read-only copies of a subtree by its
//! metadata alone, reachable through every mount under `PATH/.snapshots/NAME`.

use anyhow::Context;
use clap::Subcommand;
use mobilus_meta_client::{ClientError, MetaClient};
use mobilus_proto::fs::{CloneState, InodeId, SnapshotInfo};
use mobilus_proto::status::Errno;
use serde::Serialize;

use crate::clone::{remove, CloneDone};
use crate::cluster::explain;
use crate::output::{emit, progress, table, OutputFormat};
use crate::subtree::subtree_at;

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Take a snapshot of a subtree: a read-only copy of it as it is now (its writers
    /// wait while it is made), at PATH/.snapshots/NAME.
    Create { path: String, name: String },
    /// The snapshots of a subtree, oldest first.
    Ls { path: String },
    /// Remove a snapshot (its chunks are freed by GC unless something else uses them).
    Rm { path: String, name: String },
    /// Restore a snapshot as a new, writable subtree at DST (the subtree itself is left
    /// as it is; `clone PATH/.snapshots/NAME DST` does the same).
    Restore {
        path: String,
        name: String,
        #[arg(long)]
        to: String,
        /// The new subtree's owner (default: the snapshot's).
        #[arg(long)]
        owner: Option<String>,
    },
}

/// A snapshot, as `snapshot ls --output json` reports it (a stable schema).
#[derive(Serialize, Debug)]
pub struct SnapshotView {
    pub name: String,
    pub path: String,
    pub root: InodeId,
    pub created_ns: i64,
    pub inodes: u64,
    pub bytes: u64,
}

fn view(path: &str, s: &SnapshotInfo) -> SnapshotView {
    let name = String::from_utf8_lossy(&s.name).into_owned();
    SnapshotView {
        path: format!("{}/.snapshots/{name}", path.trim_end_matches('/')),
        name,
        root: s.root,
        created_ns: s.created_ns,
        inodes: s.inodes,
        bytes: s.bytes,
    }
}

fn render(rows: &[SnapshotView]) -> comfy_table::Table {
    let mut t = table(&["NAME", "PATH", "ROOT", "INODES", "BYTES"]);
    for r in rows {
        t.add_row(vec![
            r.name.clone(),
            r.path.clone(),
            r.root.to_string(),
            r.inodes.to_string(),
            r.bytes.to_string(),
        ]);
    }
    t
}

const BATCH: u32 = 5_000;

pub async fn run(
    cmd: SnapshotCmd,
    client: &MetaClient,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let client = &crate::clone::patient(client);
    match cmd {
        SnapshotCmd::Create { path, name } => {
            let src = subtree_at(client, &path).await?;
            crate::clone::remove_unfinished(client).await?;
            let start = std::time::Instant::now();
            let mut c = match client.create_snapshot(src.root, name.as_bytes()).await {
                Ok(c) => c,
                Err(ClientError::Errno(Errno::EEXIST, m)) => {
                    anyhow::bail!("{path} has a snapshot {name:?} already ({m})")
                }
                Err(e) => return Err(explain(e)).with_context(|| format!("snapshot of {path}")),
            };
            let bar = progress(format, c.total_inodes, "snapshot");
            while c.state == CloneState::Copying {
                c = client.clone_step(c.dst, BATCH).await.map_err(explain)?;
                bar.set_position(c.copied_inodes);
            }
            bar.finish_and_clear();
            if c.state == CloneState::Aborting {
                let why = c.why.clone();
                remove(client, c.dst, BATCH).await?;
                anyhow::bail!("the snapshot of {path} stopped: {why}; nothing was published");
            }
            let done = CloneDone {
                src: path.clone(),
                dst: format!("{}/.snapshots/{name}", path.trim_end_matches('/')),
                root: c.dst,
                owner: c.owner,
                inodes: c.copied_inodes,
                bytes: c.copied_bytes,
                seconds: start.elapsed().as_secs_f64(),
            };
            emit(format, &done, crate::clone::render_done)
        }
        SnapshotCmd::Ls { path } => {
            let src = subtree_at(client, &path).await?;
            let all = client.snapshots(src.root, false).await.map_err(explain)?;
            let rows: Vec<SnapshotView> = all.iter().map(|s| view(&path, s)).collect();
            emit(format, &rows, |r| render(r))
        }
        SnapshotCmd::Rm { path, name } => {
            let src = subtree_at(client, &path).await?;
            let c = client
                .remove_snapshot(src.root, name.as_bytes())
                .await
                .map_err(explain)
                .with_context(|| format!("removing snapshot {name:?} of {path}"))?;
            let c = remove(client, c.dst, BATCH).await?;
            emit(format, &crate::clone::view(&c), |v| {
                crate::clone::render(std::slice::from_ref(v))
            })
        }
        SnapshotCmd::Restore {
            path,
            name,
            to,
            owner,
        } => {
            let from = format!("{}/.snapshots/{name}", path.trim_end_matches('/'));
            let done =
                crate::clone::clone(client, &from, &to, owner.as_deref(), BATCH, format).await?;
            emit(format, &done, crate::clone::render_done)
        }
    }
}
