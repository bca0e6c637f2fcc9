//! Client library for the Mobilus metadata API.
//!
//! [`MetaClient`] knows a list of members, finds the leader (following `NotLeader`
//! answers that name it), pools one HTTP/2 channel per member, and retries with backoff
//! while the cluster elects a leader or a member is down. Namespace errors come back as
//! errnos ([`ClientError::Errno`]) and are never retried.
//!
//! A write retried after an ambiguous failure (the connection broke after the request was
//! sent) may already have been applied; like NFS, a retried `mkdir` can then answer
//! EEXIST. Callers that must know (the Jepsen harness) treat such outcomes as indeterminate.

mod batch;
pub use batch::in_background;
mod clone;
mod cluster;
mod locks;
mod replication;
mod subtree;
pub use replication::{FeedProgress, ScanPage};

pub use mobilus_proto::fs::LockRequest;

/// A regular file made under a reserved inode number (see
/// [`MetaClient::create_reserved`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservedCreate {
    pub parent: InodeId,
    pub name: Vec<u8>,
    pub ino: InodeId,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// When it was answered (ns since the epoch, the answering client's clock).
    pub time_ns: i64,
    /// The session that reserved `ino`: the create is issued under it, whatever session
    /// the client has since (the number is that session's only).
    pub session: u64,
}

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mobilus_proto::convert::{attr_from_reply, fence_to_wire, setattr_to_wire};
use mobilus_proto::fs::{
    Attr, ChunkCheck, DirEntry, Extent, Fence, FileKind, InodeId, SetAttr, SliceWrite, StatFs,
};
use mobilus_proto::pb;
use mobilus_proto::pb::batch_item::Op as ItemOp;
use mobilus_proto::pb::batch_result::Outcome;
use mobilus_proto::pb::meta_client::MetaClient as PbMetaClient;
use mobilus_proto::status::{Errno, WireError, APPLIED_KEY, LEADER_KEY, NEAR_APPLIED_KEY};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// What a call can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// A namespace error; the message names it (e.g. "ENOENT: no such file or directory").
    #[error("{1}")]
    Errno(Errno, String),
    #[error("stale epoch: {0}")]
    StaleEpoch(String),
    /// GC may have removed chunks the write relied on: check them again and retry.
    #[error("{0}")]
    StaleChunks(String),
    /// The subtree is another site's: this client's site may read it, not change it.
    #[error("{0}")]
    NotOwner(String),
    /// The owner site's lease has expired: nobody may change the subtree until it is
    /// renewed or the subtree is taken over.
    #[error("{0}")]
    LeaseExpired(String),
    #[error("{0}")]
    UnknownSite(String),
    #[error("cannot reach the metadata service at {addrs}: {last}")]
    Unavailable { addrs: String, last: String },
    #[error("{code:?}: {message}")]
    Rpc { code: Code, message: String },
    #[error("bad address {0:?}: {1}")]
    BadAddress(String, String),
    #[error("invalid reply: {0}")]
    InvalidReply(String),
}

impl ClientError {
    /// The errno of a namespace error.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            ClientError::Errno(e, _) => Some(*e),
            _ => None,
        }
    }

    /// The errno a file system should return for this error (EIO when it is not one).
    pub fn to_errno(&self) -> Errno {
        match self {
            ClientError::Errno(e, _) => *e,
            ClientError::StaleEpoch(_)
            | ClientError::NotOwner(_)
            | ClientError::LeaseExpired(_) => Errno::EROFS,
            ClientError::UnknownSite(_) => Errno::ENOENT,
            ClientError::Rpc {
                code: Code::InvalidArgument,
                ..
            } => Errno::EINVAL,
            ClientError::Rpc {
                code: Code::OutOfRange | Code::ResourceExhausted,
                ..
            } => Errno::E2BIG,
            _ => Errno::EIO,
        }
    }
}

impl From<WireError> for ClientError {
    fn from(w: WireError) -> Self {
        match w {
            WireError::Errno(e, m) => ClientError::Errno(e, m),
            WireError::StaleEpoch(m) => ClientError::StaleEpoch(m),
            WireError::StaleChunks(m) => ClientError::StaleChunks(m),
            WireError::NotOwner(m) => ClientError::NotOwner(m),
            WireError::LeaseExpired(m) => ClientError::LeaseExpired(m),
            WireError::UnknownSite(m) => ClientError::UnknownSite(m),
            WireError::Delegated(m) | WireError::Frozen(m) | WireError::Busy(m) => {
                ClientError::Unavailable {
                    addrs: String::new(),
                    last: m,
                }
            }
            WireError::NotLeader(l) => ClientError::Unavailable {
                addrs: l.unwrap_or_default(),
                last: "not the leader".into(),
            },
            WireError::Unavailable(m) => ClientError::Unavailable {
                addrs: String::new(),
                last: m,
            },
            WireError::Other(code, message) => ClientError::Rpc { code, message },
        }
    }
}

