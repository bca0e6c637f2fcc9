//! A batch of changes in one call (`Meta.Batch`): each item goes through its own
//! handler, exactly as its own call would, and all of them at once, so the proposer packs
//! them into as few log entries as it can. A delegation's holder commits what it wrote
//! back this way: one request and one Raft round for many files, instead of one each.
//! Only holder-only changes are taken (see `item`).

use mobilus_proto::pb;
use mobilus_proto::pb::batch_item::Op as ItemOp;
use mobilus_proto::pb::batch_result::Outcome;
use mobilus_proto::pb::meta_server::Meta;
use mobilus_proto::status::item_status;
use tonic::{Request, Response, Status};

use super::grpc::MetaSvc;

/// Most items in one batch.
pub const MAX_BATCH_ITEMS: usize = 256;

impl MetaSvc {
    pub(super) async fn batch_items(
        &self,
        r: pb::BatchRequest,
    ) -> Result<Response<pb::BatchReply>, Status> {
        if r.items.len() > MAX_BATCH_ITEMS {
            return Err(Status::invalid_argument(format!(
                "a batch holds at most {MAX_BATCH_ITEMS} items, not {}",
                r.items.len()
            )));
        }
        self.node
            .batched_items
            .fetch_add(r.items.len() as u64, std::sync::atomic::Ordering::Relaxed);
        // On this request's task: the caller's certificate (the fences' site) and the
        // reply's applied index are the request's, whichever item sets them.
        let results = futures::future::join_all(r.items.into_iter().map(|item| self.item(item)))
            .await
            .into_iter()
            .map(|outcome| pb::BatchResult {
                outcome: Some(outcome.unwrap_or_else(|s| Outcome::Error(item_status(&s)))),
            })
            .collect();
        Ok(Response::new(pb::BatchReply { results }))
    }

    async fn item(&self, item: pb::BatchItem) -> Result<Outcome, Status> {
        // Holder-only changes are refused at once when the delegation is gone, so none
        // waits for a recall (as others may, for seconds) and holds up the reply.
        let fence = match &item.op {
            Some(ItemOp::Write(w)) => w.fence.as_ref(),
            Some(ItemOp::Create(c)) => c.fence.as_ref(),
            Some(ItemOp::Unlink(u)) => u.fence.as_ref(),
            None => None,
        };
        if item.op.is_some() && !fence.is_some_and(|f| f.holder_only) {
            return Err(Status::invalid_argument(
                "a batch carries only holder-only changes (Fence.holder_only)",
            ));
        }
        match item.op {
            Some(ItemOp::Write(w)) => {
                let reply = Meta::write(self, Request::new(w)).await?;
                Ok(Outcome::Attr(reply.into_inner()))
            }
            Some(ItemOp::Create(c)) if c.ino != 0 => {
                let reply = Meta::mknod(self, Request::new(c)).await?;
                Ok(Outcome::Attr(reply.into_inner()))
            }
            Some(ItemOp::Create(_)) => Err(Status::invalid_argument(
                "a batch creates only under a reserved number (a create's ino must be set)",
            )),
            Some(ItemOp::Unlink(u)) => {
                let reply = Meta::unlink(self, Request::new(u)).await?;
                Ok(Outcome::Unlink(reply.into_inner()))
            }
            None => Err(Status::invalid_argument("a batch item names no change")),
        }
    }
}
