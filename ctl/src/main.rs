//! `mobilusctl`: administration of a Mobilus cluster, and the local dev cluster.
//!
//! Exit codes: 0 success, 1 the operation failed, 2 bad usage.

mod cert;
mod clone;
mod cluster;
mod demo;
mod demo_move;
mod demo_pg;
mod dev;
mod devconfig;
mod drain;
mod fsck;
mod nodes;
mod output;
mod plot;
mod profile;
mod replication;
mod snapshot;
mod subtree;
mod wan;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use output::OutputFormat;

/// Operate a Mobilus cluster.
#[derive(Parser, Debug)]
#[command(name = "mobilusctl", version)]
struct Cli {
    /// Metadata members to talk to (host:port, comma separated). Given before the
    /// subcommand: `mobilusctl --meta 127.0.0.1:7100 cluster status`.
    #[arg(long, env = "MOBILUS_META", value_delimiter = ',')]
    meta: Vec<String>,
    /// A cluster file written by `dev up` (its metadata addresses are used).
    #[arg(long, global = true, env = "MOBILUS_CONFIG")]
    config: Option<std::path::PathBuf>,
    #[command(flatten)]
    tls: mobilus_tls::TlsArgs,
    /// Human tables or JSON for scripts.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The cluster's CA and certificates.
    #[command(subcommand)]
    Cert(cert::CertCmd),
    /// The metadata cluster: status and membership.
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// A local cluster of real processes under one folder.
    #[command(subcommand)]
    Dev(dev::DevCmd),
    /// Data nodes, from the site registry.
    #[command(subcommand)]
    Node(nodes::NodeCmd),
    /// Sites and their space.
    #[command(subcommand)]
    Site(nodes::SiteCmd),
    /// Subtrees: units of ownership, each changed by one site; move them between sites.
    #[command(subcommand)]
    Subtree(subtree::SubtreeCmd),
    /// Where each subtree's data is, per site, and what is still to fetch.
    #[command(subcommand)]
    Replication(replication::ReplicationCmd),
    /// Copy a subtree into a new one by its metadata alone: no data is copied, and
    /// either side's later writes never change the other. The source is frozen (its
    /// writers wait) until the copy is published whole.
    Clone(clone::CloneArgs),
    /// Snapshots of a subtree: read-only copies by metadata alone, at PATH/.snapshots/NAME.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCmd),
    /// Delete chunks no file references (after the data nodes' grace period), on every
    /// data node now.
    Gc {
        /// Only count what would be collected.
        #[arg(long)]
        dry_run: bool,
        /// Only on this site's data nodes.
        #[arg(long)]
        site: Option<String>,
    },
    /// Check the file system: the tree is well formed, reference counts equal the
    /// references, and every referenced chunk has an intact copy at some site (each is
    /// read back and hashed). Exit 1 if anything is wrong.
    Fsck,
    /// Print a shell completion script: `source <(mobilusctl completions bash)`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mobilusctl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        // The cluster, for the commands that talk to one: its members, and how every
        // client of this process (metadata, data nodes) dials them.
        let addrs = if matches!(
            cli.command,
            Command::Dev(_) | Command::Cert(_) | Command::Completions { .. }
        ) {
            Vec::new()
        } else {
            let addrs = devconfig::resolve_meta(&cli.meta, cli.config.as_deref())?;
            let tls = devconfig::resolve_tls(&cli.tls, cli.config.as_deref())?;
            mobilus_tls::client::set_process_default(tls);
            addrs
        };
        match cli.command {
            Command::Cert(cmd) => cert::run(cmd),
            Command::Cluster(cmd) => cluster::run(cmd, &addrs, cli.output).await,
            Command::Dev(cmd) => dev::run(cmd, cli.output).await,
            Command::Completions { shell } => {
                use clap::CommandFactory;
                let mut cmd = Cli::command();
                clap_complete::generate(shell, &mut cmd, "mobilusctl", &mut std::io::stdout());
                Ok(())
            }
            Command::Node(cmd) => nodes::node(cmd, &cluster::connect(&addrs)?, cli.output).await,
            Command::Site(cmd) => nodes::site(cmd, &cluster::connect(&addrs)?, cli.output).await,
            Command::Subtree(cmd) => {
                subtree::run(cmd, &cluster::connect(&addrs)?, cli.output).await
            }
            Command::Replication(cmd) => {
                replication::run(cmd, &cluster::connect(&addrs)?, cli.output).await
            }
            Command::Clone(args) => clone::run(args, &cluster::connect(&addrs)?, cli.output).await,
            Command::Snapshot(cmd) => {
                snapshot::run(cmd, &cluster::connect(&addrs)?, cli.output).await
            }
            Command::Gc { dry_run, site } => {
                let client = cluster::connect(&addrs)?;
                nodes::gc(&client, site.as_deref(), dry_run, cli.output).await
            }
            Command::Fsck => fsck::fsck(&cluster::connect(&addrs)?, cli.output).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mobilusctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
