//! The gRPC `Chunks` service: a thin adapter over [`ChunkStore`]. Store calls run on the
//! blocking pool (they fsync).

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
// Concurrent put and get streams per connection (clients keep within it).
use mobilus_data_client::node::MAX_STREAMS;
use mobilus_proto::datapb::chunks_server::Chunks;
use mobilus_proto::datapb::{self as pb, put_request::Part};
use mobilus_proto::fs::ChunkHash;
use mobilus_proto::MAX_CHUNK_BYTES;
use tonic::{Request, Response, Status, Streaming};

use crate::error::DataError;
use crate::gc::Collector;
use crate::store::{ChunkStore, Verified};

/// Frames of a get reply.
const FRAME: usize = 1 << 20;
/// Most hashes one `has` call may ask about.
const MAX_HAS: usize = 100_000;
/// Most chunks one `verify` call reads back (up to 4 MiB each).
const MAX_VERIFY: usize = 1024;
/// Bytes of puts held in memory at once, over every connection. A put takes room after
/// its header, first from its connection's share
/// (`mobilus_tls::server::BUFFER_BYTES_PER_CONNECTION`), then from this; without room it
/// is refused at once with ResourceExhausted (the client waits and retries). It never
/// queues: a queued stream's unread frames would hold the connection's HTTP/2 window,
/// and the puts that have room could then receive nothing. So one connection cannot take
/// more than its share, and memory stays bounded however many misbehave.
pub const PUT_BUFFER_BYTES: usize = 1 << 30;
/// A put that sends no frame for this long is abandoned, and its room freed.
const PUT_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

pub struct ChunksSvc {
    pub store: Arc<ChunkStore>,
    /// `None` when the node runs without a metadata service (then `gc` is refused).
    pub gc: Option<Arc<Collector>>,
    /// Faults before prefetches before replication.
    pub priorities: Arc<crate::priority::Priorities>,
    /// The node's site: a mount of another site may not store chunks here.
    pub site: Option<String>,
    /// Room for puts' bytes in memory ([`PUT_BUFFER_BYTES`]).
    pub put_buffers: Arc<tokio::sync::Semaphore>,
    /// Sends puts on to other sites' nodes (`PutHeader::forward_to`); `None` without a
    /// metadata service.
    pub forward: Option<Arc<Forwarder>>,
}

/// How a node sends a put on to a data node of another site, for a mount's synchronous
/// placement (a mount stores chunks at its own site's nodes only; its site's node, a data
/// node, may store anywhere). Only registered nodes of other sites are sent to.
pub struct Forwarder {
    meta: mobilus_meta_client::MetaClient,
    healthy_within: std::time::Duration,
    nodes: tokio::sync::OnceCell<Arc<mobilus_data_client::DataNodes>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Forwarder")
    }
}

impl Forwarder {
    pub fn new(
        meta: mobilus_meta_client::MetaClient,
        healthy_within: std::time::Duration,
    ) -> Forwarder {
        Forwarder {
            meta,
            healthy_within,
            nodes: tokio::sync::OnceCell::new(),
        }
    }

    /// The connection to `addr`, if it is a registered data node of a site other than
    /// `own` (the registry is fetched again once before refusing).
    async fn to(
        &self,
        own: Option<&str>,
        addr: &str,
    ) -> Result<mobilus_data_client::DataClient, Status> {
        let registry_err = |e: mobilus_meta_client::ClientError| {
            Status::unavailable(format!("the data-node registry: {e}"))
        };
        let nodes = self
            .nodes
            .get_or_try_init(|| {
                mobilus_data_client::DataNodes::connect(self.meta.clone(), self.healthy_within)
            })
            .await
            .map_err(registry_err)?;
        let elsewhere = |r: &mobilus_data_client::Registry| {
            r.sites()
                .filter(|s| Some(*s) != own)
                .any(|s| r.nodes(s).iter().any(|n| n.addr == addr))
        };
        // The registry as last fetched (refreshed in the background every few seconds):
        // an unknown address costs the metadata service nothing.
        if !elsewhere(&nodes.registry()) {
            return Err(DataError::Invalid(format!(
                "{addr} is not a registered data node of another site: a put is sent on only \
                 to one"
            ))
            .to_status());
        }
        nodes
            .client(addr)
            .map_err(|e| DataError::Invalid(e.to_string()).to_status())
    }
}

