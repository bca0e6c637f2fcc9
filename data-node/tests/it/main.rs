//! Tests of the data node: the store with a faulty disk, and a real process over gRPC.

mod blocks;
mod procs;
mod registry;
mod service;
mod store;
