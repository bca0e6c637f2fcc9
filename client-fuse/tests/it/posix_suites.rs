//! Real POSIX suites against a real mount: pjdfstest (the Rust port). The failures we
//! expect, each with its reason, live in `client-fuse/tests/pjdfstest-expected.txt`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::cluster::TwoSites;

const CONFIG: &str = r#"
# Opt-in features Mobilus supports (posix_fallocate it does not: EOPNOTSUPP).
[features]
utimensat = {}
utime_now = {}
rename_ctime = {}

[settings]
naptime = 0.05

[dummy_auth]
entries = [["nobody", "nogroup"], ["tests", "tests"]]
"#;

/// Test names listed in the expected-failures file (one per line; `#` comments).
fn expected_failures() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pjdfstest-expected.txt");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pjdfstest_passes_on_a_mount() {
    let sites = TwoSites::start().await;
    let m = sites.mount("site-a");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pjdfstest.toml");
    std::fs::write(&config, CONFIG).unwrap();
    // The suite runs as root and switches to the `tests` and `nobody` users: the
    // directory it works in must let them in.
    let work = m.point.join("pjdfstest");
    std::fs::create_dir(&work).unwrap();
    std::fs::set_permissions(&work, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let out = Command::new("pjdfstest")
        .arg("-c")
        .arg(&config)
        .arg("-p")
        .arg(&work)
        .output()
        .expect("pjdfstest is installed by scripts/prereqs.sh (cargo install pjdfstest)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut passed = 0;
    let mut failed = BTreeSet::new();
    let mut skipped = 0;
    // Result lines are `name   ok|FAILED|skipped`; details follow, indented.
    for line in stdout
        .lines()
        .filter(|l| !l.starts_with(char::is_whitespace))
    {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(_), Some("ok"), None) => passed += 1,
            (Some(_), Some("skipped"), None) => skipped += 1,
            (Some(name), Some("FAILED"), None) => {
                failed.insert(name.to_string());
            }
            _ => {}
        }
    }
    eprintln!(
        "pjdfstest: {} run, {passed} passed, {} failed, {skipped} skipped",
        passed + failed.len(),
        failed.len()
    );
    let expected = expected_failures();
    let unexpected: Vec<_> = failed.difference(&expected).collect();
    let fixed: Vec<_> = expected.difference(&failed).collect();
    assert!(
        passed > 100,
        "pjdfstest did not run:\n{stdout}\n{stderr}\nmount log:\n{}",
        m.log()
    );
    assert!(
        unexpected.is_empty(),
        "unexpected failures: {unexpected:#?}\n\n{stdout}"
    );
    assert!(
        fixed.is_empty(),
        "these pass now; remove them from pjdfstest-expected.txt: {fixed:#?}"
    );
}

/// fsx operations for the test run; `FSX_OPS` raises it for the long, documented run.
fn fsx_ops() -> u64 {
    std::env::var("FSX_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

const FSX_CONFIG: &str = r#"
# The defaults (read, write, mapread, mapwrite, truncate) plus closes and fsyncs, which
# make the mount flush its buffers and reopen its readers.
[weights]
close_open = 0.05
fsync = 0.05
fdatasync = 0.05
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fsx_finds_no_miscompare_on_a_mount() {
    let sites = TwoSites::start().await;
    let m = sites.mount("site-a");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fsx.toml");
    // `FSX_CONFIG` names another fsx config file (other operation weights).
    let text = match std::env::var("FSX_CONFIG") {
        Ok(path) => std::fs::read_to_string(path).unwrap(),
        Err(_) => FSX_CONFIG.to_string(),
    };
    std::fs::write(&config, text).unwrap();
    let ops = fsx_ops();
    let started = std::time::Instant::now();
    let out = Command::new("fsx")
        .arg("-N")
        .arg(ops.to_string())
        .args(["-S", "42", "-q", "-f"])
        .arg(&config)
        .arg("-P")
        .arg(dir.path())
        .arg(m.point.join("fsx.file"))
        .output()
        .expect("fsx is installed by scripts/prereqs.sh (cargo install fsx)");
    eprintln!(
        "fsx: {ops} operations in {:.1} s, exit {}",
        started.elapsed().as_secs_f64(),
        out.status
    );
    assert!(
        out.status.success(),
        "fsx failed:\n{}\n{}\nmount log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        m.log()
    );
}
