//! Reads by verified blocks: a small read costs a block, not a chunk; concurrent misses
//! share one fetch; the cache stays within its bound; a sequential stream is read ahead
//! without fetching anything twice; a fault at another site reads its blocks across and
//! the chunk follows in the background.

use std::sync::Arc;

use mobilus_proto::blocks::BLOCK;

use crate::cluster::TwoSites;
use crate::data_path::{chunk_files, must_create, must_write, noise};

/// Bytes the site's data node has served so far.
async fn served(c: &mobilus_client::Client) -> u64 {
    c.local().stats().await.unwrap().bytes_served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_read_fetches_one_block_and_concurrent_misses_share_it() {
    let sites = TwoSites::start().await;
    let a = sites.client("site-a").await;
    let data = noise(8 << 20, 11);
    let ino = must_create(&a, "f").await;
    must_write(&a, ino, &data).await;

    let cold = sites.client("site-a").await;
    let before = served(&cold).await;
    let at = 5_000_000u64;
    let got = cold.read(ino, at, 4096).await.unwrap();
    assert_eq!(got, data[at as usize..at as usize + 4096]);
    // 4 KiB inside one block: that block crossed the wire, not its 0.5 to 4 MiB chunk.
    let first = served(&cold).await - before;
    assert_eq!(first, BLOCK, "one block for a 4 KiB read");
    // Again: from the block cache.
    assert_eq!(cold.read(ino, at, 4096).await.unwrap(), got);
    assert_eq!(served(&cold).await - before, BLOCK);

    // 32 readers of one cold page at once: one fetch between them.
    let cold = Arc::new(sites.client("site-a").await);
    let before = served(&cold).await;
    let page = 7_000_000u64;
    let readers: Vec<_> = (0..32)
        .map(|_| {
            let c = cold.clone();
            tokio::spawn(async move { c.read(ino, page, 4096).await.unwrap() })
        })
        .collect();
    for r in readers {
        assert_eq!(r.await.unwrap(), data[page as usize..page as usize + 4096]);
    }
    let spent = served(&cold).await - before;
    assert_eq!(
        spent, BLOCK,
        "concurrent misses of one block share one fetch"
    );
}

/// A point read at site-b of data only site-a holds: the blocks it needs cross (verified
/// against the chunk's hash by its outboard), not the chunk, and the answer comes then;
/// the whole chunk follows in the background and is kept at site-b.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fault_at_another_site_reads_its_blocks_across_and_the_chunk_follows() {
    let sites = TwoSites::start().await;
    let a = sites.client("site-a").await;
    let data = noise(8 << 20, 12);
    let ino = must_create(&a, "far").await;
    must_write(&a, ino, &data).await;
    let pieces = mobilus_client::chunker::chunk(&data);
    let (at, hash, len) = pieces
        .iter()
        .find(|p| p.len >= 1 << 20)
        .map(|p| (p.offset as u64, p.hash, p.len as u64))
        .expect("a chunk of 1 MiB or more");

    let b = sites.client("site-b").await;
    let off = at + len / 2;
    let got = b.read(ino, off, 4096).await.unwrap();
    assert_eq!(got, data[off as usize..off as usize + 4096]);
    let s = b.stats();
    let outboard = len.div_ceil(BLOCK) * 32;
    eprintln!(
        "a 4 KiB fault of a {len}-byte chunk: {} bytes across before the answer ({} blocks and outboard)",
        s.remote_range_bytes, s.remote_range_reads
    );
    assert_eq!(s.remote_range_reads, 1, "{s:?}");
    assert!(
        s.remote_range_bytes <= 2 * BLOCK + outboard,
        "{} bytes for a 4 KiB read",
        s.remote_range_bytes
    );
    // The chunk follows, and is kept at site-b: another reader there fetches nothing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !b.local().has(&[hash]).await.unwrap().1[0] {
        assert!(
            std::time::Instant::now() < deadline,
            "the chunk never followed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(b.stats().remote_fetches, 1);
    let local = sites.client("site-b").await;
    let got = local.read(ino, at, 4096).await.unwrap();
    assert_eq!(got, data[at as usize..at as usize + 4096]);
    let s = local.stats();
    assert_eq!((s.remote_fetches, s.remote_range_reads), (0, 0), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_block_cache_stays_within_its_bound_and_reads_stay_right() {
    let sites = TwoSites::start().await;
    let a = sites.client("site-a").await;
    let data = noise(24 << 20, 12);
    let ino = must_create(&a, "f").await;
    must_write(&a, ino, &data).await;
    let small = sites.client_with_cache("site-a", 2 << 20).await;
    let reader = small.reader(ino);
    // Random reads all over a file twelve times the cache: each is right, the cache
    // never holds more than its bound.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..400 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = x % (data.len() as u64 - 10_000);
        let len = 1 + (x >> 40) % 10_000;
        let got = reader.read(at, len).await.unwrap();
        assert_eq!(got, data[at as usize..(at + len) as usize]);
        let s = small.block_cache_stats();
        assert!(s.bytes <= s.capacity, "{s:?}");
    }
    assert!(small.block_cache_stats().bytes > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sequential_stream_is_read_ahead_and_nothing_is_fetched_twice() {
    let sites = TwoSites::start().await;
    let a = sites.client("site-a").await;
    let data = noise(20 << 20, 13);
    let ino = must_create(&a, "f").await;
    must_write(&a, ino, &data).await;
    let cold = sites.client("site-a").await;
    let before = served(&cold).await;
    let reader = cold.reader(ino);
    let mut seen = Vec::with_capacity(data.len());
    let mut off = 0u64;
    while off < data.len() as u64 {
        let got = reader.read(off, 128 << 10).await.unwrap();
        off += got.len() as u64;
        seen.extend(got);
    }
    assert!(seen == data, "the stream reads back what was written");
    let spent = served(&cold).await - before;
    assert_eq!(spent, data.len() as u64, "every byte fetched exactly once");
    // Readahead asked for blocks before the reads did (how far ahead it got depends on
    // the machine's load; that it never fetched a byte twice does not).
    let s = cold.block_cache_stats();
    assert!(s.prefetched > 0, "a sequential stream is read ahead: {s:?}");
    // A random pattern is not.
    let random = sites.client("site-a").await;
    let reader = random.reader(ino);
    for i in 1..40u64 {
        let at = (i * 7_919 * 4096) % (data.len() as u64 - 4096);
        assert_eq!(
            reader.read(at, 4096).await.unwrap(),
            data[at as usize..at as usize + 4096]
        );
    }
    assert_eq!(
        random.block_cache_stats().prefetched,
        0,
        "random reads are not read ahead"
    );
}

/// A scan (a sequential read of a file eight times the block cache) does not push out
/// the blocks random reads use: a scan's hits do not mark its blocks used, so they leave
/// from the cache's cold part and the random reads' blocks stay in its hot part.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scan_does_not_push_the_blocks_random_reads_use_out_of_the_cache() {
    let sites = TwoSites::start().await;
    let a = sites.client("site-a").await;
    let hot = noise(2 << 20, 31);
    let big = noise(64 << 20, 32);
    let hot_ino = must_create(&a, "hot").await;
    must_write(&a, hot_ino, &hot).await;
    let big_ino = must_create(&a, "big").await;
    must_write(&a, big_ino, &big).await;
    let c = sites.client_with_cache("site-a", 8 << 20).await;
    let reader = c.reader(hot_ino);
    let pages: Vec<u64> = (0..64u64)
        .map(|k| (k * 7_919 * 4096) % (hot.len() as u64 - 4096))
        .collect();
    let read_pages = || async {
        for &at in &pages {
            let got = reader.read(at, 4096).await.unwrap();
            assert!(got == hot[at as usize..at as usize + 4096]);
        }
    };
    for _ in 0..2 {
        read_pages().await;
    }
    let scan = c.reader(big_ino);
    let mut seen = 0usize;
    while seen < big.len() {
        let got = scan.read(seen as u64, 128 << 10).await.unwrap();
        assert!(got == big[seen..seen + got.len()]);
        seen += got.len();
    }
    assert!(
        c.block_cache_stats().prefetched > 0,
        "the scan was read ahead"
    );
    let before = c.block_cache_stats();
    read_pages().await;
    let missed = c.block_cache_stats().misses - before.misses;
    assert!(
        missed <= 6,
        "the scan pushed {missed} of 64 hot pages out of the cache"
    );
}

/// Reads of one file through the mount's operations, from three handles, while a fourth
/// rewrites it whole (one write call per generation) and flushes every other generation:
/// each read sees one whole generation, and never one older than a write that had
/// returned before the read began (reads of a clean file run without the writer's lock,
/// and from memory with no wait when every byte is there).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_concurrent_with_writes_and_flushes_see_whole_generations_in_order() {
    use mobilus_client::mount::ops::Caller;
    use mobilus_client::mount::MountFs;
    use std::sync::atomic::{AtomicU64, Ordering};

    const LEN: usize = 256 << 10;
    const GENERATIONS: u64 = 60;
    let sites = TwoSites::start().await;
    // A small cache and short-circuit reads: blocks evicted are read again from the
    // node's files while flushes write new chunks there.
    let opts = mobilus_client::DataOptions {
        block_cache_bytes: 1 << 20,
        local_chunks: Some(sites.chunk_dirs[0].parent().unwrap().to_path_buf()),
        ..Default::default()
    };
    let client = sites.client_with("site-a", opts).await;
    let fs = Arc::new(MountFs::new(
        client.clone(),
        std::time::Duration::from_secs(1),
    ));
    let who = Caller { uid: 0, gid: 0 };
    let (attr, writer_fh) = fs
        .create(mobilus_proto::fs::ROOT_INO, b"generations", 0o644, 0, who)
        .await
        .unwrap();
    let returned = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (fs, returned) = (fs.clone(), returned.clone());
            tokio::spawn(async move {
                let (fh, _) = fs.open(attr.ino).await.unwrap();
                let (mut reads, mut from_memory) = (0u64, 0u64);
                loop {
                    let floor = returned.load(Ordering::Acquire);
                    // As the FUSE adapter reads: from memory with no wait when it can
                    // (every other read here), else the long way.
                    let cached = (reads % 2 == 0)
                        .then(|| fs.read_cached(fh, 0, LEN as u32))
                        .flatten();
                    let got = match cached {
                        Some(bytes) => {
                            from_memory += 1;
                            bytes
                        }
                        None => fs.read(fh, 0, LEN as u32).await.unwrap(),
                    };
                    reads += 1;
                    if floor == 0 && got.is_empty() {
                        continue;
                    }
                    assert_eq!(got.len(), LEN, "after generation {floor}");
                    let g = u64::from(got[0]);
                    assert!(got.iter().all(|b| u64::from(*b) == g), "a torn read");
                    assert!(g >= floor, "read generation {g} after {floor} returned");
                    if floor == GENERATIONS {
                        fs.release(fh).await.unwrap();
                        return (reads, from_memory);
                    }
                }
            })
        })
        .collect();
    for g in 1..=GENERATIONS {
        let data = vec![g as u8; LEN];
        fs.write(writer_fh, 0, &data, false, who).await.unwrap();
        if g % 2 == 0 {
            fs.flush(writer_fh).await.unwrap();
        }
        returned.store(g, Ordering::Release);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let mut from_memory = 0;
    for r in readers {
        let (reads, cached) = r.await.unwrap();
        assert!(reads > 0);
        from_memory += cached;
    }
    assert!(from_memory > 0, "no read was answered from memory");
    // (39 to 57 in four runs.)
    assert!(client.stats().local_reads > 0, "{:?}", client.stats());
    fs.release(writer_fh).await.unwrap();
}

/// Short-circuit reads: a client on the data node's host takes blocks straight from the
/// node's chunk files once it knows a chunk's outboard (its first read of a chunk asks
/// the node, once however many reads of the chunk wait for it), and checks them as it
/// checks a node's reply. A damaged block is refused:
/// the read then asks the node, which quarantines the chunk, and the bytes come, right,
/// from the other site.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn short_circuit_reads_take_checked_blocks_from_the_local_files() {
    let sites = TwoSites::start().await;
    let a = sites.client("site-a").await;
    let data = noise(3 << 20, 21);
    let ino = must_create(&a, "f").await;
    must_write(&a, ino, &data).await;
    let b = sites.client("site-b").await;
    assert_eq!(b.read(ino, 0, data.len() as u64).await.unwrap(), data); // site-b holds it
    let dir = &sites.chunk_dirs[1];
    let files = chunk_files(dir);
    let opts = mobilus_client::DataOptions {
        block_cache_bytes: 1 << 20,
        local_chunks: Some(dir.parent().unwrap().to_path_buf()),
        ..Default::default()
    };
    let sc = sites.client_with("site-b", opts).await;
    let page = |at: u64| data[at as usize..at as usize + 4096].to_vec();
    // Pages 3 blocks apart, backwards (no readahead), and ones in between for later.
    let firsts: Vec<u64> = (0..60).rev().map(|k| k * 3 * BLOCK + 100).collect();
    let seconds: Vec<u64> = firsts.iter().map(|at| at + BLOCK + 8000).collect();
    let before = served(&sc).await;
    for &at in &firsts {
        assert_eq!(sc.read(ino, at, 4096).await.unwrap(), page(at));
    }
    let s = sc.stats();
    let asked = served(&sc).await - before;
    assert!(
        asked <= files.len() as u64 * BLOCK,
        "only a chunk's first read asks the node: {asked} bytes for {} chunks",
        files.len()
    );
    assert!(
        s.local_reads >= 60 - files.len() as u64,
        "{s:?} ({} chunks)",
        files.len()
    );
    assert_eq!(s.local_misses, 0);

    // A sequential stream (readahead: several runs of a chunk asked for at once) asks
    // the node for one block of each chunk, with its outboard, and reads the rest here.
    let opts = mobilus_client::DataOptions {
        local_chunks: Some(dir.parent().unwrap().to_path_buf()),
        ..Default::default()
    };
    let stream = sites.client_with("site-b", opts).await;
    let before = served(&stream).await;
    let reader = stream.reader(ino);
    let mut seen = Vec::with_capacity(data.len());
    while seen.len() < data.len() {
        seen.extend(reader.read(seen.len() as u64, 128 << 10).await.unwrap());
    }
    assert!(seen == data, "the stream reads back what was written");
    let asked = served(&stream).await - before;
    assert!(
        asked <= files.len() as u64 * BLOCK,
        "a stream asks the node for one block a chunk: {asked} bytes for {} chunks",
        files.len()
    );
    assert!(stream.block_cache_stats().prefetched > 0);
    assert_eq!(stream.stats().local_misses, 0);

    // Every block of every file at site-b damaged.
    for f in &files {
        let mut bytes = std::fs::read(f).unwrap();
        for i in (0..bytes.len()).step_by(4096) {
            bytes[i] ^= 0x01;
        }
        std::fs::write(f, bytes).unwrap();
    }
    for &at in &seconds {
        assert_eq!(sc.read(ino, at, 4096).await.unwrap(), page(at));
    }
    let s = sc.stats();
    assert!(s.local_misses >= 1, "{s:?}");
    assert!(sc.local().stats().await.unwrap().corrupt_chunks >= 1);
    assert!(s.remote_range_reads + s.remote_fetches >= 1, "{s:?}");
}
