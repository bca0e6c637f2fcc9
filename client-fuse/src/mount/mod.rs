//! The FUSE mount: [`ops::MountFs`] is the file system as typed async operations;
//! [`fuse::FuseAdapter`] is the thin fuser adapter over it.

pub mod fuse;
pub mod ops;

use std::path::Path;
use std::sync::Arc;

pub use self::fuse::{describe_metrics, FuseAdapter, Tuning};
pub use self::ops::MountFs;

/// The fuser configuration of a mount of `site` served by `threads` FUSE threads.
pub fn config(site: &str, threads: usize) -> fuser::Config {
    let mut c = fuser::Config::default();
    c.mount_options = vec![
        // Easy to find (and clean up) in /proc/mounts.
        fuser::MountOption::FSName(format!("mobilus:{site}")),
        fuser::MountOption::Subtype("mobilus".into()),
        // The kernel checks mode bits, ownership and sticky directories.
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::Dev,
        fuser::MountOption::Suid,
    ];
    // Every user of the host may use the mount (`allow_other`); permissions still apply.
    c.acl = fuser::SessionACL::All;
    c.n_threads = Some(threads.max(1));
    c.clone_fd = threads > 1;
    c
}

/// Mount `fs` at `mountpoint` in the background.
pub fn spawn(
    fs: Arc<MountFs>,
    rt: tokio::runtime::Handle,
    tuning: Tuning,
    mountpoint: &Path,
    config: &fuser::Config,
) -> std::io::Result<fuser::BackgroundSession> {
    let readahead = tuning.max_write;
    let session = fuser::spawn_mount(FuseAdapter::new(fs.clone(), rt, tuning), mountpoint, config)?;
    fs.mounted(session.notifier());
    widen_readahead(mountpoint, readahead);
    Ok(session)
}

/// The kernel offers a FUSE mount its default readahead (128 KiB), which the mount may
/// lower at init but not raise; the mount's entry in sysfs raises it. With more, the
/// kernel sends a sequential stream's reads up to `max_write` (1 MiB) at a time, not
/// 128 KiB. Best effort: writing it takes root.
fn widen_readahead(mountpoint: &Path, bytes: u32) {
    use std::os::unix::fs::MetadataExt;
    let Ok(dev) = std::fs::metadata(mountpoint).map(|m| m.dev()) else {
        return;
    };
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    match std::fs::write(&path, (bytes / 1024).to_string()) {
        Ok(()) => tracing::debug!(%path, kib = bytes / 1024, "readahead widened"),
        Err(e) => tracing::info!(%path, error = %e, "the kernel's readahead stays at its default"),
    }
}
