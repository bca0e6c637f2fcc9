//! Range reads of chunks by verified blocks (`ChunkStore::read_blocks`).

use std::sync::Arc;

use mobilus_data::disk::{FaultyDisk, LocalDisk};
use mobilus_data::store::ChunkStore;
use mobilus_data::DataError;
use mobilus_proto::blocks::{self, Outboard, BLOCK};
use mobilus_proto::fs::ChunkHash;
use mobilus_proto::noise::noise;

fn chunk_path(root: &std::path::Path, h: &ChunkHash) -> std::path::PathBuf {
    let hex = h.to_hex();
    root.join("chunks").join(&hex[..2]).join(hex)
}

/// Read `[offset, offset+len)` through `read_blocks` and check what a client would.
fn must_read_range(store: &ChunkStore, h: &ChunkHash, data: &[u8], offset: u64, len: u64) {
    let r = store.read_blocks(h, offset, len, true).unwrap();
    let size = data.len() as u64;
    assert_eq!(r.chunk_size, size);
    let ob = Outboard::verified(*h, size, r.outboard.as_deref().unwrap()).unwrap();
    let (first, end) = blocks::blocks_covering(offset, len.min(size - offset));
    assert_eq!(r.first_block, first);
    let start = blocks::block_span(size, first).0;
    let stop = blocks::block_span(size, end - 1).1;
    assert_eq!(
        r.data,
        data[start as usize..stop as usize],
        "{offset}+{len}"
    );
    for i in first..end {
        let (a, b) = blocks::block_span(size, i);
        assert!(ob.verify_block(i, &r.data[(a - start) as usize..(b - start) as usize]));
    }
}

#[test]
fn a_range_read_returns_only_the_verified_blocks_around_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(tmp.path(), Arc::new(LocalDisk)).unwrap();
    let data = noise(5 * BLOCK as usize + 100, 1);
    let h = ChunkHash::of(&data);
    store.put(&h, &data).unwrap();
    let served = store.stats().bytes_served;
    let r = store.read_blocks(&h, 4096, 4096, false).unwrap();
    assert_eq!(r.data.len() as u64, BLOCK, "one block for a 4 KiB read");
    assert!(r.outboard.is_none());
    assert_eq!(store.stats().bytes_served - served, BLOCK);
    for (offset, len) in [
        (0, 1),
        (BLOCK - 1, 2),
        (3 * BLOCK, 0),
        (5 * BLOCK + 99, 1),
        (100, 1 << 20),
        (0, 5 * BLOCK + 100),
    ] {
        must_read_range(&store, &h, &data, offset, len);
    }
    // A chunk of one block has no outboard: the block is checked against the name.
    let small = noise(5000, 2);
    let hs = ChunkHash::of(&small);
    store.put(&hs, &small).unwrap();
    must_read_range(&store, &hs, &small, 4999, 1);
}

#[test]
fn bad_ranges_and_unknown_chunks_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(tmp.path(), Arc::new(LocalDisk)).unwrap();
    let data = noise(3 * BLOCK as usize, 3);
    let h = ChunkHash::of(&data);
    store.put(&h, &data).unwrap();
    let size = data.len() as u64;
    for (offset, len) in [(size, 1), (u64::MAX, 1), (0, blocks::MAX_READ_BYTES + 1)] {
        assert!(
            matches!(
                store.read_blocks(&h, offset, len, false),
                Err(DataError::BadRange { .. })
            ),
            "{offset}+{len}"
        );
    }
    assert!(matches!(
        store.read_blocks(&ChunkHash::of(b"nope"), 0, 1, false),
        Err(DataError::NotFound(_))
    ));
}

