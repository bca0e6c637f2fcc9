//! One test run: start the cluster on namespaced hosts, start a worker per client host,
//! drive `concurrency` client processes with a workload's operations while the nemesis
//! injects faults, then heal, read the final state, record everything, and check it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::{oneshot, Mutex};

use crate::checker::durability::DurabilityReport;
use crate::checker::ownership::OwnershipReport;
use crate::checker::{self, set::SetReport, CheckReport, ModelKind, Verdict};
use crate::cluster::{Bugs, Cluster, ClusterSpec};
use crate::history::{Event, EventType, History, Process};
use crate::nemesis::{self, NemesisKind};
use crate::worker::{Request, Response};
use mobilus_tls::Role as TlsRole;

/// What the clients do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Independent CAS registers (an xattr per file): read, write, compare-and-set.
    Register,
    /// Unique file creates in one directory, and listings.
    Set,
    /// Files written with fsync through real FUSE mounts (one per site), read back
    /// byte-exact at the other site after the faults heal and every server restarts.
    Durability,
    /// CAS registers in a subtree owned by one site at a time, written by clients of
    /// both sites while the `move` and `takeover` nemeses change its owner: linearizable,
    /// and no change acknowledged from a site that did not own it.
    Ownership,
    /// Registers as small files of a subtree owned by the first site, read through two
    /// FUSE mounts of that site on two hosts and written through one of them at a time,
    /// in turns ([`WRITER_TURN`]): the writer takes the subtree's delegation and serves
    /// the subtree from its cache, and the other's first write of its turn recalls it. Checked for linearizability with reads allowed to be as stale as the
    /// kernel's cache lifetime of a mount without the delegation ([`STALENESS_BOUND`]),
    /// and for every acknowledged write by reads after the faults heal. The `mount`
    /// nemesis pauses a mount or cuts its host off.
    Delegation,
    /// The durability workload's files in a subtree owned by the first site and followed
    /// eagerly by the second (its placement), written at the first site only. After the
    /// faults heal, the second site must catch up, then serve every acknowledged file
    /// with the first site's data node dead, and nothing may have crossed twice
    /// ([`crate::replication`]). The `sites` nemesis splits the sites, or cuts only their
    /// data nodes apart.
    Replication,
}

/// How stale a read through a mount that holds no delegation may be: the kernel keeps
/// its entries and attributes for 1 s (the mount's TTL), and the answer takes a moment
/// to reach it. A holder's cache may never be staler than this: a write by another mount
/// recalls it first.
pub const STALENESS_BOUND: Duration = Duration::from_millis(2000);

/// The delegation workload writes through one mount at a time, in turns of this long
/// (the other mount reads): long enough for the writer to take the delegation once the
/// hold after a recall (5 s) ends, and hold it for a while; each turn's first write by
/// the other mount recalls it.
pub const WRITER_TURN: Duration = Duration::from_secs(9);

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub workload: Workload,
    pub nemeses: Vec<NemesisKind>,
    pub time_limit: Duration,
    pub concurrency: usize,
    pub seed: u64,
    pub out: PathBuf,
    pub bin_dir: PathBuf,
    /// Deliberate bugs to start the metadata members with.
    pub bugs: Bugs,
    /// Mean gap between faults, and how long each lasts.
    pub nemesis_interval: Duration,
    pub op_timeout: Duration,
    pub check_budget: Duration,
    /// The ownership workload: a client host of site-b whose worker claims site-a.
    pub forging_client: bool,
}

/// Counts of operations by outcome.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OpCounts {
    pub invoked: usize,
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
}

