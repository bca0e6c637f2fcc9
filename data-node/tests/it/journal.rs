//! The small-chunk journal against power cuts: a chunk a put answered for survives losing
//! every write that was not synced, and a deleted one stays deleted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mobilus_data::disk::FaultyDisk;
use mobilus_data::store::{ChunkStore, JOURNAL_MAX_BYTES};
use mobilus_data::DataError;
use mobilus_proto::fs::ChunkHash;

use crate::store::{bytes, files_under};

fn must_open(dir: &std::path::Path, disk: &Arc<FaultyDisk>) -> ChunkStore {
    ChunkStore::open(dir, disk.clone()).expect("the store opens")
}

/// A new store in a temporary folder, on a disk that can lose power.
fn must_start() -> (tempfile::TempDir, Arc<FaultyDisk>, ChunkStore) {
    let tmp = tempfile::tempdir().unwrap();
    let disk = Arc::new(FaultyDisk::default());
    let store = must_open(tmp.path(), &disk);
    (tmp, disk, store)
}

fn must_put(store: &ChunkStore, data: &[u8]) -> ChunkHash {
    let h = ChunkHash::of(data);
    store.put(&h, data).expect("the put succeeds");
    h
}

#[test]
fn small_chunks_survive_a_power_cut_before_their_files_are_synced() {
    let (tmp, disk, store) = must_start();
    let small: Vec<Vec<u8>> = [1, 4096, 4097, 65_000, JOURNAL_MAX_BYTES]
        .iter()
        .enumerate()
        .map(|(i, &n)| bytes(i as u8, n))
        .collect();
    let large = bytes(9, JOURNAL_MAX_BYTES + 1);
    let hashes: Vec<_> = small.iter().map(|d| must_put(&store, d)).collect();
    let hl = must_put(&store, &large);
    assert_eq!(
        store.journaled(),
        small.len(),
        "only the small chunks are journaled"
    );
    drop(store);
    // Half of the files are gone, half torn: without the journal these chunks are lost.
    assert_eq!(
        disk.lose_unsynced(),
        small.len(),
        "the small files were never synced"
    );

    let store = must_open(tmp.path(), &disk);
    for (h, d) in hashes.iter().zip(&small) {
        assert_eq!(&store.get(h, 0, 0).unwrap(), d, "{} bytes", d.len());
    }
    assert_eq!(store.get(&hl, 0, 0).unwrap(), large);
    assert_eq!(store.stats().corrupt_chunks, 0);
    assert_eq!(store.journaled(), 0);
    // What the replay wrote is durable: a second cut loses nothing.
    assert_eq!(disk.lose_unsynced(), 0);
}

#[test]
fn a_round_syncs_the_files_then_drops_their_entries() {
    let (tmp, disk, store) = must_start();
    let a = bytes(1, 8192);
    let h = must_put(&store, &a);
    assert_eq!(store.sync_journal().unwrap(), 1);
    assert_eq!(
        store.sync_journal().unwrap(),
        0,
        "a second round has nothing to do"
    );
    assert_eq!(disk.lose_unsynced(), 0, "the round synced the file");
    drop(store);
    // Were the entry still there, opening would write the damaged file again.
    let path = tmp
        .path()
        .join("chunks")
        .join(&h.to_hex()[..2])
        .join(h.to_hex());
    std::fs::write(&path, b"rot").unwrap();
    let store = must_open(tmp.path(), &disk);
    assert!(matches!(store.get(&h, 0, 0), Err(DataError::Corrupt(_))));
}

#[test]
fn a_chunk_deleted_before_a_power_cut_stays_deleted() {
    let (tmp, disk, store) = must_start();
    let (a, b) = (bytes(1, 4096), bytes(2, 4096));
    let ha = must_put(&store, &a);
    let hb = must_put(&store, &b);
    assert_eq!(store.delete(&ha).unwrap(), Some(4096));
    // Deleted and stored again: the second file is the one that must survive.
    assert_eq!(store.delete(&hb).unwrap(), Some(4096));
    must_put(&store, &b);
    drop(store);
    disk.lose_unsynced();
    let store = must_open(tmp.path(), &disk);
    assert_eq!(store.has(&[ha, hb]).unwrap().1, vec![false, true]);
    assert_eq!(store.get(&hb, 0, 0).unwrap(), b);
    assert_eq!(store.stats().chunks, 1);
}

