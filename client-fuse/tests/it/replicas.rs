//! Several data nodes per site: chunks placed on two of them, writes that go on through
//! the loss of one, copies restored when it returns, and re-made when it never does; a
//! node drained, stopped and removed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mobilus_data_client::placement;
use mobilus_meta_client::ClientError;
use mobilus_proto::fs::ChunkHash;
use mobilus_proto::status::Errno;

use crate::cluster::{Opts, TwoSites};
use crate::data_path::{must_create, must_write, noise};

/// Three data nodes per site; replicators and the registry on a test's time scale.
async fn three_nodes_per_site() -> TwoSites {
    TwoSites::start_with(Opts {
        nodes_per_site: 3,
        data_args: [
            "--replicate-interval-ms",
            "300",
            "--node-down-after-ms",
            "3000",
        ]
        .map(String::from)
        .to_vec(),
        ..Opts::default()
    })
    .await
}

/// The chunks stored in a data node's chunk folder.
fn chunks_in(dir: &Path) -> Vec<ChunkHash> {
    let Ok(subdirs) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    subdirs
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .filter_map(|f| {
            let name = f.file_name().to_string_lossy().into_owned();
            let bytes: Vec<u8> = (0..name.len() / 2)
                .map(|i| u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok())
                .collect::<Option<_>>()?;
            ChunkHash::from_slice(&bytes)
        })
        .collect()
}

/// For each chunk site-a holds, which of the `live` nodes (by address) hold it.
fn copies(sites: &TwoSites, live: &[String]) -> HashMap<ChunkHash, Vec<String>> {
    let mut holders: HashMap<ChunkHash, Vec<String>> = HashMap::new();
    for node in sites.data.iter().filter(|d| d.site == "site-a") {
        for h in chunks_in(&node.chunks) {
            let entry = holders.entry(h).or_default();
            if live.contains(&node.addr) {
                entry.push(node.addr.clone());
            }
        }
    }
    holders
}

