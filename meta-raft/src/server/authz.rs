//! Who may call what on a metadata member, by the role in the caller's certificate.
//!
//! Every call passes through [`mobilus_tls::server::Authorize`] with [`policy`]; a
//! mutation of the namespace also passes through [`bind_site`], which ties a mount's
//! writes to the site its certificate names, whatever site its request claims.

use std::sync::atomic::{AtomicBool, Ordering};

use mobilus_proto::pb;
use mobilus_tls::Role;
use tonic::Status;

static SITE_BINDING_DISABLED: AtomicBool = AtomicBool::new(false);

/// TEST ONLY (`--unsafe-no-site-binding`): take the site a request claims, whatever its
/// certificate says — the deliberate bug the Jepsen harness's forging client must expose.
pub fn disable_site_binding_for_tests() {
    SITE_BINDING_DISABLED.store(true, Ordering::Relaxed);
}

/// Cluster RPCs that change the cluster itself: operators only.
const ADMIN_ONLY: &[&str] = &[
    "Init",
    "RemoveMember",
    "TriggerSnapshot",
    "SetNodeDraining",
    "RemoveDataNode",
    "SetSiteReplicas",
    "Fsck",
    "ListChunks",
    "CreateSubtree",
    "RelabelSubtree",
    "MoveSubtree",
    "SetSubtreePolicy",
    "StartClone",
    "CloneStep",
    "AbortCloneStep",
    "StartRefresh",
    "CreateSnapshot",
    "RemoveSnapshot",
    "SetPlacement",
    "ArmProfile",
];

/// Cluster RPCs a new member calls to join (`mobilus-meta --join`), besides operators.
const MEMBER_JOIN: &[&str] = &["AddLearner", "Promote"];

/// Cluster RPCs of the data nodes' own work (registration, GC, following).
const DATA_NODE: &[&str] = &[
    "RegisterDataNode",
    "Condemn",
    "ForgetCondemned",
    "ChunkRefs",
    "ReadFeed",
    "AckFeed",
    "ScanSubtreeChunks",
];

/// Cluster RPCs of a mount's own work.
const MOUNT: &[&str] = &["SetProfile"];

/// May `role` call `path` (`/mobilus.meta.v1.Meta/Mkdir`)?
/// Is this a Raft RPC (between members)? Those are left out of the request budget: a
/// member's messages are bounded by Raft's own limits, and clients must not crowd them out.
pub fn is_raft(path: &str) -> bool {
    path.starts_with("/mobilus.meta.v1.Raft/")
}

pub fn policy(role: Role, path: &str) -> bool {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match service {
        "mobilus.meta.v1.Raft" => role == Role::Meta,
        // The file system: mounts, and operators and data nodes that read it.
        "mobilus.meta.v1.Meta" => role != Role::Meta,
        "mobilus.meta.v1.Cluster" => {
            if MEMBER_JOIN.contains(&method) {
                matches!(role, Role::Meta | Role::Admin)
            } else if ADMIN_ONLY.contains(&method) {
                role == Role::Admin
            } else if DATA_NODE.contains(&method) {
                matches!(role, Role::Data | Role::Admin)
            } else if MOUNT.contains(&method) {
                matches!(role, Role::Mount | Role::Admin)
            } else {
                // Reads of the cluster's state: anyone in the cluster.
                true
            }
        }
        _ => false,
    }
}

/// A mutation's fence, with its site taken from the caller's certificate: a mount or a
/// data node of site X speaks for X, so a request that claims another site is refused,
/// and one that claims none is X's. Operators and insecure callers keep what they send.
pub fn bind_site(fence: Option<pb::Fence>) -> Result<Option<pb::Fence>, Status> {
    let Some(peer) = mobilus_tls::server::current_peer() else {
        return Ok(fence);
    };
    if !matches!(peer.role, Role::Mount | Role::Data)
        || SITE_BINDING_DISABLED.load(Ordering::Relaxed)
    {
        return Ok(fence);
    }
    let Some(site) = peer.site.clone() else {
        return Err(Status::permission_denied(format!(
            "the certificate of {peer} names no site"
        )));
    };
    let mut fence = fence.unwrap_or_default();
    if !fence.site.is_empty() && fence.site != site {
        return Err(Status::permission_denied(format!(
            "the request claims site {:?}, but the certificate is of {peer}",
            fence.site
        )));
    }
    fence.site = site;
    Ok(Some(fence))
}

/// The site the caller's certificate binds it to (a mount's or a data node's), if any:
/// what a request with no fence speaks for.
pub fn bound_site() -> Option<String> {
    let peer = mobilus_tls::server::current_peer()?;
    if !matches!(peer.role, Role::Mount | Role::Data)
        || SITE_BINDING_DISABLED.load(Ordering::Relaxed)
    {
        return None;
    }
    peer.site.clone()
}

/// A site named in a request (a data node registering itself) must be the caller's own
/// when its certificate binds it to one.
pub fn own_site(claimed: &str) -> Result<(), Status> {
    match mobilus_tls::server::current_peer() {
        Some(peer)
            if matches!(peer.role, Role::Mount | Role::Data)
                && peer.site.as_deref() != Some(claimed) =>
        {
            Err(Status::permission_denied(format!(
                "the request names site {claimed:?}, but the certificate is of {peer}"
            )))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_is_for_members_and_cluster_changes_for_operators() {
        assert!(policy(Role::Meta, "/mobilus.meta.v1.Raft/AppendEntries"));
        for role in [Role::Mount, Role::Data, Role::Admin] {
            assert!(!policy(role, "/mobilus.meta.v1.Raft/Vote"), "{role}");
            assert!(!policy(role, "/mobilus.meta.v1.Raft/Forward"), "{role}");
        }
        for role in [Role::Mount, Role::Data, Role::Meta] {
            assert!(
                !policy(role, "/mobilus.meta.v1.Cluster/MoveSubtree"),
                "{role}"
            );
            assert!(
                !policy(role, "/mobilus.meta.v1.Cluster/RemoveMember"),
                "{role}"
            );
        }
        assert!(policy(Role::Admin, "/mobilus.meta.v1.Cluster/MoveSubtree"));
        assert!(policy(Role::Meta, "/mobilus.meta.v1.Cluster/AddLearner"));
        assert!(!policy(Role::Mount, "/mobilus.meta.v1.Cluster/AddLearner"));
        assert!(policy(Role::Mount, "/mobilus.meta.v1.Meta/Mkdir"));
        assert!(!policy(Role::Meta, "/mobilus.meta.v1.Meta/Mkdir"));
        assert!(!policy(
            Role::Mount,
            "/mobilus.meta.v1.Cluster/RegisterDataNode"
        ));
        assert!(policy(
            Role::Data,
            "/mobilus.meta.v1.Cluster/RegisterDataNode"
        ));
        assert!(policy(Role::Mount, "/mobilus.meta.v1.Cluster/ListSubtrees"));
        assert!(!policy(Role::Admin, "/grpc.health.v1.Health/Check"));
        assert!(!policy(Role::Admin, "garbage"));
    }
}
