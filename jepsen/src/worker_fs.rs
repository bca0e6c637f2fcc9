//! The client side of the workloads that go through FUSE: a real `mobilus-mount` started
//! by the worker (so it lives in the worker's mount namespace), and file operations on it.
//!
//! - Durability: files written with fsync and read back. Each file starts with a header
//!   (seed and length) followed by bytes derived from the seed, so a read can tell which
//!   write it sees and whether it is whole.
//! - Delegation: registers as small files of a subtree, written by two mounts of its
//!   owner site (one of which holds the subtree's delegation at a time), either in place
//!   or by a rename over the old file, and read back.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::history::EventType;
use crate::worker::{done, refuse, Request, Response};

/// Folder of the workload's files, on the mount.
pub const FILES_DIR: &str = "jepsen-files";
const HEADER: usize = 16;

/// The byte at `i` of a file written with `seed` (after the header).
pub fn byte(seed: u64, i: u64) -> u8 {
    let mut x = seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    (x >> 56) as u8
}

/// A file's whole content for a write of `len` body bytes with `seed`.
pub fn content(seed: u64, len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + len as usize);
    out.extend_from_slice(&seed.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend((0..len).map(|i| byte(seed, i)));
    out
}

/// What a read found: the header's seed and length, and whether the body matches.
pub fn inspect(data: &[u8]) -> Value {
    if data.len() < HEADER {
        return json!({"seed": null, "len": data.len(), "intact": false});
    }
    let seed = u64::from_le_bytes(data[..8].try_into().unwrap_or_default());
    let len = u64::from_le_bytes(data[8..16].try_into().unwrap_or_default());
    let body = &data[HEADER..];
    let intact = body.len() as u64 == len
        && body
            .iter()
            .enumerate()
            .all(|(i, b)| *b == byte(seed, i as u64));
    json!({"seed": seed, "len": len, "intact": intact})
}

/// What the worker's file operations are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FsOps {
    /// Whole files with a header (the durability workload).
    Files,
    /// Registers of one integer each (the delegation workload).
    Registers,
}

/// A register file's bytes: the value in decimal, fixed width, so an in-place write
/// replaces the whole of it.
const REGISTER_BYTES: usize = 20;

fn register_bytes(v: i64) -> Vec<u8> {
    format!("{v:0width$}", width = REGISTER_BYTES).into_bytes()
}

/// A register file's value; `-1` for content no write ever made (torn or foreign), which
/// the checker then finds unexplained.
pub fn register_value(data: &[u8]) -> i64 {
    if data.len() != REGISTER_BYTES {
        return -1;
    }
    std::str::from_utf8(data)
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(-1)
}

/// A mount owned by the worker; unmounted (SIGTERM, which flushes) on drop.
pub struct OwnedMount {
    child: Child,
    pub mountpoint: PathBuf,
}

