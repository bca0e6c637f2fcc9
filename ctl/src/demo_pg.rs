//! The demo's PostgreSQL step, when Debian's `postgresql` is installed: a server with a
//! pgbench database runs at site-a in subtree `/pg`, stops, the subtree moves to site-b,
//! and the server starts there at once and answers while its data follows; pgbench's
//! transactions per second at site-b while the data follows against after it has (and at
//! site-a before the move). `bench/move-pg.sh` runs it alone, longer.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use mobilus_meta_client::MetaClient;

use crate::demo::mib;
use crate::demo_move::{move_to, wait_caught_up, Side};

/// How long and how big the step is (`dev demo --pg-*`).
#[derive(Clone, Copy, Debug)]
pub struct PgShape {
    /// pgbench's scale: 100,000 accounts per unit (about 15 MiB).
    pub scale: u32,
    /// pgbench at site-b right after the move, while the data follows (seconds).
    pub first_secs: u64,
    /// pgbench at site-a before the move and at site-b after the data has followed.
    pub steady_secs: u64,
}

/// The newest PostgreSQL Debian installed (`/usr/lib/postgresql/N/bin`), if any.
pub fn installed() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            ["postgres", "initdb", "pg_ctl", "pgbench", "psql"]
                .iter()
                .all(|t| bin.join(t).exists())
                .then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// A PostgreSQL tool run as the `postgres` user (the server refuses root).
fn as_postgres(bin: &Path, tool: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join(tool))
        .args(args)
        .output()
        .with_context(|| format!("running {tool} as postgres (runuser, from util-linux)"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{tool}: {}", text.trim());
    }
    Ok(text)
}

/// One server's data folder and where it listens (a Unix socket only).
struct Server<'a> {
    bin: &'a Path,
    data: PathBuf,
    socket_dir: String,
}

const PORT: &str = "5432";

impl Server<'_> {
    fn start(&self) -> anyhow::Result<()> {
        let opts = format!("-k {} -c listen_addresses= -p {PORT}", self.socket_dir);
        let log = format!("{}/postgres.log", self.socket_dir);
        let data = self.data.to_string_lossy();
        as_postgres(
            self.bin,
            "pg_ctl",
            &["-D", &data, "-o", &opts, "-l", &log, "-w", "start"],
        )
        .map(|_| ())
        .with_context(|| format!("starting PostgreSQL (its log: {log})"))
    }

    fn stop(&self) -> anyhow::Result<()> {
        let data = self.data.to_string_lossy();
        as_postgres(
            self.bin,
            "pg_ctl",
            &["-D", &data, "-m", "fast", "-w", "stop"],
        )
        .map(|_| ())
    }

    /// A client tool (psql, pgbench) connected to this server, with `args` after the
    /// connection's.
    fn client(&self, tool: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-h", &self.socket_dir, "-p", PORT, "-U", "postgres"];
        all.extend_from_slice(args);
        all.push("postgres");
        as_postgres(self.bin, tool, &all)
    }

    fn psql(&self, sql: &str) -> anyhow::Result<String> {
        Ok(self.client("psql", &["-Atc", sql])?.trim().to_string())
    }

    /// pgbench's TPC-B-like load, 4 clients, for `secs`: transactions per second overall
    /// and per `every` seconds.
    fn bench(&self, secs: u64, every: u64) -> anyhow::Result<(f64, Vec<f64>)> {
        let (t, p) = (secs.to_string(), every.to_string());
        let out = self.client("pgbench", &["-c", "4", "-j", "2", "-T", &t, "-P", &p])?;
        let tps_in = |line: &str, key: &str| -> Option<f64> {
            let rest = &line[line.find(key)? + key.len()..];
            rest.trim_start().split([' ', ',']).next()?.parse().ok()
        };
        let intervals = out
            .lines()
            .filter(|l| l.starts_with("progress:"))
            .filter_map(|l| tps_in(l, "s,"))
            .collect();
        let overall = out
            .lines()
            .find(|l| l.starts_with("tps ="))
            .and_then(|l| tps_in(l, "tps ="))
            .with_context(|| format!("no tps in pgbench's output: {out}"))?;
        Ok((overall, intervals))
    }
}

