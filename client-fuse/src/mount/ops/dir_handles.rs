//! Open directories: each keeps the last batch of entries it fetched.
//!
//! The kernel reads a directory a page at a time (a READDIRPLUS page holds about 25
//! entries), and each request names the cookie it stopped at. A batch from the metadata
//! holds up to 2,048: without this, every page was a metadata round fetching a whole
//! batch (512 then, with their attributes) to use 25, about twenty times the work of the
//! listing. Each handle (OPENDIR) keeps its last batch, and a request that continues where the batch
//! can answer is answered from it, as libfuse's high-level API buffers a listing per
//! handle. A batch is used for at most the attribute TTL after it was fetched, so the
//! attributes a READDIRPLUS hands the kernel are no older than those a GETATTR would
//! give; a rewind (offset 0) fetches afresh, as POSIX's `rewinddir` asks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mobilus_proto::fs::{DirEntry, InodeId};

use super::{lock, MountFs};

/// Most open directories with a batch kept (each at most one batch): past it, the
/// oldest half is dropped (a handle without its batch only fetches again).
const MAX_KEPT: usize = 4_096;

struct Batch {
    ino: InodeId,
    plus: bool,
    entries: Arc<Vec<DirEntry>>,
    /// The batch ends the directory.
    eof: bool,
    fetched: Instant,
}

#[derive(Default)]
pub(super) struct DirHandles {
    next: AtomicU64,
    batches: Mutex<HashMap<u64, Batch>>,
}

impl MountFs {
    /// OPENDIR: a handle of its own (never 0), so its reads can share a batch.
    pub fn opendir(&self) -> u64 {
        self.dirs.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// RELEASEDIR: its batch is dropped.
    pub fn releasedir(&self, fh: u64) {
        lock(&self.dirs.batches).remove(&fh);
    }

    /// The entries after `cookie` from `fh`'s last batch of `ino`, if it can answer: it
    /// holds the entry at `cookie` and something after it (or ends the directory), and
    /// is recent.
    pub(super) fn answer_from_batch(
        &self,
        fh: u64,
        ino: InodeId,
        cookie: u64,
        plus: bool,
    ) -> Option<Vec<DirEntry>> {
        let batches = lock(&self.dirs.batches);
        let b = batches.get(&fh)?;
        if b.ino != ino || b.plus != plus || b.fetched.elapsed() >= self.cache_ttl {
            return None;
        }
        let at = b.entries.iter().position(|e| e.cookie == cookie)?;
        let rest = &b.entries[at + 1..];
        (!rest.is_empty() || b.eof).then(|| rest.to_vec())
    }

    /// Keep `entries` (fetched at `fetched`) as `fh`'s last batch of `ino`.
    pub(super) fn keep_batch(
        &self,
        fh: u64,
        ino: InodeId,
        plus: bool,
        entries: &[DirEntry],
        eof: bool,
        fetched: Instant,
    ) {
        if fh == 0 {
            return;
        }
        let mut batches = lock(&self.dirs.batches);
        if batches.len() >= MAX_KEPT && !batches.contains_key(&fh) {
            let mut ages: Vec<(Instant, u64)> =
                batches.iter().map(|(fh, b)| (b.fetched, *fh)).collect();
            ages.sort_unstable();
            for (_, old) in ages.iter().take(MAX_KEPT / 2) {
                batches.remove(old);
            }
        }
        batches.insert(
            fh,
            Batch {
                ino,
                plus,
                entries: Arc::new(entries.to_vec()),
                eof,
                fetched,
            },
        );
    }
}
