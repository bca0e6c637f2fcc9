//! `mobilusctl clone` on the dev cluster: a copy by metadata alone, read through the
//! mounts, changed on either side alone, owned by another site, refused when wrong, and
//! a killed `mobilusctl` leaving nothing visible behind.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::operate::{chunk_files, metrics_of, must_grow, must_scrape, sample};
use super::{ctl, must_json, must_ok, CTL};

/// Every file under `root`: relative path → (mode, bytes or symlink target).
fn tree(root: &Path) -> Vec<(String, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let body = if m.is_dir() {
                todo.push(p.clone());
                Vec::new()
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                std::fs::read(&p).unwrap()
            };
            out.push((rel, m.mode(), body));
        }
    }
    out.sort();
    out
}

fn chunk_count(dir: &str) -> (usize, usize) {
    let n = |site: &str| chunk_files(Path::new(&format!("{dir}/data-{site}/data"))).len();
    (n("site-a"), n("site-b"))
}

pub(crate) fn clone_commands(config: &str, dir: &str, procs: &serde_json::Value) {
    let (mnt_a, mnt_b) = (format!("{dir}/mnt/site-a"), format!("{dir}/mnt/site-b"));
    let json = |args: &[&str]| {
        let mut full = vec!["--config", config];
        full.extend_from_slice(args);
        must_json(&full)
    };
    let fails = |args: &[&str]| {
        let mut full = vec!["--config", config];
        full.extend_from_slice(args);
        let out = ctl(&full);
        assert_eq!(out.status.code(), Some(1), "{args:?} did not fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // /proj (site-a's, from `subtree_commands`) gets a hard link and data site-b never
    // read.
    std::fs::hard_link(
        format!("{mnt_a}/proj/back"),
        format!("{mnt_a}/proj/src/back-link"),
    )
    .unwrap();
    let fresh = mobilus_proto::noise::noise(1 << 20, 0x51ed_270b_2f3a_9c7d);
    // fsync: committed (chunks on site-a's node) before anything is counted.
    let mut f = std::fs::File::create(format!("{mnt_a}/proj/fresh")).unwrap();
    std::io::Write::write_all(&mut f, &fresh).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let source = json(&["subtree", "status", "/proj"]);
    let chunks_before = chunk_count(dir);

    let c = json(&["clone", "/proj", "/proj-copy"]);
    assert_eq!(c["dst"], "/proj-copy", "{c}");
    assert_eq!(
        (c["inodes"].clone(), c["bytes"].clone()),
        (source["inodes"].clone(), source["bytes"].clone()),
        "{c}"
    );
    assert_eq!(c["owner"], "site-a");
    // No data moved: not one chunk more at either site.
    assert_eq!(chunk_count(dir), chunks_before);
    let (src, copy) = (format!("{mnt_a}/proj"), format!("{mnt_a}/proj-copy"));
    assert_eq!(tree(Path::new(&copy)), tree(Path::new(&src)));
    let ino = |p: &str| std::fs::metadata(p).unwrap().ino();
    assert_eq!(
        ino(&format!("{copy}/back")),
        ino(&format!("{copy}/src/back-link"))
    );
    assert_ne!(ino(&format!("{copy}/back")), ino(&format!("{src}/back")));
    let s = json(&["subtree", "status", "/proj-copy"]);
    assert_eq!(
        (s["owner"].as_str(), s["epoch"].as_u64()),
        (Some("site-a"), Some(1)),
        "{s}"
    );
    // Every chunk shared with the source: deleting either would free nothing.
    assert!(s["usage"]["chunks"].as_u64() > Some(0), "{s}");
    assert_eq!(s["usage"]["exclusive_bytes"], 0, "{s}");
    assert_eq!(
        json(&["subtree", "status", "/proj"])["usage"]["exclusive_chunks"],
        0
    );

    // Copy-on-write: each side changes alone.
    std::fs::write(format!("{copy}/src/f0"), b"changed").unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(format!("{src}/src/f1"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"+").unwrap();
    drop(f);
    std::fs::remove_file(format!("{src}/src/f2")).unwrap();
    assert_eq!(
        std::fs::read(format!("{src}/src/f0")).unwrap(),
        b"0123456789"
    );
    assert_eq!(
        std::fs::read(format!("{copy}/src/f1")).unwrap(),
        b"0123456789"
    );
    assert_eq!(
        std::fs::read(format!("{copy}/src/f2")).unwrap(),
        b"0123456789"
    );
    assert_eq!(
        std::fs::read(format!("{src}/src/f1")).unwrap(),
        b"0123456789+"
    );

    // A refresh takes what only the source changed (f1), keeps the clone's own change
    // (f0) and what the source removed (f2), and lists what both changed (f4).
    std::fs::write(format!("{src}/src/f4"), b"source").unwrap();
    std::fs::write(format!("{copy}/src/f4"), b"clone").unwrap();
    let r = json(&["clone", "refresh", "/proj-copy"]);
    assert_eq!(
        r["conflicts"],
        serde_json::json!(["/proj-copy/src/f4"]),
        "{r}"
    );
    assert_eq!(
        (
            r["refreshed"].as_u64(),
            r["kept"].as_u64(),
            r["gone"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{r}"
    );
    assert_eq!(
        std::fs::read(format!("{copy}/src/f1")).unwrap(),
        b"0123456789+"
    );
    assert_eq!(std::fs::read(format!("{copy}/src/f0")).unwrap(), b"changed");
    assert_eq!(
        std::fs::read(format!("{copy}/src/f2")).unwrap(),
        b"0123456789"
    );
    assert_eq!(std::fs::read(format!("{copy}/src/f4")).unwrap(), b"clone");
    assert_eq!(std::fs::read(format!("{src}/src/f4")).unwrap(), b"source");

    // A copy owned by site-b: written there, read there by fetching chunks on demand.
    let mount_b = metrics_of(procs, "mount-site-b");
    let fetched = sample(
        &must_scrape(&mount_b),
        "mobilus_client_remote_fetches_total",
    );
    let c = json(&["clone", "/proj", "/proj-b", "--owner", "site-b"]);
    assert_eq!(c["owner"], "site-b", "{c}");
    assert_eq!(
        std::fs::read(format!("{mnt_b}/proj-b/fresh")).unwrap(),
        fresh
    );
    must_grow(&mount_b, "mobilus_client_remote_fetches_total", fetched);
    std::fs::write(format!("{mnt_b}/proj-b/from-b"), b"b").unwrap();
    let e = std::fs::write(format!("{mnt_a}/proj-b/from-a"), b"a").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");

    // Refusals say what is wrong.
    for (args, says) in [
        (vec!["clone", "/proj", "/proj-copy"], "exists already"),
        (vec!["clone", "/dir", "/x"], "is not a subtree"),
        (vec!["clone", "/proj", "/proj/inside"], "do not nest"),
        (
            vec!["clone", "/proj", "/x", "--owner", "site-z"],
            "the sites are site-a, site-b",
        ),
        (vec!["clone", "/proj", "x"], "not an absolute path"),
        (vec!["clone", "/nowhere", "/x"], "no such file or directory"),
        (
            vec!["clone", "/proj", "/nowhere/x"],
            "no such file or directory",
        ),
    ] {
        let err = fails(&args);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(
        ctl(&["--config", config, "clone", "/proj"]).status.code(),
        Some(1)
    );

    // mobilusctl killed halfway: nothing shows; the source's writers wait at most the
    // freeze (10 s), then go on; the next clone removes what was left.
    std::fs::create_dir(format!("{src}/many")).unwrap();
    for i in 0..300 {
        std::fs::write(format!("{src}/many/m{i}"), b"m").unwrap();
    }
    let mut killed = Command::new(CTL)
        .args([
            "--config",
            config,
            "clone",
            "/proj",
            "/proj-killed",
            "--batch",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ls = json(&["clone", "ls"]);
        if ls.as_array().is_some_and(|l| !l.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the clone never showed in `clone ls`"
        );
        assert!(
            killed.try_wait().unwrap().is_none(),
            "the clone finished before it was seen"
        );
    }
    killed.kill().unwrap();
    killed.wait().unwrap();
    let ls = json(&["clone", "ls"]);
    assert_eq!(ls[0]["name"], "proj-killed", "{ls}");
    assert!(
        ls[0]["copied_inodes"].as_u64() < ls[0]["total_inodes"].as_u64(),
        "{ls}"
    );
    assert!(!Path::new(&format!("{mnt_a}/proj-killed")).exists());
    let waited = Instant::now();
    std::fs::write(format!("{src}/after-kill"), b"z").unwrap();
    assert!(
        waited.elapsed() < Duration::from_secs(15),
        "{:?}",
        waited.elapsed()
    );
    assert_eq!(json(&["clone", "ls"])[0]["state"], "abandoned");
    let c = json(&["clone", "/proj", "/proj-killed"]);
    assert_eq!(
        c["inodes"],
        json(&["subtree", "status", "/proj"])["inodes"],
        "{c}"
    );
    assert_eq!(json(&["clone", "ls"]), serde_json::json!([]));
    assert!(Path::new(&format!("{mnt_a}/proj-killed/after-kill")).exists());
    snapshot_commands(config, dir);
    // The metadata is clean (the one lost chunk is `/big`'s, lost on purpose earlier).
    let out = ctl(&["--config", config, "fsck", "--output", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["metadata"]["problem_count"], 0, "{report}");
    assert_eq!(report["chunks"]["lost"], 1, "{report}");
}

/// `snapshot create|ls|restore|rm`: read-only copies at `/proj/.snapshots/NAME`, through
/// both sites' mounts.
fn snapshot_commands(config: &str, dir: &str) {
    let (mnt_a, mnt_b) = (format!("{dir}/mnt/site-a"), format!("{dir}/mnt/site-b"));
    let json = |args: &[&str]| {
        let mut full = vec!["--config", config];
        full.extend_from_slice(args);
        must_json(&full)
    };
    let before = tree(Path::new(&format!("{mnt_a}/proj")));
    let s = json(&["snapshot", "create", "/proj", "s1"]);
    assert_eq!(s["dst"], "/proj/.snapshots/s1", "{s}");
    for mnt in [&mnt_a, &mnt_b] {
        assert_eq!(
            tree(Path::new(&format!("{mnt}/proj/.snapshots/s1"))),
            before,
            "{mnt}"
        );
    }
    // Not listed in the subtree's root; read-only, for the owner too.
    assert!(std::fs::read_dir(format!("{mnt_a}/proj"))
        .unwrap()
        .all(|e| e.unwrap().file_name() != ".snapshots"));
    for path in [
        format!("{mnt_a}/proj/.snapshots/s1/new"),
        format!("{mnt_a}/proj/.snapshots/new"),
        format!("{mnt_a}/proj/.snapshots/s1/src/f0"),
    ] {
        let e = std::fs::write(&path, b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{path}: {e}");
    }
    // The source goes on; the snapshot does not.
    std::fs::write(format!("{mnt_a}/proj/src/f3"), b"changed").unwrap();
    assert_eq!(
        std::fs::read(format!("{mnt_a}/proj/.snapshots/s1/src/f3")).unwrap(),
        b"0123456789"
    );
    // And after the whole cluster restarts, through the other site too.
    must_ok(&["dev", "down", "--dir", dir]);
    must_json(&["dev", "up", "--dir", dir]);
    assert_eq!(
        std::fs::read(format!("{mnt_b}/proj/.snapshots/s1/src/f3")).unwrap(),
        b"0123456789"
    );
    assert_eq!(
        std::fs::read(format!("{mnt_b}/proj/src/f3")).unwrap(),
        b"changed"
    );
    let ls = json(&["snapshot", "ls", "/proj"]);
    assert_eq!(ls[0]["name"], "s1", "{ls}");
    assert_eq!(ls[0]["path"], "/proj/.snapshots/s1");
    // Restored as a new, writable subtree.
    let r = json(&[
        "snapshot",
        "restore",
        "/proj",
        "s1",
        "--to",
        "/proj-restored",
    ]);
    assert_eq!(r["dst"], "/proj-restored", "{r}");
    assert_eq!(tree(Path::new(&format!("{mnt_a}/proj-restored"))), before);
    std::fs::write(format!("{mnt_a}/proj-restored/writable"), b"w").unwrap();
    let out = ctl(&["--config", config, "snapshot", "create", "/proj", "s1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already"));
    let gone = json(&["snapshot", "rm", "/proj", "s1"]);
    assert_eq!(gone["state"], "gone", "{gone}");
    assert_eq!(json(&["snapshot", "ls", "/proj"]), serde_json::json!([]));
    let out = ctl(&["--config", config, "snapshot", "rm", "/proj", "s1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no snapshot"));
}
