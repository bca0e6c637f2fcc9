//! `cluster init`, `fsck`, `--site`, and the metrics every process serves.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{ctl, must_json, must_ok, Down};

/// A scrape of `http://addr/metrics`.
pub(crate) fn must_scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// The sum of the samples whose name and labels start with `series`.
pub(crate) fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Poll until `series` at `addr` exceeds `above` (data nodes publish once a second).
pub(crate) fn must_grow(addr: &str, series: &str, above: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = sample(&must_scrape(addr), series);
        if v > above {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{series} at {addr} stayed at {v} (not above {above})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) fn metrics_of(status: &serde_json::Value, name: &str) -> String {
    status
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["metrics"].as_str())
        .unwrap_or_else(|| panic!("no metrics address for {name}: {status}"))
        .to_string()
}

/// The chunk files of a data node's store.
pub(crate) fn chunk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.file_name().is_some_and(|n| n.len() == 64) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn fsck_metrics_and_site_filters_on_a_dev_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let dir = dir.to_str().unwrap();
    let _down = Down(dir);
    let procs = must_json(&["dev", "up", "--dir", dir]);
    let config = format!("{dir}/cluster.toml");
    let (meta_m, data_m, mount_m) = (
        metrics_of(&procs, "meta-1"),
        metrics_of(&procs, "data-site-a"),
        metrics_of(&procs, "mount-site-a"),
    );

    // Metrics before any file work, then after: they move.
    let fuse_writes = r#"mobilus_fuse_ops_total{op="write",outcome="ok"}"#;
    let before_mount = sample(&must_scrape(&mount_m), fuse_writes);
    let before_data = sample(&must_scrape(&data_m), "mobilus_data_bytes_received_total");
    let before_meta = sample(&must_scrape(&meta_m), "mobilus_raft_applied_index");
    let mnt_a = format!("{dir}/mnt/site-a");
    // Pseudo-random, so content-defined chunking finds no repeats to dedup.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let payload: Vec<u8> = (0..6u32 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(format!("{mnt_a}/big"), &payload).unwrap();
    std::fs::create_dir(format!("{mnt_a}/dir")).unwrap();
    std::os::unix::fs::symlink("big", format!("{mnt_a}/link")).unwrap();
    assert!(must_grow(&mount_m, fuse_writes, before_mount) >= before_mount + 6.0);
    let received = must_grow(&data_m, "mobilus_data_bytes_received_total", before_data);
    assert!(received >= before_data + payload.len() as f64, "{received}");
    must_grow(&meta_m, "mobilus_raft_applied_index", before_meta);
    // The leader after the writes (a busy machine may have elected another since start).
    let leader = must_json(&["--config", &config, "cluster", "status"])["leader_id"]
        .as_u64()
        .unwrap();
    let leader_m = metrics_of(&procs, &format!("meta-{leader}"));
    let leader_scrape = must_scrape(&leader_m);
    for name in [
        "mobilus_raft_term",
        "mobilus_raft_commit_index",
        "mobilus_raft_apply_lag",
        "mobilus_raft_leader_changes_total",
        "mobilus_raft_replication_lag{member=",
        "mobilus_meta_commit_seconds_bucket{op=\"write\"",
        "mobilus_grpc_request_seconds_bucket{service=\"Meta\",method=\"Write\"",
        "# HELP mobilus_raft_term",
    ] {
        assert!(
            leader_scrape.contains(name),
            "{name} missing:\n{leader_scrape}"
        );
    }
    assert!(
        sample(
            &leader_scrape,
            r#"mobilus_meta_proposals_total{op="write",outcome="ok"}"#
        ) >= 1.0
    );
    assert!(sample(&leader_scrape, "mobilus_raft_is_leader") == 1.0);
    // Reading at site-b faults the chunks over (counted by its mount and its data node).
    let mount_b = metrics_of(&procs, "mount-site-b");
    assert_eq!(
        std::fs::read(format!("{dir}/mnt/site-b/big")).unwrap(),
        payload
    );
    must_grow(&mount_b, "mobilus_client_remote_fetches_total", 0.0);
    must_grow(&mount_b, "mobilus_fuse_op_seconds_count{op=\"read\"}", 0.0);

    // fsck: healthy, in both output modes.
    let report = must_json(&["--config", &config, "fsck"]);
    assert_eq!(report["healthy"], true, "{report}");
    let m = &report["metadata"];
    assert_eq!(m["problem_count"], 0, "{report}");
    assert_eq!(m["files"], 1);
    assert_eq!(m["symlinks"], 1);
    assert_eq!(m["directories"], 2);
    let chunks = m["referenced_chunks"].as_u64().unwrap();
    assert!(chunks >= 3, "{report}");
    let c = &report["chunks"];
    assert_eq!(c["checked"].as_u64(), Some(chunks));
    assert_eq!(c["intact"].as_u64(), Some(chunks));
    assert_eq!(
        c["copies"].as_u64(),
        Some(2 * chunks),
        "both sites: {report}"
    );
    assert!(must_ok(&["--config", &config, "fsck"]).contains("healthy"));

    // A corrupt copy at site-a: found, quarantined, exit 1; the next fsck is clean.
    let files_a = chunk_files(Path::new(&format!("{dir}/data-site-a/data")));
    let victim = files_a[0].clone();
    let name = victim.file_name().unwrap().to_owned();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&victim, &bytes).unwrap();
    let out = ctl(&["--config", &config, "fsck", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["healthy"], false);
    assert_eq!(report["chunks"]["corrupt_copies"], 1, "{report}");
    assert_eq!(report["chunks"]["lost"], 0);
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 corrupt copies"));
    must_grow(&data_m, "mobilus_data_corrupt_chunks_total", 0.0);
    assert_eq!(must_json(&["--config", &config, "fsck"])["healthy"], true);

    // The same chunk gone at site-b too: lost, and named.
    let at_b = chunk_files(Path::new(&format!("{dir}/data-site-b/data")))
        .into_iter()
        .find(|p| p.file_name() == Some(&name))
        .expect("site-b holds a copy");
    std::fs::remove_file(at_b).unwrap();
    let out = ctl(&["--config", &config, "fsck", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["chunks"]["lost"], 1, "{report}");
    assert_eq!(
        report["chunks"]["lost_hashes"][0].as_str(),
        name.to_str(),
        "{report}"
    );
    assert!(fsck_table(&config).contains("lost chunk"));

    // The other read commands in table form.
    let sites = must_ok(&["--config", &config, "site", "ls"]);
    assert!(
        sites.contains("site-a") && sites.contains("HEALTHY"),
        "{sites}"
    );
    let gc = must_ok(&["--config", &config, "gc", "--dry-run"]);
    assert!(gc.contains("COLLECTABLE") && gc.contains("site-b"), "{gc}");
    let status = must_ok(&["dev", "status", "--dir", dir]);
    assert!(
        status.contains("METRICS") && status.contains(&meta_m),
        "{status}"
    );

    // --site: one site's nodes; an unknown site is an error that lists the real ones.
    let nodes = must_json(&["--config", &config, "node", "ls", "--site", "site-b"]);
    assert_eq!(nodes.as_array().unwrap().len(), 1);
    assert_eq!(nodes[0]["site"], "site-b");
    let rows = must_json(&["--config", &config, "gc", "--dry-run", "--site", "site-a"]);
    assert_eq!(rows.as_array().unwrap().len(), 1);
    for args in [
        vec!["node", "ls", "--site", "site-z"],
        vec!["gc", "--site", "site-z"],
    ] {
        let mut full = vec!["--config", config.as_str()];
        full.extend(args);
        let out = ctl(&full);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("unknown site \"site-z\"") && err.contains("site-a, site-b"),
            "{err}"
        );
    }
    subtree_commands(&config, dir);
    super::clone::clone_commands(&config, dir, &procs);
    must_ok(&["dev", "down", "--dir", dir]);
}

