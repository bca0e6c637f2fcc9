//! `mobilus-data-client`: the one client of Mobilus data nodes, shared by the mount's data
//! path, `mobilusctl` and the data nodes' replicator.
//!
//! - [`node`]: [`DataClient`], typed calls to one node's `Chunks` service;
//! - [`placement`]: where a site keeps a chunk — rendezvous hashing of the chunk's hash
//!   over the site's nodes, so adding or removing a node moves only the chunks it gains
//!   or loses;
//! - [`nodes`]: [`DataNodes`], the registry as a caller sees it (which nodes each site
//!   has, which look alive), refreshed in the background, with one connection per node;
//! - [`bandwidth`]: the token bucket that holds replication to a bandwidth.

pub mod bandwidth;
pub mod node;
pub mod nodes;
pub mod placement;

pub use node::{DataClient, DataClientError, PutAnswer};
pub use nodes::{DataNodes, Registry};