/// Wait until every chunk site-a holds is on the first two of its placement over `live`.
async fn must_reach_placement(sites: &TwoSites, live: &[String], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let held = copies(sites, live);
        let misplaced: Vec<_> = held
            .iter()
            .filter(|(h, on)| {
                placement::rank(h, live, |a| a)
                    .into_iter()
                    .take(2)
                    .any(|want| !on.contains(want))
            })
            .collect();
        if misplaced.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} chunks are not on their two nodes, e.g. {:?}",
            misplaced.len(),
            held.len(),
            misplaced[0]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_site_writes_through_the_loss_of_a_data_node_and_restores_two_copies() {
    let mut sites = three_nodes_per_site().await;
    let a = sites.client("site-a").await;
    let nodes: Vec<String> = sites
        .data
        .iter()
        .filter(|d| d.site == "site-a")
        .map(|d| d.addr.clone())
        .collect();

    // A copy lost from the node a chunk prefers: the read is served by the next, and the
    // copy is put back.
    let data = noise(1 << 20, 99);
    let ino = must_create(&a, "repaired").await;
    must_write(&a, ino, &data).await;
    let first = mobilus_client::chunker::chunk(&data)[0].hash;
    let preferred = placement::rank(&first, &nodes, |a| a)[0].clone();
    let node = sites.data.iter().find(|d| d.addr == preferred).unwrap();
    let hex = first.to_hex();
    let lost = node.chunks.join(&hex[..2]).join(&hex);
    std::fs::remove_file(&lost).unwrap();
    let reader = sites.client("site-a").await;
    assert_eq!(reader.read(ino, 0, data.len() as u64).await.unwrap(), data);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(lost.exists() && reader.stats().repairs >= 1) {
        assert!(
            Instant::now() < deadline,
            "the lost copy was never put back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Writes while a node dies under them: none fails; they go to the next candidates.
    let written = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn({
        let (a, written) = (a.clone(), written.clone());
        async move {
            let mut files = Vec::new();
            for i in 0..24u64 {
                let data = noise(1 << 20 | (i as usize * 7919), i);
                let ino = must_create(&a, &format!("f{i}")).await;
                must_write(&a, ino, &data).await;
                files.push((ino, data));
                written.fetch_add(1, Ordering::SeqCst);
            }
            files
        }
    });
    while written.load(Ordering::SeqCst) < 6 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sites.data[1].kill();
    let files = writer.await.unwrap();
    assert!(written.load(Ordering::SeqCst) == 24);
    // Every file reads back, by a reader with nothing cached.
    let reader = sites.client("site-a").await;
    for (ino, data) in &files {
        assert_eq!(
            &reader.read(*ino, 0, data.len() as u64).await.unwrap(),
            data
        );
    }
    assert_eq!(reader.stats().remote_fetches, 0, "all of it is at site-a");

    // The node returns: the chunks it missed are copied back to it.
    sites.data[1].restart();
    must_reach_placement(&sites, &nodes, Duration::from_secs(20)).await;

    // Another node is gone for good: once the registry takes it for down, the survivors
    // copy its chunks to the nodes next in their placement.
    sites.data[2].kill();
    let survivors = vec![nodes[0].clone(), nodes[1].clone()];
    must_reach_placement(&sites, &survivors, Duration::from_secs(30)).await;
    for (ino, data) in &files {
        assert_eq!(&a.read(*ino, 0, data.len() as u64).await.unwrap(), data);
    }

    // It comes back, and the first node is drained: new writes stay off it, and its
    // chunks are copied onto the other two, so it can go.
    sites.data[2].restart();
    must_reach_placement(&sites, &nodes, Duration::from_secs(20)).await;
    // A writer whose view of the registry is from before the drain.
    let stale = sites.client("site-a").await;
    a.meta().set_node_draining(&nodes[0], true).await.unwrap();
    let late = noise(8 << 20, 78);
    let late_ino = must_create(&stale, "written-with-a-stale-view").await;
    must_write(&stale, late_ino, &late).await;
    // Its first commit relied on the drained node for some chunk (2 in 3 chunks have it
    // among their two), was refused, and went again with the registry read anew.
    assert!(stale.stats().stale_chunk_retries >= 1);
    let (listed, _) = a
        .meta()
        .list_data_nodes(Some("site-a"), false)
        .await
        .unwrap();
    assert!(listed.iter().any(|n| n.addr == nodes[0] && n.draining));
    let writer = sites.client("site-a").await;
    let data = noise(2 << 20, 77);
    let fresh = must_create(&writer, "written-while-draining").await;
    must_write(&writer, fresh, &data).await;
    let drained = chunks_in(&sites.data[0].chunks);
    for piece in mobilus_client::chunker::chunk(&data) {
        assert!(
            !drained.contains(&piece.hash),
            "a new copy went to the drained node"
        );
    }
    let keeping = vec![nodes[1].clone(), nodes[2].clone()];
    must_reach_placement(&sites, &keeping, Duration::from_secs(20)).await;
    // Removal: refused for a node not drained, one still running, and one unknown.
    let busy = |r: Result<_, ClientError>| matches!(r, Err(ClientError::Errno(Errno::EBUSY, _)));
    assert!(busy(a.meta().remove_data_node(&nodes[1]).await));
    assert!(busy(a.meta().remove_data_node(&nodes[0]).await));
    assert!(matches!(
        a.meta().remove_data_node("127.0.0.1:1").await,
        Err(ClientError::Errno(Errno::ENOENT, _))
    ));
    sites.data[0].kill();
    let reader = sites.client("site-a").await;
    for (ino, data) in files.iter().chain([(fresh, data), (late_ino, late)].iter()) {
        assert_eq!(
            &reader.read(*ino, 0, data.len() as u64).await.unwrap(),
            data
        );
    }
    assert_eq!(reader.stats().remote_fetches, 0);
    // Stopped and silent: it goes, and the site is whole without it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match a.meta().remove_data_node(&nodes[0]).await {
            Ok(n) => break assert_eq!(n.addr, nodes[0]),
            Err(e) => assert!(Instant::now() < deadline, "never removed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (listed, _) = a.meta().list_data_nodes(None, false).await.unwrap();
    assert!(listed.iter().all(|n| n.addr != nodes[0]), "{listed:?}");
    let reader = sites.client("site-a").await;
    for (ino, data) in &files {
        assert_eq!(
            &reader.read(*ino, 0, data.len() as u64).await.unwrap(),
            data
        );
    }
}
