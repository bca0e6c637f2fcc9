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
    let session = fuser::spawn_mount(FuseAdapter::new(fs.clone(), rt, tuning), mountpoint, config)?;
    fs.mounted(session.notifier());
    Ok(session)
}
