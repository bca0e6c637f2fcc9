//! Real runs: a cluster on namespaced hosts (root), workloads under partitions and kills,
//! and the deliberate stale-read bug, which the harness must catch.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const JEPSEN: &str = env!("CARGO_BIN_EXE_mobilus-jepsen");

fn bin_dir() -> PathBuf {
    let dir = Path::new(JEPSEN).parent().expect("bin dir").to_path_buf();
    for b in ["mobilus-meta", "mobilus-data", "mobilus-mount"] {
        assert!(
            dir.join(b).is_file(),
            "{b} is missing: run `cargo build --workspace --bins` (cargo test --workspace does)"
        );
    }
    dir
}

/// Runs one at a time: each starts a whole cluster, and the leftover checks below must
/// not see another run's processes.
static ONE_RUN_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Run the harness; return its output and the run folder's results.
fn must_run(out: &Path, args: &[&str]) -> (Output, serde_json::Value) {
    let _one = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let spawned = Command::new(JEPSEN)
        .arg("run")
        .args(["--no-build", "--bin-dir"])
        .arg(bin_dir())
        .arg("--out")
        .arg(out)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run mobilus-jepsen");
    let pid = spawned.id();
    let child = spawned.wait_with_output().expect("wait for mobilus-jepsen");
    let results = std::fs::read_to_string(out.join("results.json")).unwrap_or_else(|e| {
        panic!(
            "no results.json ({e}); stderr:\n{}",
            String::from_utf8_lossy(&child.stderr)
        )
    });
    // Nothing of this run left behind: namespaces, bridge, processes.
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let leftover = String::from_utf8_lossy(&netns.stdout).into_owned();
    assert!(
        !leftover.contains(&format!("mj-{pid}-")),
        "namespaces left: {leftover}"
    );
    let links = Command::new("ip").args(["link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    assert!(
        !links.contains(&format!("mjb{pid}")),
        "bridge left: {links}"
    );
    let bin = bin_dir().display().to_string();
    let procs = Command::new("pgrep")
        .args(["-f", &format!("{bin}/mobilus-(meta|data|mount)")])
        .output()
        .unwrap();
    assert!(
        procs.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&procs.stdout)
    );
    (child, serde_json::from_str(&results).expect("results.json"))
}

/// A run of `workload` with 8 clients: `nemesis` every `interval` s (mean), for `limit` s.
fn must_run_workload(
    out: &Path,
    workload: &str,
    nemesis: &str,
    interval: &str,
    limit: &str,
    seed: &str,
    extra: &[&str],
) -> (Output, serde_json::Value) {
    let mut args = vec![
        "--workload",
        workload,
        "--nemesis",
        nemesis,
        "--nemesis-interval",
        interval,
        "--time-limit",
        limit,
        "--concurrency",
        "8",
        "--seed",
        seed,
    ];
    args.extend_from_slice(extra);
    must_run(out, &args)
}

/// A register run (see [`must_run_workload`]).
fn must_run_registers(
    out: &Path,
    nemesis: &str,
    interval: &str,
    limit: &str,
    seed: &str,
    extra: &[&str],
) -> (Output, serde_json::Value) {
    must_run_workload(out, "register", nemesis, interval, limit, seed, extra)
}

/// An ownership run: both sites write a subtree that moves (1 s operation timeouts).
fn must_run_owned(
    out: &Path,
    nemesis: &str,
    interval: &str,
    limit: &str,
    seed: &str,
    extra: &[&str],
) -> (Output, serde_json::Value) {
    let mut all = vec!["--op-timeout-ms", "1000"];
    all.extend_from_slice(extra);
    must_run_workload(out, "ownership", nemesis, interval, limit, seed, &all)
}

#[test]
fn registers_stay_linearizable_under_partitions_kills_pauses_and_membership_changes() {
    // Reads are served under the leader's lease here (the default): pauses of the
    // leader longer than the lease, partitions, restarts and membership changes must
    // not open a window with two lease holders.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (child, r) = must_run_registers(
        &out,
        "partition,kill,pause,membership",
        "3",
        "25",
        "11",
        &[],
    );
    assert_eq!(child.status.code(), Some(0), "{r}");
    assert_eq!(r["valid"], true);
    assert_eq!(r["register"]["verdict"], "linearizable", "{r}");
    assert!(r["operations"]["ok"].as_u64().unwrap() > 1000, "{r}");
    assert!(r["faults"].as_array().unwrap().len() >= 2, "{r}");
    for f in [
        "history.jsonl",
        "history.edn",
        "index.html",
        "timeline.svg",
        "latency.svg",
        "throughput.svg",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // The exported EDN history checks the same, by the check command alone.
    let check = Command::new(JEPSEN)
        .args(["check", "--time-limit", "120"])
        .arg(out.join("history.edn"))
        .output()
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    // The report can be drawn again from the folder alone.
    let report = Command::new(JEPSEN)
        .arg("report")
        .arg(&out)
        .output()
        .unwrap();
    assert!(report.status.success());
}

