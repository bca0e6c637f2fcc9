//! Sites that hold a subtree's data only on demand: what their reads fault in is a
//! cache, evicted least recently used first past the node's cache capacity (but never a
//! chunk no other site holds); a placement that pins the site keeps it, including what
//! was cached before the pin.

use std::time::{Duration, Instant};

use mobilus_client::Client;
use mobilus_proto::datapb::StatsReply;
use mobilus_proto::fs::DataMode;

use crate::cluster::{Opts, TwoSites};
use crate::data_path::noise;
use crate::follow::{must_file, must_own_app, place};

/// Files of 1 MiB each (a chunk or two apiece).
const FILES: u64 = 6;

async fn must_stats(c: &Client) -> StatsReply {
    c.local().stats().await.unwrap()
}

/// Wait until site-b's node reports `done`.
async fn must_see(c: &Client, what: &str, done: impl Fn(&StatsReply) -> bool) -> StatsReply {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = must_stats(c).await;
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "never saw {what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faulted_chunks_are_a_cache_evicted_past_capacity_unless_pinned() {
    let sites = TwoSites::start_with(Opts {
        data_args: vec![
            "--cache-capacity-mib".into(),
            "2".into(),
            "--follow-interval-ms".into(),
            "200".into(),
        ],
        ..Opts::default()
    })
    .await;
    let a = sites.client("site-a").await;
    let app = must_own_app(&a).await;
    let files: Vec<Vec<u8>> = (0..FILES).map(|i| noise(1 << 20, 300 + i)).collect();
    let mut inos = Vec::new();
    for (i, data) in files.iter().enumerate() {
        inos.push(must_file(&a, app, &format!("f{i}"), data).await);
    }
    let read_all = |c: Client| {
        let (inos, files) = (inos.clone(), files.clone());
        async move {
            for (ino, data) in inos.iter().zip(&files) {
                assert_eq!(&c.read(*ino, 0, data.len() as u64).await.unwrap(), data);
            }
            c.stats().remote_fetches
        }
    };

    // On demand (site-b is not named): every read faults, and what it faults in is
    // cached at site-b, then evicted down to the 2 MiB capacity.
    let b = sites.client("site-b").await;
    let faulted = read_all(b.clone()).await;
    assert!(faulted >= FILES, "{faulted} faults");
    // Nothing held: every chunk there cached. Waited for, not read once: an eviction
    // drops a chunk from the cache before it counts the chunk gone, so a reading
    // taken mid-eviction shows one more chunk than cached.
    let s = must_see(&b, "eviction to the capacity, with nothing held", |s| {
        s.evicted_chunks > 0 && s.cached_bytes <= 2 << 20 && s.cached_chunks == s.chunks
    })
    .await;
    eprintln!(
        "on demand: {faulted} chunks faulted, {} evicted, {} of {} bytes at site-b cached",
        s.evicted_chunks, s.cached_bytes, s.bytes
    );

    // The last file's chunks (read last: still cached) are lost at site-a. Reading the
    // others makes them the coldest, but they are the last copies: kept, not evicted.
    let last: Vec<_> = mobilus_client::chunker::chunk(&files[FILES as usize - 1])
        .iter()
        .map(|p| p.hash)
        .collect();
    let site_a = sites.data.iter().find(|d| d.site == "site-a").unwrap();
    for h in &last {
        let hex = h.to_hex();
        std::fs::remove_file(site_a.chunks.join(&hex[..2]).join(&hex)).unwrap();
    }
    a.local().verify(&last).await.unwrap(); // quarantined: site-a has them no more
    let others = sites.client("site-b").await;
    for (ino, data) in inos.iter().zip(&files).take(FILES as usize - 1) {
        assert_eq!(
            &others.read(*ino, 0, data.len() as u64).await.unwrap(),
            data
        );
    }
    let s = must_see(&b, "eviction past the last copies", |t| {
        t.evicted_chunks > s.evicted_chunks && t.cached_bytes <= 2 << 20
    })
    .await;
    let (ino, data) = (inos[FILES as usize - 1], &files[FILES as usize - 1]);
    let reader = sites.client("site-b").await;
    assert_eq!(&reader.read(ino, 0, data.len() as u64).await.unwrap(), data);
    assert_eq!(reader.stats().remote_fetches, 0, "served at site-b");
    // Evicted chunks fault again, and still read right.
    let again = read_all(sites.client("site-b").await).await;
    assert!(again > 0, "nothing was evicted");
    must_see(&b, "eviction again", |t| {
        t.evicted_chunks > s.evicted_chunks && t.cached_bytes <= 2 << 20
    })
    .await;

    // Pinned: what is cached becomes held (the follower walks the subtree), and what
    // reads fault in from now on is held: nothing is evicted, every chunk stays.
    a.meta()
        .set_placement(app, &[place("site-b", DataMode::Pinned, false)])
        .await
        .unwrap();
    must_see(&b, "the cached chunks kept", |s| s.cached_chunks == 0).await;
    let evicted = must_stats(&b).await.evicted_chunks;
    let faulted = read_all(sites.client("site-b").await).await;
    assert!(faulted > 0, "what was evicted faults again");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = must_stats(&b).await;
    assert_eq!((s.cached_chunks, s.evicted_chunks), (0, evicted), "{s:?}");
    assert!(s.bytes >= FILES << 20, "{s:?}");
    // Everything is at site-b now: a fresh reader faults nothing.
    assert_eq!(read_all(sites.client("site-b").await).await, 0);
}
