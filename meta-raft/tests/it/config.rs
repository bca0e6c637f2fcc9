//! The binary's configuration: a TOML file, flags over it, and clear refusals.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::BIN;

fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .arg("--insecure")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err)
                .expect("read");
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("mobilus-meta {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_starts_a_member_and_flags_override_it() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("meta.toml");
    let data = tmp.path().join("data");
    std::fs::write(
        &file,
        format!(
            "id = 7\nlisten = \"127.0.0.1:1\"\ndata_dir = {:?}\ninit = true\nheartbeat_ms = 50\n",
            data
        ),
    )
    .unwrap();
    let ready = tmp.path().join("ready");
    // The file says port 1 (unbindable); the flag wins.
    let tls = mobilus_tls::pki::test_pki()
        .unwrap()
        .flags(mobilus_tls::Role::Meta, None, "meta")
        .unwrap();
    let mut child = Command::new(BIN)
        .args(tls)
        .args([
            "--config",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--ready-file",
        ])
        .arg(&ready)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        assert!(
            Instant::now() < deadline,
            "member from a config file did not start"
        );
        assert!(child.try_wait().unwrap().is_none(), "member exited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let addr = std::fs::read_to_string(&ready).unwrap();
    let client = mobilus_meta_client::MetaClient::new(&[addr], crate::harness::opts()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        match client.status().await {
            Ok(s) => break s,
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.id, 7);
    assert!(data.join("raft-log").is_dir() && data.join("sm").is_dir());
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let code = child.wait().unwrap();
    assert!(code.success(), "SIGTERM exit: {code}");
}

#[test]
fn bad_configuration_is_refused_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let d = data.to_str().unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "id = 1\nfavourite_colour = \"blue\"\n").unwrap();
    let garbage = tmp.path().join("garbage.toml");
    std::fs::write(&garbage, [0xff, 0xfe, 0x00, 0x41]).unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--data-dir", d], "missing setting `id`"),
        (vec!["--id", "1"], "missing setting `data_dir`"),
        (vec!["--id", "0", "--data-dir", d], "0 is reserved"),
        (
            vec!["--id", "1", "--data-dir", d, "--heartbeat-ms", "1"],
            "heartbeat_ms",
        ),
        (
            vec!["--id", "1", "--data-dir", d, "--request-buffer-mib", "0"],
            "request_buffer_mib",
        ),
        (vec!["--config", bad.to_str().unwrap()], "unknown field"),
        (vec!["--config", garbage.to_str().unwrap()], "garbage.toml"),
        (
            vec!["--config", "/nonexistent/meta.toml"],
            "cannot read config file",
        ),
        (
            vec!["--id", "1", "--data-dir", d, "--listen", "not-an-address"],
            "cannot listen",
        ),
    ];
    for (args, want) in cases {
        let (code, err) = run_to_exit(&args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
    let (code, _) = run_to_exit(&["--id", "x"]);
    assert_eq!(code, Some(2), "bad flag values are usage errors");
}
