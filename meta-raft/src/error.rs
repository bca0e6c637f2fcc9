//! Errors of the metadata service, one enum per layer, mapped to gRPC once (`to_status`).

use mobilus_proto::status::{Errno, WireError};

use crate::codec::CodecError;
use crate::types::OpError;

/// The storage layer: RocksDB, files, encoding.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("missing column family {0}")]
    MissingColumnFamily(&'static str),
    #[error("corrupt snapshot: {0}")]
    CorruptSnapshot(String),
    #[error("corrupt state: {0}")]
    Corrupt(String),
}

/// An error inside a namespace operation: refused (goes back to the caller as the reply)
/// or a storage failure (fatal for the state machine).
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error(transparent)]
    Op(#[from] OpError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Errno> for NsError {
    fn from(e: Errno) -> Self {
        NsError::Op(OpError::from(e))
    }
}

impl From<rocksdb::Error> for NsError {
    fn from(e: rocksdb::Error) -> Self {
        NsError::Store(e.into())
    }
}

impl From<CodecError> for NsError {
    fn from(e: CodecError) -> Self {
        NsError::Store(e.into())
    }
}

/// The service layer: what a caller of a `MetaNode` method can get back.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("{0}")]
    Op(#[from] OpError),
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<String>),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("raft: {0}")]
    Raft(String),
}

impl From<NsError> for MetaError {
    fn from(e: NsError) -> Self {
        match e {
            NsError::Op(o) => MetaError::Op(o),
            NsError::Store(s) => MetaError::Store(s),
        }
    }
}

impl From<Errno> for MetaError {
    fn from(e: Errno) -> Self {
        MetaError::Op(e.into())
    }
}

impl MetaError {
    /// The stable wire form of this error.
    pub fn to_wire(&self) -> WireError {
        match self {
            MetaError::Op(OpError::Errno(n)) => {
                let e = Errno(*n);
                WireError::Errno(e, format!("{}: {}", e.name(), e.description()))
            }
            MetaError::Op(e @ OpError::StaleEpoch { .. }) => WireError::StaleEpoch(e.to_string()),
            MetaError::Op(OpError::StaleChunks(m)) => WireError::StaleChunks(m.clone()),
            MetaError::Op(e @ OpError::NotOwner { .. }) => WireError::NotOwner(e.to_string()),
            MetaError::Op(e @ OpError::LeaseExpired { .. }) => {
                WireError::LeaseExpired(e.to_string())
            }
            MetaError::Op(e @ OpError::UnknownSite(_)) => WireError::UnknownSite(e.to_string()),
            MetaError::Op(e @ OpError::Delegated { .. }) => WireError::Delegated(e.to_string()),
            MetaError::Op(e @ OpError::Frozen { .. }) => WireError::Frozen(e.to_string()),
            MetaError::Op(e @ OpError::Explained { errno, .. }) => {
                WireError::Errno(Errno(*errno), e.to_string())
            }
            MetaError::NotLeader(l) => WireError::NotLeader(l.clone()),
            MetaError::Unavailable(m) => WireError::Unavailable(m.clone()),
            MetaError::InvalidRequest(m) => {
                WireError::Other(tonic::Code::InvalidArgument, m.clone())
            }
            MetaError::Store(e) => WireError::Other(tonic::Code::Internal, e.to_string()),
            MetaError::Raft(m) => WireError::Other(tonic::Code::Internal, m.clone()),
        }
    }

    /// Map once, at the gRPC boundary.
    pub fn to_status(&self) -> tonic::Status {
        self.to_wire().to_status()
    }
}
