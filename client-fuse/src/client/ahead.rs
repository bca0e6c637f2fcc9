//! Upload ahead: while a sequential run of writes grows toward its commit, the chunks
//! that more bytes can no longer change are cut, hashed and stored in the background. The
//! write that fills the buffer then waits for the run's tail and the commit, not for the
//! whole 64 MiB (which took 100 to 250 ms, during which no write was taken).
//!
//! A cut and the store of what it cut are separate tasks, so the next cut (the mount's
//! CPU) overlaps the last one's store (the data node's). Only where chunks are stored
//! moves earlier; what commits, and when, does not. A chunk stored ahead and never
//! committed (the file truncated, the mount gone) is an unreferenced chunk like one of a
//! failed flush: garbage collection takes it.

use std::collections::HashSet;

use futures::FutureExt;
use mobilus_proto::fs::ChunkHash;
use tokio::task::JoinHandle;

use super::{Client, FileWriter};
use crate::chunker::{self, Piece};

/// A run's bytes not yet cut that start a cut in the background: two of the largest
/// chunks, so every cut settles at least one.
pub(super) const AHEAD_BYTES: usize = 2 * chunker::MAX_CHUNK;
/// Stores in flight per run, at most (each holds a copy of the bytes it stores).
const STORES_AHEAD: usize = 2;
/// Bytes one cut takes, at most: the copy it makes under the writer's lock, and what a
/// run's work in flight holds (a cut and two stores), stay bounded when stores lag.
const CUT_BYTES: usize = 16 << 20;

/// A cut in flight: the pieces it settled, and the task storing them.
type Cutting = JoinHandle<(Vec<Piece>, JoinHandle<()>)>;

/// The chunks of one buffered write (a sequential run) cut before it commits.
pub(super) struct Ahead {
    /// Which of the writer's buffered writes.
    entry: usize,
    /// The bytes of it cut into settled pieces so far: the pieces tile `0..cut`.
    cut: usize,
    /// Those pieces, at their offsets in the write's buffer.
    pieces: Vec<Piece>,
    /// A cut in flight, of the bytes from `cut` on.
    cutting: Option<Cutting>,
    /// Stores of pieces cut, in flight.
    storing: Vec<JoinHandle<()>>,
}

impl Drop for Ahead {
    fn drop(&mut self) {
        // Nobody will commit what they store.
        if let Some(task) = &self.cutting {
            task.abort();
        }
        for task in &self.storing {
            task.abort();
        }
    }
}

impl Ahead {
    fn add(&mut self, (pieces, store): (Vec<Piece>, JoinHandle<()>)) {
        if let Some(last) = pieces.last() {
            self.cut = last.offset + last.len;
        }
        self.pieces.extend(pieces);
        self.storing.push(store);
    }

    /// Take in what tasks that have ended did, without waiting for any that have not.
    fn collect_finished(&mut self) {
        self.storing.retain(|t| !t.is_finished());
        let Some(task) = &mut self.cutting else {
            return;
        };
        // A finished task can still answer `None` (its runtime's budget is spent): then
        // it is kept, to be taken in later.
        if let Some(result) = task.is_finished().then(|| task.now_or_never()).flatten() {
            self.cutting = None;
            if let Ok(cut) = result {
                self.add(cut);
            }
        }
    }

    /// Wait for the tasks in flight (a cut that failed cut nothing, a store that failed
    /// stored nothing: the flush does those itself).
    pub(super) async fn settle(&mut self) {
        if let Some(task) = self.cutting.take() {
            if let Ok(cut) = task.await {
                self.add(cut);
            }
        }
        for task in std::mem::take(&mut self.storing) {
            let _ = task.await;
        }
    }

    /// The chunks cut (and stored, unless that failed) ahead.
    pub(super) fn hashes(&self) -> impl Iterator<Item = ChunkHash> + '_ {
        self.pieces.iter().map(|p| p.hash)
    }

    /// The pieces of buffered write `entry`, whose bytes are `buf`, if this cut some
    /// of them: those, then the rest cut now. The same pieces as cutting `buf` whole
    /// gives, since a content-defined cut depends only on the bytes before it.
    pub(super) fn pieces_of(&self, entry: usize, buf: &[u8]) -> Option<Vec<Piece>> {
        if entry != self.entry || self.pieces.is_empty() {
            return None;
        }
        let mut pieces = self.pieces.clone();
        if self.cut < buf.len() {
            pieces.extend(chunker::chunk(&buf[self.cut..]).into_iter().map(|p| Piece {
                offset: p.offset + self.cut,
                ..p
            }));
        }
        Some(pieces)
    }
}

impl FileWriter {
    /// After a write that grew the last buffered write: if it holds enough bytes not yet
    /// cut, and fewer than [`STORES_AHEAD`] stores and no cut of it are in flight, cut
    /// (up to [`CUT_BYTES`] of) them and store them in the background. Returns whether
    /// work on it is in flight (a flush now would wait for it, then store the rest
    /// itself).
    pub(super) fn upload_ahead(&mut self) -> bool {
        let Some(entry) = self.pending.len().checked_sub(1) else {
            return false;
        };
        let buf = &self.pending[entry].1;
        let at = match self.ahead.iter().position(|a| a.entry == entry) {
            Some(at) => at,
            // Another run (a header rewritten between appends, say) keeps its pieces.
            None if buf.len() >= AHEAD_BYTES => {
                self.ahead.push(Ahead {
                    entry,
                    cut: 0,
                    pieces: Vec::new(),
                    cutting: None,
                    storing: Vec::new(),
                });
                self.ahead.len() - 1
            }
            None => return false,
        };
        let ahead = &mut self.ahead[at];
        ahead.collect_finished();
        let busy = ahead.cutting.is_some() || !ahead.storing.is_empty();
        if ahead.cutting.is_some()
            || ahead.storing.len() >= STORES_AHEAD
            || buf.len() - ahead.cut < AHEAD_BYTES
        {
            return busy;
        }
        let start = ahead.cut;
        let bytes = buf[start..buf.len().min(start + CUT_BYTES)].to_vec();
        let client = self.client.clone();
        ahead.cutting = Some(tokio::spawn(
            async move { client.cut_ahead(start, bytes).await },
        ));
        true
    }
}

impl Client {
    /// Cut `bytes`, a run's bytes from its offset `start`, into pieces, and start
    /// storing every piece but the last (which more bytes could still extend) at this
    /// site. Returns those pieces, at their offsets in the run, and the store's task. A
    /// failed store is only logged: the flush stores what is not known present (see
    /// [`Client::upload`]) and reports.
    async fn cut_ahead(&self, start: usize, bytes: Vec<u8>) -> (Vec<Piece>, JoinHandle<()>) {
        let cut = tokio::task::spawn_blocking(move || {
            let pieces = chunker::chunk(&bytes);
            (bytes, pieces)
        })
        .await;
        let (bytes, mut pieces) = cut.unwrap_or_default();
        pieces.pop();
        let client = self.clone();
        let to_store = pieces.clone();
        let store = tokio::spawn(async move {
            let mut seen = HashSet::new();
            let chunks: Vec<(ChunkHash, &[u8])> = to_store
                .iter()
                .filter(|p| seen.insert(p.hash))
                .map(|p| (p.hash, &bytes[p.offset..p.offset + p.len]))
                .collect();
            if chunks.is_empty() {
                return;
            }
            if let Err(e) = client.upload(&chunks, &HashSet::new()).await {
                tracing::debug!(error = %e, "storing chunks ahead failed; the flush stores them");
            }
        });
        for p in &mut pieces {
            p.offset += start;
        }
        (pieces, store)
    }
}
