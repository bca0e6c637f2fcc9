//! Access profiles (`mobilusctl subtree profile`): the blocks an application read from a
//! subtree in the first seconds after it opened its files, in order, as a mount recorded
//! them. A site the subtree moves to fetches these first. One per subtree, in
//! `Cf::Replication` (`f` ‖ root). Recording is armed by default (the first start
//! records), by `record` (the next start records anew), and disarmed by `clear`; a mount
//! stores what it recorded only while armed, which disarms it, so one start's profile
//! is not overwritten by the next.

use mobilus_proto::fs::{Profile, ProfileRead, SubtreeId, MAX_PROFILE_READS, ROOT_INO};
use mobilus_proto::status::Errno;

use super::feed::key;
use super::keys::Cf;
use super::subtree;
use super::txn::Txn;
use crate::error::NsError;
use crate::types::OpError;

fn profile_key(root: SubtreeId) -> Vec<u8> {
    key(b'f', root)
}

fn must_be_subtree(txn: &Txn<'_>, root: SubtreeId) -> Result<(), NsError> {
    if root == ROOT_INO {
        return Err(OpError::explained(
            Errno::EINVAL,
            "the shared root subtree has no profile: make a subtree of the directory",
        )
        .into());
    }
    subtree::must_get(txn, root)?;
    Ok(())
}

/// A subtree's profile (armed and empty if none was ever set).
pub(crate) fn get(txn: &Txn<'_>, root: SubtreeId) -> Result<Profile, NsError> {
    must_be_subtree(txn, root)?;
    Ok(txn
        .get(Cf::Replication, &profile_key(root))?
        .unwrap_or(Profile {
            root,
            reads: Vec::new(),
            record: true,
            recorded_ns: 0,
            site: String::new(),
        }))
}

/// Store what a mount of `site` recorded; refused (EBUSY) unless recording is armed.
pub(crate) fn set(
    txn: &mut Txn<'_>,
    now: i64,
    site: Option<&str>,
    root: SubtreeId,
    reads: &[ProfileRead],
) -> Result<Profile, NsError> {
    let current = get(txn, root)?;
    if reads.len() > MAX_PROFILE_READS {
        return Err(Errno::E2BIG.into());
    }
    if reads.iter().any(|r| r.blocks == 0) {
        return Err(OpError::explained(Errno::EINVAL, "a profile read of no blocks").into());
    }
    if !current.record {
        return Err(OpError::explained(
            Errno::EBUSY,
            "the profile is not being recorded: `mobilusctl subtree profile PATH record` first",
        )
        .into());
    }
    let p = Profile {
        root,
        reads: reads.to_vec(),
        record: false,
        recorded_ns: now,
        site: site.unwrap_or_default().to_string(),
    };
    txn.put(Cf::Replication, profile_key(root), &p)?;
    Ok(p)
}

/// Forget the profile; `record`: the next start records one.
pub(crate) fn arm(txn: &mut Txn<'_>, root: SubtreeId, record: bool) -> Result<Profile, NsError> {
    must_be_subtree(txn, root)?;
    let p = Profile {
        root,
        reads: Vec::new(),
        record,
        recorded_ns: 0,
        site: String::new(),
    };
    txn.put(Cf::Replication, profile_key(root), &p)?;
    Ok(p)
}

impl super::Namespace {
    pub fn profile(&self, root: SubtreeId) -> Result<Profile, NsError> {
        self.with_view(|txn| get(txn, root))
    }
}
