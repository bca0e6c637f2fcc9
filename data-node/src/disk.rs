//! The chunk store's disk, behind a trait: [`LocalDisk`] is the real one, [`FaultyDisk`]
//! injects a full disk and bit rot for tests.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// What the chunk store needs from a disk.
pub trait Disk: Send + Sync + 'static {
    /// Write `data` to `tmp`, fsync it, rename it to `path`, fsync `path`'s directory.
    /// On error nothing is left at `path` (the caller removes `tmp`).
    fn write_durably(&self, tmp: &Path, path: &Path, data: &[u8]) -> io::Result<()>;
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Exactly `len` bytes of `path` from `offset` (a short file is an error).
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
}

/// The local file system.
#[derive(Default, Debug)]
pub struct LocalDisk;

impl Disk for LocalDisk {
    fn write_durably(&self, tmp: &Path, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut f = File::create(tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(tmp, path)?;
        match path.parent() {
            Some(dir) => File::open(dir)?.sync_all(),
            None => Ok(()),
        }
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0; len];
        File::open(path)?.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
}

/// A local disk that can run out of space and rot.
#[derive(Debug)]
pub struct FaultyDisk {
    inner: LocalDisk,
    /// Bytes that may still be written; negative = unlimited.
    space_left: AtomicI64,
    /// Flip a bit in everything read.
    rot: AtomicBool,
}

impl Default for FaultyDisk {
    fn default() -> Self {
        FaultyDisk {
            inner: LocalDisk,
            space_left: AtomicI64::new(-1),
            rot: AtomicBool::new(false),
        }
    }
}

impl FaultyDisk {
    /// Allow only `bytes` more bytes to be written (then ENOSPC, after a partial write).
    pub fn set_space_left(&self, bytes: i64) {
        self.space_left.store(bytes, Ordering::SeqCst);
    }

    pub fn set_rot(&self, on: bool) {
        self.rot.store(on, Ordering::SeqCst);
    }
}

impl Disk for FaultyDisk {
    fn write_durably(&self, tmp: &Path, path: &Path, data: &[u8]) -> io::Result<()> {
        let left = self.space_left.load(Ordering::SeqCst);
        if left >= 0 {
            if (data.len() as i64) > left {
                // A real full disk accepts part of the write first.
                fs::write(tmp, &data[..left as usize])?;
                self.space_left.store(0, Ordering::SeqCst);
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.space_left
                .fetch_sub(data.len() as i64, Ordering::SeqCst);
        }
        self.inner.write_durably(tmp, path, data)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut data = self.inner.read(path)?;
        if self.rot.load(Ordering::SeqCst) {
            let mid = data.len() / 2;
            if let Some(b) = data.get_mut(mid) {
                *b ^= 0x10;
            }
        }
        Ok(data)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut data = self.inner.read_at(path, offset, len)?;
        if self.rot.load(Ordering::SeqCst) {
            let mid = data.len() / 2;
            if let Some(b) = data.get_mut(mid) {
                *b ^= 0x10;
            }
        }
        Ok(data)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }
}
