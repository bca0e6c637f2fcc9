//! A token bucket over bytes, shared by the transfers to or from one remote site, and the
//! parser of bandwidth flags.
//!
//! Hand-written rather than `governor`'s: a transfer is one chunk of up to 16 MiB, taken
//! whole, and a rate limiter whose cells must fit its burst would need a burst of 16 MiB
//! (a quarter of a second of overshoot at 100 Mbit/s per chunk). Here the balance may go
//! negative: a large take is granted at once and the next taker waits out the debt, so
//! the rate holds over any interval longer than a chunk's transfer.

use std::time::Duration;

use tokio::time::Instant;

/// Bytes per second, from `12500000`, `100mbit`, `1gbit`, `50MiB`, `20MB`, `512KiB`.
pub fn parse_bandwidth(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a bandwidth (try 100mbit or 50MiB)"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kbit" => 1e3 / 8.0,
        "mbit" => 1e6 / 8.0,
        "gbit" => 1e9 / 8.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown bandwidth unit {other:?} in {s:?}")),
    };
    let bytes = value * scale;
    if !(1.0..=1e12).contains(&bytes) {
        return Err(format!("{s:?} is outside 1 B/s to 1 TB/s"));
    }
    Ok(bytes as u64)
}

/// Bytes at `rate` per second, with bursts of up to `burst` bytes.
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: tokio::sync::Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A bucket of `bytes_per_sec`, whose bursts are at most a tenth of a second's worth.
    pub fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        TokenBucket {
            rate,
            burst: rate / 10.0,
            state: tokio::sync::Mutex::new((rate / 10.0, Instant::now())),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// Wait until `n` bytes may go. Takers are served in turn.
    pub async fn take(&self, n: u64) {
        let mut state = self.state.lock().await;
        let (tokens, at) = &mut *state;
        let now = Instant::now();
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        *tokens -= n as f64;
        if *tokens < 0.0 {
            // Held while waiting: whoever comes next waits behind this debt.
            tokio::time::sleep(Duration::from_secs_f64(-*tokens / self.rate)).await;
            *tokens = 0.0;
            *at = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidths_parse_in_bits_and_bytes() {
        assert_eq!(parse_bandwidth("100mbit"), Ok(12_500_000));
        assert_eq!(parse_bandwidth("1gbit"), Ok(125_000_000));
        assert_eq!(parse_bandwidth("50MiB"), Ok(50 << 20));
        assert_eq!(parse_bandwidth("2.5MB"), Ok(2_500_000));
        assert_eq!(parse_bandwidth("4096"), Ok(4096));
        assert!(parse_bandwidth("fast").is_err());
        assert!(parse_bandwidth("10 parsecs").is_err());
        assert!(parse_bandwidth("0").is_err());
        assert!(parse_bandwidth("").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_holds_over_many_takes() {
        let bucket = TokenBucket::new(1_000_000);
        let start = tokio::time::Instant::now();
        for _ in 0..50 {
            bucket.take(200_000).await;
        }
        // 10 MB at 1 MB/s, less the first tenth of a second's burst.
        let took = start.elapsed().as_secs_f64();
        assert!((9.8..10.1).contains(&took), "{took}");
    }
}