impl OwnedMount {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A mount of `site` on the members `meta`; the first is its home member, where the
    /// reads of the subtrees whose delegation it holds go (`--near-meta`), so that they
    /// meet the nemesis too.
    pub fn start(
        bin: &Path,
        site: &str,
        meta: &[String],
        mountpoint: &Path,
        tls: &[String],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(mountpoint)?;
        let ready = mountpoint.with_extension("ready");
        let _ = std::fs::remove_file(&ready);
        let mut cmd = Command::new(bin);
        cmd.args(tls)
            .args(["--site", site, "--meta", &meta.join(",")]);
        if let Some(home) = meta.first() {
            cmd.args(["--near-meta", home]);
        }
        let child = cmd
            .arg("--ready-file")
            .arg(&ready)
            .arg(mountpoint)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut m = OwnedMount {
            child,
            mountpoint: mountpoint.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready.exists() {
            if let Ok(Some(status)) = m.child.try_wait() {
                anyhow::bail!("mobilus-mount exited at start ({status})");
            }
            if Instant::now() > deadline {
                anyhow::bail!("mobilus-mount did not mount within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::fs::create_dir_all(m.mountpoint.join(FILES_DIR))?;
        Ok(m)
    }
}

impl Drop for OwnedMount {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn io_failed(id: u64, e: &std::io::Error) -> Response {
    Response {
        id,
        // The write may have reached the cluster in part, or whole: unknown.
        kind: EventType::Info,
        value: Value::Null,
        error: Some(e.to_string()),
    }
}

/// One lock per file: a request waits for the previous one on its file, even one the
/// harness has given up on, so operations on a file never interleave.
fn file_lock(key: &str) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    locks.entry(key.to_string()).or_default().clone()
}

/// Serve one request (blocking file I/O): `dir` is the workload's folder on the mount.
pub fn handle(ops: FsOps, mountpoint: &Path, dir: &str, r: &Request) -> Response {
    match ops {
        FsOps::Files => handle_file(mountpoint, r),
        FsOps::Registers => handle_register(&mountpoint.join(dir), r),
    }
}

/// A register write: in place (open, write at 0, fsync) or, when `replace` or when the
/// file does not exist yet, a new file written, fsynced and renamed over the old one.
fn write_register(dir: &Path, key: &str, v: i64, replace: bool, id: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let path = dir.join(key);
    let bytes = register_bytes(v);
    if !replace {
        match std::fs::OpenOptions::new().write(true).open(&path) {
            Ok(f) => {
                f.write_all_at(&bytes, 0)?;
                return f.sync_all();
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let tmp = dir.join(format!(".{key}.{}.{id}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &path)
}

fn handle_register(dir: &Path, r: &Request) -> Response {
    let Some(key) = valid_key(r) else {
        return refuse(r.id, format!("bad key {:?}", r.key));
    };
    let lock = file_lock(key);
    let _one_at_a_time = lock.lock().unwrap_or_else(|p| p.into_inner());
    match r.f.as_str() {
        "write" => {
            let Some(v) = r.value.as_i64() else {
                return refuse(r.id, format!("write of {}", r.value));
            };
            // Half the writes in place, half by rename: both must be seen by the other mount.
            match write_register(dir, key, v, r.id.is_multiple_of(2), r.id) {
                Ok(()) => done(r.id, r.value.clone()),
                Err(e) => io_failed(r.id, &e),
            }
        }
        "read" => match std::fs::File::open(dir.join(key)) {
            Ok(mut f) => {
                // An error after the open (the file replaced and deleted by another
                // mount meanwhile) says nothing of the register: it is not "absent".
                let mut data = Vec::new();
                match f.read_to_end(&mut data) {
                    Ok(_) => done(r.id, Value::from(register_value(&data))),
                    Err(e) => refuse(r.id, format!("read after open: {e}")),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => done(r.id, Value::Null),
            Err(e) => refuse(r.id, format!("open: {e}")),
        },
        other => refuse(r.id, format!("unknown operation {other:?}")),
    }
}

fn valid_key(r: &Request) -> Option<&str> {
    r.key
        .as_deref()
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

/// Serve one request of the durability workload.
fn handle_file(mountpoint: &Path, r: &Request) -> Response {
    let Some(key) = valid_key(r) else {
        return refuse(r.id, format!("bad key {:?}", r.key));
    };
    let lock = file_lock(key);
    let _one_at_a_time = lock.lock().unwrap_or_else(|p| p.into_inner());
    let path = mountpoint.join(FILES_DIR).join(key);
    match r.f.as_str() {
        "write" => {
            let (Some(seed), Some(len)) = (r.value["seed"].as_u64(), r.value["len"].as_u64())
            else {
                return Response {
                    id: r.id,
                    kind: EventType::Fail,
                    value: Value::Null,
                    error: Some(format!("write of {}", r.value)),
                };
            };
            let data = content(seed, len);
            let result = std::fs::File::create(&path).and_then(|mut f| {
                f.write_all(&data)?;
                f.sync_all()
            });
            match result {
                Ok(()) => Response {
                    id: r.id,
                    kind: EventType::Ok,
                    value: r.value.clone(),
                    error: None,
                },
                Err(e) => io_failed(r.id, &e),
            }
        }
        "read" => {
            let mut data = Vec::new();
            match std::fs::File::open(&path).and_then(|mut f| f.read_to_end(&mut data)) {
                Ok(_) => Response {
                    id: r.id,
                    kind: EventType::Ok,
                    value: inspect(&data),
                    error: None,
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Response {
                    id: r.id,
                    kind: EventType::Ok,
                    value: Value::Null,
                    error: None,
                },
                Err(e) => Response {
                    id: r.id,
                    kind: EventType::Fail,
                    value: Value::Null,
                    error: Some(e.to_string()),
                },
            }
        }
        other => Response {
            id: r.id,
            kind: EventType::Fail,
            value: Value::Null,
            error: Some(format!("unknown operation {other:?}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tell_which_write_and_whether_it_is_whole() {
        let c = content(42, 1000);
        assert_eq!(
            inspect(&c),
            json!({"seed": 42, "len": 1000, "intact": true})
        );
        let mut torn = c.clone();
        torn[500] ^= 1;
        assert_eq!(inspect(&torn)["intact"], false);
        assert_eq!(inspect(&c[..600])["intact"], false);
        assert_eq!(inspect(b"short")["intact"], false);
    }

    #[test]
    fn register_files_hold_their_value_and_anything_else_reads_as_unexplained() {
        assert_eq!(register_value(&register_bytes(42)), 42);
        assert_eq!(register_value(&register_bytes(0)), 0);
        assert_eq!(register_value(&register_bytes(42)[..10]), -1);
        assert_eq!(register_value(b""), -1);
        assert_eq!(register_value(&[b'x'; REGISTER_BYTES]), -1);
    }
}
