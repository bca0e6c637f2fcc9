//! A Mobilus cluster on namespaced hosts: three metadata members spread over the sites,
//! a data node per site, and a client host per site. Processes can be killed, restarted,
//! paused and resumed; dropping the cluster kills them all and tears the network down.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mobilus_meta_client::{ClientOptions, MetaClient};
use mobilus_tls::pki::DevPki;
use mobilus_tls::Role as TlsRole;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::link::{LinkEmulator, BASE_PORT};
use crate::net::{Host, Net, NetError};

/// Port of every metadata member and data node (each host has its own address).
pub const META_PORT: u16 = 7100;
pub const DATA_PORT: u16 = 7200;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("{0} is missing: build the workspace first (`cargo build --workspace --bins`)")]
    MissingBinary(PathBuf),
    #[error("cannot start {what}: {why}")]
    Start { what: String, why: String },
    #[error("the cluster did not become healthy within {0:?}: {1}")]
    Unhealthy(Duration, String),
}

/// Deliberate bugs the servers can be started with (hidden flags of `mobilus-meta` and
/// `mobilus-data`), so a run can show that its checkers catch them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Bugs {
    /// Reads without a read index, on any member (`--unsafe-local-reads`).
    pub local_reads: bool,
    /// A read lease of this length, past the election timeout (`--unsafe-read-lease-ms`).
    pub read_lease_ms: Option<u64>,
    /// Any site may change any subtree (`--unsafe-no-ownership-check`).
    pub no_ownership_check: bool,
    /// Any mount may change a delegated subtree without recalling the delegation
    /// (`--unsafe-no-delegation-check`).
    pub no_delegation_check: bool,
    /// A delegation holder's read at a member answers from whatever that member has
    /// applied (`--unsafe-holder-reads-ignore-applied`).
    pub holder_reads_ignore_applied: bool,
    /// Data nodes: replication takes fetches that failed as done
    /// (`--unsafe-skip-failed-fetches`).
    pub skip_failed_fetches: bool,
    /// A mount's claimed site is believed over its certificate's
    /// (`--unsafe-no-site-binding`).
    pub no_site_binding: bool,
}

impl Bugs {
    /// The data-node flags that switch them on.
    pub fn data_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.skip_failed_fetches {
            args.push("--unsafe-skip-failed-fetches".to_string());
        }
        args
    }

    /// The member flags that switch them on.
    pub fn meta_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.local_reads {
            args.push("--unsafe-local-reads".to_string());
        }
        if let Some(ms) = self.read_lease_ms {
            args.extend(["--unsafe-read-lease-ms".to_string(), ms.to_string()]);
        }
        if self.no_ownership_check {
            args.push("--unsafe-no-ownership-check".to_string());
        }
        if self.no_delegation_check {
            args.push("--unsafe-no-delegation-check".to_string());
        }
        if self.holder_reads_ignore_applied {
            args.push("--unsafe-holder-reads-ignore-applied".to_string());
        }
        if self.no_site_binding {
            args.push("--unsafe-no-site-binding".to_string());
        }
        args
    }
}

#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Where `mobilus-meta` and `mobilus-data` are.
    pub bin_dir: PathBuf,
    /// Data folders and logs.
    pub dir: PathBuf,
    pub sites: Vec<String>,
    /// Deliberate bugs, to show the checkers catch them.
    pub bugs: Bugs,
    /// Route traffic between sites through the link emulator.
    pub link_emulator: bool,
    /// A second client host (`c2-<site>`) at each of these sites.
    pub second_clients: Vec<String>,
}

/// The role of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Meta { id: u64 },
    Data { site: String },
}

/// A server process on a host.
pub struct Proc {
    pub role: Role,
    pub host: usize,
    pub addr: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Proc {
    pub fn name(&self) -> String {
        match &self.role {
            Role::Meta { id } => format!("meta-{id}"),
            Role::Data { site } => format!("data-{site}"),
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }
}

pub struct Cluster {
    pub net: Net,
    pub procs: Vec<Proc>,
    pub spec: ClusterSpec,
    /// With `spec.link_emulator`: the proxies between sites.
    pub link: Option<LinkEmulator>,
    /// The ownership workload's subtree and its moves.
    pub owned: Option<crate::ownership::Owned>,
    /// The FUSE mounts of the workers that run one: their host and process.
    pub mounts: Vec<MountProc>,
    /// Faults the `mount` nemesis has started (it alternates pauses and cuts).
    pub mount_faults: usize,
    /// The delegation workload's writer turns (their start and length): the mount whose
    /// turn it is writes, and most likely holds the delegation.
    pub writer_turns: Option<(Instant, Duration)>,
    /// The run's CA (`DIR/tls`) and the certificate of every process: the cluster runs
    /// on mutual TLS, each process with its role and site.
    pub pki: Arc<DevPki>,
}

/// A worker's FUSE mount, which the `mount` nemesis pauses or cuts off.
#[derive(Clone, Copy, Debug)]
pub struct MountProc {
    pub host: usize,
    pub pid: u32,
}

impl Cluster {
    /// The mount whose writer turn it is, if the workload takes turns.
    pub fn writing_mount(&self) -> Option<usize> {
        let (start, turn) = self.writer_turns?;
        let n = self.mounts.len() as u64;
        (n > 0).then(|| ((start.elapsed().as_secs() / turn.as_secs().max(1)) % n) as usize)
    }
}

impl MountProc {
    fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.pid as i32), signal);
    }

    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }
}

