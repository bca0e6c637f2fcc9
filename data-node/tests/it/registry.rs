//! A data node registers with a real metadata member and keeps heartbeating.

use std::time::{Duration, Instant};

use mobilus_meta_client::MetaClient;

use crate::procs::{data_bin, sibling, spawn};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_node_registers_its_site_and_heartbeats() {
    let tmp = tempfile::tempdir().unwrap();
    let meta_dir = tmp.path().join("meta");
    let (_meta, meta_addr) = spawn(
        &sibling("mobilus-meta"),
        &[
            "--id",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--init",
            "--data-dir",
            meta_dir.to_str().unwrap(),
        ],
        &tmp.path().join("meta-ready"),
    );
    let data_dir = tmp.path().join("data");
    let (_data, data_addr) = spawn(
        &data_bin(),
        &[
            "--site",
            "site-a",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--meta",
            &meta_addr,
            "--heartbeat-ms",
            "200",
        ],
        &tmp.path().join("data-ready"),
    );
    let client = MetaClient::connect(&[meta_addr]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let Ok((nodes, _)) = client.list_data_nodes(Some("site-a"), false).await {
            if let Some(n) = nodes.into_iter().find(|n| n.addr == data_addr) {
                break n;
            }
        }
        assert!(Instant::now() < deadline, "the data node never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        first.capacity_bytes > 0,
        "capacity comes from the disk: {first:?}"
    );
    // Its heartbeats report its workers.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (nodes, _) = client.list_data_nodes(Some("site-a"), false).await.unwrap();
        let me = nodes.iter().find(|n| n.addr == data_addr).unwrap();
        let named = |name: &str| me.workers.iter().find(|w| w.name == name);
        if let (Some(hb), Some(_)) = (named("heartbeat"), named("replicate")) {
            assert!(!hb.backing_off, "{me:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no worker reported: {me:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        client.statfs(false).await.unwrap().total_bytes,
        first.capacity_bytes
    );
    // A later heartbeat moves its time forward; the answering member's clock is given too.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (nodes, now) = client.list_data_nodes(Some("site-a"), false).await.unwrap();
        let n = &nodes[0];
        if n.last_heartbeat_ns > first.last_heartbeat_ns {
            assert!(now >= n.last_heartbeat_ns - 1_000_000_000);
            break;
        }
        assert!(Instant::now() < deadline, "no second heartbeat");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(client
        .list_data_nodes(Some("site-b"), false)
        .await
        .unwrap()
        .0
        .is_empty());
}
