//! Faults, each with a start and a stop: network partitions (random halves, the leader
//! isolated, a site cut off, a majority ring), SIGKILL and restart, SIGSTOP and SIGCONT,
//! and membership changes (a voter removed, then added back). A schedule runs one fault
//! at a time from the chosen kinds, with random gaps, until told to stop.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::cluster::{Cluster, ClusterError, Role};
use crate::link::LinkShape;

/// The kinds a run may combine (`--nemesis partition,kill`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NemesisKind {
    Partition,
    Kill,
    Pause,
    Membership,
    /// Latency and a bandwidth limit on links between sites (the link emulator).
    Link,
    /// Always the partition that keeps the leader with one site's clients, cut off from
    /// the majority: where a leader serving past its leadership (a read lease too long)
    /// answers clients stale values.
    LeaderMinority,
    /// The ownership workload: give its subtree to the other site.
    Move,
    /// The ownership workload: stop the owner site's agent until the site's lease runs
    /// out, then take the subtree over by force. Either its data node is SIGSTOPped while
    /// its clients keep writing, or its data node and clients are cut off together; both
    /// end when the fault stops.
    Takeover,
    /// The sites split apart: either every host keeps only the hosts of its own site, or
    /// only the data nodes of two sites lose each other (the metadata still reachable
    /// from both: a follower can read the feed but not fetch the chunks).
    Sites,
    /// The delegation workload: SIGSTOP one of the mounts (the delegation's holder,
    /// perhaps, which then answers no recall), or cut its client host off from every
    /// other host.
    Mount,
}

/// A fault in force, and how to undo it.
#[derive(Clone, Debug)]
pub enum Fault {
    Partition {
        description: String,
    },
    Killed {
        proc: usize,
    },
    Paused {
        proc: usize,
    },
    Removed {
        id: u64,
        addr: String,
    },
    Shaped {
        description: String,
    },
    /// A change of owner: nothing to undo.
    Moved {
        description: String,
    },
    /// A takeover: the paused agent resumes.
    TakenOver {
        proc: usize,
        description: String,
    },
    /// A mount stopped: it continues.
    MountPaused {
        mount: usize,
        description: String,
    },
}

impl Fault {
    pub fn describe(&self, cluster: &Cluster) -> String {
        match self {
            Fault::Partition { description } => description.clone(),
            Fault::Killed { proc } => format!("kill {}", cluster.procs[*proc].name()),
            Fault::Paused { proc } => format!("pause {}", cluster.procs[*proc].name()),
            Fault::Removed { id, .. } => format!("remove member {id}"),
            Fault::Shaped { description }
            | Fault::Moved { description }
            | Fault::TakenOver { description, .. }
            | Fault::MountPaused { description, .. } => description.clone(),
        }
    }
}

fn names(cluster: &Cluster, group: &[usize]) -> String {
    group
        .iter()
        .map(|i| cluster.net.hosts[*i].name.clone())
        .collect::<Vec<_>>()
        .join(",")
}

/// The host of the current leader, if one answers.
async fn leader_host(cluster: &Cluster) -> Option<usize> {
    let status = cluster.admin_client().ok()?.status().await.ok()?;
    cluster
        .procs
        .iter()
        .find(|p| p.role == Role::Meta { id: status.id })
        .map(|p| p.host)
}

async fn partition(cluster: &Cluster, rng: &mut StdRng) -> Result<Fault, ClusterError> {
    let n = cluster.net.hosts.len();
    let metas: Vec<usize> = (0..3).collect();
    let mode = rng.random_range(0..5);
    let description = match mode {
        0 => {
            let mut all: Vec<usize> = (0..n).collect();
            all.shuffle(rng);
            let (a, b) = all.split_at(n / 2);
            cluster.partition(&[a.to_vec(), b.to_vec()])?;
            format!(
                "partition halves [{}] [{}]",
                names(cluster, a),
                names(cluster, b)
            )
        }
        1 => {
            let leader = match leader_host(cluster).await {
                Some(l) => l,
                None => metas[rng.random_range(0..3)],
            };
            let rest: Vec<usize> = (0..n).filter(|i| *i != leader).collect();
            cluster.partition(&[vec![leader], rest])?;
            format!("isolate leader host {}", cluster.net.hosts[leader].name)
        }
        2 => {
            let sites: Vec<String> = cluster.spec.sites.clone();
            let site = &sites[rng.random_range(0..sites.len())];
            let (inside, outside): (Vec<usize>, Vec<usize>) =
                (0..n).partition(|i| &cluster.net.hosts[*i].site == site);
            cluster.partition(&[inside, outside])?;
            format!("cut off site {site}")
        }
        3 => return leader_minority(cluster, rng).await,
        _ => {
            // Three members in a ring with one link cut: each still sees a majority,
            // but two of them cannot talk directly.
            let mut m = metas.clone();
            m.shuffle(rng);
            cluster.cut(m[0], m[1])?;
            format!(
                "majority ring: {} and {} cut",
                cluster.net.hosts[m[0]].name, cluster.net.hosts[m[1]].name
            )
        }
    };
    Ok(Fault::Partition { description })
}

