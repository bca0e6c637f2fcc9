//! Short-circuit reads: blocks read straight from the chunk files of a data node on this
//! host, as HDFS's short-circuit local reads do, instead of asking the node over gRPC.
//!
//! A 4 KiB read that misses the block cache costs the node's disk read either way; what
//! this saves is the round trip through two gRPC stacks and TLS, which on this kind of
//! machine cost more than the disk (a 16 KiB read from the node's page cache took 360
//! µs through the node, 8 µs in its store).
//!
//! Nothing read here is trusted: the blocks are checked against the chunk's outboard,
//! known from an earlier read through the node (checked against the chunk's name),
//! exactly as a node's reply is. A chunk's first miss (if its file is here) asks the
//! node for one block and the outboard, once for every miss of the chunk meanwhile: a
//! stream's readahead asks for several runs of a chunk at once, and each went through
//! the node whole before (1 GiB read cold: 385-412 MiB/s then, 581-624 after; the
//! node's CPU 1.7 s to 0.27 a GiB). A file that is not there (not stored, deleted,
//! quarantined, evicted), is cut short or fails its check is a miss, and the read goes
//! to the node, which quarantines a damaged chunk and repairs from elsewhere. A chunk's
//! file only ever holds its bytes whole (written to a temporary file, then renamed), and
//! the bytes of a name never change, so no lock is needed against the node's writes.
//!
//! The node is not told of these reads: its least-recently-used order of cached chunks
//! and its served-bytes counter miss them, so a chunk cached here from another site and
//! read only this way looks cold to the node and is among the first evicted under space
//! pressure (then fetched again). With several nodes at a site, a damaged local file is
//! quarantined only when its own node is asked: a failed check here is logged as a
//! warning and counted (`refused`).

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::FutureExt;
use mobilus_proto::blocks::{self, Outboard, BLOCK};
use mobilus_proto::datapb as pb;
use mobilus_proto::fs::ChunkHash;

use crate::block_cache::{BlockCache, Run};
use crate::client::Client;

/// Runs of at most this many bytes are read on the caller's task: the hop to the
/// blocking pool and back costs more than a page's read (as on the node).
const INLINE_READ_BYTES: u64 = 64 << 10;

/// The chunk files of a data node on this host (its `--data-dir`).
#[derive(Debug, Clone)]
pub struct LocalChunks {
    root: PathBuf,
}

impl LocalChunks {
    pub fn new(data_dir: PathBuf) -> Self {
        LocalChunks { root: data_dir }
    }

    /// Whether this node holds `hash`'s file (it may still be cut short or damaged:
    /// every read of it is checked).
    pub fn holds(&self, hash: &ChunkHash) -> bool {
        hash.file_in(&self.root).exists()
    }

    /// Blocks `first..end` of the chunk `outboard` describes (cut at its end), read from
    /// its file, as a reply the caller checks like a node's: `Err` if the file is not
    /// there or is short.
    pub async fn read(
        &self,
        outboard: &Arc<Outboard>,
        first: u64,
        end: u64,
    ) -> std::io::Result<pb::ReadBlocksReply> {
        let size = outboard.size();
        let end = end.min(blocks::block_count(size));
        if first >= end {
            return Err(std::io::ErrorKind::InvalidInput.into());
        }
        let (start, _) = blocks::block_span(size, first);
        let (_, stop) = blocks::block_span(size, end - 1);
        let path = outboard.hash().file_in(&self.root);
        let read = move || -> std::io::Result<Vec<u8>> {
            let mut buf = vec![0; (stop - start) as usize];
            std::fs::File::open(&path)?.read_exact_at(&mut buf, start)?;
            Ok(buf)
        };
        let data = if stop - start <= INLINE_READ_BYTES {
            read()?
        } else {
            tokio::task::spawn_blocking(read)
                .await
                .map_err(std::io::Error::other)??
        };
        Ok(pb::ReadBlocksReply {
            chunk_size: size,
            first_block: first,
            data: data.into(),
            outboard: Vec::new(),
        })
    }
}

/// Takes a chunk's outboard fetch out of the table when the fetch ends, however it ends.
struct LeaveTable(Arc<BlockCache>, ChunkHash);

impl Drop for LeaveTable {
    fn drop(&mut self) {
        self.0.outboard_fetched(&self.1);
    }
}

