//! The small-chunk journal. A chunk of at most [`JOURNAL_MAX_BYTES`] is made durable by
//! one synced write: its bytes go into the index's `journal` column family, in the same
//! batch as its index entry, and its file is written without a sync. Syncing a file and
//! its directory costs two more flushes in series (0.77 ms against 0.34 ms for the
//! index's write alone, measured for 4 KiB on this kind of machine), on the path of every
//! fsync an application makes.
//!
//! The `journal` worker ([`crate::store::ChunkStore::sync_journal`]) later syncs the file
//! system once for every chunk written since, then drops their entries. A sync that fails
//! proves nothing about later ones (the kernel reports a writeback error once and leaves
//! the failed pages clean), so that round's chunks are written again, each synced, from
//! their entries. Opening the store replays what a crash left: every journaled chunk is
//! written again, durably, from its entry (a crashed process's files may still be in the
//! page cache, right there and wrong on the disk).
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
    /// Chunks whose files a failed sync or replay left in doubt: the next round writes
    /// them again from their entries instead of trusting a sync.
    doubtful: Mutex<Vec<(ChunkHash, u64)>>,
    /// Tickets below this were taken before a sync failed: their files may have been
    /// in that sync's failed writeback, even those of chunks noted after it, so they are
    /// written again too. A put takes its ticket before it writes its file.
    doubt_below: AtomicU64,
}

impl Journal {
    pub(crate) fn ticket(&self) -> u64 {
        self.next_ticket.fetch_add(1, Ordering::SeqCst)
    }

    /// Note a chunk journaled (its entry written); true if the journal is now due a sync.
    pub(crate) fn push(&self, hash: ChunkHash, ticket: u64) -> bool {
        let mut pending = lock(&self.pending);
        pending.push((hash, ticket));
        pending.len() >= PENDING_MAX
    }

    /// Everything noted so far, for a round.
    pub(crate) fn take(&self) -> Vec<(ChunkHash, u64)> {
        std::mem::take(&mut *lock(&self.pending))
    }

    /// Give back what a failed round did not drop.
    pub(crate) fn give_back(&self, mut rest: Vec<(ChunkHash, u64)>) {
        let mut pending = lock(&self.pending);
        rest.append(&mut pending);
        *pending = rest;
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.pending).len() + lock(&self.doubtful).len()
    }

    pub(crate) fn doubt(&self, chunks: impl IntoIterator<Item = (ChunkHash, u64)>) {
        lock(&self.doubtful).extend(chunks);
    }

    fn take_doubtful(&self) -> Vec<(ChunkHash, u64)> {
        std::mem::take(&mut *lock(&self.doubtful))
    }

    /// A sync failed: doubt every file written so far.
    fn doubt_all_written(&self) {
        let next = self.next_ticket.load(Ordering::SeqCst);
        self.doubt_below.fetch_max(next, Ordering::SeqCst);
    }

    /// Everything noted so far, for a round: the chunks it may trust to a sync, the
    /// rest (written before a failed sync) put in doubt.
    fn take_trusted(&self) -> Vec<(ChunkHash, u64)> {
        let below = self.doubt_below.load(Ordering::SeqCst);
        let (doubted, trusted): (Vec<_>, Vec<_>) =
            self.take().into_iter().partition(|(_, t)| *t < below);
        self.doubt(doubted);
        trusted
    }

    /// Tickets from here on are above `ticket` (one found in the journal at open).
    fn tickets_above(&self, ticket: u64) {
        self.next_ticket
            .fetch_max(ticket.saturating_add(1), Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ChunkStore {
    pub(super) fn journal_cf(&self) -> Result<&rocksdb::ColumnFamily, DataError> {
        self.index
            .cf_handle(JOURNAL_CF)
            .ok_or_else(|| DataError::Invalid("the index has no journal column family".into()))
    }

    /// A round of the journal: write again the chunks in doubt, then sync the file
    /// system (every chunk file journaled so far becomes durable) and drop those chunks'
    /// entries. Returns how many entries were dropped. On an error, the chunks not yet
    /// dropped wait for the next round (in doubt, if the sync failed).
    pub fn sync_journal(&self) -> Result<usize, DataError> {
        let cf = self.journal_cf()?;
        let round = self.journal.take_trusted();
        let mut done = match self.write_again(self.journal.take_doubtful()) {
            Ok(n) => n,
            Err(e) => {
                self.journal.give_back(round);
                return Err(e);
            }
        };
        if round.is_empty() {
            return Ok(done);
        }
        if let Err(e) = self.disk.sync_fs(&self.fs) {
            tracing::warn!(error = %e, chunks = round.len(), "journal sync failed; writing its chunks again");
            self.journal.doubt_all_written();
            self.journal.doubt(round);
            return Err(e.into());
        }
        // Dropping need not be durable: an entry a crash keeps is written again at open.
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
            done += 1;
        }
        Ok(done)
    }

    /// Write the files of `chunks` again, each durably, from their journal entries (those
    /// still carrying the ticket given), and drop the entries. Returns how many. On an
    /// error the rest stay in doubt.
    fn write_again(&self, chunks: Vec<(ChunkHash, u64)>) -> Result<usize, DataError> {
        let cf = self.journal_cf()?;
        for (i, (hash, ticket)) in chunks.iter().enumerate() {
            let _guard = self.lock(hash);
            let written = match self.index.get_cf(cf, hash.0) {
                Ok(Some(v)) => match decode(&v) {
                    Some((t, data)) if t == *ticket => self
                        .write_file_durably(hash, data)
                        .and_then(|()| Ok(self.index.delete_cf_opt(cf, hash.0, &synced())?)),
                    _ => Ok(()),
                },
                Ok(None) => Ok(()),
                Err(e) => Err(e.into()),
            };
            if let Err(e) = written {
                self.journal.doubt(chunks[i..].iter().copied());
                return Err(e);
            }
        }
        Ok(chunks.len())
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

    /// After a crash (at open): write every journaled chunk's file again, durably, from
    /// its entry, and drop the entry. A chunk that cannot be written now (a full disk)
    /// keeps its entry and is left in doubt for the first round: the node still starts.
    /// Returns the chunks written again.
    pub(super) fn replay_journal(&self) -> Result<u64, DataError> {
        let cf = self.journal_cf()?;
        let (mut rewritten, mut drop) = (0, WriteBatch::default());
        for item in self.index.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (key, value) = item?;
            let (Some(hash), Some((ticket, data))) = (ChunkHash::from_slice(&key), decode(&value))
            else {
                tracing::warn!("dropped a journal entry that is not one");
                drop.delete_cf(cf, &key);
                continue;
            };
            self.journal.tickets_above(ticket);
            // A chunk deleted after it was journaled took its entry with it; an entry
            // whose index entry is gone or of another size, or whose bytes are not the
            // chunk's, is left to the index and to reads.
            if self.size_of(&hash)? != Some(data.len() as u64) || ChunkHash::of(data) != hash {
                tracing::warn!(
                    ?hash,
                    "dropped a journal entry that does not match its chunk"
                );
                drop.delete_cf(cf, &key);
                continue;
            }
            match self.write_file_durably(&hash, data) {
                Ok(()) => {
                    drop.delete_cf(cf, &key);
                    rewritten += 1;
                }
                Err(e) => {
                    tracing::warn!(?hash, error = %e, "could not write a journaled chunk again; the first round retries");
                    self.journal.doubt([(hash, ticket)]);
                }
            }
        }
        self.index.write_opt(drop, &synced())?;
        if rewritten > 0 {
            tracing::info!(rewritten, "journaled chunks written again at open");
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
