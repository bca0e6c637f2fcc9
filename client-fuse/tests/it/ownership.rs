//! Subtree ownership through real mounts: a move under load fences the old owner's
//! mounts (EROFS) while the new owner's write at once, and a site whose agent stops
//! renewing its lease stops writing, until a takeover gives the subtree to another site.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mobilus_meta_client::MetaClient;
use mobilus_proto::fs::SubtreeState;

use crate::cluster::TwoSites;

const RECORD: usize = 4096;

fn record(site: u8, i: u32) -> Vec<u8> {
    let mut r = vec![site; RECORD];
    r[..4].copy_from_slice(&i.to_be_bytes());
    r
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Append records with an fsync each until one fails or `stop` is set; returns how many
/// were acknowledged (fsync returned) and the error that ended it.
fn append_until_refused(
    path: &Path,
    site: u8,
    first: u32,
    stop: &AtomicBool,
) -> (u32, Option<std::io::Error>) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(path)
        .unwrap();
    let mut acked = 0;
    while !stop.load(Ordering::SeqCst) {
        let rec = record(site, first + acked);
        if let Err(e) = f.write_all(&rec).and_then(|()| f.sync_all()) {
            return (acked, Some(e));
        }
        acked += 1;
    }
    (acked, None)
}

async fn must_wait_for_lease(meta: &MetaClient, root: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !meta.subtree(root, false).await.unwrap().lease_valid() {
        assert!(Instant::now() < deadline, "the owner never got a lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_under_load_fences_the_old_owner_and_loses_no_acknowledged_byte() {
    let mut sites = TwoSites::start().await;
    let a = sites.mount("site-a");
    let b = sites.mount("site-b");
    let meta = MetaClient::connect(&sites.meta_addrs).unwrap();
    std::fs::create_dir(a.point.join("app")).unwrap();
    let root = std::fs::metadata(a.point.join("app")).unwrap();
    let root = std::os::unix::fs::MetadataExt::ino(&root);
    let s = meta.create_subtree(root, "site-a").await.unwrap();
    assert_eq!((s.state, s.epoch), (SubtreeState::Owned, 1));
    must_wait_for_lease(&meta, root).await;

    // site-b may read the subtree but not change it; site-a writes.
    let log_a = a.point.join("app/log");
    let log_b = b.point.join("app/log");
    std::fs::write(&log_a, b"").unwrap();
    let e = std::fs::create_dir(b.point.join("app/nope")).unwrap_err();
    assert_eq!(errno(&e), libc::EROFS, "{e}");
    let e = std::fs::write(&log_b, b"x").unwrap_err();
    assert_eq!(errno(&e), libc::EROFS, "{e}");
    // The shared root stays writable from both sites.
    std::fs::write(b.point.join("shared-b"), b"b").unwrap();

    // A writer at site-a, fsyncing every record; the subtree moves under it.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (log_a, stop) = (log_a.clone(), stop.clone());
        std::thread::spawn(move || append_until_refused(&log_a, b'a', 0, &stop))
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let moved_at = Instant::now();
    let s = meta.move_subtree(root, "site-b", false).await.unwrap();
    let move_ms = moved_at.elapsed().as_secs_f64() * 1e3;
    assert_eq!((s.owner.as_deref(), s.epoch), (Some("site-b"), 2));
    let (acked_a, err) = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    let err = err.expect("site-a's writer kept writing after the move");
    assert_eq!(errno(&err), libc::EROFS, "{err}");
    assert!(acked_a > 0, "site-a acknowledged nothing before the move");
    assert!(
        a.log().contains("read-only here"),
        "site-a's mount did not say why: {}",
        a.log()
    );

    // site-b continues the log at once; site-a can still read, not write.
    let acked_b = 20;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&log_b)
        .unwrap();
    for i in 0..acked_b {
        f.write_all(&record(b'b', acked_a + i)).unwrap();
        f.sync_all().unwrap();
    }
    drop(f);
    let e = std::fs::create_dir(a.point.join("app/late")).unwrap_err();
    assert_eq!(errno(&e), libc::EROFS, "{e}");

    // Every acknowledged record, in order, at both sites; nothing site-a did not have
    // acknowledged.
    let mut expected = Vec::new();
    for i in 0..acked_a {
        expected.extend(record(b'a', i));
    }
    for i in 0..acked_b {
        expected.extend(record(b'b', acked_a + i));
    }
    for (site, path) in [("site-b", &log_b), ("site-a", &log_a)] {
        let got = std::fs::read(path).unwrap();
        assert_eq!(got.len(), expected.len(), "{site}: length");
        assert!(
            got == expected,
            "{site}: the log differs from what was acknowledged"
        );
    }
    eprintln!("move under load: {acked_a} records at site-a, moved in {move_ms:.1} ms");

    // site-b's agent dies: its lease runs out, its mount stops writing the subtree (a
    // metadata-only change too), and only then can site-a take the subtree over.
    sites.kill_data_node("site-b");
    let e = meta.move_subtree(root, "site-a", true).await.unwrap_err();
    assert!(
        e.to_string().contains("--force takes over only after"),
        "{e}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match std::fs::create_dir(b.point.join("app/probe")) {
            Err(e) if errno(&e) == libc::EROFS => break,
            // The lease may run out between the two.
            Ok(()) => match std::fs::remove_dir(b.point.join("app/probe")) {
                Err(e) if errno(&e) == libc::EROFS => break,
                r => r.unwrap(),
            },
            Err(e) => panic!("{e}"),
        }
        assert!(
            Instant::now() < deadline,
            "site-b kept its lease without its agent"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let s = meta.move_subtree(root, "site-a", true).await.unwrap();
    assert_eq!((s.owner.as_deref(), s.epoch), (Some("site-a"), 3));
    std::fs::create_dir(a.point.join("app/back")).unwrap();
    let report = meta.fsck().await.unwrap();
    assert_eq!(report.problems, Vec::<String>::new());
}
