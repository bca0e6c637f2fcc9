//! Committed metadata operations per second through a 3-member cluster on loopback.
//!
//! `cargo bench -p mobilus-meta --bench meta_ops` (BENCH_SECS=N per level, default 5).
//! Prints, per concurrency: creates/s, p50/p99 latency, fsyncs per commit (leader, and
//! all members), and the ratio to a baseline measured in the same run on the same disk:
//! one client doing `write + fdatasync` of 100 bytes in a loop (the ceiling for a
//! sequential durable commit).
//!
//! Then getattr/s at 1, 16 and 64 clients, three ways: linearizable under the leader's
//! read lease (the default), linearizable by batched read-index rounds alone (a second
//! cluster started with `--no-lease-reads`), and stale (local state, no check); the
//! ratios are to stale reads, measured in the same run.
//!
//! And between them, one client overwriting a 64 MiB file at random in 4 KiB pieces, in
//! three rounds, against that client's creates/s (a write's cost must not grow as the
//! file fragments).

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use mobilus_meta_client::{ClientOptions, MetaClient};
use mobilus_proto::fs::{ChunkHash, ChunkRef, FileKind, SliceWrite, ROOT_INO};

mod common;
use common::start_cluster;

fn fsync_baseline(dir: &Path, secs: f64) -> anyhow::Result<f64> {
    let mut f = std::fs::File::create(dir.join("baseline"))?;
    f.write_all(&[0u8; 4096])?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        f.write_all_at(&[n as u8; 100], (n % 40) * 100)?;
        f.sync_data()?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn fsyncs(client: &MetaClient, addrs: &[String]) -> anyhow::Result<(u64, u64)> {
    let mut leader = 0;
    let mut all = 0;
    for a in addrs {
        let s = client.status_of(a).await?;
        if s.state == "Leader" {
            leader = s.log_fsyncs;
        }
        all += s.log_fsyncs;
    }
    Ok((leader, all))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let tmp = tempfile::tempdir()?;
    let baseline = fsync_baseline(tmp.path(), secs.min(3.0))?;

    let (_procs, addrs) = start_cluster(&tmp.path().join("a"), &[]).await?;
    let opts = ClientOptions {
        deadline: Duration::from_secs(30),
        ..Default::default()
    };
    let admin = MetaClient::new(&addrs, opts.clone())?;

    println!(
        "mobilus-meta: 3 members on 127.0.0.1, {secs}s per level, data in {}",
        tmp.path().display()
    );
    println!(
        "baseline: one client, write+fdatasync of 100 B on the same disk: {baseline:.0} fsyncs/s\n"
    );
    println!(
        "{:<10} {:>10} {:>10} {:>10} {:>14} {:>14} {:>12}",
        "clients", "creates/s", "p50 ms", "p99 ms", "fsync/commit", "fsync/commit", "vs baseline"
    );
    println!(
        "{:<10} {:>10} {:>10} {:>10} {:>14} {:>14} {:>12}",
        "", "", "", "", "(leader)", "(all 3)", ""
    );
    let mut one_client_creates = 0.0;
    for (level, clients) in [1usize, 16, 64].into_iter().enumerate() {
        let dir = admin
            .mkdir(
                ROOT_INO,
                format!("bench-{level}").as_bytes(),
                0o755,
                0,
                0,
                None,
            )
            .await?
            .ino;
        let (l0, a0) = fsyncs(&admin, &addrs).await?;
        let stop_at = Instant::now() + Duration::from_secs_f64(secs);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let client = MetaClient::new(&addrs, opts.clone())?;
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0u64;
                while Instant::now() < stop_at {
                    let name = format!("c{c}-{i}");
                    let t = Instant::now();
                    client
                        .mknod(
                            dir,
                            name.as_bytes(),
                            FileKind::Regular,
                            0o644,
                            0,
                            0,
                            0,
                            None,
                        )
                        .await?;
                    lat.push(t.elapsed());
                    i += 1;
                }
                anyhow::Ok(lat)
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await??);
        }
        let elapsed = started.elapsed().as_secs_f64();
        let (l1, a1) = fsyncs(&admin, &addrs).await?;
        lat.sort();
        let ops = lat.len() as f64;
        let rate = ops / elapsed;
        if clients == 1 {
            one_client_creates = rate;
        }
        println!(
            "{:<10} {:>10.0} {:>10.2} {:>10.2} {:>14.3} {:>14.3} {:>11.2}x",
            clients,
            rate,
            pct(&lat, 0.5).as_secs_f64() * 1e3,
            pct(&lat, 0.99).as_secs_f64() * 1e3,
            (l1 - l0) as f64 / ops,
            (a1 - a0) as f64 / ops,
            rate / baseline,
        );
    }
    overwrites(&admin, one_client_creates).await?;
    // Reads: the same cluster (lease, stale), and one without lease reads.
    let (_plain_procs, plain) =
        start_cluster(&tmp.path().join("b"), &["--no-lease-reads".into()]).await?;
    let read_secs = secs.min(3.0);
    println!(
        "\n{:<10} {:>14} {:>14} {:>12} {:>12} {:>12}",
        "clients", "lease reads/s", "read-index/s", "stale/s", "lease/stale", "index/stale"
    );
    for clients in [1usize, 16, 64] {
        let lease = read_rate(&addrs, clients, false, read_secs).await?;
        let index = read_rate(&plain, clients, false, read_secs).await?;
        let stale = read_rate(&addrs, clients, true, read_secs).await?;
        println!(
            "{:<10} {:>14.0} {:>14.0} {:>12.0} {:>11.2}x {:>11.2}x",
            clients,
            lease,
            index,
            stale,
            lease / stale,
            index / stale
        );
    }
    Ok(())
}

