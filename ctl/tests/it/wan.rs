//! A dev cluster on an emulated WAN: each site in a network namespace of its own, every
//! connection between sites through the link proxy; the narrated demo runs across it.

use crate::{ctl, must_json, must_ok, Down};

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
    let netns = String::from_utf8(
        std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let ours: Vec<&str> = netns
        .lines()
        .filter(|l| l.starts_with("md-") && (l.contains("-site-a") || l.contains("-site-b")))
        .collect();
    assert!(ours.len() >= 2, "{netns}");

    // The story, across the WAN.
    let demo = must_ok(&["dev", "demo", "--dir", dir]);
    for told in [
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

    // Down removes the network with the processes.
    let out = must_ok(&["dev", "down", "--dir", dir]);
    assert!(out.contains("stopped 8"), "{out}");
    let netns = String::from_utf8(
        std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for ns in ours {
        let name = ns.split_whitespace().next().unwrap();
        assert!(!netns.contains(name), "{name} left after dev down: {netns}");
    }
}
