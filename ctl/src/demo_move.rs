//! The demo's move: the database moves to site-b while an application writes it, answers
//! its first query there at once, keeps taking writes there while its data follows (a
//! live progress line, then a plot), and later moves back, sending only what changed.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use mobilus_meta_client::MetaClient;
use mobilus_proto::fs::InodeId;

use crate::demo::{counter, mib, sqlite, stats};
use crate::devconfig::{DataMember, MountMember};

/// One site of the demo: its data node, its mount, and the database through that mount.
pub struct Side<'a> {
    pub site: &'a str,
    pub data: &'a DataMember,
    pub mount: &'a MountMember,
    pub db: PathBuf,
}

/// An application writing the database steadily: one row every 100 ms until stopped or
/// refused.
struct Writer {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(u64, Option<String>)>,
}

impl Writer {
    fn start(db: &Path, site: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let (db, site, flag) = (db.to_path_buf(), site.to_string(), stop.clone());
        let handle = std::thread::spawn(move || {
            let mut rows = 0;
            while !flag.load(Ordering::Relaxed) {
                let sql = format!(
                    "INSERT INTO orders (customer, amount, note) VALUES ({rows}, 1, 'live at {site}');"
                );
                if let Err(e) = sqlite(&db, &sql) {
                    return (rows, Some(e.to_string()));
                }
                rows += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            (rows, None)
        });
        Writer { stop, handle }
    }

    /// Wait up to `within` for the writer to be refused, then stop it: the rows it wrote
    /// and what refused it.
    fn finish(self, within: Duration) -> (u64, Option<String>) {
        let deadline = Instant::now() + within;
        while !self.handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .unwrap_or((0, Some("the writer panicked".into())))
    }
}

/// What the move showed, for the summary.
pub struct Moved {
    pub move_ms: f64,
    pub first_query_ms: f64,
    /// Bytes site-b's mount read across for the first query, before it answered.
    pub first_query_bytes: u64,
    /// Bytes site-b's reads fetched from site-a until the data had followed.
    pub on_demand_bytes: u64,
    /// Growth of site-b's store until the data had followed.
    pub followed_bytes: u64,
    pub follow_secs: f64,
    pub subtree_bytes: u64,
    pub plot: Option<PathBuf>,
}

const RANGES: &str = "mobilus_client_remote_range_bytes_total";
const FETCHES: &str = "mobilus_client_remote_fetch_bytes_total";

/// The move to site-b under a live writer, the first query there, and the data following.
pub async fn live_move(
    dir: &Path,
    meta: &MetaClient,
    root: InodeId,
    (a, b): (&Side<'_>, &Side<'_>),
    rtt_ms: Option<u64>,
) -> anyhow::Result<Moved> {
    println!("4. The application, writing steadily at site-a, moves to site-b: it stops there, `mobilusctl subtree move /demo --to site-b --data eager`, and it starts at site-b.");
    let writer = Writer::start(&a.db, a.site);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (rows_a, failed) = writer.finish(Duration::ZERO);
    if let Some(e) = failed {
        bail!("site-a's writer failed before the move: {e}");
    }
    let stopped = Instant::now();
    let on_demand_before =
        counter(&b.mount.dir, FETCHES).await + counter(&b.mount.dir, RANGES).await;
    let stored_before = stats(&b.data.addr).await?.bytes;
    let (moved_to, move_ms) = move_to(meta, root, b.site).await?;
    let moved_at = Instant::now();
    println!(
        "   moved in {move_ms:.0} ms (epoch {}; none of its {} of data was copied first); the application had added {rows_a} rows at site-a.",
        moved_to.epoch,
        mib(moved_to.bytes),
    );

    // The application starts at site-b and asks its first question at once.
    let range_before = counter(&b.mount.dir, RANGES).await;
    let query_at = moved_at.elapsed().as_secs_f64();
    let t = Instant::now();
    let row = sqlite(
        &b.db,
        "SELECT id, customer, amount FROM orders WHERE id = 4242;",
    )?;
    let first_query_ms = t.elapsed().as_secs_f64() * 1e3;
    let first_query_bytes = counter(&b.mount.dir, RANGES).await - range_before;
    let trips = rtt_ms
        .filter(|r| *r > 0)
        .map(|r| {
            format!(
                " ({:.0} round trips of the {r} ms WAN)",
                first_query_ms / r as f64
            )
        })
        .unwrap_or_default();
    println!(
        "   site-b's first query ({row}) answered {first_query_ms:.0} ms after it started{trips}, reading {:.0} KiB across: what it needed came first (its access profile) or by itself (the blocks it missed).",
        first_query_bytes as f64 / 1024.0
    );

    // It goes on writing at site-b while the data follows.
    let writer = Writer::start(&b.db, b.site);
    let resumed_ms = (Instant::now() - stopped).as_secs_f64() * 1e3;
    let (samples, follow_secs) = follow(meta, root, b, moved_at, moved_to.bytes).await?;
    let (rows_b, refused) = writer.finish(Duration::ZERO);
    if let Some(e) = refused {
        bail!("site-b's writer was refused on its own subtree: {e}");
    }
    let stored_after = stats(&b.data.addr).await?.bytes;
    let on_demand = counter(&b.mount.dir, FETCHES).await + counter(&b.mount.dir, RANGES).await
        - on_demand_before;
    println!(
        "   meanwhile the application at site-b added {rows_b} rows (it wrote again {resumed_ms:.0} ms after it stopped at site-a); site-b's store grew by {} ({} of it fetched by its reads, the rest by its follower, profile first).",
        mib(stored_after.saturating_sub(stored_before)),
        mib(on_demand)
    );
    match sqlite(
        &a.db,
        "INSERT INTO orders (customer, amount, note) VALUES (2, 2, 'late, at site-a');",
    ) {
        Err(e) => println!("   a late write at site-a, the old owner, is refused (fenced): {e}"),
        Ok(_) => bail!("site-a wrote after the subtree moved away"),
    }
    let before = stats(&b.data.addr).await?.remote_fetches;
    let t = Instant::now();
    let count = sqlite(&b.db, "SELECT count(*), sum(amount) FROM orders;")?;
    let again = stats(&b.data.addr).await?.remote_fetches - before;
    println!(
        "   a full scan at site-b now (count|sum = {count}, {:.2} s), the same scan again: {again} chunks fetched; site-b holds them.",
        t.elapsed().as_secs_f64()
    );
    let plot = dir.join("demo-follow.png");
    let answered_at = query_at + first_query_ms / 1e3;
    let plot = match crate::plot::follow_png(&plot, &samples, answered_at, rtt_ms) {
        Ok(()) => {
            println!(
                "   plot of the bytes at site-b over time: {}",
                plot.display()
            );
            Some(plot)
        }
        Err(e) => {
            println!("   (no plot: {e:#})");
            None
        }
    };
    Ok(Moved {
        move_ms,
        first_query_ms,
        first_query_bytes,
        on_demand_bytes: on_demand,
        followed_bytes: stored_after.saturating_sub(stored_before),
        follow_secs,
        subtree_bytes: moved_to.bytes,
        plot,
    })
}

/// Wait for site-b's follower to catch up with /demo, showing its progress; returns the
/// bytes site-b's store held over time (seconds since the move, bytes) and how long it
/// took.
async fn follow(
    meta: &MetaClient,
    root: InodeId,
    b: &Side<'_>,
    moved_at: Instant,
    total: u64,
) -> anyhow::Result<(Vec<(f64, u64)>, f64)> {
    let tty = std::io::stdout().is_terminal();
    let start = stats(&b.data.addr).await?.bytes;
    let mut samples = vec![(0.0, start)];
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last_line = Instant::now();
    loop {
        let held = stats(&b.data.addr).await?.bytes;
        let at = moved_at.elapsed().as_secs_f64();
        samples.push((at, held));
        let rows = meta
            .replication_status(Some(root))
            .await
            .map_err(crate::cluster::explain)?;
        let me = rows.iter().find(|f| f.site == b.site);
        let (backlog, rate) = me.map_or((0, 0), |f| (f.backlog_bytes, f.rate_bps));
        let line = format!(
            "   the data follows: site-b holds {} ({} to go, {:.1} MiB/s) {at:.1} s after the move",
            mib(held),
            mib(backlog),
            rate as f64 / f64::from(1u32 << 20)
        );
        if me.is_some_and(|f| f.caught_up()) {
            if tty {
                print!("\r\x1b[2K");
            }
            println!("   the data has followed: site-b holds {} of /demo's {} (less: chunks shared by its files are stored once), caught up {at:.1} s after the move.", mib(held), mib(total));
            return Ok((samples, at));
        }
        if tty {
            print!("\r\x1b[2K{line}");
            let _ = std::io::stdout().flush();
        } else if last_line.elapsed() >= Duration::from_secs(1) {
            println!("{line}");
            last_line = Instant::now();
        }
        if Instant::now() > deadline {
            bail!("site-b's follower did not catch up with /demo in 120 s (see `mobilusctl replication status /demo`)");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Site-b changes 5% of the rows, then the application moves back to site-a, which still
/// holds the rest: only the changed chunks cross. Returns the bytes site-a fetched.
pub async fn move_back(
    dir: &Path,
    meta: &MetaClient,
    root: InodeId,
    (a, b): (&Side<'_>, &Side<'_>),
    rows: u64,
) -> anyhow::Result<u64> {
    let changed = rows / 20;
    println!("6. Site-b rewrites 5% of the rows ({changed}), and the application moves back: `mobilusctl subtree move /demo --to site-a`.");
    sqlite(
        &b.db,
        &format!("UPDATE orders SET note = hex(randomblob(120)) WHERE id <= {changed};"),
    )?;
    let crossed_before = crate::wan::crossed(dir).map(|c| c.between(b.site, a.site));
    let received_before = stats(&a.data.addr).await?.bytes_received;
    let t = Instant::now();
    let (info, _) = move_to(meta, root, a.site).await?;
    wait_caught_up(meta, (root, "/demo"), a.site).await?;
    let fetched = stats(&a.data.addr).await?.bytes_received - received_before;
    // Let the link proxy write its counts.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let crossed = crossed_before
        .zip(crate::wan::crossed(dir))
        .map(|(before, now)| now.between(b.site, a.site) - before);
    println!(
        "   back at site-a in {:.1} s with its data: site-a fetched {} of /demo's {} ({:.1}%){}; the rest had never left.",
        t.elapsed().as_secs_f64(),
        mib(fetched),
        mib(info.bytes),
        100.0 * fetched as f64 / info.bytes.max(1) as f64,
        crossed
            .map(|c| format!(", {} crossed the WAN from site-b", mib(c)))
            .unwrap_or_default()
    );
    Ok(fetched)
}

/// Wait until `site`'s follower has caught up with subtree `root` (at `path`).
pub(crate) async fn wait_caught_up(
    meta: &MetaClient,
    (root, path): (InodeId, &str),
    site: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rows = meta
            .replication_status(Some(root))
            .await
            .map_err(crate::cluster::explain)?;
        if rows.iter().any(|f| f.site == site && f.caught_up()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{site}'s follower did not catch up with {path} in 120 s (see `mobilusctl replication status {path}`)");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Move subtree `root` to `site` (waiting for a delegation's recall, up to its holder's
/// lease); returns what the move answered and how long it took, in milliseconds.
pub(crate) async fn move_to(
    meta: &MetaClient,
    root: InodeId,
    site: &str,
) -> anyhow::Result<(mobilus_proto::fs::SubtreeInfo, f64)> {
    let t = Instant::now();
    let info = meta
        .with_timeouts(Duration::from_secs(30), Duration::from_secs(9))
        .move_subtree_with(root, site, false, None)
        .await
        .map_err(crate::cluster::explain)?;
    Ok((info, t.elapsed().as_secs_f64() * 1e3))
}
