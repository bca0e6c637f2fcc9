//! The small-chunk journal. A chunk of at most [`JOURNAL_MAX_BYTES`] is made durable by
//! one synced write: its bytes go into the index's `journal` column family, in the same
//! batch as its index entry, and its file is written without a sync. Syncing a file and
//! its directory costs two more flushes in series (0.77 ms against 0.34 ms for the
//! index's write alone, measured for 4 KiB on this kind of machine), on the path of every
//! fsync an application makes.
//!
//! The `journal` worker ([`crate::store::ChunkStore::sync_journal`]) later syncs the file
//! system once for every chunk written since, then drops their entries. Opening the store
//! replays what is left: any journaled chunk whose file is missing, torn or wrong after a
//! crash is written again, durably, from its entry.
//!
//! An entry carries the ticket of the put that wrote it. A round drops an entry only if
//! it still carries the ticket the round saw, under the chunk's lock: a chunk deleted and
//! stored again in between keeps the entry of its new, unsynced file.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use mobilus_proto::fs::ChunkHash;
use rocksdb::{WriteBatch, WriteOptions};

use super::{synced, ChunkStore};
use crate::error::DataError;

/// The column family of journal entries (hash → format, ticket, bytes).
pub(crate) const JOURNAL_CF: &str = "journal";
/// Chunks of at most this many bytes are journaled: what a database writes between two
/// fsyncs (pages, WAL records). Larger ones are written durably as files, as before:
/// their bytes would double the index's writes for a flush they already amortise.
pub const JOURNAL_MAX_BYTES: usize = 64 << 10;
/// Chunks journaled and not yet synced beyond which a put syncs them itself: bounds the
/// journal (and a replay) without the worker, as in a store used on its own.
const PENDING_MAX: usize = 4096;
const ENTRY_FORMAT: u8 = 1;
/// Spare files kept ready (see [`ChunkStore::make_spares`]): a round's worth of puts and
/// more at several thousand a second.
const SPARE_FILES: usize = 512;

/// The chunks journaled since the last round, with their tickets.
#[derive(Default)]
pub(crate) struct Journal {
    next_ticket: AtomicU64,
    pending: Mutex<Vec<(ChunkHash, u64)>>,
}

impl Journal {
    pub(crate) fn ticket(&self) -> u64 {
        self.next_ticket.fetch_add(1, Ordering::Relaxed)
    }

    /// Note a chunk journaled (its entry written); true if the journal is now due a sync.
    pub(crate) fn push(&self, hash: ChunkHash, ticket: u64) -> bool {
        let mut pending = self.lock();
        pending.push((hash, ticket));
        pending.len() >= PENDING_MAX
    }

    /// Everything noted so far, for a round.
    pub(crate) fn take(&self) -> Vec<(ChunkHash, u64)> {
        std::mem::take(&mut *self.lock())
    }

