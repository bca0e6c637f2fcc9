//! `mobilusctl fsck`: the metadata checks itself (tree shape, link counts, reference
//! counts, over one snapshot on the leader); then every referenced chunk is read back
//! and hashed on every data node, page by page. A chunk is intact when at least one site
//! holds a copy whose bytes hash right; a corrupt copy is quarantined as it is found.

use std::collections::HashSet;

use anyhow::Context;
use mobilus_meta_client::MetaClient;
use mobilus_proto::datapb::ChunkState;
use mobilus_proto::fs::ChunkHash;
use serde::Serialize;

use crate::cluster::explain;
use crate::nodes::{data_client, nodes, NodeView};
use crate::output::{emit, progress, table, OutputFormat};

/// Chunks per page, and per `Verify` call.
const PAGE: u32 = 512;
/// Hashes of lost chunks listed in the report; the rest are counted.
const MAX_LISTED: usize = 100;

/// The metadata's own checks, as `fsck --output json` reports them (a stable schema).
#[derive(Serialize, Debug, Default)]
pub struct MetadataView {
    pub inodes: u64,
    pub directories: u64,
    pub files: u64,
    pub symlinks: u64,
    pub others: u64,
    pub dentries: u64,
    pub orphans: u64,
    pub slices: u64,
    pub referenced_chunks: u64,
    pub chunk_references: u64,
    pub problem_count: u64,
    /// The first 100 problems.
    pub problems: Vec<String>,
}

/// The chunk checks (a stable schema).
#[derive(Serialize, Debug, Default)]
pub struct ChunksView {
    /// Referenced chunks checked.
    pub checked: u64,
    /// With at least one intact copy.
    pub intact: u64,
    /// With no copy anywhere (and every node answered): data is lost.
    pub lost: u64,
    /// With no intact copy on the nodes that answered, but some node did not answer.
    pub unverified: u64,
    /// Copies that failed their hash and were quarantined now.
    pub corrupt_copies: u64,
    /// Intact copies, summed over nodes.
    pub copies: u64,
    /// Hex hashes of the first lost chunks.
    pub lost_hashes: Vec<String>,
    /// Nodes that could not be checked, with why.
    pub node_errors: Vec<String>,
}

#[derive(Serialize, Debug, Default)]
pub struct FsckView {
    pub healthy: bool,
    pub metadata: MetadataView,
    pub chunks: ChunksView,
}

fn metadata_view(r: mobilus_proto::pb::FsckReply) -> MetadataView {
    MetadataView {
        inodes: r.inodes,
        directories: r.directories,
        files: r.files,
        symlinks: r.symlinks,
        others: r.others,
        dentries: r.dentries,
        orphans: r.orphans,
        slices: r.slices,
        referenced_chunks: r.referenced_chunks,
        chunk_references: r.chunk_references,
        problem_count: r.problem_count,
        problems: r.problems,
    }
}

/// States of `page` on one node (`None`: the node could not be asked).
async fn verify_on(node: &NodeView, page: &[ChunkHash]) -> anyhow::Result<Vec<ChunkState>> {
    Ok(data_client(node)?.verify(page).await?)
}

async fn check_chunks(
    client: &MetaClient,
    targets: &[NodeView],
    expected: u64,
    format: OutputFormat,
) -> anyhow::Result<ChunksView> {
    let mut v = ChunksView::default();
    let mut failed: HashSet<String> = HashSet::new();
    let bar = progress(format, expected, "fsck");
    let mut after: Option<ChunkHash> = None;
    loop {
        let (page, eof) = client
            .list_chunks(after.as_ref(), PAGE)
            .await
            .map_err(explain)?;
        let hashes: Vec<ChunkHash> = page.iter().map(|(h, _)| *h).collect();
        let mut intact = vec![false; hashes.len()];
        let mut unanswered = false;
        for node in targets {
            if failed.contains(&node.addr) {
                unanswered = true;
                continue;
            }
            match verify_on(node, &hashes).await {
                Ok(states) => {
                    for (i, s) in states.iter().enumerate() {
                        match s {
                            ChunkState::ChunkOk => {
                                intact[i] = true;
                                v.copies += 1;
                            }
                            ChunkState::ChunkCorrupt => v.corrupt_copies += 1,
                            ChunkState::ChunkMissing => {}
                        }
                    }
                }
                Err(e) => {
                    failed.insert(node.addr.clone());
                    v.node_errors.push(format!("{e:#}"));
                    unanswered = true;
                }
            }
        }
        for (h, ok) in hashes.iter().zip(&intact) {
            v.checked += 1;
            if *ok {
                v.intact += 1;
            } else if unanswered {
                v.unverified += 1;
            } else {
                v.lost += 1;
                if v.lost_hashes.len() < MAX_LISTED {
                    v.lost_hashes.push(h.to_hex());
                }
            }
        }
        bar.inc(hashes.len() as u64);
        after = hashes.last().copied();
        if eof || after.is_none() {
            break;
        }
    }
    bar.finish_and_clear();
    Ok(v)
}

fn render(v: &FsckView) -> comfy_table::Table {
    let m = &v.metadata;
    let c = &v.chunks;
    let mut t = table(&["CHECK", "RESULT"]);
    let rows: Vec<(&str, String)> = vec![
        (
            "tree",
            format!(
                "{} inodes: {} directories, {} files, {} symlinks, {} other; {} entries, {} open orphans",
                m.inodes, m.directories, m.files, m.symlinks, m.others, m.dentries, m.orphans
            ),
        ),
        (
            "references",
            format!(
                "{} slices hold {} references to {} chunks",
                m.slices, m.chunk_references, m.referenced_chunks
            ),
        ),
        ("metadata problems", m.problem_count.to_string()),
        (
            "chunks",
            format!(
                "{} checked: {} intact ({} copies), {} lost, {} unverified",
                c.checked, c.intact, c.copies, c.lost, c.unverified
            ),
        ),
        ("corrupt copies quarantined", c.corrupt_copies.to_string()),
        (
            "verdict",
            if v.healthy { "healthy" } else { "PROBLEMS FOUND" }.to_string(),
        ),
    ];
    for (k, val) in rows {
        t.add_row(vec![k.to_string(), val]);
    }
    for p in &m.problems {
        t.add_row(vec!["problem".to_string(), p.clone()]);
    }
    for h in &c.lost_hashes {
        t.add_row(vec!["lost chunk".to_string(), h.clone()]);
    }
    for e in &c.node_errors {
        t.add_row(vec!["node error".to_string(), e.clone()]);
    }
    t
}

/// Run every check; print the report; fail (exit 1) if anything is wrong.
pub async fn fsck(client: &MetaClient, format: OutputFormat) -> anyhow::Result<()> {
    let meta = client.fsck().await.map_err(explain)?;
    let metadata = metadata_view(meta);
    let targets = nodes(client, None).await?;
    let chunks = check_chunks(client, &targets, metadata.referenced_chunks, format)
        .await
        .context("checking chunks")?;
    let healthy = metadata.problem_count == 0
        && chunks.lost == 0
        && chunks.unverified == 0
        && chunks.corrupt_copies == 0;
    let view = FsckView {
        healthy,
        metadata,
        chunks,
    };
    emit(format, &view, render)?;
    if !view.healthy {
        anyhow::bail!(
            "fsck found problems: {} in the metadata, {} lost chunks, {} unverified, {} corrupt copies",
            view.metadata.problem_count,
            view.chunks.lost,
            view.chunks.unverified,
            view.chunks.corrupt_copies
        );
    }
    Ok(())
}
