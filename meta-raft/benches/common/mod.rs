//! A 3-member cluster of real `mobilus-meta` processes on loopback, for the benchmarks.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mobilus_meta_client::{ClientOptions, MetaClient};

const BIN: &str = env!("CARGO_BIN_EXE_mobilus-meta");

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
    let child = Command::new(BIN)
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
