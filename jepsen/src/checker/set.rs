//! The set (directory) checker: concurrent `add`s of unique values (file creates) and
//! `read`s (listings). A read must contain every value whose `add` was acknowledged before
//! the read began, and nothing that was never added. The last read (after the faults
//! heal) is the final state: an acknowledged add missing from it is lost.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::history::{EventType, History, HistoryError};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SetReport {
    pub valid: bool,
    /// Acknowledged adds, and adds of unknown outcome.
    pub acknowledged: usize,
    pub indeterminate: usize,
    pub reads: usize,
    /// Acknowledged adds absent from the final read.
    pub lost: Vec<i64>,
    /// Values read that no add ever tried to add.
    pub unexpected: Vec<i64>,
    /// Indeterminate adds that turned out to have happened.
    pub recovered: usize,
    /// Reads that missed a value acknowledged before they began: (read's invoke index,
    /// the value).
    pub stale_reads: Vec<(u64, i64)>,
    /// Whether a final read exists (the run must end with one to judge losses).
    pub final_read: bool,
}

fn values(v: &serde_json::Value) -> BTreeSet<i64> {
    v.as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_i64).collect())
        .unwrap_or_default()
}

/// Check a set history. `f`s are `add` (value: an integer) and `read` (value: the list).
pub fn check(history: &History) -> Result<SetReport, HistoryError> {
    let ops = history.operations()?;
    // value → (invoke index, completion index if acknowledged)
    let mut adds: BTreeMap<i64, (u64, Option<u64>, EventType)> = BTreeMap::new();
    for o in ops.iter().filter(|o| o.f == "add") {
        if let Some(v) = o.input.as_i64() {
            adds.insert(v, (o.invoke_index, o.complete_index, o.outcome));
        }
    }
    let reads: Vec<_> = ops
        .iter()
        .filter(|o| o.f == "read" && o.outcome == EventType::Ok)
        .collect();
    let mut report = SetReport {
        valid: true,
        acknowledged: adds.values().filter(|a| a.2 == EventType::Ok).count(),
        indeterminate: adds.values().filter(|a| a.2 == EventType::Info).count(),
        reads: reads.len(),
        lost: Vec::new(),
        unexpected: Vec::new(),
        recovered: 0,
        stale_reads: Vec::new(),
        final_read: !reads.is_empty(),
    };
    let mut unexpected = BTreeSet::new();
    for r in &reads {
        let seen = values(&r.output);
        for v in &seen {
            match adds.get(v) {
                Some((invoked, _, _)) if *invoked < r.complete_index.unwrap_or(u64::MAX) => {}
                _ => {
                    unexpected.insert(*v);
                }
            }
        }
        for (v, (_, completed, kind)) in &adds {
            let before = completed.is_some_and(|c| c < r.invoke_index);
            if *kind == EventType::Ok && before && !seen.contains(v) {
                report.stale_reads.push((r.invoke_index, *v));
            }
        }
    }
    if let Some(last) = reads.last() {
        let seen = values(&last.output);
        for (v, (_, _, kind)) in &adds {
            match kind {
                EventType::Ok if !seen.contains(v) => report.lost.push(*v),
                EventType::Info if seen.contains(v) => report.recovered += 1,
                _ => {}
            }
        }
    }
    report.unexpected = unexpected.into_iter().collect();
    report.valid = report.final_read
        && report.lost.is_empty()
        && report.unexpected.is_empty()
        && report.stale_reads.is_empty();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Event;
    use serde_json::{json, Value};

    fn push(h: &mut History, p: u64, kind: EventType, f: &str, value: Value) {
        h.push(Event::client(p, kind, f, None, value));
    }

    #[test]
    fn acknowledged_adds_must_be_read_and_nothing_else() {
        let mut h = History::default();
        push(&mut h, 0, EventType::Invoke, "add", json!(1));
        push(&mut h, 0, EventType::Ok, "add", json!(1));
        push(&mut h, 1, EventType::Invoke, "add", json!(2));
        push(&mut h, 1, EventType::Info, "add", json!(2));
        push(&mut h, 2, EventType::Invoke, "read", Value::Null);
        push(&mut h, 2, EventType::Ok, "read", json!([1, 2]));
        let r = check(&h).unwrap();
        assert!(r.valid, "{r:?}");
        assert_eq!((r.acknowledged, r.indeterminate, r.recovered), (1, 1, 1));

        // A read that misses an acknowledged add, and a value from nowhere.
        push(&mut h, 2, EventType::Invoke, "read", Value::Null);
        push(&mut h, 2, EventType::Ok, "read", json!([2, 9]));
        let r = check(&h).unwrap();
        assert!(!r.valid);
        assert_eq!(r.lost, vec![1]);
        assert_eq!(r.unexpected, vec![9]);
        assert_eq!(r.stale_reads, vec![(6, 1)]);
    }

    #[test]
    fn an_add_concurrent_with_a_read_may_be_missing_from_it() {
        let mut h = History::default();
        push(&mut h, 0, EventType::Invoke, "add", json!(1));
        push(&mut h, 2, EventType::Invoke, "read", Value::Null);
        push(&mut h, 0, EventType::Ok, "add", json!(1));
        push(&mut h, 2, EventType::Ok, "read", json!([]));
        push(&mut h, 2, EventType::Invoke, "read", Value::Null);
        push(&mut h, 2, EventType::Ok, "read", json!([1]));
        assert!(check(&h).unwrap().valid);
    }

    #[test]
    fn without_a_final_read_nothing_can_be_claimed() {
        let mut h = History::default();
        push(&mut h, 0, EventType::Invoke, "add", json!(1));
        push(&mut h, 0, EventType::Ok, "add", json!(1));
        assert!(!check(&h).unwrap().valid);
    }
}