/// `results.json` of a run.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub workload: Workload,
    pub nemeses: Vec<NemesisKind>,
    pub seed: u64,
    pub time_limit_s: u64,
    pub concurrency: usize,
    pub unsafe_local_reads: bool,
    #[serde(default)]
    pub unsafe_read_lease_ms: Option<u64>,
    pub operations: OpCounts,
    /// Faults injected: what, and when (ns since start) they started and stopped.
    pub faults: Vec<FaultWindow>,
    pub valid: bool,
    pub register: Option<CheckReport>,
    pub set: Option<SetReport>,
    pub durability: Option<DurabilityReport>,
    /// The replication workload: caught up, and nothing sent twice.
    #[serde(default)]
    pub replication: Option<crate::replication::ReplicationReport>,
    pub ownership: Option<OwnershipReport>,
    /// The delegation workload: no read older than the staleness bound.
    #[serde(default)]
    pub staleness: Option<crate::checker::staleness::StalenessReport>,
    #[serde(default)]
    pub unsafe_no_ownership_check: bool,
    #[serde(default)]
    pub unsafe_no_delegation_check: bool,
    #[serde(default)]
    pub unsafe_holder_reads_ignore_applied: bool,
    #[serde(default)]
    pub unsafe_skip_failed_fetches: bool,
    #[serde(default)]
    pub unsafe_no_site_binding: bool,
    /// A client of site-b claimed site-a in every request.
    #[serde(default)]
    pub forging_client: bool,
    /// The delegation workload: how stale a read was allowed to be.
    #[serde(default)]
    pub staleness_bound_ms: Option<u64>,
    pub wall_s: f64,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct FaultWindow {
    pub description: String,
    pub start_ns: u64,
    pub stop_ns: u64,
}

/// The history as it is recorded, with the run's clock.
pub struct Recorder {
    start: Instant,
    history: std::sync::Mutex<History>,
}

