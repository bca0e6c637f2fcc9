//! A transaction over the state-machine database: point reads and range scans see the
//! transaction's own writes (an overlay merged over the committed state), savepoints roll
//! back part of it, and everything is committed as one atomic [`WriteSet`]. One log entry
//! (a batch of commands) is one transaction. A transaction reads through a [`KvRead`]
//! view; a read-only query is a transaction that never writes.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::keys::Cf;
use super::kv::{KvIter, KvRead, Pair, WriteSet};
use crate::codec;
use crate::error::StoreError;

type Key = (Cf, Vec<u8>);
/// Keys and values, owned.
pub type Pairs = Vec<Pair>;

pub struct Txn<'a> {
    base: &'a dyn KvRead,
    overlay: BTreeMap<Key, Option<Vec<u8>>>,
    /// What each write replaced in the overlay (outer None: the key was not in it).
    undo: Vec<(Key, Option<Option<Vec<u8>>>)>,
}

/// A point to roll back to.
#[derive(Clone, Copy, Debug)]
pub struct Savepoint(usize);

fn next_committed(it: &mut KvIter<'_>, prefix: &[u8]) -> Result<Option<Pair>, StoreError> {
    match it.next() {
        Some(item) => {
            let (k, v) = item?;
            Ok(k.starts_with(prefix).then_some((k, v)))
        }
        None => Ok(None),
    }
}

impl<'a> Txn<'a> {
    pub fn new(base: &'a dyn KvRead) -> Self {
        Txn {
            base,
            overlay: BTreeMap::new(),
            undo: Vec::new(),
        }
    }

    pub fn get_raw(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.overlay.get(&(cf, key.to_vec())) {
            return Ok(v.clone());
        }
        self.base.get(cf, key)
    }

    pub fn get<T: DeserializeOwned>(&self, cf: Cf, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.get_raw(cf, key)? {
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    fn write(&mut self, key: Key, value: Option<Vec<u8>>) {
        let old = self.overlay.insert(key.clone(), value);
        self.undo.push((key, old));
    }

    pub fn put<T: Serialize>(&mut self, cf: Cf, key: Vec<u8>, value: &T) -> Result<(), StoreError> {
        self.write((cf, key), Some(codec::encode(value)?));
        Ok(())
    }

    pub fn put_raw(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>) {
        self.write((cf, key), Some(value));
    }

    pub fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.write((cf, key), None);
    }

    pub fn savepoint(&self) -> Savepoint {
        Savepoint(self.undo.len())
    }

    /// Undo every write made since `sp`.
    pub fn rollback(&mut self, sp: Savepoint) {
        while self.undo.len() > sp.0 {
            let Some((key, old)) = self.undo.pop() else {
                break;
            };
            match old {
                Some(v) => self.overlay.insert(key, v),
                None => self.overlay.remove(&key),
            };
        }
    }

    /// Visit the `(key, value)` pairs that start with `prefix`, from `start` (inclusive;
    /// it must itself start with `prefix`), in key order, until `visit` breaks. The
    /// transaction's own writes and deletes are merged over the committed state.
    pub fn scan(
        &self,
        cf: Cf,
        prefix: &[u8],
        start: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<(), StoreError> {
        let mut it = self.base.iter_from(cf, start)?;
        let mut pending = self
            .overlay
            .range((cf, start.to_vec())..)
            .take_while(|((c, k), _)| *c == cf && k.starts_with(prefix))
            .peekable();
        let mut committed = next_committed(&mut it, prefix)?;
        loop {
            let from_overlay = match (&committed, pending.peek()) {
                (None, None) => return Ok(()),
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((ck, _)), Some(((_, ok), _))) => ok <= ck,
            };
            let flow = if from_overlay {
                let Some(((_, key), value)) = pending.next() else {
                    return Ok(());
                };
                if committed.as_ref().is_some_and(|(ck, _)| ck == key) {
                    committed = next_committed(&mut it, prefix)?;
                }
                match value {
                    Some(v) => visit(key, v)?,
                    None => ControlFlow::Continue(()),
                }
            } else {
                let Some((key, value)) = committed.take() else {
                    return Ok(());
                };
                committed = next_committed(&mut it, prefix)?;
                visit(&key, &value)?
            };
            if flow.is_break() {
                return Ok(());
            }
        }
    }

    /// Keys (and values) starting with `prefix`, in order, own writes included.
    pub fn scan_all(&self, cf: Cf, prefix: &[u8]) -> Result<Pairs, StoreError> {
        let mut out = Vec::new();
        self.scan(cf, prefix, prefix, |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(out)
    }

    /// The writes, to commit as one atomic write set.
    pub fn into_writes(self) -> WriteSet {
        self.overlay
    }
}
