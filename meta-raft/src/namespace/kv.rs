//! The namespace's storage seam: point reads, forward range scans, atomic write sets and
//! consistent read views, over RocksDB ([`RocksStore`]) or memory ([`MemStore`]).
//!
//! Every read of the namespace goes through a [`KvRead`] *view*: one point in the
//! database's history, unchanged by writes that commit while it is read. A listing or a
//! slice map built from a view is therefore the state after some whole log entry, never
//! half of one. The namespace logic never reaches into RocksDB itself.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, SnapshotWithThreadMode, WriteBatch,
    WriteOptions, DB,
};

use super::keys::Cf;
use crate::error::StoreError;

/// A key and its value, owned.
pub type Pair = (Vec<u8>, Vec<u8>);
/// Pairs of one column family in key order, from some start key on.
pub type KvIter<'a> = Box<dyn Iterator<Item = Result<Pair, StoreError>> + 'a>;
/// Writes to commit together: `None` deletes the key.
pub type WriteSet = BTreeMap<(Cf, Vec<u8>), Option<Vec<u8>>>;

/// A consistent, read-only view of the store.
pub trait KvRead {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// The pairs of `cf` with keys `>= start`, in key order (the caller stops when the
    /// keys leave the range it wants).
    fn iter_from(&self, cf: Cf, start: &[u8]) -> Result<KvIter<'_>, StoreError>;
}

/// A store the state machine applies to and readers take views of.
pub trait KvStore: Send + Sync {
    /// A view of everything committed so far; later writes do not show through it.
    fn view(&self) -> Result<Box<dyn KvRead + '_>, StoreError>;
    /// Commit `writes` atomically; `sync` also makes them durable before returning.
    fn write(&self, writes: WriteSet, sync: bool) -> Result<(), StoreError>;
}

// ---- RocksDB ----

/// Every write to a file compacts its block's slice records once they pile up (see
/// `file::compact`), deleting them: a block written over and over (a database's hot page,
/// its log's current page) leaves thousands of tombstones in the memtable, and each scan
/// of the block stepped over all of them (a 4 MiB file under fsync'd random writes fell
/// from ~400 to ~40 writes a second within 30 s). A scan that meets this many hidden
/// entries has the memtable flushed (set after open: the crate has no setter)...
const HIDDEN_ENTRY_FLUSH: &[(&str, &str)] = &[
    ("memtable_op_scan_flush_trigger", "256"),
    ("memtable_avg_op_scan_flush_trigger", "64"),
];

/// ...and a table file mostly of tombstones is compacted soon after, which drops them.
fn column_family_options() -> Options {
    let mut opts = Options::default();
    opts.add_compact_on_deletion_collector_factory(128, 64, 0.5);
    opts
}

/// The namespace on RocksDB: one column family per [`Cf`].
pub struct RocksStore {
    db: DB,
}

impl RocksStore {
    /// Open (or create) the database at `path` with every column family.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        let cfs = Cf::ALL
            .iter()
            .map(|cf| ColumnFamilyDescriptor::new(cf.name(), column_family_options()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        for cf in Cf::ALL {
            db.set_options_cf(handle(&db, cf)?, HIDDEN_ENTRY_FLUSH)?;
        }
        Ok(RocksStore { db })
    }

    /// The database itself, for what only RocksDB does: checkpoints, WAL flushes.
    pub fn db(&self) -> &DB {
        &self.db
    }
}

fn handle(db: &DB, cf: Cf) -> Result<&rocksdb::ColumnFamily, StoreError> {
    db.cf_handle(cf.name())
        .ok_or(StoreError::MissingColumnFamily(cf.name()))
}

/// A RocksDB snapshot: reads see the database as it was when the view was taken.
struct RocksView<'a> {
    db: &'a DB,
    snap: SnapshotWithThreadMode<'a, DB>,
}

