//! Three (or four) real `mobilus-meta` processes on 127.0.0.1.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mobilus_meta_client::{ClientError, ClientOptions, MetaClient};
use mobilus_proto::fs::ROOT_INO;
use mobilus_proto::status::Errno;

use crate::harness::{opts, Cluster, Member};

async fn must_mkdir(c: &MetaClient, parent: u64, name: &str) -> u64 {
    c.mkdir(parent, name.as_bytes(), 0o755, 0, 0, None)
        .await
        .expect("mkdir")
        .ino
}

async fn names(c: &MetaClient, dir: u64, stale: bool) -> BTreeSet<String> {
    let entries = c.readdir_all(dir, stale).await.expect("readdir");
    entries
        .into_iter()
        .map(|e| String::from_utf8(e.name).expect("utf8"))
        .collect()
}

/// Names as a member that may not have caught up yet sees them (none if the directory is
/// not there yet).
async fn names_so_far(c: &MetaClient, dir: u64) -> usize {
    c.readdir_all(dir, true).await.map(|e| e.len()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_through_a_follower_commit_and_are_read_everywhere() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.must_leader().await;
    let follower = (leader + 1) % 3;
    let via_follower = cluster.client_of(follower);
    let dir = must_mkdir(&via_follower, ROOT_INO, "from-follower").await;
    // The write was forwarded, so it committed on the leader.
    let leader_status = cluster
        .client()
        .status_of(&cluster.members[leader].addr)
        .await
        .unwrap();
    assert_eq!(leader_status.state, "Leader");
    // A linearizable read through the other follower sees it at once.
    let other = cluster.client_of((leader + 2) % 3);
    assert_eq!(
        other
            .lookup(ROOT_INO, b"from-follower", false)
            .await
            .unwrap()
            .ino,
        dir
    );
    // A client that knows every member and asked a follower first: the forwarded reply
    // names the leader, and the client goes there directly from then on.
    let mut addrs: Vec<String> = cluster.members.iter().map(|m| m.addr.clone()).collect();
    addrs.rotate_left(follower);
    let knows_all = MetaClient::new(&addrs, crate::harness::opts()).unwrap();
    must_mkdir(&knows_all, ROOT_INO, "from-follower-again").await;
    assert_eq!(
        knows_all.leader_hint().as_deref(),
        Some(cluster.members[leader].addr.as_str()),
        "the client still writes through the follower"
    );
    // Stale reads on every member converge.
    for i in 0..3 {
        let c = cluster.client_of(i);
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.lookup(ROOT_INO, b"from-follower", true).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "member {i} never applied the write"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_the_leader_mid_load_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3, &[]).await;
    let client = cluster.client();
    let dir = must_mkdir(&client, ROOT_INO, "load").await;
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("w{w}-{i}");
                // An error (even an ambiguous one) is not an acknowledgement.
                if client
                    .mkdir(dir, name.as_bytes(), 0o755, 0, 0, None)
                    .await
                    .is_ok()
                {
                    acked.lock().unwrap().push(name);
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let leader = cluster.must_leader().await;
    let before_kill = acked.lock().unwrap().len();
    cluster.members[leader].kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        before_kill > 20,
        "too little load before the kill: {before_kill}"
    );
    assert!(
        acked.len() > before_kill,
        "no write was acknowledged after the leader died"
    );

    let new_leader = cluster.must_leader().await;
    assert_ne!(new_leader, leader);
    let listed = names(&client, dir, false).await;
    let lost: Vec<_> = acked.iter().filter(|n| !listed.contains(*n)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {lost:?}",
        lost.len()
    );
    // The old leader comes back and catches up.
    cluster.members[leader].restart();
    let old = cluster.client_of(leader);
    let deadline = Instant::now() + Duration::from_secs(20);
    while names_so_far(&old, dir).await < listed.len() {
        assert!(
            Instant::now() < deadline,
            "restarted member never caught up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_members_restart_from_disk_with_state_intact() {
    let mut cluster = Cluster::start(3, &[]).await;
    let client = cluster.client();
    let dir = must_mkdir(&client, ROOT_INO, "persist").await;
    for i in 0..50 {
        must_mkdir(&client, dir, &format!("d{i}")).await;
    }
    client
        .setxattr(dir, b"user.k", b"v", 0, None)
        .await
        .unwrap();
    let before = names(&client, dir, false).await;
    // Clean stop of one, SIGKILL of the others: both must recover.
    assert!(
        cluster.members[0].stop().success(),
        "SIGTERM exit was not clean"
    );
    cluster.members[1].kill();
    cluster.members[2].kill();
    for m in &mut cluster.members {
        m.restart();
    }
    cluster.must_leader().await;
    let client = cluster.client();
    assert_eq!(names(&client, dir, false).await, before);
    assert_eq!(client.getxattr(dir, b"user.k", false).await.unwrap(), b"v");
    assert_eq!(client.getattr(dir, false).await.unwrap().nlink, 52);
    must_mkdir(&client, dir, "after-restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_member_catches_up_by_snapshot_after_the_log_was_purged() {
    let mut cluster = Cluster::start(3, &["--snapshot-logs", "100", "--keep-logs", "0"]).await;
    let client = cluster.client();
    let dir = must_mkdir(&client, ROOT_INO, "snap").await;
    for i in 0..300 {
        must_mkdir(&client, dir, &format!("e{i}")).await;
    }
    client.trigger_snapshot().await.unwrap();
    // Every member (not only today's leader) must have purged, so that whichever member
    // leads when member 4 joins has to send a snapshot.
    let deadline = Instant::now() + Duration::from_secs(30);
    for m in &cluster.members {
        loop {
            let s = client.status_of(&m.addr).await.unwrap();
            if s.purged_index.unwrap_or(0) > 100 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "member {} never purged its log: {s:?}",
                m.id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let seed = cluster.members[0].addr.clone();
    let member = Member::start(
        4,
        cluster.dir.path().join("m4"),
        vec![
            "--join".into(),
            seed,
            "--snapshot-logs".into(),
            "100".into(),
        ],
    );
    cluster.members.push(member);
    cluster.must_have_voters(4).await;
    let fourth = cluster.client_of(3);
    let deadline = Instant::now() + Duration::from_secs(20);
    while names_so_far(&fourth, dir).await < 300 {
        assert!(
            Instant::now() < deadline,
            "member 4 never caught up\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The names above may have been read through the leader (the client follows its
    // hint), so member 4 can still be installing: wait for its own word, not a glance.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cluster.members[3].log().contains("snapshot installed") {
        assert!(
            Instant::now() < deadline,
            "member 4 caught up without a snapshot:\n{}",
            cluster.members[3].log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And it keeps replicating normally afterwards.
    must_mkdir(&client, dir, "after-snapshot").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while fourth.lookup(dir, b"after-snapshot", true).await.is_err() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Removing it leaves three voters that still commit.
    let status = client.remove_member(4).await.unwrap();
    assert!(status.members.iter().all(|m| m.id != 4), "{status:?}");
    cluster.must_have_voters(3).await;
    must_mkdir(&client, dir, "after-remove").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_cut_off_from_the_others_cannot_commit_or_serve_linearizable_reads() {
    let mut cluster = Cluster::start(3, &[]).await;
    let client = cluster.client();
    let dir = must_mkdir(&client, ROOT_INO, "quorum").await;
    let leader = cluster.must_leader().await;
    for i in 0..3 {
        if i != leader {
            cluster.members[i].kill();
        }
    }
    let short = ClientOptions {
        deadline: Duration::from_secs(2),
        ..opts()
    };
    let alone = MetaClient::new(&[cluster.members[leader].addr.clone()], short).unwrap();
    let started = Instant::now();
    let write = alone
        .mkdir(dir, b"must-not-commit", 0o755, 0, 0, None)
        .await;
    assert!(
        matches!(write, Err(ClientError::Unavailable { .. })),
        "write on a minority: {write:?}"
    );
    let read = alone.lookup(ROOT_INO, b"quorum", false).await;
    assert!(
        matches!(read, Err(ClientError::Unavailable { .. })),
        "linearizable read on a minority: {read:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    // A stale read is still served from local state, on request.
    assert_eq!(
        alone.lookup(ROOT_INO, b"quorum", true).await.unwrap().ino,
        dir
    );

    for i in 0..3 {
        if i != leader {
            cluster.members[i].restart();
        }
    }
    cluster.must_leader().await;
    let client = cluster.client();
    // The write that timed out was never acknowledged; it may or may not have committed
    // once the quorum came back, but the cluster accepts new writes either way.
    match client.mkdir(dir, b"after-heal", 0o755, 0, 0, None).await {
        Ok(_) => {}
        Err(e) => panic!("write after heal: {e}"),
    }
    let err = client.rmdir(dir, b"missing", None).await.unwrap_err();
    assert_eq!(err.errno(), Some(Errno::ENOENT));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_that_missed_many_large_entries_catches_up() {
    let mut cluster = Cluster::start(3, &[]).await;
    let client = cluster.client();
    let leader = cluster.must_leader().await;
    let lagging = (leader + 1) % 3;
    cluster.members[lagging].kill();
    // ~18 MiB of log the lagging member will need: more than one 16 MiB message.
    let value = vec![b'x'; 60_000];
    let mut tasks = Vec::new();
    for t in 0..10 {
        let (client, value) = (client.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..30 {
                let name = format!("user.k{t}-{i}");
                client
                    .setxattr(ROOT_INO, name.as_bytes(), &value, 0, None)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    cluster.members[lagging].restart();
    let behind = cluster.client_of(lagging);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = behind
            .listxattr(ROOT_INO, true)
            .await
            .map(|v| v.len())
            .unwrap_or(0);
        if n == 300 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lagging member has {n}/300 xattrs\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        behind
            .getxattr(ROOT_INO, b"user.k9-29", true)
            .await
            .unwrap(),
        value
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_pays_for_a_hung_member_once_not_on_every_call() {
    // The first endpoint accepts connections (the kernel's backlog) but never answers,
    // like a member behind a partition that drops traffic. A client that gives up on it
    // once must start its next calls at a member that works.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let cluster = Cluster::start(1, &[]).await;
    let addrs = vec![
        hung.local_addr().expect("addr").to_string(),
        cluster.members[0].addr.clone(),
    ];
    let c = MetaClient::new(
        &addrs,
        ClientOptions {
            deadline: Duration::from_millis(300),
            rpc_timeout: Duration::from_millis(300),
            connect_timeout: Duration::from_millis(300),
            retry_ambiguous: false,
            site: None,
            near: None,
            tls: Default::default(),
        },
    )
    .expect("client");
    let first = c.getattr(ROOT_INO, false).await;
    assert!(
        matches!(first, Err(ClientError::Unavailable { .. })),
        "the hung member answered: {first:?}"
    );
    for i in 0..5 {
        let started = Instant::now();
        c.getattr(ROOT_INO, true)
            .await
            .unwrap_or_else(|e| panic!("call {i} after the hung member failed: {e}"));
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "call {i} waited on the hung member"
        );
    }
}
