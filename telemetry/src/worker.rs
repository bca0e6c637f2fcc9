//! Background work: one abstraction for every periodic task of a server (a data node's
//! heartbeats and GC, a mount's lock-session renewals), with exponential backoff after
//! failures and a clean stop.

use std::future::Future;
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
                Ok(()) => every,
                Err(e) => {
                    let next = (wait * 2).clamp(every, max_backoff);
                    tracing::warn!(worker = name, error = %e, retry_in = ?next, "step failed");
                    next
                }
            };
        }
    })
}
