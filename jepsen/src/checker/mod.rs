//! The linearizability checker for register histories: operations are split by key
//! (P-compositionality: a history of independent registers is linearizable iff each
//! key's sub-history is), and each key is searched with [`wgl`] under a shared time
//! budget. Failed operations (`fail`) certainly did not happen and are dropped;
//! indeterminate ones (`info`) may have happened at any time after their call, or never;
//! indeterminate reads tell nothing and are dropped.

pub mod durability;
pub mod ownership;
pub mod set;
pub mod staleness;
pub mod wgl;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::history::{EventType, History, HistoryError, Operation};
use wgl::{Interval, Model, Outcome};

/// Which sequential specification to check against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// Reads and writes.
    Register,
    /// Reads, writes and compare-and-set.
    CasRegister,
}

/// An operation on one register. Values are integers; `None` is "never written".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterOp {
    Read(Option<i64>),
    /// `certain`: it completed `ok`; otherwise it may not have happened.
    Write {
        value: i64,
        certain: bool,
    },
    Cas {
        from: i64,
        to: i64,
        certain: bool,
    },
}

/// The register (and CAS register) model.
pub struct RegisterModel;

impl Model for RegisterModel {
    type State = Option<i64>;
    type Op = RegisterOp;

    fn init(&self) -> Self::State {
        None
    }

    fn step(&self, state: &Self::State, op: &Self::Op) -> Vec<Self::State> {
        match op {
            RegisterOp::Read(v) => {
                if v == state {
                    vec![*state]
                } else {
                    vec![]
                }
            }
            RegisterOp::Write { value, certain } => {
                if *certain {
                    vec![Some(*value)]
                } else {
                    vec![Some(*value), *state]
                }
            }
            RegisterOp::Cas { from, to, certain } => match (*state == Some(*from), *certain) {
                (true, true) => vec![Some(*to)],
                (true, false) => vec![Some(*to), *state],
                (false, true) => vec![],
                (false, false) => vec![*state],
            },
        }
    }
}

/// The checker's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Linearizable,
    NotLinearizable,
    /// The time budget ran out first: no claim either way.
    Unknown,
}

/// An operation as a counterexample shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpView {
    pub process: String,
    pub f: String,
    pub value: serde_json::Value,
    pub outcome: EventType,
    pub invoke_index: u64,
    pub complete_index: Option<u64>,
}

impl OpView {
    fn of(op: &Operation) -> Self {
        OpView {
            process: op.process.to_string(),
            f: op.f.clone(),
            value: if op.f == "read" {
                op.output.clone()
            } else {
                op.input.clone()
            },
            outcome: op.outcome,
            invoke_index: op.invoke_index,
            complete_index: op.complete_index,
        }
    }
}

/// Why a key's history is not linearizable: the furthest the search got, and where it
/// stuck — the operation that completed before it could take effect, with the register's
/// value then and the operations that could have gone first.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Counterexample {
    pub key: Option<String>,
    /// The last operations of the longest linearizable prefix (at most 8), in order.
    pub linearized_tail: Vec<OpView>,
    pub linearized_count: usize,
    /// The register's value after that prefix.
    pub state: Option<i64>,
    /// The operation that could not be placed.
    pub blocked: OpView,
    /// Operations called but not placed when it completed.
    pub pending: Vec<OpView>,
    /// The reads that remain after dropping every read not needed to show the anomaly
    /// (dropping reads never makes a linearizable history non-linearizable).
    pub minimal_reads: usize,
}

/// The result of checking a whole history.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckReport {
    pub verdict: Verdict,
    pub model: ModelKind,
    pub keys: usize,
    pub operations: usize,
    /// Keys the budget ran out on.
    pub unknown_keys: Vec<String>,
    pub counterexample: Option<Counterexample>,
    pub elapsed_ms: u64,
}

/// What can make a history uncheckable.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("operation at {index}: {why}")]
    BadOperation { index: u64, why: String },
}

fn int(v: &serde_json::Value, index: u64, what: &str) -> Result<Option<i64>, CheckError> {
    match v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Number(n) => n.as_i64().map(Some).ok_or(CheckError::BadOperation {
            index,
            why: format!("{what} {n} is not an integer"),
        }),
        other => Err(CheckError::BadOperation {
            index,
            why: format!("{what} {other} is not an integer"),
        }),
    }
}

/// The model operation of a history operation; `None` for ones that tell nothing.
fn register_op(op: &Operation, model: ModelKind) -> Result<Option<RegisterOp>, CheckError> {
    let index = op.invoke_index;
    if op.outcome == EventType::Fail {
        return Ok(None);
    }
    let certain = op.outcome == EventType::Ok;
    let bad = |why: String| CheckError::BadOperation { index, why };
    Ok(Some(match op.f.as_str() {
        "read" if certain => RegisterOp::Read(int(&op.output, index, "read value")?),
        "read" => return Ok(None),
        "write" => RegisterOp::Write {
            value: int(&op.input, index, "written value")?
                .ok_or_else(|| bad("a write of nil".into()))?,
            certain,
        },
        "cas" if model == ModelKind::CasRegister => {
            let pair = op
                .input
                .as_array()
                .filter(|a| a.len() == 2)
                .ok_or_else(|| bad(format!("cas value {} is not [from, to]", op.input)))?;
            let from = int(&pair[0], index, "cas from")?;
            let to = int(&pair[1], index, "cas to")?;
            match (from, to) {
                (Some(from), Some(to)) => RegisterOp::Cas { from, to, certain },
                _ => return Err(bad("cas of nil".into())),
            }
        }
        "cas" => {
            return Err(bad(
                "cas in a plain register history (use --model cas-register)".into(),
            ))
        }
        other => return Err(bad(format!("unknown operation {other:?}"))),
    }))
}

