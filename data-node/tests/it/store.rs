use std::sync::Arc;

use mobilus_data::disk::{FaultyDisk, LocalDisk};
use mobilus_data::store::ChunkStore;
use mobilus_data::DataError;
use mobilus_proto::fs::ChunkHash;

pub fn bytes(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

pub fn files_under(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        n += if p.is_dir() { files_under(&p) } else { 1 };
    }
    n
}

#[test]
fn chunks_are_stored_once_read_by_range_and_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(tmp.path(), Arc::new(LocalDisk)).unwrap();
    let a = bytes(1, 300_000);
    let h = ChunkHash::of(&a);
    assert!(!store.put(&h, &a).unwrap());
    assert!(store.put(&h, &a).unwrap(), "second put is a dedup hit");
    assert_eq!(files_under(&tmp.path().join("chunks")), 1);
    assert_eq!(store.get(&h, 0, 0).unwrap(), a);
    assert_eq!(store.get(&h, 1000, 10).unwrap(), a[1000..1010].to_vec());
    assert_eq!(store.get(&h, 300_000, 0).unwrap(), Vec::<u8>::new());
    assert!(matches!(
        store.get(&h, 299_999, 2),
        Err(DataError::BadRange { .. })
    ));
    let other = ChunkHash::of(b"other");
    assert_eq!(store.has(&[h, other]).unwrap().1, vec![true, false]);
    assert!(matches!(
        store.get(&other, 0, 0),
        Err(DataError::NotFound(_))
    ));
    let s = store.stats();
    assert_eq!((s.chunks, s.bytes, s.bytes_received), (1, 300_000, 600_000));
    assert_eq!(store.delete(&h).unwrap(), Some(300_000));
    assert_eq!(store.delete(&h).unwrap(), None);
    assert_eq!(files_under(&tmp.path().join("chunks")), 0);
    assert_eq!(store.stats().chunks, 0);
}

#[test]
fn a_put_whose_bytes_do_not_match_its_hash_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(tmp.path(), Arc::new(LocalDisk)).unwrap();
    let a = bytes(2, 1000);
    let wrong = ChunkHash::of(b"something else");
    assert!(matches!(
        store.put(&wrong, &a),
        Err(DataError::HashMismatch { .. })
    ));
    assert_eq!(
        store.has(&[wrong, ChunkHash::of(&a)]).unwrap().1,
        vec![false, false]
    );
    assert_eq!(files_under(&tmp.path().join("chunks")), 0);
    assert_eq!(files_under(&tmp.path().join("tmp")), 0);
}

#[test]
fn a_chunk_corrupted_on_disk_is_never_served_and_is_quarantined() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(tmp.path(), Arc::new(LocalDisk)).unwrap();
    let a = bytes(3, 50_000);
    let h = ChunkHash::of(&a);
    store.put(&h, &a).unwrap();
    let hex = h.to_hex();
    let path = tmp.path().join("chunks").join(&hex[..2]).join(&hex);
    let mut on_disk = std::fs::read(&path).unwrap();
    on_disk[12_345] ^= 0xff;
    std::fs::write(&path, on_disk).unwrap();
    // Even a range that avoids the damaged byte is refused: the whole chunk is checked.
    assert!(matches!(store.get(&h, 0, 10), Err(DataError::Corrupt(_))));
    assert!(tmp.path().join("quarantine").join(&hex).exists());
    assert!(!path.exists());
    assert_eq!(store.has(&[h]).unwrap().1, vec![false]);
    assert!(matches!(store.get(&h, 0, 10), Err(DataError::NotFound(_))));
    assert_eq!(store.stats().corrupt_chunks, 1);
    // A good copy can be stored again (repair from another replica).
    assert!(!store.put(&h, &a).unwrap());
    assert_eq!(store.get(&h, 0, 0).unwrap(), a);
}