/// A chunk deleted and stored again while a round syncs: its new file was written after
/// the sync, so the round must leave the new entry (another ticket) in place.
#[test]
fn a_chunk_stored_again_during_a_round_keeps_its_new_entry() {
    let (tmp, disk, store) = must_start();
    let store = Arc::new(store);
    let a = bytes(1, 4096);
    let h = must_put(&store, &a);
    let during = store.clone();
    let again = a.clone();
    disk.after_next_sync(move || {
        assert_eq!(during.delete(&h).unwrap(), Some(4096));
        assert!(!during.put(&h, &again).unwrap());
    });
    assert_eq!(store.sync_journal().unwrap(), 1);
    assert_eq!(
        store.journaled(),
        1,
        "the second put waits for the next round"
    );
    drop(store);
    assert_eq!(
        disk.lose_unsynced(),
        1,
        "the second file was written after the sync"
    );
    let store = must_open(tmp.path(), &disk);
    assert_eq!(store.get(&h, 0, 0).unwrap(), a);
}

/// Puts and deletes of the same few chunks from several threads, with rounds and reads
/// running all along (the rounds stopped for the last writes), then a power cut: every chunk whose
/// last operation was a put reads back whole, and no other is there.
#[test]
fn puts_deletes_and_rounds_at_once_lose_nothing_to_a_power_cut() {
    let (tmp, disk, store) = must_start();
    let store = Arc::new(store);
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = {
        let (store, stop, disk) = (store.clone(), stop.clone(), disk.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            for round in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                // A sync in seven fails (the first round with chunks to sync after it is
                // armed): the next round writes its chunks again, over files the reader
                // may be reading.
                if round % 7 == 6 {
                    disk.fail_next_sync();
                }
                match store.sync_journal() {
                    Ok(dropped) => n += dropped,
                    Err(DataError::Io(_)) => {}
                    Err(e) => panic!("a round failed: {e}"),
                }
            }
            n
        })
    };
    // Reads all along: a chunk is either whole or not there, never a partial file.
    let writing = Arc::new(AtomicBool::new(true));
    let reader = {
        let (store, writing) = (store.clone(), writing.clone());
        std::thread::spawn(move || {
            let all: Vec<Vec<u8>> = (0..24).map(|i| bytes(i, 4096)).collect();
            while writing.load(Ordering::SeqCst) {
                for d in &all {
                    match store.get(&ChunkHash::of(d), 0, 0) {
                        Ok(got) => assert_eq!(&got, d, "a read saw another chunk's bytes"),
                        Err(DataError::NotFound(_)) => {}
                        Err(e) => panic!("a read during the writes failed: {e}"),
                    }
                }
            }
        })
    };
    let writers: Vec<_> = (0..3u8)
        .map(|w| {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let chunks: Vec<Vec<u8>> = (0..8).map(|i| bytes(w * 8 + i, 4096)).collect();
                let mut present = [false; 8];
                let mut x = u32::from(w) + 1;
                for n in 0..400 {
                    if n == 350 {
                        // The last writes with no round after them: what the cut takes.
                        stop.store(true, Ordering::SeqCst);
                    }
                    // xorshift: a fixed, cheap sequence per writer.
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    let i = (x % 8) as usize;
                    let h = ChunkHash::of(&chunks[i]);
                    if present[i] && x % 3 == 0 {
                        store.delete(&h).unwrap();
                        present[i] = false;
                    } else {
                        store.put(&h, &chunks[i]).unwrap();
                        present[i] = true;
                    }
                }
                (chunks, present)
            })
        })
        .collect();
    let outcomes: Vec<_> = writers.into_iter().map(|t| t.join().unwrap()).collect();
    writing.store(false, Ordering::SeqCst);
    reader
        .join()
        .expect("every read during the writes was whole or not found");
    assert!(rounds.join().unwrap() > 0, "rounds ran during the writes");
    drop(store);
    assert!(disk.lose_unsynced() > 0, "the cut took files");

    let store = must_open(tmp.path(), &disk);
    for (chunks, present) in outcomes {
        for (d, there) in chunks.iter().zip(present) {
            let h = ChunkHash::of(d);
            if there {
                assert_eq!(&store.get(&h, 0, 0).unwrap(), d, "a stored chunk was lost");
            } else {
                assert!(matches!(store.get(&h, 0, 0), Err(DataError::NotFound(_))));
            }
        }
    }
    assert_eq!(store.stats().corrupt_chunks, 0);
}

