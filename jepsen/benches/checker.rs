//! Checker time per history size: linearizable CAS-register histories simulated with
//! atomic effects at random points inside each operation's window (some left
//! indeterminate), checked whole. Prints one line per size.
//!
//! `cargo bench -p mobilus-jepsen --bench checker`

use std::time::{Duration, Instant};

use mobilus_jepsen::checker::{check, ModelKind, Verdict};
use mobilus_jepsen::history::{Event, EventType, History, Process};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[derive(Clone)]
enum Slot {
    Idle,
    /// Invoked; the effect not applied yet.
    Called(&'static str, Value),
    /// Applied, with the answer to give.
    Applied(&'static str, EventType, Value),
}

/// `ops` operations by `procs` processes on keys of `per_key` operations each; a share
/// `info` of operations ends indeterminate (half of them having taken effect).
fn simulate(ops: usize, procs: usize, per_key: usize, info: f64, seed: u64) -> History {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut h = History::default();
    let mut slots = vec![Slot::Idle; procs];
    let mut pid: Vec<u64> = (0..procs as u64).collect();
    let mut state: std::collections::HashMap<String, Option<i64>> = Default::default();
    let mut started = 0usize;
    let mut t = 0u64;
    let key = |n: usize| Some(format!("k{}", n / per_key));
    let mut key_of = vec![None; procs];
    let ev = |h: &mut History, p: u64, kind, f: &str, k: Option<String>, v: Value, t: u64| {
        h.push(Event {
            index: 0,
            time_ns: t,
            process: Process::Client(p),
            kind,
            f: f.into(),
            key: k,
            value: v,
            error: None,
        });
    };
    while started < ops || slots.iter().any(|s| !matches!(s, Slot::Idle)) {
        t += 1;
        let i = rng.random_range(0..procs);
        match slots[i].clone() {
            Slot::Idle if started < ops => {
                let (f, v) = match rng.random_range(0..4) {
                    0 | 1 => ("read", Value::Null),
                    2 => ("write", json!(rng.random_range(0..5))),
                    _ => (
                        "cas",
                        json!([rng.random_range(0..5), rng.random_range(0..5)]),
                    ),
                };
                key_of[i] = key(started);
                started += 1;
                ev(
                    &mut h,
                    pid[i],
                    EventType::Invoke,
                    f,
                    key_of[i].clone(),
                    v.clone(),
                    t,
                );
                slots[i] = Slot::Called(f, v);
            }
            Slot::Idle => {}
            Slot::Called(f, v) => {
                let state = state
                    .entry(key_of[i].clone().unwrap_or_default())
                    .or_default();
                // Indeterminate and never applied.
                if rng.random_bool(info / 2.0) {
                    ev(&mut h, pid[i], EventType::Info, f, key_of[i].clone(), v, t);
                    pid[i] += procs as u64;
                    slots[i] = Slot::Idle;
                    continue;
                }
                let (kind, out) = match f {
                    "read" => (EventType::Ok, json!(*state)),
                    "write" => {
                        *state = v.as_i64();
                        (EventType::Ok, v)
                    }
                    _ if *state == v[0].as_i64() => {
                        *state = v[1].as_i64();
                        (EventType::Ok, v)
                    }
                    _ => (EventType::Fail, v),
                };
                slots[i] = Slot::Applied(f, kind, out);
            }
            Slot::Applied(f, kind, out) => {
                let kind = if kind == EventType::Ok && f != "read" && rng.random_bool(info / 2.0) {
                    EventType::Info
                } else {
                    kind
                };
                ev(&mut h, pid[i], kind, f, key_of[i].clone(), out, t);
                if kind == EventType::Info {
                    pid[i] += procs as u64;
                }
                slots[i] = Slot::Idle;
            }
        }
    }
    h
}

fn main() {
    println!(
        "{:>8} {:>6} {:>8} {:>6} {:>10} {:>12}  verdict",
        "ops", "procs", "per key", "info", "ms", "ops/s"
    );
    for (ops, procs, per_key, info) in [
        (1_000, 5, 1_000, 0.0),
        (1_000, 5, 1_000, 0.02),
        (5_000, 10, 5_000, 0.0),
        (10_000, 10, 100, 0.02),
        (100_000, 10, 100, 0.02),
        (100_000, 20, 200, 0.05),
    ] {
        let h = simulate(ops, procs, per_key, info, 7);
        let start = Instant::now();
        let r = check(&h, ModelKind::CasRegister, Duration::from_secs(120));
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let verdict = match r {
            Ok(r) => format!("{:?}", r.verdict),
            Err(e) => format!("error: {e}"),
        };
        assert!(
            verdict != format!("{:?}", Verdict::NotLinearizable),
            "a simulated history must be linearizable"
        );
        println!(
            "{ops:>8} {procs:>6} {per_key:>8} {info:>6.2} {ms:>10.1} {:>12.0}  {verdict}",
            ops as f64 / (ms / 1e3)
        );
    }
}
