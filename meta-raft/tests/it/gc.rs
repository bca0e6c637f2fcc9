//! The metadata's half of garbage collection, on the state machine directly: which
//! chunks are condemned, which writes are refused, and bad requests.

use mobilus_meta::namespace::Namespace;
use mobilus_meta::types::{Command, Op, OpError, OpReply, Reply};
use mobilus_proto::fs::{
    ChunkCheck, ChunkHash, ChunkRef, FileKind, SliceWrite, MAX_GC_BATCH, ROOT_INO,
};
use mobilus_proto::status::Errno;

const NODE: &str = "10.0.0.1:7200";

fn at(ns: &Namespace, time_ns: i64, op: Op) -> Reply {
    ns.execute(&Command {
        time_ns,
        site: None,
        session: None,
        holder_only: false,
        fence: None,
        op,
    })
    .expect("store")
}

fn write(ino: u64, hash: ChunkHash, checks: Vec<ChunkCheck>) -> Op {
    Op::Write {
        ino,
        slices: vec![SliceWrite {
            offset: 0,
            len: 10,
            chunks: vec![ChunkRef {
                hash,
                offset: 0,
                len: 10,
            }],
        }],
        checks,
    }
}

fn check(gc_gen: u64) -> Vec<ChunkCheck> {
    vec![ChunkCheck {
        node: NODE.into(),
        gc_gen,
    }]
}

fn condemn(ns: &Namespace, t: i64, hashes: &[ChunkHash], grace_ns: i64) -> Vec<ChunkHash> {
    let op = Op::Condemn {
        node: NODE.into(),
        hashes: hashes.to_vec(),
        grace_ns,
    };
    match at(ns, t, op) {
        Ok(OpReply::Condemned { hashes, .. }) => hashes,
        other => panic!("condemn: {other:?}"),
    }
}

fn forget(ns: &Namespace, hashes: &[ChunkHash]) -> u64 {
    let op = Op::ForgetCondemned {
        node: NODE.into(),
        hashes: hashes.to_vec(),
    };
    match at(ns, 0, op) {
        Ok(OpReply::GcGen(g)) => g,
        other => panic!("forget: {other:?}"),
    }
}

fn file(ns: &Namespace, name: &str) -> u64 {
    let op = Op::Mknod {
        parent: ROOT_INO,
        name: name.as_bytes().to_vec(),
        kind: FileKind::Regular,
        mode: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
    };
    match at(ns, 1, op) {
        Ok(OpReply::Attr(a)) => a.ino,
        other => panic!("mknod: {other:?}"),
    }
}

fn is_stale(r: Reply) -> bool {
    matches!(r, Err(OpError::StaleChunks(_)))
}

#[test]
fn only_chunks_unreferenced_for_the_grace_period_are_condemned() {
    let tmp = tempfile::tempdir().unwrap();
    let ns = Namespace::open(tmp.path()).unwrap();
    let (used, freed, never) = (
        ChunkHash::of(b"used"),
        ChunkHash::of(b"freed"),
        ChunkHash::of(b"never"),
    );
    let f = file(&ns, "f");
    let g = file(&ns, "g");
    at(&ns, 10, write(f, used, Vec::new())).unwrap();
    at(&ns, 10, write(g, freed, Vec::new())).unwrap();
    at(
        &ns,
        100,
        Op::Unlink {
            parent: ROOT_INO,
            name: b"g".to_vec(),
            keep_open: false,
        },
    )
    .unwrap();
    // At 150, `freed` has had no reference for 50 ns: less than the grace of 100.
    assert_eq!(condemn(&ns, 150, &[used, freed, never], 100), vec![never]);
    let mut both = condemn(&ns, 200, &[used, freed], 100);
    both.sort();
    let mut want = vec![freed, never];
    want.sort();
    assert_eq!(both, want, "a round also returns what earlier ones left");
    assert_eq!(
        ns.chunk_refs(&[used, freed]).unwrap(),
        vec![(1, 0), (0, 100)]
    );
}

#[test]
fn writes_that_may_rely_on_a_deleted_chunk_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ns = Namespace::open(tmp.path()).unwrap();
    let (h, other) = (ChunkHash::of(b"h"), ChunkHash::of(b"other"));
    let f = file(&ns, "f");
    assert_eq!(condemn(&ns, 5, &[h], 0), vec![h]);
    // While condemned, nobody may reference it, whatever they checked.
    assert!(is_stale(at(&ns, 6, write(f, h, check(0)))));
    assert!(is_stale(at(&ns, 6, write(f, h, Vec::new()))));
    assert_eq!(forget(&ns, &[h]), 1);
    // An answer from before the deletion is stale for that chunk only.
    assert!(is_stale(at(&ns, 7, write(f, h, check(0)))));
    at(&ns, 7, write(f, other, check(0))).unwrap();
    // An answer given after it is fine.
    at(&ns, 8, write(f, h, check(1))).unwrap();
    // A referenced chunk is never condemned.
    assert!(condemn(&ns, 9, &[h], 0).is_empty());
}

