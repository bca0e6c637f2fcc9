//! Raft storage on RocksDB: the log ([`LogStore`]) and the state machine
//! ([`StateMachine`]) live in separate databases under the member's data directory, each
//! in its own column families, so that a snapshot can replace the state machine whole.

pub mod archive;
mod log;
mod sm;

pub use self::log::{LogStats, LogStore};
pub use self::sm::StateMachine;

use std::path::Path;

use crate::error::StoreError;

/// Open both stores of a member under `data_dir`.
pub fn open(data_dir: &Path) -> Result<(LogStore, StateMachine), StoreError> {
    std::fs::create_dir_all(data_dir)?;
    let log = LogStore::open(&data_dir.join("raft-log"))?;
    let sm = StateMachine::open(&data_dir.join("sm"))?;
    Ok((log, sm))
}
