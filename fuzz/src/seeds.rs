//! Seed inputs: one or more well-formed inputs per target, from which the fuzzer mutates,
//! and the namespace that [`crate::meta::stored_values`] damages.

use mobilus_meta::codec;
use mobilus_meta::namespace::Namespace;
use mobilus_meta::types::{Command, Entry, Op, OpReply, Proposal};
use mobilus_proto::blocks::Outboard;
use mobilus_proto::fs::{
    ChunkHash, ChunkRef, DataMode, DataNodeInfo, FileKind, LockKind, LockRequest, ProfileRead,
    SetAttr, SitePlacement, SliceWrite, TimeSet,
};
use mobilus_proto::{datapb, pb};
use openraft::{EntryPayload, LogId};
use prost::Message;

use crate::{framed, wire};

const SITE: &str = "site-a";

fn command(i: usize, op: Op) -> Command {
    Command {
        time_ns: 1_700_000_000_000_000_000 + i as i64 * 1_000_000,
        site: Some(SITE.into()),
        fence: None,
        op,
        session: None,
        holder_only: false,
    }
}

fn hash(i: u8) -> ChunkHash {
    ChunkHash::of(&[i; 100])
}

fn slice(offset: u64, len: u64, h: u8) -> SliceWrite {
    SliceWrite {
        offset,
        len,
        chunks: vec![ChunkRef {
            hash: hash(h),
            offset: 0,
            len,
        }],
    }
}

/// A namespace with something of everything (directories, files with slices, links,
/// xattrs, a subtree with placement and profile, a session with a lock and a
/// delegation, a clone, a data node, condemned chunks), and the commands that made it.
pub fn scenario() -> (Namespace, Vec<Command>) {
    let ns = Namespace::in_memory().expect("an in-memory namespace");
    let mut done: Vec<Command> = Vec::new();
    // Commands 1 ms apart; `later` jumps past every lease (a forced move).
    let mut later = 0usize;
    let mut run = |op: Op| -> Option<OpReply> {
        if matches!(op, Op::MoveSubtree { .. }) {
            later += 60_000;
        }
        let cmd = command(done.len() + later, op);
        let reply = ns.execute(&cmd).expect("memory does not fail");
        done.push(cmd);
        reply.ok()
    };
    let ino = |r: Option<OpReply>| match r {
        Some(OpReply::Attr(a)) => a.ino,
        _ => 1,
    };
    for (site, addr) in [(SITE, "127.0.0.1:7200"), ("site-b", "127.0.0.1:7201")] {
        run(Op::RegisterDataNode {
            node: DataNodeInfo {
                site: site.into(),
                addr: addr.into(),
                capacity_bytes: 1 << 40,
                used_bytes: 1 << 20,
                last_heartbeat_ns: 0,
                draining: false,
                site_replicas: 0,
                workers: Vec::new(),
            },
        });
    }
    let db = ino(run(Op::Mkdir {
        parent: 1,
        name: b"db".to_vec(),
        mode: 0o755,
        uid: 0,
        gid: 0,
    }));
    run(Op::CreateSubtree {
        root: db,
        owner: SITE.into(),
    });
    let file = ino(run(Op::Mknod {
        parent: db,
        name: b"table".to_vec(),
        kind: FileKind::Regular,
        mode: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
    }));
    run(Op::Write {
        ino: file,
        slices: vec![slice(0, 100, 1), slice(4096, 100, 2)],
        checks: Vec::new(),
    });
    run(Op::Write {
        ino: file,
        slices: vec![slice(50, 100, 3)],
        checks: Vec::new(),
    });
    run(Op::SetAttr {
        ino: file,
        set: SetAttr {
            mode: Some(0o600),
            uid: None,
            gid: None,
            size: Some(8000),
            atime: Some(TimeSet::Now),
            mtime: Some(TimeSet::Ns(5)),
            ctime_ns: None,
        },
    });
    run(Op::SetXattr {
        ino: file,
        name: b"user.a".to_vec(),
        value: b"1".to_vec(),
        flags: 0,
    });
    run(Op::Symlink {
        parent: db,
        name: b"link".to_vec(),
        target: b"table".to_vec(),
        uid: 0,
        gid: 0,
    });
    run(Op::Link {
        ino: file,
        new_parent: db,
        new_name: b"hard".to_vec(),
    });
    run(Op::Rename {
        parent: db,
        name: b"hard".to_vec(),
        new_parent: db,
        new_name: b"moved".to_vec(),
        flags: 0,
    });
    run(Op::SetPlacement {
        root: db,
        sites: vec![SitePlacement {
            site: "site-b".into(),
            mode: DataMode::Eager,
            sync: false,
        }],
    });
    run(Op::SetProfile {
        root: db,
        reads: vec![ProfileRead {
            hash: hash(1),
            first_block: 0,
            blocks: 1,
        }],
    });
    let session = match run(Op::OpenSession) {
        Some(OpReply::Session { id, .. }) => id,
        _ => 1,
    };
    run(Op::SetLock {
        lock: LockRequest {
            ino: file,
            session,
            owner: 7,
            start: 0,
            end: 100,
            kind: LockKind::Write,
        },
        pid: 42,
    });
    run(Op::ReserveInodes { session });
    run(Op::StartClone {
        src: db,
        parent: 1,
        name: b"db-clone".to_vec(),
        owner: None,
        snapshot: false,
    });
    let clone = ns
        .clones()
        .ok()
        .and_then(|c| c.first().map(|c| c.dst))
        .unwrap_or(2);
    run(Op::CloneStep {
        dst: clone,
        limit: 100,
    });
    run(Op::Unlink {
        parent: db,
        name: b"moved".to_vec(),
        keep_open: false,
    });
    run(Op::AcquireDelegation {
        session,
        subtree: db,
    });
    run(Op::AckFeed {
        root: db,
        site: "site-b".into(),
        seq: 1,
        backlog_chunks: 0,
        backlog_bytes: 0,
        rate_bps: 0,
        scanning: false,
    });
    run(Op::Condemn {
        node: "127.0.0.1:7200".into(),
        hashes: vec![hash(9)],
        grace_ns: 0,
    });
    run(Op::MoveSubtree {
        root: db,
        to: "site-b".into(),
        force: true,
    });
    (ns, done)
}

