//! A partition by dropped traffic (the in-process fault-injecting network), not by
//! stopping processes.

use std::time::{Duration, Instant};

use mobilus_meta::config::NodeConfig;
use mobilus_meta::server::{self, ServerHandle};
use mobilus_meta::types::{Op, OpReply};
use mobilus_meta::MetaError;
use mobilus_proto::fs::ROOT_INO;

fn config(id: u64, dir: &std::path::Path) -> NodeConfig {
    NodeConfig {
        id,
        listen: "127.0.0.1:0".into(),
        advertise: None,
        data_dir: dir.join(format!("m{id}")),
        join: vec![],
        init: id == 1,
        snapshot_logs: 10_000,
        keep_logs: 1000,
        heartbeat_ms: 50,
        unsafe_local_reads: false,
    }
}

fn mkdir(name: &str) -> Op {
    Op::Mkdir {
        parent: ROOT_INO,
        name: name.as_bytes().to_vec(),
        mode: 0o755,
        uid: 0,
        gid: 0,
    }
}

async fn leader_among(nodes: &[&ServerHandle]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(i) = nodes.iter().position(|n| n.node.status().state == "Leader") {
            return i;
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_by_dropped_traffic_loses_leadership_and_catches_up_after_healing() {
    let tmp = tempfile::tempdir().unwrap();
    let n1 = server::start(&config(1, tmp.path())).await.unwrap();
    let n2 = server::start(&config(2, tmp.path())).await.unwrap();
    let n3 = server::start(&config(3, tmp.path())).await.unwrap();
    leader_among(&[&n1]).await;
    for n in [&n2, &n3] {
        n1.node
            .add_learner(n.node.id, n.addr().to_string())
            .await
            .unwrap();
        n1.node.promote(n.node.id).await.unwrap();
    }
    let nodes = [&n1, &n2, &n3];
    let l = leader_among(&nodes).await;
    let (leader, others) = (nodes[l], [nodes[(l + 1) % 3], nodes[(l + 2) % 3]]);
    assert!(matches!(
        leader.node.propose(None, mkdir("before")).await,
        Ok(OpReply::Attr(_))
    ));

    // Cut the leader off: it drops traffic to and from the others, and they drop its.
    for o in others {
        leader.node.faults.block(o.node.id);
        o.node.faults.block(leader.node.id);
    }
    let old = leader.node.clone();
    let pending = tokio::spawn(async move { old.propose_local(None, mkdir("minority")).await });

    // The majority elects a leader of its own and commits.
    let majority = others[leader_among(&others).await];
    assert!(matches!(
        majority.node.propose(None, mkdir("majority")).await,
        Ok(OpReply::Attr(_))
    ));
    // The old leader cannot confirm a read index, so it serves no linearizable read.
    let read = leader
        .node
        .read(false, |ns| ns.lookup(ROOT_INO, b"majority"))
        .await;
    assert!(
        matches!(
            read,
            Err(MetaError::Unavailable(_) | MetaError::NotLeader(_))
        ),
        "{read:?}"
    );

    // Heal: the old leader steps down; its write was never acknowledged.
    for n in nodes {
        n.node.faults.heal();
    }
    let outcome = tokio::time::timeout(Duration::from_secs(20), pending)
        .await
        .unwrap()
        .unwrap();
    assert!(
        outcome.is_err(),
        "a write proposed on the cut-off leader was acknowledged: {outcome:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while leader
        .node
        .read(true, |ns| ns.lookup(ROOT_INO, b"majority"))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the old leader never caught up after healing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(leader
        .node
        .read(true, |ns| ns.lookup(ROOT_INO, b"minority"))
        .await
        .is_err());
    for n in [n1, n2, n3] {
        n.shutdown().await.unwrap();
    }
}
