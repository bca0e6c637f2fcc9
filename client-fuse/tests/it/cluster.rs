//! Real processes for the tests, killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mobilus_client::Client;
use mobilus_meta_client::MetaClient;
use mobilus_tls::pki::test_pki;
use mobilus_tls::Role;
use tempfile::TempDir;

pub struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn bin(name: &str) -> PathBuf {
    // Integration tests live in target/debug/deps; the workspace's binaries one level up.
    let exe = std::env::current_exe().expect("test binary path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` (cargo test --workspace does)",
        path.display()
    );
    path
}

fn spawn(name: &str, args: &[String], dir: &Path) -> (Proc, String) {
    std::fs::create_dir_all(dir).unwrap();
    let ready = dir.join("ready");
    let log = std::fs::File::create(dir.join("log")).unwrap();
    let child = Command::new(bin(name))
        .args(args)
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        assert!(
            Instant::now() < deadline,
            "{name} did not start; see {}",
            dir.join("log").display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (Proc(child), std::fs::read_to_string(ready).unwrap())
}

/// How to start the cluster.
pub struct Opts {
    pub gc_ttl: Duration,
    pub gc_grace: Duration,
    /// Where site-a's data node keeps its files (default: in the cluster's temp dir).
    pub site_a_dir: Option<PathBuf>,
    /// More flags for every metadata member.
    pub meta_args: Vec<String>,
    /// Data nodes per site.
    pub nodes_per_site: usize,
    /// More flags for every data node.
    pub data_args: Vec<String>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            gc_ttl: Duration::from_secs(3600),
            gc_grace: Duration::from_secs(3600),
            site_a_dir: None,
            meta_args: Vec::new(),
            nodes_per_site: 1,
            data_args: Vec::new(),
        }
    }
}

pub struct TwoSites {
    pub meta_addrs: Vec<String>,
    /// Chunk folders of site-a's and site-b's (first) data nodes.
    pub chunk_dirs: Vec<PathBuf>,
    // Dropped in order: the processes first, then their folders.
    /// The 3 metadata members (member id - 1).
    procs: Vec<Proc>,
    /// The data nodes, site by site.
    pub data: Vec<DataNode>,
    _dir: TempDir,
}

/// A data node process of a test cluster (`proc` is `None` while it is stopped).
pub struct DataNode {
    pub site: String,
    pub addr: String,
    /// Its chunk files' folder.
    pub chunks: PathBuf,
    dir: PathBuf,
    args: Vec<String>,
    proc: Option<Proc>,
}

impl DataNode {
    /// SIGKILL it.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.0.kill().unwrap();
            p.0.wait().unwrap();
        }
    }

    /// Start it again, on its address and folder.
    pub fn restart(&mut self) {
        assert!(self.proc.is_none(), "{} is running", self.addr);
        let mut args = self.args.clone();
        let listen = args.iter().position(|a| a == "--listen").unwrap() + 1;
        args[listen] = self.addr.clone();
        let _ = std::fs::remove_file(self.dir.join("ready"));
        let (p, addr) = spawn("mobilus-data", &args, &self.dir);
        assert_eq!(addr, self.addr);
        self.proc = Some(p);
    }

    fn pid(&self) -> nix::unistd::Pid {
        let p = self.proc.as_ref().expect("the data node is stopped");
        nix::unistd::Pid::from_raw(p.0.id() as i32)
    }
}

impl TwoSites {
    /// Data nodes that collect garbage only when asked (the `Gc` RPC).
    pub async fn start() -> TwoSites {
        Self::start_with(Opts::default()).await
    }

    pub async fn start_with_gc(gc_ttl: Duration, gc_grace: Duration) -> TwoSites {
        Self::start_with(Opts {
            gc_ttl,
            gc_grace,
            ..Opts::default()
        })
        .await
    }

