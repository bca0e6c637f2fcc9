//! Jepsen's EDN history format, for the register models: one map per operation event,
//! `{:process 0, :type :invoke, :f :cas, :value [3 0]}`, one per line or all in one
//! vector; records tagged `#jepsen.history.Op{...}` are read as maps. A history of many
//! registers uses `jepsen.independent` tuples: `:value [key value]`.
//!
//! Parsing uses the `edn-rs` crate; writing is plain formatting (the subset is small).

use std::io::Write;
use std::str::FromStr;

use edn_rs::Edn;
use serde_json::Value;

use crate::history::{Event, EventType, History, Process};

#[derive(Debug, thiserror::Error)]
pub enum EdnError {
    #[error("EDN: {0}")]
    Parse(String),
    #[error("event {index}: {why}")]
    Event { index: usize, why: String },
}

fn to_json(e: &Edn) -> Value {
    match e {
        Edn::Nil | Edn::Empty => Value::Null,
        Edn::Int(i) => Value::from(*i),
        Edn::UInt(u) => Value::from(*u),
        Edn::Bool(b) => Value::Bool(*b),
        Edn::Str(s) | Edn::Symbol(s) | Edn::Rational(s) => Value::String(s.clone()),
        Edn::Key(k) => Value::String(k.trim_start_matches(':').to_string()),
        Edn::Char(c) => Value::String(c.to_string()),
        Edn::Double(d) => d
            .to_string()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        Edn::Vector(v) => Value::Array(v.clone().to_vec().iter().map(to_json).collect()),
        Edn::List(l) => Value::Array(l.clone().to_vec().iter().map(to_json).collect()),
        Edn::Tagged(_, inner) => to_json(inner),
        other => Value::String(other.to_string()),
    }
}

/// The map of one event (unwrapping a tagged record).
fn event_map(e: Edn) -> Option<std::collections::BTreeMap<String, Edn>> {
    match e {
        Edn::Map(m) => Some(m.to_map()),
        Edn::Tagged(_, inner) => event_map(*inner),
        _ => None,
    }
}

