//! `mobilusctl subtree profile PATH [show|record|clear]`: a subtree's access profile, the
//! blocks an application read first when it last started (a site the subtree moves to
//! fetches their chunks before the rest).

use clap::{Args, ValueEnum};
use mobilus_meta_client::MetaClient;
use mobilus_proto::fs::Profile;
use serde::Serialize;

use crate::cluster::explain;
use crate::output::{emit, table, OutputFormat};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileAction {
    /// Show what it holds.
    Show,
    /// Forget it and record the next start (at any site) anew.
    Record,
    /// Forget it and record none until `record`.
    Clear,
}

/// `subtree profile PATH [ACTION]`.
#[derive(Args, Debug)]
pub struct ProfileArgs {
    pub path: String,
    #[arg(value_enum, default_value = "show")]
    pub action: ProfileAction,
}

/// A profile, as `--output json` reports it.
#[derive(Serialize, Debug)]
pub struct ProfileView {
    pub root: u64,
    /// The next start records it anew.
    pub recording: bool,
    /// Where and when (log time, ns) it was recorded; empty and 0 if never.
    pub site: String,
    pub recorded_ns: i64,
    pub chunks: usize,
    /// In the order they were read: chunk (hex), first block, blocks.
    pub reads: Vec<(String, u32, u32)>,
}

fn view(p: &Profile) -> ProfileView {
    ProfileView {
        root: p.root,
        recording: p.record,
        site: p.site.clone(),
        recorded_ns: p.recorded_ns,
        chunks: p.chunks().len(),
        reads: p
            .reads
            .iter()
            .map(|r| (r.hash.to_hex(), r.first_block, r.blocks))
            .collect(),
    }
}

/// Most reads a table shows (JSON has them all).
const SHOWN: usize = 40;

pub async fn profile(
    args: ProfileArgs,
    client: &MetaClient,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let s = crate::subtree::subtree_at(client, &args.path).await?;
    let p = match args.action {
        ProfileAction::Show => client.profile(s.root, false).await,
        ProfileAction::Record => client.arm_profile(s.root, true).await,
        ProfileAction::Clear => client.arm_profile(s.root, false).await,
    }
    .map_err(explain)?;
    if format == OutputFormat::Table {
        let state = match (p.reads.is_empty(), p.record) {
            (true, true) => "none yet: the next start records it".to_string(),
            (true, false) => "none, and none recorded (`record` to record the next start)".into(),
            (false, _) => format!(
                "{} reads of {} chunks, recorded at {}",
                p.reads.len(),
                p.chunks().len(),
                p.site
            ),
        };
        println!("{}: {state}", args.path);
        if p.reads.is_empty() {
            return Ok(());
        }
    }
    emit(format, &view(&p), |v| {
        let mut t = table(&["#", "CHUNK", "FIRST BLOCK", "BLOCKS"]);
        for (i, (hash, first, blocks)) in v.reads.iter().take(SHOWN).enumerate() {
            t.add_row(vec![
                (i + 1).to_string(),
                hash[..16].to_string(),
                first.to_string(),
                blocks.to_string(),
            ]);
        }
        if v.reads.len() > SHOWN {
            t.add_row(vec![
                "...".to_string(),
                format!("{} more", v.reads.len() - SHOWN),
                String::new(),
                String::new(),
            ]);
        }
        t
    })
}
