//! Stable error codes on the wire, defined once for servers and clients.
//!
//! A namespace error travels as a `tonic::Status` whose code follows the errno's meaning
//! (ENOENT → NOT_FOUND, EEXIST → ALREADY_EXISTS, ...) and whose `x-mobilus-errno` metadata
//! holds the errno number. Cluster errors carry `x-mobilus-error` with a stable name
//! (`not-leader`, `unavailable`, `stale-epoch`, `stale-chunks`, `not-owner`,
//! `lease-expired`, `unknown-site`, `delegated`) and, for `not-leader`, `x-mobilus-leader`
//! with the leader's address when it is known.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// Metadata key holding the errno of a namespace error.
pub const ERRNO_KEY: &str = "x-mobilus-errno";
/// Metadata key holding the stable name of a cluster error.
pub const ERROR_KEY: &str = "x-mobilus-error";
/// Metadata key holding the current leader's address.
pub const LEADER_KEY: &str = "x-mobilus-leader";
/// Request metadata marking a request already forwarded once by a follower.
pub const FORWARDED_KEY: &str = "x-mobilus-forwarded";
/// A metadata reply: a log index its answer is as new as (the metadata's
/// `server/applied.rs`).
pub const APPLIED_KEY: &str = "x-mobilus-applied";
/// A delegation holder's read at a member of its site: the index that member must have
/// applied before it answers from its own state.
pub const NEAR_APPLIED_KEY: &str = "x-mobilus-near-applied";

/// An errno, as Linux numbers it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

macro_rules! errnos {
    ($($name:ident => $text:literal),* $(,)?) => {
        impl Errno {
            $(#[allow(missing_docs)] pub const $name: Errno = Errno(libc::$name);)*
            /// The symbolic name, e.g. "ENOENT".
            pub fn name(self) -> &'static str {
                match self.0 {
                    $(libc::$name => stringify!($name),)*
                    _ => "EUNKNOWN",
                }
            }
            /// What it means, as strerror says it.
            pub fn description(self) -> &'static str {
                match self.0 {
                    $(libc::$name => $text,)*
                    _ => "unknown error",
                }
            }
        }
    };
}

errnos!(
    EPERM => "operation not permitted",
    ENOENT => "no such file or directory",
    EIO => "input/output error",
    E2BIG => "argument list too long",
    EBADF => "bad file descriptor",
    EACCES => "permission denied",
    EBUSY => "device or resource busy",
    EEXIST => "file exists",
    EXDEV => "invalid cross-device link",
    ENOTDIR => "not a directory",
    EISDIR => "is a directory",
    EINVAL => "invalid argument",
    EFBIG => "file too large",
    ENOSPC => "no space left on device",
    EROFS => "read-only file system",
    EMLINK => "too many links",
    ERANGE => "numerical result out of range",
    ENAMETOOLONG => "file name too long",
    ENOTEMPTY => "directory not empty",
    ELOOP => "too many levels of symbolic links",
    ENODATA => "no data available",
    ESTALE => "stale file handle",
    EOPNOTSUPP => "operation not supported",
    ENOSYS => "function not implemented",
    ETIMEDOUT => "connection timed out",
    ECANCELED => "operation canceled",
    EAGAIN => "resource temporarily unavailable",
    EINTR => "interrupted system call",
    ENOLCK => "no locks available",
    EOVERFLOW => "value too large for defined data type",
);

impl std::fmt::Debug for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name())
    }
}

/// A wire error, decoded from or encoded into a `tonic::Status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// A POSIX error from the namespace, with a message for people.
    Errno(Errno, String),
    /// This member is not the leader; the leader's address when known.
    NotLeader(Option<String>),
    /// No quorum, shutting down, or a timeout: try again later.
    Unavailable(String),
    /// The mutation was issued under an epoch that is no longer current.
    StaleEpoch(String),
    /// A write relied on chunks that garbage collection has condemned or deleted since
    /// the writer checked them: check again (re-upload) and retry.
    StaleChunks(String),
    /// The subtree is owned by another site: this site may read it, not change it.
    NotOwner(String),
    /// The owner site's lease has run out (its agent stopped renewing): no site may
    /// change the subtree until the lease is renewed or the subtree is taken over.
    LeaseExpired(String),
    /// A site that has never registered a data node.
    UnknownSite(String),
    /// Another mount session holds the subtree's delegation: nothing was done; the
    /// delegation is being recalled, so the same request succeeds once it is given back
    /// or its lease ends.
    Delegated(String),
    /// The subtree is frozen while a clone copies it: nothing was done; the same request
    /// succeeds once the clone is published or its freeze runs out (seconds).
    Frozen(String),
    /// The server already holds as much request data as it keeps in memory, for this
    /// connection or in all (`mobilus_tls::budget`): nothing was done; the same request
    /// succeeds once earlier ones finish.
    Busy(String),
    /// Any other status (bad request framing, oversized message, internal error).
    Other(Code, String),
}