/// Who may call what on a data node, by the role in the caller's certificate: reads
/// and puts for anyone in the cluster but the metadata members; deleting, collecting
/// and verifying for operators and data nodes (drain, GC, fsck).
pub fn policy(role: mobilus_tls::Role, path: &str) -> bool {
    use mobilus_tls::Role;
    let Some(method) = path.strip_prefix("/mobilus.data.v1.Chunks/") else {
        return false;
    };
    match method {
        "Put" | "Get" | "ReadBlocks" | "Has" | "Stats" => role != Role::Meta,
        "Delete" | "Gc" | "Verify" => matches!(role, Role::Admin | Role::Data),
        _ => false,
    }
}

/// A mount stores chunks only at its own site's nodes (a replicator or an operator
/// may put anywhere).
fn may_put_here(site: Option<&str>) -> Result<(), Status> {
    let Some(peer) = mobilus_tls::server::current_peer() else {
        return Ok(());
    };
    if peer.role == mobilus_tls::Role::Mount && peer.site.as_deref() != site {
        return Err(Status::permission_denied(format!(
            "a mount stores chunks at its own site's data nodes: this node is of {}, the \
             certificate is of {peer}",
            site.unwrap_or("no site")
        )));
    }
    Ok(())
}

fn hash(bytes: &[u8]) -> Result<ChunkHash, Status> {
    ChunkHash::from_slice(bytes).ok_or_else(|| {
        DataError::Invalid(format!("a chunk hash has 32 bytes, not {}", bytes.len())).to_status()
    })
}

/// Up to `max` hashes of a batch request.
fn hashes(wire: &[Vec<u8>], max: usize) -> Result<Vec<ChunkHash>, Status> {
    if wire.len() > max {
        return Err(DataError::Invalid(format!("at most {max} hashes per call")).to_status());
    }
    wire.iter().map(|h| hash(h)).collect()
}

/// Block reads of at most this many bytes run on the request's task (`read_blocks`).
const INLINE_READ_BYTES: u64 = 64 << 10;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DataError> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| e.to_status()),
        Err(e) => Err(Status::internal(format!("store task failed: {e}"))),
    }
}

/// The first frame of a put: its header, with the chunk's hash and a size a node stores.
pub async fn put_header<S>(stream: &mut S) -> Result<(ChunkHash, pb::PutHeader), Status>
where
    S: Stream<Item = Result<pb::PutRequest, Status>> + Unpin,
{
    let header = match stream.next().await {
        Some(Ok(pb::PutRequest {
            part: Some(Part::Header(h)),
        })) => h,
        Some(Err(e)) => return Err(e),
        _ => return Err(DataError::Invalid("a put starts with its header".into()).to_status()),
    };
    let h = hash(&header.hash)?;
    if header.size > MAX_CHUNK_BYTES {
        return Err(DataError::TooLarge(header.size).to_status());
    }
    Ok((h, header))
}

/// The rest of a put: exactly the bytes its header declared, each frame within `idle` of
/// the last. A stream cut short, too long, or with a second header stores nothing.
pub async fn put_body<S>(
    stream: &mut S,
    header: &pb::PutHeader,
    idle: std::time::Duration,
) -> Result<Vec<u8>, Status>
where
    S: Stream<Item = Result<pb::PutRequest, Status>> + Unpin,
{
    let mut data = Vec::with_capacity(header.size.min(MAX_CHUNK_BYTES) as usize);
    loop {
        let next = tokio::time::timeout(idle, stream.next()).await;
        let Some(msg) = next.map_err(|_| {
            Status::deadline_exceeded(format!(
                "no frame of the put for {} s: abandoned",
                idle.as_secs()
            ))
        })?
        else {
            break;
        };
        match msg?.part {
            Some(Part::Data(bytes)) => {
                if (data.len() + bytes.len()) as u64 > header.size {
                    return Err(DataError::Invalid(format!(
                        "more than the {} bytes declared",
                        header.size
                    ))
                    .to_status());
                }
                data.extend_from_slice(&bytes);
            }
            _ => return Err(DataError::Invalid("a second header in one put".into()).to_status()),
        }
    }
    if data.len() as u64 != header.size {
        return Err(DataError::Invalid(format!(
            "truncated: {} of {} bytes",
            data.len(),
            header.size
        ))
        .to_status());
    }
    Ok(data)
}

type GetStream = Pin<Box<dyn Stream<Item = Result<pb::GetReply, Status>> + Send>>;

