//! The replication workload's harness side. The durability workload's files live in a
//! subtree owned by the first site, whose placement has the second site follow it
//! eagerly; only the first site writes. After the faults heal, the second site must catch
//! up (its follower reports every feed entry passed and nothing left to fetch), and then
//! hold every acknowledged file by itself: the first site's data node is killed for good
//! before the final reads, which go through the second site's mount. What crossed from
//! the first site's data node to the second's (counted by the link emulator, which
//! carries every connection between sites in this workload) must not exceed what the
//! second site stores: nothing was sent twice.

use std::path::Path;
use std::time::{Duration, Instant};

use mobilus_proto::fs::{DataMode, InodeId, SitePlacement};
use serde::Serialize;

use crate::cluster::{Cluster, ClusterError, Role};
use crate::ownership::start_err;
use crate::worker_fs::FILES_DIR;

/// How long the follower has to catch up once the faults heal.
pub const CATCH_UP_WITHIN: Duration = Duration::from_secs(120);

/// What crossed beyond what was stored that still counts as sent once: the gRPC and
/// HTTP/2 framing of each chunk (well under 1%), and a little for connection set-ups.
const FRAMING_ALLOWANCE: f64 = 0.02;
const FIXED_ALLOWANCE: u64 = 256 << 10;

/// The subtree's sites: the one that owns and writes it, the one that follows it.
pub struct Followed {
    pub root: InodeId,
    pub owner: String,
    pub follower: String,
}

/// `results.json`'s replication part.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ReplicationReport {
    pub valid: bool,
    pub owner: String,
    pub follower: String,
    /// The follower caught up within [`CATCH_UP_WITHIN`] of the heal.
    pub caught_up: bool,
    pub catch_up_ms: u64,
    /// Chunks and bytes in the follower site's store (all of them fetched by replication:
    /// nothing else writes there before the check).
    pub chunks_stored: u64,
    pub bytes_stored: u64,
    /// Bytes the link emulator carried from the owner's data node to the follower's.
    pub bytes_crossed: u64,
    /// `bytes_crossed / bytes_stored`.
    pub crossed_per_stored: f64,
    /// Whether what crossed was checked against what was stored (not when a data node
    /// was killed: a chunk in flight then may cross again, legitimately).
    pub resend_checked: bool,
    pub problems: Vec<String>,
}

/// Make `/jepsen-files` a subtree of the first site, followed eagerly by the second.
pub async fn set_up(cluster: &Cluster) -> Result<Followed, ClusterError> {
    let admin = cluster.admin_client()?;
    let (owner, follower) = match cluster.spec.sites.as_slice() {
        [a, b, ..] => (a.clone(), b.clone()),
        _ => return Err(start_err("the replication workload", "it needs two sites")),
    };
    let root = crate::ownership::owned_folder(&admin, FILES_DIR, &owner).await?;
    let follows = SitePlacement {
        site: follower.clone(),
        mode: DataMode::Eager,
        sync: false,
    };
    admin
        .set_placement(root, &[follows])
        .await
        .map_err(|e| start_err("the replication workload's placement", e))?;
    Ok(Followed {
        root,
        owner,
        follower,
    })
}

/// Chunk files and their bytes under a data node's folder.
fn stored(data_dir: &Path) -> std::io::Result<(u64, u64)> {
    let (mut chunks, mut bytes) = (0, 0);
    let dir = data_dir.join("chunks");
    if !dir.exists() {
        return Ok((0, 0));
    }
    for shard in std::fs::read_dir(dir)? {
        for chunk in std::fs::read_dir(shard?.path())? {
            chunks += 1;
            bytes += chunk?.metadata()?.len();
        }
    }
    Ok((chunks, bytes))
}

/// After the heal: wait for the follower to catch up, weigh what crossed against what it
/// stored, then kill the owner site's data node for good (the final reads must find
/// everything at the follower site). `killed_data`: a data node was killed during the run.
pub async fn check_and_cut_off_owner(
    cluster: &mut Cluster,
    followed: &Followed,
    killed_data: bool,
) -> Result<ReplicationReport, ClusterError> {
    let mut r = ReplicationReport {
        owner: followed.owner.clone(),
        follower: followed.follower.clone(),
        resend_checked: !killed_data,
        ..ReplicationReport::default()
    };
    let admin = cluster.admin_client()?;
    let started = Instant::now();
    let mut last = String::from("no report");
    while started.elapsed() < CATCH_UP_WITHIN {
        match admin.replication_status(Some(followed.root)).await {
            Ok(followers) => {
                let f = followers.iter().find(|f| f.site == followed.follower);
                if f.is_some_and(|f| f.caught_up()) {
                    r.caught_up = true;
                    break;
                }
                last = format!("{f:?}");
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    r.catch_up_ms = started.elapsed().as_millis() as u64;
    if !r.caught_up {
        r.problems.push(format!(
            "{} did not catch up within {CATCH_UP_WITHIN:?}: {last}",
            followed.follower
        ));
    }
    let data = |site: &str| {
        cluster
            .procs
            .iter()
            .position(|p| p.role == Role::Data { site: site.into() })
            .ok_or_else(|| start_err("the replication check", format!("no data node at {site}")))
    };
    let (owner_node, follower_node) = (data(&followed.owner)?, data(&followed.follower)?);
    let follower_dir = cluster.spec.dir.join(format!("data-{}", followed.follower));
    (r.chunks_stored, r.bytes_stored) =
        stored(&follower_dir).map_err(|e| start_err("reading the follower's store", e))?;
    let ip = |proc: usize| cluster.net.hosts[cluster.procs[proc].host].ip;
    r.bytes_crossed = cluster
        .link
        .as_ref()
        .map(|l| l.delivered(ip(owner_node), ip(follower_node)))
        .unwrap_or(0);
    r.crossed_per_stored = r.bytes_crossed as f64 / r.bytes_stored.max(1) as f64;
    let allowed = (r.bytes_stored as f64 * (1.0 + FRAMING_ALLOWANCE)) as u64 + FIXED_ALLOWANCE;
    if r.resend_checked && r.bytes_crossed > allowed {
        r.problems.push(format!(
            "{} bytes crossed for {} stored: some were sent more than once",
            r.bytes_crossed, r.bytes_stored
        ));
    }
    if r.bytes_stored > 0 && r.bytes_crossed == 0 {
        r.problems.push("the link emulator counted nothing".into());
    }
    cluster.kill(owner_node);
    r.valid = r.problems.is_empty();
    Ok(r)
}
