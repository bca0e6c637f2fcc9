//! A transaction over the state-machine database: reads see the transaction's own writes,
//! and everything is committed as one atomic `WriteBatch`.
//!
//! Range scans read the committed state only. Every operation scans before it writes the
//! keys it scans (checked by the operations, not enforced here), and each log entry
//! commits before the next one runs, so a scan never misses a write it depends on.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use rocksdb::{Direction, IteratorMode, WriteBatch, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::keys::Cf;
use crate::codec;
use crate::error::StoreError;

pub struct Txn<'a> {
    db: &'a DB,
    overlay: BTreeMap<(Cf, Vec<u8>), Option<Vec<u8>>>,
}

impl<'a> Txn<'a> {
    pub fn new(db: &'a DB) -> Self {
        Txn { db, overlay: BTreeMap::new() }
    }

    fn cf(&self, cf: Cf) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db.cf_handle(cf.name()).ok_or(StoreError::MissingColumnFamily(cf.name()))
    }

    pub fn get_raw(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.overlay.get(&(cf, key.to_vec())) {
            return Ok(v.clone());
        }
        Ok(self.db.get_cf(self.cf(cf)?, key)?)
    }

    pub fn get<T: DeserializeOwned>(&self, cf: Cf, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.get_raw(cf, key)? {
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    pub fn put<T: Serialize>(&mut self, cf: Cf, key: Vec<u8>, value: &T) -> Result<(), StoreError> {
        self.overlay.insert((cf, key), Some(codec::encode(value)?));
        Ok(())
    }

    pub fn put_raw(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>) {
        self.overlay.insert((cf, key), Some(value));
    }

    pub fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.overlay.insert((cf, key), None);
    }

    /// Forget the writes made so far (the operation failed).
    pub fn discard(&mut self) {
        self.overlay.clear();
    }

    /// Visit committed `(key, value)` pairs that start with `prefix`, from `start`
    /// (inclusive, must itself start with `prefix`), until `visit` breaks.
    pub fn scan(
        &self,
        cf: Cf,
        prefix: &[u8],
        start: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<(), StoreError> {
        let iter = self.db.iterator_cf(self.cf(cf)?, IteratorMode::From(start, Direction::Forward));
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            if visit(&k, &v)?.is_break() {
                break;
            }
        }
        Ok(())
    }

    /// Committed keys (and values) starting with `prefix`, in order.
    pub fn scan_all(&self, cf: Cf, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        self.scan(cf, prefix, prefix, |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(out)
    }

    /// Turn the writes into one batch.
    pub fn into_batch(self) -> Result<WriteBatch, StoreError> {
        let mut batch = WriteBatch::default();
        for ((cf, key), value) in self.overlay {
            let handle =
                self.db.cf_handle(cf.name()).ok_or(StoreError::MissingColumnFamily(cf.name()))?;
            match value {
                Some(v) => batch.put_cf(handle, key, v),
                None => batch.delete_cf(handle, key),
            }
        }
        Ok(batch)
    }
}
