//! `mobilusctl dev demo`: the story of the product so far, narrated as it runs on the
//! local cluster (over its emulated WAN when `dev up --wan` made one): a database grows at
//! site-a in a subtree site-a owns (whose mount then writes small files without waiting
//! for the metadata); site-b queries it at once, reading across only the blocks the query
//! misses, but cannot change it; a second copy costs no new bytes; the subtree moves to
//! site-b under a live writer ([`crate::demo_move`]): site-a is fenced, site-b answers
//! its first query at once and goes on writing while the data follows (a plot of it);
//! a developer at site-a clones it by its metadata alone; the move back sends only what
//! changed; and a PostgreSQL server moves too, when one is installed
//! ([`crate::demo_pg`]).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use mobilus_proto::datapb::StatsReply;

use crate::demo_move::{live_move, move_back, Side};
use crate::devconfig::ClusterFile;

const ROWS: u64 = 60_000;

/// The PostgreSQL step's flags (`crate::demo_pg`; it runs when PostgreSQL is installed).
#[derive(clap::Args, Debug, Clone)]
pub struct PgArgs {
    /// pgbench's scale for the PostgreSQL step (100,000 accounts, about 15 MiB, each).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub pg_scale: u32,
    /// Seconds of pgbench at site-b right after the move, while the data follows.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub pg_first_secs: u64,
    /// Seconds of pgbench at site-a before the move, and at site-b once the data has
    /// followed.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub pg_steady_secs: u64,
    /// Run only the PostgreSQL step (`bench/move-pg.sh`).
    #[arg(long)]
    pub postgres_only: bool,
}

impl PgArgs {
    fn shape(&self) -> crate::demo_pg::PgShape {
        crate::demo_pg::PgShape {
            scale: self.pg_scale,
            first_secs: self.pg_first_secs,
            steady_secs: self.pg_steady_secs,
        }
    }
}

pub(crate) async fn stats(addr: &str) -> anyhow::Result<StatsReply> {
    let c = mobilus_data_client::DataClient::new(addr)?;
    c.stats()
        .await
        .with_context(|| format!("cannot reach data node {addr} — see `mobilusctl dev status`"))
}

/// A data node's stats once chunks have stopped arriving (faults complete their chunks in
/// the background).
async fn settled(addr: &str) -> anyhow::Result<StatsReply> {
    let mut last = stats(addr).await?;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let now = stats(addr).await?;
        if now.bytes_received == last.bytes_received {
            return Ok(now);
        }
        last = now;
    }
}

/// The sum of a counter (over its labels) of the process whose folder is `dir`, from its
/// metrics endpoint (0 if it has none or cannot be reached).
pub(crate) async fn counter(dir: &Path, name: &str) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(addr) = crate::dev::metrics_addr(dir) else {
        return 0;
    };
    let Ok(mut conn) = tokio::net::TcpStream::connect(&addr).await else {
        return 0;
    };
    let mut body = String::new();
    let asked = conn
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await;
    if asked.is_err() || conn.read_to_string(&mut body).await.is_err() {
        return 0;
    }
    body.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

