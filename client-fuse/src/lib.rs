//! `mobilus-client`: the client data path that the FUSE mount, the benchmarks and the
//! Jepsen harness share.
//!
//! - [`chunker`]: content-defined chunking (FastCDC) and BLAKE3 naming;
//! - data nodes are reached through `mobilus-data-client` ([`DataNodes`]: the registry,
//!   placement of a chunk over a site's nodes, a connection per node);
//! - [`client`]: [`Client`] — buffered writes that become slices (dedup: a chunk the site
//!   already holds is never sent);
//! - [`read`]: reads by verified 16 KiB blocks through a bounded cache shared by every
//!   open file ([`block_cache`]), with readahead for sequential streams; a chunk the
//!   local node lacks is fetched from another site, then stored locally (cache-through).
//!
//! - [`mount`]: the FUSE mount (`mobilus-mount`), a thin fuser adapter over typed
//!   operations on [`Client`].

pub mod block_cache;
pub mod chunker;
pub mod client;
pub mod local_chunks;
pub mod mount;
pub mod profile;
pub mod read;

pub use block_cache::BlockCacheStats;
pub use client::{Client, ClientStats, DataOptions, FileWriter, WritePlan};
pub use mobilus_data_client::{DataClient, DataClientError, DataNodes};
pub use read::{FileReader, READ_WINDOW};
