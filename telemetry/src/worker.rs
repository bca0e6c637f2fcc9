//! Background work: one abstraction for every periodic task of a server (a data node's
//! heartbeats and GC, a mount's lock-session renewals), with exponential backoff after
//! failures and a clean stop.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Stops every worker started with its receiver.
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            tx: watch::channel(false).0,
        }
    }
}

impl Shutdown {
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    pub fn stop(&self) {
        let _ = self.tx.send(true);
    }
}

/// What a worker is doing, as the process reports it (a data node's heartbeat carries
/// its workers' states to the registry, and `mobilusctl node ls` shows them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerState {
    pub name: String,
    /// Its last step failed: it is waiting longer before the next.
    pub backing_off: bool,
    /// The last failure, if any (kept after it recovers).
    pub last_error: Option<String>,
    /// Steps that failed since the process started.
    pub failures: u64,
}

/// Longest error kept per worker.
const MAX_ERROR: usize = 200;

static STATES: Mutex<BTreeMap<&'static str, WorkerState>> = Mutex::new(BTreeMap::new());

fn record(name: &'static str, failed: Option<String>) {
    let mut states = STATES.lock().unwrap_or_else(|p| p.into_inner());
    let s = states.entry(name).or_insert_with(|| WorkerState {
        name: name.to_string(),
        ..WorkerState::default()
    });
    s.backing_off = failed.is_some();
    if let Some(mut e) = failed {
        let mut cut = MAX_ERROR.min(e.len());
        while !e.is_char_boundary(cut) {
            cut -= 1;
        }
        e.truncate(cut);
        s.last_error = Some(e);
        s.failures += 1;
    }
}

/// The state of every worker this process has started, by name.
pub fn states() -> Vec<WorkerState> {
    let states = STATES.lock().unwrap_or_else(|p| p.into_inner());
    states.values().cloned().collect()
}

/// Run `step` every `every`; after a failure, wait twice as long each time (up to
/// `max_backoff`) until a step succeeds. Returns when `stop` fires.
pub fn spawn_periodic<F, Fut, E>(
    name: &'static str,
    every: Duration,
    max_backoff: Duration,
    mut stop: watch::Receiver<bool>,
    mut step: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: std::fmt::Display,
{
    tokio::spawn(async move {
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            wait = match step().await {
                Ok(()) => {
                    record(name, None);
                    every
                }
                Err(e) => {
                    record(name, Some(e.to_string()));
                    let next = (wait * 2).clamp(every, max_backoff);
                    tracing::warn!(worker = name, error = %e, retry_in = ?next, "step failed");
                    next
                }
            };
        }
    })
}
