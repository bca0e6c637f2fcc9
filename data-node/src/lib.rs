//! `mobilus-data`: the content-addressed chunk store of a site (BLAKE3-named chunks on
//! local disk, refcounts in RocksDB, a gRPC `Chunks` service, the replicator).
//!
//! Not built yet: the data path is its own issue. The metadata service already keeps the
//! chunk reference counts this crate will read (`mobilus_meta::namespace`).
