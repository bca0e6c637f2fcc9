//! Namespace behaviour that the model test does not reach: big directories and paging.

use std::collections::BTreeSet;
use std::sync::Arc;

use mobilus_meta::namespace::{Cf, Namespace, RocksStore, COMPACT_AT};
use mobilus_meta::types::{Command, Op, OpReply};
use mobilus_proto::fs::{FileKind, ROOT_INO};

fn must(ns: &Namespace, op: Op) -> OpReply {
    ns.execute(&Command {
        time_ns: 1,
        site: None,
        session: None,
        holder_only: false,
        fence: None,
        op,
    })
    .expect("store")
    .expect("op")
}

fn mknod(parent: u64, name: String) -> Op {
    Op::Mknod {
        parent,
        name: name.into_bytes(),
        kind: FileKind::Regular,
        mode: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
    }
}

#[test]
fn a_directory_of_100k_entries_pages_exactly_once_each_while_it_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let ns = Namespace::open(tmp.path()).unwrap();
    let OpReply::Attr(dir) = must(
        &ns,
        Op::Mkdir {
            parent: ROOT_INO,
            name: b"big".to_vec(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        },
    ) else {
        panic!("mkdir")
    };
    let n = 100_000;
    for i in 0..n {
        must(&ns, mknod(dir.ino, format!("f{i:06}")));
    }
    let mut seen = BTreeSet::new();
    let mut cookie = 0;
    let mut pages = 0;
    let mut removed = BTreeSet::new();
    loop {
        let (page, eof) = ns.readdir(dir.ino, cookie, 1000, false).unwrap();
        pages += 1;
        for e in &page {
            let name = String::from_utf8(e.name.clone()).unwrap();
            assert!(seen.insert(name.clone()), "{name} listed twice");
            assert!(
                !removed.contains(&name),
                "{name} listed after it was removed"
            );
            assert!(e.cookie > cookie, "cookies must increase");
            cookie = e.cookie;
        }
        if eof {
            break;
        }
        // Meanwhile: remove an entry not listed yet, and add a new one.
        if pages <= 10 {
            let victim = format!("f{:06}", n - pages);
            must(
                &ns,
                Op::Unlink {
                    parent: dir.ino,
                    name: victim.clone().into_bytes(),
                    keep_open: false,
                },
            );
            removed.insert(victim);
            must(&ns, mknod(dir.ino, format!("new{pages}")));
        }
    }
    assert_eq!(seen.len(), n - removed.len() + 10, "entries listed");
    assert!((100..=102).contains(&pages), "{pages} pages");
    for i in 1..=10 {
        assert!(
            seen.contains(&format!("new{i}")),
            "an entry added during the listing was missed"
        );
    }
    assert_eq!(ns.getattr(dir.ino).unwrap().nlink, 2);
    assert_eq!(ns.statfs().unwrap().files, 2 + (n - 10 + 10) as u64);
}

/// One log entry carries a batch of commands: later ones see earlier ones (scans included),
/// a refused one rolls back only itself, and the entry is applied atomically.
#[tokio::test]
async fn a_batched_entry_applies_its_commands_in_order_as_one_transaction() {
    use mobilus_meta::store;
    use mobilus_meta::types::{Entry, Proposal, TypeConfig};
    use mobilus_proto::status::Errno;
    use openraft::storage::RaftStateMachine;
    use openraft::{EntryPayload, LogId};

    let tmp = tempfile::tempdir().unwrap();
    let cmd = |op: Op| Command {
        time_ns: 5,
        site: None,
        session: None,
        holder_only: false,
        fence: None,
        op,
    };
    let d = b"d".to_vec();
    let cmds = vec![
        cmd(Op::Mkdir {
            parent: ROOT_INO,
            name: d.clone(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        }),
        cmd(mknod(2, "f".into())),
        cmd(Op::Rmdir {
            parent: ROOT_INO,
            name: d.clone(),
        }), // ENOTEMPTY: sees f
        cmd(Op::Mkdir {
            parent: ROOT_INO,
            name: d.clone(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        }), // EEXIST
        cmd(Op::Unlink {
            parent: 2,
            name: b"f".to_vec(),
            keep_open: false,
        }),
        cmd(Op::Rmdir {
            parent: ROOT_INO,
            name: d.clone(),
        }), // now empty
        cmd(mknod(ROOT_INO, "g".into())),
    ];
    let entry = Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), 1),
        payload: EntryPayload::<TypeConfig>::Normal(Proposal(cmds)),
    };
    {
        let (_log, mut sm) = store::open(tmp.path()).unwrap();
        let replies = sm.apply([entry]).await.unwrap();
        let r = &replies[0];
        assert_eq!(r.len(), 7);
        let errno = |i: usize| match &r[i] {
            Err(mobilus_meta::types::OpError::Errno(n)) => Some(Errno(*n)),
            _ => None,
        };
        assert!(r[0].is_ok() && r[1].is_ok(), "{r:?}");
        assert_eq!(errno(2), Some(Errno::ENOTEMPTY));
        assert_eq!(errno(3), Some(Errno::EEXIST));
        assert!(r[4].is_ok() && r[5].is_ok() && r[6].is_ok(), "{r:?}");
    }
    let (_log, sm) = store::open(tmp.path()).unwrap();
    let ns = sm.namespace();
    let (root, _) = ns.readdir(ROOT_INO, 0, 0, false).unwrap();
    assert_eq!(
        root.iter().map(|e| e.name.clone()).collect::<Vec<_>>(),
        vec![b"g".to_vec()]
    );
    assert_eq!(ns.getattr(ROOT_INO).unwrap().nlink, 2);
    assert_eq!(ns.statfs().unwrap().files, 2);
    assert_eq!(sm.last_applied().map(|l| l.index), Some(1));
}

