//! Access profiles: an application's first reads at site-a are recorded as its subtree's
//! profile, and after a move site-b fetches the profile's chunks before the rest, so the
//! same first reads there fault nothing.

use std::time::{Duration, Instant};

use mobilus_client::{Client, DataOptions};
use mobilus_proto::fs::{ChunkHash, DataMode};

use crate::cluster::{Opts, TwoSites};
use crate::data_path::noise;
use crate::follow::{must_file, must_own_app};

/// Reads 4 KiB at the start of each file, as an application's start-up checks would,
/// through readers that know the files' subtree; returns the chunks faulted from
/// another site (whole or by their blocks).
async fn start_up_reads(c: &Client, files: &[(u64, Vec<u8>)]) -> u64 {
    let before = c.stats();
    for (ino, data) in files {
        let (_, reader) = c.open_reader(*ino).await.unwrap().expect("a regular file");
        assert_eq!(reader.read(0, 4096).await.unwrap(), data[..4096]);
    }
    let after = c.stats();
    (after.remote_fetches - before.remote_fetches)
        + (after.remote_range_reads - before.remote_range_reads)
}

async fn held_at(c: &Client, chunks: &[ChunkHash]) -> usize {
    let (_, present) = c.local().has(chunks).await.unwrap();
    present.iter().filter(|p| **p).count()
}

/// Two sites replicating at 2 MiB/s (the whole subtree takes seconds to follow).
async fn slow_sites() -> TwoSites {
    TwoSites::start_with(Opts {
        data_args: vec![
            "--follow-interval-ms".into(),
            "200".into(),
            "--replication-bandwidth".into(),
            "2MiB".into(),
        ],
        ..Opts::default()
    })
    .await
}

/// `/app` owned by site-a, 16 files of 1 MiB, and the profile of an application that
/// read the start of the first 3: the files, and the profile's chunks.
async fn recorded_app(sites: &TwoSites) -> (Client, u64, Vec<(u64, Vec<u8>)>, Vec<ChunkHash>) {
    let a = sites.client("site-a").await;
    let app = must_own_app(&a).await;
    let mut files = Vec::new();
    for i in 0..16u64 {
        let data = noise(1 << 20, 500 + i);
        files.push((must_file(&a, app, &format!("f{i}"), &data).await, data));
    }
    // The application starts at site-a: its first reads are recorded (a 1 s window).
    let window = DataOptions {
        profile_window: Some(Duration::from_secs(1)),
        ..DataOptions::default()
    };
    let app_a = sites.client_with("site-a", window).await;
    start_up_reads(&app_a, &files[..3]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let profile = loop {
        let p = a.meta().profile(app, false).await.unwrap();
        if !p.reads.is_empty() {
            break p;
        }
        assert!(Instant::now() < deadline, "no profile was recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let wanted: Vec<ChunkHash> = files[..3]
        .iter()
        .map(|(_, d)| mobilus_client::chunker::chunk(d)[0].hash)
        .collect();
    assert_eq!(profile.chunks(), wanted, "the chunks read, in order");
    assert_eq!(profile.site, "site-a");
    (a, app, files, wanted)
}

fn all_chunks(files: &[(u64, Vec<u8>)]) -> Vec<ChunkHash> {
    files
        .iter()
        .flat_map(|(_, d)| mobilus_client::chunker::chunk(d))
        .map(|p| p.hash)
        .collect()
}

async fn must_hold(c: &Client, chunks: &[ChunkHash], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while held_at(c, chunks).await < chunks.len() {
        assert!(Instant::now() < deadline, "{what} never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recorded_profile_is_fetched_first_after_a_move() {
    let sites = slow_sites().await;
    let (a, app, files, wanted) = recorded_app(&sites).await;
    let (profiled, others) = files.split_at(3);

    // It moves to site-b (made eager): the profile's chunks come first.
    a.meta().move_subtree(app, "site-b", false).await.unwrap();
    let b = sites.client("site-b").await;
    let all = all_chunks(&files);
    must_hold(&b, &wanted, "the profile").await;
    let held = held_at(&b, &all).await;
    eprintln!(
        "profile first: its {} chunks at site-b with {held} of the subtree's {} there",
        wanted.len(),
        all.len()
    );
    assert!(held < all.len() / 2, "{held} of {} already", all.len());

    // The application starts at site-b: its first reads fault nothing; the same reads of
    // files outside the profile, at the same moment, do.
    let app_b = sites.client("site-b").await;
    let with_profile = start_up_reads(&app_b, profiled).await;
    let without = start_up_reads(&app_b, &others[..3]).await;
    eprintln!(
        "first reads after the move: {with_profile} faults with the profile, {without} without"
    );
    assert_eq!(with_profile, 0);
    assert!(without >= 1, "{without}");
}

/// `subtree move --data lazy`: the new owner's placement is `profile`; it copies the
/// profile and nothing else ahead, and keeps what its reads fault in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lazy_move_copies_only_the_profile() {
    let sites = slow_sites().await;
    let (a, app, files, wanted) = recorded_app(&sites).await;
    // One step: the move, and the new owner's mode (`subtree move --data lazy`).
    let lazy = Some(DataMode::Profile);
    a.meta()
        .move_subtree_with(app, "site-b", false, lazy)
        .await
        .unwrap();
    let place = a.meta().placement(app, false).await.unwrap();
    assert_eq!(place.mode("site-b"), DataMode::Profile);
    assert!(!place.follows("site-b"));
    let b = sites.client("site-b").await;
    must_hold(&b, &wanted, "the profile").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = all_chunks(&files);
    assert_eq!(held_at(&b, &all).await, wanted.len(), "only the profile");
    // A read of another file faults its chunks in, and site-b keeps them.
    let reader = sites.client("site-b").await;
    let (ino, data) = &files[10];
    assert_eq!(
        &reader.read(*ino, 0, data.len() as u64).await.unwrap(),
        data
    );
    let theirs: Vec<ChunkHash> = all_chunks(&files[10..11]);
    must_hold(&b, &theirs, "the faulted chunks").await;
    assert_eq!(
        b.local().stats().await.unwrap().cached_chunks,
        0,
        "kept, not cached"
    );

    // The application restarts at site-b: not recorded while the profile is not armed;
    // armed again, its next start (three windows later) is.
    let window = DataOptions {
        profile_window: Some(Duration::from_secs(1)),
        ..DataOptions::default()
    };
    let app_b = sites.client_with("site-b", window).await;
    start_up_reads(&app_b, &files[5..6]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let kept = a.meta().profile(app, false).await.unwrap();
    assert_eq!(
        (kept.site.as_str(), kept.chunks()),
        ("site-a", wanted.clone())
    );
    a.meta().arm_profile(app, true).await.unwrap();
    // Three windows after the last one closed.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    start_up_reads(&app_b, &files[6..8]).await;
    let first = |d: &[u8]| mobilus_client::chunker::chunk(d)[0].hash;
    let next: Vec<ChunkHash> = files[6..8].iter().map(|(_, d)| first(d)).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = a.meta().profile(app, false).await.unwrap();
        if !p.reads.is_empty() {
            assert_eq!((p.site.as_str(), p.chunks()), ("site-b", next));
            break;
        }
        assert!(Instant::now() < deadline, "the next start was not recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
