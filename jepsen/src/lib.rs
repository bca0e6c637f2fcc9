//! `mobilus-jepsen`: the Jepsen-style harness (network namespaces, nemeses, histories,
//! a linearizability checker, reports).
//!
//! Not built yet: it depends on the FUSE mount issue.
