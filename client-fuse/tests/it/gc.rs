//! Garbage collection through real processes: what is collected, when, and that nothing
//! referenced is ever collected while writers race with it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mobilus_client::Client;
use mobilus_proto::fs::{ChunkHash, ROOT_INO};

use crate::cluster::TwoSites;
use crate::data_path::{must_create, must_write, noise};

fn chunk_file(dir: &std::path::Path, data: &[u8]) -> std::path::PathBuf {
    let hex = ChunkHash::of(data).to_hex();
    dir.join(&hex[..2]).join(hex)
}

async fn must_unlink(c: &Client, name: &str) {
    c.meta()
        .unlink(ROOT_INO, name.as_bytes(), None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreferenced_chunks_go_after_the_grace_period_and_shared_ones_stay() {
    let grace = Duration::from_millis(2500);
    let sites = TwoSites::start_with_gc(Duration::ZERO, grace).await;
    let a = sites.client("site-a").await;
    // Small files are one chunk each: `shared` is used by two files, `lonely` by one.
    let (shared, lonely) = (noise(100_000, 1), noise(120_000, 2));
    for (name, data) in [("s1", &shared), ("s2", &shared), ("l", &lonely)] {
        let ino = must_create(&a, name).await;
        must_write(&a, ino, data).await;
    }
    let dir = &sites.chunk_dirs[0];
    assert!(chunk_file(dir, &shared).exists() && chunk_file(dir, &lonely).exists());

    let unlinked_at = Instant::now();
    must_unlink(&a, "s1").await;
    must_unlink(&a, "l").await;
    let early = a.local().gc(false).await.unwrap();
    assert_eq!(
        (early.examined, early.deleted),
        (2, 0),
        "nothing goes before the grace period"
    );
    assert!(chunk_file(dir, &lonely).exists());

    tokio::time::sleep(grace.saturating_sub(unlinked_at.elapsed()) + Duration::from_millis(200))
        .await;
    let dry = a.local().gc(true).await.unwrap();
    assert_eq!(
        (dry.condemned, dry.deleted),
        (1, 0),
        "a dry run deletes nothing"
    );
    assert!(chunk_file(dir, &lonely).exists());
    let round = a.local().gc(false).await.unwrap();
    assert_eq!((round.condemned, round.deleted), (1, 1));
    assert_eq!(round.bytes_freed, lonely.len() as u64);
    assert!(
        round.gc_gen > early.gc_gen,
        "a round that deleted bumps the generation"
    );
    assert!(
        !chunk_file(dir, &lonely).exists(),
        "the unreferenced chunk is gone"
    );
    assert!(chunk_file(dir, &shared).exists(), "the shared chunk stays");
    let s2 = a.meta().lookup(ROOT_INO, b"s2", false).await.unwrap();
    assert_eq!(a.read(s2.ino, 0, 1 << 20).await.unwrap(), shared);
    assert_eq!(a.local().stats().await.unwrap().chunks, 1);

    // The same bytes written again after their chunk was collected are uploaded anew.
    let again = must_create(&a, "l2").await;
    must_write(&a, again, &lonely).await;
    assert_eq!(a.read(again, 0, 1 << 20).await.unwrap(), lonely);
    assert!(chunk_file(dir, &lonely).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_uploaded_but_never_committed_expires_after_the_ttl() {
    let ttl = Duration::from_millis(2000);
    let sites = TwoSites::start_with_gc(ttl, Duration::ZERO).await;
    let a = sites.client("site-a").await;
    let orphan = noise(50_000, 3);
    let uploaded_at = Instant::now();
    assert!(!a
        .local()
        .put(&ChunkHash::of(&orphan), &orphan, false)
        .await
        .unwrap());
    let early = a.local().gc(false).await.unwrap();
    assert_eq!(
        (early.examined, early.deleted),
        (0, 0),
        "too young to be offered"
    );
    tokio::time::sleep(ttl.saturating_sub(uploaded_at.elapsed()) + Duration::from_millis(200))
        .await;
    let round = a.local().gc(false).await.unwrap();
    assert_eq!((round.examined, round.deleted), (1, 1));
    assert!(!chunk_file(&sites.chunk_dirs[0], &orphan).exists());
}

/// Write `data`, or learn that garbage collection kept refusing the commit (StaleChunks
/// after the client's retries): a refusal loses nothing, so the test counts it and goes
/// on. Rounds with no grace, back to back, can starve a writer; the invariant checked
/// here is that nothing committed is lost, not that every commit gets through.
async fn write_unless_refused(c: &Client, ino: u64, data: &[u8]) -> bool {
    let mut w = c.writer(ino);
    for (i, piece) in data.chunks(1 << 20).enumerate() {
        w.write((i << 20) as u64, piece).await.unwrap();
    }
    match w.flush().await {
        Ok(_) => true,
        Err(mobilus_client::client::ClientError::Meta(
            mobilus_meta_client::ClientError::StaleChunks(_),
        )) => false,
        Err(e) => panic!("write failed: {e}"),
    }
}

/// The race GC must survive: a writer asks the data node about a chunk nothing
/// references ("yes, I have it"), dawdles, and commits a slice using it while rounds with
/// no TTL and no grace run back to back. Each content is written, unlinked, and written
/// again (the second write relies on the first's upload), then never again, so nothing
/// heals a lost chunk before the final check: every file left must read back byte-exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_referenced_chunk_is_ever_collected_under_concurrent_writes() {
    let sites = TwoSites::start_with_gc(Duration::ZERO, Duration::ZERO).await;
    let stop = Arc::new(AtomicBool::new(false));
    let collector = {
        let c = sites.client("site-a").await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut rounds, mut deleted) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let r = c.local().gc(false).await.unwrap();
                rounds += 1;
                deleted += r.deleted;
            }
            (rounds, deleted)
        })
    };
    let content = |w: u64, i: u64| noise(if i % 4 == 3 { 1_500_000 } else { 60_000 }, w << 32 | i);
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let c = sites.client("site-a").await;
        // Commits then straddle whole rounds, the case the protocol exists for.
        c.set_flush_pause(Duration::from_millis(20 * (w + 1)));
        writers.push(tokio::spawn(async move {
            let (mut kept, mut refused) = (Vec::new(), 0u64);
            let deadline = Instant::now() + Duration::from_secs(8);
            let mut i = 0u64;
            while Instant::now() < deadline {
                let data = content(w, i);
                let first = format!("w{w}-{i}-first");
                let ino = must_create(&c, &first).await;
                refused += u64::from(!write_unless_refused(&c, ino, &data).await);
                must_unlink(&c, &first).await;
                let second = format!("w{w}-{i}");
                let ino = must_create(&c, &second).await;
                if write_unless_refused(&c, ino, &data).await {
                    kept.push((second, w, i));
                } else {
                    refused += 1;
                }
                i += 1;
            }
            (kept, refused, c.stats())
        }));
    }
    let mut kept = Vec::new();
    let (mut retries, mut deduped, mut refused) = (0, 0, 0);
    for w in writers {
        let (k, r, stats) = w.await.unwrap();
        kept.extend(k);
        refused += r;
        retries += stats.stale_chunk_retries;
        deduped += stats.chunks_deduped;
    }
    stop.store(true, Ordering::Relaxed);
    let (rounds, deleted) = collector.await.unwrap();
    eprintln!(
        "{} files, gc rounds {rounds}, chunks deleted {deleted}, chunks deduped {deduped}, \
         writes retried {retries}, commits refused after every retry {refused}",
        kept.len()
    );
    assert!(
        kept.len() as u64 > refused,
        "most writes were refused: {refused} refused, {} kept",
        kept.len()
    );
    assert!(
        deleted > 0,
        "the collector never collected: the test proves nothing"
    );
    assert!(
        retries > 0,
        "no write ever raced with a round: the test proves nothing"
    );

    let reader = sites.client("site-a").await;
    for (name, w, i) in &kept {
        let attr = reader
            .meta()
            .lookup(ROOT_INO, name.as_bytes(), false)
            .await
            .unwrap();
        match reader.read(attr.ino, 0, attr.size).await {
            Ok(bytes) => assert!(bytes == content(*w, *i), "{name} reads back wrong bytes"),
            Err(e) => panic!("{name} lost a chunk to gc: {e}"),
        }
    }
}
