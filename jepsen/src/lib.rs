//! `mobilus-jepsen`: Jepsen's method for Mobilus, in Rust. Real processes on a real
//! (namespaced) network, real faults, a recorded [`history`], and an independent
//! [`checker`] (Wing-Gong/Lowe linearizability search, P-compositional by key).

pub mod checker;
pub mod history;