#[test]
fn bit_rot_seen_by_a_read_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = Arc::new(FaultyDisk::default());
    let store = ChunkStore::open(tmp.path(), disk.clone()).unwrap();
    let a = bytes(4, 4096);
    let h = ChunkHash::of(&a);
    store.put(&h, &a).unwrap();
    disk.set_rot(true);
    assert!(matches!(store.get(&h, 0, 0), Err(DataError::Corrupt(_))));
    assert_eq!(store.stats().corrupt_chunks, 1);
}

#[test]
fn a_full_disk_gives_enospc_and_damages_no_stored_chunk() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = Arc::new(FaultyDisk::default());
    let store = ChunkStore::open(tmp.path(), disk.clone()).unwrap();
    let kept = bytes(5, 10_000);
    let hk = ChunkHash::of(&kept);
    store.put(&hk, &kept).unwrap();
    disk.set_space_left(5_000);
    let big = bytes(6, 20_000);
    let hb = ChunkHash::of(&big);
    let err = store.put(&hb, &big).unwrap_err();
    assert!(matches!(err, DataError::NoSpace), "{err:?}");
    assert_eq!(err.to_status().code(), tonic::Code::OutOfRange);
    assert_eq!(store.has(&[hb]).unwrap().1, vec![false]);
    assert_eq!(
        files_under(&tmp.path().join("tmp")),
        0,
        "a partial write was left behind"
    );
    assert_eq!(store.get(&hk, 0, 0).unwrap(), kept);
    disk.set_space_left(-1);
    store.put(&hb, &big).unwrap();
    assert_eq!(store.get(&hb, 0, 0).unwrap(), big);
}

#[test]
fn a_reopened_store_keeps_its_chunks_and_drops_leftover_temp_files() {
    let tmp = tempfile::tempdir().unwrap();
    let a = bytes(7, 1234);
    let h = ChunkHash::of(&a);
    {
        let store = ChunkStore::open(tmp.path(), Arc::new(LocalDisk)).unwrap();
        store.put(&h, &a).unwrap();
        std::fs::write(tmp.path().join("tmp").join("half-written"), b"xx").unwrap();
    }
    let store = ChunkStore::open(tmp.path(), Arc::new(LocalDisk)).unwrap();
    assert_eq!(store.get(&h, 0, 0).unwrap(), a);
    assert_eq!((store.stats().chunks, store.stats().bytes), (1, 1234));
    assert_eq!(files_under(&tmp.path().join("tmp")), 0);
}

#[test]
fn concurrent_puts_of_one_chunk_store_it_once() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(ChunkStore::open(tmp.path(), Arc::new(LocalDisk)).unwrap());
    let a = Arc::new(bytes(8, 200_000));
    let h = ChunkHash::of(&a);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (store, a) = (store.clone(), a.clone());
            std::thread::spawn(move || store.put(&h, &a).unwrap())
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(files_under(&tmp.path().join("chunks")), 1);
    assert_eq!(store.get(&h, 0, 0).unwrap(), *a);
    assert_eq!(files_under(&tmp.path().join("tmp")), 0);
}

