//! The durability checker: every file's final content (read after the faults heal and
//! every server restarts) must be the last acknowledged (fsynced) write to it, whole.
//! The one excuse is a write of unknown outcome begun after it: that write may have
//! landed whole, in part (a failed write leaves a file in an unspecified state, as POSIX
//! allows), or not at all; then the content must be that write's (whole or not) or
//! shorter than a header (truncated). The workers run each file's operations one at a
//! time, so an acknowledged write is never mixed with an earlier one. Anything else
//! loses the acknowledged write's bytes.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::history::{EventType, History, HistoryError, Operation};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DurabilityReport {
    pub valid: bool,
    pub files: usize,
    pub acknowledged_writes: usize,
    pub indeterminate_writes: usize,
    pub acknowledged_bytes: u64,
    /// Files left in a partial state by a write of unknown outcome (allowed).
    pub partial_after_indeterminate: usize,
    /// Files whose last acknowledged write is not what the final read saw.
    pub lost_files: Vec<String>,
    /// Bytes of those acknowledged writes.
    pub lost_bytes: u64,
    /// Files with an acknowledged write and no final read.
    pub unread: Vec<String>,
}

/// Check a durability history: `write` (value `{seed, len}`) and `read` (value `null`
/// for a missing file, else `{seed, len, intact}`) per key. The final read of a key is
/// its last `ok` read invoked after all its writes.
pub fn check(history: &History) -> Result<DurabilityReport, HistoryError> {
    let ops = history.operations()?;
    let mut by_key: BTreeMap<String, Vec<&Operation>> = BTreeMap::new();
    for o in &ops {
        if let Some(k) = &o.key {
            by_key.entry(k.clone()).or_default().push(o);
        }
    }
    let mut r = DurabilityReport {
        valid: true,
        files: by_key.len(),
        acknowledged_writes: 0,
        indeterminate_writes: 0,
        acknowledged_bytes: 0,
        partial_after_indeterminate: 0,
        lost_files: Vec::new(),
        lost_bytes: 0,
        unread: Vec::new(),
    };
    for (key, ops) in by_key {
        let writes: Vec<&&Operation> = ops.iter().filter(|o| o.f == "write").collect();
        r.acknowledged_writes += writes.iter().filter(|w| w.outcome == EventType::Ok).count();
        r.indeterminate_writes += writes
            .iter()
            .filter(|w| w.outcome == EventType::Info)
            .count();
        r.acknowledged_bytes += writes
            .iter()
            .filter(|w| w.outcome == EventType::Ok)
            .filter_map(|w| w.input["len"].as_u64())
            .sum::<u64>();
        let Some(last_ok) = writes
            .iter()
            .filter(|w| w.outcome == EventType::Ok)
            .max_by_key(|w| w.complete_index)
        else {
            continue;
        };
        let after_writes = writes.iter().map(|w| w.invoke_index).max().unwrap_or(0);
        let Some(final_read) = ops
            .iter()
            .filter(|o| {
                o.f == "read" && o.outcome == EventType::Ok && o.invoke_index > after_writes
            })
            .max_by_key(|o| o.invoke_index)
        else {
            r.unread.push(key);
            continue;
        };
        let seen = &final_read.output;
        let seed = seen["seed"].as_u64();
        let whole = seen["intact"] == true;
        let later_unknown: Vec<&&&Operation> = writes
            .iter()
            .filter(|w| w.outcome == EventType::Info && w.invoke_index > last_ok.invoke_index)
            .collect();
        let is_last = whole && seed == last_ok.input["seed"].as_u64();
        let by_later = seed.is_some()
            && later_unknown
                .iter()
                .any(|w| w.input["seed"].as_u64() == seed);
        // Shorter than a header: truncated by a later write that went no further.
        let truncated = !later_unknown.is_empty() && !seen.is_null() && seed.is_none();
        let explained = is_last || by_later || truncated;
        if explained && !is_last && !whole {
            r.partial_after_indeterminate += 1;
        }
        if !explained {
            r.lost_bytes += last_ok.input["len"].as_u64().unwrap_or(0);
            r.lost_files.push(key);
        }
    }
    r.valid = r.lost_files.is_empty() && r.unread.is_empty();
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Event;
    use serde_json::{json, Value};

    fn push(h: &mut History, p: u64, kind: EventType, f: &str, value: Value) {
        h.push(Event::client(p, kind, f, Some("f0"), value));
    }

    #[test]
    fn the_last_acknowledged_write_must_survive() {
        let mut h = History::default();
        push(
            &mut h,
            0,
            EventType::Invoke,
            "write",
            json!({"seed": 1, "len": 10}),
        );
        push(
            &mut h,
            0,
            EventType::Ok,
            "write",
            json!({"seed": 1, "len": 10}),
        );
        push(
            &mut h,
            0,
            EventType::Invoke,
            "write",
            json!({"seed": 2, "len": 20}),
        );
        push(
            &mut h,
            0,
            EventType::Ok,
            "write",
            json!({"seed": 2, "len": 20}),
        );
        push(
            &mut h,
            0,
            EventType::Invoke,
            "write",
            json!({"seed": 3, "len": 30}),
        );
        push(
            &mut h,
            0,
            EventType::Info,
            "write",
            json!({"seed": 3, "len": 30}),
        );
        let mut ok = h.clone();
        push(&mut ok, 9, EventType::Invoke, "read", Value::Null);
        push(
            &mut ok,
            9,
            EventType::Ok,
            "read",
            json!({"seed": 2, "len": 20, "intact": true}),
        );
        assert!(check(&ok).unwrap().valid);
        // The indeterminate write may have landed.
        let mut later = h.clone();
        push(&mut later, 9, EventType::Invoke, "read", Value::Null);
        push(
            &mut later,
            9,
            EventType::Ok,
            "read",
            json!({"seed": 3, "len": 30, "intact": true}),
        );
        assert!(check(&later).unwrap().valid);
        // An older write, a torn file, or nothing: the acknowledged bytes are lost.
        for seen in [
            json!({"seed": 1, "len": 10, "intact": true}),
            json!({"seed": 2, "len": 20, "intact": false}),
            Value::Null,
        ] {
            let mut bad = h.clone();
            push(&mut bad, 9, EventType::Invoke, "read", Value::Null);
            push(&mut bad, 9, EventType::Ok, "read", seen.clone());
            let r = check(&bad).unwrap();
            assert!(!r.valid, "{seen}");
            assert_eq!((r.lost_bytes, r.lost_files.len()), (20, 1));
        }
        // The indeterminate write in part, or truncated and no further: allowed.
        for seen in [
            json!({"seed": 3, "len": 30, "intact": false}),
            json!({"seed": null, "len": 0, "intact": false}),
        ] {
            let mut partial = h.clone();
            push(&mut partial, 9, EventType::Invoke, "read", Value::Null);
            push(&mut partial, 9, EventType::Ok, "read", seen.clone());
            let r = check(&partial).unwrap();
            assert!(r.valid, "{seen}");
            assert_eq!(r.partial_after_indeterminate, 1);
        }
        // No final read: no claim of durability.
        let r = check(&h).unwrap();
        assert!(!r.valid);
        assert_eq!(r.unread, vec!["f0".to_string()]);
    }
}
