//! Access profiles: an application's first reads at site-a are recorded as its subtree's
//! profile, and after a move site-b fetches the profile's chunks before the rest, so the
//! same first reads there fault nothing.

use std::time::{Duration, Instant};

use mobilus_client::{Client, DataOptions};
use mobilus_proto::fs::ChunkHash;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recorded_profile_is_fetched_first_after_a_move() {
    // Replication at 2 MiB/s: the whole subtree takes several seconds to follow.
    let sites = TwoSites::start_with(Opts {
        data_args: vec![
            "--follow-interval-ms".into(),
            "200".into(),
            "--replication-bandwidth".into(),
            "2MiB".into(),
        ],
        ..Opts::default()
    })
    .await;
    let a = sites.client("site-a").await;
    let app = must_own_app(&a).await;
    let mut files = Vec::new();
    for i in 0..16u64 {
        let data = noise(1 << 20, 500 + i);
        files.push((must_file(&a, app, &format!("f{i}"), &data).await, data));
    }
    let first_chunk = |data: &[u8]| mobilus_client::chunker::chunk(data)[0].hash;
    let (profiled, others) = files.split_at(3);

    // The application starts at site-a: its first reads are recorded (a 1 s window).
    let window = DataOptions {
        profile_window: Some(Duration::from_secs(1)),
        ..DataOptions::default()
    };
    let app_a = sites.client_with("site-a", window).await;
    start_up_reads(&app_a, profiled).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let profile = loop {
        let p = a.meta().profile(app, false).await.unwrap();
        if !p.reads.is_empty() {
            break p;
        }
        assert!(Instant::now() < deadline, "no profile was recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let wanted: Vec<ChunkHash> = profiled.iter().map(|(_, d)| first_chunk(d)).collect();
    assert_eq!(profile.chunks(), wanted, "the chunks read, in order");
    assert_eq!(profile.site, "site-a");

    // It moves to site-b (made eager): the profile's chunks come first.
    a.meta().move_subtree(app, "site-b", false).await.unwrap();
    let b = sites.client("site-b").await;
    let all: Vec<ChunkHash> = files
        .iter()
        .flat_map(|(_, d)| mobilus_client::chunker::chunk(d))
        .map(|p| p.hash)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while held_at(&b, &wanted).await < wanted.len() {
        assert!(Instant::now() < deadline, "the profile never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
