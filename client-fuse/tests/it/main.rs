//! The client data path against real processes: 3 metadata members, and one data node
//! at each of two sites.

mod apps;
mod block_reads;
mod cluster;
mod data_path;
mod delegation;
mod disk_full;
mod follow;
mod gc;
mod listing;
mod locks;
mod mount;
mod on_demand;
mod ownership;
mod posix_suites;
mod profile;
mod replicas;
mod resilience;
