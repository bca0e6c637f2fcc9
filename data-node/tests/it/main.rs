//! Tests of the data node: the store with a faulty disk (full, rotten, losing power), and
//! a real process over gRPC.

mod blocks;
mod journal;
mod procs;
mod registry;
mod service;
mod store;