/// What orders operations in real time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Their positions in the history: linearizability.
    Positions,
    /// Their times, with every read's call moved back by the bound: a read may return
    /// any value the register held at some point in `[call - bound, return]`. This is
    /// timed (or Δ-) linearizability: writes stay atomic and ordered in real time, and a
    /// read is never staler than the bound (the kernel's attribute and entry cache
    /// lifetime, for mounts that hold no delegation).
    ReadsStaleBy(Duration),
}

fn intervals(ops: &[(Operation, RegisterOp)], order: Order) -> Vec<Interval<RegisterOp>> {
    ops.iter()
        .map(|(o, r)| match order {
            Order::Positions => Interval {
                op: r.clone(),
                call: o.invoke_index,
                ret: o.complete_index,
            },
            Order::ReadsStaleBy(bound) => {
                let back = if matches!(r, RegisterOp::Read(_)) {
                    bound.as_nanos() as u64
                } else {
                    0
                };
                Interval {
                    op: r.clone(),
                    call: o.invoke_ns.saturating_sub(back),
                    ret: o.complete_ns,
                }
            }
        })
        .collect()
}

/// Check a history against a register model within `budget`.
pub fn check(
    history: &History,
    model: ModelKind,
    budget: Duration,
) -> Result<CheckReport, CheckError> {
    check_ordered(history, model, budget, Order::Positions)
}

/// [`check`], with operations ordered by `order`.
pub fn check_ordered(
    history: &History,
    model: ModelKind,
    budget: Duration,
    order: Order,
) -> Result<CheckReport, CheckError> {
    let start = Instant::now();
    let deadline = start + budget;
    let mut by_key: BTreeMap<Option<String>, Vec<(Operation, RegisterOp)>> = BTreeMap::new();
    let mut operations = 0;
    for op in history.operations()? {
        if let Some(r) = register_op(&op, model)? {
            operations += 1;
            by_key.entry(op.key.clone()).or_default().push((op, r));
        }
    }
    let mut report = CheckReport {
        verdict: Verdict::Linearizable,
        model,
        keys: by_key.len(),
        operations,
        unknown_keys: Vec::new(),
        counterexample: None,
        elapsed_ms: 0,
    };
    for (key, ops) in &by_key {
        match wgl::check(&RegisterModel, &intervals(ops, order), deadline) {
            Outcome::Linearizable => {}
            Outcome::Unknown => report.unknown_keys.push(key.clone().unwrap_or_default()),
            Outcome::NotLinearizable(stuck) => {
                report.verdict = Verdict::NotLinearizable;
                report.counterexample = Some(counterexample(key, ops, stuck, deadline, order));
                break;
            }
        }
    }
    if report.verdict == Verdict::Linearizable && !report.unknown_keys.is_empty() {
        report.verdict = Verdict::Unknown;
    }
    report.elapsed_ms = start.elapsed().as_millis() as u64;
    Ok(report)
}

/// Drop reads one at a time while the rest stays non-linearizable; report where the
/// search sticks on what remains.
fn counterexample(
    key: &Option<String>,
    ops: &[(Operation, RegisterOp)],
    first: wgl::Stuck<Option<i64>>,
    deadline: Instant,
    order: Order,
) -> Counterexample {
    let mut kept: Vec<(Operation, RegisterOp)> = ops.to_vec();
    let mut stuck = first;
    let mut i = kept.len();
    while i > 0 && Instant::now() < deadline {
        i -= 1;
        if !matches!(kept[i].1, RegisterOp::Read(_)) {
            continue;
        }
        let mut without = kept.clone();
        without.remove(i);
        if let Outcome::NotLinearizable(s) =
            wgl::check(&RegisterModel, &intervals(&without, order), deadline)
        {
            kept = without;
            stuck = s;
        }
    }
    let view = |i: usize| OpView::of(&kept[i].0);
    let tail_from = stuck.linearized.len().saturating_sub(8);
    Counterexample {
        key: key.clone(),
        linearized_tail: stuck.linearized[tail_from..]
            .iter()
            .map(|i| view(*i))
            .collect(),
        linearized_count: stuck.linearized.len(),
        state: stuck.state,
        blocked: view(stuck.blocked),
        pending: stuck
            .pending
            .iter()
            .filter(|i| **i != stuck.blocked)
            .map(|i| view(*i))
            .collect(),
        minimal_reads: kept
            .iter()
            .filter(|(_, r)| matches!(r, RegisterOp::Read(_)))
            .count(),
    }
}
