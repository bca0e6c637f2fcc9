//! The checker on hand-made histories with known verdicts.

use std::time::Duration;

use mobilus_jepsen::checker::{check, check_ordered, ModelKind, Order, Verdict};
use mobilus_jepsen::history::{Event, EventType, History, Process};
use serde_json::{json, Value};

/// Builds a history event by event.
#[derive(Default)]
struct H(History);

impl H {
    fn ev(&mut self, p: u64, kind: EventType, f: &str, key: &str, value: Value) -> &mut Self {
        self.0.push(Event {
            index: 0,
            time_ns: self.0.events.len() as u64 * 1000,
            process: Process::Client(p),
            kind,
            f: f.into(),
            key: Some(key.into()),
            value,
            error: None,
        });
        self
    }
    fn invoke(&mut self, p: u64, f: &str, value: Value) -> &mut Self {
        self.ev(p, EventType::Invoke, f, "k", value)
    }
    fn ok(&mut self, p: u64, f: &str, value: Value) -> &mut Self {
        self.ev(p, EventType::Ok, f, "k", value)
    }
    fn info(&mut self, p: u64, f: &str, value: Value) -> &mut Self {
        self.ev(p, EventType::Info, f, "k", value)
    }
    fn fail(&mut self, p: u64, f: &str, value: Value) -> &mut Self {
        self.ev(p, EventType::Fail, f, "k", value)
    }
    /// An operation that completes before the next one starts.
    fn seq(&mut self, p: u64, f: &str, input: Value, output: Value) -> &mut Self {
        self.invoke(p, f, input).ok(p, f, output)
    }
}

fn verdict(h: &H, model: ModelKind) -> Verdict {
    must_check(h, model).verdict
}

fn must_check(h: &H, model: ModelKind) -> mobilus_jepsen::checker::CheckReport {
    check(&h.0, model, Duration::from_secs(10)).expect("checkable")
}

#[test]
fn sequential_histories_are_judged_by_the_model() {
    let mut h = H::default();
    h.seq(0, "read", json!(null), json!(null))
        .seq(0, "write", json!(1), json!(1))
        .seq(1, "read", json!(null), json!(1));
    assert_eq!(verdict(&h, ModelKind::Register), Verdict::Linearizable);
}

#[test]
fn a_stale_read_is_found_and_explained() {
    let mut h = H::default();
    h.seq(0, "write", json!(1), json!(1))
        .seq(0, "write", json!(2), json!(2))
        .seq(1, "read", json!(null), json!(1));
    let r = must_check(&h, ModelKind::Register);
    assert_eq!(r.verdict, Verdict::NotLinearizable);
    let c = r.counterexample.expect("a counterexample");
    assert_eq!(c.key.as_deref(), Some("k"));
    assert_eq!(c.blocked.f, "read");
    assert_eq!(c.blocked.value, json!(1));
    assert_eq!(
        c.state,
        Some(2),
        "the register held 2 when the read of 1 completed"
    );
    assert_eq!(c.minimal_reads, 1);
}

#[test]
fn a_read_within_the_staleness_bound_may_be_stale_and_one_past_it_may_not() {
    // Events are 1 µs apart: write 1, write 2 (completes at 3 µs), then a read of 1
    // called 1 µs after write 2 completed (at 4 µs) and one called at 7 µs.
    let timed = |bound_ns: u64, h: &H| {
        check_ordered(
            &h.0,
            ModelKind::Register,
            Duration::from_secs(10),
            Order::ReadsStaleBy(Duration::from_nanos(bound_ns)),
        )
        .expect("checkable")
        .verdict
    };
    let mut h = H::default();
    h.seq(0, "write", json!(1), json!(1))
        .seq(0, "write", json!(2), json!(2))
        .seq(1, "read", json!(null), json!(1));
    assert_eq!(timed(1500, &h), Verdict::Linearizable);
    assert_eq!(timed(500, &h), Verdict::NotLinearizable);
    assert_eq!(verdict(&h, ModelKind::Register), Verdict::NotLinearizable);
    // A later read of the old value, called more than the bound after write 2
    // completed, is refused; so is a value never written, however large the bound.
    h.seq(1, "read", json!(null), json!(2))
        .seq(1, "read", json!(null), json!(1));
    assert_eq!(timed(1500, &h), Verdict::NotLinearizable);
    let mut h = H::default();
    h.seq(0, "write", json!(1), json!(1))
        .seq(1, "read", json!(null), json!(3));
    assert_eq!(timed(1_000_000, &h), Verdict::NotLinearizable);
}