impl Client {
    /// Blocks `first..end` of `hash` without asking a node for them: read from the local
    /// chunk file, checked against the chunk's outboard (`known`, else fetched once for
    /// every concurrent reader of the chunk, with one block: a sequential stream's
    /// readahead would otherwise send each of its first runs of a chunk through the
    /// node), or cached by that fetch. `None`: ask the nodes.
    pub(crate) async fn short_circuit_run(
        &self,
        local: &LocalChunks,
        hash: ChunkHash,
        known: Option<Arc<Outboard>>,
        first: u64,
        end: u64,
    ) -> Option<Run> {
        let outboard = match known {
            Some(o) => o,
            // Not here (a chunk another site holds, or another node of this site): the
            // node's answer is all there is, asked for once by the caller.
            None if !local.holds(&hash) => return None,
            None => {
                let outboard = self.shared_outboard(hash, first).await?;
                // The outboard's fetch brought its block: a page's read is done.
                let cached: Option<Vec<_>> = (first..end)
                    .map(|i| self.blocks.block_since(&(hash, i)))
                    .collect();
                if let Some(blocks) = cached {
                    return Some(Run { first, blocks });
                }
                outboard
            }
        };
        self.local_run(local, hash, &outboard, first, end).await
    }

    /// `hash`'s outboard, from the fetch of it under way or a new one: block `first`
    /// and the outboard from this site's first node for the chunk, checked and cached.
    /// `None` if that node failed or lacks the chunk (the ordinary path then deals with
    /// it).
    async fn shared_outboard(&self, hash: ChunkHash, first: u64) -> Option<Arc<Outboard>> {
        let me = self.clone();
        let fetch = self.blocks.outboard_fetch(hash, move || {
            // Its own task: it ends (and leaves the table) even if every reader waiting
            // for it is dropped, and a panic in it is a failed fetch, not a poisoned one.
            let task = tokio::spawn(async move {
                let _leave = LeaveTable(me.blocks.clone(), hash);
                me.outboard_from_node(hash, first).await
            });
            async move { task.await.ok().flatten() }.boxed()
        });
        fetch.await
    }

    async fn outboard_from_node(&self, hash: ChunkHash, first: u64) -> Option<Arc<Outboard>> {
        let node = self
            .nodes
            .candidates(self.site(), &hash)
            .into_iter()
            .next()?;
        // One that failed lately is asked once, by the ordinary path, not twice.
        if self.nodes.suspected(node.addr()) {
            return None;
        }
        match node.read_blocks(&hash, first * BLOCK, BLOCK, true).await {
            Ok(reply) => match self.cache_verified(hash, None, first, reply) {
                Ok((outboard, _)) => Some(outboard),
                Err(why) => {
                    tracing::warn!(?hash, node = node.addr(), %why, "blocks failed verification");
                    None
                }
            },
            Err(e) => {
                if !e.is_missing() {
                    tracing::debug!(?hash, node = node.addr(), error = %e, "data node failed a read");
                    self.nodes.suspect(node.addr());
                }
                None
            }
        }
    }

    /// Blocks `first..end` of `hash` read straight from a local node's chunk file,
    /// checked and cached as a node's reply; `None` (counted, logged) if the file is not
    /// there, is short or fails its check: the caller then asks the node.
    async fn local_run(
        &self,
        local: &LocalChunks,
        hash: ChunkHash,
        outboard: &Arc<Outboard>,
        first: u64,
        end: u64,
    ) -> Option<Run> {
        // A file not there is the common miss (not stored here, deleted, evicted); one
        // that cannot be read or fails its check (damage, a wrong `--local-chunks`, no
        // permission) is worth an operator's eye, as the node's failed checks are.
        let (outcome, label) = match local.read(outboard, first, end).await {
            Ok(reply) => match self.cache_run(hash, Some(outboard.clone()), first, reply) {
                Ok(run) => (Ok(run), "hit"),
                Err(why) => (Err(why), "refused"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Err(e.to_string()), "absent"),
            Err(e) => (Err(e.to_string()), "failed"),
        };
        let counter = match outcome {
            Ok(_) => &self.counters.local_reads,
            Err(_) => &self.counters.local_misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("mobilus_client_local_reads_total", "outcome" => label).increment(1);
        match &outcome {
            Err(why) if label == "absent" => {
                tracing::debug!(?hash, %why, "short-circuit read: no local file; asking the node")
            }
            Err(why) => {
                tracing::warn!(?hash, %why, outcome = label, "short-circuit read failed; asking the node")
            }
            Ok(_) => {}
        }
        outcome.ok()
    }
}