pub(crate) fn sqlite(db: &Path, sql: &str) -> anyhow::Result<String> {
    let out = Command::new("sqlite3")
        .arg("-batch")
        .arg(db)
        .arg(sql)
        .output()
        .context("running sqlite3 (install it: apt-get install sqlite3)")?;
    if !out.status.success() {
        bail!("sqlite3: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

pub async fn run(dir: &Path, pg: PgArgs) -> anyhow::Result<()> {
    let file = ClusterFile::load_dev(dir)?;
    let find = |site: &str| {
        let data = file.data.iter().find(|d| d.site == site);
        let mount = file.mounts.iter().find(|m| m.site == site);
        data.zip(mount)
    };
    let (Some((data_a, mount_a)), Some((data_b, mount_b))) = (find("site-a"), find("site-b"))
    else {
        bail!("the demo needs sites site-a and site-b with mounts: `mobilusctl dev up --dir {} --sites 2`", dir.display());
    };
    let started = Instant::now();
    let (here, there) = (
        mount_a.mountpoint.join("demo"),
        mount_b.mountpoint.join("demo"),
    );
    let meta = crate::cluster::connect(&file.meta_addrs)?;
    let rtt_ms = file.wan.as_ref().map(|w| w.rtt_ms);
    let db = here.join("orders.db");
    let remote = there.join("orders.db");
    let side_a = Side {
        site: "site-a",
        data: data_a,
        mount: mount_a,
        db: db.clone(),
    };
    let side_b = Side {
        site: "site-b",
        data: data_b,
        mount: mount_b,
        db: remote.clone(),
    };
    if pg.postgres_only {
        let Some(bin) = crate::demo_pg::installed() else {
            bail!("PostgreSQL is not installed (apt-get install postgresql)");
        };
        let summary =
            crate::demo_pg::run(dir, &meta, &bin, (&side_a, &side_b), rtt_ms, pg.shape()).await?;
        println!("In all: {summary}.");
        return Ok(());
    }
    let root = own_dir(&meta, &here, "/demo").await?;

    println!(
        "1. /demo is a subtree owned by site-a (`mobilusctl subtree create /demo --owner site-a`);"
    );
    println!("   an application at site-a builds an SQLite database in it.");
    let t = Instant::now();
    sqlite(
        &db,
        &format!(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer INT, amount INT, note TEXT);
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {ROWS})
             INSERT INTO orders (customer, amount, note)
               SELECT i % 977, (i * 7919) % 10000, hex(randomblob(120)) FROM s;"
        ),
    )?;
    let size = std::fs::metadata(&db)?.len();
    println!("   {ROWS} rows, {} on disk, in {:.1} s (committed by 3 Raft members, chunks on site-a's data node).", mib(size), t.elapsed().as_secs_f64());

    // The owner's mount holds the subtree's delegation: it caches it authoritatively.
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    let holder = loop {
        let s = meta
            .subtree(root, false)
            .await
            .map_err(crate::cluster::explain)?;
        if s.delegation.is_some() || Instant::now() >= deadline {
            break s.delegation;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    if let Some((session, _)) = holder {
        let t = Instant::now();
        for _ in 0..1000 {
            std::fs::metadata(&db)?;
            let _ = std::fs::metadata(here.join("orders.db-journal"));
        }
        println!(
            "   site-a's mount holds /demo's delegation (mount session {session}): nobody else may change it, so it answers from its own cache; 1,000 stats and 1,000 checks for an absent journal took {:.0} ms, with no metadata round.",
            t.elapsed().as_secs_f64() * 1e3
        );
        small_files(&here, &there)?;
    }

    println!("2. Site-b opens the same file at once and queries it; nothing was copied first.");
    let before_b = stats(&data_b.addr).await?;
    let ranges = "mobilus_client_remote_range_bytes_total";
    let range_before = counter(&mount_b.dir, ranges).await;
    let t = Instant::now();
    let row = sqlite(
        &remote,
        "SELECT id, customer, amount FROM orders WHERE id = 31337;",
    )?;
    let took = t.elapsed();
    let range_bytes = counter(&mount_b.dir, ranges).await - range_before;
    let point = settled(&data_b.addr).await?;
    println!(
        "   one order by key ({row}) in {:.2} s: each page it missed read across by itself ({:.0} KiB of blocks, each checked against its chunk's hash), and the {} chunks ({}) those pages are in faulted over from site-a behind the answer.",
        took.as_secs_f64(),
        range_bytes as f64 / 1024.0,
        point.remote_fetches - before_b.remote_fetches,
        mib(point.bytes_received - before_b.bytes_received)
    );
    match sqlite(
        &remote,
        "INSERT INTO orders (customer, amount, note) VALUES (1, 1, 'from b');",
    ) {
        Err(e) => println!("   but site-b cannot change it while site-a owns it: {e}"),
        Ok(_) => bail!("site-b wrote a subtree owned by site-a"),
    }

    println!("3. Copies of the same data cost no new bytes (dedup).");
    for n in 1..=2 {
        let before = stats(&data_a.addr).await?;
        let backup = here.join(format!("backup-{n}.db"));
        std::fs::copy(&db, &backup).context("copying on the mount")?;
        // Counted once it is on the data node: the holder of the delegation uploads
        // behind the close.
        std::fs::File::open(&backup)?.sync_all()?;
        let after = stats(&data_a.addr).await?;
        println!(
            "   backup {n} ({}): site-a's data node received {} and stored {} more{}",
            mib(size),
            mib(after.bytes_received - before.bytes_received),
            mib(after.bytes.saturating_sub(before.bytes)),
            if n == 1 {
                " (SQLite wrote the original page by page, so its chunks are cut differently)."
            } else {
                ": every chunk was already there, so none was sent."
            }
        );
    }

    // The first reads of /demo are recorded for 3 s (the dev mounts' window), then kept.
    let mut profile = None;
    let until = Instant::now() + std::time::Duration::from_secs(5);
    while profile.is_none() && Instant::now() < until {
        let p = meta
            .profile(root, false)
            .await
            .map_err(crate::cluster::explain)?;
        if p.reads.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        } else {
            profile = Some(p);
        }
    }
    if let Some(p) = &profile {
        println!(
            "   the first reads of /demo (at {}, in the steps above) are its access profile: {} reads in {} chunks (`mobilusctl subtree profile /demo`); a site it moves to fetches those chunks first.",
            p.site,
            p.reads.len(),
            p.chunks().len()
        );
    }
    let moved = live_move(dir, &meta, root, (&side_a, &side_b), rtt_ms).await?;
    if holder.is_some() {
        println!("   (the move first recalled site-a's delegation: its mount committed what it had buffered and gave it back.)");
    }
    let rows = sqlite(&db, "SELECT count(*) FROM orders;")?;
    println!("   site-a, the old owner, still reads it: {rows} rows, site-b's included.");
    developer_clone(
        &meta,
        &mount_a.mountpoint,
        &remote,
        [&data_a.addr, &data_b.addr],
    )
    .await?;
    let back = move_back(dir, &meta, root, (&side_a, &side_b), ROWS).await?;
    let postgres = match crate::demo_pg::installed() {
        Some(bin) => {
            let sides = (&side_a, &side_b);
            Some(crate::demo_pg::run(dir, &meta, &bin, sides, rtt_ms, pg.shape()).await?)
        }
        None => {
            println!("7. (PostgreSQL is not installed: with Debian's `postgresql`, a PostgreSQL server moves here too.)");
            None
        }
    };

    let first = point.bytes_received - before_b.bytes_received;
    let link = rtt_ms
        .map(|r| format!(" over a {r} ms WAN"))
        .unwrap_or_default();
    println!("In all{link}:");
    println!(
        "   before the move, site-b's first answer read {:.0} KiB across ({:.2}% of the {} database), its {} of chunks following behind it;",
        range_bytes as f64 / 1024.0,
        100.0 * range_bytes as f64 / size.max(1) as f64,
        mib(size),
        mib(first),
    );
    println!(
        "   the move took {:.0} ms; site-b's first query after it answered in {:.0} ms, reading {:.0} KiB across; its reads fetched {} on demand and the follower the rest ({} in all) in {:.1} s;",
        moved.move_ms,
        moved.first_query_ms,
        moved.first_query_bytes as f64 / 1024.0,
        mib(moved.on_demand_bytes),
        mib(moved.followed_bytes),
        moved.follow_secs,
    );
    println!(
        "   moving back sent {} of /demo's {} ({:.1}%).{}",
        mib(back),
        mib(moved.subtree_bytes),
        100.0 * back as f64 / moved.subtree_bytes.max(1) as f64,
        moved
            .plot
            .as_ref()
            .map(|p| format!(" Plot: {}.", p.display()))
            .unwrap_or_default(),
    );
    if let Some(summary) = postgres {
        println!("   {summary}.");
    }
    println!("The demo took {:.1} s.", started.elapsed().as_secs_f64());
    Ok(())
}

/// A developer at site-a clones production (now site-b's) by its metadata: no byte is
/// stored anew, and the clone's changes never reach production.
async fn developer_clone(
    meta: &mobilus_meta_client::MetaClient,
    mount_a: &Path,
    production: &Path,
    data: [&str; 2],
) -> anyhow::Result<()> {
    // A new name each run: a subtree's root stays (like a mount point). Asked of the
    // metadata: a miss through the mount would be remembered for the entry TTL.
    let mut name = String::new();
    for n in 1.. {
        name = format!("demo-dev-{n}");
        let taken = meta
            .lookup(mobilus_proto::fs::ROOT_INO, name.as_bytes(), false)
            .await;
        if taken.is_err() {
            break;
        }
    }
    println!("5. A developer at site-a gets a copy of production: `mobilusctl clone /demo /{name} --owner site-a`.");
    let stored = |s: &[StatsReply]| s.iter().map(|s| s.bytes).sum::<u64>();
    let before = [stats(data[0]).await?, stats(data[1]).await?];
    let done = crate::clone::clone(
        meta,
        "/demo",
        &format!("/{name}"),
        Some("site-a"),
        5_000,
        crate::output::OutputFormat::Json,
    )
    .await?;
    let after = [stats(data[0]).await?, stats(data[1]).await?];
    println!(
        "   {} inodes ({} of files) cloned in {:.0} ms; the data nodes stored {} new bytes.",
        done.inodes,
        mib(done.bytes),
        done.seconds * 1e3,
        stored(&after).saturating_sub(stored(&before))
    );
    let copy = mount_a.join(&name).join("orders.db");
    sqlite(&copy, "DELETE FROM orders WHERE id % 2 = 0;")?;
    let (mine, theirs) = (
        sqlite(&copy, "SELECT count(*) FROM orders;")?,
        sqlite(production, "SELECT count(*) FROM orders;")?,
    );
    println!("   the developer deletes half the rows in the copy ({mine} left); production at site-b still has {theirs}.");
    Ok(())
}

/// The holder creates and closes small files without waiting for the metadata (it
/// answers creates and closes itself, committing in the background); site-b's open of the
/// last one still sees its bytes (its read recalls the delegation first).
fn small_files(here: &Path, there: &Path) -> anyhow::Result<()> {
    const FILES: usize = 200;
    let logs = here.join("logs");
    std::fs::create_dir(&logs)?;
    let body = vec![b'x'; 4096];
    let t = Instant::now();
    for i in 0..FILES {
        std::fs::write(logs.join(format!("{i}.log")), &body)?;
    }
    let wrote = t.elapsed();
    std::fs::write(logs.join("last.log"), b"closed at site-a a moment ago")?;
    let t = Instant::now();
    let seen = std::fs::read(there.join("logs/last.log"))?;
    println!(
        "   it writes {FILES} files of 4 KiB in {:.0} ms ({:.0} files/s): the holder answers each create and close itself and commits behind them; site-b's open and read of the last one took {:.0} ms and saw {:?} (its read made site-a commit first: close-to-open across sites).",
        wrote.as_secs_f64() * 1e3,
        FILES as f64 / wrote.as_secs_f64(),
        t.elapsed().as_secs_f64() * 1e3,
        String::from_utf8_lossy(&seen)
    );
    Ok(())
}

/// `path` (at `here`, through site-a's mount) emptied and owned by site-a: made a subtree
/// the first time, given back to site-a by a later run.
pub(crate) async fn own_dir(
    meta: &mobilus_meta_client::MetaClient,
    here: &Path,
    path: &str,
) -> anyhow::Result<mobilus_proto::fs::InodeId> {
    use std::os::unix::fs::MetadataExt;
    if !here.exists() {
        std::fs::create_dir(here)?;
    }
    let root = std::fs::metadata(here)?.ino();
    match meta.subtree(root, false).await {
        Ok(s) if s.owner.as_deref() != Some("site-a") => {
            meta.with_timeouts(
                std::time::Duration::from_secs(30),
                std::time::Duration::from_secs(9),
            )
            .move_subtree(root, "site-a", false)
            .await
            .map_err(crate::cluster::explain)
            .with_context(|| format!("giving {path} back to site-a"))?;
        }
        Ok(_) => {}
        Err(_) => {
            meta.create_subtree(root, "site-a")
                .await
                .map_err(crate::cluster::explain)
                .with_context(|| format!("making {path} a subtree"))?;
        }
    }
    // site-a's lease comes with its data node's next heartbeat.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !meta
        .subtree(root, false)
        .await
        .map_err(crate::cluster::explain)?
        .lease_valid()
    {
        if Instant::now() > deadline {
            bail!("site-a holds no lease: is its data node running? (`mobilusctl dev status`)");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for entry in std::fs::read_dir(here)? {
        let path = entry?.path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        }
        .with_context(|| format!("clearing {}", path.display()))?;
    }
    Ok(root)
}
