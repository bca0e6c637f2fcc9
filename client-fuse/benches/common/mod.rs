//! What the client benchmarks share: release binaries started as real processes, killed
//! on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Proc(pub Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().and_then(Path::parent).map(|d| d.join(name));
    match path {
        Some(p) if p.is_file() => Ok(p),
        _ => anyhow::bail!(
            "{name} is not built in release: run `cargo build --release --workspace` first"
        ),
    }
}

/// The certificate flags of a process `name` with `args`, from the process's test CA
/// (the benchmark's own clients speak as its operator), unless the caller chose
/// (`--ca ...`, or `--insecure`).
fn tls_flags(name: &str, args: &[String]) -> anyhow::Result<Vec<String>> {
    use mobilus_tls::Role;
    if args.iter().any(|a| a == "--ca" || a == "--insecure") {
        return Ok(Vec::new());
    }
    let site = args
        .iter()
        .position(|a| a == "--site")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    let pki = mobilus_tls::pki::test_pki()?;
    let site_name = site.unwrap_or("none");
    Ok(match name {
        "mobilus-meta" => pki.flags(Role::Meta, None, "meta")?,
        "mobilus-mount" => pki.flags(Role::Mount, site, &format!("mount-{site_name}"))?,
        _ => pki.flags(Role::Data, site, &format!("data-{site_name}"))?,
    })
}

pub fn spawn(name: &str, args: &[String], ready: &Path) -> anyhow::Result<(Proc, String)> {
    let child = Command::new(bin(name)?)
        .args(tls_flags(name, args)?)
        .args(args)
        .arg("--ready-file")
        .arg(ready)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        anyhow::ensure!(Instant::now() < deadline, "{name} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((Proc(child), std::fs::read_to_string(ready)?))
}

/// Three metadata members (release binaries) with their folders under `dir`: the
/// processes and their addresses.
#[allow(dead_code)] // each bench uses one of the two
pub fn start_metas(dir: &Path) -> anyhow::Result<(Vec<Proc>, Vec<String>)> {
    start_metas_with(dir, &[])
}

/// [`start_metas`], each member also given `extra` (TLS flags, say).
pub fn start_metas_with(dir: &Path, extra: &[String]) -> anyhow::Result<(Vec<Proc>, Vec<String>)> {
    let mut procs = Vec::new();
    let mut addrs: Vec<String> = Vec::new();
    for id in 1..=3 {
        let data = dir.join(format!("meta-{id}"));
        let mut args = vec![
            "--id".to_string(),
            id.to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            data.to_string_lossy().into(),
        ];
        if id == 1 {
            args.push("--init".into());
        } else {
            args.extend(["--join".into(), addrs[0].clone()]);
        }
        args.extend_from_slice(extra);
        let (p, addr) = spawn("mobilus-meta", &args, &dir.join(format!("meta-{id}.ready")))?;
        procs.push(p);
        addrs.push(addr);
    }
    Ok((procs, addrs))
}

/// Best effort: reads should come from disk, not the page cache, where allowed.
#[allow(dead_code)] // not every bench reads back
pub fn drop_caches() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Write `data` to the file `ino` through `client` with 1 MiB I/Os and flush, then read
/// it back the same way, checking every byte (the page cache dropped in between if
/// `cold`): write and read MB/s.
#[allow(dead_code)] // not every bench reads back
pub async fn write_then_read(
    client: &mobilus_client::Client,
    ino: u64,
    data: &[u8],
    cold: bool,
) -> anyhow::Result<(f64, f64)> {
    let mb = data.len() as f64 / 1e6;
    let t = Instant::now();
    let mut w = client.writer(ino);
    for (i, piece) in data.chunks(1 << 20).enumerate() {
        w.write((i << 20) as u64, piece).await?;
    }
    w.flush().await?;
    let write = mb / t.elapsed().as_secs_f64();
    if cold {
        drop_caches();
    }
    let t = Instant::now();
    let reader = client.reader(ino);
    let mut off = 0u64;
    while off < data.len() as u64 {
        let got = reader.read(off, 1 << 20).await?;
        anyhow::ensure!(
            got[..] == data[off as usize..off as usize + got.len()],
            "read back differs at {off}"
        );
        off += got.len() as u64;
    }
    Ok((write, mb / t.elapsed().as_secs_f64()))
}