/// `subtree create|ls|status|move` on the dev cluster, and their refusals.
fn subtree_commands(config: &str, dir: &str) {
    let (mnt_a, mnt_b) = (format!("{dir}/mnt/site-a"), format!("{dir}/mnt/site-b"));
    std::fs::create_dir_all(format!("{mnt_a}/proj/src")).unwrap();
    for i in 0..30 {
        std::fs::write(format!("{mnt_a}/proj/src/f{i}"), b"0123456789").unwrap();
    }
    let run = |args: &[&str]| {
        let mut full = vec!["--config", config];
        full.extend_from_slice(args);
        full.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let json = |args: &[&str]| {
        let full = run(args);
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        must_json(&refs)
    };
    let fails = |args: &[&str]| {
        let full = run(args);
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let out = ctl(&refs);
        assert_eq!(out.status.code(), Some(1), "{args:?} did not fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // An existing tree, relabelled two inodes a step.
    let s = json(&[
        "subtree", "create", "/proj", "--owner", "site-a", "--batch", "2",
    ]);
    assert_eq!(s["state"], "owned", "{s}");
    assert_eq!(s["owner"], "site-a");
    assert_eq!(s["epoch"], 1);
    assert_eq!(s["inodes"], 32, "the root, src and 30 files: {s}");
    assert_eq!(s["bytes"], 300);
    assert_eq!(s["path"], "/proj");
    let all = json(&["subtree", "ls"]);
    assert_eq!(all[0]["path"], "/", "{all}");
    assert_eq!(all[0]["owner"], serde_json::Value::Null);
    assert_eq!(all[1]["path"], "/proj", "{all}");
    let table = must_ok(&["--config", config, "subtree", "ls"]);
    assert!(
        table.contains("(shared)") && table.contains("s left"),
        "{table}"
    );
    // site-b reads but cannot write; the move is instant and fences site-a.
    assert_eq!(
        std::fs::read(format!("{mnt_b}/proj/src/f0")).unwrap(),
        b"0123456789"
    );
    let e = std::fs::write(format!("{mnt_b}/proj/new"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let err = fails(&["subtree", "move", "/proj", "--to", "site-b", "--force"]);
    assert!(
        err.contains("--force takes over only after it expires"),
        "{err}"
    );
    let s = json(&["subtree", "move", "/proj", "--to", "site-b", "--wait"]);
    assert_eq!(
        (s["owner"].as_str(), s["epoch"].as_u64()),
        (Some("site-b"), Some(2))
    );
    assert!(s["lease_left_ms"].as_i64().unwrap() > 0, "{s}");
    std::fs::write(format!("{mnt_b}/proj/new"), b"x").unwrap();
    let e = std::fs::write(format!("{mnt_a}/proj/late"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let s = json(&["subtree", "status", "/proj"]);
    assert_eq!(s["inodes"], 33, "{s}");
    // Refusals say what is wrong.
    for (args, says) in [
        (
            vec!["subtree", "create", "/proj", "--owner", "site-b"],
            "is a subtree already",
        ),
        (
            vec!["subtree", "create", "/proj/src", "--owner", "site-a"],
            "do not nest",
        ),
        (
            vec!["subtree", "create", "/dir", "--owner", "site-z"],
            "the sites are site-a, site-b",
        ),
        (
            vec!["subtree", "create", "/nowhere", "--owner", "site-a"],
            "no such file or directory",
        ),
        (
            vec!["subtree", "create", "/big", "--owner", "site-a"],
            "not a directory",
        ),
        (
            vec!["subtree", "create", "proj", "--owner", "site-a"],
            "not an absolute path",
        ),
        (
            vec!["subtree", "status", "/dir"],
            "is not a subtree; it is inside the shared root",
        ),
        (
            vec!["subtree", "move", "/proj", "--to", "site-z"],
            "unknown site",
        ),
        (vec!["subtree", "move", "/", "--to", "site-a"], "EINVAL"),
    ] {
        let err = fails(&args);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let e = std::fs::rename(format!("{mnt_b}/proj"), format!("{mnt_b}/proj2")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBUSY), "{e}");
    let e =
        std::fs::hard_link(format!("{mnt_b}/proj/new"), format!("{mnt_b}/dir/new")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EXDEV), "{e}");
    // follow-writer: site-a's first write takes the subtree back, by itself.
    let s = json(&["subtree", "policy", "/proj", "--follow-writer", "0"]);
    assert_eq!(s["policy"], "follow-writer (hold 0 ms)", "{s}");
    std::fs::write(format!("{mnt_a}/proj/back"), b"a").unwrap();
    let s = json(&["subtree", "status", "/proj"]);
    assert_eq!(
        (s["owner"].as_str(), s["epoch"].as_u64()),
        (Some("site-a"), Some(3)),
        "{s}"
    );
    let s = json(&["subtree", "policy", "/proj", "--manual"]);
    assert_eq!(s["policy"], "manual");
    let e = std::fs::write(format!("{mnt_b}/proj/new"), b"y").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    // Neither --follow-writer nor --manual: bad usage, exit 2.
    let out = ctl(&["--config", config, "subtree", "policy", "/proj"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--follow-writer"));
}

/// The table output of a failing fsck (stdout, whatever the exit code).
fn fsck_table(config: &str) -> String {
    String::from_utf8_lossy(&ctl(&["--config", config, "fsck"]).stdout).into_owned()
}

/// Metadata members started by hand, killed on drop.
struct Members(Vec<Child>);
impl Drop for Members {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn cluster_init_makes_a_cluster_of_fresh_members_and_refuses_a_second_time() {
    let meta = Path::new(super::CTL).with_file_name("mobilus-meta");
    let tmp = tempfile::tempdir().unwrap();
    let mut members = Members(Vec::new());
    let mut addrs = Vec::new();
    for id in 1..=3 {
        let ready = tmp.path().join(format!("ready-{id}"));
        let log = std::fs::File::create(tmp.path().join(format!("log-{id}"))).unwrap();
        members.0.push(
            Command::new(&meta)
                .args([
                    "--insecure",
                    "--id",
                    &id.to_string(),
                    "--listen",
                    "127.0.0.1:0",
                ])
                .arg("--data-dir")
                .arg(tmp.path().join(format!("m{id}")))
                .arg("--ready-file")
                .arg(&ready)
                .args(["--log-format", "json"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            assert!(Instant::now() < deadline, "member {id} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        addrs.push(std::fs::read_to_string(&ready).unwrap());
    }
    let all = addrs.join(",");
    // Not a cluster yet: status says so (exit 1).
    assert_eq!(
        ctl(&["--insecure", "--meta", &all, "cluster", "status"])
            .status
            .code(),
        Some(1)
    );
    let status = must_json(&["--insecure", "--meta", &all, "cluster", "init"]);
    let m = status["members"].as_array().unwrap();
    assert_eq!(m.len(), 3, "{status}");
    assert!(m.iter().all(|m| m["voter"] == true), "{status}");
    assert_eq!(status["leader_id"], 1);
    let out = ctl(&["--insecure", "--meta", &all, "cluster", "init"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already part of a cluster"), "{err}");
    // Membership by hand: remove member 3, add it back as a learner, promote it.
    let removed = must_json(&[
        "--insecure",
        "--meta",
        &all,
        "cluster",
        "members",
        "remove",
        "--id",
        "3",
    ]);
    let ids: Vec<u64> = removed["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2], "{removed}");
    let added = must_json(&[
        "--insecure",
        "--meta",
        &all,
        "cluster",
        "members",
        "add",
        "--id",
        "3",
        "--addr",
        &addrs[2],
    ]);
    let third = added["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == 3)
        .cloned()
        .unwrap_or_else(|| panic!("member 3 missing: {added}"));
    assert_eq!(third["voter"], false, "a learner first: {added}");
    let promoted = must_json(&[
        "--insecure",
        "--meta",
        &all,
        "cluster",
        "members",
        "promote",
        "--id",
        "3",
    ]);
    assert!(
        promoted["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["voter"] == true),
        "{promoted}"
    );
    let table = must_ok(&[
        "--insecure",
        "--meta",
        &all,
        "cluster",
        "members",
        "promote",
        "--id",
        "3",
    ]);
    assert!(
        table.contains("voter") && table.contains("Leader"),
        "{table}"
    );
    let snap = must_ok(&["--insecure", "--meta", &all, "cluster", "snapshot"]);
    assert!(snap.contains("snapshot requested on member 1"), "{snap}");
    let snap = must_json(&["--insecure", "--meta", &all, "cluster", "snapshot"]);
    assert_eq!(snap["member"], 1, "{snap}");
    assert!(snap["last_applied"].as_u64() > Some(0), "{snap}");
    // Removing a member that does not exist is an error, not a crash.
    let out = ctl(&[
        "--insecure",
        "--meta",
        &all,
        "cluster",
        "members",
        "remove",
        "--id",
        "42",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("member 42 is not in the cluster"), "{err}");
    // --log-format json: every line a JSON object.
    let log = std::fs::read_to_string(tmp.path().join("log-1")).unwrap();
    assert!(log.lines().count() > 0);
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!("not JSON ({e}): {line}");
        });
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
}
