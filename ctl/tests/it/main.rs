//! End-to-end tests of `mobilusctl` with a real local cluster.

mod clone;
mod operate;
mod security;
mod wan;

use std::path::Path;
use std::process::{Command, Output};

pub(crate) const CTL: &str = env!("CARGO_BIN_EXE_mobilusctl");

fn ctl(args: &[&str]) -> Output {
    ctl_in(None, args)
}

/// [`ctl`] run from `cwd` (paths in `args` relative to it, as a user types them).
fn ctl_in(cwd: Option<&Path>, args: &[&str]) -> Output {
    let meta = Path::new(CTL).with_file_name("mobilus-meta");
    assert!(
        meta.is_file(),
        "{} is missing: run `cargo build --workspace` (cargo test --workspace does)",
        meta.display()
    );
    let mut cmd = Command::new(CTL);
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    cmd.args(args)
        .env_remove("MOBILUS_META")
        .env_remove("MOBILUS_CONFIG")
        .output()
        .expect("run mobilusctl")
}

fn must_ok(args: &[&str]) -> String {
    must_ok_in(None, args)
}

fn must_ok_in(cwd: Option<&Path>, args: &[&str]) -> String {
    let out = ctl_in(cwd, args);
    assert!(
        out.status.success(),
        "mobilusctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

fn must_json(args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    serde_json::from_str(&must_ok(&all)).expect("JSON output")
}

fn pid_alive(pid: i64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// Stops the cluster even when an assertion fails.
struct Down<'a>(&'a str);
impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = ctl(&["dev", "down", "--dir", self.0]);
    }
}

#[test]
fn dev_up_status_restart_and_down_with_json_output() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let dir = dir.to_str().unwrap();
    let _down = Down(dir);
    let all = must_json(&["dev", "up", "--dir", dir]);
    let all = all.as_array().expect("array");
    let kinds: Vec<&str> = all.iter().map(|p| p["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["meta", "meta", "meta", "data", "data", "mount", "mount"]
    );
    assert!(all.iter().all(|p| p["running"] == true), "{all:?}");
    let procs: Vec<&serde_json::Value> = all.iter().filter(|p| p["kind"] == "meta").collect();
    assert_eq!(procs.iter().filter(|p| p["state"] == "Leader").count(), 1);
    let pids: Vec<i64> = all.iter().map(|p| p["pid"].as_i64().unwrap()).collect();

    // The mounts: written at site-a, read at site-b.
    let (mnt_a, mnt_b) = (format!("{dir}/mnt/site-a"), format!("{dir}/mnt/site-b"));
    std::fs::write(format!("{mnt_a}/hello"), b"from site-a").unwrap();
    assert_eq!(
        std::fs::read(format!("{mnt_b}/hello")).unwrap(),
        b"from site-a"
    );

    let config = format!("{dir}/cluster.toml");
    let status = must_json(&["--config", &config, "cluster", "status"]);
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    assert!(members
        .iter()
        .all(|m| m["voter"] == true && m["reachable"] == true));
    let leader = status["leader_id"].as_u64().unwrap();
    assert!(members
        .iter()
        .any(|m| m["id"] == leader && m["state"] == "Leader"));
    let table = must_ok(&["--config", &config, "cluster", "status"]);
    assert!(
        table.contains("Leader") && table.contains("voter"),
        "{table}"
    );

    // The site registry and GC, in JSON.
    let nodes = must_json(&["--config", &config, "node", "ls"]);
    let nodes = nodes.as_array().unwrap();
    let mut sites: Vec<&str> = nodes.iter().map(|n| n["site"].as_str().unwrap()).collect();
    sites.sort();
    assert_eq!(sites, ["site-a", "site-b"]);
    assert!(nodes
        .iter()
        .all(|n| n["healthy"] == true && n["capacity_bytes"].as_u64() > Some(0)));
    let site_rows = must_json(&["--config", &config, "site", "ls"]);
    assert!(site_rows
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["nodes"] == 1 && s["healthy_nodes"] == 1));
    for args in [vec!["gc", "--dry-run"], vec!["gc"]] {
        let mut full = vec!["--config", config.as_str()];
        full.extend(args);
        let rows = must_json(&full);
        let rows = rows.as_array().unwrap();
        assert_eq!(rows.len(), 2);
        // The data nodes' grace period (an hour by default) keeps everything here.
        assert!(
            rows.iter()
                .all(|r| r["error"].is_null() && r["deleted"] == 0),
            "{rows:?}"
        );
    }
    assert!(must_ok(&["--config", &config, "node", "ls"]).contains("site-a"));

    // The same through --meta, and through MOBILUS_CONFIG.
    let addrs: Vec<&str> = members
        .iter()
        .map(|m| m["addr"].as_str().unwrap())
        .collect();
    let tls = Path::new(dir).join("tls");
    let (ca, cert, key) = (
        tls.join("ca/ca.pem"),
        tls.join("admin.pem"),
        tls.join("admin.key"),
    );
    let via_meta = must_json(&[
        "--ca",
        ca.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--meta",
        &addrs.join(","),
        "cluster",
        "status",
    ]);
    assert_eq!(via_meta["leader_id"], status["leader_id"]);

    // Down: nothing left running. Up again: same addresses, data kept.
    let out = must_ok(&["dev", "down", "--dir", dir]);
    assert!(out.contains("stopped 7"), "{out}");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !mounts.contains(&mnt_a) && !mounts.contains(&mnt_b),
        "{mounts}"
    );
    for pid in &pids {
        assert!(
            !pid_alive(*pid),
            "process {pid} still running after dev down"
        );
    }
    let again = must_json(&["dev", "up", "--dir", dir]);
    let again = again.as_array().unwrap();
    for (a, b) in again.iter().zip(all) {
        assert_eq!(a["addr"], b["addr"]);
    }
    assert_eq!(
        std::fs::read(format!("{mnt_b}/hello")).unwrap(),
        b"from site-a"
    );
    let again: Vec<&serde_json::Value> = again.iter().filter(|p| p["kind"] == "meta").collect();
    assert!(
        again
            .iter()
            .all(|p| p["last_applied"].as_u64().unwrap() >= 7),
        "{again:?}"
    );
    must_ok(&["dev", "down", "--dir", dir]);
}