const NOT_LEADER: &str = "not-leader";
const UNAVAILABLE: &str = "unavailable";
const STALE_EPOCH: &str = "stale-epoch";
const STALE_CHUNKS: &str = "stale-chunks";
const NOT_OWNER: &str = "not-owner";
const LEASE_EXPIRED: &str = "lease-expired";
const UNKNOWN_SITE: &str = "unknown-site";
const DELEGATED: &str = "delegated";
const FROZEN: &str = "frozen";
const BUSY: &str = "busy";

fn errno_code(errno: Errno) -> Code {
    match errno {
        Errno::ENOENT | Errno::ENODATA => Code::NotFound,
        Errno::EEXIST => Code::AlreadyExists,
        Errno::EINVAL | Errno::ENAMETOOLONG | Errno::E2BIG | Errno::ERANGE => Code::InvalidArgument,
        Errno::EPERM | Errno::EACCES | Errno::EROFS => Code::PermissionDenied,
        Errno::EFBIG | Errno::ENOSPC => Code::OutOfRange,
        Errno::EOPNOTSUPP | Errno::ENOSYS => Code::Unimplemented,
        Errno::EIO => Code::Internal,
        Errno::ETIMEDOUT => Code::DeadlineExceeded,
        _ => Code::FailedPrecondition,
    }
}

impl WireError {
    /// Encode as a gRPC status with the stable metadata.
    pub fn to_status(&self) -> Status {
        let (mut status, key, value) = match self {
            WireError::Errno(e, msg) => (
                Status::new(errno_code(*e), msg.clone()),
                ERRNO_KEY,
                e.0.to_string(),
            ),
            WireError::NotLeader(leader) => {
                let mut s = Status::unavailable(match leader {
                    Some(l) => format!("not the leader; the leader is at {l}"),
                    None => "not the leader; no leader is known".to_string(),
                });
                if let Some(v) = leader
                    .as_deref()
                    .and_then(|l| MetadataValue::try_from(l).ok())
                {
                    s.metadata_mut().insert(LEADER_KEY, v);
                }
                (s, ERROR_KEY, NOT_LEADER.to_string())
            }
            WireError::Unavailable(msg) => (
                Status::unavailable(msg.clone()),
                ERROR_KEY,
                UNAVAILABLE.to_string(),
            ),
            WireError::StaleEpoch(msg) => (
                Status::aborted(msg.clone()),
                ERROR_KEY,
                STALE_EPOCH.to_string(),
            ),
            WireError::StaleChunks(msg) => (
                Status::aborted(msg.clone()),
                ERROR_KEY,
                STALE_CHUNKS.to_string(),
            ),
            WireError::NotOwner(msg) => (
                Status::permission_denied(msg.clone()),
                ERROR_KEY,
                NOT_OWNER.to_string(),
            ),
            WireError::LeaseExpired(msg) => (
                Status::failed_precondition(msg.clone()),
                ERROR_KEY,
                LEASE_EXPIRED.to_string(),
            ),
            WireError::UnknownSite(msg) => (
                Status::not_found(msg.clone()),
                ERROR_KEY,
                UNKNOWN_SITE.to_string(),
            ),
            WireError::Delegated(msg) => (
                Status::unavailable(msg.clone()),
                ERROR_KEY,
                DELEGATED.to_string(),
            ),
            WireError::Frozen(msg) => (
                Status::unavailable(msg.clone()),
                ERROR_KEY,
                FROZEN.to_string(),
            ),
            WireError::Busy(msg) => (
                Status::resource_exhausted(msg.clone()),
                ERROR_KEY,
                BUSY.to_string(),
            ),
            WireError::Other(code, msg) => return Status::new(*code, msg.clone()),
        };
        if let Ok(v) = MetadataValue::try_from(value.as_str()) {
            status.metadata_mut().insert(key, v);
        }
        status
    }

