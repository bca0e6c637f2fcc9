//! What the operator says of the site registry: drain marks (a node being drained takes
//! no new copies, and its chunks are copied to its site's other nodes: `mobilusctl node
//! drain`) and each site's replica count (`mobilusctl site replicas`). Each is a key of
//! its own in `Cf::Sys` (`draining/` ‖ address, `replicas/` ‖ site), because every
//! heartbeat rewrites the registration records; a listing fills them in.

use mobilus_proto::fs::DataNodeInfo;
use mobilus_proto::status::Errno;

use super::keys::{self, Cf};
use super::txn::Txn;
use crate::codec;
use crate::error::NsError;
use crate::types::OpError;

/// Most copies a site may keep of each chunk.
pub const MAX_SITE_REPLICAS: u32 = 8;

fn replicas_key(site: &str) -> Vec<u8> {
    let mut k = keys::sys::SITE_REPLICAS.to_vec();
    k.extend_from_slice(site.as_bytes());
    k
}

/// Set how many copies `site` keeps of each chunk.
pub(crate) fn set_replicas(txn: &mut Txn<'_>, site: &str, replicas: u32) -> Result<u32, NsError> {
    if !(1..=MAX_SITE_REPLICAS).contains(&replicas) {
        return Err(OpError::explained(
            Errno::EINVAL,
            format!("a site keeps 1 to {MAX_SITE_REPLICAS} copies of each chunk, not {replicas}"),
        )
        .into());
    }
    if !super::subtree::known_site(txn, site)? {
        return Err(OpError::UnknownSite(site.to_string()).into());
    }
    txn.put(Cf::Sys, replicas_key(site), &replicas)?;
    Ok(replicas)
}

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

/// A node whose last heartbeat (log time) is this recent may still be running.
pub const SILENT_BEFORE_REMOVAL_NS: i64 = 10_000_000_000;

/// Take the node at `addr` out of the registry: only once it is drained (so every chunk
/// it held has its copies on the site's other nodes, and no commit since the mark relies
/// on it) and silent (stopped: a running node would register again at its next
/// heartbeat). Its drain mark stays (a delayed commit relying on a copy there is still
/// refused, and if it ever registers again it is still drained until `drain --undo`),
/// and so do its GC generation and tombstones; its condemnations go (a mark nobody will
/// ever forget would refuse every later write of those chunks).
pub(crate) fn remove(txn: &mut Txn<'_>, now: i64, addr: &str) -> Result<DataNodeInfo, NsError> {
    let node = registered(txn, None)?
        .into_iter()
        .find(|n| n.addr == addr)
        .ok_or_else(|| {
            OpError::explained(Errno::ENOENT, format!("no data node {addr} is registered"))
        })?;
    if !node.draining {
        return Err(OpError::explained(
            Errno::EBUSY,
            format!("{addr} is not drained: `mobilusctl node drain {addr} --wait` first"),
        )
        .into());
    }
    let silent_ns = now.saturating_sub(node.last_heartbeat_ns);
    if silent_ns < SILENT_BEFORE_REMOVAL_NS {
        return Err(OpError::explained(
            Errno::EBUSY,
            format!(
                "{addr} heartbeated {} ms ago: stop it, and remove it once it has been silent for {} s",
                silent_ns / 1_000_000,
                SILENT_BEFORE_REMOVAL_NS / 1_000_000_000
            ),
        )
        .into());
    }
    txn.delete(Cf::Nodes, keys::node(&node.site, addr));
    super::gc::forget_node_condemnations(txn, addr)?;
    Ok(node)
}

/// Whether the node at `addr` is being drained.
pub(crate) fn is_draining(txn: &Txn<'_>, addr: &str) -> Result<bool, NsError> {
    Ok(txn.get::<()>(Cf::Sys, &draining_key(addr))?.is_some())
}

/// The registered nodes (of `site`, or all), with their drain marks.
pub(crate) fn registered(txn: &Txn<'_>, site: Option<&str>) -> Result<Vec<DataNodeInfo>, NsError> {
    let prefix = site.map(|s| keys::node(s, "")).unwrap_or_default();
    let mut out = Vec::new();
    for (_, v) in txn.scan_all(Cf::Nodes, &prefix)? {
        let mut n: DataNodeInfo = codec::decode(&v)?;
        n.draining = is_draining(txn, &n.addr)?;
        n.site_replicas = txn.get(Cf::Sys, &replicas_key(&n.site))?.unwrap_or(0);
        out.push(n);
    }
    Ok(out)
}