/// Timeouts and the retry budget.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Give up retrying after this long.
    pub deadline: Duration,
    /// Longest one attempt may take.
    pub rpc_timeout: Duration,
    pub connect_timeout: Duration,
    /// Retry a call after a failure that leaves it unknown whether it took effect (the
    /// connection broke, no answer in time, "may still commit"). Off, such a failure is
    /// returned at once as `Unavailable`, so a definite answer (an errno) always comes
    /// from the only attempt that may have taken effect: what a Jepsen client needs.
    /// Redirects to the leader (nothing was done) are always followed.
    pub retry_ambiguous: bool,
    /// The site this client's mutations are issued for (a mount's): the metadata lets
    /// only a subtree's owner site change it. `None`: a tool of no site, which may change
    /// only the shared root subtree.
    pub site: Option<String>,
    /// A member at this client's site: the reads of a delegation's holder go there first
    /// ([`MetaClient::set_holder_reads`]).
    pub near: Option<String>,
    /// How to dial the members: by default, the process's TLS configuration.
    pub tls: mobilus_tls::client::ClientTls,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            deadline: Duration::from_secs(20),
            rpc_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            retry_ambiguous: true,
            site: None,
            near: None,
            tls: Default::default(),
        }
    }
}

struct Inner {
    endpoints: Vec<String>,
    leader: Mutex<Option<String>>,
    /// The member the last attempt that reached no answer went to: a forwarded reply
    /// naming it as the leader is not followed until it answers again (this client may
    /// not reach it, though the member that forwarded does).
    unreachable: Mutex<Option<String>>,
    /// Where the next call starts looking when no leader is known: the member that
    /// answered last, or the one after a member that just failed. Shared by all calls, so
    /// one unreachable member costs one attempt, not one per call.
    cursor: AtomicUsize,
    channels: Mutex<HashMap<String, Channel>>,
    opts: ClientOptions,
    /// See [`MetaClient::set_session`]; 0 is none.
    session: std::sync::atomic::AtomicU64,
    /// The owner of each subtree as the last lookup or getattr of one of its inodes saw
    /// it (shared by clones: see [`MetaClient::owner_seen`]).
    owners: Arc<Mutex<HashMap<mobilus_proto::fs::SubtreeId, String>>>,
    /// The largest log index a reply has said it is as new as (shared by clones).
    applied_seen: Arc<AtomicU64>,
    /// Which subtrees' reads may go to the nearby member ([`MetaClient::set_holder_reads`]).
    holder_reads: Arc<Mutex<Option<HolderReads>>>,
    /// The subtree of each inode as the last reply showing it said (shared by clones).
    subtrees: Arc<Mutex<HashMap<InodeId, mobilus_proto::fs::SubtreeId>>>,
    /// Calls other than reads under way (shared by clones): while one is, a holder read
    /// could answer from before it, so reads go the usual way.
    changes_in_flight: Arc<AtomicUsize>,
    /// Holder-only changes waiting to go together (`batch.rs`); started at first use.
    batcher: std::sync::OnceLock<batch::Batcher>,
}

/// Counts a call that may change something while it is under way.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn start(count: &Arc<AtomicUsize>) -> InFlight {
        count.fetch_add(1, Ordering::AcqRel);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Says whether this client holds a subtree's delegation now.
pub type HolderReads = Arc<dyn Fn(mobilus_proto::fs::SubtreeId) -> bool + Send + Sync>;

/// Most inodes whose subtree is remembered (past it, all are forgotten).
const MAX_SUBTREES_SEEN: usize = 65536;

/// A holder's read at the nearby member gives way to the usual read after this long (the
/// member waits up to 1 s to apply what the holder has seen).
const NEAR_TIMEOUT: Duration = Duration::from_millis(1500);

/// The log index a reply says it is as new as.
fn applied_of<R>(reply: &tonic::Response<R>) -> Option<u64> {
    reply
        .metadata()
        .get(APPLIED_KEY)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// `msg` as a request, asking the member to have applied `near` first if given.
fn near_request<M>(msg: M, near: Option<u64>) -> tonic::Request<M> {
    let mut req = tonic::Request::new(msg);
    if let Some(index) = near {
        req.metadata_mut().insert(
            NEAR_APPLIED_KEY,
            tonic::metadata::MetadataValue::from(index),
        );
    }
    req
}

/// A client of the metadata cluster. Cheap to clone; clones share channels.
#[derive(Clone)]
pub struct MetaClient {
    inner: Arc<Inner>,
}

/// Most subtree owners remembered (past it, all are forgotten).
const MAX_OWNERS_SEEN: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The messages of an error and its sources, joined.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut at = e.source();
    while let Some(s) = at {
        out.push_str(": ");
        out.push_str(&s.to_string());
        at = s.source();
    }
    out
}

/// Did the call fail before any connection existed (refused, or the connect timed out)?
/// Then the request was never sent.
fn never_connected(status: &Status) -> bool {
    let mut at = std::error::Error::source(status);
    while let Some(e) = at {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        if e.to_string().contains("tcp connect error") {
            return true;
        }
        at = e.source();
    }
    false
}

