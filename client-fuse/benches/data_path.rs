//! Sequential write and read of a file through `Client` with 1 MiB I/Os: 3 metadata
//! members and one data node on 127.0.0.1, release binaries.
//!
//! `cargo build --release --workspace && cargo bench -p mobilus-client --bench data_path`
//! (BENCH_MIB=N, default 1024). Baseline, same disk and run: writing the same bytes to a
//! plain file with one fsync at the end, and reading them back.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use mobilus_client::Client;
use mobilus_proto::fs::{FileKind, ROOT_INO};
use mobilus_proto::noise::noise;

mod common;

use common::{drop_caches, spawn, start_metas};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mib: usize = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let tmp = tempfile::tempdir()?;
    let s = |v: &str| v.to_string();
    let (mut procs, meta) = start_metas(tmp.path())?;
    let chunks = tmp.path().join("chunks");
    let args = vec![
        s("--site"),
        s("site-a"),
        s("--listen"),
        s("127.0.0.1:0"),
        s("--data-dir"),
        chunks.to_string_lossy().into(),
        s("--meta"),
        meta.join(","),
    ];
    let (p, _) = spawn("mobilus-data", &args, &tmp.path().join("data.ready"))?;
    procs.push(p);
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        match Client::connect(&meta, "site-a").await {
            Ok(c) => break c,
            Err(e) => anyhow::ensure!(Instant::now() < deadline, "no data node registered: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let data = noise(mib << 20, 1);
    let mb = data.len() as f64 / 1e6;

    // Baseline: a plain file on the same disk.
    let plain = tmp.path().join("plain");
    let t = Instant::now();
    let mut f = std::fs::File::create(&plain)?;
    for piece in data.chunks(1 << 20) {
        f.write_all(piece)?;
    }
    f.sync_all()?;
    let base_write = mb / t.elapsed().as_secs_f64();
    drop_caches();
    let t = Instant::now();
    let mut back = Vec::with_capacity(data.len());
    std::fs::File::open(&plain)?.read_to_end(&mut back)?;
    let base_read = mb / t.elapsed().as_secs_f64();
    std::fs::remove_file(&plain)?;

    let ino = client
        .meta()
        .mknod(ROOT_INO, b"big", FileKind::Regular, 0o644, 0, 0, 0, None)
        .await?
        .ino;
    let (write, read) = common::write_then_read(&client, ino, &data, true).await?;
    let stats = client.stats();

    println!("{mib} MiB, 1 MiB I/Os, one client, 3 meta members + 1 data node on 127.0.0.1");
    println!("{:<32} {:>10} {:>10}", "", "MB/s", "vs plain");
    println!(
        "{:<32} {:>10.0} {:>10}",
        "plain file write + fsync", base_write, "1.00x"
    );
    println!(
        "{:<32} {:>10.0} {:>9.2}x",
        "Client write + flush",
        write,
        write / base_write
    );
    println!(
        "{:<32} {:>10.0} {:>10}",
        "plain file read", base_read, "1.00x"
    );
    println!(
        "{:<32} {:>10.0} {:>9.2}x",
        "Client read",
        read,
        read / base_read
    );
    println!(
        "chunks sent: {} ({} bytes); deduped: {}",
        stats.chunks_sent, stats.bytes_sent, stats.chunks_deduped
    );
    Ok(())
}