    /// Give back what a failed round did not drop.
    pub(crate) fn give_back(&self, mut rest: Vec<(ChunkHash, u64)>) {
        let mut pending = self.lock();
        rest.append(&mut pending);
        *pending = rest;
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(ChunkHash, u64)>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ChunkStore {
    pub(super) fn journal_cf(&self) -> Result<&rocksdb::ColumnFamily, DataError> {
        self.index
            .cf_handle(JOURNAL_CF)
            .ok_or_else(|| DataError::Invalid("the index has no journal column family".into()))
    }

    /// A round of the journal: sync the file system (every chunk file journaled so far
    /// becomes durable), then drop those chunks' entries. Returns how many were dropped.
    /// On an error, the chunks not yet dropped wait for the next round.
    pub fn sync_journal(&self) -> Result<usize, DataError> {
        let round = self.journal.take();
        if round.is_empty() {
            return Ok(0);
        }
        if let Err(e) = self.disk.sync_fs(&self.root) {
            self.journal.give_back(round);
            return Err(e.into());
        }
        let cf = self.journal_cf()?;
        // Dropping need not be durable: an entry a crash keeps is replayed against a file
        // that is already right.
        let unsynced = WriteOptions::default();
        for (i, (hash, ticket)) in round.iter().enumerate() {
            let _guard = self.lock(hash);
            let dropped = match self.index.get_cf(cf, hash.0) {
                Ok(Some(v)) if decode(&v).is_some_and(|(t, _)| t == *ticket) => {
                    self.index.delete_cf_opt(cf, hash.0, &unsynced)
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = dropped {
                self.journal.give_back(round[i..].to_vec());
                return Err(e.into());
            }
        }
        Ok(round.len())
    }

    /// Make spare files for puts to write into, up to [`SPARE_FILES`]. On this kind of
    /// machine creating a file cost a put 0.22 ms (ext4 looking for a free inode, most
    /// of the node's time apart from its one sync); opening an empty one costs
    /// microseconds. Returns how many were made.
    pub fn make_spares(&self) -> Result<usize, DataError> {
        let missing = SPARE_FILES.saturating_sub(self.spares().len());
        for _ in 0..missing {
            let path = self.tmp_path("spare");
            std::fs::File::create(&path)?;
            self.spares().push(path);
        }
        Ok(missing)
    }

    /// Chunks journaled and not yet synced by a round.
    pub fn journaled(&self) -> usize {
        self.journal.len()
    }

    /// After a crash (at open): make the files of journaled chunks durable, write again
    /// those missing, torn or wrong, and drop every entry. Returns the chunks written
    /// again.
    pub(super) fn replay_journal(&self) -> Result<u64, DataError> {
        let cf = self.journal_cf()?;
        let mut entries = self
            .index
            .iterator_cf(cf, rocksdb::IteratorMode::Start)
            .peekable();
        if entries.peek().is_none() {
            return Ok(0);
        }
        // A process that crashed left its files in the page cache: durable from here on,
        // and what a power cut took is seen as missing or torn below.
        self.disk.sync_fs(&self.root)?;
        let (mut rewritten, mut drop) = (0, WriteBatch::default());
        for item in entries {
            let (key, value) = item?;
            drop.delete_cf(cf, &key);
            let (Some(hash), Some((_, data))) = (ChunkHash::from_slice(&key), decode(&value))
            else {
                tracing::warn!("dropped a journal entry that is not one");
                continue;
            };
            // A chunk deleted after it was journaled took its entry with it; an entry
            // whose index entry is gone or of another size is left to the index.
            if self.size_of(&hash)? != Some(data.len() as u64) {
                continue;
            }
            let path = self.path(&hash);
            let intact = self.disk.read(&path).is_ok_and(|on_disk| on_disk == data);
            if intact {
                continue;
            }
            if ChunkHash::of(data) != hash {
                tracing::warn!(
                    ?hash,
                    "journal entry does not hash to its chunk; left to reads"
                );
                continue;
            }
            self.write_file_durably(&hash, data)?;
            rewritten += 1;
        }
        self.index.write_opt(drop, &synced())?;
        if rewritten > 0 {
            tracing::info!(rewritten, "journaled chunks written again after a crash");
        }
        Ok(rewritten)
    }
}

/// An entry: format byte, ticket, the chunk's bytes.
pub(crate) fn encode(ticket: u64, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + data.len());
    v.push(ENTRY_FORMAT);
    v.extend_from_slice(&ticket.to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// An entry's ticket and bytes; `None` if it is not one.
pub(crate) fn decode(v: &[u8]) -> Option<(u64, &[u8])> {
    if v.first() != Some(&ENTRY_FORMAT) {
        return None;
    }
    let ticket = u64::from_be_bytes(v.get(1..9)?.try_into().ok()?);
    Some((ticket, &v[9..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_decodes_to_what_was_encoded_and_garbage_to_none() {
        let v = encode(7, b"bytes");
        assert_eq!(decode(&v), Some((7, &b"bytes"[..])));
        assert_eq!(decode(&encode(u64::MAX, b"")), Some((u64::MAX, &b""[..])));
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[ENTRY_FORMAT, 0, 0]), None);
        assert_eq!(decode(&[9; 20]), None);
    }

    #[test]
    fn a_failed_round_gives_back_its_chunks_ahead_of_newer_ones() {
        let j = Journal::default();
        let (a, b) = (ChunkHash::of(b"a"), ChunkHash::of(b"b"));
        j.push(a, j.ticket());
        let round = j.take();
        j.push(b, j.ticket());
        j.give_back(round);
        assert_eq!(j.take(), vec![(a, 0), (b, 1)]);
        assert_eq!(j.len(), 0);
    }
}