/// The leader in a minority with one site's clients: they can still reach it, while the
/// other site's clients reach the majority, which elects another leader. A leader that
/// kept serving reads past its leadership (a read lease too long) shows here.
async fn leader_minority(cluster: &Cluster, rng: &mut StdRng) -> Result<Fault, ClusterError> {
    let n = cluster.net.hosts.len();
    let leader = match leader_host(cluster).await {
        Some(l) => l,
        None => rng.random_range(0..3),
    };
    let sites = &cluster.spec.sites;
    let site = &sites[rng.random_range(0..sites.len())];
    let clients = format!("c-{site}");
    let (minority, majority): (Vec<usize>, Vec<usize>) =
        (0..n).partition(|i| *i == leader || cluster.net.hosts[*i].name == clients);
    cluster.partition(&[minority, majority])?;
    Ok(Fault::Partition {
        description: format!(
            "leader host {} with the clients of {site}, cut off",
            cluster.net.hosts[leader].name
        ),
    })
}

/// Split the sites (see [`NemesisKind::Sites`]).
fn split_sites(cluster: &Cluster, rng: &mut StdRng) -> Result<Fault, ClusterError> {
    let sites = cluster.spec.sites.clone();
    // The data-only cut twice as often: it is the one where a follower reads the feed
    // but cannot fetch.
    let description = if rng.random_range(0..3) == 0 {
        let groups: Vec<Vec<usize>> = sites
            .iter()
            .map(|site| {
                (0..cluster.net.hosts.len())
                    .filter(|i| &cluster.net.hosts[*i].site == site)
                    .collect()
            })
            .collect();
        cluster.partition(&groups)?;
        format!("split the sites {}", sites.join(" | "))
    } else {
        let data_host = |site: &str| {
            cluster
                .procs
                .iter()
                .find(|p| p.role == Role::Data { site: site.into() })
                .map(|p| p.host)
        };
        let mut pair: Vec<&String> = sites.iter().collect();
        pair.shuffle(rng);
        let (Some(a), Some(b)) = (data_host(pair[0]), data_host(pair[1])) else {
            return Err(ClusterError::Start {
                what: "a data-node cut".into(),
                why: "two sites with a data node each are needed".into(),
            });
        };
        cluster.cut(a, b)?;
        format!(
            "cut the data nodes {} and {}",
            cluster.net.hosts[a].name, cluster.net.hosts[b].name
        )
    };
    Ok(Fault::Partition { description })
}