#[test]
fn directory_creates_are_never_lost_under_partitions_kills_pauses_and_slow_links() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (child, r) = must_run(
        &out,
        &[
            "--workload",
            "set",
            "--nemesis",
            "partition,kill,pause,link",
            "--nemesis-interval",
            "3",
            "--time-limit",
            "20",
            "--concurrency",
            "8",
            "--seed",
            "12",
        ],
    );
    assert_eq!(child.status.code(), Some(0), "{r}");
    let s = &r["set"];
    assert_eq!(s["valid"], true, "{r}");
    assert!(s["acknowledged"].as_u64().unwrap() > 500, "{r}");
    assert_eq!(s["lost"].as_array().unwrap().len(), 0);
    assert_eq!(s["final_read"], true);
}

#[test]
fn fsynced_files_survive_kills_and_restarts_through_real_mounts() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (child, r) = must_run(
        &out,
        &[
            "--workload",
            "durability",
            "--nemesis",
            "partition,kill",
            "--nemesis-interval",
            "3",
            "--time-limit",
            "20",
            "--concurrency",
            "4",
            "--seed",
            "14",
        ],
    );
    assert_eq!(child.status.code(), Some(0), "{r}");
    let d = &r["durability"];
    assert_eq!(d["valid"], true, "{r}");
    assert_eq!(d["lost_bytes"], 0);
    assert_eq!(d["files"], 12, "{r}");
    assert!(d["acknowledged_writes"].as_u64().unwrap() > 50, "{r}");
    // The mounts went with their workers.
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(out.to_str().unwrap()), "{mounts}");
}

#[test]
fn the_injected_stale_read_bug_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (child, r) = must_run_registers(
        &out,
        "partition",
        "2",
        "20",
        "13",
        &["--unsafe-local-reads"],
    );
    assert_eq!(child.status.code(), Some(1), "the bug went unnoticed: {r}");
    assert_eq!(r["register"]["verdict"], "not-linearizable");
    // A read is the counterexample: either the operation no order can take next, or
    // the last one taken before it (the stale read linearized, the next write or CAS
    // then impossible; which of the two the search reports depends on the schedule).
    let c = &r["register"]["counterexample"];
    let last_taken = c["linearized_tail"]
        .as_array()
        .and_then(|t| t.last())
        .map(|op| op["f"].clone());
    assert!(
        c["blocked"]["f"] == "read" || last_taken == Some(serde_json::json!("read")),
        "{c}"
    );
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(html.contains("INVALID"));
}

#[test]
fn a_read_lease_longer_than_the_election_timeout_is_caught() {
    // 10 s of lease against a 1 s leader lease: the leader, cut off with one site's
    // clients, keeps answering their reads while the majority elects another leader and
    // the other site's clients write. Short operation timeouts keep the cut-off clients
    // from spending the partition in hung writes.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (child, r) = must_run_registers(
        &out,
        "leader-minority",
        "6",
        "20",
        "15",
        &["--op-timeout-ms", "500", "--unsafe-read-lease-ms", "10000"],
    );
    assert_eq!(child.status.code(), Some(1), "the bug went unnoticed: {r}");
    assert_eq!(r["register"]["verdict"], "not-linearizable", "{r}");
    assert_eq!(r["unsafe_read_lease_ms"], 10000, "{r}");
}

#[test]
fn a_subtree_moved_and_taken_over_is_changed_only_by_its_owner_and_stays_linearizable() {
    // Clients of both sites write registers in the subtree; it moves to the other site,
    // then its owner's agent is stopped until the lease runs out and the subtree is taken
    // over by force while that site's clients keep writing.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // A third client host, at site-b, claims site-a in every request with its own site-b
    // certificate: the members refuse all of it.
    let (child, r) = must_run_owned(
        &out,
        "move,takeover,partition,pause",
        "3",
        "25",
        "21",
        &["--forging-client"],
    );
    assert_eq!(child.status.code(), Some(0), "{r}");
    assert_eq!(r["register"]["verdict"], "linearizable", "{r}");
    let o = &r["ownership"];
    assert_eq!(o["valid"], true, "{o}");
    assert!(o["refused_forged"].as_u64().unwrap() > 50, "{o}");
    assert!(o["moves_ok"].as_u64().unwrap() >= 2, "{o}");
    assert!(o["writes_judged"].as_u64().unwrap() > 500, "{o}");
    assert!(o["refused_not_owner"].as_u64().unwrap() > 100, "{o}");
    let faults = r["faults"].to_string();
    assert!(faults.contains("take over the subtree"), "{faults}");
}

