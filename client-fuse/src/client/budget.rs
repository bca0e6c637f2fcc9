//! The bytes buffered by every writer of one client, against one cap.
//!
//! Each open file's buffer is bounded (`MAX_BUFFERED`), but a mount writing many files at
//! once would hold their sum: ten fast writers, over a gigabyte. A writer whose write
//! finds the mount over its budget commits its own buffer, if it holds at least
//! [`BUDGET_FLUSH_MIN`]; so the mount holds at most the budget plus that much per writer
//! (and one write each), whatever the number of writers. A writer holding less goes on
//! buffering: a small random writer is not made to commit every write because a large
//! one filled the budget (the large one commits at its next write).
//!
//! The decision is taken once per write, before it (`FileWriter::plan`): the mount takes
//! its delegation's mutation guard for a write that may commit, and the shared count can
//! change between two readings of it.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A writer over the budget commits only once it holds this much.
pub(crate) const BUDGET_FLUSH_MIN: usize = 1 << 20;

/// Buffered bytes of all of a client's writers.
#[derive(Debug)]
pub(crate) struct WriteBudget {
    used: AtomicUsize,
    cap: usize,
}

impl WriteBudget {
    pub(crate) fn new(cap: usize) -> Self {
        WriteBudget {
            used: AtomicUsize::new(0),
            cap,
        }
    }

    /// Bytes buffered now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether a writer holding `held` bytes, about to add `more`, must commit.
    pub(crate) fn must_flush(&self, held: usize, more: usize) -> bool {
        held + more >= BUDGET_FLUSH_MIN && self.used() + more > self.cap
    }

    /// A writer's buffer went from `from` bytes to `to`.
    pub(crate) fn resize(&self, from: usize, to: usize) {
        if to >= from {
            self.used.fetch_add(to - from, Ordering::Relaxed);
        } else {
            self.used.fetch_sub(from - to, Ordering::Relaxed);
        }
        metrics::gauge!("mobilus_client_write_buffer_bytes").set(self.used() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_writer_holding_enough_commits_once_the_budget_is_spent() {
        let b = WriteBudget::new(4 << 20);
        b.resize(0, 4 << 20);
        assert!(!b.must_flush(0, 4096), "a small writer goes on buffering");
        assert!(b.must_flush(BUDGET_FLUSH_MIN, 4096));
        b.resize(4 << 20, 3 << 20);
        assert!(
            !b.must_flush(2 << 20, 4096),
            "under the budget nobody commits"
        );
        assert_eq!(b.used(), 3 << 20);
    }
}
