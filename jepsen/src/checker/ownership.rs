//! The ownership checker: no site's change to the subtree is acknowledged while another
//! site certainly owns it. A site certainly owns the subtree from the moment a move to it
//! is acknowledged (or the run starts) until the next move is attempted; a move of
//! unknown outcome leaves the owner unknown until one is acknowledged again. An `ok`
//! write or cas whose whole span (invocation to completion) lies inside such a period,
//! issued by another site, is a violation: it took effect while that site did not own it.

use serde::Serialize;

use crate::history::{EventType, History, HistoryError, Process};

/// One period in which `owner` certainly owned the subtree (times in ns of the run).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tenure {
    pub owner: String,
    pub from_ns: u64,
    pub until_ns: u64,
}

/// A move attempt on the run's clock.
#[derive(Clone, Debug)]
pub struct Move {
    pub to: String,
    pub invoke_ns: u64,
    pub complete_ns: u64,
    pub outcome: EventType,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OwnershipReport {
    pub valid: bool,
    /// Acknowledged changes judged (inside a tenure).
    pub writes_judged: usize,
    /// Acknowledged changes that overlap a move (not judged).
    pub writes_during_moves: usize,
    /// Changes refused because the site did not own the subtree (or its lease ran out).
    pub refused_not_owner: usize,
    /// Changes refused because the request claimed a site its certificate is not of.
    pub refused_forged: usize,
    pub moves_ok: usize,
    pub moves_refused: usize,
    pub moves_unknown: usize,
    pub tenures: Vec<Tenure>,
    /// The first violations, described.
    pub violations: Vec<String>,
    pub violation_count: usize,
}

/// The tenures implied by the first owner (from `since_ns`) and the moves, in order.
pub fn tenures(first_owner: &str, since_ns: u64, moves: &[Move], end_ns: u64) -> Vec<Tenure> {
    let mut out = Vec::new();
    let mut current = Some((first_owner.to_string(), since_ns));
    for m in moves {
        if let Some((owner, from)) = current.take() {
            out.push(Tenure {
                owner: owner.clone(),
                from_ns: from,
                until_ns: m.invoke_ns,
            });
            current = match m.outcome {
                EventType::Ok => Some((m.to.clone(), m.complete_ns)),
                // Refused: nothing changed.
                EventType::Fail => Some((owner, m.complete_ns)),
                _ => None,
            };
        } else if m.outcome == EventType::Ok {
            current = Some((m.to.clone(), m.complete_ns));
        }
    }
    if let Some((owner, from)) = current {
        out.push(Tenure {
            owner,
            from_ns: from,
            until_ns: end_ns,
        });
    }
    out
}

/// Check the history; `site_of` names the site of a client process.
pub fn check(
    history: &History,
    tenures: Vec<Tenure>,
    moves: &[Move],
    site_of: impl Fn(&Process) -> Option<String>,
) -> Result<OwnershipReport, HistoryError> {
    let ops = history.operations()?;
    let mut r = OwnershipReport {
        valid: true,
        writes_judged: 0,
        writes_during_moves: 0,
        refused_not_owner: 0,
        refused_forged: 0,
        moves_ok: moves.iter().filter(|m| m.outcome == EventType::Ok).count(),
        moves_refused: moves
            .iter()
            .filter(|m| m.outcome == EventType::Fail)
            .count(),
        moves_unknown: moves
            .iter()
            .filter(|m| m.outcome == EventType::Info)
            .count(),
        tenures: Vec::new(),
        violations: Vec::new(),
        violation_count: 0,
    };
    for o in &ops {
        if o.f != "write" && o.f != "cas" {
            continue;
        }
        if o.outcome == EventType::Fail {
            // The worker's error text says why (see `ClientError`'s messages).
            continue;
        }
        if o.outcome != EventType::Ok {
            continue;
        }
        let (Some(site), Some(done)) = (site_of(&o.process), o.complete_ns) else {
            continue;
        };
        let Some(t) = tenures
            .iter()
            .find(|t| t.from_ns <= o.invoke_ns && done <= t.until_ns)
        else {
            r.writes_during_moves += 1;
            continue;
        };
        r.writes_judged += 1;
        if t.owner != site {
            r.valid = false;
            r.violation_count += 1;
            if r.violations.len() < 20 {
                r.violations.push(format!(
                    "{} {:?} by {site} acknowledged at {:.3} s while {} owned the subtree ({:.3} s to {:.3} s)",
                    o.f,
                    o.key.as_deref().unwrap_or(""),
                    done as f64 / 1e9,
                    t.owner,
                    t.from_ns as f64 / 1e9,
                    t.until_ns as f64 / 1e9
                ));
            }
        }
    }
    r.refused_not_owner = refused_with(history, &["is owned by", "lease of"]);
    r.refused_forged = refused_with(history, &["but the certificate is of"]);
    r.tenures = tenures;
    Ok(r)
}

/// Definite failures whose error says one of `why` (the members' messages).
fn refused_with(history: &History, why: &[&str]) -> usize {
    history
        .events
        .iter()
        .filter(|e| {
            e.kind == EventType::Fail
                && e.error
                    .as_deref()
                    .is_some_and(|m| why.iter().any(|w| m.contains(w)))
        })
        .count()
}
