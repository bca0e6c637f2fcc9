//! Replication: the follower's throughput against its bandwidth limit, its CPU cost per
//! GiB, and the time to restore two copies after a site loses one of its data nodes.
//! 3 metadata members, 3 data nodes at site-a and 1 at site-b, on 127.0.0.1, release
//! binaries.
//!
//! `cargo build --release --workspace && cargo bench -p mobilus-client --bench replication`
//! (BENCH_MIB=N of data, default 512; BENCH_BANDWIDTH, default `400mbit`). Baseline, same
//! disk and run: copying the same bytes between two files (read, write, one fsync).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mobilus_client::Client;
use mobilus_data_client::bandwidth::parse_bandwidth;
use mobilus_data_client::placement;
use mobilus_meta_client::MetaClient;
use mobilus_proto::fs::{DataMode, FileKind, SitePlacement, ROOT_INO};
use mobilus_proto::noise::noise;

mod common;

use common::{spawn, start_metas, Proc};

/// CPU seconds (user + system) a process has used.
fn cpu_secs(p: &Proc) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", p.0.id())).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    (ticks(11) + ticks(12)) / 100.0
}

struct DataNode {
    proc: Proc,
    addr: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mib: usize = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    let bandwidth_flag = std::env::var("BENCH_BANDWIDTH").unwrap_or_else(|_| "400mbit".into());
    let limit = parse_bandwidth(&bandwidth_flag).map_err(anyhow::Error::msg)?;
    let tmp = tempfile::tempdir()?;
    let s = |v: &str| v.to_string();
    let (metas, meta) = start_metas(tmp.path())?;
    let mut nodes: Vec<(String, DataNode)> = Vec::new();
    for (i, site) in ["site-a", "site-a", "site-a", "site-b"]
        .into_iter()
        .enumerate()
    {
        let dir = tmp.path().join(format!("data-{i}"));
        let args = vec![
            s("--site"),
            s(site),
            s("--listen"),
            s("127.0.0.1:0"),
            s("--data-dir"),
            dir.to_string_lossy().into(),
            s("--meta"),
            meta.join(","),
            s("--heartbeat-ms"),
            s("500"),
            s("--follow-interval-ms"),
            s("200"),
            s("--replicate-interval-ms"),
            s("500"),
            s("--node-down-after-ms"),
            s("3000"),
            s("--replication-bandwidth"),
            bandwidth_flag.clone(),
        ];
        let (proc, addr) = spawn(
            "mobilus-data",
            &args,
            &tmp.path().join(format!("data-{i}.ready")),
        )?;
        nodes.push((site.to_string(), DataNode { proc, addr }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let a = loop {
        if let Ok(c) = Client::connect(&meta, "site-a").await {
            if c.data_nodes().registry().nodes("site-a").len() == 3 {
                break c;
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "the data nodes never registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let m: &MetaClient = a.meta();

    // Baseline: the same bytes copied between two files on the same disk.
    let data = noise(mib << 20, 1);
    let bytes = data.len() as f64;
    let (src, dst) = (tmp.path().join("plain-src"), tmp.path().join("plain-dst"));
    std::fs::write(&src, &data)?;
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    let t = Instant::now();
    std::fs::copy(&src, &dst)?;
    std::fs::File::open(&dst)?.sync_all()?;
    let copy_rate = bytes / t.elapsed().as_secs_f64();
    std::fs::remove_file(&src)?;
    std::fs::remove_file(&dst)?;

    // The data, written at site-a into a subtree of its own (two copies there).
    let app = m.mkdir(ROOT_INO, b"app", 0o755, 0, 0, None).await?.ino;
    m.create_subtree(app, "site-a").await?;
    while !m.subtree(app, false).await?.lease_valid() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ino = m
        .mknod(app, b"data", FileKind::Regular, 0o644, 0, 0, 0, None)
        .await?
        .ino;
    let mut w = a.writer(ino);
    for (i, piece) in data.chunks(1 << 20).enumerate() {
        w.write((i << 20) as u64, piece).await?;
    }
    w.flush().await?;
    drop(data);

    // 1. Site-b made eager: the follower copies everything within the limit.
    let cpu_before: f64 = nodes.iter().map(|(_, n)| cpu_secs(&n.proc)).sum();
    let t = Instant::now();
    m.set_placement(
        app,
        &[SitePlacement {
            site: "site-b".into(),
            mode: DataMode::Eager,
            sync: false,
        }],
    )
    .await?;
    loop {
        let rows = m.replication_status(Some(app)).await?;
        let caught_up = rows
            .iter()
            .find(|f| f.site == "site-b")
            .is_some_and(|f| f.caught_up());
        if caught_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = t.elapsed().as_secs_f64();
    let cpu = nodes.iter().map(|(_, n)| cpu_secs(&n.proc)).sum::<f64>() - cpu_before;
    let rate = bytes / took;

    // 2. A node of site-a lost for good: two copies again on the survivors.
    let (chunks, _) = m.scan_subtree_chunks(app).await?;
    let lost = nodes.remove(1).1;
    let lost_addr = lost.addr.clone();
    let survivors: Vec<String> = nodes
        .iter()
        .filter(|(site, _)| site == "site-a")
        .map(|(_, n)| n.addr.clone())
        .collect();
    let held_by_lost = chunks
        .iter()
        .filter(|c| {
            let all = [
                survivors[0].clone(),
                lost_addr.clone(),
                survivors[1].clone(),
            ];
            placement::rank(&c.hash, &all, |a| a)
                .into_iter()
                .take(2)
                .any(|n| *n == lost_addr)
        })
        .map(|c| c.len)
        .sum::<u64>();
    let cpu_before: f64 = nodes.iter().map(|(_, n)| cpu_secs(&n.proc)).sum();
    drop(lost);
    let t = Instant::now();
    let clients: HashMap<&String, mobilus_data_client::DataClient> = survivors
        .iter()
        .map(|a| Ok((a, mobilus_data_client::DataClient::new(a)?)))
        .collect::<anyhow::Result<_>>()?;
    loop {
        let hashes: Vec<_> = chunks.iter().map(|c| c.hash).collect();
        let mut everywhere = true;
        for c in clients.values() {
            let (_, present) = c.has(&hashes).await?;
            everywhere &= present.iter().all(|p| *p);
        }
        if everywhere {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "copies never restored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let restore = t.elapsed().as_secs_f64();
    let restore_cpu = nodes.iter().map(|(_, n)| cpu_secs(&n.proc)).sum::<f64>() - cpu_before;

    let mibs = |b: f64| b / (1u64 << 20) as f64;
    println!("{mib} MiB written at site-a (3 data nodes, 2 copies); site-b has 1 data node; 127.0.0.1, release");
    println!("{:<44} {:>12} {:>10}", "", "MiB/s", "ratio");
    println!(
        "{:<44} {:>12.1} {:>10}",
        "baseline: plain file copy + fsync",
        mibs(copy_rate),
        "1.00x"
    );
    println!(
        "{:<44} {:>12.1} {:>10}",
        format!("limit (--replication-bandwidth {bandwidth_flag})"),
        mibs(limit as f64),
        "-"
    );
    println!(
        "{:<44} {:>12.1} {:>9.0}%",
        "site-a -> site-b, follower (of the limit)",
        mibs(rate),
        100.0 * rate / limit as f64
    );
    println!(
        "{:<44} {:>12.1} {:>9.2}x",
        "  (of the plain copy)",
        mibs(rate),
        rate / copy_rate
    );
    println!(
        "follower: {:.1} s for {:.0} MiB; {:.1} CPU s per GiB (all data nodes)",
        took,
        mibs(bytes),
        cpu / (bytes / (1u64 << 30) as f64)
    );
    println!(
        "a node of site-a lost: its {:.0} MiB back to two copies in {:.1} s after the kill ({:.1} s of it waiting out --node-down-after-ms 3000): {:.1} MiB/s; {:.1} CPU s per GiB",
        mibs(held_by_lost as f64),
        restore,
        3.0,
        mibs(held_by_lost as f64) / (restore - 3.0).max(0.1),
        restore_cpu / (held_by_lost as f64 / (1u64 << 30) as f64).max(1e-9)
    );
    drop(metas);
    Ok(())
}
