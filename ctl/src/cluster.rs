//! `mobilusctl cluster ...`: status and membership of the metadata cluster.

use anyhow::Context;
use clap::Subcommand;
use mobilus_meta_client::{ClientError, ClientOptions, MetaClient};
use serde::Serialize;

use crate::output::{emit, opt, table, OutputFormat};

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Make a new cluster of the members given with --meta: the first is initialised
    /// as a one-member cluster, and each other one is added and made a voter.
    Init,
    /// Members, roles, leader, term, applied index and lag of each member.
    Status,
    /// Change the membership.
    #[command(subcommand)]
    Members(MembersCmd),
    /// Build a snapshot on the leader now (the log is purged up to it).
    Snapshot,
}

#[derive(Subcommand, Debug)]
pub enum MembersCmd {
    /// Add a member as a learner (it replicates but does not vote).
    Add {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        addr: String,
    },
    /// Make a learner a voter.
    Promote {
        #[arg(long)]
        id: u64,
    },
    /// Remove a member.
    Remove {
        #[arg(long)]
        id: u64,
    },
}

/// One member, as `cluster status --output json` reports it (a stable schema).
#[derive(Serialize, Debug)]
pub struct MemberView {
    pub id: u64,
    pub addr: String,
    pub voter: bool,
    pub reachable: bool,
    pub state: Option<String>,
    pub term: Option<u64>,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// Entries the leader has that this member has not acknowledged.
    pub lag: Option<u64>,
    pub error: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct StatusView {
    pub leader_id: Option<u64>,
    pub leader_addr: String,
    pub term: u64,
    pub commit_index: Option<u64>,
    pub members: Vec<MemberView>,
}

pub fn explain(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Unavailable { .. } => {
            anyhow::anyhow!("{e} — is `mobilus-meta` running? see `mobilusctl dev status`")
        }
        other => anyhow::Error::new(other),
    }
}

/// A client that gives up after a few seconds: an operator wants an answer, not a wait.
pub fn connect(addrs: &[String]) -> anyhow::Result<MetaClient> {
    let opts = ClientOptions {
        deadline: std::time::Duration::from_secs(5),
        rpc_timeout: std::time::Duration::from_secs(3),
        connect_timeout: std::time::Duration::from_millis(500),
        ..Default::default()
    };
    MetaClient::new(addrs, opts).context("bad --meta address")
}

pub async fn status(client: &MetaClient) -> Result<StatusView, ClientError> {
    let leader = client.status().await?;
    let mut members = Vec::new();
    for m in &leader.members {
        let mut view = MemberView {
            id: m.id,
            addr: m.addr.clone(),
            voter: m.voter,
            reachable: false,
            state: None,
            term: None,
            last_log_index: None,
            last_applied: None,
            snapshot_index: None,
            purged_index: None,
            lag: match (leader.last_log_index, m.matched_index) {
                (Some(last), Some(matched)) => Some(last.saturating_sub(matched)),
                (Some(last), None) if m.id != leader.id => Some(last),
                _ => None,
            },
            error: None,
        };
        if m.id == leader.id {
            view.lag = Some(0);
        }
        match client.status_of(&m.addr).await {
            Ok(s) => {
                view.reachable = true;
                view.state = Some(s.state);
                view.term = Some(s.term);
                view.last_log_index = s.last_log_index;
                view.last_applied = s.last_applied;
                view.snapshot_index = s.snapshot_index;
                view.purged_index = s.purged_index;
            }
            Err(e) => view.error = Some(e.to_string()),
        }
        members.push(view);
    }
    Ok(StatusView {
        leader_id: Some(leader.id),
        leader_addr: leader.addr,
        term: leader.term,
        commit_index: leader.last_applied,
        members,
    })
}

fn render(s: &StatusView) -> comfy_table::Table {
    let mut t = table(&[
        "ID", "ADDRESS", "ROLE", "STATE", "TERM", "LAST LOG", "APPLIED", "SNAPSHOT", "LAG",
    ]);
    for m in &s.members {
        let state = m.state.clone().unwrap_or_else(|| "unreachable".into());
        let leader = if Some(m.id) == s.leader_id { " *" } else { "" };
        t.add_row(vec![
            format!("{}{leader}", m.id),
            m.addr.clone(),
            if m.voter { "voter" } else { "learner" }.to_string(),
            state,
            opt(m.term),
            opt(m.last_log_index),
            opt(m.last_applied),
            opt(m.snapshot_index),
            opt(m.lag),
        ]);
    }
    t
}

/// Initialise `addrs[0]`, then join the others as voters.
async fn init(client: &MetaClient, addrs: &[String]) -> anyhow::Result<()> {
    let Some(first) = addrs.first() else {
        anyhow::bail!("give the members to initialise with --meta ADDR[,ADDR...]");
    };
    let mut ids = Vec::new();
    for addr in addrs {
        let s = client.status_of(addr).await.map_err(explain)?;
        if s.members.iter().any(|m| m.id == s.id) {
            anyhow::bail!(
                "member {} at {addr} is already part of a cluster (term {}); \
                 see `mobilusctl cluster status`",
                s.id,
                s.term
            );
        }
        if ids.contains(&s.id) {
            anyhow::bail!("two members have id {}: each needs its own --id", s.id);
        }
        ids.push(s.id);
    }
    client
        .init()
        .await
        .map_err(explain)
        .with_context(|| format!("initialising {first}"))?;
    for (addr, id) in addrs.iter().zip(&ids).skip(1) {
        client
            .add_learner(*id, addr)
            .await
            .map_err(explain)
            .with_context(|| format!("adding member {id} at {addr}"))?;
        client
            .promote(*id)
            .await
            .map_err(explain)
            .with_context(|| format!("making member {id} a voter"))?;
    }
    Ok(())
}

pub async fn run(cmd: ClusterCmd, addrs: &[String], format: OutputFormat) -> anyhow::Result<()> {
    let client = connect(addrs)?;
    match cmd {
        ClusterCmd::Status => {
            let view = status(&client).await.map_err(explain)?;
            emit(format, &view, render)
        }
        ClusterCmd::Init => {
            init(&client, addrs).await?;
            let view = status(&client).await.map_err(explain)?;
            emit(format, &view, render)
        }
        ClusterCmd::Snapshot => {
            let s = client.trigger_snapshot().await.map_err(explain)?;
            match format {
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::json!({"member": s.id, "last_applied": s.last_applied})
                ),
                OutputFormat::Table => println!(
                    "snapshot requested on member {} (last applied {})",
                    s.id,
                    opt(s.last_applied)
                ),
            }
            Ok(())
        }
        ClusterCmd::Members(m) => {
            let s = match m {
                MembersCmd::Add { id, addr } => client.add_learner(id, &addr).await,
                MembersCmd::Promote { id } => client.promote(id).await,
                MembersCmd::Remove { id } => client.remove_member(id).await,
            }
            .map_err(explain)?;
            // On stderr: stdout carries only the status (parseable with --output json).
            eprintln!("membership changed; {} members now", s.members.len());
            let view = status(&client).await.map_err(explain)?;
            emit(format, &view, render)
        }
    }
}