/// Strip an optional `http://` so that addresses compare equal however they were written.
fn normalize(addr: &str) -> String {
    addr.trim()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

impl MetaClient {
    /// A client for the members at `addrs` (`host:port`).
    pub fn new(addrs: &[String], opts: ClientOptions) -> Result<Self, ClientError> {
        let endpoints: Vec<String> = addrs
            .iter()
            .map(|a| normalize(a))
            .filter(|a| !a.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(ClientError::BadAddress(
                String::new(),
                "no address given".into(),
            ));
        }
        let mut opts = opts;
        opts.near = opts.near.as_deref().map(normalize);
        for e in endpoints.iter().chain(&opts.near) {
            Endpoint::from_shared(format!("http://{e}"))
                .map_err(|err| ClientError::BadAddress(e.clone(), err.to_string()))?;
        }
        Ok(MetaClient {
            inner: Arc::new(Inner {
                endpoints,
                leader: Mutex::new(None),
                unreachable: Mutex::new(None),
                cursor: AtomicUsize::new(0),
                channels: Mutex::new(HashMap::new()),
                opts,
                session: std::sync::atomic::AtomicU64::new(0),
                owners: Arc::default(),
                applied_seen: Arc::default(),
                holder_reads: Arc::default(),
                subtrees: Arc::default(),
                changes_in_flight: Arc::default(),
                batcher: std::sync::OnceLock::new(),
            }),
        })
    }

    /// A client with default options.
    pub fn connect(addrs: &[String]) -> Result<Self, ClientError> {
        Self::new(addrs, ClientOptions::default())
    }

    /// Who issues a mutation, and under which epoch, as the wire carries it.
    fn fence(&self, fence: Option<Fence>) -> Option<pb::Fence> {
        let session = self.inner.session.load(Ordering::Relaxed);
        fence_to_wire(
            self.inner.opts.site.as_deref(),
            (session != 0).then_some(session),
            fence,
        )
    }

    /// The mount session this client's mutations are issued under from now on (`None`:
    /// none). Shared by every clone: a mount's whole client speaks for its session, so
    /// the holder of a delegation is recognised whatever path a mutation takes.
    pub fn set_session(&self, session: Option<u64>) {
        self.inner
            .session
            .store(session.unwrap_or(0), Ordering::Relaxed);
    }

    /// A client of the same members with other timeouts (a move may wait for the
    /// recall of a delegation: up to its holder's lease when the holder is gone).
    pub fn with_timeouts(&self, deadline: Duration, rpc_timeout: Duration) -> MetaClient {
        let opts = ClientOptions {
            deadline,
            rpc_timeout,
            ..self.inner.opts.clone()
        };
        let client = MetaClient {
            inner: Arc::new(Inner {
                endpoints: self.inner.endpoints.clone(),
                leader: Mutex::new(lock(&self.inner.leader).clone()),
                unreachable: Mutex::new(lock(&self.inner.unreachable).clone()),
                cursor: AtomicUsize::new(self.cursor()),
                channels: Mutex::new(lock(&self.inner.channels).clone()),
                opts,
                session: std::sync::atomic::AtomicU64::new(0),
                owners: self.inner.owners.clone(),
                applied_seen: self.inner.applied_seen.clone(),
                holder_reads: self.inner.holder_reads.clone(),
                subtrees: self.inner.subtrees.clone(),
                changes_in_flight: self.inner.changes_in_flight.clone(),
                batcher: std::sync::OnceLock::new(),
            }),
        };
        client.set_session(self.session());
        client
    }

    /// The session reads are made for (0: none): a subtree another session holds with
    /// uncommitted closes is recalled before this client reads it.
    fn reader(&self) -> u64 {
        self.inner.session.load(Ordering::Relaxed)
    }

    fn session(&self) -> Option<u64> {
        let s = self.inner.session.load(Ordering::Relaxed);
        (s != 0).then_some(s)
    }

    /// The site this client speaks for.
    pub fn site(&self) -> Option<&str> {
        self.inner.opts.site.as_deref()
    }

    /// The members this client was given.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        let mut channels = lock(&self.inner.channels);
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| ClientError::BadAddress(addr.to_string(), e.to_string()))?
            .connect_timeout(self.inner.opts.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10));
        let ch =
            mobilus_tls::client::channel(endpoint, mobilus_tls::Role::Meta, &self.inner.opts.tls);
        channels.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    fn cursor(&self) -> usize {
        self.inner.cursor.load(Ordering::Relaxed) % self.inner.endpoints.len()
    }

    fn position(&self, addr: &str) -> Option<usize> {
        self.inner.endpoints.iter().position(|e| e == addr)
    }

    /// `addr` answered: start there next time no leader is known.
    fn remember(&self, addr: &str) {
        if let Some(i) = self.position(addr) {
            self.inner.cursor.store(i, Ordering::Relaxed);
        }
    }

    /// `addr` failed: start after it next time (a leader named by a redirect that is not
    /// one of our endpoints leaves the cursor alone).
    fn move_past(&self, addr: &str) {
        if let Some(i) = self.position(addr) {
            let n = self.inner.endpoints.len();
            let _ = self.inner.cursor.compare_exchange(
                i,
                (i + 1) % n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Run `f`, which may change something, against the leader, following redirects
    /// and retrying while the cluster is unavailable, within the deadline.
    async fn call<R, F, Fut>(
        &self,
        what: &'static str,
        f: F,
    ) -> Result<tonic::Response<R>, ClientError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let _changing = InFlight::start(&self.inner.changes_in_flight);
        self.call_leader(what, f).await
    }

    /// [`MetaClient::call`] for a read: not counted as a change under way.
    async fn call_leader<R, F, Fut>(
        &self,
        what: &'static str,
        f: F,
    ) -> Result<tonic::Response<R>, ClientError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let start = Instant::now();
        let mut attempt = 0u32;
        let mut last;
        loop {
            // Refused because another mount holds the subtree's delegation: nothing was
            // done, so asking again is safe for any caller.
            let mut delegated = false;
            let target = lock(&self.inner.leader)
                .clone()
                .unwrap_or_else(|| self.inner.endpoints[self.cursor()].clone());
            let ch = self.channel(&target)?;
            let outcome = tokio::time::timeout(self.inner.opts.rpc_timeout, f(ch)).await;
            if !matches!(outcome, Ok(Ok(_))) {
                self.move_past(&target);
            }
            let unanswered = match &outcome {
                Ok(Ok(_)) => false,
                Ok(Err(status)) => {
                    never_connected(status)
                        || std::error::Error::source(status).is_some()
                        || matches!(status.code(), Code::Unavailable | Code::Unknown)
                }
                Err(_) => true,
            };
            {
                let mut unreachable = lock(&self.inner.unreachable);
                if unanswered {
                    *unreachable = Some(target.clone());
                } else if unreachable.as_deref() == Some(target.as_str()) {
                    *unreachable = None;
                }
            }
            let retry_now = match outcome {
                Ok(Ok(v)) => {
                    self.remember(&target);
                    *lock(&self.inner.leader) = Some(target);
                    self.saw(&v);
                    return Ok(v);
                }
                // No connection could be made: nothing was sent, so trying another
                // member is safe even for a caller that wants no ambiguous retries.
                Ok(Err(status)) if never_connected(&status) => {
                    last = format!("{target}: {}", chain(&status));
                    *lock(&self.inner.leader) = None;
                    true
                }
                // A failure of the connection itself (a member died mid-call, a reset
                // stream), whatever code tonic gave it: try again, like Unavailable.
                Ok(Err(status)) if std::error::Error::source(&status).is_some() => {
                    last = format!("{target}: {}", chain(&status));
                    *lock(&self.inner.leader) = None;
                    false
                }
                Ok(Err(status)) => match WireError::from_status(&status) {
                    WireError::NotLeader(Some(leader)) => {
                        last = format!("{target} is not the leader");
                        let leader = normalize(&leader);
                        let known = leader != target;
                        *lock(&self.inner.leader) = known.then_some(leader);
                        known
                    }
                    WireError::NotLeader(None) | WireError::Unavailable(_) => {
                        last = format!("{target}: {}", status.message());
                        *lock(&self.inner.leader) = None;
                        false
                    }
                    // A freeze (a clone copying the subtree) lasts seconds, a full request
                    // budget as long as earlier requests; nothing was done, so asking
                    // again is as safe as after a delegation.
                    WireError::Delegated(msg) | WireError::Frozen(msg) | WireError::Busy(msg) => {
                        last = format!("{target}: {msg}");
                        delegated = true;
                        false
                    }
                    WireError::Other(Code::Unavailable | Code::Unknown, msg) => {
                        last = format!("{target}: {msg}");
                        *lock(&self.inner.leader) = None;
                        false
                    }
                    other => return Err(other.into()),
                },
                Err(_) => {
                    last = format!(
                        "{target}: no answer within {:?}",
                        self.inner.opts.rpc_timeout
                    );
                    *lock(&self.inner.leader) = None;
                    false
                }
            };
            if (!retry_now && !delegated && !self.inner.opts.retry_ambiguous)
                || start.elapsed() >= self.inner.opts.deadline
            {
                return Err(ClientError::Unavailable {
                    addrs: self.inner.endpoints.join(","),
                    last,
                });
            }
            attempt += 1;
            if !retry_now || attempt.is_multiple_of(4) {
                let backoff = Duration::from_millis(25u64 << attempt.min(5));
                tracing::debug!(what, attempt, %last, ?backoff, "retrying");
                tokio::time::sleep(backoff).await;
            }
        }
    }

    /// Keep the log index `reply` is as new as.
    fn saw<R>(&self, reply: &tonic::Response<R>) {
        if let Some(index) = applied_of(reply) {
            self.inner.applied_seen.fetch_max(index, Ordering::Relaxed);
        }
        // A follower forwarded this to the leader: go there directly next time, if it is
        // a member this client was given and has not just failed to reach.
        let leader = reply
            .metadata()
            .get(LEADER_KEY)
            .and_then(|v| v.to_str().ok())
            .map(normalize);
        let reachable = |l: &String| {
            self.inner.endpoints.contains(l)
                && lock(&self.inner.unreachable).as_deref() != Some(l.as_str())
        };
        if let Some(leader) = leader.filter(reachable) {
            *lock(&self.inner.leader) = Some(leader);
        }
    }

    /// Remember which subtree `attr`'s inode is in (for [`MetaClient::set_holder_reads`]).
    fn learn_subtree(&self, attr: &Attr) {
        let mut subtrees = lock(&self.inner.subtrees);
        if subtrees.len() >= MAX_SUBTREES_SEEN && !subtrees.contains_key(&attr.ino) {
            subtrees.clear();
        }
        subtrees.insert(attr.ino, attr.subtree);
    }

    /// The member this client sends its next request to, if it knows the leader (the
    /// last member that answered, or the leader one named).
    pub fn leader_hint(&self) -> Option<String> {
        lock(&self.inner.leader).clone()
    }

    /// The largest log index a reply to this client has been as new as.
    pub fn applied_seen(&self) -> u64 {
        self.inner.applied_seen.load(Ordering::Relaxed)
    }

    /// From now on, a read of an inode in a subtree `holds` says this client (its session)
    /// holds the delegation of (as far as the replies seen say which subtree the inode is
    /// in) goes first to the member at this client's site ([`ClientOptions::near`]). That
    /// member answers from its own state once it has applied every reply this client has
    /// seen, if its state shows the delegation held: no round to a distant leader. Shared
    /// by every clone.
    pub fn set_holder_reads(&self, holds: HolderReads) {
        *lock(&self.inner.holder_reads) = Some(holds);
    }

    /// A read of `ino` (`f` makes the request, with the index the member must have
    /// applied first, if any): a holder's read at the nearby member when it may be one
    /// ([`MetaClient::set_holder_reads`]), and the usual way when not or when that member
    /// cannot answer it (an errno from it is the answer).
    async fn read_call<R, F, Fut>(
        &self,
        what: &'static str,
        ino: InodeId,
        stale: bool,
        f: F,
    ) -> Result<tonic::Response<R>, ClientError>
    where
        F: Fn(Channel, Option<u64>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        if !stale {
            if let Some(answer) = self.holder_read(ino, &f).await {
                return answer;
            }
        }
        self.call_leader(what, |ch| f(ch, None)).await
    }

    async fn holder_read<R, F, Fut>(
        &self,
        ino: InodeId,
        f: &F,
    ) -> Option<Result<tonic::Response<R>, ClientError>>
    where
        F: Fn(Channel, Option<u64>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let near = self.inner.opts.near.as_deref()?;
        let seen = self.applied_seen();
        let holds = lock(&self.inner.holder_reads).clone()?;
        let subtree = lock(&self.inner.subtrees).get(&ino).copied()?;
        // A change of this client's under way may commit before the member has applied
        // it: reading there now could show the holder its subtree from before its own
        // change (an open of a file another of its processes is closing).
        let quiet = self.inner.changes_in_flight.load(Ordering::Acquire) == 0;
        if seen == 0 || self.reader() == 0 || !quiet || !holds(subtree) {
            return None;
        }
        let ch = self.channel(near).ok()?;
        match tokio::time::timeout(NEAR_TIMEOUT, f(ch, Some(seen))).await {
            Ok(Ok(reply)) => {
                self.saw(&reply);
                Some(Ok(reply))
            }
            Ok(Err(status)) => match WireError::from_status(&status) {
                e @ WireError::Errno(..) => Some(Err(e.into())),
                _ => None,
            },
            Err(_) => None,
        }
    }

    fn meta(ch: Channel) -> PbMetaClient<Channel> {
        PbMetaClient::new(ch)
            .max_decoding_message_size(mobilus_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(mobilus_proto::MAX_MESSAGE_BYTES)
    }

    async fn attr_call<F, Fut>(&self, what: &'static str, f: F) -> Result<Attr, ClientError>
    where
        F: Fn(PbMetaClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<pb::AttrReply>, Status>>,
    {
        let reply = self.call(what, |ch| f(Self::meta(ch))).await?;
        self.attr_reply(reply)
    }

    /// The attributes a reply carries, keeping the owner it names.
    fn attr_reply(&self, reply: tonic::Response<pb::AttrReply>) -> Result<Attr, ClientError> {
        let reply = reply.into_inner();
        let owner = reply.subtree_owner.clone();
        let attr = attr_from_reply(reply)?;
        self.learn_subtree(&attr);
        if !owner.is_empty() {
            let mut owners = lock(&self.inner.owners);
            if owners.len() >= MAX_OWNERS_SEEN && !owners.contains_key(&attr.subtree) {
                owners.clear();
            }
            owners.insert(attr.subtree, owner);
        }
        Ok(attr)
    }

    /// The site that owned `subtree` when a lookup or getattr last saw one of its inodes
    /// (a hint: it may have moved since).
    pub fn owner_seen(&self, subtree: mobilus_proto::fs::SubtreeId) -> Option<String> {
        lock(&self.inner.owners).get(&subtree).cloned()
    }

    pub async fn lookup(
        &self,
        parent: InodeId,
        name: &[u8],
        stale: bool,
    ) -> Result<Attr, ClientError> {
        let req = pb::LookupRequest {
            parent,
            name: name.to_vec(),
            stale,
            session: self.reader(),
        };
        let reply = self
            .read_call("lookup", parent, stale, |ch, near| {
                let req = near_request(req.clone(), near);
                async move { Self::meta(ch).lookup(req).await }
            })
            .await?;
        self.attr_reply(reply)
    }

    pub async fn getattr(&self, ino: InodeId, stale: bool) -> Result<Attr, ClientError> {
        let req = pb::GetAttrRequest {
            ino,
            stale,
            session: self.reader(),
        };
        let reply = self
            .read_call("getattr", ino, stale, |ch, near| {
                let req = near_request(req, near);
                async move { Self::meta(ch).get_attr(req).await }
            })
            .await?;
        self.attr_reply(reply)
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn mknod(
        &self,
        parent: InodeId,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        fence: Option<Fence>,
    ) -> Result<Attr, ClientError> {
        let req = pb::MknodRequest {
            parent,
            name: name.to_vec(),
            kind: pb::FileKind::from(kind) as i32,
            mode,
            uid,
            gid,
            rdev,
            fence: self.fence(fence),
            ino: 0,
            time_ns: 0,
        };
        self.attr_call("mknod", |mut c| {
            let req = req.clone();
            async move { c.mknod(req).await }
        })
        .await
    }

    pub async fn mkdir(
        &self,
        parent: InodeId,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
        fence: Option<Fence>,
    ) -> Result<Attr, ClientError> {
        let req = pb::MkdirRequest {
            parent,
            name: name.to_vec(),
            mode,
            uid,
            gid,
            fence: self.fence(fence),
        };
        self.attr_call("mkdir", |mut c| {
            let req = req.clone();
            async move { c.mkdir(req).await }
        })
        .await
    }

    pub async fn symlink(
        &self,
        parent: InodeId,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
        fence: Option<Fence>,
    ) -> Result<Attr, ClientError> {
        let req = pb::SymlinkRequest {
            parent,
            name: name.to_vec(),
            target: target.to_vec(),
            uid,
            gid,
            fence: self.fence(fence),
        };
        self.attr_call("symlink", |mut c| {
            let req = req.clone();
            async move { c.symlink(req).await }
        })
        .await
    }

    pub async fn link(
        &self,
        ino: InodeId,
        new_parent: InodeId,
        new_name: &[u8],
        fence: Option<Fence>,
    ) -> Result<Attr, ClientError> {
        let req = pb::LinkRequest {
            ino,
            new_parent,
            new_name: new_name.to_vec(),
            fence: self.fence(fence),
        };
        self.attr_call("link", |mut c| {
            let req = req.clone();
            async move { c.link(req).await }
        })
        .await
    }

    /// Remove a name; returns the inode and its remaining link count.
    pub async fn unlink(
        &self,
        parent: InodeId,
        name: &[u8],
        fence: Option<Fence>,
    ) -> Result<(InodeId, u32), ClientError> {
        self.unlink_open(parent, name, fence, false).await
    }

    /// Unlink a file the caller still has open (`keep_open`): if it was the last link,
    /// the inode lives on as an orphan until [`MetaClient::release_orphan`].
    pub async fn unlink_open(
        &self,
        parent: InodeId,
        name: &[u8],
        fence: Option<Fence>,
        keep_open: bool,
    ) -> Result<(InodeId, u32), ClientError> {
        let r = self
            .send_unlink(pb::UnlinkRequest {
                parent,
                name: name.to_vec(),
                fence: self.fence(fence),
                keep_open,
            })
            .await?;
        Ok((r.ino, r.nlink))
    }

    /// Unlink `name` from `parent` only while this client's session still holds the
    /// subtree's delegation (an unlink its holder answered before committing it), else
    /// ESTALE.
    pub async fn unlink_holder_only(
        &self,
        parent: InodeId,
        name: &[u8],
    ) -> Result<u32, ClientError> {
        let req = pb::UnlinkRequest {
            parent,
            name: name.to_vec(),
            fence: self.fence(None).map(|f| pb::Fence {
                holder_only: true,
                ..f
            }),
            keep_open: false,
        };
        match self.batched(ItemOp::Unlink(req)).await? {
            Outcome::Unlink(r) => Ok(r.nlink),
            other => Err(ClientError::InvalidReply(format!(
                "an unlink's reply expected, got {other:?}"
            ))),
        }
    }

    async fn send_unlink(&self, req: pb::UnlinkRequest) -> Result<pb::UnlinkReply, ClientError> {
        let r = self
            .call("unlink", |ch| {
                let req = req.clone();
                async move { Self::meta(ch).unlink(req).await }
            })
            .await?;
        Ok(r.into_inner())
    }

    /// The last handle of an orphan closed: delete it unless it was linked again.
    pub async fn release_orphan(&self, ino: InodeId) -> Result<(), ClientError> {
        let req = pb::ReleaseOrphanRequest { ino };
        self.call("release_orphan", |ch| async move {
            Self::meta(ch).release_orphan(req).await
        })
        .await?;
        Ok(())
    }

    pub async fn rmdir(
        &self,
        parent: InodeId,
        name: &[u8],
        fence: Option<Fence>,
    ) -> Result<(), ClientError> {
        let req = pb::RmdirRequest {
            parent,
            name: name.to_vec(),
            fence: self.fence(fence),
        };
        self.call("rmdir", |ch| {
            let req = req.clone();
            async move { Self::meta(ch).rmdir(req).await }
        })
        .await?;
        Ok(())
    }

    pub async fn rename(
        &self,
        parent: InodeId,
        name: &[u8],
        new_parent: InodeId,
        new_name: &[u8],
        flags: u32,
        fence: Option<Fence>,
    ) -> Result<(), ClientError> {
        let req = pb::RenameRequest {
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: new_name.to_vec(),
            flags,
            fence: self.fence(fence),
        };
        self.call("rename", |ch| {
            let req = req.clone();
            async move { Self::meta(ch).rename(req).await }
        })
        .await?;
        Ok(())
    }

    pub async fn setattr(
        &self,
        ino: InodeId,
        set: &SetAttr,
        fence: Option<Fence>,
    ) -> Result<Attr, ClientError> {
        let req = setattr_to_wire(ino, set, self.fence(fence));
        self.attr_call("setattr", |mut c| {
            let req = req.clone();
            async move { c.set_attr(req).await }
        })
        .await
    }

    pub async fn readlink(&self, ino: InodeId, stale: bool) -> Result<Vec<u8>, ClientError> {
        let req = pb::ReadLinkRequest {
            ino,
            stale,
            session: self.reader(),
        };
        let r = self
            .read_call("readlink", ino, stale, |ch, near| {
                let req = near_request(req, near);
                async move { Self::meta(ch).read_link(req).await }
            })
            .await?;
        Ok(r.into_inner().target)
    }

    /// One page of a directory after `cookie`; returns the entries and whether the
    /// listing is complete.
    pub async fn readdir(
        &self,
        ino: InodeId,
        cookie: u64,
        limit: u32,
        plus: bool,
        stale: bool,
    ) -> Result<(Vec<DirEntry>, bool), ClientError> {
        let req = pb::ReadDirRequest {
            ino,
            cookie,
            limit,
            plus,
            stale,
            session: self.reader(),
        };
        let r = self
            .read_call("readdir", ino, stale, |ch, near| {
                let req = near_request(req, near);
                async move { Self::meta(ch).read_dir(req).await }
            })
            .await?
            .into_inner();
        let entries = r
            .entries
            .into_iter()
            .map(DirEntry::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        for a in entries.iter().filter_map(|e| e.attr.as_ref()) {
            self.learn_subtree(a);
        }
        Ok((entries, r.eof))
    }

    /// Every entry of a directory, page by page.
    pub async fn readdir_all(
        &self,
        ino: InodeId,
        stale: bool,
    ) -> Result<Vec<DirEntry>, ClientError> {
        Ok(self.readdir_upto(ino, false, stale, usize::MAX).await?.0)
    }

    /// The entries of a directory from its start, page by page (with their attributes if
    /// `plus`), until its end or until more than `max` are held: the entries, and whether
    /// they are all of it.
    pub async fn readdir_upto(
        &self,
        ino: InodeId,
        plus: bool,
        stale: bool,
        max: usize,
    ) -> Result<(Vec<DirEntry>, bool), ClientError> {
        let mut all = Vec::new();
        let mut cookie = 0;
        loop {
            let (page, eof) = self.readdir(ino, cookie, 0, plus, stale).await?;
            if let Some(last) = page.last() {
                cookie = last.cookie;
            }
            all.extend(page);
            if eof {
                return Ok((all, true));
            }
            if all.len() > max {
                return Ok((all, false));
            }
        }
    }

    pub async fn setxattr(
        &self,
        ino: InodeId,
        name: &[u8],
        value: &[u8],
        flags: u32,
        fence: Option<Fence>,
    ) -> Result<(), ClientError> {
        let req = pb::SetXattrRequest {
            ino,
            name: name.to_vec(),
            value: value.to_vec(),
            flags,
            fence: self.fence(fence),
        };
        self.call("setxattr", |ch| {
            let req = req.clone();
            async move { Self::meta(ch).set_xattr(req).await }
        })
        .await?;
        Ok(())
    }

    /// Set xattr `name` to `value` if it is now `expected` (`None`: absent); a
    /// mismatch is `Errno(ECANCELED)` and changes nothing.
    pub async fn cas_xattr(
        &self,
        ino: InodeId,
        name: &[u8],
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<(), ClientError> {
        let req = pb::CasXattrRequest {
            ino,
            name: name.to_vec(),
            expected: expected.map(<[u8]>::to_vec).unwrap_or_default(),
            expect_absent: expected.is_none(),
            value: value.to_vec(),
            fence: self.fence(None),
        };
        self.call("cas_xattr", |ch| {
            let req = req.clone();
            async move { Self::meta(ch).cas_xattr(req).await }
        })
        .await?;
        Ok(())
    }

    pub async fn getxattr(
        &self,
        ino: InodeId,
        name: &[u8],
        stale: bool,
    ) -> Result<Vec<u8>, ClientError> {
        let req = pb::GetXattrRequest {
            ino,
            name: name.to_vec(),
            stale,
            session: self.reader(),
        };
        let r = self
            .read_call("getxattr", ino, stale, |ch, near| {
                let req = near_request(req.clone(), near);
                async move { Self::meta(ch).get_xattr(req).await }
            })
            .await?;
        Ok(r.into_inner().value)
    }

    pub async fn listxattr(&self, ino: InodeId, stale: bool) -> Result<Vec<Vec<u8>>, ClientError> {
        let req = pb::ListXattrRequest {
            ino,
            stale,
            session: self.reader(),
        };
        let r = self
            .read_call("listxattr", ino, stale, |ch, near| {
                let req = near_request(req, near);
                async move { Self::meta(ch).list_xattr(req).await }
            })
            .await?;
        Ok(r.into_inner().names)
    }

    pub async fn removexattr(
        &self,
        ino: InodeId,
        name: &[u8],
        fence: Option<Fence>,
    ) -> Result<(), ClientError> {
        let req = pb::RemoveXattrRequest {
            ino,
            name: name.to_vec(),
            fence: self.fence(fence),
        };
        self.call("removexattr", |ch| {
            let req = req.clone();
            async move { Self::meta(ch).remove_xattr(req).await }
        })
        .await?;
        Ok(())
    }

    pub async fn statfs(&self, stale: bool) -> Result<StatFs, ClientError> {
        let req = pb::StatFsRequest { stale };
        let r = self
            .call(
                "statfs",
                |ch| async move { Self::meta(ch).stat_fs(req).await },
            )
            .await?;
        Ok(r.into_inner().into())
    }

    /// Commit the slices of a write in one operation; `holder_only`: only while this
    /// client's session still holds the subtree's delegation (a write-back), else ESTALE.
    pub async fn write(
        &self,
        ino: InodeId,
        slices: &[SliceWrite],
        fence: Option<Fence>,
        checks: &[ChunkCheck],
        holder_only: bool,
    ) -> Result<Attr, ClientError> {
        let req = pb::WriteRequest {
            ino,
            slices: slices.iter().map(Into::into).collect(),
            fence: self.fence(fence).map(|f| pb::Fence { holder_only, ..f }),
            checks: checks.iter().map(Into::into).collect(),
            create: None,
        };
        if holder_only {
            return self.batched_attr(ItemOp::Write(req)).await;
        }
        self.attr_call("write", |mut c| {
            let req = req.clone();
            async move { c.write(req).await }
        })
        .await
    }

    /// A holder-only change that answers attributes, sent with others waiting
    /// (`batch.rs`).
    async fn batched_attr(&self, op: ItemOp) -> Result<Attr, ClientError> {
        match self.batched(op).await? {
            Outcome::Attr(a) => self.attr_reply(tonic::Response::new(a)),
            other => Err(ClientError::InvalidReply(format!(
                "attributes expected, got {other:?}"
            ))),
        }
    }

    /// Make the regular file `create` describes, under the number this client's session
    /// reserved for it ([`MetaClient::reserve_inodes`]); with `write` (its slices and
    /// chunk check) committed in the same command, if given. A retry of a command that
    /// committed answers what it made. `holder_only` as for [`MetaClient::write`].
    pub async fn create_reserved(
        &self,
        create: &ReservedCreate,
        write: Option<(&[SliceWrite], &[ChunkCheck])>,
        holder_only: bool,
    ) -> Result<Attr, ClientError> {
        let fence = fence_to_wire(self.inner.opts.site.as_deref(), Some(create.session), None)
            .map(|f| pb::Fence { holder_only, ..f });
        let mknod = pb::MknodRequest {
            parent: create.parent,
            name: create.name.clone(),
            kind: pb::FileKind::from(FileKind::Regular) as i32,
            mode: create.mode,
            uid: create.uid,
            gid: create.gid,
            rdev: 0,
            fence: fence.clone(),
            ino: create.ino,
            time_ns: create.time_ns,
        };
        match write {
            None if holder_only => self.batched_attr(ItemOp::Create(mknod)).await,
            None => {
                self.attr_call("mknod", |mut c| {
                    let req = mknod.clone();
                    async move { c.mknod(req).await }
                })
                .await
            }
            Some((slices, checks)) => {
                let req = pb::WriteRequest {
                    ino: create.ino,
                    slices: slices.iter().map(Into::into).collect(),
                    fence,
                    checks: checks.iter().map(Into::into).collect(),
                    create: Some(mknod),
                };
                if holder_only {
                    return self.batched_attr(ItemOp::Write(req)).await;
                }
                self.attr_call("write", |mut c| {
                    let req = req.clone();
                    async move { c.write(req).await }
                })
                .await
            }
        }
    }

    /// Reserve a block of inode numbers for `session`'s creates: `(first, count)`.
    pub async fn reserve_inodes(&self, session: u64) -> Result<(InodeId, u32), ClientError> {
        let req = pb::SessionRequest { session };
        let r = self
            .call("reserve_inodes", |ch| async move {
                Self::meta(ch).reserve_inodes(req).await
            })
            .await?
            .into_inner();
        Ok((r.first, r.count))
    }

    /// The merged slice map of a range, and the file size.
    pub async fn read_slices(
        &self,
        ino: InodeId,
        offset: u64,
        len: u64,
        stale: bool,
    ) -> Result<(Vec<Extent>, u64), ClientError> {
        let (extents, attr) = self.read_slices_attr(ino, offset, len, stale).await?;
        Ok((extents, attr.size))
    }

    /// The merged slice map of a range, and the file's attributes as of the same state
    /// (one round for what an open needs).
    pub async fn read_slices_attr(
        &self,
        ino: InodeId,
        offset: u64,
        len: u64,
        stale: bool,
    ) -> Result<(Vec<Extent>, Attr), ClientError> {
        let req = pb::ReadSlicesRequest {
            ino,
            offset,
            length: len,
            stale,
            session: self.reader(),
        };
        let r = self
            .read_call("read_slices", ino, stale, |ch, near| {
                let req = near_request(req, near);
                async move { Self::meta(ch).read_slices(req).await }
            })
            .await?
            .into_inner();
        let extents = r
            .extents
            .into_iter()
            .map(Extent::try_from)
            .collect::<Result<_, _>>()?;
        let attr = attr_from_reply(pb::AttrReply {
            attr: r.attr,
            subtree_owner: String::new(),
        })?;
        self.learn_subtree(&attr);
        Ok((extents, attr))
    }
}