impl Recorder {
    fn new() -> Self {
        Recorder {
            start: Instant::now(),
            history: std::sync::Mutex::new(History::default()),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn record(
        &self,
        process: Process,
        kind: EventType,
        f: &str,
        key: Option<String>,
        value: Value,
        error: Option<String>,
    ) {
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.push(Event {
            index: 0,
            time_ns: self.start.elapsed().as_nanos() as u64,
            process,
            kind,
            f: f.to_string(),
            key,
            value,
            error,
        });
    }

    fn take(&self) -> History {
        std::mem::take(&mut *self.history.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A worker process in a client host, and its outstanding requests.
struct WorkerConn {
    /// The site of its client host.
    site: String,
    stdin: Mutex<ChildStdin>,
    pending: Arc<std::sync::Mutex<HashMap<u64, oneshot::Sender<Response>>>>,
    next: AtomicU64,
    _child: Child,
}

impl WorkerConn {
    fn start(
        cluster: &Cluster,
        host: usize,
        home: usize,
        op_timeout: Duration,
        mount: Option<&crate::worker::MountArgs>,
        register_dir: &str,
        claimed_site: Option<&str>,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut metas = cluster.meta_addrs();
        let n = metas.len().max(1);
        metas.rotate_left(home % n);
        if cluster.spec.bugs.local_reads {
            // Local reads are stale only at a member that lags. A worker given every
            // member goes to the leader after its first forwarded write (the
            // `x-mobilus-leader` hint) and reads there, so the bug would show only while
            // a deposed leader still answers: each worker keeps to its home member, as
            // a client given only its site's member does.
            metas.truncate(1);
        }
        let h = &cluster.net.hosts[host];
        // A worker (and its mount) holds a mount certificate of its host's site.
        let tls =
            cluster.tls_flags(TlsRole::Mount, Some(&h.site), &format!("worker-{}", h.name))?;
        let mut cmd = cluster.net.command(h, &exe);
        cmd.arg("worker")
            .args(tls)
            .arg("--meta")
            .arg(metas.join(","))
            .arg("--rpc-timeout-ms")
            .arg(op_timeout.as_millis().to_string())
            .arg("--site")
            .arg(claimed_site.unwrap_or(&h.site))
            .arg("--register-dir")
            .arg(register_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(m) = mount {
            cmd.arg("--mount-site")
                .arg(&m.site)
                .arg("--mount-bin")
                .arg(&m.bin)
                .arg("--mountpoint")
                .arg(&m.mountpoint)
                .arg("--mount-ops")
                .arg(match m.ops {
                    crate::worker_fs::FsOps::Files => "files",
                    crate::worker_fs::FsOps::Registers => "registers",
                });
        }
        let mut child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("worker stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("worker stdout"))?;
        let pending: Arc<std::sync::Mutex<HashMap<u64, oneshot::Sender<Response>>>> =
            Arc::default();
        let waiting = pending.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(r) = serde_json::from_str::<Response>(&line) else {
                    continue;
                };
                let tx = waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&r.id);
                if let Some(tx) = tx {
                    let _ = tx.send(r);
                }
            }
        });
        Ok(WorkerConn {
            site: cluster.net.hosts[host].site.clone(),
            stdin: Mutex::new(stdin),
            pending,
            next: AtomicU64::new(0),
            _child: child,
        })
    }

    /// Send a request; `None` if no answer came within `timeout` (or the worker died).
    async fn call(
        &self,
        f: &str,
        key: Option<String>,
        value: Value,
        timeout: Duration,
    ) -> Option<Response> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let req = Request {
            id,
            f: f.to_string(),
            key,
            value,
        };
        let mut line = serde_json::to_vec(&req).ok()?;
        line.push(b'\n');
        if self.stdin.lock().await.write_all(&line).await.is_err() {
            return None;
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => Some(r),
            _ => {
                self.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                None
            }
        }
    }
}

/// Registers in use at once; a fresh set replaces them after [`OPS_PER_GENERATION`]
/// operations, or sooner after [`INFOS_PER_GENERATION`] indeterminate mutations. Each
/// key's history stays small, and the indeterminate operations in it (which make the
/// search exponential) few, as Jepsen's independent keys do.
const KEYS_AT_ONCE: u64 = 8;
const OPS_PER_GENERATION: u64 = 400;
const INFOS_PER_GENERATION: u64 = 16;
/// The delegation workload's registers live for many seconds: a read is allowed to be
/// [`STALENESS_BOUND`] stale, so a register younger than that could hide a stale cache.
const DELEGATION_OPS_PER_GENERATION: u64 = 20_000;

/// Which registers are in use.
struct KeyPlan {
    ops_per_generation: u64,
    generation: AtomicU64,
    ops: AtomicU64,
    infos: AtomicU64,
}

impl KeyPlan {
    fn new(ops_per_generation: u64) -> Self {
        KeyPlan {
            ops_per_generation,
            generation: AtomicU64::new(0),
            ops: AtomicU64::new(0),
            infos: AtomicU64::new(0),
        }
    }

    fn key(&self, rng: &mut StdRng) -> (u64, String) {
        if self.ops.fetch_add(1, Ordering::Relaxed) + 1 >= self.ops_per_generation {
            self.advance(self.generation.load(Ordering::Relaxed));
        }
        let g = self.generation.load(Ordering::Relaxed);
        (
            g,
            format!("k{}", g * KEYS_AT_ONCE + rng.random_range(0..KEYS_AT_ONCE)),
        )
    }

    /// An indeterminate mutation happened on a key of generation `g`.
    fn indeterminate(&self, g: u64) {
        if self.generation.load(Ordering::Relaxed) == g
            && self.infos.fetch_add(1, Ordering::Relaxed) + 1 >= INFOS_PER_GENERATION
        {
            self.advance(g);
        }
    }

    fn advance(&self, from: u64) {
        if self
            .generation
            .compare_exchange(from, from + 1, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.ops.store(0, Ordering::Relaxed);
            self.infos.store(0, Ordering::Relaxed);
        }
    }
}

/// Files each client slot rewrites, and their largest size.
const FILES_PER_SLOT: u64 = 3;
/// The replication workload's: enough that most writes' data is still a file's last
/// version at the end (a chunk replication lost is then a file lost, not one
/// overwritten).
const REPLICATED_FILES_PER_SLOT: u64 = 256;

fn files_per_slot(workload: Workload) -> u64 {
    match workload {
        Workload::Replication => REPLICATED_FILES_PER_SLOT,
        _ => FILES_PER_SLOT,
    }
}
const MAX_FILE_BYTES: u64 = 3 << 20;

/// The next operation of a client process, and the key generation it belongs to.
fn generate(
    workload: Workload,
    slot: usize,
    may_write: bool,
    rng: &mut StdRng,
    plan: &KeyPlan,
    next_add: &AtomicU64,
) -> (&'static str, Option<String>, Value, u64) {
    match workload {
        Workload::Register | Workload::Ownership => {
            let (g, key) = plan.key(rng);
            let key = Some(key);
            match rng.random_range(0..4) {
                0 | 1 => ("read", key, Value::Null, g),
                2 => ("write", key, Value::from(rng.random_range(0..5)), g),
                _ => (
                    "cas",
                    key,
                    serde_json::json!([rng.random_range(0..5), rng.random_range(0..5)]),
                    g,
                ),
            }
        }
        Workload::Delegation => {
            let (g, key) = plan.key(rng);
            if !may_write || rng.random_bool(0.5) {
                ("read", Some(key), Value::Null, g)
            } else {
                // Unique values: a read names the one write it saw.
                let v = next_add.fetch_add(1, Ordering::Relaxed) as i64;
                ("write", Some(key), Value::from(v), g)
            }
        }
        Workload::Durability | Workload::Replication => {
            // Each slot owns its files: one writer per file, so content is never torn
            // by concurrent writers.
            let key = Some(format!(
                "f{slot}-{}",
                rng.random_range(0..files_per_slot(workload))
            ));
            let seed = rng.random::<u64>() >> 11; // exact in JSON numbers
                                                  // Replication: smaller files, so the follower catches up in seconds.
            let max = match workload {
                Workload::Replication => MAX_FILE_BYTES / 4,
                _ => MAX_FILE_BYTES,
            };
            let len = rng.random_range(0..max);
            (
                "write",
                key,
                serde_json::json!({"seed": seed, "len": len}),
                0,
            )
        }
        Workload::Set => {
            if rng.random_range(0..10) == 0 {
                ("read", None, Value::Null, 0)
            } else {
                let v = next_add.fetch_add(1, Ordering::Relaxed) as i64;
                ("add", None, Value::from(v), 0)
            }
        }
    }
}

/// One client slot: a process id that moves on after an indeterminate operation.
#[allow(clippy::too_many_arguments)]
async fn client_loop(
    slot: usize,
    opts: RunOptions,
    conn: Arc<WorkerConn>,
    // This slot's worker among `workers` (the delegation workload's writer turns).
    (worker, workers): (usize, usize),
    rec: Arc<Recorder>,
    deadline: Instant,
    next_add: Arc<AtomicU64>,
    plan: Arc<KeyPlan>,
) {
    let mut rng = StdRng::seed_from_u64(opts.seed.wrapping_mul(1000).wrapping_add(slot as u64));
    let mut process = slot as u64;
    while Instant::now() < deadline {
        let turn = rec.start.elapsed().as_secs() / WRITER_TURN.as_secs();
        let may_write =
            opts.workload != Workload::Delegation || turn % workers as u64 == worker as u64;
        let (f, key, value, generation) =
            generate(opts.workload, slot, may_write, &mut rng, &plan, &next_add);
        rec.record(
            Process::Client(process),
            EventType::Invoke,
            f,
            key.clone(),
            value.clone(),
            None,
        );
        let answer = conn
            .call(f, key.clone(), value.clone(), opts.op_timeout)
            .await;
        let (kind, out, error) = match answer {
            Some(r) if r.kind == EventType::Ok && f == "read" => (r.kind, r.value, r.error),
            Some(r) => (r.kind, value, r.error),
            None => (EventType::Info, value, Some("no answer in time".into())),
        };
        rec.record(Process::Client(process), kind, f, key, out, error);
        if kind == EventType::Info {
            process += opts.concurrency as u64;
            if f != "read" {
                plan.indeterminate(generation);
            }
        }
        let think = match opts.workload {
            Workload::Durability | Workload::Replication => 20..100,
            Workload::Delegation => 0..20,
            _ => 0..10,
        };
        tokio::time::sleep(Duration::from_millis(rng.random_range(think))).await;
    }
}

/// Faults until `deadline`, one at a time.
async fn nemesis_loop(
    opts: RunOptions,
    cluster: Arc<Mutex<Cluster>>,
    rec: Arc<Recorder>,
    deadline: Instant,
) -> Vec<FaultWindow> {
    let mut rng = StdRng::seed_from_u64(opts.seed ^ 0x006e_656d_6573_6973);
    let mut windows = Vec::new();
    if opts.nemeses.is_empty() {
        return windows;
    }
    let gap = opts.nemesis_interval;
    loop {
        let wait = gap.mul_f64(rng.random_range(0.5..1.5));
        if Instant::now() + wait + gap > deadline {
            return windows;
        }
        tokio::time::sleep(wait).await;
        let kind = opts.nemeses[rng.random_range(0..opts.nemeses.len())];
        let started = {
            let mut c = cluster.lock().await;
            nemesis::start(kind, &mut c, &mut rng).await.map(|f| {
                let d = f.describe(&c);
                (f, d)
            })
        };
        let (fault, description) = match started {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, ?kind, "could not start a fault");
                continue;
            }
        };
        let start_ns = rec.now_ns();
        rec.record(
            Process::nemesis(),
            EventType::Info,
            "start",
            None,
            Value::from(description.clone()),
            None,
        );
        tracing::info!(%description, "fault started");
        tokio::time::sleep(gap.mul_f64(rng.random_range(0.5..1.5))).await;
        {
            let mut c = cluster.lock().await;
            if let Err(e) = nemesis::stop(&fault, &mut c).await {
                tracing::warn!(error = %e, "could not stop a fault");
            }
        }
        rec.record(
            Process::nemesis(),
            EventType::Info,
            "stop",
            None,
            Value::from(description.clone()),
            None,
        );
        windows.push(FaultWindow {
            description,
            start_ns,
            stop_ns: rec.now_ns(),
        });
    }
}

