//! Inode numbers reserved for a session's creates.
//!
//! The holder of a subtree's delegation answers a create at once and makes the file in
//! the metadata later, at its first close and together with its first write: one commit
//! for a new file instead of two. It must answer with the file's inode number, so it
//! takes numbers from blocks reserved for its session. A block is [`BLOCK`] numbers,
//! aligned, recorded with its session and which of its numbers were made; each number is
//! made at most once, by that session only. Blocks stay recorded (a few bytes each,
//! their numbers never given again), so that a number never reserved is refused even
//! after its block would have been used up.

use mobilus_proto::fs::{Attr, ChunkCheck, FileKind, InodeId, SliceWrite};
use mobilus_proto::status::Errno;
use serde::{Deserialize, Serialize};

use super::keys::{self, Cf};
use super::txn::Txn;
use super::{dir, file, load, update_counters};
use crate::error::NsError;
use crate::types::OpError;

/// Numbers in a block (a bitmap of them fits a u64).
pub(crate) const BLOCK: u64 = 64;

#[derive(Serialize, Deserialize)]
struct Reservation {
    session: u64,
    /// Bit `n`: number `first + n` was made.
    used: u64,
}

/// A file created under a reserved number.
pub(crate) struct Create<'a> {
    pub parent: InodeId,
    pub name: &'a [u8],
    pub ino: InodeId,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub session: u64,
    pub time_ns: i64,
}

/// Reserve the next block for `session`; returns its first number and its size.
pub(crate) fn reserve(txn: &mut Txn<'_>, session: u64) -> Result<(InodeId, u32), NsError> {
    if session == 0 {
        return Err(
            OpError::explained(Errno::EINVAL, "reserving inode numbers needs a session").into(),
        );
    }
    let counters = update_counters(txn, |c| {
        c.next_ino = c.next_ino.div_ceil(BLOCK) * BLOCK + BLOCK;
    })?;
    let first = counters.next_ino - BLOCK;
    txn.put(
        Cf::Sys,
        keys::sys::reserved(first),
        &Reservation { session, used: 0 },
    )?;
    Ok((first, BLOCK as u32))
}

/// Make the file `c` describes under its reserved number, then apply `write` to it.
pub(crate) fn create(
    txn: &mut Txn<'_>,
    now: i64,
    c: Create<'_>,
    write: Option<&(Vec<SliceWrite>, Vec<ChunkCheck>)>,
) -> Result<Attr, NsError> {
    let key = keys::sys::reserved(c.ino / BLOCK * BLOCK);
    let bit = 1u64 << (c.ino % BLOCK);
    let Some(mut r) = txn.get::<Reservation>(Cf::Sys, &key)? else {
        return Err(not_reserved(c.ino));
    };
    if r.session != c.session {
        return Err(OpError::explained(
            Errno::EPERM,
            format!("inode number {} is reserved for another session", c.ino),
        )
        .into());
    }
    match r.used & bit {
        0 => {}
        // Made already: by a retry of this very command whose first try committed, or
        // by the holder making it before the commit that carries its first write. The
        // file it made answers, and still gets the write, if it is still a file of the
        // directory's subtree (which the ownership check has passed).
        _ => {
            let made = match txn.get::<super::InodeRecord>(Cf::Inodes, &keys::ino(c.ino))? {
                Some(rec) if rec.attr.kind == FileKind::Regular => rec.attr,
                _ => return Err(not_reserved(c.ino)),
            };
            if made.subtree != load(txn, c.parent)?.attr.subtree {
                return Err(not_reserved(c.ino));
            }
            return match write {
                Some((slices, checks)) => file::write(txn, now, c.ino, slices, checks),
                None => Ok(made),
            };
        }
    }
    let new = dir::NewInode {
        kind: FileKind::Regular,
        mode: c.mode,
        uid: c.uid,
        gid: c.gid,
        rdev: 0,
    };
    let mut attr = dir::create_numbered(
        txn,
        c.time_ns,
        c.parent,
        c.name,
        new,
        Vec::new(),
        Some(c.ino),
    )?;
    r.used |= bit;
    txn.put(Cf::Sys, key, &r)?;
    if let Some((slices, checks)) = write {
        attr = file::write(txn, now, c.ino, slices, checks)?;
    }
    Ok(attr)
}

fn not_reserved(ino: InodeId) -> NsError {
    OpError::explained(
        Errno::EINVAL,
        format!("inode number {ino} is not reserved, or was used"),
    )
    .into()
}
