//! A database-like subtree moves from site-a to site-b: what its application's first
//! reads at site-b cost with an access profile recorded at site-a, against the same
//! subtree and reads without one, in the same run. 3 metadata members and a data node
//! per site on 127.0.0.1, release binaries; replication between the sites limited to
//! BENCH_BANDWIDTH (default `100mbit`, a WAN link's share; no added latency).
//!
//! `cargo build --release --workspace && cargo bench -p mobilus-client --bench move_profile`
//! (BENCH_FILES=N files of 1 MiB per subtree, default 64; BENCH_START_AFTER_MS, how long
//! after the move the application starts at site-b, default 1500).

use std::time::{Duration, Instant};

use mobilus_client::{Client, DataOptions};
use mobilus_meta_client::MetaClient;
use mobilus_proto::fs::{FileKind, InodeId, ROOT_INO};
use mobilus_proto::noise::noise;

mod common;

use common::{spawn, start_metas};

/// The application's start-up reads: 4 KiB at the start of every fourth file and in the
/// middle of every eighth (its catalog, indexes and a few pages).
fn start_up(files: &[InodeId]) -> Vec<(InodeId, u64)> {
    let heads = files.iter().step_by(4).map(|f| (*f, 0));
    let middles = files.iter().skip(2).step_by(8).map(|f| (*f, 512 << 10));
    heads.chain(middles).collect()
}

/// Run the start-up reads through readers that know their subtree; returns the time to
/// the last answer and the faults to another site (whole chunks or their blocks).
async fn run_start_up(c: &Client, reads: &[(InodeId, u64)]) -> anyhow::Result<(Duration, u64)> {
    let before = c.stats();
    let t = Instant::now();
    for (ino, off) in reads {
        let (_, reader) = c
            .open_reader(*ino)
            .await?
            .ok_or_else(|| anyhow::anyhow!("not a file"))?;
        reader.read(*off, 4096).await?;
    }
    let after = c.stats();
    let faults = (after.remote_fetches - before.remote_fetches)
        + (after.remote_range_reads - before.remote_range_reads);
    Ok((t.elapsed(), faults))
}

/// A subtree of site-a with `n` files of 1 MiB.
async fn subtree(
    a: &Client,
    name: &str,
    n: usize,
    seed: u64,
) -> anyhow::Result<(InodeId, Vec<InodeId>)> {
    let m: &MetaClient = a.meta();
    let root = m
        .mkdir(ROOT_INO, name.as_bytes(), 0o755, 0, 0, None)
        .await?
        .ino;
    m.create_subtree(root, "site-a").await?;
    while !m.subtree(root, false).await?.lease_valid() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut files = Vec::new();
    for i in 0..n {
        let ino = m
            .mknod(
                root,
                format!("f{i}").as_bytes(),
                FileKind::Regular,
                0o644,
                0,
                0,
                0,
                None,
            )
            .await?
            .ino;
        let mut w = a.writer(ino);
        w.write(0, &noise(1 << 20, seed + i as u64)).await?;
        w.flush().await?;
        files.push(ino);
    }
    Ok((root, files))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let n = env("BENCH_FILES", 64) as usize;
    let start_after = Duration::from_millis(env("BENCH_START_AFTER_MS", 1500));
    let bandwidth = std::env::var("BENCH_BANDWIDTH").unwrap_or_else(|_| "100mbit".into());
    let tmp = tempfile::tempdir()?;
    let s = |v: &str| v.to_string();
    let (mut procs, meta) = start_metas(tmp.path())?;
    for site in ["site-a", "site-b"] {
        let dir = tmp.path().join(format!("data-{site}"));
        let args = vec![
            s("--site"),
            s(site),
            s("--listen"),
            s("127.0.0.1:0"),
            s("--data-dir"),
            dir.to_string_lossy().into(),
            s("--meta"),
            meta.join(","),
            s("--heartbeat-ms"),
            s("500"),
            s("--follow-interval-ms"),
            s("200"),
            s("--replication-bandwidth"),
            bandwidth.clone(),
            // This machine's disk may be nearly full; that must not evict what site-b caches.
            s("--cache-min-free-percent"),
            s("0"),
        ];
        let (p, _) = spawn(
            "mobilus-data",
            &args,
            &tmp.path().join(format!("{site}.ready")),
        )?;
        procs.push(p);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let a = loop {
        if let Ok(c) = Client::connect(&meta, "site-a").await {
            let r = c.data_nodes().registry();
            if !r.nodes("site-a").is_empty() && !r.nodes("site-b").is_empty() {
                break c;
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "the data nodes never registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let m = a.meta().clone();
    let (with, with_files) = subtree(&a, "with-profile", n, 1_000).await?;
    let (without, without_files) = subtree(&a, "without", n, 2_000).await?;
    // Only the first subtree keeps a profile.
    m.arm_profile(without, false).await?;

    // The application starts at site-a: its first reads are recorded (a 1 s window).
    let window = DataOptions {
        profile_window: Some(Duration::from_secs(1)),
        ..DataOptions::default()
    };
    let app_a = Client::connect_with(&meta, "site-a", window).await?;
    run_start_up(&app_a, &start_up(&with_files)).await?;
    run_start_up(&app_a, &start_up(&without_files)).await?;
    let profile = loop {
        let p = m.profile(with, false).await?;
        if !p.reads.is_empty() {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    println!(
        "{} files of 1 MiB per subtree, replication at {bandwidth}; the application starts at site-b {} ms after the move; profile: {} reads in {} chunks",
        n,
        start_after.as_millis(),
        profile.reads.len(),
        profile.chunks().len()
    );
    println!("| | move (ms) | start-up reads (ms) | faults to site-a | its chunks at site-b when it starts |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let mut faults_of = Vec::new();
    for (name, root, files) in [
        ("without a profile (baseline)", without, &without_files),
        ("with the profile", with, &with_files),
    ] {
        let t = Instant::now();
        m.move_subtree(root, "site-b", false).await?;
        let moved = t.elapsed();
        tokio::time::sleep(start_after).await;
        let b = Client::connect(&meta, "site-b").await?;
        let (chunks, _) = m.scan_subtree_chunks(root).await?;
        let hashes: Vec<_> = chunks.iter().map(|c| c.hash).collect();
        let (_, here) = b.local().has(&hashes).await?;
        let before = format!(
            "{} of {}",
            here.iter().filter(|p| **p).count(),
            hashes.len()
        );
        let (took, faults) = run_start_up(&b, &start_up(files)).await?;
        faults_of.push(faults);
        println!(
            "| {name} | {:.1} | {:.1} | {faults} | {before} |",
            moved.as_secs_f64() * 1e3,
            took.as_secs_f64() * 1e3
        );
        // Let it catch up before the next one, so both start from the same state.
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let rows = m.replication_status(Some(root)).await?;
            if rows.iter().any(|f| f.site == "site-b" && f.caught_up()) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "site-b never caught up");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let (base, with) = (faults_of[0], faults_of[1]);
    println!(
        "faults: {with} with the profile, {base} without ({})",
        if with == 0 {
            "none at all".to_string()
        } else {
            format!("{:.1}x fewer", base as f64 / with as f64)
        }
    );
    drop(procs);
    Ok(())
}
