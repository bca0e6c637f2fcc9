//! Open directories: each keeps the last batch of entries it fetched.
//!
//! The kernel reads a directory a reply at a time (this kernel, 6.18, asks for 64 KiB:
//! about 2,048 short names; older ones a 4 KiB page), and each request names the cookie
//! it stopped at. A batch from the metadata holds up to 2,048: without this, every reply
//! was a metadata round fetching a whole batch to use a part of it. Each handle (OPENDIR) keeps its
//! last batch, and a request that continues where the batch can answer is answered from
//! it, as libfuse's high-level API buffers a listing per handle. A page is the shared
//! batch and where to start in it ([`DirPage`]): the reply takes what fits, and nothing
//! is copied that it cannot hold (copying the rest of the batch for every page made a
//! listing's cost grow with the square of its batch). A batch is used for at most the
//! attribute TTL after it was fetched, so the attributes a READDIRPLUS hands the kernel
//! are no older than those a GETATTR would give; a rewind (offset 0) fetches afresh, as
//! POSIX's `rewinddir` asks.
//!
//! A batch that does not end the directory starts the fetch of the next one at once
//! ([`Prefetch`]), as readahead does for files: the members list it while the kernel
//! takes this one, and a large listing costs the slower of the two, not their sum.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mobilus_proto::fs::{DirEntry, InodeId};
use tokio::task::JoinHandle;

use mobilus_proto::status::Errno;

use super::delegation::{self, known_listing};
use super::{lock, FsResult, MountFs, READDIR_BATCH};
use crate::client::ClientError;

/// The entries of a directory one READDIR may answer: `entries[from..]` of a shared
/// batch (or cached listing), in cookie order.
#[derive(Clone, Debug, Default)]
pub struct DirPage {
    entries: Arc<Vec<DirEntry>>,
    from: usize,
}

impl DirPage {
    /// The entries of `entries` whose cookies follow `cookie` (`entries` in cookie order).
    pub(super) fn after(entries: Arc<Vec<DirEntry>>, cookie: u64) -> Self {
        let from = entries.partition_point(|e| e.cookie <= cookie);
        DirPage { entries, from }
    }

    /// All of `entries`.
    pub(super) fn whole(entries: Arc<Vec<DirEntry>>) -> Self {
        DirPage { entries, from: 0 }
    }

    pub fn entries(&self) -> &[DirEntry] {
        self.entries.get(self.from..).unwrap_or_default()
    }
}

/// Most entries a listing in inode order is resumed from the metadata with (each held,
/// to be put in order): it began as one the cache knew whole, of at most 100,000 names.
const MAX_RESUMED: usize = 1_000_000;

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

type Fetched = Result<(Vec<DirEntry>, bool), mobilus_meta_client::ClientError>;

/// The next batch of a handle's listing, being fetched (aborted when dropped).
struct Prefetch {
    ino: InodeId,
    plus: bool,
    /// The cookie it lists after (the last of the batch before it).
    cookie: u64,
    started: Instant,
    task: Option<JoinHandle<Fetched>>,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

#[derive(Default)]
pub(super) struct DirHandles {
    next: AtomicU64,
    batches: Mutex<HashMap<u64, Batch>>,
    prefetches: Mutex<HashMap<u64, Prefetch>>,
}

impl MountFs {
    /// OPENDIR: a handle of its own (never 0), so its reads can share a batch.
    pub fn opendir(&self) -> u64 {
        self.dirs.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// RELEASEDIR: its batch is dropped, and its prefetch stopped.
    pub fn releasedir(&self, fh: u64) {
        lock(&self.dirs.batches).remove(&fh);
        lock(&self.dirs.prefetches).remove(&fh);
    }

    /// After `fh` fetched `entries` of `ino` (not the end of it): start fetching the
    /// batch after them.
    pub(super) fn prefetch_after(&self, fh: u64, ino: InodeId, plus: bool, entries: &[DirEntry]) {
        let Some(last) = entries.last() else { return };
        // With no TTL a batch is never used again, so neither would its prefetch be.
        if fh == 0 || self.cache_ttl.is_zero() {
            return;
        }
        let (meta, cookie) = (self.client.meta().clone(), last.cookie);
        let task =
            tokio::spawn(
                async move { meta.readdir(ino, cookie, READDIR_BATCH, plus, false).await },
            );
        let mut prefetches = lock(&self.dirs.prefetches);
        if prefetches.len() >= MAX_KEPT && !prefetches.contains_key(&fh) {
            // Each a listing left half read; they are refetched if read on.
            prefetches.clear();
        }
        prefetches.insert(
            fh,
            Prefetch {
                ino,
                plus,
                cookie,
                started: Instant::now(),
                task: Some(task),
            },
        );
    }

    /// The batch after `cookie` of `ino`, if `fh` prefetched it (and it is recent):
    /// its entries, whether it ends the directory, and when its fetch started. `None`
    /// (fetch it now) if there is none or it failed: the fetch reports the error.
    pub(super) async fn take_prefetch(
        &self,
        fh: u64,
        ino: InodeId,
        cookie: u64,
        plus: bool,
    ) -> Option<(Vec<DirEntry>, bool, Instant)> {
        let mut p = lock(&self.dirs.prefetches).remove(&fh)?;
        if p.ino != ino || p.plus != plus || p.cookie != cookie {
            return None;
        }
        if p.started.elapsed() >= self.cache_ttl {
            return None;
        }
        let (entries, eof) = p.task.take()?.await.ok()?.ok()?;
        Some((entries, eof, p.started))
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
    ) -> Option<DirPage> {
        let batches = lock(&self.dirs.batches);
        let b = batches.get(&fh)?;
        if b.ino != ino || b.plus != plus || b.fetched.elapsed() >= self.cache_ttl {
            return None;
        }
        let at = b.entries.iter().position(|e| e.cookie == cookie)?;
        let page = DirPage {
            entries: b.entries.clone(),
            from: at + 1,
        };
        (!page.entries().is_empty() || b.eof).then_some(page)
    }

    /// Keep `entries` (fetched at `fetched`) as `fh`'s last batch of `ino`.
    pub(super) fn keep_batch(
        &self,
        fh: u64,
        ino: InodeId,
        plus: bool,
        entries: &Arc<Vec<DirEntry>>,
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
                entries: entries.clone(),
                eof,
                fetched,
            },
        );
    }

