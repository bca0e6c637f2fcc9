//! A dev cluster on an emulated WAN: each site in a network namespace of its own, every
//! connection between sites through the link proxy; the narrated demo runs across it.

use crate::{ctl, must_json, must_ok, must_ok_in, Down};

/// What `ip netns list` prints.
fn netns_list() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("run ip netns list");
    String::from_utf8(out.stdout).expect("utf8")
}

/// The number before `suffix` at its first match in `text` (after the last space).
fn figure_before(text: &str, suffix: &str) -> f64 {
    let at = text
        .find(suffix)
        .unwrap_or_else(|| panic!("no {suffix:?} in {text}"));
    let head = &text[..at];
    let start = head
        .rfind(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or(0, |i| i + 1);
    head[start..]
        .parse()
        .unwrap_or_else(|_| panic!("no figure before {suffix:?} in {text}"))
}

#[test]
fn the_demo_runs_on_a_dev_cluster_across_an_emulated_wan() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let dir = dir.to_str().unwrap();
    let _down = Down(dir);

    // Bad shapes are usage errors; a WAN needs two sites.
    for bad in ["50ms", "50,100mbit", "50ms,fast", "20s,1mbit"] {
        let out = ctl(&["dev", "up", "--dir", dir, "--wan", bad]);
        assert_eq!(out.status.code(), Some(2), "--wan {bad}");
    }
    let out = ctl(&[
        "dev",
        "up",
        "--dir",
        dir,
        "--wan",
        "30ms,200mbit",
        "--sites",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--sites 2"));
    let _ = std::fs::remove_dir_all(dir);

    let all = must_json(&["dev", "up", "--dir", dir, "--wan", "30ms,200mbit"]);
    let all = all.as_array().unwrap();
    let addr_of = |name: &str| {
        let p = all.iter().find(|p| p["name"] == name).unwrap();
        assert_eq!(p["running"], true, "{p}");
        p["addr"].as_str().unwrap().to_string()
    };
    let ip = |a: String| a.split(':').next().unwrap().to_string();
    // Each site listens on its own address; the metadata members are spread over them.
    let (a, b) = (ip(addr_of("data-site-a")), ip(addr_of("data-site-b")));
    assert_ne!(a, b);
    assert_eq!(ip(addr_of("meta-1")), a);
    assert_eq!(ip(addr_of("meta-2")), b);
    assert!(addr_of("wan-link").contains("30 ms"));
    // A second network namespace per site exists while the cluster is up.
    let key = all.iter().find(|p| p["name"] == "wan-link").unwrap();
    assert_eq!(key["kind"], "wan");
    let netns = netns_list();
    // This cluster's namespaces (another test's cluster may be up meanwhile).
    let toml = std::fs::read_to_string(format!("{dir}/cluster.toml")).unwrap();
    let key: u32 = toml
        .lines()
        .find_map(|l| l.strip_prefix("key = "))
        .and_then(|k| k.trim().parse().ok())
        .unwrap_or_else(|| panic!("no WAN key in cluster.toml: {toml}"));
    let prefix = format!("md-{key:04x}-");
    let ours: Vec<&str> = netns.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert_eq!(ours.len(), 2, "{netns}");

    // The story, across the WAN (its PostgreSQL step small: the prerequisites install
    // PostgreSQL, so the step runs here), with the folder named relative to the working
    // directory, as `./demo.sh` names it.
    let folder = std::path::Path::new(dir);
    let (parent, name) = (folder.parent().unwrap(), folder.file_name().unwrap());
    let demo = must_ok_in(
        Some(parent),
        &[
            "dev",
            "demo",
            "--dir",
            name.to_str().unwrap(),
            "--pg-scale",
            "1",
            "--pg-first-secs",
            "4",
            "--pg-steady-secs",
            "2",
        ],
    );
    for told in [
        "7. A PostgreSQL server moves too",
        "the server started at site-b in",
        "its data had followed",
        "PostgreSQL moved in",
        "faulted over from site-a",
        "a late write at site-a, the old owner, is refused",
        "round trips of the 30 ms WAN",
        "the data has followed",
        "same scan again: 0 chunks fetched",
        "crossed the WAN from site-b",
        "In all over a 30 ms WAN",
    ] {
        assert!(demo.contains(told), "{told:?} not in:\n{demo}");
    }
    assert!(
        demo.contains("backup 2 (") && demo.contains("received 0.0 MiB and stored 0.0 MiB"),
        "{demo}"
    );
    // Moving back after changing 5% of the rows sends a small part of the subtree.
    let back = demo.lines().find(|l| l.contains("back at site-a")).unwrap();
    let share = figure_before(back, "%)");
    assert!(share < 10.0, "moving back sent {share}% of /demo: {back}");
    let png = std::fs::read(format!("{dir}/demo-follow.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "the plot is a PNG");
    // Bytes crossed the link both ways, as the proxy counted them.
    let crossed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{dir}/wan/crossed.json")).unwrap()).unwrap();
    let ab = crossed["bytes"]["site-a"]["site-b"].as_u64().unwrap();
    assert!(ab > 10 << 20, "site-a to site-b: {ab} bytes");
    // Site-b's mount, holding a subtree's delegation, read it at site-b's own member.
    let status = must_json(&["dev", "status", "--dir", dir]);
    let meta_b = super::operate::must_scrape(&super::operate::metrics_of(&status, "meta-2"));
    let answered = super::operate::sample(
        &meta_b,
        "mobilus_meta_holder_reads_total{outcome=\"answered\"}",
    );
    assert!(
        answered > 0.0,
        "no holder read at site-b's member:\n{meta_b}"
    );

    // Down removes the network with the processes.
    let out = must_ok(&["dev", "down", "--dir", dir]);
    assert!(out.contains("stopped 8"), "{out}");
    let netns = netns_list();
    for ns in ours {
        let name = ns.split_whitespace().next().unwrap();
        assert!(!netns.contains(name), "{name} left after dev down: {netns}");
    }
}

fn sqlite(db: &std::path::Path, sql: &str) -> String {
    let out = std::process::Command::new("sqlite3")
        .arg("-batch")
        .arg(db)
        .arg(sql)
        .output()
        .expect("run sqlite3");
    assert!(
        out.status.success(),
        "sqlite3 {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Rows of the database: 210,000 of about 1 KiB (over 200 MiB on disk).
const ROWS: u64 = 210_000;

/// `count|sum(v)` of ids `lo..=hi` as the database was built.
fn expected(lo: u64, hi: u64) -> String {
    let sum: u64 = (lo..=hi).map(|i| (i * 7919) % 10007).sum();
    format!("{}|{sum}", hi - lo + 1)
}

/// A live SQLite database of 200 MiB, written at site-a until it moves, moves to site-b
/// across the emulated WAN: site-b answers a query at once and right while it holds
/// fewer than half of the database's chunks; it writes; once the data has followed,
/// both sites read the same whole database; site-b rewrites 5% of the rows and the
/// database moves back, and site-a fetches about 5% of it.
#[test]
fn a_live_200_mib_database_moves_across_the_wan_and_back() {
    let t0 = std::time::Instant::now();
    let phase = |what: &str| eprintln!("[{:6.1} s] {what}", t0.elapsed().as_secs_f64());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let dir = dir.to_str().unwrap();
    let _down = Down(dir);
    must_ok(&["dev", "up", "--dir", dir, "--wan", "20ms,200mbit"]);
    let config = format!("{dir}/cluster.toml");
    let (a, b) = (
        std::path::PathBuf::from(format!("{dir}/mnt/site-a/db")),
        std::path::PathBuf::from(format!("{dir}/mnt/site-b/db")),
    );
    std::fs::create_dir(&a).unwrap();
    must_ok(&[
        "--config", &config, "subtree", "create", "/db", "--owner", "site-a",
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while must_json(&["--config", &config, "subtree", "status", "/db"])["lease_left_ms"]
        .as_i64()
        .unwrap_or(0)
        <= 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "site-a never got a lease"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    phase("cluster up, /db owned by site-a");
    let db_a = a.join("live.db");
    sqlite(
        &db_a,
        &format!(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, k INT, v INT, pad BLOB);
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {ROWS})
             INSERT INTO t SELECT i, i % 977, (i * 7919) % 10007, randomblob(1000) FROM s;"
        ),
    );
    let size = std::fs::metadata(&db_a).unwrap().len();
    assert!(size >= 200 << 20, "the database is {size} bytes");

    phase("database built");
    // Writes at site-a until the application stops there and the subtree moves.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db_a.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = 1_000_000 + n;
                sqlite(
                    &db,
                    &format!("INSERT INTO t VALUES ({id}, 0, 1, randomblob(1000));"),
                );
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(std::time::Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written_at_a = writer.join().unwrap();
    assert!(written_at_a > 0);
    must_ok(&[
        "--config", &config, "subtree", "move", "/db", "--to", "site-b", "--data", "eager",
    ]);

    phase("moved to site-b");
    // Site-b answers at once, right, while most of the data is still at site-a.
    let db_b = b.join("live.db");
    assert_eq!(
        sqlite(
            &db_b,
            "SELECT count(*), sum(v) FROM t WHERE id BETWEEN 100000 AND 100999;"
        ),
        expected(100_000, 100_999)
    );
    let held_at_b = crate::operate::chunk_files(std::path::Path::new(&format!("{dir}/data-site-b")))
        .len() as u64;
    let status = must_json(&["--config", &config, "subtree", "status", "/db"]);
    let chunks = status["usage"]["chunks"].as_u64().unwrap();
    assert!(
        held_at_b * 2 < chunks,
        "site-b held {held_at_b} of the database's {chunks} chunks when it answered"
    );
    phase("site-b answered");
    // It writes, and the data follows.
    sqlite(
        &db_b,
        "INSERT INTO t SELECT 2000000 + id, 0, 1, randomblob(1000) FROM t WHERE id <= 100;",
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let rows = must_json(&["--config", &config, "replication", "status", "/db"]);
        let caught_up = rows.as_array().unwrap().iter().any(|r| {
            r["site"] == "site-b"
                && r["chunks_to_go"] == 0
                && r["cursor"].as_u64() >= r["head"].as_u64()
                && !r["reported_ms_ago"].is_null()
        });
        if caught_up {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "site-b never caught up: {rows}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    phase("the data followed");
    let total_rows = ROWS + written_at_a + 100;
    for db in [&db_b, &db_a] {
        assert_eq!(
            sqlite(db, "PRAGMA integrity_check;"),
            "ok",
            "{}",
            db.display()
        );
        assert_eq!(
            sqlite(db, "SELECT count(*) FROM t;"),
            total_rows.to_string(),
            "{}",
            db.display()
        );
        assert_eq!(
            sqlite(db, "SELECT count(*), sum(v) FROM t WHERE id <= 210000;"),
            expected(1, ROWS)
        );
    }

    phase("both sites read it whole");
    // Site-b rewrites 5% of the rows; moving back sends about that much.
    sqlite(
        &db_b,
        &format!(
            "UPDATE t SET pad = randomblob(1000) WHERE id <= {};",
            ROWS / 20
        ),
    );
    let status = must_json(&["dev", "status", "--dir", dir]);
    let data_a = crate::operate::metrics_of(&status, "data-site-a");
    let received = "mobilus_data_bytes_received_total";
    let before = crate::operate::sample(&crate::operate::must_scrape(&data_a), received);
    must_ok(&[
        "--config", &config, "subtree", "move", "/db", "--to", "site-a", "--data", "eager",
        "--wait",
    ]);
    phase("moved back with its data");
    // (The counter is published once a second.)
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let fetched = crate::operate::sample(&crate::operate::must_scrape(&data_a), received) - before;
    let share = fetched / size as f64;
    eprintln!(
        "moving back after changing 5% of the rows: site-a fetched {:.1} MiB of {:.1} MiB ({:.1}%)",
        fetched / f64::from(1u32 << 20),
        size as f64 / f64::from(1u32 << 20),
        share * 100.0
    );
    assert!(
        (0.02..=0.10).contains(&share),
        "moving back fetched {:.1}% of the database",
        share * 100.0
    );
    assert_eq!(
        sqlite(&db_a, "SELECT count(*) FROM t;"),
        total_rows.to_string()
    );
}
