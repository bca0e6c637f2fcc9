//! The snapshot file: a RocksDB checkpoint packed into one file, so that openraft can
//! stream it in chunks and a receiver can verify it before using it.
//!
//! Layout: `MOBSNAP1`, u32 meta length, encoded `SnapshotMeta`, u32 file count, then per
//! file: u16 name length, name, u64 size, bytes; last, the BLAKE3 of all that precedes.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::codec;
use crate::error::StoreError;
use crate::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"MOBSNAP1";
const MAX_META: u32 = 64 << 20;
const MAX_FILES: u32 = 1 << 20;

fn corrupt(msg: impl Into<String>) -> StoreError {
    StoreError::CorruptSnapshot(msg.into())
}

/// A writer that hashes everything it writes.
struct Hashing<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// fsync a directory, so that a rename or a new file in it is durable.
pub fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Pack every file of `dir` (flat, as a checkpoint is) into `out`, then fsync it.
pub fn pack(dir: &Path, meta: &SnapshotMeta, out: &Path) -> Result<(), StoreError> {
    let file = File::create(out)?;
    let mut w = Hashing {
        inner: BufWriter::new(file),
        hasher: blake3::Hasher::new(),
    };
    let meta_bytes = codec::encode(meta)?;
    w.write_all(MAGIC)?;
    w.write_all(&(meta_bytes.len() as u32).to_le_bytes())?;
    w.write_all(&meta_bytes)?;
    let mut names: Vec<_> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    w.write_all(&(names.len() as u32).to_le_bytes())?;
    for name in names {
        let name = name
            .to_str()
            .ok_or_else(|| corrupt("non-UTF-8 file name"))?
            .to_string();
        let mut f = File::open(dir.join(&name))?;
        let size = f.metadata()?.len();
        w.write_all(&(name.len() as u16).to_le_bytes())?;
        w.write_all(name.as_bytes())?;
        w.write_all(&size.to_le_bytes())?;
        let copied = std::io::copy(&mut (&mut f).take(size), &mut w)?;
        if copied != size {
            return Err(corrupt(format!("{name} shrank while packing")));
        }
    }
    let hash = w.hasher.finalize();
    let mut inner = w.inner;
    inner.write_all(hash.as_bytes())?;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(())
}

fn read_u32(r: &mut impl Read) -> Result<u32, StoreError> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_meta(r: &mut impl Read) -> Result<SnapshotMeta, StoreError> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|_| corrupt("too short"))?;
    if &magic != MAGIC {
        return Err(corrupt("bad magic"));
    }
    let len = read_u32(r)?;
    if len > MAX_META {
        return Err(corrupt(format!("meta of {len} bytes")));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)?;
    Ok(codec::decode(&buf)?)
}

/// The metadata of a snapshot file (header only; not verified).
pub fn peek_meta(path: &Path) -> Result<SnapshotMeta, StoreError> {
    read_meta(&mut BufReader::new(File::open(path)?))
}

/// Check the trailing BLAKE3 of a snapshot file.
fn verify(file: &mut File) -> Result<(), StoreError> {
    let len = file.metadata()?.len();
    if len < 32 + 8 {
        return Err(corrupt("too short"));
    }
    file.seek(SeekFrom::Start(0))?;
    let mut hasher = blake3::Hasher::new();
    std::io::copy(&mut (&mut *file).take(len - 32), &mut hasher)?;
    let mut want = [0u8; 32];
    file.read_exact(&mut want)?;
    if hasher.finalize().as_bytes() != &want {
        return Err(corrupt("checksum mismatch"));
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(())
}

/// Verify `path` and unpack its files into the new directory `dest`, fsynced.
pub fn unpack(path: &Path, dest: &Path) -> Result<SnapshotMeta, StoreError> {
    let mut file = File::open(path)?;
    verify(&mut file)?;
    let mut r = BufReader::new(file);
    let meta = read_meta(&mut r)?;
    let count = read_u32(&mut r)?;
    if count > MAX_FILES {
        return Err(corrupt(format!("{count} files")));
    }
    fs::create_dir_all(dest)?;
    for _ in 0..count {
        let mut b2 = [0u8; 2];
        r.read_exact(&mut b2)?;
        let mut name = vec![0u8; u16::from_le_bytes(b2) as usize];
        r.read_exact(&mut name)?;
        let name = String::from_utf8(name).map_err(|_| corrupt("non-UTF-8 name"))?;
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(corrupt(format!("bad file name {name:?}")));
        }
        let mut b8 = [0u8; 8];
        r.read_exact(&mut b8)?;
        let size = u64::from_le_bytes(b8);
        let mut out = File::create(dest.join(&name))?;
        let copied = std::io::copy(&mut (&mut r).take(size), &mut out)?;
        if copied != size {
            return Err(corrupt(format!("{name} truncated")));
        }
        out.sync_all()?;
    }
    fsync_dir(dest)?;
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_unpack_and_detect_corruption() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("a"), b"hello").unwrap();
        fs::write(src.join("b"), vec![7u8; 100_000]).unwrap();
        let meta = SnapshotMeta::default();
        let snap = tmp.path().join("s.snap");
        pack(&src, &meta, &snap).unwrap();
        assert_eq!(peek_meta(&snap).unwrap(), meta);
        let dest = tmp.path().join("dest");
        assert_eq!(unpack(&snap, &dest).unwrap(), meta);
        assert_eq!(fs::read(dest.join("b")).unwrap(), vec![7u8; 100_000]);

        let mut bytes = fs::read(&snap).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        fs::write(&snap, &bytes).unwrap();
        assert!(matches!(
            unpack(&snap, &tmp.path().join("d2")),
            Err(StoreError::CorruptSnapshot(_))
        ));
        fs::write(&snap, b"MOBSNAP1").unwrap();
        assert!(unpack(&snap, &tmp.path().join("d3")).is_err());
    }
}
