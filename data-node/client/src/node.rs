//! [`DataClient`]: typed calls to one data node's `Chunks` service.

use mobilus_proto::datapb::chunks_client::ChunksClient;
use mobilus_proto::datapb::{self as pb, put_request::Part};
use mobilus_proto::fs::ChunkHash;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

/// How long dialling a node may take before the call fails.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// Concurrent put and get streams a node serves on one connection; a client keeps its
/// calls to one node within it and queues the rest. Past it the node refuses the stream
/// (HTTP/2 REFUSED_STREAM), which a caller sees as an error: a mount's write-backs,
/// which store their chunks in bursts of a round, met it.
pub const MAX_STREAMS: u32 = 64;
/// The largest HTTP/2 frame either side of a data node's connection receives (the
/// protocol's default is 16 KiB). With 16 KiB frames a node wrote a 1 GiB read to its
/// socket in about 65,000 `writev`s (one TLS record each).
pub const MAX_FRAME_SIZE: u32 = 1 << 20;
/// Put frames: the server accepts messages up to 2 MiB.
const FRAME: usize = 1 << 20;
/// A put refused for want of room waits this long, then twice as long each time, up to
/// [`BUSY_LAST_WAIT`] (about 3 s in all).
const BUSY_FIRST_WAIT: std::time::Duration = std::time::Duration::from_millis(25);
const BUSY_LAST_WAIT: std::time::Duration = std::time::Duration::from_millis(1600);

#[derive(Debug, thiserror::Error)]
pub enum DataClientError {
    #[error("chunk not found on {0}")]
    NotFound(String),
    #[error("data node {addr}: {status}")]
    Rpc { addr: String, status: tonic::Status },
    #[error("bad data node address {0}")]
    BadAddress(String),
}

impl DataClientError {
    /// Does the error say "no such chunk here" (try elsewhere) rather than a failure?
    pub fn is_missing(&self) -> bool {
        matches!(self, DataClientError::NotFound(_))
            || matches!(self, DataClientError::Rpc { status, .. } if status.code() == Code::DataLoss)
    }
}

/// What a node answered a put.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutAnswer {
    /// The node had the chunk already (nothing was written).
    pub existed: bool,
    /// Its GC generation, read before it looked (absent from a node that predates it).
    pub gc_gen: Option<u64>,
}

#[derive(Clone)]
pub struct DataClient {
    addr: String,
    inner: ChunksClient<Channel>,
}

impl DataClient {
    /// A client of the node at `addr`, dialled with the process's TLS configuration.
    pub fn new(addr: &str) -> Result<Self, DataClientError> {
        Self::with_tls(addr, &mobilus_tls::client::ClientTls::ProcessDefault)
    }