#[test]
fn a_lost_write_is_found() {
    let mut h = H::default();
    h.seq(0, "write", json!(7), json!(7))
        .seq(1, "read", json!(null), json!(null));
    assert_eq!(verdict(&h, ModelKind::Register), Verdict::NotLinearizable);
}

#[test]
fn a_cas_applied_twice_is_found() {
    let mut h = H::default();
    h.seq(0, "write", json!(0), json!(0))
        .seq(1, "cas", json!([0, 1]), json!([0, 1]))
        .seq(2, "cas", json!([0, 1]), json!([0, 1]));
    assert_eq!(
        verdict(&h, ModelKind::CasRegister),
        Verdict::NotLinearizable
    );
    // Concurrent, the two CASes still cannot both succeed.
    let mut h = H::default();
    h.seq(0, "write", json!(0), json!(0))
        .invoke(1, "cas", json!([0, 1]))
        .invoke(2, "cas", json!([0, 1]))
        .ok(1, "cas", json!([0, 1]))
        .ok(2, "cas", json!([0, 1]));
    assert_eq!(
        verdict(&h, ModelKind::CasRegister),
        Verdict::NotLinearizable
    );
    // One failed (did not happen): fine.
    let mut h = H::default();
    h.seq(0, "write", json!(0), json!(0))
        .invoke(1, "cas", json!([0, 1]))
        .invoke(2, "cas", json!([0, 1]))
        .ok(1, "cas", json!([0, 1]))
        .fail(2, "cas", json!([0, 1]))
        .seq(3, "read", json!(null), json!(1));
    assert_eq!(verdict(&h, ModelKind::CasRegister), Verdict::Linearizable);
}

#[test]
fn concurrent_operations_may_take_effect_in_either_order() {
    let mut h = H::default();
    h.invoke(0, "write", json!(1))
        .invoke(1, "write", json!(2))
        .invoke(2, "read", json!(null))
        .ok(2, "read", json!(1))
        .ok(1, "write", json!(2))
        .ok(0, "write", json!(1))
        .seq(3, "read", json!(null), json!(1));
    assert_eq!(verdict(&h, ModelKind::Register), Verdict::Linearizable);
}

#[test]
fn a_new_then_old_read_during_a_write_is_found() {
    let mut h = H::default();
    h.seq(0, "write", json!(1), json!(1))
        .invoke(0, "write", json!(2))
        .seq(1, "read", json!(null), json!(2))
        .seq(2, "read", json!(null), json!(1))
        .ok(0, "write", json!(2));
    assert_eq!(verdict(&h, ModelKind::Register), Verdict::NotLinearizable);
}

#[test]
fn indeterminate_operations_may_or_may_not_have_happened() {
    // A timed-out write that never happened.
    let mut h = H::default();
    h.invoke(0, "write", json!(1))
        .info(0, "write", json!(1))
        .seq(1, "read", json!(null), json!(null));
    assert_eq!(verdict(&h, ModelKind::Register), Verdict::Linearizable);
    // ... or that happened late, after a later write.
    let mut h = H::default();
    h.invoke(0, "write", json!(1))
        .info(0, "write", json!(1))
        .seq(1, "write", json!(2), json!(2))
        .seq(2, "read", json!(null), json!(1))
        .seq(2, "read", json!(null), json!(1));
    assert_eq!(verdict(&h, ModelKind::Register), Verdict::Linearizable);
    // But it happens once: the value cannot come back after being overwritten.
    let mut h = H::default();
    h.invoke(0, "write", json!(1))
        .info(0, "write", json!(1))
        .seq(2, "read", json!(null), json!(1))
        .seq(1, "write", json!(2), json!(2))
        .seq(2, "read", json!(null), json!(1));
    assert_eq!(verdict(&h, ModelKind::Register), Verdict::NotLinearizable);
    // An indeterminate CAS likewise; a crashed (never completed) one too.
    let mut h = H::default();
    h.seq(0, "write", json!(0), json!(0))
        .invoke(1, "cas", json!([0, 5]))
        .info(1, "cas", json!([0, 5]))
        .seq(2, "read", json!(null), json!(5))
        .invoke(3, "cas", json!([5, 6]));
    assert_eq!(verdict(&h, ModelKind::CasRegister), Verdict::Linearizable);
    h.seq(2, "read", json!(null), json!(0));
    assert_eq!(
        verdict(&h, ModelKind::CasRegister),
        Verdict::NotLinearizable
    );
    // An indeterminate read tells nothing.
    let mut h = H::default();
    h.seq(0, "write", json!(3), json!(3))
        .invoke(1, "read", json!(null))
        .info(1, "read", json!(null));
    assert_eq!(verdict(&h, ModelKind::Register), Verdict::Linearizable);
}

