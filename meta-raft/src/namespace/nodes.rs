//! The site registry's drain marks: a node being drained takes no new copies, and its
//! chunks are copied to its site's other nodes (`mobilusctl node drain`). The mark is a
//! key of its own (`Cf::Sys`, `draining/` ‖ address), because every heartbeat rewrites
//! the registration record.

use mobilus_proto::fs::DataNodeInfo;
use mobilus_proto::status::Errno;

use super::keys::{self, Cf};
use super::txn::Txn;
use crate::codec;
use crate::error::NsError;
use crate::types::OpError;

fn draining_key(addr: &str) -> Vec<u8> {
    let mut k = keys::sys::DRAINING.to_vec();
    k.extend_from_slice(addr.as_bytes());
    k
}

/// Mark (or unmark) the registered node at `addr` as draining.
pub(crate) fn set_draining(
    txn: &mut Txn<'_>,
    addr: &str,
    draining: bool,
) -> Result<DataNodeInfo, NsError> {
    let mut node = registered(txn, None)?
        .into_iter()
        .find(|n| n.addr == addr)
        .ok_or_else(|| {
            OpError::explained(Errno::ENOENT, format!("no data node {addr} is registered"))
        })?;
    if draining {
        txn.put(Cf::Sys, draining_key(addr), &())?;
    } else {
        txn.delete(Cf::Sys, draining_key(addr));
    }
    node.draining = draining;
    Ok(node)
}

/// The registered nodes (of `site`, or all), with their drain marks.
pub(crate) fn registered(txn: &Txn<'_>, site: Option<&str>) -> Result<Vec<DataNodeInfo>, NsError> {
    let prefix = site.map(|s| keys::node(s, "")).unwrap_or_default();
    let mut out = Vec::new();
    for (_, v) in txn.scan_all(Cf::Nodes, &prefix)? {
        let mut n: DataNodeInfo = codec::decode(&v)?;
        n.draining = txn.get::<()>(Cf::Sys, &draining_key(&n.addr))?.is_some();
        out.push(n);
    }
    Ok(out)
}
