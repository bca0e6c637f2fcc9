//! Data that follows placement between sites (`mobilus-data`'s follower): a subtree made
//! eager at site-b is copied there by its change feed, sending only the chunks site-b
//! lacks, within the bandwidth limit, catching up after the far side stalls; and a
//! synchronous site holds every fsynced write before the fsync returns.

use std::time::{Duration, Instant};

use mobilus_client::Client;
use mobilus_meta_client::MetaClient;
use mobilus_proto::fs::{DataMode, FileKind, InodeId, SitePlacement, ROOT_INO};

use crate::cluster::{Opts, TwoSites};
use crate::data_path::{must_write, noise};

async fn sites_following(every_ms: u64, bandwidth: &str) -> TwoSites {
    TwoSites::start_with(Opts {
        data_args: vec![
            "--follow-interval-ms".into(),
            every_ms.to_string(),
            "--replication-bandwidth".into(),
            bandwidth.into(),
        ],
        ..Opts::default()
    })
    .await
}

/// `/app`, a subtree owned by site-a with a valid lease.
pub(crate) async fn must_own_app(a: &Client) -> InodeId {
    let app = a
        .meta()
        .mkdir(ROOT_INO, b"app", 0o755, 0, 0, None)
        .await
        .unwrap()
        .ino;
    a.meta().create_subtree(app, "site-a").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a.meta().subtree(app, false).await.unwrap().lease_valid() {
        assert!(Instant::now() < deadline, "site-a never got a lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app
}

pub(crate) async fn must_file(c: &Client, dir: InodeId, name: &str, data: &[u8]) -> InodeId {
    let ino = c
        .meta()
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
        .await
        .unwrap()
        .ino;
    must_write(c, ino, data).await;
    ino
}

pub(crate) fn place(site: &str, mode: DataMode, sync: bool) -> SitePlacement {
    SitePlacement {
        site: site.into(),
        mode,
        sync,
    }
}

/// Wait until `site` has caught up with `root`'s feed; returns how long it took.
async fn must_catch_up(meta: &MetaClient, root: InodeId, site: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let rows = meta.replication_status(Some(root)).await.unwrap();
        let f = rows.iter().find(|f| f.site == site);
        if f.is_some_and(|f| f.caught_up()) {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{site} never caught up: {f:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_site_made_eager_fetches_only_the_chunks_it_lacks() {
    let sites = sites_following(200, "1gbit").await;
    let a = sites.client("site-a").await;
    let b = sites.client("site-b").await;
    let app = must_own_app(&a).await;
    let files: Vec<Vec<u8>> = (0..10).map(|i| noise(1 << 20, 100 + i)).collect();
    let mut inos = Vec::new();
    for (i, data) in files.iter().enumerate() {
        inos.push(must_file(&a, app, &format!("f{i}"), data).await);
    }
    // A scan, page by page (3 chunks a page): the pages, in hash order, are the whole.
    let (whole, next) = a.meta().scan_subtree_chunks(app).await.unwrap();
    assert!(whole.len() >= 10, "{} chunks", whole.len());
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = a
            .meta()
            .scan_subtree_chunks_page(app, after, 3)
            .await
            .unwrap();
        assert!(page.chunks.len() <= 3);
        assert_eq!(page.next_seq, next);
        paged.extend(page.chunks.iter().copied());
        after = page.chunks.last().map(|c| c.hash);
        if !page.more {
            break;
        }
    }
    assert_eq!(paged, whole);
    assert!(whole.windows(2).all(|w| w[0].hash < w[1].hash));

    // Site-b holds 90% of the bytes already: its own copies of nine of the files.
    for (i, data) in files.iter().take(9).enumerate() {
        must_file(&b, ROOT_INO, &format!("copy{i}"), data).await;
    }
    let (a0, b0) = (
        a.local().stats().await.unwrap(),
        b.local().stats().await.unwrap(),
    );

    a.meta()
        .set_placement(app, &[place("site-b", DataMode::Eager, false)])
        .await
        .unwrap();
    must_catch_up(a.meta(), app, "site-b", Duration::from_secs(30)).await;
    let (a1, b1) = (
        a.local().stats().await.unwrap(),
        b.local().stats().await.unwrap(),
    );
    let served = a1.bytes_served - a0.bytes_served;
    let received = b1.bytes_received - b0.bytes_received;
    let missing = files[9].len() as u64;
    eprintln!(
        "dedup across sites: {} of {} bytes sent ({:.1}%), counted {} at site-a and {} at site-b",
        received,
        10 * missing,
        100.0 * received as f64 / (10 * missing) as f64,
        served,
        received
    );
    assert_eq!(
        (served, received),
        (missing, missing),
        "only the tenth file crosses"
    );

    // Everything is at site-b now: a reader there faults nothing.
    let reader = sites.client("site-b").await;
    for (ino, data) in inos.iter().zip(&files) {
        assert_eq!(
            &reader.read(*ino, 0, data.len() as u64).await.unwrap(),
            data
        );
    }
    assert_eq!(reader.stats().remote_fetches, 0);

    // New writes follow by the feed.
    let later = noise(3 << 20, 7);
    let ino = must_file(&a, app, "later", &later).await;
    must_catch_up(a.meta(), app, "site-b", Duration::from_secs(30)).await;
    assert_eq!(
        reader.read(ino, 0, later.len() as u64).await.unwrap(),
        later
    );
    assert_eq!(reader.stats().remote_fetches, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replication_holds_its_bandwidth_and_catches_up_after_the_far_side_stalls() {
    const RATE: u64 = 1 << 20;
    let sites = sites_following(200, "1MiB").await;
    let a = sites.client("site-a").await;
    let b = sites.client("site-b").await;
    let app = must_own_app(&a).await;
    let files: Vec<Vec<u8>> = (0..15).map(|i| noise(2 << 20, 300 + i)).collect();
    let total: u64 = files.iter().map(|f| f.len() as u64).sum();
    let mut inos = Vec::new();
    for (i, data) in files.iter().enumerate() {
        inos.push(must_file(&a, app, &format!("f{i}"), data).await);
    }
    let b0 = b.local().stats().await.unwrap();
    a.meta()
        .set_placement(app, &[place("site-b", DataMode::Eager, false)])
        .await
        .unwrap();
    // Once bytes flow, stall the far side (its data node stops answering) for 3 s
    // mid-transfer: fetches in flight hang, then go on.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (started, first) = loop {
        let now = b.local().stats().await.unwrap().bytes_received;
        if now > b0.bytes_received {
            break (Instant::now(), now - b0.bytes_received);
        }
        assert!(Instant::now() < deadline, "replication never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_secs(8)).await;
    sites.signal_data_node("site-a", nix::sys::signal::Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(3)).await;
    sites.signal_data_node("site-a", nix::sys::signal::Signal::SIGCONT);
    must_catch_up(a.meta(), app, "site-b", Duration::from_secs(90)).await;
    // The limiter kept granting while the far side stalled (fetches stay in flight), so
    // the rate is over the whole time.
    let took = started.elapsed().as_secs_f64();
    let received = b.local().stats().await.unwrap().bytes_received - b0.bytes_received;
    let rate = (received - first) as f64 / took;
    eprintln!(
        "replicated {received} bytes in {took:.1} s of transfer: {:.0} KiB/s against a limit of {} KiB/s ({:.0}%)",
        rate / 1024.0,
        RATE / 1024,
        100.0 * rate / RATE as f64
    );
    assert_eq!(
        received, total,
        "every byte once: nothing lost, nothing sent twice"
    );
    assert!(
        rate <= RATE as f64 * 1.1 && rate >= RATE as f64 * 0.9,
        "{rate:.0} B/s against a limit of {RATE}"
    );
    let reader = sites.client("site-b").await;
    for (ino, data) in inos.iter().zip(&files) {
        assert_eq!(
            &reader.read(*ino, 0, data.len() as u64).await.unwrap(),
            data
        );
    }
    assert_eq!(reader.stats().remote_fetches, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_fsync_at_site_a_survives_the_loss_of_its_disks_when_site_b_is_synchronous() {
    // No follower: only what the writes themselves send reaches site-b.
    let mut sites = sites_following(0, "1gbit").await;
    let a = sites.client("site-a").await;
    let app = must_own_app(&a).await;
    let before = noise(1 << 20, 1);
    let unsynced = must_file(&a, app, "before", &before).await;
    a.meta()
        .set_placement(app, &[place("site-b", DataMode::Eager, true)])
        .await
        .unwrap();
    // A writer that starts now sees the placement (clients ask once per few seconds).
    let w = sites.client("site-a").await;
    let after = noise(3 << 20, 2);
    let synced = must_file(&w, app, "after", &after).await;

    // Site-a's disks are gone.
    sites.kill_data_node("site-a");
    std::fs::remove_dir_all(&sites.chunk_dirs[0]).unwrap();
    let b = sites.client("site-b").await;
    assert_eq!(b.read(synced, 0, after.len() as u64).await.unwrap(), after);
    // What was written before site-b was synchronous is lost with them (the check can
    // fail).
    assert!(b.read(unsynced, 0, before.len() as u64).await.is_err());
}
