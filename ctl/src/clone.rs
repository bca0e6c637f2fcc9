//! `mobilusctl clone SRC DST [--owner SITE]`, `clone ls`, `clone refresh DST`, `clone abort ID`: a subtree
//! copied into a new one by its metadata alone (no data byte moves), in bounded steps;
//! the copy appears whole, at once, or not at all.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use mobilus_meta_client::{ClientError, MetaClient};
use mobilus_proto::fs::{CloneInfo, CloneState, InodeId};
use mobilus_proto::status::Errno;
use serde::Serialize;

use crate::cluster::explain;
use crate::output::{emit, progress, table, OutputFormat};
use crate::subtree::{explain_site, resolve_dir, subtree_at};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CloneArgs {
    #[command(subcommand)]
    cmd: Option<CloneCmd>,
    /// The subtree to copy (its root's path, like /apps/db).
    src: Option<String>,
    /// The new subtree's path; its parent must be a directory outside every subtree.
    dst: Option<String>,
    /// The site that owns the copy (default: the source's owner). Its reads fetch the
    /// data from the source's site on demand.
    #[arg(long)]
    owner: Option<String>,
    /// Inodes and slices copied per step (one Raft entry each).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: u32,
}

#[derive(Subcommand, Debug)]
enum CloneCmd {
    /// Clones being made or removed now.
    Ls,
    /// Bring a clone up to date with its source, for every file the clone has not
    /// changed since it was made (both are frozen meanwhile); lists the files changed on
    /// both sides, which it leaves alone.
    Refresh {
        /// The clone's path.
        dst: String,
    },
    /// Stop a clone and remove what it copied (nothing of it was ever visible).
    Abort {
        /// The clone's id (`clone ls`).
        id: InodeId,
    },
}

/// A clone, as `clone ... --output json` reports it (a stable schema).
#[derive(Serialize, Debug)]
pub struct CloneView {
    pub id: InodeId,
    pub src: InodeId,
    pub parent: InodeId,
    pub name: String,
    pub owner: String,
    pub state: &'static str,
    pub total_inodes: u64,
    pub copied_inodes: u64,
    pub copied_bytes: u64,
    /// Copying: milliseconds the source's freeze has left unless a step renews it.
    pub freeze_left_ms: i64,
    pub why: String,
}

pub(crate) fn view(c: &CloneInfo) -> CloneView {
    CloneView {
        id: c.dst,
        src: c.src,
        parent: c.parent,
        name: String::from_utf8_lossy(&c.name).into_owned(),
        owner: c.owner.clone(),
        state: if abandoned(c) {
            "abandoned"
        } else {
            c.state.name()
        },
        total_inodes: c.total_inodes,
        copied_inodes: c.copied_inodes,
        copied_bytes: c.copied_bytes,
        freeze_left_ms: match c.state {
            CloneState::Copying => (c.deadline_ns - c.log_now_ns) / 1_000_000,
            _ => 0,
        },
        why: c.why.clone(),
    }
}

/// Copying or refreshing, but no step came before its freeze ran out: its next step
/// aborts it.
fn abandoned(c: &CloneInfo) -> bool {
    matches!(c.state, CloneState::Copying | CloneState::Refreshing) && c.log_now_ns >= c.deadline_ns
}

pub(crate) fn render(rows: &[CloneView]) -> comfy_table::Table {
    let mut t = table(&[
        "ID", "SOURCE", "INTO", "NAME", "OWNER", "STATE", "COPIED", "BYTES", "WHY",
    ]);
    for r in rows {
        t.add_row(vec![
            r.id.to_string(),
            r.src.to_string(),
            r.parent.to_string(),
            r.name.clone(),
            r.owner.clone(),
            r.state.to_string(),
            format!("{}/{}", r.copied_inodes, r.total_inodes),
            r.copied_bytes.to_string(),
            r.why.clone(),
        ]);
    }
    t
}

/// What `clone SRC DST` made.
#[derive(Serialize, Debug)]
pub struct CloneDone {
    pub src: String,
    pub dst: String,
    /// The new subtree's root.
    pub root: InodeId,
    pub owner: String,
    pub inodes: u64,
    pub bytes: u64,
    /// From the start to the publishing step: the time the source was frozen.
    pub seconds: f64,
}

