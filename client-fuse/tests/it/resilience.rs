//! Faults around a real mount: a lost metadata leader, a killed mount.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::cluster::TwoSites;
use crate::data_path::noise;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_mount_rides_out_a_lost_metadata_leader() {
    let mut sites = TwoSites::start().await;
    let a = sites.mount("site-a");
    std::fs::write(a.point.join("before"), b"written before").unwrap();
    let killed = sites.kill_meta_leader().await;
    // Operations issued meanwhile wait for the next leader, then complete.
    let started = Instant::now();
    if let Err(e) = std::fs::create_dir(a.point.join("during")) {
        panic!("mkdir after the leader died: {e}\nmount log:\n{}", a.log());
    }
    let data = noise(3 << 20, 9);
    let mut f = std::fs::File::create(a.point.join("during/f")).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let took = started.elapsed();
    eprintln!("leader {killed} killed; the operations completed in {took:?}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    // And the mount keeps working.
    assert_eq!(
        std::fs::read(a.point.join("before")).unwrap(),
        b"written before"
    );
    assert_eq!(std::fs::read(a.point.join("during/f")).unwrap(), data);
    std::fs::remove_file(a.point.join("before")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_mount_leaves_a_mountpoint_fusermount_clears_and_loses_nothing_committed() {
    let sites = TwoSites::start().await;
    let mut a = sites.mount("site-a");
    let data = noise(2 << 20, 10);
    let mut f = std::fs::File::create(a.point.join("kept")).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    a.kill();
    drop(f); // a mount with an open file is busy
    let cleared = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(&a.point)
        .status()
        .unwrap();
    assert!(cleared.success() && !a.is_mounted());
    let b = sites.mount("site-b");
    assert_eq!(
        std::fs::read(b.point.join("kept")).unwrap(),
        data,
        "fsynced data was lost"
    );
}
