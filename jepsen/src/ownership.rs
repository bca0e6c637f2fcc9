//! The ownership workload's subtree, on the harness's side: made at the start, moved
//! between the sites by the `move` nemesis and taken over by force by `takeover`, every
//! attempt logged for the ownership checker (`checker::ownership`).

use std::time::{Duration, Instant};

use mobilus_meta_client::{ClientError, MetaClient};
use mobilus_proto::fs::{FileKind, InodeId, SubtreeInfo, ROOT_INO};
use mobilus_proto::status::Errno;

use crate::cluster::{Cluster, ClusterError, Role};
use crate::history::EventType;

/// The subtree's folder under the root: the registers of the ownership workload.
pub const OWNED_DIR: &str = "jepsen-owned";

/// One attempt to change the subtree's owner, as the harness saw it.
#[derive(Clone, Debug)]
pub struct MoveAttempt {
    pub to: String,
    pub invoke: Instant,
    pub complete: Instant,
    /// `Ok` committed, `Fail` refused (nothing changed), `Info` unknown.
    pub outcome: EventType,
}

/// The subtree and the log of its moves.
#[derive(Debug)]
pub struct Owned {
    pub root: InodeId,
    pub first_owner: String,
    /// When the first owner held it (the subtree and its lease exist).
    pub since: Instant,
    pub moves: Vec<MoveAttempt>,
}

pub(crate) fn start_err(what: &str, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Start {
        what: what.into(),
        why: e.to_string(),
    }
}

pub(crate) async fn wait_for_lease(
    admin: &MetaClient,
    root: InodeId,
    valid: bool,
) -> Result<SubtreeInfo, ClusterError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = admin.subtree(root, false).await {
            if s.lease_valid() == valid {
                return Ok(s);
            }
        }
        if Instant::now() > deadline {
            return Err(start_err(
                "waiting for the owner's lease",
                format!(
                    "it did not become {}",
                    if valid { "valid" } else { "expired" }
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Make `/NAME` a subtree owned by `owner` (a folder made, or found, there), and wait
/// for its lease. Returns its root.
pub(crate) async fn owned_folder(
    admin: &MetaClient,
    name: &str,
    owner: &str,
) -> Result<InodeId, ClusterError> {
    let what = format!("the folder /{name}");
    let dir = match admin
        .mkdir(ROOT_INO, name.as_bytes(), 0o755, 0, 0, None)
        .await
    {
        Ok(a) => a.ino,
        Err(ClientError::Errno(Errno::EEXIST, _)) => {
            admin
                .lookup(ROOT_INO, name.as_bytes(), false)
                .await
                .map_err(|e| start_err(&what, e))?
                .ino
        }
        Err(e) => return Err(start_err(&what, e)),
    };
    let attr = admin
        .getattr(dir, false)
        .await
        .map_err(|e| start_err(&what, e))?;
    if attr.kind != FileKind::Directory {
        return Err(start_err(&what, "not a directory"));
    }
    admin
        .create_subtree(dir, owner)
        .await
        .map_err(|e| start_err(&format!("the subtree /{name}"), e))?;
    wait_for_lease(admin, dir, true).await?;
    Ok(dir)
}

/// Make `/jepsen-owned` a subtree owned by the first site, and wait for its lease.
pub async fn set_up(cluster: &mut Cluster) -> Result<(), ClusterError> {
    let admin = cluster.admin_client()?;
    let owner = cluster.spec.sites[0].clone();
    let dir = owned_folder(&admin, OWNED_DIR, &owner).await?;
    cluster.owned = Some(Owned {
        root: dir,
        first_owner: owner,
        since: Instant::now(),
        moves: Vec::new(),
    });
    Ok(())
}

impl Cluster {
    fn owned_root(&self) -> Result<InodeId, ClusterError> {
        self.owned
            .as_ref()
            .map(|o| o.root)
            .ok_or_else(|| start_err("a move", "the workload has no subtree"))
    }

    /// The subtree's owner now, and the site it would move to.
    async fn owner_and_other(&self) -> Result<(SubtreeInfo, String), ClusterError> {
        let root = self.owned_root()?;
        let admin = self.admin_client()?;
        let s = admin
            .subtree(root, false)
            .await
            .map_err(|e| start_err("reading the subtree", e))?;
        let owner = s.owner.clone().unwrap_or_default();
        let other = self
            .spec
            .sites
            .iter()
            .find(|site| **site != owner)
            .cloned()
            .unwrap_or(owner);
        Ok((s, other))
    }

    /// Try to give the subtree to `to`, and log the attempt.
    pub async fn move_owned(&mut self, to: &str, force: bool) -> Result<String, ClusterError> {
        let root = self.owned_root()?;
        let admin = self.admin_client()?;
        let invoke = Instant::now();
        let result = admin.move_subtree(root, to, force).await;
        let complete = Instant::now();
        let (outcome, text) = match &result {
            Ok(s) => (EventType::Ok, format!("epoch {}", s.epoch)),
            Err(
                e @ (ClientError::Errno(..)
                | ClientError::LeaseExpired(_)
                | ClientError::UnknownSite(_)),
            ) => (EventType::Fail, format!("refused: {e}")),
            Err(e) => (EventType::Info, format!("unknown: {e}")),
        };
        if let Some(o) = self.owned.as_mut() {
            o.moves.push(MoveAttempt {
                to: to.to_string(),
                invoke,
                complete,
                outcome,
            });
        }
        Ok(format!(
            "{} the subtree to {to}: {text}",
            if force { "take over" } else { "move" }
        ))
    }

    /// `move`: give the subtree to the other site, as an operator would.
    pub async fn move_to_other(&mut self) -> Result<String, ClusterError> {
        let (_, other) = self.owner_and_other().await?;
        self.move_owned(&other, false).await
    }

    /// `takeover`: stop the owner site's agent until its lease runs out, then take the
    /// subtree over by force. Either SIGSTOP its data node while its clients keep writing
    /// (`cut_off` false: the paused process is returned, to resume when the fault
    /// stops), or cut its data node and client host off from every other host (`cut_off`:
    /// the partition stays until the fault stops). Returns what happened.
    pub async fn take_over(
        &mut self,
        cut_off: bool,
    ) -> Result<(Option<usize>, String), ClusterError> {
        let (s, other) = self.owner_and_other().await?;
        let owner = s.owner.clone().unwrap_or_default();
        let site = Role::Data {
            site: owner.clone(),
        };
        let agent = self
            .procs
            .iter()
            .position(|p| p.role == site)
            .ok_or_else(|| start_err("a takeover", format!("no data node of {owner}")))?;
        let (paused, how) = if cut_off {
            let n = self.net.hosts.len();
            let agent_host = self.procs[agent].host;
            let clients = format!("c-{owner}");
            let (inside, outside): (Vec<usize>, Vec<usize>) =
                (0..n).partition(|i| *i == agent_host || self.net.hosts[*i].name == clients);
            self.partition(&[inside, outside])?;
            (None, format!("cut off data-{owner} and c-{owner}"))
        } else {
            self.pause(agent);
            (Some(agent), format!("pause data-{owner}"))
        };
        let admin = self.admin_client()?;
        if let Err(e) = wait_for_lease(&admin, s.root, false).await {
            return Ok((paused, format!("{how}: {e}")));
        }
        let what = self.move_owned(&other, true).await?;
        Ok((paused, format!("{how} until its lease expired, {what}")))
    }
}
