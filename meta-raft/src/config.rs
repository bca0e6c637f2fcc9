//! Configuration of a member: a TOML file, overridden by command-line flags.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Settings as read from a TOML file; every key is optional.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub id: Option<u64>,
    pub listen: Option<String>,
    pub advertise: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub join: Option<Vec<String>>,
    pub init: Option<bool>,
    pub snapshot_logs: Option<u64>,
    pub keep_logs: Option<u64>,
    pub heartbeat_ms: Option<u64>,
    /// Serve linearizable reads under the leader's lease (default true).
    pub lease_reads: Option<bool>,
    pub log_format: Option<String>,
    /// Request bytes the member holds in memory at once, in MiB (default 1024).
    pub request_buffer_mib: Option<u64>,
}

/// The resolved settings of a member.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: u64,
    pub listen: String,
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    pub join: Vec<String>,
    pub init: bool,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_logs: u64,
    /// Entries kept in the log behind a snapshot, for lagging followers.
    pub keep_logs: u64,
    pub heartbeat_ms: u64,
    /// Linearizable reads skip the read-index round while the leader's lease holds
    /// (`server/read_index.rs`); off, every read takes a (batched) round.
    pub lease_reads: bool,
    /// Bytes of client requests the member holds in memory at once, over all connections
    /// (`mobilus_tls::budget`); Raft's messages, from members, are not counted.
    pub request_buffer_bytes: usize,
    /// TEST ONLY (`--unsafe-read-lease-ms`): a read lease of this length, however it
    /// compares with the election timeout. A deliberate bug when longer, so the Jepsen
    /// harness can show it catches a lease that outlives the leadership it stands for.
    pub unsafe_read_lease_ms: Option<u64>,
    /// TEST ONLY (`--unsafe-local-reads`): serve "linearizable" reads from local state
    /// on any member, without a read index. A deliberate bug, so the Jepsen harness can
    /// show it catches stale reads.
    pub unsafe_local_reads: bool,
    /// Mutual TLS for the member's server and its Raft traffic (`None`: `--insecure`).
    pub tls: Option<std::sync::Arc<mobilus_tls::TlsConfig>>,
}

/// Errors of configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("config file {0}: {1}")]
    Parse(PathBuf, toml::de::Error),
    #[error("missing setting `{0}` (give --{1} or set it in the config file)")]
    Missing(&'static str, &'static str),
    #[error("invalid setting `{0}`: {1}")]
    Invalid(&'static str, String),
}

impl NodeConfig {
    /// openraft's `leader_lease`: a follower refuses votes this long after it last heard
    /// from the leader. (`election_timeout_max`, as `raft_config` sets it.)
    pub fn leader_lease(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.heartbeat_ms * 10)
    }

    /// How long after a confirmed round the leader serves reads without another: 3/4
    /// of the leader lease, or `None` without lease reads.
    pub fn read_lease(&self) -> Option<std::time::Duration> {
        if let Some(ms) = self.unsafe_read_lease_ms {
            return Some(std::time::Duration::from_millis(ms));
        }
        self.lease_reads.then(|| self.leader_lease() * 3 / 4)
    }
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse(path.into(), e))
    }

    /// Fill in defaults and check the values.
    pub fn resolve(self) -> Result<NodeConfig, ConfigError> {
        let id = self.id.ok_or(ConfigError::Missing("id", "id"))?;
        if id == 0 {
            return Err(ConfigError::Invalid(
                "id",
                "0 is reserved; use 1 or more".into(),
            ));
        }
        let data_dir = self
            .data_dir
            .ok_or(ConfigError::Missing("data_dir", "data-dir"))?;
        let heartbeat_ms = self.heartbeat_ms.unwrap_or(100);
        if !(10..=10_000).contains(&heartbeat_ms) {
            return Err(ConfigError::Invalid(
                "heartbeat_ms",
                format!("{heartbeat_ms} is not in 10..=10000"),
            ));
        }
        let snapshot_logs = self.snapshot_logs.unwrap_or(10_000);
        if snapshot_logs == 0 {
            return Err(ConfigError::Invalid(
                "snapshot_logs",
                "must be at least 1".into(),
            ));
        }
        let request_buffer_mib = self.request_buffer_mib.unwrap_or(1024);
        if !(16..=1 << 20).contains(&request_buffer_mib) {
            return Err(ConfigError::Invalid(
                "request_buffer_mib",
                format!("{request_buffer_mib} is not in 16..=1048576"),
            ));
        }
        Ok(NodeConfig {
            id,
            listen: self.listen.unwrap_or_else(|| "127.0.0.1:7100".into()),
            advertise: self.advertise,
            data_dir,
            join: self.join.unwrap_or_default(),
            init: self.init.unwrap_or(false),
            snapshot_logs,
            keep_logs: self.keep_logs.unwrap_or(1000),
            heartbeat_ms,
            lease_reads: self.lease_reads.unwrap_or(true),
            request_buffer_bytes: (request_buffer_mib as usize) << 20,
            unsafe_read_lease_ms: None,
            unsafe_local_reads: false,
            tls: None,
        })
    }
}