#[test]
fn keys_are_checked_independently_and_the_bad_one_is_named() {
    let mut h = H::default();
    h.ev(0, EventType::Invoke, "write", "a", json!(1))
        .ev(1, EventType::Invoke, "write", "b", json!(1))
        .ev(0, EventType::Ok, "write", "a", json!(1))
        .ev(1, EventType::Ok, "write", "b", json!(1))
        .ev(2, EventType::Invoke, "read", "a", json!(null))
        .ev(2, EventType::Ok, "read", "a", json!(1));
    let r = must_check(&h, ModelKind::Register);
    assert_eq!(
        (r.verdict, r.keys, r.operations),
        (Verdict::Linearizable, 2, 3)
    );
    h.ev(2, EventType::Invoke, "read", "b", json!(null)).ev(
        2,
        EventType::Ok,
        "read",
        "b",
        json!(2),
    );
    let r = must_check(&h, ModelKind::Register);
    assert_eq!(r.verdict, Verdict::NotLinearizable);
    assert_eq!(r.counterexample.unwrap().key.as_deref(), Some("b"));
}

#[test]
fn an_exhausted_budget_answers_unknown_not_a_verdict() {
    // Twenty concurrent indeterminate writes, then a read of a value never written: the
    // search must try every subset and order before it can say no.
    let mut h = H::default();
    for p in 0..20 {
        h.invoke(p, "write", json!(p));
    }
    for p in 0..20 {
        h.info(p, "write", json!(p));
    }
    h.seq(100, "read", json!(null), json!(999));
    let r = check(&h.0, ModelKind::Register, Duration::ZERO).unwrap();
    assert_eq!(r.verdict, Verdict::Unknown);
    assert_eq!(r.unknown_keys, vec!["k".to_string()]);
}

#[test]
fn uncheckable_histories_are_errors() {
    let mut h = H::default();
    h.seq(0, "cas", json!([1, 2]), json!([1, 2]));
    assert!(check(&h.0, ModelKind::Register, Duration::from_secs(1)).is_err());
    let mut h = H::default();
    h.seq(0, "write", json!("text"), json!("text"));
    assert!(check(&h.0, ModelKind::Register, Duration::from_secs(1)).is_err());
    let mut h = H::default();
    h.seq(0, "frob", json!(1), json!(1));
    assert!(check(&h.0, ModelKind::Register, Duration::from_secs(1)).is_err());
}

/// Brute force: try every order that respects real time, and every outcome the model
/// allows (the definition of linearizability, for tiny histories).
fn brute_force(ops: &[(u64, Option<u64>, mobilus_jepsen::checker::RegisterOp)]) -> bool {
    use mobilus_jepsen::checker::wgl::Model;
    use mobilus_jepsen::checker::RegisterModel;
    fn go(
        ops: &[(u64, Option<u64>, mobilus_jepsen::checker::RegisterOp)],
        placed: &mut Vec<bool>,
        state: Option<i64>,
    ) -> bool {
        if placed.iter().all(|p| *p) {
            return true;
        }
        for i in 0..ops.len() {
            if placed[i] {
                continue;
            }
            // i may go next only if no unplaced op returned before i was called.
            let blocked = (0..ops.len())
                .any(|j| !placed[j] && j != i && ops[j].1.is_some_and(|r| r < ops[i].0));
            if blocked {
                continue;
            }
            for next in RegisterModel.step(&state, &ops[i].2) {
                placed[i] = true;
                if go(ops, placed, next) {
                    return true;
                }
                placed[i] = false;
            }
        }
        false
    }
    go(ops, &mut vec![false; ops.len()], None)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, ..Default::default() })]

    /// On random small concurrent histories, the checker agrees with brute force.
    #[test]
    fn the_checker_agrees_with_brute_force(
        script in proptest::collection::vec((0u64..3, 0u8..4, 0i64..3, 0i64..3, 0u8..6), 1..7)
    ) {
        use mobilus_jepsen::checker::RegisterOp;
        // Each step: a process invokes, or completes its open op (ok, fail or info).
        let mut h = H::default();
        let mut open: std::collections::HashMap<u64, (String, Value, Value)> = Default::default();
        let mut done = std::collections::HashSet::new();
        for (p, f, a, b, outcome) in script {
            if done.contains(&p) { continue; }
            if let Some((f, input, output)) = open.remove(&p) {
                match outcome {
                    0 => { h.fail(p, &f, input); }
                    1 => { h.info(p, &f, input); done.insert(p); }
                    _ => { h.ok(p, &f, output); }
                }
                continue;
            }
            let (f, input, output) = match f {
                0 => ("read", json!(null), if a == 0 { json!(null) } else { json!(a) }),
                1 => ("write", json!(a), json!(a)),
                _ => ("cas", json!([a, b]), json!([a, b])),
            };
            h.invoke(p, f, input.clone());
            open.insert(p, (f.to_string(), input, output));
        }
        let r = check(&h.0, ModelKind::CasRegister, Duration::from_secs(10)).unwrap();
        // The same operations, for brute force.
        let mut ops = Vec::new();
        for o in h.0.operations().unwrap() {
            let certain = o.outcome == EventType::Ok;
            let op = match (o.f.as_str(), o.outcome) {
                (_, EventType::Fail) => continue,
                ("read", EventType::Ok) => RegisterOp::Read(o.output.as_i64()),
                ("read", _) => continue,
                ("write", _) => RegisterOp::Write { value: o.input.as_i64().unwrap(), certain },
                _ => RegisterOp::Cas {
                    from: o.input[0].as_i64().unwrap(),
                    to: o.input[1].as_i64().unwrap(),
                    certain,
                },
            };
            ops.push((o.invoke_index, o.complete_index, op));
        }
        let expected = if brute_force(&ops) { Verdict::Linearizable } else { Verdict::NotLinearizable };
        proptest::prop_assert_eq!(r.verdict, expected, "{:?}", h.0.events);
    }
}

