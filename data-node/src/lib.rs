//! `mobilus-data`: the content-addressed chunk store of a site.
//!
//! Chunks are immutable and named by their BLAKE3 hash ([`store::ChunkStore`]); each is
//! one file written durably (temp file, fsync, rename, fsync the directory) and listed in
//! a RocksDB index; a small one is durable by its bytes journaled in the index's synced
//! write instead, its file synced by a later round. The hash is checked on every receive
//! and every read: a chunk whose bytes no longer match is quarantined and never served.
//! All disk I/O goes through [`disk::Disk`], with a real and a fault-injecting
//! implementation. [`service`] is the gRPC `Chunks` service over the store.
//!
//! A node registers with the metadata service's site registry and heartbeats through a
//! [`worker`], which also runs its garbage collection ([`gc`]): rounds that delete chunks
//! the metadata has condemned, safely against concurrent writers, and its replicator
//! ([`replicate`]): rounds that copy its chunks to the other nodes of its site that their
//! placement says should hold them; and its follower ([`follow`]): on the one node per
//! site that pulls, rounds that copy from other sites the data of the subtrees its site's
//! placement says it holds, by their change feed, within a bandwidth.

pub mod cache;
pub mod disk;
pub mod error;
pub mod evict;
pub mod follow;
pub mod gc;
pub mod priority;
pub mod replicate;
pub mod service;
pub mod store;
/// Background work (shared with the mount): `mobilus_telemetry::worker`.
pub use mobilus_telemetry::worker;

pub use error::DataError;