/// Cached chunks are evicted least recently used first, held ones never; a cached chunk
/// a writer relies on (`keep`, or a held put) becomes held; and a reopened store still
/// knows which are cached.
#[test]
fn cached_chunks_are_evicted_coldest_first_and_held_ones_never() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(tmp.path(), Arc::new(LocalDisk)).unwrap();
    let chunk = |seed: u8| {
        let b = bytes(seed, 100_000);
        (ChunkHash::of(&b), b)
    };
    let (held, held_bytes) = chunk(1);
    store.put(&held, &held_bytes).unwrap();
    let cached: Vec<(ChunkHash, Vec<u8>)> = (10..15).map(chunk).collect();
    for (h, b) in &cached {
        assert!(!store.put_as(h, b, true).unwrap());
    }
    let s = store.stats();
    assert_eq!((s.chunks, s.cached_chunks, s.cached_bytes), (6, 5, 500_000));
    // A cache fill of a held chunk leaves it held.
    store.put_as(&held, &held_bytes, true).unwrap();
    assert!(!store.is_cached(&held));
    // Asked whether it holds them for good (another site deciding whether its copy is
    // the last): the cached ones do not count.
    let asked = [held, cached[0].0, ChunkHash::of(b"absent")];
    assert_eq!(store.has_held(&asked).unwrap(), vec![true, false, false]);
    assert_eq!(store.has(&asked).unwrap().1, vec![true, true, false]);
    // Read: no longer the coldest.
    store.get(&cached[0].0, 0, 10).unwrap();
    // A writer relies on #1; a held put of #2 makes it held too.
    store.keep(&[cached[1].0]).unwrap();
    store.put(&cached[2].0, &cached[2].1).unwrap();
    assert_eq!(store.stats().cached_chunks, 3);
    // Evict 150 KB: two chunks, #3 and #4 (#0 was read since).
    assert_eq!(store.evict(150_000).unwrap(), (2, 200_000));
    let present = store
        .has(&cached.iter().map(|c| c.0).collect::<Vec<_>>())
        .unwrap()
        .1;
    assert_eq!(present, vec![true, true, true, false, false]);
    // Everything cached: #0 too; nothing held.
    assert_eq!(store.evict(1 << 30).unwrap(), (1, 100_000));
    assert_eq!(store.evict(1 << 30).unwrap(), (0, 0));
    assert!(store.get(&held, 0, 0).is_ok());
    let s = store.stats();
    assert_eq!((s.chunks, s.cached_chunks, s.evicted_chunks), (3, 0, 3));
    // Cached and held survive a restart as they were.
    let (late, late_bytes) = chunk(20);
    store.put_as(&late, &late_bytes, true).unwrap();
    drop(store);
    let store = ChunkStore::open(tmp.path(), Arc::new(LocalDisk)).unwrap();
    assert!(store.is_cached(&late));
    assert!(!store.is_cached(&cached[1].0));
    assert_eq!(store.evict(1).unwrap(), (1, 100_000));
    assert_eq!(store.stats().chunks, 3);
}

/// Eviction and `keep` of the same chunks at once: whatever `keep` returned for is
/// never evicted afterwards (the lock orders them).
#[test]
fn keep_and_evict_at_once_never_lose_a_kept_chunk() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(ChunkStore::open(tmp.path(), Arc::new(LocalDisk)).unwrap());
    let chunks: Vec<(ChunkHash, Vec<u8>)> = (0..200u8)
        .map(|i| {
            let b = bytes(i, 4096);
            (ChunkHash::of(&b), b)
        })
        .collect();
    for (h, b) in &chunks {
        store.put_as(h, b, true).unwrap();
    }
    let keeper = {
        let store = store.clone();
        let hashes: Vec<ChunkHash> = chunks.iter().step_by(2).map(|c| c.0).collect();
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            for h in hashes {
                store.keep(&[h]).unwrap();
                // Kept while still there: it must stay.
                if store.has(&[h]).unwrap().1[0] {
                    kept.push(h);
                }
            }
            kept
        })
    };
    while store.evict(4096 * 8).unwrap().0 > 0 {}
    let kept = keeper.join().unwrap();
    while store.evict(1 << 30).unwrap().0 > 0 {}
    for h in &kept {
        assert!(store.has(&[*h]).unwrap().1[0], "a kept chunk was evicted");
    }
    assert_eq!(store.stats().cached_chunks, 0);
}

#[test]
fn a_new_store_makes_every_chunk_folder_and_makes_a_removed_one_again() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(tmp.path(), Arc::new(LocalDisk)).unwrap();
    let folders = std::fs::read_dir(tmp.path().join("chunks")).unwrap();
    assert_eq!(folders.count(), 256, "one per first byte of a hash");
    std::fs::remove_dir_all(tmp.path().join("chunks")).unwrap();
    for n in [100, 100_000] {
        let a = bytes(1, n);
        let h = ChunkHash::of(&a);
        store.put(&h, &a).unwrap();
        assert_eq!(store.get(&h, 0, 0).unwrap(), a);
    }
}
