//! The metadata service's own formats: Raft messages between members, log entries and the
//! state machine that applies them, the records it stores, and snapshot archives.

use std::collections::BTreeMap;
use std::io::Write;

use mobilus_meta::codec;
use mobilus_meta::namespace::keys::Cf;
use mobilus_meta::namespace::Namespace;
use mobilus_meta::server::{ForwardReply, Forwarded};
use mobilus_meta::store::archive;
use mobilus_meta::types::{Entry, NodeId, SnapshotMeta, TypeConfig};
use mobilus_proto::fs::{LockKind, LockRequest};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::EntryPayload;

use crate::{frames, scratch_dir, seeds};

/// A message between metadata members (the first byte says which kind; the rest is its
/// encoding), as the `Raft` service and the forwarding of writes decode them.
pub fn raft_messages(input: &[u8]) {
    let Some((&which, body)) = input.split_first() else {
        return;
    };
    match which % 9 {
        0 => drop(codec::decode::<AppendEntriesRequest<TypeConfig>>(body)),
        1 => drop(codec::decode::<VoteRequest<NodeId>>(body)),
        2 => drop(codec::decode::<InstallSnapshotRequest<TypeConfig>>(body)),
        3 => drop(codec::decode::<AppendEntriesResponse<NodeId>>(body)),
        4 => drop(codec::decode::<VoteResponse<NodeId>>(body)),
        5 => drop(codec::decode::<InstallSnapshotResponse<NodeId>>(body)),
        6 => drop(codec::decode::<Forwarded>(body)),
        7 => drop(codec::decode::<ForwardReply>(body)),
        _ => drop(codec::decode::<SnapshotMeta>(body)),
    }
}

/// Log entries (each one [`frames`] frame, as the log store keeps them), decoded and
/// applied in order to a new namespace, which is then read whole (fsck).
pub fn log_entries(input: &[u8]) {
    let ns = Namespace::in_memory().expect("an in-memory namespace");
    for frame in frames(input) {
        let Ok(entry) = codec::decode::<Entry>(frame) else {
            continue;
        };
        if let EntryPayload::Normal(proposal) = entry.payload {
            for cmd in &proposal.0 {
                let _ = ns.execute(cmd);
            }
        }
    }
    read_everything(&ns);
}

/// A namespace whose stored records were damaged: each frame is a column family (first
/// byte), which of its keys (next two bytes) and the value it gets instead (the rest).
/// Then everything is read, and more commands run: errors, never a panic.
pub fn stored_values(input: &[u8]) {
    let (ns, _) = seeds::scenario();
    for frame in frames(input) {
        let [cf, k0, k1, value @ ..] = frame else {
            continue;
        };
        let cf = Cf::ALL[*cf as usize % Cf::ALL.len()];
        let Ok(keys) = ns.with_view(|txn| Ok(txn.scan_all(cf, &[])?)) else {
            continue;
        };
        if keys.is_empty() {
            continue;
        }
        let key = keys[u16::from_le_bytes([*k0, *k1]) as usize % keys.len()]
            .0
            .clone();
        let mut writes = BTreeMap::new();
        writes.insert((cf, key), Some(value.to_vec()));
        ns.store().write(writes, false).expect("a write to memory");
    }
    read_everything(&ns);
    for cmd in seeds::follow_up() {
        let _ = ns.execute(&cmd);
    }
    read_everything(&ns);
}

/// Every query of the namespace, over whatever it holds.
fn read_everything(ns: &Namespace) {
    let _ = ns.fsck();
    let _ = ns.statfs();
    let _ = ns.data_nodes(None);
    let _ = ns.referenced_chunks(None, 1000);
    let _ = ns.clones();
    let _ = ns.followers(None);
    let subtrees = ns.subtrees().unwrap_or_default();
    for s in &subtrees {
        let _ = ns.subtree(s.root);
        let _ = ns.placement(s.root);
        let _ = ns.profile(s.root);
        let _ = ns.subtree_chunks(s.root);
        let _ = ns.snapshots(s.root);
        let _ = ns.subtree_usage(s.root);
    }
    for ino in 1..40 {
        let Ok(attr) = ns.getattr(ino) else {
            continue;
        };
        let _ = ns.readdir(ino, 0, 0, true);
        let _ = ns.read_slices(ino, 0, attr.size.max(1));
        let _ = ns.readlink(ino);
        if let Ok(names) = ns.listxattr(ino) {
            for n in names {
                let _ = ns.getxattr(ino, &n);
            }
        }
        let _ = ns.locks_on(ino);
        let _ = ns.get_lock(LockRequest {
            ino,
            session: 1,
            owner: 1,
            start: 0,
            end: u64::MAX,
            kind: LockKind::Write,
        });
    }
    for session in 0..4 {
        let _ = ns.delegations_of(session, 0);
    }
}

/// A snapshot archive from another member, unpacked. The input is the archive without
/// its trailing checksum, which is added so that the fuzzer explores what follows a
/// verified checksum (the checksum is a BLAKE3, not something to fuzz past). Nothing may
/// be written outside the folder it is unpacked into.
pub fn snapshot_archive(input: &[u8]) {
    let dir = scratch_dir();
    let path = dir.path().join("in.snap");
    let mut file = std::fs::File::create(&path).expect("a scratch file");
    file.write_all(input).expect("a scratch write");
    file.write_all(blake3::hash(input).as_bytes())
        .expect("a scratch write");
    drop(file);
    let _ = archive::peek_meta(&path);
    let dest = dir.path().join("out");
    let _ = archive::unpack(&path, &dest);
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("the scratch folder")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    names.sort();
    assert!(
        names.iter().all(|n| n == "in.snap" || n == "out"),
        "unpacking wrote outside its folder: {names:?}"
    );
}
