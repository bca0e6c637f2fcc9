//! `mobilus-meta`: the Mobilus metadata service.
//!
//! One Raft group (openraft 0.9) replicates the POSIX namespace, the file slice maps,
//! chunk reference counts and subtree ownership. The log and the state machine live in
//! RocksDB ([`store`]); the state machine ([`namespace`]) is deterministic; members talk
//! gRPC ([`network`], [`server`]).

pub mod codec;
pub mod config;
pub mod error;
pub mod namespace;
pub mod network;
pub mod server;
pub mod store;
pub mod types;

pub use error::{MetaError, NsError, StoreError};