    pub async fn start_with(opts: Opts) -> TwoSites {
        let dir = tempfile::tempdir().unwrap();
        let mut procs = Vec::new();
        let mut meta_addrs: Vec<String> = Vec::new();
        for id in 1..=3u64 {
            let d = dir.path().join(format!("meta-{id}"));
            // Every process on mutual TLS, the tests' clients as the operator.
            let mut args = test_pki().unwrap().flags(Role::Meta, None, "meta").unwrap();
            args.extend(
                [
                    "--id",
                    &id.to_string(),
                    "--listen",
                    "127.0.0.1:0",
                    "--heartbeat-ms",
                    "50",
                ]
                .iter()
                .map(|s| s.to_string()),
            );
            args.extend(["--data-dir".into(), d.join("data").to_string_lossy().into()]);
            args.extend(opts.meta_args.iter().cloned());
            if id == 1 {
                args.push("--init".into());
            } else {
                args.extend(["--join".into(), meta_addrs[0].clone()]);
            }
            let (p, addr) = spawn("mobilus-meta", &args, &d);
            procs.push(p);
            meta_addrs.push(addr);
        }
        let mut chunk_dirs = Vec::new();
        let mut data = Vec::new();
        for (site, k) in ["site-a", "site-b"]
            .into_iter()
            .flat_map(|s| (1..=opts.nodes_per_site).map(move |k| (s, k)))
        {
            let d = match (&opts.site_a_dir, site, k) {
                (Some(d), "site-a", 1) => d.clone(),
                (_, _, 1) => dir.path().join(format!("data-{site}")),
                _ => dir.path().join(format!("data-{site}-{k}")),
            };
            let mut args = test_pki()
                .unwrap()
                .flags(Role::Data, Some(site), &format!("data-{site}"))
                .unwrap();
            args.extend([
                "--site".into(),
                site.into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--data-dir".into(),
                d.join("chunks").to_string_lossy().into(),
                "--meta".into(),
                meta_addrs.join(","),
                "--heartbeat-ms".into(),
                "500".into(),
                "--gc-interval-ms".into(),
                "0".into(),
                "--gc-ttl-ms".into(),
                opts.gc_ttl.as_millis().to_string(),
                "--gc-grace-ms".into(),
                opts.gc_grace.as_millis().to_string(),
                // The test machine's disk may be nearly full; that is not the cluster's
                // space pressure, and evicting every cached chunk would fail tests at random.
                "--cache-min-free-percent".into(),
                "0".into(),
            ]);
            args.extend(opts.data_args.iter().cloned());
            let (p, addr) = spawn("mobilus-data", &args, &d);
            if k == 1 {
                chunk_dirs.push(d.join("chunks").join("chunks"));
            }
            data.push(DataNode {
                site: site.into(),
                addr,
                chunks: d.join("chunks").join("chunks"),
                dir: d,
                args,
                proc: Some(p),
            });
        }
        let meta = MetaClient::connect(&meta_addrs).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((nodes, _)) = meta.list_data_nodes(None, false).await {
                if nodes.len() == data.len() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "data nodes never registered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        TwoSites {
            meta_addrs,
            chunk_dirs,
            procs,
            data,
            _dir: dir,
        }
    }

    /// SIGKILL the metadata leader; returns its member id.
    pub async fn kill_meta_leader(&mut self) -> u64 {
        let meta = MetaClient::connect(&self.meta_addrs).unwrap();
        let leader = meta.status().await.unwrap().id;
        let p = &mut self.procs[(leader - 1) as usize];
        p.0.kill().unwrap();
        p.0.wait().unwrap();
        leader
    }

    /// Send `signal` to every metadata member (SIGSTOP pauses the whole service).
    pub fn signal_meta(&self, signal: nix::sys::signal::Signal) {
        for p in &self.procs[..3] {
            let pid = nix::unistd::Pid::from_raw(p.0.id() as i32);
            nix::sys::signal::kill(pid, signal).unwrap();
        }
    }

    fn data_node(&mut self, site: &str) -> &mut DataNode {
        let found = self.data.iter_mut().find(|d| d.site == site);
        found.unwrap_or_else(|| panic!("no site {site}"))
    }

