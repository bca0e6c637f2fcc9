//! Processes for the tests: started with a ready file, killed on drop.

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

/// `mobilus-data` of this build.
pub fn data_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mobilus-data"))
}

/// Another binary of the workspace, built next to `mobilus-data`.
pub fn sibling(name: &str) -> PathBuf {
    let path = data_bin().with_file_name(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` (cargo test --workspace does)",
        path.display()
    );
    path
}

/// The certificate flags of `bin` (a metadata member, or a data node of the `--site` in
/// `args`), from the tests' CA; the tests themselves speak as the operator.
fn tls_flags(bin: &Path, args: &[&str]) -> Vec<String> {
    use mobilus_tls::Role;
    let site = args
        .iter()
        .position(|a| *a == "--site")
        .and_then(|i| args.get(i + 1).copied());
    let pki = mobilus_tls::pki::test_pki().expect("the tests' CA");
    match bin.file_name().and_then(|n| n.to_str()) {
        Some("mobilus-meta") => pki.flags(Role::Meta, None, "meta"),
        _ => pki.flags(
            Role::Data,
            site,
            &format!("data-{}", site.unwrap_or("none")),
        ),
    }
    .expect("a certificate from the tests' CA")
}

/// Start `bin` with `args` and `--ready-file`, on mutual TLS; returns it and the address
/// it wrote.
pub fn spawn(bin: &Path, args: &[&str], ready: &Path) -> (Proc, String) {
    let child = Command::new(bin)
        .args(tls_flags(bin, args))
        .args(args)
        .arg("--ready-file")
        .arg(ready)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "{} did not start", bin.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    (Proc(child), std::fs::read_to_string(ready).unwrap())
}
