//! The Raft log on RocksDB: entries in the `logs` column family keyed by big-endian
//! index, vote / committed / last-purged in `meta`. Appends and votes are fsynced before
//! openraft is told they are durable.
// openraft's storage traits return its `StorageError`, large as it is.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogId, RaftLogReader, StorageIOError, Vote};
use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};

use crate::codec;
use crate::error::StoreError;
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

const CF_LOGS: &str = "logs";
const CF_META: &str = "meta";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";

/// Counters of the log's durable writes, for status and benchmarks.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Synced write batches (each one fsync of the WAL).
    pub fsyncs: AtomicU64,
    /// Entries appended.
    pub appends: AtomicU64,
}

/// The log store. Clones share one database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    stats: Arc<LogStats>,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn r<T>(res: Result<T, impl std::error::Error + 'static>) -> Result<T, StorageError> {
    res.map_err(|e| StorageIOError::<NodeId>::read_logs(&e).into())
}

fn w<T>(res: Result<T, impl std::error::Error + 'static>) -> Result<T, StorageError> {
    res.map_err(|e| StorageIOError::<NodeId>::write_logs(&e).into())
}

impl LogStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = [CF_LOGS, CF_META].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(LogStore {
            db: Arc::new(db),
            stats: Arc::default(),
        })
    }

    pub fn stats(&self) -> &Arc<LogStats> {
        &self.stats
    }

    fn cf(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db
            .cf_handle(name)
            .ok_or(StoreError::MissingColumnFamily(name))
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match self.db.get_cf(self.cf(CF_META)?, key)? {
            Some(b) => Ok(Some(codec::decode(&b)?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: serde::Serialize>(
        &self,
        key: &[u8],
        v: &T,
        sync: bool,
    ) -> Result<(), StoreError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db
            .put_cf_opt(self.cf(CF_META)?, key, codec::encode(v)?, &wo)?;
        if sync {
            self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StoreError> {
        let mut it = self.db.iterator_cf(self.cf(CF_LOGS)?, IteratorMode::End);
        match it.next() {
            Some(item) => {
                let (_, v) = item?;
                let e: Entry = codec::decode(&v)?;
                Ok(Some(*e.get_log_id()))
            }
            None => Ok(None),
        }
    }

    fn delete_range(&self, from: u64, to: u64, sync: bool) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(CF_LOGS)?, index_key(from), index_key(to));
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let cf = r(self.cf(CF_LOGS))?;
        let mut out = Vec::new();
        let key = index_key(start);
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&key, Direction::Forward))
        {
            let (k, v) = r(item)?;
            let idx = crate::namespace::keys::u64_at(&k, 0);
            if !range.contains(&idx) {
                break;
            }
            out.push(r(codec::decode::<Entry>(&v))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = r(self.get_meta(KEY_PURGED))?;
        let last = r(self.last_entry_log_id())?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.put_meta(KEY_VOTE, vote, true)
            .map_err(|e| StorageIOError::<NodeId>::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_meta(KEY_VOTE)
            .map_err(|e| StorageIOError::<NodeId>::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: losing it only means re-applying from the state machine's last
        // applied index, which openraft does anyway.
        w(self.put_meta(KEY_COMMITTED, &committed, false))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(r(self.get_meta::<Option<LogId>>(KEY_COMMITTED))?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = w(self.cf(CF_LOGS))?;
        let mut batch = WriteBatch::default();
        let mut n = 0;
        for entry in entries {
            batch.put_cf(
                cf,
                index_key(entry.get_log_id().index),
                w(codec::encode(&entry))?,
            );
            n += 1;
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        let res = self.db.write_opt(batch, &wo);
        self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.stats.appends.fetch_add(n, Ordering::Relaxed);
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::<NodeId>::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        w(self.delete_range(log_id.index, u64::MAX, true))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash between the two writes leaves extra
        // entries, never a gap.
        w(self.put_meta(KEY_PURGED, &log_id, true))?;
        w(self.delete_range(0, log_id.index + 1, false))
    }
}
