//! Reads concurrent with writes, through real processes: every listing, stat and slice
//! map is the state after whole log entries, never a mixture, and never an error.
//!
//! Writers churn a directory (create, rename, unlink) and overwrite a range that spans
//! a slice block boundary (`keys::BLOCK_SIZE`; each write one commit touching two
//! blocks), with truncates in between. Readers list the directory (plain and plus), stat what they list, and
//! read the range; a torn slice map shows two generations of the range at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mobilus_meta::namespace::keys::BLOCK_SIZE;
use mobilus_meta_client::MetaClient;
use mobilus_proto::fs::{ChunkHash, ChunkRef, FileKind, SetAttr, SliceWrite, ROOT_INO};

use crate::harness::Cluster;

/// The overwritten range: 8 KiB across the boundary of blocks 0 and 1.
const RANGE_START: u64 = BLOCK_SIZE - 4096;
const RANGE_LEN: u64 = 8192;
const RUN_FOR: Duration = Duration::from_secs(6);

fn generation_hash(g: u64) -> ChunkHash {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&g.to_be_bytes());
    h[31] = 0xAA;
    ChunkHash(h)
}

async fn must_mknod(c: &MetaClient, parent: u64, name: &[u8]) -> u64 {
    c.mknod(parent, name, FileKind::Regular, 0o644, 0, 0, 0, None)
        .await
        .unwrap_or_else(|e| panic!("mknod {:?}: {e}", String::from_utf8_lossy(name)))
        .ino
}

/// Create `f<i>`, rename the previous one to `r<i-1>`, unlink `r<i-4>`: the directory
/// keeps changing in all three ways while about 40 entries stay in it.
async fn churn_directory(c: MetaClient, dir: u64, stop: Arc<AtomicBool>) -> u64 {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        must_mknod(&c, dir, format!("f{i}").as_bytes()).await;
        if i >= 1 {
            let (from, to) = (format!("f{}", i - 1), format!("r{}", i - 1));
            c.rename(dir, from.as_bytes(), dir, to.as_bytes(), 0, None)
                .await
                .expect("rename");
        }
        if i >= 40 {
            c.unlink(dir, format!("r{}", i - 40).as_bytes(), None)
                .await
                .expect("unlink");
        }
        i += 1;
    }
    i
}

/// Overwrite the range with generation `g`'s chunk, one commit over two blocks; every
/// fourth generation truncate into the range first (another two-block change).
async fn overwrite_across_blocks(c: MetaClient, ino: u64, stop: Arc<AtomicBool>) -> u64 {
    let mut g = 1u64;
    while !stop.load(Ordering::Relaxed) {
        if g.is_multiple_of(4) {
            let set = SetAttr {
                size: Some(RANGE_START + 1024),
                ..SetAttr::default()
            };
            c.setattr(ino, &set, None).await.expect("truncate");
        }
        let slice = SliceWrite {
            offset: RANGE_START,
            len: RANGE_LEN,
            chunks: vec![ChunkRef {
                hash: generation_hash(g),
                offset: 0,
                len: RANGE_LEN,
            }],
        };
        c.write(ino, &[slice], None, &[], false)
            .await
            .expect("write");
        g += 1;
    }
    g
}

/// Every extent of the range must come from one generation, laid out as that write
/// laid it (chunk offset = distance from the range start), covering the file's bytes.
fn check_range(extents: &[mobilus_proto::fs::Extent], size: u64) -> Result<(), String> {
    let mut seen: Option<ChunkHash> = None;
    let mut pos = RANGE_START;
    for e in extents {
        if e.offset != pos {
            return Err(format!("gap or overlap at {pos}: {extents:?}"));
        }
        pos += e.len;
        let Some(c) = e.chunk else {
            // A hole: only past a truncate, and then the whole range is one generation
            // that has not been rewritten yet, which the size shows.
            continue;
        };
        if c.offset != e.offset - RANGE_START {
            return Err(format!(
                "chunk offset {} at {}: {extents:?}",
                c.offset, e.offset
            ));
        }
        match seen {
            Some(h) if h != c.hash => {
                return Err(format!("two generations in one read: {extents:?}"));
            }
            _ => seen = Some(c.hash),
        }
    }
    let want_end = (RANGE_START + RANGE_LEN).min(size).max(RANGE_START);
    if pos != want_end {
        return Err(format!("extents end at {pos}, file size says {want_end}"));
    }
    Ok(())
}

#[derive(Default)]
struct Seen {
    listings: AtomicU64,
    stats: AtomicU64,
    ranges: AtomicU64,
}

async fn read_until_stopped(
    c: MetaClient,
    dir: u64,
    file: u64,
    stop: Arc<AtomicBool>,
    seen: Arc<Seen>,
) -> Vec<String> {
    let mut bad = Vec::new();
    let mut plus = false;
    while !stop.load(Ordering::Relaxed) && bad.len() < 10 {
        plus = !plus;
        match c.readdir(dir, 0, 0, plus, false).await {
            Ok((entries, _)) => {
                seen.listings.fetch_add(1, Ordering::Relaxed);
                if plus && entries.iter().any(|e| e.attr.is_none()) {
                    bad.push("readdirplus entry without attributes".into());
                }
                if let Some(e) = entries.first() {
                    // It may be gone by now (ENOENT is an answer), never an error else.
                    match c.getattr(e.ino, false).await {
                        Ok(_) => {}
                        Err(err) if err.errno() == Some(mobilus_proto::status::Errno::ENOENT) => {}
                        Err(err) => bad.push(format!("getattr: {err}")),
                    }
                    seen.stats.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => bad.push(format!("readdir (plus: {plus}): {e}")),
        }
        match c.read_slices(file, RANGE_START, RANGE_LEN, false).await {
            Ok((extents, size)) => {
                seen.ranges.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = check_range(&extents, size) {
                    bad.push(e);
                }
            }
            Err(e) => bad.push(format!("read_slices: {e}")),
        }
    }
    bad
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_see_whole_commits_while_entries_apply() {
    let cluster = Cluster::start(3, &[]).await;
    let c = cluster.client();
    let dir = c
        .mkdir(ROOT_INO, b"churn", 0o755, 0, 0, None)
        .await
        .expect("mkdir")
        .ino;
    let file = must_mknod(&c, ROOT_INO, b"across-blocks").await;
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let churn = tokio::spawn(churn_directory(cluster.client(), dir, stop.clone()));
    let overwrite = tokio::spawn(overwrite_across_blocks(
        cluster.client(),
        file,
        stop.clone(),
    ));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(read_until_stopped(
                cluster.client(),
                dir,
                file,
                stop.clone(),
                seen.clone(),
            ))
        })
        .collect();
    let started = Instant::now();
    while started.elapsed() < RUN_FOR {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let entries = churn.await.unwrap();
    let generations = overwrite.await.unwrap();
    let mut bad = Vec::new();
    for r in readers {
        bad.extend(r.await.unwrap());
    }
    let (listings, ranges) = (
        seen.listings.load(Ordering::Relaxed),
        seen.ranges.load(Ordering::Relaxed),
    );
    assert!(
        bad.is_empty(),
        "{} bad reads (of {listings} listings, {ranges} ranges), first: {:#?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    // Enough happened on both sides for the test to mean something.
    assert!(
        entries > 100 && generations > 100,
        "{entries} creates, {generations} writes"
    );
    assert!(
        listings > 200 && ranges > 200,
        "{listings} listings, {ranges} ranges"
    );
}
