//! Chunking + hashing throughput on one core against raw BLAKE3 on the same buffer.
//!
//! `cargo bench -p mobilus-client --bench chunking` (BENCH_MIB=N, default 256).

use std::time::Instant;

use mobilus_client::chunker;
use mobilus_proto::fs::ChunkHash;

fn main() {
    let mib: usize = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let buf = mobilus_proto::noise::noise(mib << 20, 1);
    let best = |f: &dyn Fn() -> usize| {
        (0..3)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f());
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    };
    let raw = best(&|| ChunkHash::of(&buf).0[0] as usize);
    let cdc = best(&|| chunker::chunk(&buf).len());
    let pieces = chunker::chunk(&buf);
    let mb = (mib << 20) as f64 / 1e6;
    println!("buffer: {mib} MiB of noise, one core, best of 3");
    println!("raw BLAKE3 (one hash):           {:>8.0} MB/s", mb / raw);
    println!(
        "FastCDC + BLAKE3 per chunk:      {:>8.0} MB/s  ({:.2}x of raw)",
        mb / cdc,
        raw / cdc
    );
    println!(
        "chunks: {} (avg {:.0} KiB, min {} KiB, max {} KiB)",
        pieces.len(),
        (mib << 10) as f64 / pieces.len() as f64,
        pieces.iter().map(|p| p.len).min().unwrap_or(0) >> 10,
        pieces.iter().map(|p| p.len).max().unwrap_or(0) >> 10
    );
}