    /// Send `signal` to a site's (first) data node (SIGSTOP holds every upload to it).
    pub fn signal_data_node(&self, site: &str, signal: nix::sys::signal::Signal) {
        let node = self
            .data
            .iter()
            .find(|d| d.site == site)
            .expect("no such site");
        nix::sys::signal::kill(node.pid(), signal).unwrap();
    }

    /// SIGKILL a site's (first) data node (in a one-node site, its agent: the site's
    /// lease is no longer renewed).
    pub fn kill_data_node(&mut self, site: &str) {
        self.data_node(site).kill();
    }

    /// A `mobilus-mount` process of `site` on a fresh directory.
    pub fn mount(&self, site: &str) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let point = dir.path().join("mnt");
        std::fs::create_dir(&point).unwrap();
        let ready = dir.path().join("ready");
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let tls = test_pki()
            .unwrap()
            .flags(Role::Mount, Some(site), &format!("mount-{site}"))
            .unwrap();
        let child = Command::new(bin("mobilus-mount"))
            .args(tls)
            .args(["--site", site, "--meta", &self.meta_addrs.join(",")])
            .arg("--ready-file")
            .arg(&ready)
            .args(["--metrics-listen", "127.0.0.1:0", "--metrics-ready-file"])
            .arg(dir.path().join("metrics"))
            .arg(&point)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mount = Mount {
            child: Some(child),
            point,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            assert!(
                Instant::now() < deadline,
                "mobilus-mount did not mount; see {}",
                mount.dir.path().join("log").display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        mount
    }

    pub async fn client(&self, site: &str) -> Client {
        Client::connect(&self.meta_addrs, site)
            .await
            .expect("client")
    }

    /// A client with these data options.
    pub async fn client_with(&self, site: &str, opts: mobilus_client::DataOptions) -> Client {
        Client::connect_with(&self.meta_addrs, site, opts)
            .await
            .expect("client")
    }

    /// A client whose block cache holds at most `cache_bytes`.
    pub async fn client_with_cache(&self, site: &str, cache_bytes: u64) -> Client {
        let opts = mobilus_client::DataOptions {
            block_cache_bytes: cache_bytes,
            ..Default::default()
        };
        Client::connect_with(&self.meta_addrs, site, opts)
            .await
            .expect("client")
    }
}

/// A small tmpfs, so a data node can really run out of space; unmounted on drop.
pub struct SmallDisk {
    pub path: PathBuf,
    _dir: TempDir,
}

impl SmallDisk {
    pub fn mount(size_mib: u32) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_mib}m"),
                "mobilus-test",
            ])
            .arg(&path)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root (the README's test command runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { path, _dir: dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A mount process; dropping it stops it (SIGTERM: flush, unmount) and makes sure
/// nothing stays mounted, even when the test failed.
pub struct Mount {
    child: Option<Child>,
    pub point: PathBuf,
    dir: TempDir,
}

impl Mount {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// The value of one series of the mount's metrics (`name{labels}` exactly as
    /// served), 0 if it has no sample yet.
    pub fn metric(&self, series: &str) -> f64 {
        use std::io::{Read, Write};
        let addr = std::fs::read_to_string(self.dir.path().join("metrics")).unwrap();
        let mut s = std::net::TcpStream::connect(addr.trim()).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// The mount's process.
    pub fn pid(&self) -> nix::unistd::Pid {
        let child = self.child.as_ref().expect("the mount runs");
        nix::unistd::Pid::from_raw(child.id() as i32)
    }

    /// Send `signal` to the mount's process (SIGSTOP: a paused host).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), signal).unwrap();
    }

    /// Stop it with SIGTERM and wait; returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL it: nothing is flushed, nothing unmounted.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_mounted(&self) -> bool {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let point = self.point.to_string_lossy().to_string();
        mounts
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(point.as_str()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- last lines of the mount's log at {}:",
                self.point.display()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        if self.is_mounted() {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.point)
                .status();
        }
    }
}