#[test]
fn a_damaged_block_is_caught_by_the_read_that_needs_it_and_quarantines_the_chunk() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(tmp.path(), Arc::new(LocalDisk)).unwrap();
    let data = noise(6 * BLOCK as usize, 4);
    let h = ChunkHash::of(&data);
    store.put(&h, &data).unwrap();
    let path = chunk_path(tmp.path(), &h);
    let mut on_disk = std::fs::read(&path).unwrap();
    on_disk[3 * BLOCK as usize + 17] ^= 0x01;
    std::fs::write(&path, on_disk).unwrap();
    // Block 0 is intact and served; block 3 is not (checked against the outboard the
    // first read verified and kept).
    must_read_range(&store, &h, &data, 0, 10);
    assert!(matches!(
        store.read_blocks(&h, 3 * BLOCK, 10, false),
        Err(DataError::Corrupt(_))
    ));
    assert!(tmp.path().join("quarantine").join(h.to_hex()).exists());
    assert_eq!(store.stats().corrupt_chunks, 1);
    assert!(matches!(
        store.read_blocks(&h, 0, 10, false),
        Err(DataError::NotFound(_))
    ));
    // Stored again, it is read right with the kept outboard; a cut-short file is caught.
    store.put(&h, &data).unwrap();
    must_read_range(&store, &h, &data, 0, 6 * BLOCK);
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(2 * BLOCK).unwrap();
    assert!(matches!(
        store.read_blocks(&h, 5 * BLOCK, 10, false),
        Err(DataError::Corrupt(_))
    ));
    // And rot seen by the disk layer.
    let tmp2 = tempfile::tempdir().unwrap();
    let disk = Arc::new(FaultyDisk::default());
    let rotten = ChunkStore::open(tmp2.path(), disk.clone()).unwrap();
    rotten.put(&h, &data).unwrap();
    disk.set_rot(true);
    assert!(matches!(
        rotten.read_blocks(&h, BLOCK, 10, false),
        Err(DataError::Corrupt(_))
    ));
}

/// The column families of a store's index.
const INDEX_CFS: [&str; 3] = ["default", "outboard", "journal"];

#[test]
fn a_chunk_stored_without_an_outboard_gets_one_at_its_first_range_read() {
    let tmp = tempfile::tempdir().unwrap();
    let data = noise(4 * BLOCK as usize + 1, 5);
    let h = ChunkHash::of(&data);
    {
        let store = ChunkStore::open(tmp.path(), Arc::new(LocalDisk)).unwrap();
        store.put(&h, &data).unwrap();
    }
    // As a node from before outboards left it: the index entry, no outboard.
    {
        let mut opts = rocksdb::Options::default();
        opts.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(&opts, tmp.path().join("index"), INDEX_CFS).unwrap();
        let cf = db.cf_handle("outboard").unwrap();
        assert!(db.get_cf(cf, h.0).unwrap().is_some());
        db.delete_cf(cf, h.0).unwrap();
    }
    let store = ChunkStore::open(tmp.path(), Arc::new(LocalDisk)).unwrap();
    must_read_range(&store, &h, &data, 2 * BLOCK + 5, 100);
    must_read_range(&store, &h, &data, 4 * BLOCK, 1);
    // A damaged old chunk is caught while its outboard is computed.
    let other = noise(3 * BLOCK as usize, 6);
    let ho = ChunkHash::of(&other);
    store.put(&ho, &other).unwrap();
    // Settled: its file synced and its journal entry dropped (a journaled chunk is
    // written again from its entry when the store opens).
    store.sync_journal().unwrap();
    drop(store);
    {
        let db = rocksdb::DB::open_cf(
            &rocksdb::Options::default(),
            tmp.path().join("index"),
            INDEX_CFS,
        )
        .unwrap();
        db.delete_cf(db.cf_handle("outboard").unwrap(), ho.0)
            .unwrap();
    }
    let mut bytes = std::fs::read(chunk_path(tmp.path(), &ho)).unwrap();
    bytes[5] ^= 0x80;
    std::fs::write(chunk_path(tmp.path(), &ho), bytes).unwrap();
    let store = ChunkStore::open(tmp.path(), Arc::new(LocalDisk)).unwrap();
    assert!(matches!(
        store.read_blocks(&ho, 2 * BLOCK, 1, false),
        Err(DataError::Corrupt(_))
    ));
}

#[test]
fn range_reads_concurrent_with_deletes_see_the_chunk_or_not_found_never_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(ChunkStore::open(tmp.path(), Arc::new(LocalDisk)).unwrap());
    let data = noise(8 * BLOCK as usize, 7);
    let h = ChunkHash::of(&data);
    let readers: Vec<_> = (0..2)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..400u64 {
                    match store.read_blocks(&h, ((i + t) % 8) * BLOCK, 10, false) {
                        Ok(_) | Err(DataError::NotFound(_)) => {}
                        Err(e) => panic!("read {i}: {e}"),
                    }
                }
            })
        })
        .collect();
    for _ in 0..100 {
        store.put(&h, &data).unwrap();
        store.delete(&h).unwrap();
    }
    for r in readers {
        r.join().unwrap();
    }
    assert_eq!(store.stats().corrupt_chunks, 0);
}