    /// Keep `entries` (a whole listing in inode order, `known_listing.rs`) as `fh`'s
    /// batch of `ino`, and answer what follows `cookie`.
    pub(super) fn keep_in_inode_order(
        &self,
        fh: u64,
        ino: InodeId,
        cookie: u64,
        plus: bool,
        mut entries: Arc<Vec<DirEntry>>,
    ) -> DirPage {
        if plus {
            self.merge_entries(Arc::make_mut(&mut entries).as_mut_slice());
        }
        self.keep_batch(fh, ino, plus, &entries, true, Instant::now());
        DirPage::after(entries, cookie)
    }

    /// Go on with a listing in inode order after `cookie` when `fh` no longer has its
    /// batch: from the cache if it still knows the directory whole, else from the whole
    /// listing fetched again and put in the same order.
    pub(super) async fn resume_in_inode_order(
        &self,
        fh: u64,
        ino: InodeId,
        cookie: u64,
        plus: bool,
    ) -> FsResult<DirPage> {
        if let Some(entries) = self.deleg.known_listing(ino, plus) {
            delegation::hit("readdir");
            return Ok(self.keep_in_inode_order(fh, ino, cookie, plus, entries));
        }
        tracing::info!(
            dir = ino,
            "a listing in inode order goes on from the metadata's"
        );
        // Held whole to be put in order: bounded, as the cache's names are.
        let meta = self.meta().await?;
        let (all, whole) = meta.readdir_upto(ino, plus, false, MAX_RESUMED).await?;
        if !whole {
            return Err(ClientError::Refused(Errno::EOVERFLOW));
        }
        // Inode numbers are counted from 1, so never too large; 257 links of one inode
        // in one directory are.
        let entries =
            known_listing::in_inode_order(all).ok_or(ClientError::Refused(Errno::EOVERFLOW))?;
        Ok(self.keep_in_inode_order(fh, ino, cookie, plus, Arc::new(entries)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mobilus_proto::fs::FileKind;

    fn entries(cookies: &[u64]) -> Arc<Vec<DirEntry>> {
        let e = |c: u64| DirEntry {
            name: format!("n{c}").into_bytes(),
            ino: c + 100,
            kind: FileKind::Regular,
            cookie: c,
            attr: None,
        };
        Arc::new(cookies.iter().map(|&c| e(c)).collect())
    }

    fn cookies(p: &DirPage) -> Vec<u64> {
        p.entries().iter().map(|e| e.cookie).collect()
    }

    #[test]
    fn a_page_holds_the_entries_after_its_cookie_without_copying_the_batch() {
        let batch = entries(&[3, 4, 9]);
        assert_eq!(cookies(&DirPage::after(batch.clone(), 2)), [3, 4, 9]);
        assert_eq!(cookies(&DirPage::after(batch.clone(), 4)), [9]);
        // A cookie between two (its entry removed since) resumes after it.
        assert_eq!(cookies(&DirPage::after(batch.clone(), 5)), [9]);
        assert!(DirPage::after(batch.clone(), 9).entries().is_empty());
        let page = DirPage::after(batch.clone(), 3);
        assert!(std::ptr::eq(&page.entries()[0], &batch[1]), "copied");
        assert!(DirPage::default().entries().is_empty());
    }
}
