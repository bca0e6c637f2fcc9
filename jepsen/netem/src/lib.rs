//! `mobilus-netem`: separate hosts and a slow link between sites on one machine, for the
//! Jepsen harness and for `mobilusctl dev up --wan` (never for production). [`net`] makes a
//! network namespace per host on a bridge and cuts it with iptables; [`link`] is the WAN:
//! a proxy that every connection between sites is redirected through, adding latency and
//! a bandwidth limit (this kernel has no netem) and counting the bytes that cross.

pub mod link;
pub mod net;
