//! A process's resident memory, as the memory-bound tests measure a server's.

use std::time::{Duration, Instant};

/// The resident set of process `pid`, in MiB (`None`: no such process).
pub fn rss_mib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    Some(kib / 1024)
}

/// Wait until process `pid`'s resident set has not grown for 2 s (at most 60 s), as a
/// server reads all that its budgets let it; the largest seen, in MiB.
pub async fn settled_rss_mib(pid: u32) -> u64 {
    let (mut last, mut still) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while still < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss_mib(pid).unwrap_or(0);
        still = if now <= last { still + 1 } else { 0 };
        last = last.max(now);
    }
    last
}
