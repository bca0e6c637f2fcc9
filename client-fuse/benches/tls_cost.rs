//! What mutual TLS costs: the same cluster (3 metadata members and a data node on
//! 127.0.0.1, release binaries) with `--insecure` and with certificates, in one run.
//!
//! `cargo build --release --workspace && cargo bench -p mobilus-client --bench tls_cost`
//! (BENCH_SECS per metadata level, default 5; BENCH_MIB, default 512). Prints creates/s
//! and getattrs/s at 1 and 16 clients, and sequential write and read MB/s through
//! `Client` (1 MiB I/Os), each with the ratio of TLS to plaintext.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mobilus_client::Client;
use mobilus_proto::fs::{FileKind, ROOT_INO};
use mobilus_proto::noise::noise;
use mobilus_tls::pki::DevPki;
use mobilus_tls::Role;

mod common;

use common::{spawn, start_metas_with, Proc};

struct Figures {
    creates: Vec<f64>,
    getattrs: Vec<f64>,
    write: f64,
    read: f64,
}

const LEVELS: [usize; 2] = [1, 16];

async fn cluster(
    dir: &std::path::Path,
    pki: Option<&DevPki>,
) -> anyhow::Result<(Vec<Proc>, Client)> {
    let flags = |role, site, name: &str| -> anyhow::Result<Vec<String>> {
        Ok(match pki {
            Some(p) => p.flags(role, site, name)?,
            None => vec!["--insecure".to_string()],
        })
    };
    let (mut procs, meta) = start_metas_with(dir, &flags(Role::Meta, None, "meta")?)?;
    let mut args = flags(Role::Data, Some("site-a"), "data")?;
    args.extend([
        "--site".into(),
        "site-a".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        dir.join("chunks").to_string_lossy().into(),
        "--meta".into(),
        meta.join(","),
    ]);
    let (p, _) = spawn("mobilus-data", &args, &dir.join("data.ready"))?;
    procs.push(p);
    // This process is the cluster's mount of site-a.
    let me = match pki {
        Some(p) => Some(Arc::new(p.config(Role::Mount, Some("site-a"), "mount")?)),
        None => None,
    };
    mobilus_tls::client::set_process_default(me);
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        match Client::connect(&meta, "site-a").await {
            Ok(c) => break c,
            Err(e) => anyhow::ensure!(Instant::now() < deadline, "no data node registered: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Ok((procs, client))
}

async fn measure(client: &Client, secs: f64, mib: usize, tag: &str) -> anyhow::Result<Figures> {
    let mut creates = Vec::new();
    let mut getattrs = Vec::new();
    for clients in LEVELS {
        let dir = client
            .meta()
            .mkdir(
                ROOT_INO,
                format!("{tag}-{clients}").as_bytes(),
                0o755,
                0,
                0,
                None,
            )
            .await?
            .ino;
        for reads in [false, true] {
            let stop_at = Instant::now() + Duration::from_secs_f64(secs);
            let started = Instant::now();
            let mut tasks = Vec::new();
            for c in 0..clients {
                let meta = client.meta().clone();
                tasks.push(tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < stop_at {
                        if reads {
                            meta.getattr(dir, false).await?;
                        } else {
                            let name = format!("c{c}-{n}");
                            meta.mknod(
                                dir,
                                name.as_bytes(),
                                FileKind::Regular,
                                0o644,
                                0,
                                0,
                                0,
                                None,
                            )
                            .await?;
                        }
                        n += 1;
                    }
                    Ok::<u64, anyhow::Error>(n)
                }));
            }
            let mut total = 0;
            for t in tasks {
                total += t.await??;
            }
            let rate = total as f64 / started.elapsed().as_secs_f64();
            if reads {
                getattrs.push(rate);
            } else {
                creates.push(rate);
            }
        }
    }
    let data = noise(mib << 20, 7);
    let ino = client
        .meta()
        .mknod(
            ROOT_INO,
            format!("{tag}-big").as_bytes(),
            FileKind::Regular,
            0o644,
            0,
            0,
            0,
            None,
        )
        .await?
        .ino;
    let (write, read) = common::write_then_read(client, ino, &data, false).await?;
    Ok(Figures {
        creates,
        getattrs,
        write,
        read,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let mib: usize = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    let tmp = tempfile::tempdir()?;
    let plain = {
        let (_procs, client) = cluster(&tmp.path().join("plain"), None).await?;
        measure(&client, secs, mib, "plain").await?
    };
    let pki = DevPki::open(&tmp.path().join("tls"))?;
    let tls = {
        let (_procs, client) = cluster(&tmp.path().join("mtls"), Some(&pki)).await?;
        measure(&client, secs, mib, "tls").await?
    };
    println!(
        "3 meta members + 1 data node on 127.0.0.1, {secs}s per metadata level, {mib} MiB sequential"
    );
    println!(
        "{:<34} {:>12} {:>12} {:>10}",
        "", "plaintext", "mutual TLS", "TLS/plain"
    );
    let row = |what: String, p: f64, t: f64| {
        println!("{what:<34} {p:>12.0} {t:>12.0} {:>9.2}x", t / p);
    };
    for (i, clients) in LEVELS.iter().enumerate() {
        row(
            format!("creates/s, {clients} clients"),
            plain.creates[i],
            tls.creates[i],
        );
        row(
            format!("getattrs/s, {clients} clients"),
            plain.getattrs[i],
            tls.getattrs[i],
        );
    }
    row("sequential write MB/s".into(), plain.write, tls.write);
    row("sequential read MB/s".into(), plain.read, tls.read);
    Ok(())
}
