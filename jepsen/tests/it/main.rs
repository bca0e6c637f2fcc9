//! Integration tests of the Jepsen harness.

mod checker;
mod runs;