#[tonic::async_trait]
impl Chunks for ChunksSvc {
    async fn put(
        &self,
        r: Request<Streaming<pb::PutRequest>>,
    ) -> Result<Response<pb::PutReply>, Status> {
        may_put_here(self.site.as_deref())?;
        let connection = mobilus_tls::server::PeerInfo::of(&r).map(|p| p.buffered.clone());
        let mut stream = r.into_inner();
        let (h, header) = put_header(&mut stream).await?;
        // MAX_CHUNK_BYTES (16 MiB) fits u32 and is below both budgets.
        let size = header.size as u32;
        let _connection_room = match connection {
            Some(c) => Some(c.try_acquire_many_owned(size).map_err(|_| {
                Status::resource_exhausted(format!(
                    "this connection has {} MiB of puts in flight: try again",
                    mobilus_tls::server::BUFFER_BYTES_PER_CONNECTION >> 20
                ))
            })?),
            None => None,
        };
        let _room = self.put_buffers.try_acquire_many(size).map_err(|_| {
            Status::resource_exhausted(format!(
                "the data node holds {} MiB of puts in flight: try again",
                PUT_BUFFER_BYTES >> 20
            ))
        })?;
        let receiving = std::time::Instant::now();
        let data = put_body(&mut stream, &header, PUT_IDLE).await?;
        metrics::histogram!("mobilus_data_put_stage_seconds", "stage" => "body")
            .record(receiving.elapsed().as_secs_f64());
        let storing = std::time::Instant::now();
        let store = self.store.clone();
        let cached = header.cache;
        // Read first, as `has` does: the answer never claims a generation newer than the
        // deletions it saw.
        let gc_gen = self.store.gc_gen();
        let (existed, data) =
            blocking(move || store.put_as(&h, &data, cached).map(|e| (e, data))).await?;
        metrics::histogram!("mobilus_data_put_stage_seconds", "stage" => "store")
            .record(storing.elapsed().as_secs_f64());
        if header.from_remote && !existed {
            self.store.count_remote_fetch();
        }
        if !header.forward_to.is_empty() {
            let forwarder = self.forward.as_ref().ok_or_else(|| {
                Status::failed_precondition(
                    "this data node runs without a metadata service: it sends no put on",
                )
            })?;
            let to = forwarder
                .to(self.site.as_deref(), &header.forward_to)
                .await?;
            // Aborted: the other site's node failed, not this one (the mount then tries
            // another node there rather than another here).
            let answer = to.put_keeping(&h, &data).await.map_err(|e| {
                Status::aborted(format!(
                    "sending the chunk on to {}: {e}",
                    header.forward_to
                ))
            })?;
            return Ok(Response::new(pb::PutReply {
                existed: answer.existed,
                gc_gen: answer.gc_gen,
            }));
        }
        Ok(Response::new(pb::PutReply {
            existed,
            gc_gen: Some(gc_gen),
        }))
    }

    type GetStream = GetStream;

    async fn get(&self, r: Request<pb::GetRequest>) -> Result<Response<GetStream>, Status> {
        let r = r.into_inner();
        let h = hash(&r.hash)?;
        let priority = pb::Priority::try_from(r.priority).unwrap_or(pb::Priority::Background);
        let admitted = self.priorities.admit(priority).await;
        let store = self.store.clone();
        let data = blocking(move || store.get(&h, r.offset, r.length)).await?;
        let frames: Vec<Result<pb::GetReply, Status>> = if data.is_empty() {
            vec![Ok(pb::GetReply { data: Vec::new() })]
        } else {
            data.chunks(FRAME)
                .map(|c| Ok(pb::GetReply { data: c.to_vec() }))
                .collect()
        };
        // Held until the last frame is taken: the read's turn lasts until it is sent.
        let frames = tokio_stream::iter(frames).map(move |f| {
            let _turn = &admitted;
            f
        });
        Ok(Response::new(Box::pin(frames)))
    }

    async fn read_blocks(
        &self,
        r: Request<pb::ReadBlocksRequest>,
    ) -> Result<Response<pb::ReadBlocksReply>, Status> {
        let r = r.into_inner();
        let h = hash(&r.hash)?;
        // A block read is a fault: lower priorities wait while it is served.
        let _turn = self.priorities.admit(pb::Priority::Foreground).await;
        let read = if r.length <= INLINE_READ_BYTES {
            // A database's page: read on this task. The hop to the blocking pool and
            // back cost more than the read itself (ReadBlocks 108 against 88 µs; 4
            // random readers 13k against 18k IOPS), and `block_in_place` no less.
            self.store
                .read_blocks(&h, r.offset, r.length, r.outboard)
                .map_err(|e| e.to_status())?
        } else {
            // Readahead's larger reads: a slow disk must not hold a runtime thread long.
            let store = self.store.clone();
            blocking(move || store.read_blocks(&h, r.offset, r.length, r.outboard)).await?
        };
        Ok(Response::new(pb::ReadBlocksReply {
            chunk_size: read.chunk_size,
            first_block: read.first_block,
            data: read.data.into(),
            outboard: read.outboard.unwrap_or_default(),
        }))
    }

