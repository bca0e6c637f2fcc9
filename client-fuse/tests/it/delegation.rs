//! Delegations through real mounts: a mount of the owner site holds its subtree's
//! delegation and answers from its own cache (even with every metadata member paused);
//! a write by a second mount of the same site recalls it at once (the holder flushes
//! and gives it back), and the holder's next open sees the new bytes (close-to-open).

use std::time::{Duration, Instant};

use mobilus_meta_client::MetaClient;
use nix::sys::signal::Signal;

use crate::cluster::{Mount, Opts, TwoSites};

/// Wait until `mount`'s log has `needle` in it.
fn must_log(mount: &Mount, needle: &str, within: Duration) {
    must_log_while(mount, needle, within, || {});
}

/// Wait until `mount`'s log has `needle` in it, doing `meanwhile` between looks.
fn must_log_while(mount: &Mount, needle: &str, within: Duration, meanwhile: impl Fn()) {
    let deadline = Instant::now() + within;
    while !mount.log().contains(needle) {
        meanwhile();
        assert!(
            Instant::now() < deadline,
            "the mount never logged {needle:?}:\n{}",
            mount.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A cluster whose metadata members run with `meta_args`, and a mount of site-a that
/// holds the delegation of `/app` (holding `f` = "one" and `d/`) and has cached it.
async fn holder_with_a_warm_cache(meta_args: &[&str]) -> (TwoSites, Mount, MetaClient) {
    let sites = TwoSites::start_with(Opts {
        meta_args: meta_args.iter().map(|a| a.to_string()).collect(),
        ..Opts::default()
    })
    .await;
    let a1 = sites.mount("site-a");
    let meta = MetaClient::connect(&sites.meta_addrs).unwrap();
    let app = a1.point.join("app");
    std::fs::create_dir(&app).unwrap();
    let root = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&app).unwrap());
    meta.create_subtree(root, "site-a").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !meta.subtree(root, false).await.unwrap().lease_valid() {
        assert!(Instant::now() < deadline, "site-a never got a lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // a1 touches the subtree: it asks for the delegation and gets it.
    std::fs::write(app.join("f"), b"one").unwrap();
    std::fs::create_dir(app.join("d")).unwrap();
    let _ = std::fs::read_dir(&app).unwrap().count();
    // (Asked for when the mount meets an inode of the subtree: keep meeting them.)
    let f = app.join("f");
    must_log_while(
        &a1,
        "holding the subtree's delegation",
        Duration::from_secs(15),
        || {
            let _ = std::fs::metadata(&f);
        },
    );
    // Fill the cache: an entry, an absent name, a listing, a file's map.
    for _ in 0..2 {
        assert_eq!(std::fs::read(app.join("f")).unwrap(), b"one");
        assert!(std::fs::metadata(app.join("absent")).is_err());
        assert_eq!(std::fs::read_dir(&app).unwrap().count(), 2);
        std::thread::sleep(Duration::from_millis(1100));
    }
    (sites, a1, meta)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_holder_caches_and_a_second_mount_of_its_site_recalls_it_at_once() {
    let (sites, a1, meta) = holder_with_a_warm_cache(&[]).await;
    let app = a1.point.join("app");
    // Authoritative: with the whole metadata service paused, a1 still answers stats,
    // absent names, listings and opens of the subtree (past the ordinary 1 s TTL). The
    // namespace root is shared (any site changes it), so the kernel still asks for its
    // attributes once a TTL: they are fetched just before, and an attempt that meets
    // their expiry anyway (a loaded machine) is made again, at most three times.
    let mut answered = None;
    let mut progress = Vec::new();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1100));
        std::fs::metadata(&app).unwrap();
        sites.signal_meta(Signal::SIGSTOP);
        let (f, absent, dir) = (app.join("f"), app.join("absent"), app.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let attempt = std::thread::spawn(move || {
            let start = Instant::now();
            let size = std::fs::metadata(&f).map(|m| m.len());
            let _ = tx.send("stat");
            let gone = std::fs::metadata(&absent).map(|_| ());
            let _ = tx.send("absent");
            let names = std::fs::read_dir(&dir).map(|d| d.count());
            let _ = tx.send("ls");
            let bytes = std::fs::read(&f);
            (
                start.elapsed(),
                size.ok(),
                gone.is_err(),
                names.ok(),
                bytes.ok(),
            )
        });
        std::thread::sleep(Duration::from_millis(800));
        let done = attempt.is_finished();
        sites.signal_meta(Signal::SIGCONT);
        let result = attempt.join().unwrap();
        progress.push(rx.try_iter().collect::<Vec<_>>());
        if done {
            answered = Some(result);
            break;
        }
    }
    let (took, size, gone, names, bytes) =
        answered.unwrap_or_else(|| panic!("a1 waited for the paused metadata: {progress:?}"));
    eprintln!("attempts: {progress:?}");
    assert_eq!((size, gone, names), (Some(3), true, Some(2)));
    assert_eq!(bytes.as_deref(), Some(&b"one"[..]));

    // A second mount of site-a writes the file: a1's delegation is recalled through the
    // stream (not left to run out: that takes 10 s), and a2's write goes through.
    let a2 = sites.mount("site-a");
    let start = Instant::now();
    std::fs::write(a2.point.join("app/f"), b"two, from a2").unwrap();
    let recall = start.elapsed();
    assert!(
        recall < Duration::from_secs(5),
        "the write waited {recall:?}"
    );
    must_log(
        &a1,
        "gave the subtree's delegation back",
        Duration::from_secs(5),
    );
    // Close-to-open: a1's next open sees it, and so does its listing.
    assert_eq!(std::fs::read(app.join("f")).unwrap(), b"two, from a2");
    std::fs::write(a2.point.join("app/g"), b"g").unwrap();
    assert_eq!(std::fs::read_dir(&app).unwrap().count(), 3);
    assert_eq!(std::fs::read(app.join("g")).unwrap(), b"g");
    eprintln!("paused-metadata answers in {took:?}; a2's write recalled a1 in {recall:?}");
    let report = meta.fsck().await.unwrap();
    assert_eq!(report.problems, Vec::<String>::new());
}

/// The check is what makes the holder's cache safe: with it disabled on the members
/// (a deliberate bug), the second mount's write is not recalled, and the holder serves
/// the bytes it cached (caught).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_delegation_check_the_holder_serves_stale_bytes() {
    let (sites, a1, _meta) = holder_with_a_warm_cache(&["--unsafe-no-delegation-check"]).await;
    let a2 = sites.mount("site-a");
    std::fs::write(a2.point.join("app/f"), b"two, from a2").unwrap();
    let seen = std::fs::read(a1.point.join("app/f")).unwrap();
    assert_eq!(seen, b"one", "the broken switch was not caught");
    assert!(!a1.log().contains("gave the subtree's delegation back"));
}