/// Whether a host (by name) runs clients.
pub fn is_client_host(name: &str) -> bool {
    name.starts_with("c-") || name.starts_with("c2-")
}

fn binary(dir: &Path, name: &str) -> Result<PathBuf, ClusterError> {
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(ClusterError::MissingBinary(p))
    }
}

impl Cluster {
    /// Hosts: `m1..m3` (metadata, one per site round-robin), `d-<site>` (data) and
    /// `c-<site>` (clients) per site, and `c2-<site>` at the sites of `second_clients`.
    pub async fn start(spec: ClusterSpec) -> Result<Cluster, ClusterError> {
        let meta_bin = binary(&spec.bin_dir, "mobilus-meta")?;
        let data_bin = binary(&spec.bin_dir, "mobilus-data")?;
        let mut hosts: Vec<(String, String)> = Vec::new();
        for i in 0..3 {
            let site = spec.sites[i % spec.sites.len()].clone();
            hosts.push((format!("m{}", i + 1), site));
        }
        for site in &spec.sites {
            hosts.push((format!("d-{site}"), site.clone()));
        }
        for site in &spec.sites {
            hosts.push((format!("c-{site}"), site.clone()));
        }
        for site in &spec.second_clients {
            hosts.push((format!("c2-{site}"), site.clone()));
        }
        let refs: Vec<(&str, &str)> = hosts
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let net = tokio::task::block_in_place(|| Net::create(&refs))?;
        clear_earlier_cluster(&spec.dir)?;
        std::fs::create_dir_all(&spec.dir).map_err(|e| ClusterError::Start {
            what: spec.dir.display().to_string(),
            why: e.to_string(),
        })?;
        let tls_err = |e: mobilus_tls::TlsError| ClusterError::Start {
            what: "the cluster's certificates".into(),
            why: e.to_string(),
        };
        let pki = DevPki::open(&spec.dir.join("tls")).map_err(tls_err)?;
        // The harness itself (its checks, the nemesis) speaks as the operator.
        let admin = pki.config(TlsRole::Admin, None, "admin").map_err(tls_err)?;
        mobilus_tls::client::set_process_default(Some(Arc::new(admin)));
        let mut cluster = Cluster {
            pki: Arc::new(pki),
            net,
            procs: Vec::new(),
            spec: spec.clone(),
            link: None,
            owned: None,
            mounts: Vec::new(),
            mount_faults: 0,
            writer_turns: None,
        };
        let seed = format!("{}:{META_PORT}", cluster.net.hosts[0].ip);
        for i in 0..3 {
            let id = i as u64 + 1;
            let h = &cluster.net.hosts[i];
            let addr = format!("{}:{META_PORT}", h.ip);
            let mut args = cluster.tls_flags(TlsRole::Meta, None, &format!("meta-{id}"))?;
            args.extend([
                "--id".into(),
                id.to_string(),
                "--listen".into(),
                addr.clone(),
                "--data-dir".into(),
                spec.dir.join(format!("meta-{id}")).display().to_string(),
            ]);
            if i == 0 {
                args.push("--init".into());
            } else {
                args.extend(["--join".into(), seed.clone()]);
            }
            args.extend(spec.bugs.meta_args());
            cluster.procs.push(Proc {
                role: Role::Meta { id },
                host: i,
                addr,
                program: meta_bin.clone(),
                args,
                log: spec.dir.join(format!("meta-{id}.log")),
                child: None,
                paused: false,
            });
        }
        let metas = cluster.meta_addrs().join(",");
        for (j, site) in spec.sites.iter().enumerate() {
            let host = 3 + j;
            let addr = format!("{}:{DATA_PORT}", cluster.net.hosts[host].ip);
            let mut args = cluster.tls_flags(TlsRole::Data, Some(site), &format!("data-{site}"))?;
            args.extend([
                "--site".into(),
                site.clone(),
                "--listen".into(),
                addr.clone(),
                "--data-dir".into(),
                spec.dir.join(format!("data-{site}")).display().to_string(),
                "--meta".into(),
                metas.clone(),
                "--heartbeat-ms".into(),
                "500".into(),
                // Replication catches up within a second of a fault's end.
                "--follow-interval-ms".into(),
                "500".into(),
                // A partition stalls a fetch; give up on it soon and try again.
                "--replication-fetch-timeout-ms".into(),
                "2000".into(),
                "--replication-bandwidth".into(),
                "1gbit".into(),
                // A nearly full disk on the test machine is not the cluster's space pressure.
                "--cache-min-free-percent".into(),
                "0".into(),
            ]);
            args.extend(spec.bugs.data_args());
            cluster.procs.push(Proc {
                role: Role::Data { site: site.clone() },
                host,
                addr,
                program: data_bin.clone(),
                args,
                log: spec.dir.join(format!("data-{site}.log")),
                child: None,
                paused: false,
            });
        }
        if spec.link_emulator {
            cluster.start_link_emulator().await?;
        }
        for i in 0..cluster.procs.len() {
            cluster.spawn(i)?;
        }
        Ok(cluster)
    }

