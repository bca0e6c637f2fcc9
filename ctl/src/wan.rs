//! The emulated WAN of a local cluster (`mobilusctl dev up --wan RTT,BANDWIDTH`): each site
//! is a network namespace of its own on a bridge, its processes listen on the site's
//! address, and every TCP connection from one site to a server of another is redirected
//! (iptables DNAT inside the client's namespace) through a link proxy, a process of its
//! own (`mobilusctl dev link`), that adds half the round trip each way and holds each
//! connection to the bandwidth. The proxy counts the bytes that cross between each pair
//! of sites in `DIR/wan/crossed.json`. Production code knows nothing of it.
//!
//! Processes join their site with `nsenter --net`, which leaves the mount namespace alone:
//! a site's FUSE mount is seen by every program on the machine.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use mobilus_netem::link::{LinkEmulator, LinkShape, BASE_PORT};
use mobilus_netem::net::{Names, Net};
use serde::{Deserialize, Serialize};

use crate::devconfig::{ClusterFile, WanLink};

/// Metadata member `id` listens on its site's address at `META_PORT + id`.
pub const META_PORT: u16 = 7000;
/// A site's data node `k` (from 1) listens at `DATA_PORT + k`.
pub const DATA_PORT: u16 = 7100;

/// `RTT,BANDWIDTH`, as `50ms,100mbit`: the round trip in ms and bytes per second.
pub fn parse_wan(s: &str) -> Result<(u64, u64), String> {
    let (rtt, bandwidth) = s
        .split_once(',')
        .ok_or_else(|| format!("{s:?} is not RTT,BANDWIDTH (try 50ms,100mbit)"))?;
    let rtt = rtt.trim();
    let ms = if let Some(ms) = rtt.strip_suffix("ms") {
        ms.trim().parse::<f64>().ok()
    } else if let Some(secs) = rtt.strip_suffix('s') {
        secs.trim().parse::<f64>().ok().map(|s| s * 1000.0)
    } else {
        None
    }
    .filter(|ms| (0.0..=10_000.0).contains(ms))
    .ok_or_else(|| format!("{rtt:?} is not a round trip of 0 to 10s (try 50ms)"))?;
    let bandwidth = mobilus_data_client::bandwidth::parse_bandwidth(bandwidth)?;
    Ok((ms.round() as u64, bandwidth))
}

/// A short, stable key for the cluster in `dir` (FNV-1a of its path), naming its network.
pub fn key_of(dir: &Path) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in dir.as_os_str().as_encoded_bytes() {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    h & 0xffff
}

/// The WAN's network as it will be named for `sites`, before anything exists.
pub fn plan(dir: &Path, rtt_ms: u64, bandwidth: u64, sites: &[String]) -> WanLink {
    WanLink {
        rtt_ms,
        bandwidth,
        key: key_of(dir),
        sites: sites.to_vec(),
        forward_ports: Vec::new(),
    }
}

/// Site `site`'s address on the WAN's network.
pub fn site_ip(w: &WanLink, site: &str) -> Option<Ipv4Addr> {
    let i = w.sites.iter().position(|s| s == site)?;
    Some(Ipv4Addr::new(
        10,
        77,
        Names::dev(w.key).subnet,
        11 + i as u8,
    ))
}

/// Site `site`'s namespace, which its processes join.
pub fn site_ns(w: &WanLink, site: &str) -> String {
    format!("{}-{site}", Names::dev(w.key).prefix)
}

fn gateway(w: &WanLink) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, Names::dev(w.key).subnet, 1)
}

/// Every server with its site: the metadata members, then the data nodes. The link
/// proxies server `j` on the gateway's port `BASE_PORT + j`.
fn servers(file: &ClusterFile) -> anyhow::Result<Vec<(String, SocketAddr)>> {
    let meta = file
        .meta
        .iter()
        .map(|m| (m.site.clone().unwrap_or_default(), m.addr.as_str()));
    let data = file.data.iter().map(|d| (d.site.clone(), d.addr.as_str()));
    let mut out: Vec<(String, SocketAddr)> = meta
        .chain(data)
        .map(|(site, addr)| {
            let addr = addr
                .parse()
                .with_context(|| format!("{addr:?} in cluster.toml is not an address"))?;
            Ok((site, addr))
        })
        .collect::<anyhow::Result<_>>()?;
    // Forwarded ports last, so the servers' proxy ports stay where they were.
    if let Some(w) = &file.wan {
        for site in &w.sites {
            for port in &w.forward_ports {
                if let Some(ip) = site_ip(w, site) {
                    out.push((site.clone(), SocketAddr::from((ip, *port))));
                }
            }
        }
    }
    Ok(out)
}