#[test]
fn disabling_the_ownership_check_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (child, r) = must_run_owned(
        &out,
        "move",
        "2",
        "10",
        "1",
        &["--unsafe-no-ownership-check"],
    );
    assert_eq!(child.status.code(), Some(1), "the bug went unnoticed: {r}");
    let o = &r["ownership"];
    assert_eq!(o["valid"], false, "{o}");
    assert!(o["violation_count"].as_u64().unwrap() > 0, "{o}");
    assert_eq!(r["unsafe_no_ownership_check"], true);
}

/// Members that believe the site a request claims (`--unsafe-no-site-binding`) let the
/// forging client of site-b write site-a's subtree: the ownership check must catch it.
#[test]
fn disabling_the_site_binding_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (child, r) = must_run_owned(
        &out,
        "move",
        "2",
        "10",
        "1",
        &["--forging-client", "--unsafe-no-site-binding"],
    );
    assert_eq!(child.status.code(), Some(1), "the bug went unnoticed: {r}");
    let o = &r["ownership"];
    assert_eq!(o["valid"], false, "{o}");
    assert!(o["violation_count"].as_u64().unwrap() > 0, "{o}");
    assert_eq!(o["refused_forged"], 0, "{o}");
    assert_eq!(r["unsafe_no_site_binding"], true);
    assert_eq!(r["forging_client"], true);
}

/// A delegation run: two mounts of the owner site read and write registers as files.
fn must_run_delegated(
    out: &Path,
    nemesis: &str,
    limit: &str,
    seed: &str,
    extra: &[&str],
) -> (Output, serde_json::Value) {
    // Long enough for a write that waits out a paused holder's delegation (10 s).
    let mut all = vec!["--op-timeout-ms", "15000", "--check-time-limit", "60"];
    all.extend_from_slice(extra);
    let mut args = vec![
        "--workload",
        "delegation",
        "--nemesis-interval",
        "3",
        "--time-limit",
        limit,
        "--concurrency",
        "6",
        "--seed",
        seed,
    ];
    if !nemesis.is_empty() {
        args.extend(["--nemesis", nemesis]);
    }
    args.extend_from_slice(&all);
    must_run(out, &args)
}

#[test]
fn two_mounts_of_the_owner_site_read_fresh_values_while_the_delegation_moves_between_them() {
    // The mounts write in turns: the writer takes the subtree's delegation and answers
    // from its cache; the other's first write of its turn recalls it. The holder is
    // paused across a change of turns (its recall waits), and a mount's host is cut off.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (child, r) = must_run_delegated(&out, "mount", "25", "34", &[]);
    assert_eq!(child.status.code(), Some(0), "{r}");
    let s = &r["staleness"];
    assert_eq!(s["valid"], true, "{s}");
    assert_eq!(s["bound_ms"], 2000, "{s}");
    assert!(s["reads_checked"].as_u64().unwrap() > 1000, "{s}");
    assert!(s["writes"].as_u64().unwrap() > 300, "{s}");
    assert_eq!(r["register"]["verdict"], "linearizable", "{r}");
    let faults = r["faults"].to_string();
    assert!(faults.contains("pause the mount"), "{faults}");
    assert!(faults.contains("cut off the mount's host"), "{faults}");
    // The delegation was held by both mounts in turn, and recalled.
    let logs = String::from_utf8_lossy(&child.stderr);
    assert!(
        logs.matches("holding the subtree's delegation").count() >= 2,
        "{logs}"
    );
    assert!(
        logs.contains("gave the subtree's delegation back"),
        "{logs}"
    );
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(out.to_str().unwrap()), "{mounts}");
}

#[test]
fn disabling_the_delegation_check_is_caught() {
    // Writes no longer recall the holder, which keeps serving what it cached.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (child, r) = must_run_delegated(&out, "", "15", "32", &["--unsafe-no-delegation-check"]);
    assert_eq!(child.status.code(), Some(1), "the bug went unnoticed: {r}");
    let s = &r["staleness"];
    assert_eq!(s["valid"], false, "{s}");
    assert!(s["stale_count"].as_u64().unwrap() > 0, "{s}");
    // Stale by more than the bound, in nanoseconds; shown in whole milliseconds.
    assert!(
        s["stale"][0]["stale_by_ms"].as_u64().unwrap() >= 2000,
        "{s}"
    );
    assert_eq!(r["unsafe_no_delegation_check"], true);
}