impl KvRead for RocksView<'_> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.snap.get_cf(handle(self.db, cf)?, key)?)
    }

    fn iter_from(&self, cf: Cf, start: &[u8]) -> Result<KvIter<'_>, StoreError> {
        let it = self.snap.iterator_cf(
            handle(self.db, cf)?,
            IteratorMode::From(start, Direction::Forward),
        );
        Ok(Box::new(it.map(|item| {
            item.map(|(k, v)| (k.into_vec(), v.into_vec()))
                .map_err(StoreError::from)
        })))
    }
}

impl KvStore for RocksStore {
    fn view(&self) -> Result<Box<dyn KvRead + '_>, StoreError> {
        Ok(Box::new(RocksView {
            db: &self.db,
            snap: self.db.snapshot(),
        }))
    }

    fn write(&self, writes: WriteSet, sync: bool) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for ((cf, key), value) in writes {
            let h = handle(&self.db, cf)?;
            match value {
                Some(v) => batch.put_cf(h, key, v),
                None => batch.delete_cf(h, key),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        Ok(self.db.write_opt(batch, &wo)?)
    }
}

// ---- memory ----

type MemMap = BTreeMap<(Cf, Vec<u8>), Vec<u8>>;

/// The namespace in memory (model tests, tools). A view shares the map; a write after it
/// copies the map first, so the view never changes.
#[derive(Default)]
pub struct MemStore {
    map: RwLock<Arc<MemMap>>,
}

impl MemStore {
    pub fn new() -> Self {
        MemStore::default()
    }
}

struct MemView(Arc<MemMap>);

impl KvRead for MemView {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0.get(&(cf, key.to_vec())).cloned())
    }

    fn iter_from(&self, cf: Cf, start: &[u8]) -> Result<KvIter<'_>, StoreError> {
        Ok(Box::new(
            self.0
                .range((cf, start.to_vec())..)
                .take_while(move |((c, _), _)| *c == cf)
                .map(|((_, k), v)| Ok((k.clone(), v.clone()))),
        ))
    }
}

impl KvStore for MemStore {
    fn view(&self) -> Result<Box<dyn KvRead + '_>, StoreError> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(Box::new(MemView(map)))
    }

    fn write(&self, writes: WriteSet, _sync: bool) -> Result<(), StoreError> {
        let mut guard = self.map.write().unwrap_or_else(|p| p.into_inner());
        let map = Arc::make_mut(&mut guard);
        for (key, value) in writes {
            match value {
                Some(v) => map.insert(key, v),
                None => map.remove(&key),
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_views_are_frozen(store: &dyn KvStore) {
        let put = |k: &[u8], v: &[u8]| {
            let mut w = WriteSet::new();
            w.insert((Cf::Inodes, k.to_vec()), Some(v.to_vec()));
            store.write(w, false).unwrap();
        };
        put(b"a", b"1");
        put(b"b", b"2");
        let view = store.view().unwrap();
        put(b"a", b"changed");
        let mut w = WriteSet::new();
        w.insert((Cf::Inodes, b"b".to_vec()), None);
        w.insert((Cf::Inodes, b"c".to_vec()), Some(b"3".to_vec()));
        store.write(w, false).unwrap();
        assert_eq!(view.get(Cf::Inodes, b"a").unwrap(), Some(b"1".to_vec()));
        let keys: Vec<Vec<u8>> = view
            .iter_from(Cf::Inodes, b"")
            .unwrap()
            .map(|r| r.unwrap().0)
            .collect();
        assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()]);
        assert!(view.iter_from(Cf::Dentries, b"").unwrap().next().is_none());
        let now = store.view().unwrap();
        let pairs: Vec<Pair> = now
            .iter_from(Cf::Inodes, b"b")
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(pairs, vec![(b"c".to_vec(), b"3".to_vec())]);
    }

    #[test]
    fn memory_views_do_not_see_later_writes() {
        check_views_are_frozen(&MemStore::new());
    }

    #[test]
    fn rocksdb_views_do_not_see_later_writes() {
        let dir = tempfile::tempdir().unwrap();
        check_views_are_frozen(&RocksStore::open(dir.path()).unwrap());
    }
}