/// Start one fault of `kind`.
pub async fn start(
    kind: NemesisKind,
    cluster: &mut Cluster,
    rng: &mut StdRng,
) -> Result<Fault, ClusterError> {
    match kind {
        NemesisKind::Partition => partition(cluster, rng).await,
        NemesisKind::LeaderMinority => leader_minority(cluster, rng).await,
        NemesisKind::Sites => split_sites(cluster, rng),
        NemesisKind::Move => Ok(Fault::Moved {
            description: cluster.move_to_other().await?,
        }),
        NemesisKind::Takeover => match cluster.take_over(rng.random_bool(0.5)).await? {
            (Some(proc), description) => Ok(Fault::TakenOver { proc, description }),
            (None, description) => Ok(Fault::Partition { description }),
        },
        NemesisKind::Mount => {
            if cluster.mounts.is_empty() {
                return Err(ClusterError::Start {
                    what: "a mount fault".into(),
                    why: "no worker runs a mount".into(),
                });
            }
            cluster.mount_faults += 1;
            let pause = !cluster.mount_faults.is_multiple_of(2);
            // A pause is aimed at the writing mount, the likely holder of the delegation,
            // a moment before the other mount's turn begins: its first writes then
            // conflict with a holder that answers no recall.
            if let (true, Some((start, turn))) = (pause, cluster.writer_turns) {
                let into = Duration::from_nanos(
                    (start.elapsed().as_nanos() % turn.as_nanos().max(1)) as u64,
                );
                let lead = Duration::from_secs(1);
                if turn > into + lead {
                    tokio::time::sleep(turn - into - lead).await;
                }
            }
            let mount = match cluster.writing_mount() {
                Some(w) if pause => w,
                _ => rng.random_range(0..cluster.mounts.len()),
            };
            let m = cluster.mounts[mount];
            let host = cluster.net.hosts[m.host].name.clone();
            if pause {
                m.pause();
                Ok(Fault::MountPaused {
                    mount,
                    description: format!("pause the mount on {host}"),
                })
            } else {
                let rest: Vec<usize> = (0..cluster.net.hosts.len())
                    .filter(|i| *i != m.host)
                    .collect();
                cluster.partition(&[vec![m.host], rest])?;
                Ok(Fault::Partition {
                    description: format!("cut off the mount's host {host}"),
                })
            }
        }
        NemesisKind::Kill => {
            let proc = rng.random_range(0..cluster.procs.len());
            cluster.kill(proc);
            Ok(Fault::Killed { proc })
        }
        NemesisKind::Link => {
            let Some(link) = &cluster.link else {
                return Err(ClusterError::Start {
                    what: "a link fault".into(),
                    why: "the cluster runs without the link emulator".into(),
                });
            };
            let shape = LinkShape {
                latency: Duration::from_millis(rng.random_range(20..250)),
                bandwidth: Some(rng.random_range(256u64 << 10..8 << 20)),
            };
            let description = format!(
                "slow links between sites: +{} ms, {} KiB/s",
                shape.latency.as_millis(),
                shape.bandwidth.unwrap_or(0) >> 10
            );
            link.set_shape(shape);
            Ok(Fault::Shaped { description })
        }
        NemesisKind::Pause => {
            let proc = rng.random_range(0..cluster.procs.len());
            cluster.pause(proc);
            Ok(Fault::Paused { proc })
        }
        NemesisKind::Membership => {
            let admin = cluster.admin_client()?;
            let status = admin.status().await.map_err(|e| ClusterError::Start {
                what: "membership change".into(),
                why: e.to_string(),
            })?;
            let candidates: Vec<&mobilus_proto::pb::Member> = status
                .members
                .iter()
                .filter(|m| m.voter && m.id != status.id)
                .collect();
            let Some(m) = candidates.get(rng.random_range(0..candidates.len().max(1))) else {
                return Ok(Fault::Partition {
                    description: "membership: no follower to remove".into(),
                });
            };
            let (id, addr) = (m.id, m.addr.clone());
            if let Err(e) = admin.remove_member(id).await {
                // A retried call may fail after the first attempt removed it: look.
                let gone = admin
                    .status()
                    .await
                    .is_ok_and(|s| s.members.iter().all(|m| m.id != id));
                if !gone {
                    return Err(ClusterError::Start {
                        what: format!("removing member {id}"),
                        why: e.to_string(),
                    });
                }
            }
            Ok(Fault::Removed { id, addr })
        }
    }
}

/// Undo a fault.
pub async fn stop(fault: &Fault, cluster: &mut Cluster) -> Result<(), ClusterError> {
    match fault {
        Fault::Partition { .. } => cluster.heal_net()?,
        Fault::Shaped { .. } => {
            if let Some(link) = &cluster.link {
                link.set_shape(LinkShape::default());
            }
        }
        Fault::Killed { proc } => cluster.restart(*proc)?,
        Fault::Paused { proc } | Fault::TakenOver { proc, .. } => cluster.resume(*proc),
        Fault::Moved { .. } => {}
        Fault::MountPaused { mount, .. } => cluster.mounts[*mount].resume(),
        Fault::Removed { id, addr } => {
            let admin = cluster.admin_client()?;
            let mut last = String::new();
            // The cluster may be electing; give it a few tries.
            for _ in 0..20 {
                match admin.add_learner(*id, addr).await {
                    Ok(_) => match admin.promote(*id).await {
                        Ok(_) => return Ok(()),
                        Err(e) => last = e.to_string(),
                    },
                    Err(e) => last = e.to_string(),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            return Err(ClusterError::Start {
                what: format!("re-adding member {id}"),
                why: last,
            });
        }
    }
    Ok(())
}
