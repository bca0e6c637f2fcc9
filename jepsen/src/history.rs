//! The history of a run: every invocation and completion, in the order the harness saw
//! them, as JSON lines (one [`Event`] per line; documented in `jepsen/HISTORY.md`).
//!
//! An operation is an `invoke` followed, for the same process, by `ok` (it happened, with
//! this result), `fail` (it certainly did not happen) or `info` (unknown: it may have
//! happened, at any time after its invocation, or never). A process with an `info`
//! operation is never reused, as in Jepsen.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Who did it: a client process, or the nemesis.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Process {
    Client(u64),
    /// Always `"nemesis"`.
    Named(String),
}

impl Process {
    pub fn nemesis() -> Self {
        Process::Named("nemesis".into())
    }

    pub fn is_nemesis(&self) -> bool {
        matches!(self, Process::Named(n) if n == "nemesis")
    }
}

impl std::fmt::Display for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Process::Client(n) => write!(f, "{n}"),
            Process::Named(n) => f.write_str(n),
        }
    }
}

/// What an event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// One line of a history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the history (0, 1, 2, ...): the order the harness saw events in.
    pub index: u64,
    /// Nanoseconds since the run started.
    pub time_ns: u64,
    pub process: Process,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The operation: `read`, `write`, `cas` (register); `add`, `read` (set); `write`,
    /// `verify` (durability); `start`/`stop` of a fault (nemesis).
    pub f: String,
    /// The register's or file's key, for workloads with many independent ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Operation-specific: the value written, `[from, to]` of a CAS, the value read
    /// (`null` if none), a fault's description.
    #[serde(default)]
    pub value: serde_json::Value,
    /// Why an operation failed or is indeterminate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Event {
    /// An event of client `process` at time 0, numbered when pushed (for tests and
    /// hand-made histories).
    pub fn client(
        process: u64,
        kind: EventType,
        f: &str,
        key: Option<&str>,
        value: serde_json::Value,
    ) -> Self {
        Event {
            index: 0,
            time_ns: 0,
            process: Process::Client(process),
            kind,
            f: f.to_string(),
            key: key.map(str::to_string),
            value,
            error: None,
        }
    }
}

/// What can be wrong with a history file.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot read {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("line {line}: {why}")]
    Parse { line: usize, why: String },
    #[error("event {index}: {why}")]
    Malformed { index: u64, why: String },
}

/// A whole history.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    pub events: Vec<Event>,
}

/// An operation: its invocation and, if it completed, its completion.
#[derive(Clone, Debug, PartialEq)]
pub struct Operation {
    pub process: Process,
    pub f: String,
    pub key: Option<String>,
    /// The invocation's value (what was asked).
    pub input: serde_json::Value,
    /// The completion's value (what was answered), for `ok` operations.
    pub output: serde_json::Value,
    /// `Ok`, `Fail` or `Info` (a run cut short leaves `Info`).
    pub outcome: EventType,
    /// Positions of the invocation and completion in the history (`None`: never
    /// completed, like `info`).
    pub invoke_index: u64,
    pub complete_index: Option<u64>,
    pub invoke_ns: u64,
    pub complete_ns: Option<u64>,
}

impl History {
    /// Append an event, numbering it.
    pub fn push(&mut self, mut e: Event) -> &Event {
        e.index = self.events.len() as u64;
        self.events.push(e);
        &self.events[self.events.len() - 1]
    }

