//! Recording access profiles (`namespace::profile` keeps them): for each subtree, the
//! blocks this client reads in the first seconds after its first read of the subtree's
//! files (an application starting), in order, each once, at most
//! [`MAX_PROFILE_READS`]. When the window closes the recording is stored with the
//! subtree, if the subtree's profile is armed (the first start records, and then only
//! after `mobilusctl subtree profile PATH record`). A read more than three windows after
//! a window closed opens the next one (a later start, recorded if the profile is armed by
//! then). A site the subtree moves to fetches these blocks' chunks before the rest.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mobilus_meta_client::{ClientError, MetaClient};
use mobilus_proto::fs::{ChunkHash, ProfileRead, SubtreeId, MAX_PROFILE_READS, ROOT_INO};
use mobilus_proto::status::Errno;

/// How long after its first read a subtree's reads are recorded, by default.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Recording {
    reads: Vec<ProfileRead>,
    seen: HashSet<(ChunkHash, u32)>,
    /// When the window closed (nothing is recorded for three windows after).
    closed: Option<Instant>,
}

/// This client's recordings.
pub struct Profiles {
    meta: MetaClient,
    site: String,
    /// `None`: recording is off.
    window: Option<Duration>,
    recordings: Arc<Mutex<HashMap<SubtreeId, Recording>>>,
}

impl Profiles {
    pub fn new(meta: MetaClient, site: String, window: Option<Duration>) -> Self {
        Profiles {
            meta,
            site,
            window: window.filter(|w| !w.is_zero()),
            recordings: Arc::default(),
        }
    }

    /// A read of blocks `first..first + blocks` of `hash` in `subtree`.
    pub fn note(&self, subtree: SubtreeId, hash: ChunkHash, first: u64, blocks: u64) {
        let Some(window) = self.window else {
            return;
        };
        if subtree == ROOT_INO || blocks == 0 {
            return;
        }
        let mut all = self.recordings.lock().unwrap_or_else(|p| p.into_inner());
        let mut started = !all.contains_key(&subtree);
        let r = all.entry(subtree).or_default();
        if let Some(at) = r.closed {
            if at.elapsed() < window * 3 {
                return;
            }
            *r = Recording::default();
            started = true;
        }
        if r.reads.len() >= MAX_PROFILE_READS {
            return;
        }
        let first = u32::try_from(first).unwrap_or(u32::MAX);
        if r.seen.insert((hash, first)) {
            r.reads.push(ProfileRead {
                hash,
                first_block: first,
                blocks: u32::try_from(blocks).unwrap_or(u32::MAX),
            });
        }
        if started {
            let (meta, site, recordings) = (
                self.meta.clone(),
                self.site.clone(),
                self.recordings.clone(),
            );
            tokio::spawn(async move {
                tokio::time::sleep(window).await;
                let reads = {
                    let mut all = recordings.lock().unwrap_or_else(|p| p.into_inner());
                    let r = all.entry(subtree).or_default();
                    r.closed = Some(Instant::now());
                    r.seen.clear();
                    std::mem::take(&mut r.reads)
                };
                if let Err(e) = store(&meta, &site, subtree, &reads).await {
                    tracing::debug!(subtree, error = %e, "the access profile was not stored");
                }
            });
        }
    }
}

/// Store a recording if the subtree's profile is armed.
async fn store(
    meta: &MetaClient,
    site: &str,
    subtree: SubtreeId,
    reads: &[ProfileRead],
) -> Result<(), ClientError> {
    if reads.is_empty() || !meta.profile(subtree, true).await?.record {
        return Ok(());
    }
    match meta.set_profile(subtree, site, reads).await {
        Ok(p) => {
            tracing::info!(subtree, reads = p.reads.len(), "recorded an access profile");
            Ok(())
        }
        // Another mount stored its recording first.
        Err(ClientError::Errno(Errno::EBUSY, _)) => Ok(()),
        Err(e) => Err(e),
    }
}