#[test]
fn tombstones_expire_and_very_old_answers_are_refused_outright() {
    let tmp = tempfile::tempdir().unwrap();
    let ns = Namespace::open(tmp.path()).unwrap();
    let f = file(&ns, "f");
    let first = ChunkHash::of(b"first");
    condemn(&ns, 1, &[first], 0);
    forget(&ns, &[first]);
    let window = mobilus_meta::namespace::TOMBSTONE_GENERATIONS;
    for i in 0..window + 1 {
        let h = ChunkHash::of(&i.to_be_bytes());
        condemn(&ns, 2, &[h], 0);
        forget(&ns, &[h]);
    }
    let current = window + 2;
    assert!(is_stale(at(
        &ns,
        3,
        write(f, ChunkHash::of(b"x"), check(0))
    )));
    // `first`'s tombstone is pruned; an answer inside the window may now use it.
    at(&ns, 3, write(f, first, check(current - window))).unwrap();
}

#[test]
fn bad_gc_requests_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ns = Namespace::open(tmp.path()).unwrap();
    let errno = |op| match at(&ns, 1, op) {
        Err(OpError::Errno(n)) => Errno(n),
        other => panic!("{other:?}"),
    };
    let too_many = vec![ChunkHash::of(b"x"); MAX_GC_BATCH + 1];
    let condemn = |node: &str, hashes: Vec<ChunkHash>, grace_ns| Op::Condemn {
        node: node.into(),
        hashes,
        grace_ns,
    };
    assert_eq!(errno(condemn(NODE, too_many.clone(), 0)), Errno::E2BIG);
    assert_eq!(errno(condemn("", vec![], 0)), Errno::EINVAL);
    assert_eq!(errno(condemn(NODE, vec![], -1)), Errno::EINVAL);
    let forget = Op::ForgetCondemned {
        node: NODE.into(),
        hashes: too_many.clone(),
    };
    assert_eq!(errno(forget), Errno::E2BIG);
    assert!(matches!(ns.chunk_refs(&too_many), Err(e) if e.to_string().contains("E2BIG")));
}

/// fsck counts what is there and names each planted inconsistency.
#[test]
fn fsck_reports_planted_inconsistencies() {
    use mobilus_meta::namespace::keys::{self, Cf};
    let dir = tempfile::tempdir().unwrap();
    let ns = Namespace::open(dir.path()).unwrap();
    let ino = match at(
        &ns,
        1,
        Op::Mknod {
            parent: ROOT_INO,
            name: b"f".to_vec(),
            kind: FileKind::Regular,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
        },
    ) {
        Ok(OpReply::Attr(a)) => a.ino,
        other => panic!("mknod: {other:?}"),
    };
    let h = ChunkHash::of(b"0123456789");
    at(&ns, 2, write(ino, h, Vec::new())).unwrap();
    let clean = ns.fsck().unwrap();
    assert_eq!(clean.problem_count, 0, "{:?}", clean.problems);
    assert_eq!((clean.inodes, clean.files, clean.slices), (2, 1, 1));
    assert_eq!((clean.referenced_chunks, clean.chunk_references), (1, 1));

    // Plant: a reference count off by one, and an entry naming a missing inode.
    let ghost = mobilus_meta::namespace::DentryRecord {
        ino: 999,
        kind: FileKind::Regular,
        cookie: 77,
    };
    let mut planted = mobilus_meta::namespace::kv::WriteSet::new();
    planted.insert(
        (Cf::ChunkRefs, h.0.to_vec()),
        Some(mobilus_meta::codec::encode(&2u64).unwrap()),
    );
    planted.insert(
        (Cf::Dentries, keys::with_name(ROOT_INO, b"ghost")),
        Some(mobilus_meta::codec::encode(&ghost).unwrap()),
    );
    ns.store().write(planted, false).unwrap();
    let bad = ns.fsck().unwrap();
    let all = bad.problems.join("\n");
    assert!(all.contains("counted 2 times but referenced 1"), "{all}");
    assert!(all.contains("names missing inode 999"), "{all}");
    assert!(all.contains("cookie 77 that does not name it"), "{all}");
    assert_eq!(bad.problem_count, 3, "{all}");
}
