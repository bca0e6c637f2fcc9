//! Reads in priority order: a read some application waits for (a fault) goes first, a
//! profile's prefetch next, background replication last.
//!
//! A fault is admitted at once. A prefetch waits while any fault is being served (at
//! most 4 at a time); a background read waits while any fault or prefetch is (at most 2
//! at a time). So a replicator pulling a whole subtree never stands between a database's
//! query and the chunk it faulted, and it takes the disk and the link back as soon as the
//! faults stop. The guard an admission returns is held until the reply has been sent.
//!
//! No priority starves: a prefetch that has waited 100 ms, or a background read that has
//! waited 250 ms, goes anyway (still within its slots). Under a steady stream of faults
//! replication then keeps a small share (two reads every quarter second or so) instead
//! of stopping until the faults do.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mobilus_proto::datapb::Priority;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Prefetches served at once.
const PREFETCHES: usize = 4;
/// Background reads served at once.
const BACKGROUND: usize = 2;
/// The longest a prefetch or a background read waits for the higher priorities.
const PREFETCH_MAX_WAIT: Duration = Duration::from_millis(100);
const BACKGROUND_MAX_WAIT: Duration = Duration::from_millis(250);

pub struct Priorities {
    faults: AtomicUsize,
    prefetches: AtomicUsize,
    quieter: Notify,
    prefetch_slots: Arc<Semaphore>,
    background_slots: Arc<Semaphore>,
}

/// An admitted read; dropping it lets the lower priorities go.
pub struct Admitted {
    gate: Arc<Priorities>,
    priority: Priority,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let counter = match self.priority {
            Priority::Foreground => &self.gate.faults,
            Priority::Prefetch => &self.gate.prefetches,
            Priority::Background => return,
        };
        if counter.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.gate.quieter.notify_waiters();
        }
    }
}

impl Default for Priorities {
    fn default() -> Self {
        Priorities {
            faults: AtomicUsize::new(0),
            prefetches: AtomicUsize::new(0),
            quieter: Notify::new(),
            prefetch_slots: Arc::new(Semaphore::new(PREFETCHES)),
            background_slots: Arc::new(Semaphore::new(BACKGROUND)),
        }
    }
}

impl Priorities {
    /// Wait for a read of `priority`'s turn.
    pub async fn admit(self: &Arc<Self>, priority: Priority) -> Admitted {
        let waited_enough = tokio::time::Instant::now()
            + match priority {
                Priority::Prefetch => PREFETCH_MAX_WAIT,
                _ => BACKGROUND_MAX_WAIT,
            };
        let slot = match priority {
            Priority::Foreground => None,
            Priority::Prefetch => self.prefetch_slots.clone().acquire_owned().await.ok(),
            Priority::Background => self.background_slots.clone().acquire_owned().await.ok(),
        };
        loop {
            // Registered before the check, so a wake-up between the two is not missed.
            let quieter = self.quieter.notified();
            tokio::pin!(quieter);
            quieter.as_mut().enable();
            let busy = match priority {
                Priority::Foreground => false,
                Priority::Prefetch => self.faults.load(Ordering::Acquire) > 0,
                Priority::Background => {
                    self.faults.load(Ordering::Acquire) > 0
                        || self.prefetches.load(Ordering::Acquire) > 0
                }
            };
            if !busy {
                break;
            }
            tokio::select! {
                _ = quieter => {}
                _ = tokio::time::sleep_until(waited_enough) => break,
            }
        }
        match priority {
            Priority::Foreground => self.faults.fetch_add(1, Ordering::AcqRel),
            Priority::Prefetch => self.prefetches.fetch_add(1, Ordering::AcqRel),
            Priority::Background => 0,
        };
        Admitted {
            gate: self.clone(),
            priority,
            _slot: slot,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn admitted_within(gate: &Arc<Priorities>, p: Priority, ms: u64) -> Option<Admitted> {
        tokio::time::timeout(Duration::from_millis(ms), gate.admit(p))
            .await
            .ok()
    }

    #[tokio::test]
    async fn background_reads_wait_for_faults_and_prefetches_and_faults_wait_for_nothing() {
        let gate = Arc::new(Priorities::default());
        let fault = gate.admit(Priority::Foreground).await;
        assert!(admitted_within(&gate, Priority::Background, 50)
            .await
            .is_none());
        assert!(admitted_within(&gate, Priority::Prefetch, 50)
            .await
            .is_none());
        assert!(admitted_within(&gate, Priority::Foreground, 50)
            .await
            .is_some());

        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.admit(Priority::Background).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiting.is_finished(),
            "a background read waits for the fault"
        );
        drop(fault);
        let background = tokio::time::timeout(Duration::from_millis(500), waiting).await;
        assert!(
            background.is_ok(),
            "the fault is done: the background read goes"
        );

        let prefetch = admitted_within(&gate, Priority::Prefetch, 500).await;
        assert!(
            prefetch.is_some(),
            "nothing but background: a prefetch goes"
        );
        assert!(admitted_within(&gate, Priority::Background, 50)
            .await
            .is_none());
        drop(prefetch);
        assert!(admitted_within(&gate, Priority::Background, 500)
            .await
            .is_some());
    }

    #[tokio::test]
    async fn under_endless_faults_the_lower_priorities_still_get_their_turn() {
        let gate = Arc::new(Priorities::default());
        let _endless = gate.admit(Priority::Foreground).await;
        let start = tokio::time::Instant::now();
        let prefetch = gate.admit(Priority::Prefetch).await;
        assert!(start.elapsed() >= PREFETCH_MAX_WAIT);
        let start = tokio::time::Instant::now();
        let background = gate.admit(Priority::Background).await;
        let waited = start.elapsed();
        assert!(
            (BACKGROUND_MAX_WAIT..BACKGROUND_MAX_WAIT * 3).contains(&waited),
            "{waited:?}"
        );
        drop((prefetch, background));
    }
}