#[test]
fn data_nodes_register_heartbeat_and_set_the_capacity_statfs_reports() {
    use mobilus_proto::fs::DataNodeInfo;
    use mobilus_proto::status::Errno;

    let tmp = tempfile::tempdir().unwrap();
    let ns = Namespace::open(tmp.path()).unwrap();
    let node = |site: &str, addr: &str, cap: u64| DataNodeInfo {
        site: site.into(),
        addr: addr.into(),
        capacity_bytes: cap,
        used_bytes: 1,
        last_heartbeat_ns: 0,
        draining: false,
        site_replicas: 0,
        workers: Vec::new(),
    };
    let at = |t: i64, n: DataNodeInfo| {
        ns.execute(&Command {
            time_ns: t,
            site: None,
            session: None,
            holder_only: false,
            fence: None,
            op: Op::RegisterDataNode { node: n },
        })
        .unwrap()
    };
    assert!(at(10, node("site-a", "10.0.0.1:7200", 100)).is_ok());
    assert!(at(11, node("site-b", "10.0.0.2:7200", 50)).is_ok());
    assert!(
        at(20, node("site-a", "10.0.0.1:7200", 100)).is_ok(),
        "heartbeat"
    );
    let a = ns.data_nodes(Some("site-a")).unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(
        a[0].last_heartbeat_ns, 20,
        "the heartbeat time is the command's"
    );
    assert_eq!(ns.data_nodes(None).unwrap().len(), 2);
    assert!(ns.data_nodes(Some("site-c")).unwrap().is_empty());
    assert_eq!(ns.statfs().unwrap().total_bytes, 150);
    for bad in [
        node("", "x:1", 1),
        node("a/b", "x:1", 1),
        node("site-a", "", 1),
    ] {
        let r = at(30, bad);
        assert_eq!(r, Err(mobilus_meta::types::OpError::Errno(Errno::EINVAL.0)));
    }
}

/// Many small overwrites and truncates across a few blocks: compaction keeps what a read
/// returns exactly as without it, the references equal to the records' (fsck), and the
/// records few (all gone with the file).
#[test]
fn compacted_slices_read_the_same_and_keep_references_consistent() {
    use mobilus_meta::namespace::keys::BLOCK_SIZE;
    use mobilus_meta::namespace::COMPACT_AT;
    use mobilus_proto::fs::{ChunkHash, ChunkRef, SetAttr, SliceWrite};

    let tmp = tempfile::tempdir().unwrap();
    let ns = Namespace::open(tmp.path()).unwrap();
    let OpReply::Attr(f) = must(&ns, mknod(ROOT_INO, "f".into())) else {
        panic!("mknod");
    };
    const SIZE: usize = 2 * BLOCK_SIZE as usize + (256 << 10);
    const WRITES: u32 = 1_500;
    // What each byte should read as: (chunk id, offset in the chunk), or a hole.
    let mut model: Vec<Option<(u8, u64)>> = Vec::new();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut used = BTreeSet::new();
    for i in 0..WRITES {
        if i % 500 == 250 {
            let report = ns.fsck().unwrap();
            assert_eq!(report.problem_count, 0, "{:?}", report.problems);
            // At most COMPACT_AT records per block a write touched since its last
            // compaction, and no more than a few blocks.
            let blocks = (SIZE as u64).div_ceil(BLOCK_SIZE);
            assert!(
                report.slices <= blocks * (COMPACT_AT as u64 + 1),
                "{} records for {blocks} blocks",
                report.slices
            );
        }
        if i % 10 == 9 {
            let size = next(SIZE as u64);
            must(
                &ns,
                Op::SetAttr {
                    ino: f.ino,
                    set: SetAttr {
                        size: Some(size),
                        ..SetAttr::default()
                    },
                },
            );
            model.resize(size as usize, None);
            continue;
        }
        let (offset, len) = (next(SIZE as u64 - 1), 1 + next(8192));
        let (id, at) = ((i % 200) as u8, next(1 << 20));
        used.insert(id);
        let slice = SliceWrite {
            offset,
            len,
            chunks: vec![ChunkRef {
                hash: ChunkHash([id; 32]),
                offset: at,
                len,
            }],
        };
        must(
            &ns,
            Op::Write {
                ino: f.ino,
                slices: vec![slice],
                checks: Vec::new(),
            },
        );
        let end = (offset + len) as usize;
        if model.len() < end {
            model.resize(end, None);
        }
        for k in 0..len {
            model[(offset + k) as usize] = Some((id, at + k));
        }
    }
    let (extents, attr) = ns.read_slices(f.ino, 0, SIZE as u64).unwrap();
    let size = attr.size;
    assert_eq!(size as usize, model.len());
    let mut got: Vec<Option<(u8, u64)>> = Vec::new();
    for e in extents {
        for k in 0..e.len {
            got.push(e.chunk.map(|c| (c.hash.0[0], c.offset + k)));
        }
    }
    assert!(got == model, "compaction changed what the file reads as");

    must(
        &ns,
        Op::Unlink {
            parent: ROOT_INO,
            name: b"f".to_vec(),
            keep_open: false,
        },
    );
    let hashes: Vec<ChunkHash> = used.iter().map(|id| ChunkHash([*id; 32])).collect();
    for (refs, _) in ns.chunk_refs(&hashes).unwrap() {
        assert_eq!(refs, 0, "a reference outlived the file");
    }
}