/// Commands run on a damaged namespace: they read what the damage touched.
pub fn follow_up() -> Vec<Command> {
    let ops = [
        Op::Write {
            ino: 4,
            slices: vec![slice(10, 10, 4)],
            checks: Vec::new(),
        },
        Op::Rename {
            parent: 2,
            name: b"table".to_vec(),
            new_parent: 1,
            new_name: b"t2".to_vec(),
            flags: 0,
        },
        Op::Unlink {
            parent: 1,
            name: b"t2".to_vec(),
            keep_open: false,
        },
        Op::RenewSession { session: 1 },
        Op::CloneStep { dst: 8, limit: 100 },
        Op::MoveSubtree {
            root: 2,
            to: SITE.into(),
            force: true,
        },
        Op::CloseSession { session: 1 },
        Op::Rmdir {
            parent: 1,
            name: b"db".to_vec(),
        },
    ];
    ops.into_iter()
        .enumerate()
        .map(|(i, op)| command(1000 + i, op))
        .collect()
}

fn entry(index: u64, cmds: Vec<Command>) -> Entry {
    Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal(cmds)),
    }
}

fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(body);
    v
}

/// The seeds of target `name`.
pub fn inputs(name: &str) -> Vec<Vec<u8>> {
    match name {
        "log_entries" => {
            let (_, cmds) = scenario();
            let entries: Vec<Vec<u8>> = cmds
                .into_iter()
                .enumerate()
                .map(|(i, c)| codec::encode(&entry(i as u64 + 1, vec![c])).expect("encodes"))
                .collect();
            vec![framed(&entries)]
        }
        "stored_values" => vec![
            framed(&[[0u8, 0, 0, 1, 2, 3]]),
            framed(&[vec![1u8, 1, 0], vec![3u8, 0, 0, 1]]),
        ],
        "raft_messages" => {
            let (_, cmds) = scenario();
            let append = openraft::raft::AppendEntriesRequest::<mobilus_meta::types::TypeConfig> {
                vote: openraft::Vote::new_committed(1, 1),
                prev_log_id: None,
                entries: vec![entry(1, cmds[..3].to_vec())],
                leader_commit: None,
            };
            let vote = openraft::raft::VoteRequest::<u64>::new(openraft::Vote::new(2, 2), None);
            vec![
                tagged(0, &codec::encode(&append).expect("encodes")),
                tagged(1, &codec::encode(&vote).expect("encodes")),
            ]
        }
        "snapshot_archive" => {
            let dir = crate::scratch_dir();
            let src = dir.path().join("src");
            std::fs::create_dir(&src).expect("a scratch folder");
            std::fs::write(src.join("CURRENT"), b"MANIFEST-000001\n").expect("a scratch file");
            std::fs::write(src.join("000001.sst"), vec![7u8; 300]).expect("a scratch file");
            let out = dir.path().join("s.snap");
            mobilus_meta::store::archive::pack(&src, &Default::default(), &out).expect("packs");
            let mut bytes = std::fs::read(&out).expect("reads");
            bytes.truncate(bytes.len() - 32);
            vec![bytes]
        }
        "wire_requests" => {
            let write = pb::WriteRequest {
                ino: 5,
                slices: vec![pb::SliceWrite {
                    offset: 0,
                    length: 100,
                    chunks: vec![pb::ChunkRef {
                        hash: hash(1).0.to_vec(),
                        offset: 0,
                        length: 100,
                    }],
                }],
                fence: Some(pb::Fence {
                    subtree: 2,
                    epoch: 3,
                    site: SITE.into(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let mknod = pb::MknodRequest {
                parent: 1,
                name: b"x".to_vec(),
                kind: pb::FileKind::Regular as i32,
                ..Default::default()
            };
            vec![
                tagged(1, &write.encode_to_vec()),
                tagged(0, &mknod.encode_to_vec()),
            ]
        }
        "block_replies" => {
            let chunk = wire::true_chunk();
            let outboard = Outboard::compute(chunk);
            let (a, b) = mobilus_proto::blocks::block_span(chunk.len() as u64, 1);
            let reply = datapb::ReadBlocksReply {
                chunk_size: chunk.len() as u64,
                first_block: 1,
                data: chunk[a as usize..b as usize].to_vec().into(),
                outboard: outboard.to_bytes(),
            };
            vec![tagged(1, &reply.encode_to_vec())]
        }
        "chunk_stream" => {
            let data = b"a chunk of a few bytes".to_vec();
            let header = datapb::PutRequest {
                part: Some(datapb::put_request::Part::Header(datapb::PutHeader {
                    hash: ChunkHash::of(&data).0.to_vec(),
                    size: data.len() as u64,
                    ..Default::default()
                })),
            };
            let (x, y) = data.split_at(8);
            let body = |d: &[u8]| datapb::PutRequest {
                part: Some(datapb::put_request::Part::Data(d.to_vec())),
            };
            vec![framed(&[
                header.encode_to_vec(),
                body(x).encode_to_vec(),
                body(y).encode_to_vec(),
            ])]
        }
        "edn_history" => vec![
            b"{:type :invoke, :f :write, :value 3, :process 0, :time 1, :index 0}\n\
              {:type :ok, :f :write, :value 3, :process 0, :time 2, :index 1}\n\
              {:type :invoke, :f :read, :value nil, :process 1, :time 3, :index 2}\n\
              {:type :ok, :f :read, :value 3, :process 1, :time 4, :index 3}\n"
                .to_vec(),
        ],
        "config_files" => vec![
            tagged(
                0,
                b"id = 1\ndata_dir = \"/var/lib/mobilus\"\nlisten = \"0.0.0.0:7100\"\n\
                  join = [\"10.0.0.2:7100\"]\nheartbeat_ms = 100\n",
            ),
            tagged(1, &crate::outside::seed_pem()),
        ],
        _ => Vec::new(),
    }
}