pub(crate) fn render_done(d: &CloneDone) -> comfy_table::Table {
    let mut t = table(&[
        "SOURCE", "CLONE", "ROOT", "OWNER", "INODES", "BYTES", "SECONDS",
    ]);
    t.add_row(vec![
        d.src.clone(),
        d.dst.clone(),
        d.root.to_string(),
        d.owner.clone(),
        d.inodes.to_string(),
        d.bytes.to_string(),
        format!("{:.2}", d.seconds),
    ]);
    t
}

/// Remove what clone `id` copied, step by step, until nothing is left.
pub(crate) async fn remove(
    client: &MetaClient,
    id: InodeId,
    batch: u32,
) -> anyhow::Result<CloneInfo> {
    loop {
        let c = client.abort_clone_step(id, batch).await.map_err(explain)?;
        if c.state == CloneState::Gone {
            return Ok(c);
        }
    }
}

/// `path`'s parent directory and last name.
fn split(path: &str) -> anyhow::Result<(&str, &str)> {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some((_, "")) | None => anyhow::bail!(
            "{path:?} is not an absolute path of a new directory in the Mobilus namespace (like /dev/db-copy)"
        ),
        Some(("", name)) => Ok(("/", name)),
        Some((parent, name)) => Ok((parent, name)),
    }
}

/// A client whose steps may wait out a leader election (the freeze, 10 s, is the real
/// bound).
pub(crate) fn patient(client: &MetaClient) -> MetaClient {
    client.with_timeouts(Duration::from_secs(15), Duration::from_secs(9))
}

/// Remove the clones (and snapshots) left unfinished by a `mobilusctl` that died: nothing
/// of them was ever visible.
pub(crate) async fn remove_unfinished(client: &MetaClient) -> anyhow::Result<()> {
    for c in client.clones(false).await.map_err(explain)? {
        if c.state == CloneState::Aborting || abandoned(&c) {
            eprintln!(
                "mobilusctl: removing clone {} (into {:?}), left unfinished",
                c.dst,
                String::from_utf8_lossy(&c.name)
            );
            remove(client, c.dst, 5_000).await?;
        }
    }
    Ok(())
}

pub async fn run(args: CloneArgs, client: &MetaClient, format: OutputFormat) -> anyhow::Result<()> {
    let client = &patient(client);
    match (args.cmd, args.src, args.dst) {
        (Some(CloneCmd::Ls), ..) => {
            let rows: Vec<CloneView> = client
                .clones(false)
                .await
                .map_err(explain)?
                .iter()
                .map(view)
                .collect();
            emit(format, &rows, |r| render(r))
        }
        (Some(CloneCmd::Refresh { dst }), ..) => {
            let done = refresh(client, &dst, args.batch, format).await?;
            emit(format, &done, render_refresh)
        }
        (Some(CloneCmd::Abort { id }), ..) => {
            let c = remove(client, id, args.batch).await?;
            emit(format, &view(&c), |v| render(std::slice::from_ref(v)))
        }
        (None, Some(src), Some(dst)) => {
            let done = clone(
                client,
                &src,
                &dst,
                args.owner.as_deref(),
                args.batch,
                format,
            )
            .await?;
            emit(format, &done, render_done)
        }
        (None, ..) => anyhow::bail!(
            "usage: mobilusctl clone SRC DST [--owner SITE], clone ls, clone abort ID"
        ),
    }
}

