//! Integration tests of `mobilus-meta`: one binary, one module per area.

mod bad_input;
mod batch;
mod clone;
mod cluster;
mod config;
mod conformance;
mod delegation;
mod extents;
mod feed;
mod gc;
mod harness;
mod isolation;
mod limits;
mod locks;
mod model;
mod namespace;
mod ownership;
mod partition;
mod refresh;
mod snapshot;