#[test]
fn completions_are_printed_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef mobilusctl"),
        ("fish", "complete -c mobilusctl"),
    ] {
        let script = must_ok(&["completions", shell]);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("node") && script.contains("gc"), "{shell}");
    }
    assert_eq!(ctl(&["completions", "tcsh"]).status.code(), Some(2));
}

#[test]
fn errors_say_what_to_do_and_use_the_documented_exit_codes() {
    // Unreachable cluster: exit 1 and a hint, for every command that needs it.
    for cmd in [["node", "ls"], ["site", "ls"]] {
        let out = ctl(&["--insecure", "--meta", "127.0.0.1:1", cmd[0], cmd[1]]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("is `mobilus-meta` running?"), "{err}");
    }
    let out = ctl(&["--insecure", "--meta", "127.0.0.1:1", "cluster", "status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the metadata service at 127.0.0.1:1"),
        "{err}"
    );
    assert!(err.contains("mobilusctl dev status"), "{err}");
    // No cluster given at all.
    let out = ctl(&["cluster", "status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--meta"));
    // Bad usage: exit 2.
    assert_eq!(ctl(&["cluster", "frobnicate"]).status.code(), Some(2));
    assert_eq!(ctl(&["dev", "up", "--meta", "zero"]).status.code(), Some(2));
    assert_eq!(ctl(&["dev", "up", "--meta", "0"]).status.code(), Some(2));
    // A folder without a cluster.
    let tmp = tempfile::tempdir().unwrap();
    let out = ctl(&["dev", "status", "--dir", tmp.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("dev up"));
    // A bad address.
    let out = ctl(&[
        "--insecure",
        "--meta",
        "not an address",
        "cluster",
        "status",
    ]);
    assert_eq!(out.status.code(), Some(1));
    // Neither certificates nor --insecure.
    let out = ctl(&["--meta", "127.0.0.1:1", "cluster", "status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--ca, --cert and --key") && err.contains("--insecure"),
        "{err}"
    );
}
