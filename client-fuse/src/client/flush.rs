//! A writer's flush: its buffered writes cut into chunks and hashed, the chunks stored
//! at this site's data nodes, then the slices committed.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use mobilus_proto::fs::{Attr, ChunkHash, SliceWrite};

use super::cut::Cut;
use super::{slot_create, ClientError, FileWriter, STALE_CHUNK_ATTEMPTS, WRITE_THROUGH_BYTES};

impl FileWriter {
    /// Make every buffered write durable: chunks on the local data node (fsynced there),
    /// then the slices committed by a Raft quorum. Returns the new attributes and the
    /// slices committed, if anything was written.
    pub async fn flush(&mut self) -> Result<Option<(Attr, Vec<SliceWrite>)>, ClientError> {
        let create = self.create_first.as_ref().and_then(slot_create);
        if self.pending.is_empty() {
            let Some(create) = create else {
                self.create_first = None;
                return Ok(None);
            };
            let attr = self
                .client
                .meta
                .create_reserved(&create, None, self.holder_only)
                .await?;
            self.made();
            self.holder_only = false;
            return Ok(Some((attr, Vec::new())));
        }
        // Cutting and hashing hold the CPU for up to 100 ms: a flush first polled on a
        // FUSE thread (outside any task, `mount::fuse`) goes on in a task of the runtime,
        // so the thread goes back to the kernel's requests. Outside a task, a yield ends
        // this poll, and `FuseAdapter::run` hands the rest to the runtime.
        if tokio::task::try_id().is_none() {
            tokio::task::yield_now().await;
        }
        // Chunks of a run stored ahead are known present: the upload below skips them.
        let mut ahead = std::mem::take(&mut self.ahead);
        for a in &mut ahead {
            a.settle().await;
        }
        let cut = Cut::of(&self.pending, |entry, buf| {
            ahead.iter().find_map(|a| a.pieces_of(entry, buf))
        });
        let chunks: Vec<(ChunkHash, &[u8])> = cut
            .chunks
            .iter()
            .map(|(hash, at)| (*hash, cut.bytes(&self.pending, *at)))
            .collect();
        let slices = &cut.slices;
        let stored_ahead: HashSet<ChunkHash> = ahead.iter().flat_map(|a| a.hashes()).collect();
        let mut attempt = 0;
        let attr = loop {
            attempt += 1;
            let uploading = std::time::Instant::now();
            let checks = self.client.upload(&chunks, &stored_ahead).await?;
            metrics::histogram!("mobilus_client_flush_stage_seconds", "stage" => "upload")
                .record(uploading.elapsed().as_secs_f64());
            let pause = self.client.counters.flush_pause_ms.load(Ordering::Relaxed);
            if pause > 0 && attempt == 1 {
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
            let committing = std::time::Instant::now();
            let committed = match &create {
                // Made and written in one command.
                Some(create) => {
                    let write = Some((slices.as_slice(), checks.as_slice()));
                    self.client
                        .meta
                        .create_reserved(create, write, self.holder_only)
                        .await
                }
                None => {
                    self.client
                        .meta
                        .write(self.ino, slices, None, &checks, self.holder_only)
                        .await
                }
            };
            metrics::histogram!("mobilus_client_flush_stage_seconds", "stage" => "commit")
                .record(committing.elapsed().as_secs_f64());
            match committed {
                Ok(attr) => break attr,
                // Garbage collection raced with this write: ask the data node again.
                Err(mobilus_meta_client::ClientError::StaleChunks(why))
                    if attempt < STALE_CHUNK_ATTEMPTS =>
                {
                    tracing::debug!(attempt, %why, "write raced with gc or a drain; checking the chunks again");
                    self.client.forget_present();
                    // A node may have been drained since the registry was read.
                    if let Err(e) = self.client.nodes.refresh().await {
                        tracing::debug!(error = %e, "could not refresh the data-node registry");
                    }
                    self.client
                        .counters
                        .stale_chunk_retries
                        .fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("mobilus_client_stale_chunk_retries_total").increment(1);
                    tokio::time::sleep(std::time::Duration::from_millis(20 << attempt.min(6)))
                        .await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        // A site the placement marks synchronous holds the data before the flush returns.
        // After the commit, so the chunks are referenced and no collector there can take
        // them (a commit is refused while any node has one condemned).
        let pushed = self.client.push_to_sync_sites(attr.subtree, &chunks).await;
        // Small commits stay in the block cache (their bytes are what was hashed): a
        // file read back just after it is written costs no data-node round. Large ones
        // would only push out what readers fetched.
        if self.pending_bytes <= WRITE_THROUGH_BYTES {
            for (hash, bytes) in &chunks {
                self.client.blocks.insert_chunk(*hash, bytes);
            }
        }
        // Committed: never again from this buffer, even if a synchronous site failed (a
        // later commit of it could overwrite what another writer committed since).
        self.pending.clear();
        self.set_pending_bytes(0);
        self.holder_only = false;
        self.made();
        pushed?;
        Ok(Some((attr, cut.slices)))
    }
}
