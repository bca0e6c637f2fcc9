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
    // Resolved before mounting: afterwards, looking at the path is a request to the mount.
    let absolute = std::fs::canonicalize(mountpoint);
    let session = fuser::spawn_mount(FuseAdapter::new(fs.clone(), rt, tuning), mountpoint, config)?;
    fs.mounted(session.notifier());
    if let Ok(absolute) = absolute {
        widen_readahead(&absolute, readahead);
    }
    Ok(session)
}

/// The kernel offers a FUSE mount its default readahead (128 KiB), which the mount may
/// lower at init but not raise; the mount's entry in sysfs raises it. With more, the
/// kernel sends a sequential stream's reads up to `max_write` (1 MiB) at a time, not
/// 128 KiB. Best effort: writing it takes root.
fn widen_readahead(mountpoint: &Path, bytes: u32) {
    // The device from /proc/self/mountinfo, not from a stat of the mount point: that
    // would be a request to this very mount, which waits on the metadata service.
    let Some(device) = mount_device(mountpoint) else {
        tracing::info!(mountpoint = %mountpoint.display(), "the mount is not in mountinfo");
        return;
    };
    let path = format!("/sys/class/bdi/{device}/read_ahead_kb");
    match std::fs::write(&path, (bytes / 1024).to_string()) {
        Ok(()) => tracing::debug!(%path, kib = bytes / 1024, "readahead widened"),
        Err(e) => tracing::info!(%path, error = %e, "the kernel's readahead stays at its default"),
    }
}

/// `MAJOR:MINOR` of the newest mount at `mountpoint` (absolute), from mountinfo.
fn mount_device(mountpoint: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    device_in(&info, mountpoint.to_str()?)
}

/// In a mountinfo text (`ID PARENT MAJOR:MINOR ROOT MOUNTPOINT ...`, with spaces and
/// backslashes in paths as octal escapes), the device of the last mount at `mountpoint`.
fn device_in(mountinfo: &str, mountpoint: &str) -> Option<String> {
    mountinfo.lines().rev().find_map(|line| {
        let mut fields = line.split(' ');
        let device = fields.nth(2)?;
        let at = fields.nth(1)?;
        (unescape_octal(at) == mountpoint).then(|| device.to_string())
    })
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| {
                let v = d.iter().fold(0u16, |v, c| v * 8 + u16::from(c - b'0'));
                u8::try_from(v).ok()
            });
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_mount_at_a_path_names_its_device() {
        let info = "\
22 1 8:1 / / rw shared:1 - ext4 /dev/vda rw
90 22 0:55 / /mnt/a\\040b rw - fuse.mobilus mobilus:site-a rw
91 22 0:56 / /mnt/c rw - fuse.mobilus mobilus:site-a rw
92 91 0:57 / /mnt/c rw - fuse.mobilus mobilus:site-b rw
";
        assert_eq!(device_in(info, "/mnt/a b").as_deref(), Some("0:55"));
        assert_eq!(device_in(info, "/mnt/c").as_deref(), Some("0:57"));
        assert_eq!(device_in(info, "/mnt/d"), None);
        assert_eq!(device_in("garbage\n\n1 2", "/"), None);
        assert_eq!(unescape_octal("a\\777\\134"), "a\\777\\");
    }
}
