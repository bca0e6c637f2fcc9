//! `mobilus-client`: the client data path that the FUSE mount, the benchmarks and the
//! Jepsen harness share.
//!
//! - [`chunker`]: content-defined chunking (FastCDC) and BLAKE3 naming;
//! - [`data`]: a client of one data node's `Chunks` service;
//! - [`client`]: [`Client`] — buffered writes that become slices (dedup: a chunk the site
//!   already holds is never sent), and reads that fetch a chunk from another site when the
//!   local node lacks it, then store it locally (cache-through).
//!
//! - [`mount`]: the FUSE mount (`mobilus-mount`), a thin fuser adapter over typed
//!   operations on [`Client`].

pub mod chunker;
pub mod client;
pub mod data;
pub mod mount;

pub use client::{Client, ClientStats, FileReader, FileWriter};
