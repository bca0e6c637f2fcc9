//! How long a subtree move takes, against the subtree's size: files and bytes.
//!
//! `cargo bench -p mobilus-meta --bench subtree_move` (`MOVE_FILES=1000,100000` and
//! `MOVE_GIB=0.1,1,4` choose the sizes; `MOVE_FILES=1000,100000,1000000` for the full
//! table). Through a 3-member cluster on loopback: each subtree is filled as a plain
//! directory first (files by 64 concurrent creates; bytes as slices of 4 MiB chunk
//! references, metadata only), made a subtree over the existing tree (its relabelling
//! timed), then moved between two sites 10 times. Prints the median and p90 move time
//! and each row's ratio to the smallest subtree's median, measured in the same run.

use std::time::{Duration, Instant};

use mobilus_meta_client::{ClientOptions, MetaClient};
use mobilus_proto::fs::{
    ChunkHash, ChunkRef, FileKind, InodeId, SliceWrite, SubtreeState, ROOT_INO,
};

mod common;
use common::{agents, fill_files, start_cluster};

const CHUNK: u64 = 4 << 20;
const MOVES: usize = 10;

fn list(var: &str, default: &str) -> Vec<f64> {
    std::env::var(var)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

async fn fill_bytes(client: &MetaClient, dir: InodeId, bytes: u64) -> anyhow::Result<()> {
    let file = client
        .mknod(dir, b"data", FileKind::Regular, 0o644, 0, 0, 0, None)
        .await?
        .ino;
    let chunks = bytes.div_ceil(CHUNK);
    for first in (0..chunks).step_by(1024) {
        let n = (chunks - first).min(1024);
        let refs = (first..first + n)
            .map(|c| {
                let mut h = [0u8; 32];
                h[..8].copy_from_slice(&c.to_be_bytes());
                ChunkRef {
                    hash: ChunkHash(h),
                    offset: 0,
                    len: CHUNK,
                }
            })
            .collect();
        let slice = SliceWrite {
            offset: first * CHUNK,
            len: n * CHUNK,
            chunks: refs,
        };
        client.write(file, &[slice], None, &[], false).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let files = list("MOVE_FILES", "1000,100000");
    let gib = list("MOVE_GIB", "0.1,1,4");
    let tmp = tempfile::tempdir()?;
    let (_procs, addrs) = start_cluster(&tmp.path().join("c"), &[]).await?;
    let admin = MetaClient::new(&addrs, ClientOptions::default())?;
    let _agents = agents(admin.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut rows: Vec<(String, f64, f64, f64)> = Vec::new();
    let sizes: Vec<(String, u64, u64)> = files
        .iter()
        .map(|f| (format!("{} files", *f as u64), *f as u64, 0))
        .chain(
            gib.iter()
                .map(|g| (format!("{g} GiB"), 0, (g * f64::from(1u32 << 30)) as u64)),
        )
        .collect();
    for (i, (name, n, bytes)) in sizes.iter().enumerate() {
        let dir = admin
            .mkdir(ROOT_INO, format!("s{i}").as_bytes(), 0o755, 0, 0, None)
            .await?
            .ino;
        fill_files(&addrs, dir, *n).await?;
        if *bytes > 0 {
            fill_bytes(&admin, dir, *bytes).await?;
        }
        let t = Instant::now();
        let mut s = admin.create_subtree(dir, "site-a").await?;
        while s.state == SubtreeState::Preparing {
            s = admin.relabel_subtree(dir, 10_000).await?;
        }
        let relabel = t.elapsed().as_secs_f64();
        let mut times = Vec::new();
        for m in 0..MOVES {
            let to = if m % 2 == 0 { "site-b" } else { "site-a" };
            let t = Instant::now();
            admin.move_subtree(dir, to, false).await?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        let (p50, p90) = (times[MOVES / 2], times[MOVES * 9 / 10]);
        println!(
            "{name:>14}: {} inodes, {:.2} GiB; created over the existing tree in {relabel:.2} s; move p50 {p50:.2} ms, p90 {p90:.2} ms",
            s.inodes,
            s.bytes as f64 / f64::from(1u32 << 30)
        );
        rows.push((name.clone(), p50, p90, relabel));
    }
    let base = rows.first().map(|r| r.1).unwrap_or(1.0);
    println!(
        "\n{:>14} | {:>9} | {:>9} | {:>12} | ratio to {}",
        "subtree", "move p50", "move p90", "create", rows[0].0
    );
    for (name, p50, p90, relabel) in &rows {
        println!(
            "{name:>14} | {p50:>6.2} ms | {p90:>6.2} ms | {relabel:>10.2} s | {:.2}x",
            p50 / base
        );
    }
    Ok(())
}