    async fn has(&self, r: Request<pb::HasRequest>) -> Result<Response<pb::HasReply>, Status> {
        let r = r.into_inner();
        let hashes = hashes(&r.hashes, MAX_HAS)?;
        let store = self.store.clone();
        let (gc_gen, present) = blocking(move || {
            if r.keep {
                // Each made held as it is answered: nothing answered present can be
                // evicted afterwards.
                store.has_keeping(&hashes)
            } else if r.held_only {
                let gc_gen = store.gc_gen();
                store.has_held(&hashes).map(|present| (gc_gen, present))
            } else {
                store.has(&hashes)
            }
        })
        .await?;
        Ok(Response::new(pb::HasReply { present, gc_gen }))
    }

    async fn verify(
        &self,
        r: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyReply>, Status> {
        let hashes = hashes(&r.into_inner().hashes, MAX_VERIFY)?;
        let store = self.store.clone();
        let states = blocking(move || {
            hashes
                .iter()
                .map(|h| {
                    Ok(match store.verify(h)? {
                        Verified::Ok => pb::ChunkState::ChunkOk,
                        Verified::Missing => pb::ChunkState::ChunkMissing,
                        Verified::Corrupt => pb::ChunkState::ChunkCorrupt,
                    } as i32)
                })
                .collect::<Result<Vec<i32>, DataError>>()
        })
        .await?;
        Ok(Response::new(pb::VerifyReply { states }))
    }

    async fn delete(
        &self,
        r: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteReply>, Status> {
        let h = hash(&r.into_inner().hash)?;
        let store = self.store.clone();
        let existed = blocking(move || store.delete(&h)).await?.is_some();
        Ok(Response::new(pb::DeleteReply { existed }))
    }

    async fn gc(&self, r: Request<pb::GcRequest>) -> Result<Response<pb::GcReply>, Status> {
        let gc = self.gc.as_ref().ok_or_else(|| {
            Status::failed_precondition("this data node runs without --meta, so it cannot collect")
        })?;
        let report = gc
            .round(r.into_inner().dry_run)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::GcReply {
            examined: report.examined,
            condemned: report.condemned,
            deleted: report.deleted,
            bytes_freed: report.bytes_freed,
            gc_gen: report.gc_gen,
        }))
    }

    async fn stats(
        &self,
        _: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsReply>, Status> {
        let s = self.store.stats();
        Ok(Response::new(pb::StatsReply {
            chunks: s.chunks,
            bytes: s.bytes,
            bytes_received: s.bytes_received,
            bytes_served: s.bytes_served,
            remote_fetches: s.remote_fetches,
            corrupt_chunks: s.corrupt_chunks,
            cached_chunks: s.cached_chunks,
            cached_bytes: s.cached_bytes,
            evicted_chunks: s.evicted_chunks,
        }))
    }
}

/// How a node serves: its site, and TLS (`None`: `--insecure`).
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    pub site: Option<String>,
    pub tls: Option<Arc<mobilus_tls::TlsConfig>>,
    /// Sending puts on to other sites (`None`: refused).
    pub forward: Option<Arc<Forwarder>>,
}

/// Serve the store on `listener` until `stop` resolves.
pub async fn serve(
    store: Arc<ChunkStore>,
    gc: Option<Arc<Collector>>,
    listener: tokio::net::TcpListener,
    opts: ServeOptions,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let svc = mobilus_proto::datapb::chunks_server::ChunksServer::new(ChunksSvc {
        store,
        gc,
        priorities: Arc::default(),
        site: opts.site,
        put_buffers: Arc::new(tokio::sync::Semaphore::new(PUT_BUFFER_BYTES)),
        forward: opts.forward,
    })
    .max_decoding_message_size(2 * FRAME + 1024)
    .max_encoding_message_size(2 * FRAME + 1024);
    let incoming = mobilus_tls::server::incoming(listener, opts.tls);
    tonic::transport::Server::builder()
        .max_frame_size(Some(mobilus_data_client::node::MAX_FRAME_SIZE))
        .max_concurrent_streams(MAX_STREAMS)
        .concurrency_limit_per_connection(MAX_STREAMS as usize)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .layer(mobilus_telemetry::GrpcMetricsLayer)
        .layer(mobilus_tls::server::Authorize::new(policy))
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, stop)
        .await
}