fn count(history: &History) -> OpCounts {
    let mut c = OpCounts::default();
    for e in history.events.iter().filter(|e| !e.process.is_nemesis()) {
        match e.kind {
            EventType::Invoke => c.invoked += 1,
            EventType::Ok => c.ok += 1,
            EventType::Fail => c.fail += 1,
            EventType::Info => c.info += 1,
        }
    }
    // Operations cut short by the end of the run count as indeterminate.
    c.info += c.invoked.saturating_sub(c.ok + c.fail + c.info);
    c
}

/// Run a test; write `history.jsonl`, `history.edn` (registers) and `results.json` to
/// `opts.out`.
pub async fn run(opts: RunOptions) -> anyhow::Result<RunSummary> {
    anyhow::ensure!(
        !opts.forging_client || opts.workload == Workload::Ownership,
        "--forging-client goes with --workload ownership"
    );
    let wall = Instant::now();
    std::fs::create_dir_all(&opts.out)?;
    let out = opts.out.canonicalize()?;
    let spec = ClusterSpec {
        bin_dir: opts.bin_dir.clone(),
        dir: out.join("cluster"),
        sites: vec!["site-a".into(), "site-b".into()],
        bugs: opts.bugs,
        // The replication workload counts what crosses between the sites.
        link_emulator: opts.nemeses.contains(&NemesisKind::Link)
            || opts.workload == Workload::Replication,
        // The delegation workload's second mount of the owner site, on a host of its own;
        // the forging client, at site-b.
        second_clients: if opts.workload == Workload::Delegation {
            vec!["site-a".into()]
        } else if opts.forging_client {
            vec!["site-b".into()]
        } else {
            Vec::new()
        },
    };
    let mut cluster = Cluster::start(spec).await?;
    cluster.wait_healthy(Duration::from_secs(60)).await?;
    let register_dir = if matches!(opts.workload, Workload::Ownership | Workload::Delegation) {
        crate::ownership::set_up(&mut cluster).await?;
        crate::ownership::OWNED_DIR
    } else {
        std::str::from_utf8(crate::worker::REGISTER_DIR)?
    };
    let followed = if opts.workload == Workload::Replication {
        Some(crate::replication::set_up(&cluster).await?)
    } else {
        None
    };
    let clients: Vec<usize> = cluster
        .net
        .hosts
        .iter()
        .enumerate()
        .filter(|(_, h)| crate::cluster::is_client_host(&h.name))
        // The delegation workload runs at the owner site only.
        .filter(|(_, h)| opts.workload != Workload::Delegation || h.site == "site-a")
        .map(|(i, _)| i)
        .collect();
    // One worker per (client host, home member): clients of a site spread over members.
    // The workloads through FUSE: one worker with its own mount per client host.
    let mut conns = Vec::new();
    for (i, host) in clients.iter().enumerate() {
        let ops = match opts.workload {
            Workload::Durability | Workload::Replication => Some(crate::worker_fs::FsOps::Files),
            Workload::Delegation => Some(crate::worker_fs::FsOps::Registers),
            _ => None,
        };
        if let Some(ops) = ops {
            let h = &cluster.net.hosts[*host];
            let mount = crate::worker::MountArgs {
                bin: opts.bin_dir.join("mobilus-mount"),
                site: h.site.clone(),
                mountpoint: out.join("cluster").join(format!("mnt-{}", h.name)),
                ops,
                // The worker hands its mount its own certificate.
                tls: Vec::new(),
            };
            let conn = WorkerConn::start(
                &cluster,
                *host,
                i,
                opts.op_timeout,
                Some(&mount),
                register_dir,
                None,
            )?;
            conns.push(Arc::new(conn));
            continue;
        }
        // The forging client claims the subtree's first owner, whatever its certificate.
        let forged = cluster
            .owned
            .as_ref()
            .filter(|_| opts.forging_client && cluster.net.hosts[*host].name.starts_with("c2-"))
            .map(|o| o.first_owner.clone());
        for home in 0..3 {
            let conn = WorkerConn::start(
                &cluster,
                *host,
                home + i,
                opts.op_timeout,
                None,
                register_dir,
                forged.as_deref(),
            )?;
            conns.push(Arc::new(conn));
        }
    }
    // Clients take workers in turn from the first: the forging client's workers (its
    // host is the last) go first, so that any concurrency sends forged requests.
    if opts.forging_client {
        let forging = cluster
            .net
            .hosts
            .iter()
            .filter(|h| h.name.starts_with("c2-"))
            .count()
            * 3;
        let forging = forging.min(conns.len());
        conns.rotate_right(forging);
    }
    // Every worker must answer before the clock starts: a worker that cannot run is a
    // failure of the harness, not an anomaly of the system under test.
    for (i, conn) in conns.iter().enumerate() {
        let pong = conn
            .call("ping", None, Value::Null, Duration::from_secs(60))
            .await;
        let Some(pong) = pong.filter(|r| r.kind == EventType::Ok) else {
            anyhow::bail!("worker {i} did not start (see its errors above)");
        };
        if let Some(pid) = pong.value["mount_pid"].as_u64() {
            cluster.mounts.push(crate::cluster::MountProc {
                host: clients[i],
                pid: pid as u32,
            });
        }
    }
    // The replication workload writes at the owner site only; the other site's mount
    // reads at the end.
    let writers: Vec<Arc<WorkerConn>> = match &followed {
        Some(f) => conns
            .iter()
            .filter(|c| c.site == f.owner)
            .cloned()
            .collect(),
        None => conns.clone(),
    };
    let rec = Arc::new(Recorder::new());
    if opts.workload == Workload::Delegation {
        cluster.writer_turns = Some((rec.start, WRITER_TURN));
    }
    let cluster = Arc::new(Mutex::new(cluster));
    let deadline = Instant::now() + opts.time_limit;
    let next_add = Arc::new(AtomicU64::new(0));
    let plan = Arc::new(KeyPlan::new(if opts.workload == Workload::Delegation {
        DELEGATION_OPS_PER_GENERATION
    } else {
        OPS_PER_GENERATION
    }));
    let mut tasks = Vec::new();
    for slot in 0..opts.concurrency {
        tasks.push(tokio::spawn(client_loop(
            slot,
            opts.clone(),
            writers[slot % writers.len()].clone(),
            (slot % writers.len(), writers.len()),
            rec.clone(),
            deadline,
            next_add.clone(),
            plan.clone(),
        )));
    }
    let faults = tokio::spawn(nemesis_loop(
        opts.clone(),
        cluster.clone(),
        rec.clone(),
        deadline,
    ));
    for t in tasks {
        t.await?;
    }
    let faults = faults.await?;
    // Heal everything, then read the final state.
    {
        let mut c = cluster.lock().await;
        c.heal_all()?;
        c.wait_healthy(Duration::from_secs(60)).await?;
    }
    if opts.workload == Workload::Durability {
        final_file_reads(&opts, &cluster, &conns, &rec).await?;
    }
    let mut replication = None;
    if let Some(f) = &followed {
        let killed_data = opts.nemeses.contains(&NemesisKind::Kill);
        let report = {
            let mut c = cluster.lock().await;
            crate::replication::check_and_cut_off_owner(&mut c, f, killed_data).await?
        };
        replication = Some(report);
        let readers: Vec<&Arc<WorkerConn>> =
            conns.iter().filter(|c| c.site == f.follower).collect();
        read_every_file(&opts, &rec, |_| readers[0]).await;
    }
    if opts.workload == Workload::Set {
        let process = Process::Client(FINAL_PROCESS);
        final_read(&rec, &conns[0], process, None, opts.op_timeout).await;
    }
    if opts.workload == Workload::Delegation {
        // Every register ever used, through each mount in turn: an acknowledged write
        // that was lost shows here.
        let keys = (plan.generation.load(Ordering::Relaxed) + 1) * KEYS_AT_ONCE;
        for k in 0..keys {
            let conn = &conns[k as usize % conns.len()];
            let process = Process::Client(FINAL_PROCESS + k);
            final_read(&rec, conn, process, Some(format!("k{k}")), opts.op_timeout).await;
        }
    }
    let conns_sites: Vec<String> = conns.iter().map(|c| c.site.clone()).collect();
    drop(conns);
    let history = rec.take();
    write_history(&opts, &history)?;
    let mut summary = RunSummary {
        workload: opts.workload,
        nemeses: opts.nemeses.clone(),
        seed: opts.seed,
        time_limit_s: opts.time_limit.as_secs(),
        concurrency: opts.concurrency,
        unsafe_local_reads: opts.bugs.local_reads,
        unsafe_read_lease_ms: opts.bugs.read_lease_ms,
        operations: count(&history),
        faults,
        valid: false,
        register: None,
        set: None,
        durability: None,
        replication: None,
        ownership: None,
        staleness: None,
        unsafe_no_ownership_check: opts.bugs.no_ownership_check,
        unsafe_no_delegation_check: opts.bugs.no_delegation_check,
        unsafe_holder_reads_ignore_applied: opts.bugs.holder_reads_ignore_applied,
        unsafe_skip_failed_fetches: opts.bugs.skip_failed_fetches,
        unsafe_no_site_binding: opts.bugs.no_site_binding,
        forging_client: opts.forging_client,
        staleness_bound_ms: (opts.workload == Workload::Delegation)
            .then_some(STALENESS_BOUND.as_millis() as u64),
        wall_s: 0.0,
    };
    match opts.workload {
        Workload::Register => {
            let r = checker::check(&history, ModelKind::CasRegister, opts.check_budget)?;
            summary.valid = r.verdict == Verdict::Linearizable;
            summary.register = Some(r);
        }
        Workload::Set => {
            let r = checker::set::check(&history)?;
            summary.valid = r.valid;
            summary.set = Some(r);
        }
        Workload::Durability => {
            let r = checker::durability::check(&history)?;
            summary.valid = r.valid;
            summary.durability = Some(r);
        }
        Workload::Replication => {
            let r = checker::durability::check(&history)?;
            summary.valid = r.valid && replication.as_ref().is_some_and(|r| r.valid);
            summary.durability = Some(r);
            summary.replication = replication;
        }
        Workload::Delegation => {
            // The staleness check decides; the search for a linearization (which may run
            // out of time on these long registers) runs only when it passed.
            let s = checker::staleness::check(&history, STALENESS_BOUND)?;
            summary.valid = s.valid;
            if s.valid {
                let r = checker::check_ordered(
                    &history,
                    ModelKind::Register,
                    opts.check_budget,
                    checker::Order::ReadsStaleBy(STALENESS_BOUND),
                )?;
                summary.valid = r.verdict != Verdict::NotLinearizable;
                summary.register = Some(r);
            }
            summary.staleness = Some(s);
        }
        Workload::Ownership => {
            let r = checker::check(&history, ModelKind::CasRegister, opts.check_budget)?;
            let o =
                check_ownership(&history, &cluster, &rec, &conns_sites, opts.concurrency).await?;
            summary.valid = r.verdict == Verdict::Linearizable && o.valid;
            summary.register = Some(r);
            summary.ownership = Some(o);
        }
    }
    cluster.lock().await.stop();
    summary.wall_s = wall.elapsed().as_secs_f64();
    std::fs::write(
        opts.out.join("results.json"),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    Ok(summary)
}

/// The ownership check of a run: tenures from the harness's move log, on the run's clock.
async fn check_ownership(
    history: &History,
    cluster: &Arc<Mutex<Cluster>>,
    rec: &Recorder,
    conn_sites: &[String],
    concurrency: usize,
) -> anyhow::Result<OwnershipReport> {
    use crate::checker::ownership::{self, Move};
    let c = cluster.lock().await;
    let owned = c
        .owned
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the ownership workload has no subtree"))?;
    let on_clock = |t: Instant| t.saturating_duration_since(rec.start).as_nanos() as u64;
    let moves: Vec<Move> = owned
        .moves
        .iter()
        .map(|m| Move {
            to: m.to.clone(),
            invoke_ns: on_clock(m.invoke),
            complete_ns: on_clock(m.complete),
            outcome: m.outcome,
        })
        .collect();
    // The subtree was owned before the clock started.
    let since = on_clock(owned.since);
    let tenures = ownership::tenures(&owned.first_owner, since, &moves, u64::MAX);
    let site_of = |p: &Process| match p {
        Process::Client(n) => {
            let slot = (*n % concurrency as u64) as usize;
            conn_sites.get(slot % conn_sites.len().max(1)).cloned()
        }
        Process::Named(_) => None,
    };
    Ok(ownership::check(history, tenures, &moves, site_of)?)
}

/// Process numbers of the reads after the run (far above any client's).
pub const FINAL_PROCESS: u64 = u64::MAX / 2;

/// A read after the faults, retried (each attempt recorded) until one succeeds, at most
/// ten times.
async fn final_read(
    rec: &Recorder,
    conn: &WorkerConn,
    process: Process,
    key: Option<String>,
    timeout: Duration,
) {
    for _ in 0..10 {
        let (p, k) = (process.clone(), key.clone());
        rec.record(
            p.clone(),
            EventType::Invoke,
            "read",
            k.clone(),
            Value::Null,
            None,
        );
        let (kind, value, error) = match conn.call("read", k.clone(), Value::Null, timeout).await {
            Some(r) if r.kind == EventType::Ok => (EventType::Ok, r.value, None),
            other => (EventType::Fail, Value::Null, other.and_then(|r| r.error)),
        };
        rec.record(p, kind, "read", k, value, error);
        if kind == EventType::Ok {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Restart every server (SIGKILL, then start again on its data), then read every file
/// written at one site through the other site's mount.
async fn final_file_reads(
    opts: &RunOptions,
    cluster: &Arc<Mutex<Cluster>>,
    conns: &[Arc<WorkerConn>],
    rec: &Recorder,
) -> anyhow::Result<()> {
    let everything = || Value::from("kill and restart every server");
    {
        let mut c = cluster.lock().await;
        rec.record(
            Process::nemesis(),
            EventType::Info,
            "start",
            None,
            everything(),
            None,
        );
        for i in 0..c.procs.len() {
            c.kill(i);
        }
        for i in 0..c.procs.len() {
            c.restart(i)?;
        }
        c.wait_healthy(Duration::from_secs(60)).await?;
        rec.record(
            Process::nemesis(),
            EventType::Info,
            "stop",
            None,
            everything(),
            None,
        );
    }
    // Through the site that did not write it.
    read_every_file(opts, rec, |slot| &conns[(slot + 1) % conns.len()]).await;
    Ok(())
}

/// Read every file any client slot may have written, slot `s`'s through `conn_for(s)`.
async fn read_every_file<'a>(
    opts: &RunOptions,
    rec: &Recorder,
    conn_for: impl Fn(usize) -> &'a Arc<WorkerConn>,
) {
    let mut keys: Vec<(usize, String)> = Vec::new();
    for slot in 0..opts.concurrency {
        for j in 0..files_per_slot(opts.workload) {
            keys.push((slot, format!("f{slot}-{j}")));
        }
    }
    for (k, (slot, key)) in keys.into_iter().enumerate() {
        let process = Process::Client(FINAL_PROCESS + k as u64);
        let conn = conn_for(slot);
        final_read(rec, conn, process, Some(key), Duration::from_secs(60)).await;
    }
}

fn write_history(opts: &RunOptions, history: &History) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(opts.out.join("history.jsonl"))?);
    history.write_jsonl(&mut out)?;
    std::io::Write::flush(&mut out)?;
    if matches!(
        opts.workload,
        Workload::Register | Workload::Ownership | Workload::Delegation
    ) {
        let mut out = std::io::BufWriter::new(std::fs::File::create(opts.out.join("history.edn"))?);
        crate::edn::write_edn(history, &mut out)?;
        std::io::Write::flush(&mut out)?;
    }
    Ok(())
}