/// The step; `path` of both sides' mounts is `/pg`. Returns a one-line summary.
pub async fn run(
    dir: &Path,
    meta: &MetaClient,
    bin: &Path,
    (a, b): (&Side<'_>, &Side<'_>),
    rtt_ms: Option<u64>,
    shape: PgShape,
) -> anyhow::Result<String> {
    let here = a.mount.mountpoint.join("pg");
    let root = crate::demo::own_dir(meta, &here, "/pg").await?;
    let socket_dir = dir.join("postgres");
    std::fs::create_dir_all(&socket_dir)?;
    // Absolute: the server resolves its socket folder from inside its data folder.
    let socket_dir = std::fs::canonicalize(&socket_dir)?;
    for d in [&here, &socket_dir] {
        let status = Command::new("chown")
            .arg("postgres:postgres")
            .arg(d)
            .status()?;
        if !status.success() {
            bail!("chown postgres {} failed", d.display());
        }
    }
    let socket_dir = socket_dir.to_string_lossy().into_owned();
    let at = |side: &Side<'_>| Server {
        bin,
        data: side.mount.mountpoint.join("pg/data"),
        socket_dir: socket_dir.clone(),
    };
    let (server_a, server_b) = (at(a), at(b));

    println!("7. A PostgreSQL server moves too: it runs at site-a in /pg (a subtree site-a owns), stops, /pg moves to site-b, and it starts there.");
    let t = Instant::now();
    let data = server_a.data.to_string_lossy().into_owned();
    as_postgres(
        bin,
        "initdb",
        &["-D", &data, "-A", "trust", "-U", "postgres"],
    )?;
    let initdb_s = t.elapsed().as_secs_f64();
    server_a.start()?;
    let t = Instant::now();
    let scale = shape.scale.to_string();
    let loaded = server_a.client("pgbench", &["-i", "-q", "-s", &scale]);
    if let Err(e) = loaded {
        let _ = server_a.stop();
        return Err(e);
    }
    let load_s = t.elapsed().as_secs_f64();
    let at_a = server_a.bench(shape.steady_secs, shape.steady_secs);
    server_a.stop()?;
    let (tps_a, _) = at_a?;
    println!(
        "   initdb in {initdb_s:.1} s, `pgbench -i -s {scale}` in {load_s:.1} s; pgbench (4 clients) at site-a: {tps_a:.0} transactions/s."
    );

    let (moved, move_ms) = move_to(meta, root, b.site).await?;
    let moved_at = Instant::now();
    let t = Instant::now();
    server_b.start()?;
    let start_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let balance = server_b.psql("SELECT abalance FROM pgbench_accounts WHERE aid = 4242;");
    let query_s = t.elapsed().as_secs_f64();
    let finish = |e: anyhow::Error| {
        let _ = server_b.stop();
        e
    };
    let balance = balance.map_err(finish)?;
    let trips = rtt_ms
        .filter(|r| *r > 0)
        .map(|r| {
            format!(
                " ({:.0} round trips of the WAN)",
                (start_s + query_s) * 1e3 / r as f64
            )
        })
        .unwrap_or_default();
    println!(
        "   moved in {move_ms:.0} ms (none of its {} copied first); the server started at site-b in {start_s:.1} s and answered its first query (balance {balance}) {query_s:.2} s later{trips}.",
        mib(moved.bytes)
    );
    let first = server_b.bench(shape.first_secs, 5.min(shape.first_secs));
    let (tps_first, intervals) = first.map_err(finish)?;
    let shown: Vec<String> = intervals.iter().map(|t| format!("{t:.0}")).collect();
    println!(
        "   pgbench at site-b right away, while its data follows: {tps_first:.0} transactions/s over {} s (each {} s: {}).",
        shape.first_secs,
        5.min(shape.first_secs),
        shown.join(", ")
    );
    wait_caught_up(meta, (root, "/pg"), b.site)
        .await
        .map_err(finish)?;
    let followed_s = moved_at.elapsed().as_secs_f64();
    let steady = server_b.bench(shape.steady_secs, shape.steady_secs);
    let stopped = server_b.stop();
    let (tps_steady, _) = steady?;
    stopped?;
    let why = if rtt_ms.is_some() {
        " Each commit at site-b still crosses the WAN: two of the three metadata members are at site-a."
    } else {
        ""
    };
    println!(
        "   its data had followed {followed_s:.0} s after the move; then {tps_steady:.0} transactions/s at site-b (the first {} s after the move ran at {:.0}% of that).{why}",
        shape.first_secs,
        100.0 * tps_first / tps_steady.max(f64::MIN_POSITIVE),
    );
    Ok(format!(
        "PostgreSQL moved in {move_ms:.0} ms, started at site-b in {start_s:.1} s and answered in {query_s:.2} s more; pgbench {tps_first:.0} tps while its data followed, {tps_steady:.0} tps after (site-a: {tps_a:.0})"
    ))
}