#[test]
fn check_exit_codes_follow_the_verdict() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.edn");
    std::fs::write(
        &good,
        "{:process 0, :type :invoke, :f :write, :value 1}\n{:process 0, :type :ok, :f :write, :value 1}\n\
         {:process 1, :type :invoke, :f :read, :value nil}\n{:process 1, :type :ok, :f :read, :value 1}\n",
    )
    .unwrap();
    let bad = tmp.path().join("bad.edn");
    std::fs::write(
        &bad,
        "{:process 0, :type :invoke, :f :write, :value 1}\n{:process 0, :type :ok, :f :write, :value 1}\n\
         {:process 1, :type :invoke, :f :read, :value nil}\n{:process 1, :type :ok, :f :read, :value 2}\n",
    )
    .unwrap();
    let garbage = tmp.path().join("garbage.jsonl");
    std::fs::write(&garbage, "not a history\n").unwrap();
    let code = |args: &[&str], file: &Path| {
        Command::new(JEPSEN)
            .arg("check")
            .args(args)
            .arg(file)
            .output()
            .unwrap()
            .status
            .code()
    };
    assert_eq!(code(&[], &good), Some(0));
    assert_eq!(code(&["--model", "register"], &good), Some(0));
    assert_eq!(code(&[], &bad), Some(1));
    assert_eq!(code(&[], &garbage), Some(2));
    assert_eq!(code(&[], &tmp.path().join("missing.jsonl")), Some(2));
    // JSON lines exported from EDN check the same.
    let jsonl = tmp.path().join("bad.jsonl");
    let out = Command::new(JEPSEN)
        .arg("check")
        .arg(&bad)
        .arg("--export")
        .arg(&jsonl)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(code(&["--format", "json"], &jsonl), Some(1));
    assert_eq!(
        Command::new(JEPSEN)
            .args(["check", "--model", "nope"])
            .arg(&good)
            .output()
            .unwrap()
            .status
            .code(),
        Some(2)
    );
}

/// A replication run: site-a writes fsynced files into a subtree site-b follows
/// eagerly, while the sites split apart or only their data nodes are cut apart (seed 21:
/// a split, then two cuts).
fn must_run_replication(out: &Path, seed: &str, extra: &[&str]) -> (Output, serde_json::Value) {
    let mut args = vec![
        "--workload",
        "replication",
        "--nemesis",
        "sites",
        "--nemesis-interval",
        "4",
        "--time-limit",
        "24",
        "--concurrency",
        "4",
        "--seed",
        seed,
    ];
    args.extend_from_slice(extra);
    must_run(out, &args)
}

#[test]
fn replication_catches_up_after_the_sites_split_and_sends_nothing_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (child, r) = must_run_replication(&out, "21", &[]);
    assert_eq!(child.status.code(), Some(0), "{r}");
    let faults: Vec<&str> = r["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["description"].as_str().unwrap())
        .collect();
    assert!(
        faults.iter().any(|f| f.starts_with("split the sites")),
        "{faults:?}"
    );
    assert!(
        faults.iter().any(|f| f.starts_with("cut the data nodes")),
        "{faults:?}"
    );
    let d = &r["durability"];
    assert_eq!(d["valid"], true, "{r}");
    assert!(d["acknowledged_writes"].as_u64().unwrap() > 30, "{r}");
    // Every acknowledged file read back at site-b with site-a's data node dead.
    assert_eq!(d["unread"].as_array().unwrap().len(), 0, "{r}");
    let rep = &r["replication"];
    assert_eq!(rep["valid"], true, "{r}");
    assert_eq!(rep["caught_up"], true, "{r}");
    assert_eq!(rep["resend_checked"], true, "{r}");
    assert!(rep["bytes_stored"].as_u64().unwrap() > 20 << 20, "{r}");
    let ratio = rep["crossed_per_stored"].as_f64().unwrap();
    assert!((1.0..1.02).contains(&ratio), "{r}");
}

#[test]
fn the_injected_replication_bug_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (child, r) = must_run_replication(&out, "21", &["--unsafe-skip-failed-fetches"]);
    assert_eq!(child.status.code(), Some(1), "the bug went unnoticed: {r}");
    assert_eq!(r["unsafe_skip_failed_fetches"], true);
    // The follower passed chunks it never fetched: once site-a's data node is gone,
    // acknowledged files cannot be read whole at site-b.
    let d = &r["durability"];
    assert_eq!(d["valid"], false, "{r}");
    let lost = d["lost_files"].as_array().unwrap().len() + d["unread"].as_array().unwrap().len();
    assert!(lost > 0, "{r}");
}