/// Deletes in the slice records' active memtable.
fn memtable_deletes(rocks: &RocksStore) -> u64 {
    let slices = rocks.db().cf_handle(Cf::Slices.name()).expect("slices");
    rocks
        .db()
        .property_int_value_cf(&slices, "rocksdb.num-deletes-active-mem-table")
        .expect("property")
        .expect("a value")
}

#[test]
fn a_block_written_over_and_over_leaves_few_tombstones_for_its_scans() {
    let tmp = tempfile::tempdir().unwrap();
    let rocks = Arc::new(RocksStore::open(tmp.path()).unwrap());
    let ns = Namespace::new(rocks.clone()).unwrap();
    let OpReply::Attr(file) = must(&ns, mknod(ROOT_INO, "hot".into())) else {
        panic!("not an attr");
    };
    // Each write scans the block's records; every COMPACT_AT writes they are compacted,
    // deleting them all. Without the flush on hidden entries, every delete stays in the
    // memtable and each scan steps over all of them.
    let writes = 64 * COMPACT_AT as u64;
    for i in 0..writes {
        let offset = (i * 7919 % 1024) * 4096;
        must(
            &ns,
            crate::clone::write(file.ino, offset, 4096, (i % 251) as u8),
        );
    }
    let deleted_per_write = (COMPACT_AT as u64 + 1) as f64 / COMPACT_AT as f64;
    assert!(
        writes as f64 * deleted_per_write > 2000.0,
        "the writes must delete more records than the bound below"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let deletes = memtable_deletes(&rocks);
        if deletes <= 512 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{deletes} deletes still in the active memtable after {writes} writes to one block"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The keys of `ino`'s slice records, in order.
fn slice_keys(rocks: &RocksStore, ino: u64) -> BTreeSet<Vec<u8>> {
    let slices = rocks.db().cf_handle(Cf::Slices.name()).expect("slices");
    rocks
        .db()
        .prefix_iterator_cf(&slices, ino.to_be_bytes())
        .map(|item| item.expect("read").0.to_vec())
        .take_while(|k| k.starts_with(&ino.to_be_bytes()))
        .collect()
}

/// A sparse block written at random compacts to one record per separate extent, so it
/// stays over COMPACT_AT records; the records a compaction wrote are not rewritten by the
/// writes after it until COMPACT_AT more have piled up.
#[test]
fn a_sparse_block_is_not_compacted_again_by_every_write() {
    let tmp = tempfile::tempdir().unwrap();
    let rocks = Arc::new(RocksStore::open(tmp.path()).unwrap());
    let ns = Namespace::new(rocks.clone()).unwrap();
    let OpReply::Attr(file) = must(&ns, mknod(ROOT_INO, "sparse".into())) else {
        panic!("not an attr");
    };
    // 4 KiB pieces 8 KiB apart, in a scattered order: no two ever touch.
    let write_piece = |i: u64| {
        let offset = (i * 37 % 256) * 8192;
        must(
            &ns,
            crate::clone::write(file.ino, offset, 4096, (i % 251) as u8),
        );
    };
    let compacted_at = COMPACT_AT as u64 + 1;
    (0..compacted_at).for_each(write_piece);
    let compacted = slice_keys(&rocks, file.ino);
    assert_eq!(compacted.len() as u64, compacted_at, "one record per piece");
    for i in compacted_at..compacted_at + COMPACT_AT as u64 {
        write_piece(i);
        let now = slice_keys(&rocks, file.ino);
        assert!(
            compacted.is_subset(&now),
            "write {i} rewrote the records the compaction before it wrote"
        );
    }
    // The next one is the COMPACT_AT + 1st since: the block is compacted again.
    let i = compacted_at + COMPACT_AT as u64;
    write_piece(i);
    let now = slice_keys(&rocks, file.ino);
    assert!(
        compacted.is_disjoint(&now),
        "the block was not compacted again"
    );
    assert_eq!(now.len() as u64, i + 1);
}