/// Make the network (again, after `dev down` or a reboot) or open it, and point every
/// site's connections to other sites' servers at the link proxy.
pub fn network(file: &ClusterFile) -> anyhow::Result<()> {
    let Some(w) = &file.wan else {
        return Ok(());
    };
    let hosts: Vec<(&str, &str)> = w.sites.iter().map(|s| (s.as_str(), s.as_str())).collect();
    let net = Net::open_or_create(Names::dev(w.key), &hosts)
        .context("making the WAN's network namespaces")?;
    let servers = servers(file)?;
    for (from, site) in w.sites.iter().enumerate() {
        net.clear_redirects(from)?;
        for (j, (at, addr)) in servers.iter().enumerate() {
            let std::net::IpAddr::V4(ip) = addr.ip() else {
                continue;
            };
            if at != site {
                net.redirect(from, ip, addr.port(), BASE_PORT + j as u16)?;
            }
        }
    }
    Ok(())
}

/// Remove the network (the processes in it are stopped first).
pub fn remove_network(w: &WanLink) {
    Net::remove(&Names::dev(w.key), w.sites.iter().map(String::as_str));
}

/// The link proxy's folder (its pid, log and counts).
pub fn link_dir(dir: &Path) -> PathBuf {
    dir.join("wan")
}

/// Bytes that crossed from one site to another, as the link proxy last wrote them.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Crossed {
    /// `from` → `to` → bytes delivered.
    pub bytes: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Crossed {
    pub fn between(&self, from: &str, to: &str) -> u64 {
        self.bytes
            .get(from)
            .and_then(|m| m.get(to))
            .copied()
            .unwrap_or(0)
    }
}

/// What crossed the WAN of the cluster in `dir` so far (None without a WAN or a proxy).
pub fn crossed(dir: &Path) -> Option<Crossed> {
    let text = std::fs::read_to_string(link_dir(dir).join("crossed.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn save_crossed(path: &Path, c: &Crossed) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(c)?)?;
    std::fs::rename(tmp, path)
}

/// The link proxy (`mobilusctl dev link`): forwards with the WAN's shape until SIGTERM,
/// writing what crossed twice a second.
pub async fn run_link(dir: &Path, ready: &Path) -> anyhow::Result<()> {
    let file = ClusterFile::load_dev(dir)?;
    let w = file
        .wan
        .clone()
        .with_context(|| format!("the cluster in {} has no WAN", dir.display()))?;
    let targets: Vec<(usize, SocketAddr)> = servers(&file)?
        .into_iter()
        .enumerate()
        .map(|(j, (_, addr))| (j, addr))
        .collect();
    let emulator = LinkEmulator::start(gateway(&w), &targets)
        .await
        .context("starting the link proxy on the WAN's bridge")?;
    emulator.set_shape(LinkShape {
        latency: Duration::from_millis(w.rtt_ms) / 2,
        bandwidth: Some(w.bandwidth),
    });
    std::fs::write(ready, gateway(&w).to_string())?;
    let path = link_dir(dir).join("crossed.json");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let mut c = Crossed::default();
        for from in &w.sites {
            for to in w.sites.iter().filter(|t| *t != from) {
                let (Some(a), Some(b)) = (site_ip(&w, from), site_ip(&w, to)) else {
                    continue;
                };
                c.bytes
                    .entry(from.clone())
                    .or_default()
                    .insert(to.clone(), emulator.delivered(a, b));
            }
        }
        save_crossed(&path, &c)?;
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wan_shapes_parse_and_bad_ones_say_why() {
        assert_eq!(parse_wan("50ms,100mbit"), Ok((50, 12_500_000)));
        assert_eq!(parse_wan(" 0.2s , 1gbit"), Ok((200, 125_000_000)));
        assert_eq!(parse_wan("0ms,1MiB"), Ok((0, 1 << 20)));
        for bad in [
            "50ms",
            "50,100mbit",
            "-5ms,1mbit",
            "11s,1mbit",
            "50ms,fast",
            "",
        ] {
            let e = parse_wan(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
    }

    #[test]
    fn a_folder_keys_the_same_network_every_time() {
        let a = key_of(Path::new("/work/.mobilus-dev"));
        assert_eq!(a, key_of(Path::new("/work/.mobilus-dev")));
        assert_ne!(a, key_of(Path::new("/work/other")));
        assert!(a <= 0xffff);
    }
}