/// One client overwriting a 64 MiB file at random in 4 KiB pieces, as a database does,
/// in rounds of [`OVERWRITES`]: writes per second in each round, and the ratio to the
/// same client's creates (a commit that touches no slices), measured in this run. A
/// round that is slower than the one before means each write costs more as the file
/// fragments.
async fn overwrites(client: &MetaClient, creates: f64) -> anyhow::Result<()> {
    const OVERWRITES: usize = 2_000;
    const FILE: u64 = 64 << 20;
    let file = client
        .mknod(
            ROOT_INO,
            b"overwritten",
            FileKind::Regular,
            0o644,
            0,
            0,
            0,
            None,
        )
        .await?
        .ino;
    let slice = |offset: u64, len: u64, id: u64| {
        let mut h = [7u8; 32];
        h[..8].copy_from_slice(&id.to_be_bytes());
        SliceWrite {
            offset,
            len,
            chunks: vec![ChunkRef {
                hash: ChunkHash(h),
                offset: 0,
                len,
            }],
        }
    };
    for mib in 0..FILE >> 20 {
        client
            .write(file, &[slice(mib << 20, 1 << 20, mib)], None, &[], false)
            .await?;
    }
    println!("\nrandom 4 KiB overwrites of a 64 MiB file, one client, rounds of {OVERWRITES}:");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for round in 1..=3 {
        let started = Instant::now();
        for i in 0..OVERWRITES {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let offset = x % (FILE / 4096) * 4096;
            let id = 1_000 + (round * OVERWRITES + i) as u64;
            client
                .write(file, &[slice(offset, 4096, id)], None, &[], false)
                .await?;
        }
        let rate = OVERWRITES as f64 / started.elapsed().as_secs_f64();
        println!(
            "round {round}: {rate:>8.0} writes/s  {:>6.2}x the creates/s of one client",
            rate / creates
        );
    }
    Ok(())
}

/// getattr of the root per second by `clients` concurrent clients for `secs`.
async fn read_rate(
    addrs: &[String],
    clients: usize,
    stale: bool,
    secs: f64,
) -> anyhow::Result<f64> {
    let opts = ClientOptions {
        deadline: Duration::from_secs(30),
        ..Default::default()
    };
    let stop_at = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = MetaClient::new(addrs, opts.clone())?;
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < stop_at {
                client.getattr(ROOT_INO, stale).await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += t.await??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}
