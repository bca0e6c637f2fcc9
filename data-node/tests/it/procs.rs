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

/// Start `bin` with `args` and `--ready-file`; returns it and the address it wrote.
pub fn spawn(bin: &Path, args: &[&str], ready: &Path) -> (Proc, String) {
    let child = Command::new(bin)
        .arg("--insecure")
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
