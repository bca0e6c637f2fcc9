//! `mobilus-jepsen`: Jepsen's method for Mobilus, in Rust. Real processes on separate
//! (namespaced) hosts, real faults from a [`nemesis`], client operations recorded in a
//! [`history`], and an independent [`checker`] (Wing-Gong/Lowe linearizability search,
//! P-compositional by key; a set checker). [`run`] ties them together; [`report`] draws
//! the pictures.

pub mod checker;
pub mod cluster;
pub mod edn;
pub mod history;
pub mod nemesis;
pub mod ownership;
pub mod replication;
pub mod report;
pub mod run;
pub mod worker;
pub mod worker_fs;

/// The network: namespaces, partitions and the WAN link proxy (shared with dev clusters).
pub use mobilus_netem::{link, net};
