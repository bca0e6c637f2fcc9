//! Real `mobilus-meta` processes for tests: port 0, temp dirs, killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mobilus_meta_client::{ClientOptions, MetaClient};
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_mobilus-meta");

pub struct Member {
    pub id: u64,
    pub addr: String,
    pub dir: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
}

impl Member {
    fn spawn(id: u64, dir: &Path, listen: &str, flags: &[String]) -> Child {
        let ready = dir.join("ready");
        let _ = std::fs::remove_file(&ready);
        std::fs::create_dir_all(dir).expect("member dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("log"))
            .expect("log file");
        let tls = mobilus_tls::pki::test_pki()
            .unwrap()
            .flags(mobilus_tls::Role::Meta, None, "meta")
            .expect("a certificate from the tests' CA");
        Command::new(BIN)
            .args(tls)
            .args([
                "--id",
                &id.to_string(),
                "--listen",
                listen,
                "--heartbeat-ms",
                "50",
            ])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--ready-file")
            .arg(&ready)
            .args(flags)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn mobilus-meta")
    }

    fn wait_ready(dir: &Path, child: &mut Child) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(addr) = std::fs::read_to_string(dir.join("ready")) {
                return addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
                panic!("mobilus-meta exited with {status} before serving:\n{log}");
            }
            assert!(Instant::now() < deadline, "member in {dir:?} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn start(id: u64, dir: PathBuf, flags: Vec<String>) -> Member {
        let mut child = Self::spawn(id, &dir, "127.0.0.1:0", &flags);
        let addr = Self::wait_ready(&dir, &mut child);
        Member {
            id,
            addr,
            dir,
            child: Some(child),
            extra: flags,
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("member is running").id()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("member is running");
        let sent = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("member {} did not stop on SIGTERM", self.id);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start again on the same address, data and flags (`--init` and `--join` are no-ops
    /// for a member whose state on disk already makes it part of the cluster).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "member {} is still running", self.id);
        let mut child = Self::spawn(self.id, &self.dir, &self.addr, &self.extra);
        let addr = Self::wait_ready(&self.dir, &mut child);
        assert_eq!(addr, self.addr);
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of member processes under one temp dir.
pub struct Cluster {
    pub dir: TempDir,
    pub members: Vec<Member>,
}

pub fn opts() -> ClientOptions {
    ClientOptions {
        deadline: Duration::from_secs(30),
        rpc_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_millis(500),
        ..Default::default()
    }
}

impl Cluster {
    /// Start `n` members: the first initialises, the others join it.
    pub async fn start(n: u64, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut first_flags = extra.clone();
        first_flags.push("--init".into());
        let first = Member::start(1, dir.path().join("m1"), first_flags);
        let seed = first.addr.clone();
        let mut members = vec![first];
        for id in 2..=n {
            let mut flags = extra.clone();
            flags.extend(["--join".to_string(), seed.clone()]);
            members.push(Member::start(id, dir.path().join(format!("m{id}")), flags));
        }
        let cluster = Cluster { dir, members };
        cluster.must_have_voters(n as usize).await;
        cluster
    }

    pub fn addrs(&self) -> Vec<String> {
        self.members.iter().map(|m| m.addr.clone()).collect()
    }

    pub fn client(&self) -> MetaClient {
        MetaClient::new(&self.addrs(), opts()).expect("client")
    }

    pub fn client_of(&self, idx: usize) -> MetaClient {
        MetaClient::new(&[self.members[idx].addr.clone()], opts()).expect("client")
    }

    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("--- member {}\n{}", m.id, m.log()))
            .collect()
    }

    /// Wait until a leader reports `n` voters.
    pub async fn must_have_voters(&self, n: usize) {
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(s) = client.status().await {
                if s.members.iter().filter(|m| m.voter).count() == n {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "cluster never had {n} voters\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Index (in `members`) of the current leader, as the running members agree.
    pub async fn must_leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for (i, m) in self.members.iter().enumerate() {
                if !m.is_running() {
                    continue;
                }
                if let Ok(s) = self.client().status_of(&m.addr).await {
                    if s.state == "Leader" {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
