//! Errors of the data node, mapped to gRPC once (`to_status`).

use mobilus_proto::fs::ChunkHash;
use mobilus_proto::status::{Errno, WireError};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("chunk {0:?} not found")]
    NotFound(ChunkHash),
    #[error("the bytes hash to {actual:?}, not {claimed:?}")]
    HashMismatch {
        claimed: ChunkHash,
        actual: ChunkHash,
    },
    #[error("chunk {0:?} failed verification and was quarantined")]
    Corrupt(ChunkHash),
    #[error("no space left on the data node's disk")]
    NoSpace,
    #[error("chunk of {0} bytes is over the limit of {max}", max = mobilus_proto::MAX_CHUNK_BYTES)]
    TooLarge(u64),
    #[error("range {offset}+{len} is outside a chunk of {size} bytes")]
    BadRange { offset: u64, len: u64, size: u64 },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("index: {0}")]
    Index(#[from] rocksdb::Error),
    #[error("io: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for DataError {
    fn from(e: std::io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            DataError::NoSpace
        } else {
            DataError::Io(e)
        }
    }
}

impl DataError {
    /// Map once, at the gRPC boundary.
    pub fn to_status(&self) -> tonic::Status {
        use tonic::Code;
        let msg = self.to_string();
        match self {
            DataError::NoSpace => WireError::Errno(Errno::ENOSPC, msg).to_status(),
            DataError::NotFound(_) => tonic::Status::new(Code::NotFound, msg),
            DataError::HashMismatch { .. } | DataError::TooLarge(_) | DataError::Invalid(_) => {
                tonic::Status::new(Code::InvalidArgument, msg)
            }
            DataError::Corrupt(_) => tonic::Status::new(Code::DataLoss, msg),
            DataError::BadRange { .. } => tonic::Status::new(Code::OutOfRange, msg),
            DataError::Index(_) | DataError::Io(_) => tonic::Status::new(Code::Internal, msg),
        }
    }
}