/// Is `value` a `jepsen.independent` tuple `[key v]` for an operation `f`?
fn split_key(f: &str, value: &Value) -> (Option<String>, Value) {
    let Some([k, v]) = value.as_array().map(Vec::as_slice) else {
        return (None, value.clone());
    };
    let keyed = match f {
        // An unkeyed CAS value is [from to] of numbers; a keyed one is [k [from to]].
        "cas" => v.is_array(),
        _ => true,
    };
    if !keyed {
        return (None, value.clone());
    }
    let key = match k {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    (Some(key), v.clone())
}

fn event(index: usize, m: std::collections::BTreeMap<String, Edn>) -> Result<Event, EdnError> {
    let bad = |why: String| EdnError::Event { index, why };
    let get = |k: &str| m.get(k).cloned().unwrap_or(Edn::Nil);
    let process = match get(":process") {
        Edn::Int(p) if p >= 0 => Process::Client(p as u64),
        Edn::UInt(p) => Process::Client(p),
        Edn::Key(k) => Process::Named(k.trim_start_matches(':').to_string()),
        other => return Err(bad(format!(":process {other}"))),
    };
    let kind = match get(":type") {
        Edn::Key(k) => match k.trim_start_matches(':') {
            "invoke" => EventType::Invoke,
            "ok" => EventType::Ok,
            "fail" => EventType::Fail,
            "info" => EventType::Info,
            other => return Err(bad(format!("unknown :type :{other}"))),
        },
        other => return Err(bad(format!(":type {other}"))),
    };
    let f = match to_json(&get(":f")) {
        Value::String(s) => s,
        other => return Err(bad(format!(":f {other}"))),
    };
    let raw = to_json(&get(":value"));
    let (key, value) = if process.is_nemesis() {
        (None, raw)
    } else {
        split_key(&f, &raw)
    };
    let number = |k: &str| match get(k) {
        Edn::Int(i) if i >= 0 => Some(i as u64),
        Edn::UInt(u) => Some(u),
        _ => None,
    };
    Ok(Event {
        index: number(":index").unwrap_or(index as u64),
        time_ns: number(":time").unwrap_or(0),
        process,
        kind,
        f,
        key,
        value,
        error: match get(":error") {
            Edn::Nil => None,
            e => Some(to_json(&e).to_string()),
        },
    })
}

/// Refuse a character outside ASCII anywhere but in a string or a comment. Jepsen writes
/// none there, and edn-rs 0.17 panics on some inside a number (its radix parse slices the
/// token at a byte offset found in the token's lowercase form, whose length can differ).
fn ascii_outside_strings(text: &str) -> Result<(), EdnError> {
    let (mut in_string, mut escaped) = (false, false);
    for (line, l) in text.lines().enumerate() {
        let mut in_comment = false;
        for c in l.chars() {
            if in_comment {
                continue;
            }
            if in_string {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match (escaped, c) {
                // A character literal (`\"`, `\;`) starts nothing.
                (true, _) if c.is_ascii() => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = true,
                (false, ';') => in_comment = true,
                _ if !c.is_ascii() => {
                    return Err(EdnError::Parse(format!(
                        "line {}: {c:?} outside a string: only ASCII is read there",
                        line + 1
                    )))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Read a Jepsen EDN history. Events are renumbered in file order.
pub fn read_edn(text: &str) -> Result<History, EdnError> {
    ascii_outside_strings(text)?;
    let trimmed = text.trim_start();
    let forms: Vec<Edn> = if trimmed.starts_with('[') {
        match Edn::from_str(trimmed).map_err(|e| EdnError::Parse(format!("{e:?}")))? {
            Edn::Vector(v) => v.to_vec(),
            other => vec![other],
        }
    } else {
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with(';') {
                continue;
            }
            out.push(
                Edn::from_str(line)
                    .map_err(|e| EdnError::Parse(format!("line {}: {e:?}", n + 1)))?,
            );
        }
        out
    };
    let mut history = History::default();
    for (i, form) in forms.into_iter().enumerate() {
        let m = event_map(form).ok_or_else(|| EdnError::Event {
            index: i,
            why: "not a map".into(),
        })?;
        history.push(event(i, m)?);
    }
    Ok(history)
}

fn edn_value(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(edn_value).collect::<Vec<_>>().join(" ")
        ),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!(":{k} {}", edn_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Write a history as Jepsen EDN, one map per line; keyed operations as independent
/// tuples.
pub fn write_edn(history: &History, out: &mut impl Write) -> std::io::Result<()> {
    for e in &history.events {
        let process = match &e.process {
            Process::Client(p) => p.to_string(),
            Process::Named(n) => format!(":{n}"),
        };
        let kind = match e.kind {
            EventType::Invoke => "invoke",
            EventType::Ok => "ok",
            EventType::Fail => "fail",
            EventType::Info => "info",
        };
        let value = match &e.key {
            Some(k) => format!("[{k:?} {}]", edn_value(&e.value)),
            None => edn_value(&e.value),
        };
        let f = if e.f.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            format!(":{}", e.f)
        } else {
            format!("{:?}", e.f)
        };
        write!(
            out,
            "{{:index {}, :time {}, :process {process}, :type :{kind}, :f {f}, :value {value}",
            e.index, e.time_ns
        )?;
        if let Some(err) = &e.error {
            write!(out, ", :error {err:?}")?;
        }
        writeln!(out, "}}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn characters_outside_ascii_are_refused_outside_strings_and_read_inside() {
        // The fuzzer's input that made edn-rs 0.17 panic in its radix parse.
        let crash = std::str::from_utf8(b"\x7b\x74\x69\x72\x6f\x63\x73\x73\x20\x38\x74\x79\xc8\xbe\x1a\x74\x79\x41\x41\x41\xc8\xbe\x41\x41\x41\xc8\xbe\x1a\x74\x79\x41\x41\x41\xc8\xbe\x41\x41\x41\x70\x72\x6f\x7b\x61\x41\x41\x41\x2c").unwrap();
        assert!(matches!(read_edn(crash), Err(EdnError::Parse(_))));
        assert!(matches!(
            read_edn("{:type :invoke, :f :read, :value 8\u{23e}r1}"),
            Err(EdnError::Parse(_))
        ));
        let fine = "; a comment, d\u{e9}j\u{e0} vu\n{:type :invoke, :process 0, :f :write, :value \"caf\u{e9} \\\" ;\"}";
        let h = read_edn(fine).expect("unicode in strings and comments is read");
        assert_eq!(h.events.len(), 1);
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn a_knossos_style_history_reads_and_round_trips() {
        let text = r#"
{:process 0, :type :invoke, :f :write, :value 3}
{:process 0, :type :ok, :f :write, :value 3}
{:process 1, :type :invoke, :f :cas, :value [3 0]}
{:process :nemesis, :type :info, :f :start, :value "partition"}
{:process 1, :type :info, :f :cas, :value [3 0], :error :timeout}
{:process 2, :type :invoke, :f :read, :value nil}
{:process 2, :type :ok, :f :read, :value 0}
"#;
        let h = read_edn(text).unwrap();
        assert_eq!(h.events.len(), 7);
        assert_eq!(h.events[2].value, json!([3, 0]));
        assert_eq!(h.events[2].key, None);
        assert!(h.events[3].process.is_nemesis());
        assert_eq!(h.events[4].kind, EventType::Info);
        assert_eq!(h.events[6].value, json!(0));
        let mut out = Vec::new();
        write_edn(&h, &mut out).unwrap();
        let again = read_edn(std::str::from_utf8(&out).unwrap()).unwrap();
        assert_eq!(again.events.len(), h.events.len());
        for (a, b) in again.events.iter().zip(&h.events) {
            assert_eq!(
                (&a.process, a.kind, &a.f, &a.value),
                (&b.process, b.kind, &b.f, &b.value)
            );
        }
    }

    #[test]
    fn independent_tuples_become_keys_and_back() {
        let text = "[{:process 0, :type :invoke, :f :cas, :value [\"k1\" [1 2]]}\n\
                    {:process 0, :type :ok, :f :cas, :value [\"k1\" [1 2]]}\n\
                    {:process 1, :type :invoke, :f :read, :value [7 nil]}]";
        let h = read_edn(text).unwrap();
        assert_eq!(h.events[0].key.as_deref(), Some("k1"));
        assert_eq!(h.events[0].value, json!([1, 2]));
        assert_eq!(h.events[2].key.as_deref(), Some("7"));
        assert_eq!(h.events[2].value, Value::Null);
        let mut out = Vec::new();
        write_edn(&h, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(r#":value ["k1" [1 2]]"#), "{text}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(read_edn("{:process 0 :type").is_err());
        assert!(read_edn("[1 2 3]").is_err());
        assert!(read_edn("{:process 0, :type :bogus, :f :read}").is_err());
        assert!(read_edn("{:process \"x\", :type :ok, :f :read}").is_err());
    }
}