    /// Proxy every connection to a server of another site (before anything connects:
    /// connections made earlier would keep going direct).
    async fn start_link_emulator(&mut self) -> Result<(), ClusterError> {
        let targets: Vec<(usize, std::net::SocketAddr)> = self
            .procs
            .iter()
            .filter_map(|p| Some((p.host, p.addr.parse().ok()?)))
            .collect();
        let emulator = LinkEmulator::start(self.net.gateway(), &targets)
            .await
            .map_err(|e| ClusterError::Start {
                what: "the link emulator".into(),
                why: e.to_string(),
            })?;
        for from in 0..self.net.hosts.len() {
            for (to, addr) in &targets {
                if self.net.hosts[from].site == self.net.hosts[*to].site {
                    continue;
                }
                let ip = match addr.ip() {
                    std::net::IpAddr::V4(ip) => ip,
                    std::net::IpAddr::V6(_) => continue,
                };
                self.net
                    .redirect(from, ip, addr.port(), BASE_PORT + *to as u16)?;
            }
        }
        self.link = Some(emulator);
        Ok(())
    }

    /// Partition the hosts into `groups` (see `Net::partition`), proxied links included.
    pub fn partition(&self, groups: &[Vec<usize>]) -> Result<(), ClusterError> {
        self.net.partition(groups)?;
        if let Some(link) = &self.link {
            let n = self.net.hosts.len();
            let group_of = |i: usize| groups.iter().position(|g| g.contains(&i));
            let mut pairs = Vec::new();
            for a in 0..n {
                for b in 0..n {
                    if a != b && (group_of(a).is_none() || group_of(a) != group_of(b)) {
                        pairs.push((self.net.hosts[a].ip, self.net.hosts[b].ip));
                    }
                }
            }
            link.set_cut(pairs);
        }
        Ok(())
    }

    /// Cut the link between hosts `a` and `b` only (after healing everything else).
    pub fn cut(&self, a: usize, b: usize) -> Result<(), ClusterError> {
        self.heal_net()?;
        self.net.cut(a, b)?;
        if let Some(link) = &self.link {
            link.set_cut([(self.net.hosts[a].ip, self.net.hosts[b].ip)]);
        }
        Ok(())
    }

    /// Remove every partition.
    pub fn heal_net(&self) -> Result<(), ClusterError> {
        self.net.heal()?;
        if let Some(link) = &self.link {
            link.set_cut([]);
        }
        Ok(())
    }

    /// Addresses of the metadata members.
    pub fn meta_addrs(&self) -> Vec<String> {
        self.procs
            .iter()
            .filter(|p| matches!(p.role, Role::Meta { .. }))
            .map(|p| p.addr.clone())
            .collect()
    }

    /// The client hosts: one per site, and the second ones.
    pub fn client_hosts(&self) -> Vec<&Host> {
        self.net
            .hosts
            .iter()
            .filter(|h| is_client_host(&h.name))
            .collect()
    }

