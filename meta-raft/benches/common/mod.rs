//! A 3-member cluster of real `mobilus-meta` processes on loopback, for the benchmarks.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use mobilus_meta_client::{ClientOptions, MetaClient};
use mobilus_proto::fs::{DataNodeInfo, FileKind, InodeId};

/// The member binary: this build's, or `MOBILUS_META_BIN` (to compare two builds with
/// one benchmark).
fn member_bin() -> String {
    std::env::var("MOBILUS_META_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mobilus-meta").into())
}

/// A member, killed on drop.
pub struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(id: u64, dir: &Path, flags: &[String]) -> anyhow::Result<(Proc, String)> {
    let ready = dir.join(format!("ready-{id}"));
    // On mutual TLS; the benchmark's clients speak as the test CA's operator.
    let tls = mobilus_tls::pki::test_pki()?.flags(mobilus_tls::Role::Meta, None, "meta")?;
    let child = Command::new(member_bin())
        .args(tls)
        .args(["--id", &id.to_string(), "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.join(format!("m{id}")))
        .arg("--ready-file")
        .arg(&ready)
        .args(flags)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        anyhow::ensure!(Instant::now() < deadline, "member {id} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((Proc(child), std::fs::read_to_string(&ready)?))
}

/// Three members (`--init`, then two `--join`), once all are voters.
pub async fn start_cluster(
    dir: &Path,
    flags: &[String],
) -> anyhow::Result<([Proc; 3], Vec<String>)> {
    std::fs::create_dir_all(dir)?;
    let mut first = flags.to_vec();
    first.push("--init".into());
    let (p1, seed) = start(1, dir, &first)?;
    let mut join = flags.to_vec();
    join.extend(["--join".to_string(), seed.clone()]);
    let (p2, a2) = start(2, dir, &join)?;
    let (p3, a3) = start(3, dir, &join)?;
    let addrs = vec![seed, a2, a3];
    let admin = MetaClient::new(&addrs, ClientOptions::default())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin
        .status()
        .await
        .map(|s| s.members.iter().filter(|m| m.voter).count())
        .unwrap_or(0)
        < 3
    {
        anyhow::ensure!(Instant::now() < deadline, "cluster did not form");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(([p1, p2, p3], addrs))
}

// Each benchmark binary uses some of these helpers.
#[allow(dead_code)]
/// Keep both sites' leases valid, as their data nodes would.
pub fn agents(client: MetaClient) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            for site in ["site-a", "site-b"] {
                let node = DataNodeInfo {
                    site: site.into(),
                    addr: format!("{site}.bench:7200"),
                    capacity_bytes: 1 << 40,
                    used_bytes: 0,
                    last_heartbeat_ns: 0,
                    draining: false,
                    site_replicas: 0,
                    workers: Vec::new(),
                };
                let _ = client.register_data_node(&node).await;
            }
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
    })
}

#[allow(dead_code)]
pub async fn fill_files(addrs: &[String], dir: InodeId, files: u64) -> anyhow::Result<()> {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let client = MetaClient::new(addrs, ClientOptions::default())?;
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= files {
                    return anyhow::Ok(());
                }
                // 1,000 files a directory, as an application's tree would spread them.
                let sub = format!("d{}", i / 1000);
                let parent = match client.lookup(dir, sub.as_bytes(), false).await {
                    Ok(a) => a.ino,
                    Err(_) => match client.mkdir(dir, sub.as_bytes(), 0o755, 0, 0, None).await {
                        Ok(a) => a.ino,
                        Err(_) => client.lookup(dir, sub.as_bytes(), false).await?.ino,
                    },
                };
                client
                    .mknod(
                        parent,
                        format!("f{i}").as_bytes(),
                        FileKind::Regular,
                        0o644,
                        0,
                        0,
                        0,
                        None,
                    )
                    .await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}