#[test]
fn the_ownership_checker_flags_a_change_acknowledged_from_a_site_that_did_not_own_it() {
    use mobilus_jepsen::checker::ownership::{check, tenures, Move};
    // site-a owns until a move to site-b is attempted at 10 µs and acknowledged at 12;
    // a move back of unknown outcome at 30 leaves the owner unknown until one is
    // acknowledged at 41.
    let moves = vec![
        Move {
            to: "site-b".into(),
            invoke_ns: 10_000,
            complete_ns: 12_000,
            outcome: EventType::Ok,
        },
        Move {
            to: "site-a".into(),
            invoke_ns: 30_000,
            complete_ns: 31_000,
            outcome: EventType::Info,
        },
        Move {
            to: "site-a".into(),
            invoke_ns: 40_000,
            complete_ns: 41_000,
            outcome: EventType::Ok,
        },
    ];
    let t = tenures("site-a", 0, &moves, u64::MAX);
    let spans: Vec<(&str, u64, u64)> = t
        .iter()
        .map(|t| (t.owner.as_str(), t.from_ns, t.until_ns))
        .collect();
    assert_eq!(
        spans,
        [
            ("site-a", 0, 10_000),
            ("site-b", 12_000, 30_000),
            ("site-a", 41_000, u64::MAX)
        ]
    );
    // Process 0 is at site-a, process 1 at site-b: (process, f, invoke, complete, outcome).
    let ops: [(u64, &str, u64, u64, EventType); 6] = [
        (0, "write", 1_000, 2_000, EventType::Ok), // the owner: fine
        (1, "write", 3_000, 4_000, EventType::Fail), // refused: fine
        (1, "cas", 5_000, 6_000, EventType::Ok),   // site-b while site-a owns: violation
        (0, "write", 9_000, 13_000, EventType::Ok), // spans the move: not judged
        (0, "write", 32_000, 33_000, EventType::Ok), // owner unknown: not judged
        (0, "read", 14_000, 15_000, EventType::Ok), // reads are anyone's
    ];
    let mut h = History::default();
    let mut evs: Vec<Event> = Vec::new();
    for (p, f, inv, done, outcome) in ops {
        for (kind, at) in [(EventType::Invoke, inv), (outcome, done)] {
            evs.push(Event {
                index: 0,
                time_ns: at,
                process: Process::Client(p),
                kind,
                f: f.into(),
                key: Some("k".into()),
                value: if f == "cas" { json!([1, 2]) } else { json!(1) },
                error: None,
            });
        }
    }
    evs.sort_by_key(|e| e.time_ns);
    for e in evs {
        h.push(e);
    }
    let site_of = |p: &Process| match p {
        Process::Client(0) => Some("site-a".to_string()),
        Process::Client(1) => Some("site-b".to_string()),
        _ => None,
    };
    let r = check(&h, t, &moves, site_of).unwrap();
    assert!(!r.valid);
    assert_eq!(r.violation_count, 1, "{:?}", r.violations);
    assert!(
        r.violations[0].starts_with("cas \"k\" by site-b"),
        "{:?}",
        r.violations
    );
    assert_eq!((r.writes_judged, r.writes_during_moves), (2, 2));
    assert_eq!((r.moves_ok, r.moves_unknown), (2, 1));
}
