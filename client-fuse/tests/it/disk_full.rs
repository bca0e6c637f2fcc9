//! A data node whose disk fills up, through real processes and a real (tmpfs) disk.

use mobilus_proto::status::Errno;

use crate::cluster::{Opts, SmallDisk, TwoSites};
use crate::data_path::{must_create, must_write, noise};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_gives_the_writer_enospc_and_damages_nothing_stored() {
    let disk = SmallDisk::mount(48);
    let sites = TwoSites::start_with(Opts {
        site_a_dir: Some(disk.path.clone()),
        ..Opts::default()
    })
    .await;
    let a = sites.client("site-a").await;
    let kept = noise(8 << 20, 1);
    let kept_ino = must_create(&a, "kept").await;
    must_write(&a, kept_ino, &kept).await;

    let big = noise(64 << 20, 2);
    let ino = must_create(&a, "big").await;
    let mut w = a.writer(ino);
    let mut result = Ok(None);
    for (i, piece) in big.chunks(1 << 20).enumerate() {
        result = w.write((i << 20) as u64, piece).await.map(|()| None);
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        result = w.flush().await;
    }
    let err = result.expect_err("64 MiB cannot fit in what is left of 48");
    assert_eq!(err.to_errno(), Errno::ENOSPC, "{err}");
    // Nothing of the failed write was committed, and what was stored reads back intact.
    assert_eq!(a.meta().getattr(ino, false).await.unwrap().size, 0);
    assert_eq!(a.read(kept_ino, 0, kept.len() as u64).await.unwrap(), kept);
    assert_eq!(a.local().stats().await.unwrap().corrupt_chunks, 0);
    drop(sites);
}
