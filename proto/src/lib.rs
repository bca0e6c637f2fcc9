//! Wire types of Mobilus.
//!
//! - [`pb`], [`datapb`]: the code generated from `proto/meta.proto` and
//!   `proto/chunks.proto` (gRPC services and messages);
//! - [`blocks`]: verified reads of part of a chunk (BLAKE3 block chaining values);
//! - [`noise`]: deterministic pseudo-random bytes for tests and benchmarks;
//! - [`fs`]: the typed domain values the services carry (attributes, slices, ids);
//! - [`convert`]: the one place where domain values become protobuf messages and back;
//! - [`status`]: the stable error codes on the wire (errnos and cluster errors) and
//!   their mapping to and from `tonic::Status`.

pub mod blocks;
pub mod convert;
pub mod fs;
pub mod noise;
pub mod status;

/// Generated protobuf and gRPC code for `mobilus.meta.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("mobilus.meta.v1");
}

/// Generated protobuf and gRPC code for `mobilus.data.v1` (data nodes).
#[allow(clippy::all, missing_docs)]
pub mod datapb {
    tonic::include_proto!("mobilus.data.v1");
}

/// Largest chunk a data node stores (bytes); the client's chunker stays below it.
pub const MAX_CHUNK_BYTES: u64 = 16 * 1024 * 1024;

/// Largest client request or reply (bytes). Larger ones are refused with
/// `OUT_OF_RANGE`/`RESOURCE_EXHAUSTED` before they are decoded.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Most log entries in one AppendEntries message.
pub const RAFT_MAX_ENTRIES_PER_MESSAGE: u64 = 64;

/// Largest message between members: every entry of an AppendEntries can hold one command
/// as large as the largest client request, plus framing.
pub const RAFT_MAX_MESSAGE_BYTES: usize =
    RAFT_MAX_ENTRIES_PER_MESSAGE as usize * (MAX_MESSAGE_BYTES + 64 * 1024) + 1024 * 1024;