    pub fn read_jsonl(path: &Path) -> Result<Self, HistoryError> {
        let io = |source| HistoryError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut events = Vec::new();
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(io)?;
            if line.trim().is_empty() {
                continue;
            }
            let e: Event = serde_json::from_str(&line).map_err(|e| HistoryError::Parse {
                line: n + 1,
                why: e.to_string(),
            })?;
            events.push(e);
        }
        Ok(History { events })
    }

    pub fn write_jsonl(&self, out: &mut impl Write) -> std::io::Result<()> {
        for e in &self.events {
            serde_json::to_writer(&mut *out, e)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Pair invocations with completions, per process, in history order. Operations of
    /// the nemesis are left out. A process may have one operation outstanding at a time.
    pub fn operations(&self) -> Result<Vec<Operation>, HistoryError> {
        let mut open: HashMap<Process, usize> = HashMap::new();
        let mut ops: Vec<Operation> = Vec::new();
        for e in &self.events {
            if e.process.is_nemesis() {
                continue;
            }
            match e.kind {
                EventType::Invoke => {
                    if open.contains_key(&e.process) {
                        return Err(HistoryError::Malformed {
                            index: e.index,
                            why: format!("process {} invoked twice without completing", e.process),
                        });
                    }
                    open.insert(e.process.clone(), ops.len());
                    ops.push(Operation {
                        process: e.process.clone(),
                        f: e.f.clone(),
                        key: e.key.clone(),
                        input: e.value.clone(),
                        output: serde_json::Value::Null,
                        outcome: EventType::Info,
                        invoke_index: e.index,
                        complete_index: None,
                        invoke_ns: e.time_ns,
                        complete_ns: None,
                    });
                }
                kind => {
                    let Some(i) = open.remove(&e.process) else {
                        return Err(HistoryError::Malformed {
                            index: e.index,
                            why: format!("process {} completed nothing it invoked", e.process),
                        });
                    };
                    let op = &mut ops[i];
                    if op.f != e.f {
                        return Err(HistoryError::Malformed {
                            index: e.index,
                            why: format!("invoked {} but completed {}", op.f, e.f),
                        });
                    }
                    op.outcome = kind;
                    op.output = e.value.clone();
                    if kind != EventType::Info {
                        op.complete_index = Some(e.index);
                        op.complete_ns = Some(e.time_ns);
                    }
                }
            }
        }
        Ok(ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(process: u64, kind: EventType, f: &str, value: serde_json::Value) -> Event {
        Event::client(process, kind, f, Some("k"), value)
    }

    #[test]
    fn events_round_trip_through_json_lines() -> anyhow::Result<()> {
        let mut h = History::default();
        h.push(ev(0, EventType::Invoke, "cas", json!([1, 2])));
        h.push(Event {
            process: Process::nemesis(),
            ..ev(0, EventType::Info, "start", json!("partition"))
        });
        h.push(ev(0, EventType::Ok, "cas", json!([1, 2])));
        let mut bytes = Vec::new();
        h.write_jsonl(&mut bytes)?;
        let text = String::from_utf8(bytes)?;
        assert!(text.contains(r#""process":"nemesis""#), "{text}");
        assert!(text.contains(r#""type":"invoke""#), "{text}");
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("h.jsonl");
        std::fs::write(&path, &text)?;
        assert_eq!(History::read_jsonl(&path)?, h);
        let ops = h.operations()?;
        assert_eq!(ops.len(), 1);
        assert_eq!((ops[0].invoke_index, ops[0].complete_index), (0, Some(2)));
        Ok(())
    }

    #[test]
    fn malformed_histories_are_refused_with_the_place() {
        let mut h = History::default();
        h.push(ev(0, EventType::Ok, "read", json!(1)));
        assert!(matches!(
            h.operations(),
            Err(HistoryError::Malformed { index: 0, .. })
        ));
        let mut h = History::default();
        h.push(ev(0, EventType::Invoke, "read", json!(null)));
        h.push(ev(0, EventType::Invoke, "read", json!(null)));
        assert!(h.operations().is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.jsonl");
        std::fs::write(&path, "{\"index\":0}\nnot json\n").unwrap();
        match History::read_jsonl(&path) {
            Err(HistoryError::Parse { line: 1, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unfinished_operation_is_indeterminate() {
        let mut h = History::default();
        h.push(ev(3, EventType::Invoke, "write", json!(5)));
        let ops = h.operations().unwrap();
        assert_eq!(ops[0].outcome, EventType::Info);
        assert_eq!(ops[0].complete_index, None);
    }
}
