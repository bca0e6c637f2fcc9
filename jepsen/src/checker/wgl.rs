//! The Wing-Gong linearizability search, with Lowe's memoisation (as in Porcupine and
//! Knossos's `wgl`): walk the history's call and return entries in order; at a call, try
//! to linearize that operation now (the model must allow it, and the pair (linearized
//! set, state) must be new); at a return whose operation is not linearized yet, undo the
//! last choice. The history is linearizable when every entry has been lifted.
//!
//! Indeterminate operations return "at infinity" (after everything), so they may take
//! effect at any point after their call; their model step also offers "did not happen".
//! A model may allow several next states (nondeterminism); each is a separate choice.

use std::collections::HashSet;
use std::hash::Hash;
use std::time::Instant;

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash + std::fmt::Debug;
    type Op: Clone + std::fmt::Debug;
    fn init(&self) -> Self::State;
    /// The states `op` may leave behind from `state`; none if it cannot happen there.
    fn step(&self, state: &Self::State, op: &Self::Op) -> Vec<Self::State>;
}

/// One operation to check: its model op and its interval in history positions.
#[derive(Clone, Debug)]
pub struct Interval<O> {
    pub op: O,
    pub call: u64,
    /// `None`: indeterminate (returns after everything).
    pub ret: Option<u64>,
}

/// Where the search got furthest, for a counterexample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stuck<S> {
    /// Operations (indices into the input) linearized, in order, at the deepest point.
    pub linearized: Vec<usize>,
    /// The state after them.
    pub state: S,
    /// The operation whose return came before it could be linearized.
    pub blocked: usize,
    /// Operations called but not linearized at that point (the candidates).
    pub pending: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<S> {
    Linearizable,
    NotLinearizable(Stuck<S>),
    /// The deadline passed first.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    Call(usize),
    Ret(usize),
}

const NONE: usize = usize::MAX;

/// A doubly linked list over the entries, with a head sentinel at index `len`.
struct List {
    entries: Vec<Entry>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Index of each operation's return entry.
    ret_of: Vec<usize>,
    head: usize,
}

impl List {
    fn new<O>(ops: &[Interval<O>]) -> Self {
        // Sort key: (position, calls after returns at equal positions never happen since
        // positions are unique; indeterminate returns go last, in call order).
        let mut keyed: Vec<(u64, u64, Entry)> = Vec::with_capacity(ops.len() * 2);
        for (i, o) in ops.iter().enumerate() {
            keyed.push((o.call, 0, Entry::Call(i)));
            match o.ret {
                Some(r) => keyed.push((r, 1, Entry::Ret(i))),
                None => keyed.push((u64::MAX, o.call, Entry::Ret(i))),
            }
        }
        keyed.sort_by_key(|(a, b, _)| (*a, *b));
        let entries: Vec<Entry> = keyed.into_iter().map(|(_, _, e)| e).collect();
        let n = entries.len();
        let head = n;
        let mut next = vec![NONE; n + 1];
        let mut prev = vec![NONE; n + 1];
        let mut ret_of = vec![0; ops.len()];
        let mut last = head;
        for (i, e) in entries.iter().enumerate() {
            next[last] = i;
            prev[i] = last;
            last = i;
            if let Entry::Ret(op) = e {
                ret_of[*op] = i;
            }
        }
        List {
            entries,
            next,
            prev,
            ret_of,
            head,
        }
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NONE {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NONE {
            self.prev[n] = e;
        }
    }

    /// Remove an operation's call entry `call` and its return entry.
    fn lift(&mut self, call: usize, op: usize) {
        self.unlink(call);
        self.unlink(self.ret_of[op]);
    }

    fn unlift(&mut self, call: usize, op: usize) {
        self.relink(self.ret_of[op]);
        self.relink(call);
    }
}

fn set_bit(bits: &mut [u64], i: usize, on: bool) {
    if on {
        bits[i / 64] |= 1 << (i % 64);
    } else {
        bits[i / 64] &= !(1 << (i % 64));
    }
}

/// Check `ops` against `model`, giving up (`Unknown`) at `deadline`.
pub fn check<M: Model>(model: &M, ops: &[Interval<M::Op>], deadline: Instant) -> Outcome<M::State> {
    if ops.is_empty() {
        return Outcome::Linearizable;
    }
    let mut list = List::new(ops);
    let mut linearized = vec![0u64; ops.len().div_ceil(64)];
    let mut cache: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    // (call entry, op, state before, choice taken)
    let mut stack: Vec<(usize, usize, M::State, usize)> = Vec::new();
    let mut state = model.init();
    let mut entry = list.next[list.head];
    let mut first_choice = 0usize;
    let mut deepest: Option<Stuck<M::State>> = None;
    let mut steps: u64 = 0;
    loop {
        if list.next[list.head] == NONE {
            return Outcome::Linearizable;
        }
        steps += 1;
        if steps.is_multiple_of(1024) && Instant::now() > deadline {
            return Outcome::Unknown;
        }
        match list.entries[entry] {
            Entry::Call(op) => {
                let options = model.step(&state, &ops[op].op);
                let mut taken = None;
                for (c, next_state) in options.into_iter().enumerate().skip(first_choice) {
                    set_bit(&mut linearized, op, true);
                    if cache.insert((linearized.clone(), next_state.clone())) {
                        taken = Some((c, next_state));
                        break;
                    }
                    set_bit(&mut linearized, op, false);
                }
                first_choice = 0;
                match taken {
                    Some((c, next_state)) => {
                        stack.push((entry, op, std::mem::replace(&mut state, next_state), c));
                        list.lift(entry, op);
                        entry = list.next[list.head];
                    }
                    None => entry = list.next[entry],
                }
            }
            Entry::Ret(op) => {
                if deepest
                    .as_ref()
                    .is_none_or(|d| stack.len() > d.linearized.len())
                {
                    deepest = Some(Stuck {
                        linearized: stack.iter().map(|s| s.1).collect(),
                        state: state.clone(),
                        blocked: op,
                        pending: pending(&list, entry),
                    });
                }
                let Some((call, lifted, before, choice)) = stack.pop() else {
                    return Outcome::NotLinearizable(deepest.unwrap_or(Stuck {
                        linearized: Vec::new(),
                        state,
                        blocked: op,
                        pending: Vec::new(),
                    }));
                };
                set_bit(&mut linearized, lifted, false);
                state = before;
                list.unlift(call, lifted);
                entry = call;
                first_choice = choice + 1;
            }
        }
    }
}

/// Operations whose calls are still in the list before `upto`: called, not linearized.
fn pending(list: &List, upto: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut e = list.next[list.head];
    while e != NONE && e != upto {
        if let Entry::Call(op) = list.entries[e] {
            out.push(op);
        }
        e = list.next[e];
    }
    out
}
