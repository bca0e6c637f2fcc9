//! How long a clone takes against the source's size, and how long the source's writers
//! wait for it.
//!
//! `cargo bench -p mobilus-meta --bench clone` (`CLONE_FILES=1000,100000` chooses the
//! sizes). Through a 3-member cluster on loopback: each source is filled as a subtree of
//! files in directories of 1,000 (64 concurrent creates, each file then given a slice of
//! its own chunk reference, metadata only), then cloned with `mobilusctl`'s step size
//! (5,000 inodes and slices a step) while a writer creates files in the source one after
//! another. Prints the clone's time and entries per second, the writer's longest wait
//! (the freeze, as a writer sees it), and, as the baseline measured in the same run, the
//! rate at which 64 clients created the same entries one by one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mobilus_meta_client::{ClientOptions, MetaClient};
use mobilus_proto::fs::{ChunkHash, ChunkRef, CloneState, FileKind, InodeId, SliceWrite, ROOT_INO};

mod common;
use common::{agents, fill_files, start_cluster};

const STEP: u32 = 5_000;

fn sizes() -> Vec<u64> {
    std::env::var("CLONE_FILES")
        .unwrap_or_else(|_| "1000,100000".to_string())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

/// One slice of its own 1 MiB chunk reference for every file under `dir`.
async fn give_slices(client: &MetaClient, dir: InodeId) -> anyhow::Result<()> {
    let mut n = 0u64;
    for d in client.readdir_all(dir, false).await? {
        for f in client.readdir_all(d.ino, false).await? {
            let mut h = [1u8; 32];
            h[..8].copy_from_slice(&n.to_be_bytes());
            n += 1;
            let slice = SliceWrite {
                offset: 0,
                len: 1 << 20,
                chunks: vec![ChunkRef {
                    hash: ChunkHash(h),
                    offset: 0,
                    len: 1 << 20,
                }],
            };
            client.write(f.ino, &[slice], None, &[], false).await?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (_procs, addrs) = start_cluster(&tmp.path().join("c"), &[]).await?;
    let admin = MetaClient::new(&addrs, ClientOptions::default())?;
    let _agents = agents(admin.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let site_a = MetaClient::new(
        &addrs,
        ClientOptions {
            site: Some("site-a".into()),
            ..ClientOptions::default()
        },
    )?;
    let mut rows = Vec::new();
    for (i, files) in sizes().into_iter().enumerate() {
        let dir = admin
            .mkdir(ROOT_INO, format!("s{i}").as_bytes(), 0o755, 0, 0, None)
            .await?
            .ino;
        let t = Instant::now();
        fill_files(&addrs, dir, files).await?;
        let create_rate = files as f64 / t.elapsed().as_secs_f64();
        give_slices(&admin, dir).await?;
        let mut s = admin.create_subtree(dir, "site-a").await?;
        while s.state == mobilus_proto::fs::SubtreeState::Preparing {
            s = admin.relabel_subtree(dir, 10_000).await?;
        }
        let writes = site_a.mkdir(dir, b"writes", 0o755, 0, 0, None).await?.ino;
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (c, stop) = (site_a.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut i, mut longest) = (0u64, Duration::ZERO);
                while !stop.load(Ordering::SeqCst) {
                    let t = Instant::now();
                    c.mknod(
                        writes,
                        format!("w{i}").as_bytes(),
                        FileKind::Regular,
                        0o644,
                        0,
                        0,
                        0,
                        None,
                    )
                    .await?;
                    longest = longest.max(t.elapsed());
                    i += 1;
                }
                anyhow::Ok(longest)
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t = Instant::now();
        let mut c = admin
            .start_clone(dir, ROOT_INO, format!("c{i}").as_bytes(), None)
            .await?;
        let mut steps = 1;
        while c.state == CloneState::Copying {
            c = admin.clone_step(c.dst, STEP).await?;
            steps += 1;
        }
        let took = t.elapsed().as_secs_f64();
        anyhow::ensure!(c.state == CloneState::Done, "the clone stopped: {}", c.why);
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, Ordering::SeqCst);
        let held = writer.await??;
        let rate = c.copied_inodes as f64 / took;
        println!(
            "{files:>8} files: cloned {} inodes ({} slices' bytes {:.1} GiB) in {steps} steps, {took:.2} s = {rate:.0} entries/s; the writer waited at most {:.0} ms; created one by one at {create_rate:.0}/s",
            c.copied_inodes,
            c.copied_bytes,
            c.copied_bytes as f64 / f64::from(1u32 << 30),
            held.as_secs_f64() * 1e3
        );
        rows.push((files, took, rate, held, create_rate));
    }
    println!(
        "\n{:>8} | {:>9} | {:>11} | {:>17} | {:>14} | ratio",
        "files", "clone", "entries/s", "writer waited max", "creates/s (64)"
    );
    for (files, took, rate, held, create_rate) in rows {
        println!(
            "{files:>8} | {took:>7.2} s | {rate:>11.0} | {:>14.0} ms | {create_rate:>14.0} | {:.1}x",
            held.as_secs_f64() * 1e3,
            rate / create_rate
        );
    }
    Ok(())
}
