//! `mobilus-fuzz`: every decoder that reads bytes from outside a process, as a fuzz
//! target: a plain function of the input bytes that must return, whatever the bytes,
//! without panicking, hanging or allocating without bound, and that checks what it can
//! of the answer (a verified read returns the true bytes; a stored chunk hashes to its
//! name).
//!
//! libFuzzer drives them through the harness in `fuzz/libfuzzer` (one binary per
//! target, built by `cargo fuzz` with nightly); `scripts/fuzz.sh` runs a pass, the test
//! command a short one. This crate's tests replay the seeds ([`seeds`]) and every input
//! that once crashed a target (`fuzz/regressions/TARGET/`) under plain `cargo test`.
//!
//! The targets, by where their bytes come from:
//! - [`wire`]: protobuf requests into domain values (what a server decodes from any
//!   client), and replies a mount verifies (a data node's blocks, from any site);
//! - [`meta`]: Raft messages and log entries (decoded, then applied to a state machine),
//!   stored values (a namespace whose stored records are corrupted, then read and
//!   changed), snapshot archives (unpacked);
//! - [`data`]: a put's stream of frames into a data node's store;
//! - [`outside`]: Jepsen histories (EDN, then checked) and configuration files (a
//!   member's TOML, certificates and keys).

pub mod data;
pub mod meta;
pub mod outside;
pub mod seeds;
pub mod wire;

/// A target: its name and its function.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by the name its libFuzzer binary and its folders have.
pub const TARGETS: &[Target] = &[
    ("wire_requests", wire::requests),
    ("block_replies", wire::block_replies),
    ("raft_messages", meta::raft_messages),
    ("log_entries", meta::log_entries),
    ("stored_values", meta::stored_values),
    ("snapshot_archive", meta::snapshot_archive),
    ("chunk_stream", data::chunk_stream),
    ("edn_history", outside::edn_history),
    ("config_files", outside::config_files),
];

/// Split `input` into frames, each a little-endian u16 length and that many bytes (the
/// last one cut short if the input ends first). Targets that take several values use it.
pub fn frames(mut input: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if input.len() < 2 {
            return None;
        }
        let len = u16::from_le_bytes([input[0], input[1]]) as usize;
        let body = &input[2..];
        let (frame, rest) = body.split_at(len.min(body.len()));
        input = rest;
        Some(frame)
    })
}

/// The inverse of [`frames`], for seeds.
pub fn framed<T: AsRef<[u8]>>(parts: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        let p = p.as_ref();
        let len = p.len().min(u16::MAX as usize);
        out.extend_from_slice(&(len as u16).to_le_bytes());
        out.extend_from_slice(&p[..len]);
    }
    out
}

/// A folder for targets that need files: in memory (`/dev/shm`) where there is one, so
/// that an fsync costs nothing and a fuzzing run does not wear the disk.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let builder = {
        let mut b = tempfile::Builder::new();
        b.prefix("mobilus-fuzz-");
        b
    };
    if shm.is_dir() {
        if let Ok(d) = builder.tempdir_in(shm) {
            return d;
        }
    }
    builder.tempdir().expect("a temporary folder")
}
