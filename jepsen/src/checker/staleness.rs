//! The staleness checker for registers written with unique values: no read may return a
//! value older than the bound. A read of `v` is stale when some acknowledged write began
//! after `v`'s write had completed (so it certainly replaced `v`) and itself completed
//! more than the bound before the read began. A read of a value no write wrote, or of a
//! value whose write began only after the read completed, is never right.
//!
//! This is the decisive half of timed linearizability ([`super::Order::ReadsStaleBy`]):
//! the search for a linearization may run out of time on long, busy registers, this
//! check does not, and it names the read and the write it missed.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;

use super::OpView;
use crate::history::{EventType, History, HistoryError, Operation};

/// One read that saw too old a value.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StaleRead {
    pub key: Option<String>,
    pub read: OpView,
    /// Why it is wrong, in words.
    pub why: String,
    /// The acknowledged write it should have seen (or its value's write, for a read
    /// from the future).
    pub missed: Option<OpView>,
    /// How long before the read began the missed write had completed, in ms.
    pub stale_by_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StalenessReport {
    pub valid: bool,
    pub bound_ms: u64,
    pub reads_checked: usize,
    pub writes: usize,
    pub stale_count: usize,
    /// The first few stale reads.
    pub stale: Vec<StaleRead>,
}

/// At most this many stale reads are listed.
const LISTED: usize = 10;

/// Check every read of `history` against `bound`. Written values must be unique per key
/// (a repeated value is an error, since it would make a read ambiguous).
pub fn check(history: &History, bound: Duration) -> Result<StalenessReport, HistoryError> {
    let bound_ns = bound.as_nanos() as u64;
    let mut by_key: BTreeMap<Option<String>, Vec<Operation>> = BTreeMap::new();
    for op in history.operations()? {
        if op.outcome != EventType::Fail {
            by_key.entry(op.key.clone()).or_default().push(op);
        }
    }
    let mut report = StalenessReport {
        valid: true,
        bound_ms: bound.as_millis() as u64,
        reads_checked: 0,
        writes: 0,
        stale_count: 0,
        stale: Vec::new(),
    };
    for (key, ops) in &by_key {
        let writes: Vec<&Operation> = ops.iter().filter(|o| o.f == "write").collect();
        report.writes += writes.len();
        let mut by_value: HashMap<i64, &Operation> = HashMap::new();
        for w in &writes {
            let Some(v) = w.input.as_i64() else { continue };
            if by_value.insert(v, w).is_some() {
                return Err(HistoryError::Malformed {
                    index: w.invoke_index,
                    why: format!("value {v} written twice to {key:?}"),
                });
            }
        }
        // Acknowledged writes by completion time, to find the newest one a read missed.
        let mut acked: Vec<&Operation> = writes
            .iter()
            .copied()
            .filter(|w| w.outcome == EventType::Ok)
            .collect();
        acked.sort_by_key(|w| w.complete_ns);
        for r in ops
            .iter()
            .filter(|o| o.f == "read" && o.outcome == EventType::Ok)
        {
            report.reads_checked += 1;
            let horizon = r.invoke_ns.saturating_sub(bound_ns);
            // Writes acknowledged before the horizon: the read must not be older than
            // any of them.
            let before = acked.partition_point(|w| w.complete_ns.unwrap_or(u64::MAX) < horizon);
            let settled = &acked[..before];
            let verdict = match r.output.as_i64() {
                None if r.output.is_null() => settled.last().map(|w| {
                    (
                        "read nothing after a write was acknowledged".to_string(),
                        Some(*w),
                    )
                }),
                None => Some((format!("read {} (not a value)", r.output), None)),
                Some(v) => match by_value.get(&v) {
                    None => Some((format!("read {v}, which no write wrote"), None)),
                    Some(w) if w.invoke_ns > r.complete_ns.unwrap_or(u64::MAX) => {
                        Some((format!("read {v} before its write began"), Some(*w)))
                    }
                    Some(w) => {
                        // The first settled write that certainly came after v's (how
                        // long the read had been stale).
                        let written = w.complete_ns.unwrap_or(u64::MAX);
                        settled
                            .iter()
                            .find(|n| n.invoke_ns > written)
                            .map(|n| (format!("read {v}, replaced before the bound"), Some(*n)))
                    }
                },
            };
            if let Some((why, missed)) = verdict {
                report.valid = false;
                report.stale_count += 1;
                if report.stale.len() < LISTED {
                    report.stale.push(StaleRead {
                        key: key.clone(),
                        read: OpView::of(r),
                        why,
                        missed: missed.map(OpView::of),
                        stale_by_ms: missed.and_then(|m| {
                            let done = m.complete_ns?;
                            Some(r.invoke_ns.saturating_sub(done) / 1_000_000)
                        }),
                    });
                }
            }
        }
    }
    Ok(report)
}