#[test]
fn puts_write_into_spare_files_and_a_reopened_store_drops_the_rest() {
    let (tmp, disk, store) = must_start();
    let made = store.make_spares().unwrap();
    assert!(made > 0);
    assert_eq!(store.make_spares().unwrap(), 0, "the spares are all there");
    assert_eq!(files_under(&tmp.path().join("tmp")), made);
    let (small, large) = (bytes(1, 4096), bytes(2, JOURNAL_MAX_BYTES * 4));
    let (hs, hl) = (must_put(&store, &small), must_put(&store, &large));
    assert_eq!(
        files_under(&tmp.path().join("tmp")),
        made - 2,
        "each put took one"
    );
    assert_eq!(store.get(&hs, 0, 0).unwrap(), small);
    assert_eq!(store.get(&hl, 0, 0).unwrap(), large);
    assert_eq!(store.make_spares().unwrap(), 2);
    drop(store);
    let store = must_open(tmp.path(), &disk);
    assert_eq!(files_under(&tmp.path().join("tmp")), 0);
    assert_eq!(store.get(&hs, 0, 0).unwrap(), small);
}

/// A failed sync leaves the pages that failed clean, so a later sync succeeds without
/// writing them: the round's chunks must be written again from their entries, not
/// dropped by the next sync.
#[test]
fn a_failed_sync_has_its_chunks_written_again_from_their_entries() {
    let (tmp, disk, store) = must_start();
    let (a, b) = (bytes(1, 4096), bytes(2, 10_000));
    let (ha, hb) = (must_put(&store, &a), must_put(&store, &b));
    disk.fail_next_sync();
    assert!(matches!(store.sync_journal(), Err(DataError::Io(_))));
    assert_eq!(store.journaled(), 2, "both wait, in doubt");
    assert_eq!(store.sync_journal().unwrap(), 2);
    assert_eq!(store.journaled(), 0);
    drop(store);
    assert_eq!(disk.lose_unsynced(), 0, "both were written again, durably");
    let store = must_open(tmp.path(), &disk);
    assert_eq!(store.get(&ha, 0, 0).unwrap(), a);
    assert_eq!(store.get(&hb, 0, 0).unwrap(), b);
}

/// A power cut, then a disk too full to write the journaled chunks again at open: the
/// node still opens, keeps the entries, and its first round with room writes them.
#[test]
fn a_replay_without_room_keeps_its_entries_for_the_first_round() {
    let (tmp, disk, store) = must_start();
    let a = bytes(1, 4096);
    let h = must_put(&store, &a);
    drop(store);
    disk.lose_unsynced();
    disk.set_space_left(0);
    let store = must_open(tmp.path(), &disk);
    assert_eq!(store.journaled(), 1);
    disk.set_space_left(-1);
    assert_eq!(store.sync_journal().unwrap(), 1);
    assert_eq!(store.get(&h, 0, 0).unwrap(), a);
    drop(store);
    let store = must_open(tmp.path(), &disk);
    assert_eq!(store.get(&h, 0, 0).unwrap(), a);
}
