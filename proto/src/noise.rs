//! Deterministic pseudo-random bytes for tests and benchmarks: incompressible (so
//! chunking and dedup see real data), and the same for the same seed in every crate.

/// `n` bytes of xorshift64 output from `seed`.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
