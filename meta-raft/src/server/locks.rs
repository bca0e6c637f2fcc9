//! Blocking lock requests (F_SETLKW): a member waits for the conflict to go, woken by the
//! entries it applies, instead of the mount asking again in a loop.

use std::time::Duration;

use mobilus_proto::status::Errno;

use super::node::{now_ns, MetaNode};
use crate::error::MetaError;
use crate::namespace::SESSION_LEASE_NS;
use crate::types::{Op, OpError, OpReply};
use mobilus_proto::fs::LockRequest;

/// Longest one SetLock waits at a member before answering EAGAIN (the mount asks again,
/// well inside its RPC timeout).
pub const MAX_LOCK_WAIT: Duration = Duration::from_secs(5);

/// A holder whose session simply runs out announces nothing: a waiter also looks again
/// this often.
const EXPIRY_RECHECK: Duration = Duration::from_nanos((SESSION_LEASE_NS / 5) as u64);

fn is_conflict(r: &Result<OpReply, MetaError>) -> bool {
    matches!(r, Err(MetaError::Op(OpError::Errno(n))) if *n == Errno::EAGAIN.0)
}

impl MetaNode {
    /// `SetLock` issued by `site`, waiting up to `wait` (at most [`MAX_LOCK_WAIT`]) while
    /// another owner's lock conflicts. A waiter proposes again only when this member's
    /// own state shows the conflict gone, so waiting costs no log entries.
    pub async fn set_lock(
        &self,
        site: Option<String>,
        q: LockRequest,
        pid: u32,
        wait: Duration,
    ) -> Result<(), MetaError> {
        let op = Op::SetLock { lock: q, pid };
        let deadline = tokio::time::Instant::now() + wait.min(MAX_LOCK_WAIT);
        let mut changes = self.sm.lock_changes();
        loop {
            changes.borrow_and_update();
            let result = self.propose_as(site.clone(), None, op.clone()).await;
            if !is_conflict(&result) || tokio::time::Instant::now() >= deadline {
                return result.map(|_| ());
            }
            // Wait until an applied entry may have released the conflicting lock (or its
            // holder's lease may have run out), and this member no longer sees it.
            loop {
                let recheck = (tokio::time::Instant::now() + EXPIRY_RECHECK).min(deadline);
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep_until(recheck) => {}
                }
                changes.borrow_and_update();
                let now = tokio::time::Instant::now();
                if now >= deadline || !self.sm.namespace().lock_refused_at(q, now_ns())? {
                    break;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Errno::EAGAIN.into());
            }
        }
    }
}
