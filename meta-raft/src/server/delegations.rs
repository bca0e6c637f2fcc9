//! Delegations at a member: recalling one for a conflicting command, and the stream that
//! tells a holder about its recalls.

use std::collections::HashSet;
use std::time::Duration;

use mobilus_proto::convert::Issuer;
use mobilus_proto::fs::{DelegationGrant, InodeId, SubtreeId};

use super::node::{now_ns, MetaNode};
use crate::error::MetaError;
use crate::types::{Op, OpError, OpReply};

/// Longest a member holds a command that met another session's delegation (recall,
/// wait, propose again) before it answers `delegated` (the client asks again, inside its
/// own deadline: a holder that died blocks for its session's lease, 10 s).
pub const MAX_RECALL_WAIT: Duration = Duration::from_secs(6);

/// A holder whose lease simply runs out announces nothing: a waiter also looks again
/// this often.
const EXPIRY_RECHECK: Duration = Duration::from_millis(200);

impl MetaNode {
    /// Recall `subtree`'s delegation for a command of `session`, and wait until this
    /// member's state shows the delegation given back or run out, or until `deadline`.
    pub(super) async fn recall_and_wait(
        &self,
        subtree: SubtreeId,
        session: Option<u64>,
        deadline: tokio::time::Instant,
    ) -> Result<(), MetaError> {
        let mut changes = self.sm.lock_changes();
        changes.borrow_and_update();
        metrics::counter!("mobilus_meta_delegation_recalls_total").increment(1);
        // A recall touches no subtree's contents: it is never itself delegated.
        let remaining = match self
            .propose_once(Issuer::default(), None, Op::RecallDelegation { subtree })
            .await?
        {
            OpReply::Recalled { remaining_ns: 0 } => return Ok(()),
            OpReply::Recalled { remaining_ns } => remaining_ns,
            other => return Err(MetaError::Raft(format!("unexpected reply {other:?}"))),
        };
        // Until then the delegation can end only by being given back, which an applied
        // entry announces: this member's own clock (maybe ahead of the log's) is not
        // trusted to end it sooner, or a refused command would be proposed in a loop.
        let expires = tokio::time::Instant::now()
            + Duration::from_nanos(u64::try_from(remaining).unwrap_or(0));
        loop {
            let recheck = (tokio::time::Instant::now() + EXPIRY_RECHECK).min(deadline);
            let applied = tokio::select! {
                _ = changes.changed() => true,
                _ = tokio::time::sleep_until(recheck) => false,
            };
            changes.borrow_and_update();
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(());
            }
            if (applied || now >= expires)
                && !self
                    .sm
                    .namespace()
                    .delegated_at(subtree, session, now_ns())?
            {
                return Ok(());
            }
        }
    }

    /// Before a read of `ino` by `reader`: while another session holds the delegation of
    /// its subtree with closes answered but not committed, recall it and wait for the
    /// holder to commit and give it back (its commits precede its release in the log).
    /// Past [`MAX_RECALL_WAIT`] the read is refused as `delegated` (the client asks
    /// again).
    pub(super) async fn wait_for_write_back(
        &self,
        ino: InodeId,
        reader: Option<u64>,
    ) -> Result<(), MetaError> {
        self.wait_for_holder(ino, reader, true).await
    }

    /// Before F_GETLK on `ino` by `reader`: while another session holds the delegation
    /// of its subtree (whose locks it grants itself), recall it and wait for it to come
    /// back with its locks.
    pub(super) async fn wait_for_delegated_locks(
        &self,
        ino: InodeId,
        reader: Option<u64>,
    ) -> Result<(), MetaError> {
        self.wait_for_holder(ino, reader, false).await
    }

    async fn wait_for_holder(
        &self,
        ino: InodeId,
        reader: Option<u64>,
        write_back_only: bool,
    ) -> Result<(), MetaError> {
        let deadline = tokio::time::Instant::now() + MAX_RECALL_WAIT;
        loop {
            let ns = self.sm.namespace();
            let found = if write_back_only {
                ns.written_back_elsewhere(ino, reader)?
            } else {
                ns.holder_elsewhere(ino, reader, false)?
            };
            let Some((subtree, holder)) = found else {
                return Ok(());
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(MetaError::Op(OpError::Delegated {
                    subtree,
                    holder,
                    remaining_ns: 0,
                }));
            }
            metrics::counter!("mobilus_meta_write_back_recalls_total").increment(1);
            self.recall_and_wait(subtree, reader, deadline).await?;
        }
    }

    /// The recalls of `session`'s delegations, as this member applies them: first every
    /// delegation it holds that is being recalled, then each new recall once. Ends when
    /// the receiver is dropped.
    pub fn watch_delegations(
        self: std::sync::Arc<Self>,
        session: u64,
    ) -> tokio::sync::mpsc::Receiver<Result<DelegationGrant, MetaError>> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut changes = self.sm.lock_changes();
            let mut told: HashSet<SubtreeId> = HashSet::new();
            loop {
                changes.borrow_and_update();
                let grants = match self.sm.namespace().delegations_of(session, now_ns()) {
                    Ok(g) => g,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                // A delegation released and granted again may be recalled again.
                told.retain(|s| grants.iter().any(|g| g.subtree == *s && g.recalled));
                for g in grants {
                    if g.recalled && told.insert(g.subtree) && tx.send(Ok(g)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        rx
    }
}