    fn spawn(&mut self, i: usize) -> Result<(), ClusterError> {
        let p = &self.procs[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .map_err(|e| ClusterError::Start {
                what: p.name(),
                why: e.to_string(),
            })?;
        let child = self
            .net
            .command(&self.net.hosts[p.host], &p.program)
            .args(&p.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| ClusterError::Start {
                what: p.name(),
                why: e.to_string(),
            })?;
        let p = &mut self.procs[i];
        p.child = Some(child);
        p.paused = false;
        Ok(())
    }

    /// Wait until a leader sees every metadata member as a reachable voter.
    pub async fn wait_healthy(&self, within: Duration) -> Result<(), ClusterError> {
        let client = self.admin_client()?;
        let deadline = Instant::now() + within;
        let mut last;
        loop {
            match client.status().await {
                Ok(s) => {
                    let voters = s.members.iter().filter(|m| m.voter).count();
                    let behind = s.members.iter().filter(|m| {
                        m.id != s.id
                            && m.matched_index.unwrap_or(0) + 10 < s.last_log_index.unwrap_or(0)
                    });
                    if voters == 3 && behind.count() == 0 {
                        return Ok(());
                    }
                    last = format!("{voters} voters");
                }
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                return Err(ClusterError::Unhealthy(within, last));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The flags (`--ca --cert --key`) of the certificate `name` of `role` at `site`,
    /// issued by the run's CA if it is new.
    pub fn tls_flags(
        &self,
        role: TlsRole,
        site: Option<&str>,
        name: &str,
    ) -> Result<Vec<String>, ClusterError> {
        self.pki
            .flags(role, site, name)
            .map_err(|e| ClusterError::Start {
                what: format!("the certificate of {name}"),
                why: e.to_string(),
            })
    }

    /// A metadata client for the harness itself (from outside every namespace).
    pub fn admin_client(&self) -> Result<MetaClient, ClusterError> {
        let opts = ClientOptions {
            deadline: Duration::from_secs(10),
            rpc_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_millis(500),
            ..Default::default()
        };
        MetaClient::new(&self.meta_addrs(), opts).map_err(|e| ClusterError::Start {
            what: "a metadata client".into(),
            why: e.to_string(),
        })
    }

    /// SIGKILL process `i` (a no-op if it is not running).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.procs[i].paused = false;
    }

    /// Start process `i` again on its data (a no-op if it is running).
    pub fn restart(&mut self, i: usize) -> Result<(), ClusterError> {
        if self.procs[i].is_running() {
            return Ok(());
        }
        self.spawn(i)
    }

    pub fn pause(&mut self, i: usize) {
        if let Some(pid) = self.procs[i].pid() {
            if kill(pid, Signal::SIGSTOP).is_ok() {
                self.procs[i].paused = true;
            }
        }
    }

    pub fn resume(&mut self, i: usize) {
        if let Some(pid) = self.procs[i].pid() {
            let _ = kill(pid, Signal::SIGCONT);
        }
        self.procs[i].paused = false;
    }

    /// Undo every fault: heal the network, resume paused processes, restart dead ones.
    pub fn heal_all(&mut self) -> Result<(), ClusterError> {
        self.heal_net()?;
        for m in &self.mounts {
            m.resume();
        }
        if let Some(link) = &self.link {
            link.set_shape(crate::link::LinkShape::default());
        }
        for i in 0..self.procs.len() {
            if self.procs[i].paused {
                self.resume(i);
            }
            self.restart(i)?;
        }
        Ok(())
    }

    /// Kill every process (then the network goes with `Net`'s drop).
    pub fn stop(&mut self) {
        for i in 0..self.procs.len() {
            self.resume(i);
            self.kill(i);
        }
        self.net.teardown();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Remove the cluster an earlier run left in `dir` (a rerun of one seed uses the same
/// folder; members started on its data would not form the new cluster). A mount a killed
/// run left behind is detached first, so nothing beneath it is touched.
fn clear_earlier_cluster(dir: &Path) -> Result<(), ClusterError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_mount_dir = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("mnt-"));
        if is_mount_dir {
            // EINVAL: not mounted, nothing to detach.
            let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    std::fs::remove_dir_all(dir).map_err(|e| ClusterError::Start {
        what: format!("the cluster in {}", dir.display()),
        why: format!("removing an earlier run's: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rerun into the same folder starts from nothing: the earlier cluster's files go,
    /// and a mount it left (a tmpfs here) is detached first.
    #[test]
    fn an_earlier_runs_cluster_is_cleared_and_its_mounts_detached() {
        let out = tempfile::tempdir().unwrap();
        let cluster = out.path().join("cluster");
        let (data, mnt) = (cluster.join("meta-1/data"), cluster.join("mnt-c-site-a"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("CURRENT"), b"x").unwrap();
        std::fs::create_dir_all(&mnt).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &mnt,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        clear_earlier_cluster(&cluster).unwrap();
        assert!(!cluster.exists());
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(!mounts.contains(&mnt.display().to_string()));
        // Nothing there: nothing to do.
        clear_earlier_cluster(&cluster).unwrap();
    }
}