    /// Decode a status received from a server.
    pub fn from_status(status: &Status) -> WireError {
        let md = status.metadata();
        let get = |k: &str| md.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
        if let Some(n) = get(ERRNO_KEY).and_then(|v| v.parse::<i32>().ok()) {
            return WireError::Errno(Errno(n), status.message().to_string());
        }
        match get(ERROR_KEY).as_deref() {
            Some(NOT_LEADER) => WireError::NotLeader(get(LEADER_KEY)),
            Some(UNAVAILABLE) => WireError::Unavailable(status.message().to_string()),
            Some(STALE_EPOCH) => WireError::StaleEpoch(status.message().to_string()),
            Some(STALE_CHUNKS) => WireError::StaleChunks(status.message().to_string()),
            Some(NOT_OWNER) => WireError::NotOwner(status.message().to_string()),
            Some(LEASE_EXPIRED) => WireError::LeaseExpired(status.message().to_string()),
            Some(UNKNOWN_SITE) => WireError::UnknownSite(status.message().to_string()),
            Some(DELEGATED) => WireError::Delegated(status.message().to_string()),
            Some(FROZEN) => WireError::Frozen(status.message().to_string()),
            Some(BUSY) => WireError::Busy(status.message().to_string()),
            _ => WireError::Other(status.code(), status.message().to_string()),
        }
    }
}

/// A batch item's refusal as it travels (`BatchResult.error`): the status its own call
/// would have answered, with its text metadata (the `x-mobilus-*` keys).
pub fn item_status(status: &Status) -> crate::pb::ItemStatus {
    let metadata = status
        .metadata()
        .iter()
        .filter_map(|kv| match kv {
            tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                Some((k.as_str().to_string(), v.to_str().ok()?.to_string()))
            }
            tonic::metadata::KeyAndValueRef::Binary(..) => None,
        })
        .collect();
    crate::pb::ItemStatus {
        code: status.code() as i32,
        message: status.message().to_string(),
        metadata,
    }
}

/// The status a batch item's refusal stands for ([`item_status`]'s inverse); metadata
/// that is not a valid header is dropped.
pub fn status_of_item(item: &crate::pb::ItemStatus) -> Status {
    let mut md = tonic::metadata::MetadataMap::new();
    for (k, v) in &item.metadata {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::AsciiMetadataKey::from_bytes(k.as_bytes()),
            MetadataValue::try_from(v.as_str()),
        ) {
            md.insert(k, v);
        }
    }
    Status::with_metadata(Code::from_i32(item.code), item.message.clone(), md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wire_error_round_trips_through_a_status() {
        let cases = [
            WireError::Errno(Errno::ENOTEMPTY, "x".into()),
            WireError::Errno(Errno::ENOENT, "y".into()),
            WireError::NotLeader(Some("127.0.0.1:7100".into())),
            WireError::NotLeader(None),
            WireError::Unavailable("no quorum".into()),
            WireError::StaleEpoch("epoch 3 < 4".into()),
            WireError::StaleChunks("gc generation 2 < 3".into()),
            WireError::NotOwner("owned by site-b".into()),
            WireError::LeaseExpired("site-a's lease ran out".into()),
            WireError::UnknownSite("site-z".into()),
            WireError::Delegated("subtree 7 is delegated to session 3".into()),
            WireError::Frozen("subtree 7 is being cloned".into()),
            WireError::Busy("this connection holds its share".into()),
        ];
        for case in cases {
            let back = WireError::from_status(&case.to_status());
            match (&case, &back) {
                (WireError::Errno(a, _), WireError::Errno(b, _)) => assert_eq!(a, b),
                _ => assert_eq!(case, back),
            }
            // And as a batch item's refusal.
            let status = case.to_status();
            let again = status_of_item(&item_status(&status));
            assert_eq!(again.code(), status.code());
            assert_eq!(again.message(), status.message());
            assert_eq!(WireError::from_status(&again), back);
        }
        assert_eq!(Errno::ENOTEMPTY.name(), "ENOTEMPTY");
        assert_eq!(errno_code(Errno::ENOENT), Code::NotFound);
    }
}