pub(crate) async fn clone(
    client: &MetaClient,
    src: &str,
    dst: &str,
    owner: Option<&str>,
    batch: u32,
    format: OutputFormat,
) -> anyhow::Result<CloneDone> {
    let source = subtree_at(client, src).await?;
    let (parent_path, name) = split(dst)?;
    let parent = resolve_dir(client, parent_path).await?;
    remove_unfinished(client).await?;
    let start = Instant::now();
    let mut c = match client
        .start_clone(source.root, parent, name.as_bytes(), owner)
        .await
    {
        Ok(c) => c,
        Err(ClientError::Errno(Errno::EEXIST, m)) => anyhow::bail!("{dst} exists already ({m})"),
        Err(e) => {
            let e = match owner {
                Some(site) => explain_site(client, e, site).await,
                None => explain(e),
            };
            return Err(e).with_context(|| format!("cloning {src} to {dst}"));
        }
    };
    let bar = progress(format, c.total_inodes, "clone");
    while c.state == CloneState::Copying {
        c = client.clone_step(c.dst, batch).await.map_err(explain)?;
        bar.set_length(c.total_inodes.max(c.copied_inodes));
        bar.set_position(c.copied_inodes);
        bar.set_message(format!("{} MiB", c.copied_bytes >> 20));
    }
    bar.finish_and_clear();
    if c.state == CloneState::Aborting {
        let why = c.why.clone();
        remove(client, c.dst, batch).await?;
        anyhow::bail!("the clone of {src} to {dst} stopped: {why}; nothing was published, and what it had copied is removed");
    }
    Ok(CloneDone {
        src: src.to_string(),
        dst: dst.to_string(),
        root: c.dst,
        owner: c.owner,
        inodes: c.copied_inodes,
        bytes: c.copied_bytes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// What `clone refresh` did.
#[derive(Serialize, Debug)]
pub struct RefreshDone {
    pub clone: String,
    /// The files the clone copied, looked at.
    pub files: u64,
    /// Changed in the source only: now as the source has them.
    pub refreshed: u64,
    /// Changed in the clone only: left as they are.
    pub kept: u64,
    /// Gone from either side: left alone.
    pub gone: u64,
    /// Changed on both sides: left alone (their paths in the clone; the first 1,000).
    pub conflicts: Vec<String>,
    pub conflict_count: u64,
    pub seconds: f64,
}

fn render_refresh(d: &RefreshDone) -> comfy_table::Table {
    let mut t = table(&[
        "CLONE",
        "FILES",
        "REFRESHED",
        "KEPT",
        "GONE",
        "CONFLICTS",
        "SECONDS",
    ]);
    t.add_row(vec![
        d.clone.clone(),
        d.files.to_string(),
        d.refreshed.to_string(),
        d.kept.to_string(),
        d.gone.to_string(),
        if d.conflicts.is_empty() {
            d.conflict_count.to_string()
        } else {
            format!("{}: {}", d.conflict_count, d.conflicts.join(", "))
        },
        format!("{:.2}", d.seconds),
    ]);
    t
}

/// The paths, under `root` (shown as `shown`), of the inodes in `wanted`.
async fn paths_of(
    client: &MetaClient,
    root: InodeId,
    shown: &str,
    wanted: &[InodeId],
) -> anyhow::Result<Vec<String>> {
    let mut found = std::collections::BTreeMap::new();
    let mut todo = vec![(root, shown.trim_end_matches('/').to_string())];
    while let Some((dir, path)) = todo.pop() {
        for e in client.readdir_all(dir, false).await.map_err(explain)? {
            let p = format!("{path}/{}", String::from_utf8_lossy(&e.name));
            if e.kind == mobilus_proto::fs::FileKind::Directory {
                todo.push((e.ino, p));
            } else if wanted.contains(&e.ino) {
                found.entry(e.ino).or_insert(p);
            }
        }
    }
    Ok(wanted
        .iter()
        .map(|i| {
            found
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("inode {i}"))
        })
        .collect())
}

async fn refresh(
    client: &MetaClient,
    dst: &str,
    batch: u32,
    format: OutputFormat,
) -> anyhow::Result<RefreshDone> {
    let target = subtree_at(client, dst).await?;
    remove_unfinished(client).await?;
    let start = Instant::now();
    let mut c = client
        .start_refresh(target.root)
        .await
        .map_err(explain)
        .with_context(|| format!("refreshing {dst}"))?;
    let bar = progress(format, c.total_inodes, "refresh");
    while c.state == CloneState::Refreshing {
        c = client.clone_step(c.dst, batch).await.map_err(explain)?;
        if let Some(r) = &c.refresh {
            bar.set_position(r.files);
        }
    }
    bar.finish_and_clear();
    let r = c.refresh.clone().unwrap_or_default();
    if c.state != CloneState::Done {
        anyhow::bail!(
            "the refresh of {dst} stopped: {}; {} files were refreshed (each whole)",
            c.why,
            r.refreshed
        );
    }
    let conflicts = if r.conflicts.is_empty() {
        Vec::new()
    } else {
        paths_of(client, target.root, dst, &r.conflicts).await?
    };
    Ok(RefreshDone {
        clone: dst.to_string(),
        files: r.files,
        refreshed: r.refreshed,
        kept: r.kept,
        gone: r.gone,
        conflicts,
        conflict_count: r.conflict_count,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn a_destination_splits_into_its_parent_and_name() {
        assert_eq!(split("/a").unwrap(), ("/", "a"));
        assert_eq!(split("/a/b/").unwrap(), ("/a", "b"));
        assert!(split("/").is_err());
        assert!(split("a").is_err());
    }
}