    /// A client of the node at `addr` that dials as `tls` says.
    pub fn with_tls(
        addr: &str,
        tls: &mobilus_tls::client::ClientTls,
    ) -> Result<Self, DataClientError> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|_| DataClientError::BadAddress(addr.to_string()))?
            .tcp_nodelay(true)
            .max_frame_size(Some(MAX_FRAME_SIZE))
            // A node that is down but still listed must cost a failed call, not a hang.
            .connect_timeout(CONNECT_TIMEOUT)
            .concurrency_limit(MAX_STREAMS as usize);
        let ch = mobilus_tls::client::channel(endpoint, mobilus_tls::Role::Data, tls);
        Ok(DataClient {
            addr: addr.to_string(),
            inner: ChunksClient::new(ch),
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn err(&self, status: tonic::Status) -> DataClientError {
        if status.code() == Code::NotFound {
            DataClientError::NotFound(self.addr.clone())
        } else {
            DataClientError::Rpc {
                addr: self.addr.clone(),
                status,
            }
        }
    }

    /// Store a chunk, streamed in frames, held (a cached copy there becomes held).
    /// Returns whether the node already had it.
    pub async fn put(
        &self,
        hash: &ChunkHash,
        data: &[u8],
        from_remote: bool,
    ) -> Result<bool, DataClientError> {
        Ok(self.put_with(hash, data, from_remote, false).await?.existed)
    }

    /// [`DataClient::put`] for a write that will rely on the chunk being there, as on a
    /// [`DataClient::has_keeping`] answer: the reply carries the node's GC generation.
    pub async fn put_keeping(
        &self,
        hash: &ChunkHash,
        data: &[u8],
    ) -> Result<PutAnswer, DataClientError> {
        self.put_with(hash, data, false, false).await
    }

    /// Store a chunk fetched from another site as a cache entry only: the node may evict
    /// it under space pressure.
    pub async fn put_cached(&self, hash: &ChunkHash, data: &[u8]) -> Result<bool, DataClientError> {
        Ok(self.put_with(hash, data, true, true).await?.existed)
    }

    /// Store a chunk here and, through this node, at `to`, a data node of another site
    /// (a mount's synchronous placement); the answer is `to`'s.
    pub async fn put_forwarded(
        &self,
        hash: &ChunkHash,
        data: &[u8],
        to: &str,
    ) -> Result<PutAnswer, DataClientError> {
        self.put_with_header(
            data,
            pb::PutHeader {
                hash: hash.0.to_vec(),
                size: data.len() as u64,
                forward_to: to.to_string(),
                ..Default::default()
            },
        )
        .await
    }

    async fn put_with(
        &self,
        hash: &ChunkHash,
        data: &[u8],
        from_remote: bool,
        cache: bool,
    ) -> Result<PutAnswer, DataClientError> {
        let header = pb::PutHeader {
            hash: hash.0.to_vec(),
            size: data.len() as u64,
            from_remote,
            cache,
            forward_to: String::new(),
        };
        self.put_with_header(data, header).await
    }

    async fn put_with_header(
        &self,
        data: &[u8],
        header: pb::PutHeader,
    ) -> Result<PutAnswer, DataClientError> {
        // A node with no room for more puts in memory refuses at once rather than queue
        // them (queued streams would hold the connection's flow-control window): wait
        // and try again, a few times, before failing.
        let mut wait = BUSY_FIRST_WAIT;
        loop {
            let mut msgs = vec![pb::PutRequest {
                part: Some(Part::Header(header.clone())),
            }];
            msgs.extend(data.chunks(FRAME).map(|f| pb::PutRequest {
                part: Some(Part::Data(f.to_vec())),
            }));
            let mut c = self.inner.clone();
            match c.put(tokio_stream::iter(msgs)).await {
                Ok(r) => {
                    let r = r.into_inner();
                    return Ok(PutAnswer {
                        existed: r.existed,
                        gc_gen: r.gc_gen,
                    });
                }
                Err(s) if s.code() == Code::ResourceExhausted && wait <= BUSY_LAST_WAIT => {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(s) => return Err(self.err(s)),
            }
        }
    }

    /// Bytes of a chunk (`len` 0: to its end), for a read an application waits for.
    pub async fn get(
        &self,
        hash: &ChunkHash,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, DataClientError> {
        self.get_as(hash, offset, len, pb::Priority::Foreground)
            .await
    }

    /// [`DataClient::get`], served in `priority`'s turn (replication: background).
    pub async fn get_as(
        &self,
        hash: &ChunkHash,
        offset: u64,
        len: u64,
        priority: pb::Priority,
    ) -> Result<Vec<u8>, DataClientError> {
        let mut c = self.inner.clone();
        let req = pb::GetRequest {
            hash: hash.0.to_vec(),
            offset,
            length: len,
            priority: priority.into(),
        };
        let mut stream = c.get(req).await.map_err(|s| self.err(s))?.into_inner();
        let mut out = Vec::new();
        while let Some(frame) = stream.message().await.map_err(|s| self.err(s))? {
            out.extend_from_slice(&frame.data);
        }
        Ok(out)
    }

    /// The verified-block range read (see `mobilus_proto::blocks`): the blocks covering
    /// `[offset, offset+len)`, and the chunk's outboard if `outboard`. The caller checks
    /// them.
    pub async fn read_blocks(
        &self,
        hash: &ChunkHash,
        offset: u64,
        len: u64,
        outboard: bool,
    ) -> Result<pb::ReadBlocksReply, DataClientError> {
        let mut c = self.inner.clone();
        let req = pb::ReadBlocksRequest {
            hash: hash.0.to_vec(),
            offset,
            length: len,
            outboard,
        };
        Ok(c.read_blocks(req)
            .await
            .map_err(|s| self.err(s))?
            .into_inner())
    }

    /// Which of `hashes` the node holds, in one call, and the node's GC generation when
    /// it answered (a write relying on the answer carries it).
    pub async fn has(&self, hashes: &[ChunkHash]) -> Result<(u64, Vec<bool>), DataClientError> {
        self.has_with(hashes, false, false).await
    }

    /// Which of `hashes` the node holds for good: a copy kept only as a cache (which it
    /// may evict) is not counted. For deciding whether another copy is the last one.
    pub async fn has_held(&self, hashes: &[ChunkHash]) -> Result<Vec<bool>, DataClientError> {
        self.has_with(hashes, false, true)
            .await
            .map(|(_, present)| present)
    }

    /// [`DataClient::has`] for a caller that will rely on the present chunks (a write's
    /// dedup, a follower): the node makes any cached one among them held first.
    pub async fn has_keeping(
        &self,
        hashes: &[ChunkHash],
    ) -> Result<(u64, Vec<bool>), DataClientError> {
        self.has_with(hashes, true, false).await
    }

    async fn has_with(
        &self,
        hashes: &[ChunkHash],
        keep: bool,
        held_only: bool,
    ) -> Result<(u64, Vec<bool>), DataClientError> {
        let mut c = self.inner.clone();
        let req = pb::HasRequest {
            hashes: hashes.iter().map(|h| h.0.to_vec()).collect(),
            keep,
            held_only,
        };
        let r = c.has(req).await.map_err(|s| self.err(s))?.into_inner();
        if r.present.len() != hashes.len() {
            return Err(DataClientError::Rpc {
                addr: self.addr.clone(),
                status: tonic::Status::internal(format!(
                    "{} answers for {} hashes",
                    r.present.len(),
                    hashes.len()
                )),
            });
        }
        Ok((r.gc_gen, r.present))
    }

    /// Run a garbage-collection round on the node now.
    pub async fn gc(&self, dry_run: bool) -> Result<pb::GcReply, DataClientError> {
        let mut c = self.inner.clone();
        Ok(c.gc(pb::GcRequest { dry_run })
            .await
            .map_err(|s| self.err(s))?
            .into_inner())
    }

    /// Whether each of `hashes` is here intact, missing or corrupt (each is read back
    /// and hashed; a corrupt one is quarantined).
    pub async fn verify(
        &self,
        hashes: &[ChunkHash],
    ) -> Result<Vec<pb::ChunkState>, DataClientError> {
        let mut c = self.inner.clone();
        let req = pb::VerifyRequest {
            hashes: hashes.iter().map(|h| h.0.to_vec()).collect(),
        };
        let r = c.verify(req).await.map_err(|s| self.err(s))?.into_inner();
        if r.states.len() != hashes.len() {
            return Err(DataClientError::Rpc {
                addr: self.addr.clone(),
                status: tonic::Status::internal(format!(
                    "{} states for {} chunks",
                    r.states.len(),
                    hashes.len()
                )),
            });
        }
        Ok(r.states
            .into_iter()
            .map(|s| pb::ChunkState::try_from(s).unwrap_or(pb::ChunkState::ChunkMissing))
            .collect())
    }

    pub async fn stats(&self) -> Result<pb::StatsReply, DataClientError> {
        let mut c = self.inner.clone();
        Ok(c.stats(pb::StatsRequest {})
            .await
            .map_err(|s| self.err(s))?
            .into_inner())
    }
}
