//! A link emulator for traffic between sites (the kernel here has no netem): every TCP
//! connection from a host to a server of another site is redirected (iptables DNAT, in
//! the client's namespace) to a proxy in the harness, which forwards it with the
//! configured latency and bandwidth. Partitions reach proxied connections too: the proxy
//! stalls traffic between cut hosts, as a dropped link would. It counts the bytes it
//! delivers between each pair of hosts (what crossed between the sites).

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// First proxy port; the proxy of host `j`'s server listens on `BASE_PORT + j`.
pub const BASE_PORT: u16 = 30000;

/// How inter-site links behave now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkShape {
    pub latency: Duration,
    /// Bytes per second per direction of each connection; `None`: unlimited.
    pub bandwidth: Option<u64>,
}

#[derive(Default)]
struct State {
    shape: LinkShape,
    /// (from, to) address pairs whose traffic is stalled.
    cut: HashSet<(Ipv4Addr, Ipv4Addr)>,
    /// Bytes delivered from one address to another, connections in both directions.
    delivered: std::sync::Mutex<HashMap<(Ipv4Addr, Ipv4Addr), u64>>,
}

/// The proxies of one run; dropping it stops them.
pub struct LinkEmulator {
    state: Arc<RwLock<State>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl LinkEmulator {
    /// Listen on `gateway:BASE_PORT+j` for each `(j, target)`, forwarding to `target`.
    pub async fn start(
        gateway: Ipv4Addr,
        targets: &[(usize, SocketAddr)],
    ) -> std::io::Result<Self> {
        let state: Arc<RwLock<State>> = Arc::default();
        let mut tasks = Vec::new();
        for (j, target) in targets {
            let listener = TcpListener::bind((gateway, BASE_PORT + *j as u16)).await?;
            let (state, target) = (state.clone(), *target);
            tasks.push(tokio::spawn(async move {
                while let Ok((conn, from)) = listener.accept().await {
                    let state = state.clone();
                    tokio::spawn(async move {
                        let _ = relay(conn, from, target, state).await;
                    });
                }
            }));
        }
        Ok(LinkEmulator { state, tasks })
    }

    pub fn shape(&self) -> LinkShape {
        read(&self.state).shape.clone()
    }

    pub fn set_shape(&self, shape: LinkShape) {
        write(&self.state).shape = shape;
    }

    /// Bytes delivered from `from` to `to` since the start.
    pub fn delivered(&self, from: Ipv4Addr, to: Ipv4Addr) -> u64 {
        let s = read(&self.state);
        let d = s.delivered.lock().unwrap_or_else(|p| p.into_inner());
        d.get(&(from, to)).copied().unwrap_or(0)
    }

    /// Stall traffic between these address pairs (both directions), replacing any cut.
    pub fn set_cut(&self, pairs: impl IntoIterator<Item = (Ipv4Addr, Ipv4Addr)>) {
        let mut s = write(&self.state);
        s.cut.clear();
        for (a, b) in pairs {
            s.cut.insert((a, b));
            s.cut.insert((b, a));
        }
    }
}

impl Drop for LinkEmulator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn relay(
    client: TcpStream,
    from: SocketAddr,
    target: SocketAddr,
    state: Arc<RwLock<State>>,
) -> std::io::Result<()> {
    let server = TcpStream::connect(target).await?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (src, dst) = match (from.ip(), target.ip()) {
        (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b)) => (a, b),
        _ => return Ok(()),
    };
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = tokio::spawn(pipe(cr, sw, src, dst, state.clone()));
    let down = tokio::spawn(pipe(sr, cw, dst, src, state));
    let _ = tokio::join!(up, down);
    Ok(())
}

/// Copy one direction: bytes read at `t` are written at `t + latency`, no faster than
/// the bandwidth, and not while `from → to` is cut.
async fn pipe(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    from: Ipv4Addr,
    to: Ipv4Addr,
    state: Arc<RwLock<State>>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(1024);
    let deliver_state = state.clone();
    let deliver = tokio::spawn(async move {
        let mut free_at = Instant::now();
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            // A cut link stalls until healed.
            loop {
                let cut = read(&deliver_state).cut.contains(&(from, to));
                if !cut {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let bandwidth = read(&deliver_state).shape.bandwidth.filter(|b| *b > 0);
            if let Some(bw) = bandwidth {
                let now = Instant::now();
                free_at =
                    free_at.max(now) + Duration::from_secs_f64(bytes.len() as f64 / bw as f64);
                tokio::time::sleep_until(free_at).await;
            }
            if w.write_all(&bytes).await.is_err() {
                return;
            }
            {
                let s = read(&deliver_state);
                let mut d = s.delivered.lock().unwrap_or_else(|p| p.into_inner());
                *d.entry((from, to)).or_default() += bytes.len() as u64;
            }
        }
        let _ = w.shutdown().await;
    });
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let latency = read(&state).shape.latency;
        if tx
            .send((Instant::now() + latency, buf[..n].to_vec()))
            .await
            .is_err()
        {
            break;
        }
    }
    drop(tx);
    let _ = deliver.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_arrive_late_slowly_and_not_at_all_while_cut() -> std::io::Result<()> {
        let echo = TcpListener::bind("127.0.0.1:0").await?;
        let target = echo.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut c, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = c.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        // Port BASE_PORT + 900 on loopback for the test.
        let emu = LinkEmulator::start(Ipv4Addr::LOCALHOST, &[(900, target)]).await?;
        let proxy = SocketAddr::from((Ipv4Addr::LOCALHOST, BASE_PORT + 900));
        let round_trip = |n: usize| async move {
            let mut c = TcpStream::connect(proxy).await?;
            let start = Instant::now();
            c.write_all(&vec![7u8; n]).await?;
            let mut back = vec![0u8; n];
            c.read_exact(&mut back).await?;
            assert!(back.iter().all(|b| *b == 7));
            std::io::Result::Ok(start.elapsed())
        };
        let plain = round_trip(10).await?;
        emu.set_shape(LinkShape {
            latency: Duration::from_millis(100),
            bandwidth: None,
        });
        let slow = round_trip(10).await?;
        assert!(slow >= Duration::from_millis(200), "{slow:?} vs {plain:?}");
        emu.set_shape(LinkShape {
            latency: Duration::ZERO,
            bandwidth: Some(1 << 20),
        });
        let narrow = round_trip(512 << 10).await?;
        assert!(
            narrow >= Duration::from_millis(450),
            "512 KiB each way (overlapping) at 1 MiB/s took {narrow:?}"
        );
        emu.set_shape(LinkShape::default());
        emu.set_cut([(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST)]);
        let stalled = tokio::time::timeout(Duration::from_millis(300), round_trip(10)).await;
        assert!(stalled.is_err(), "a cut link must stall");
        emu.set_cut([]);
        round_trip(10).await?;
        // Every completed round trip was counted, both ways (the stalled one's bytes
        // may or may not have gone on once healed).
        let lo = Ipv4Addr::LOCALHOST;
        let (done, counted) = (2 * (30 + (512 << 10)), emu.delivered(lo, lo));
        assert!(
            (done..=done + 20).contains(&counted),
            "counted {counted} bytes"
        );
        Ok(())
    }
}
