//! What a write, a truncate or a chown takes away, as Linux does: set-user-ID,
//! set-group-ID (when group execution is set too), and a file capability.
//!
//! The mount asks the kernel for `FUSE_HANDLE_KILLPRIV_V2`, which hands this job to the
//! file system. Without it the kernel asked for `security.capability` before every
//! write, a round to the mount per write (a fifth of the time SQLite took to build a
//! table here); with it, the kernel stops asking once an inode is written, and flags
//! the writes of a caller without `CAP_FSETID` instead.

use mobilus_proto::fs::{Attr, FileKind, InodeId, SetAttr};
use mobilus_proto::status::Errno;

use super::{Caller, FsResult, MountFs, OpenInode, SECURITY_CAPABILITY};

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_IXGRP: u32 = 0o010;

/// `mode` without set-user-ID, and without set-group-ID if group execution is set or the
/// caller is not of the file's group (as Linux's `setattr_should_drop_sgid`; a
/// set-group-ID file no group may execute marks mandatory locking). `None` if nothing
/// changes.
fn mode_killed(mode: u32, in_group: bool) -> Option<u32> {
    let mut killed = mode & !S_ISUID;
    if mode & S_ISGID != 0 && (mode & S_IXGRP != 0 || !in_group) {
        killed &= !S_ISGID;
    }
    (killed != mode).then_some(killed)
}

/// Whether `who` counts as of `attr`'s group. Only the primary group is known here (a
/// request carries no supplementary groups), and root stands for `CAP_FSETID`.
fn in_group(attr: &Attr, who: Caller) -> bool {
    who.uid == 0 || who.gid == attr.gid
}

/// What a change of attributes takes away: a chown of anything but a directory kills the
/// set-ID bits whoever makes it, a truncate only when its caller is not root (the
/// request carries no capabilities: root stands for `CAP_FSETID`); both kill a file
/// capability. Returns whether the set-ID bits go and whether the capability does.
fn setattr_kills(set: &SetAttr, kind: FileKind, who: Caller) -> (bool, bool) {
    let chown = (set.uid.is_some() || set.gid.is_some()) && kind != FileKind::Directory;
    let truncate = set.size.is_some();
    (chown || (truncate && who.uid != 0), chown || truncate)
}

/// The mode `who`'s change leaves `attr` with ([`mode_killed`]); `None` if it takes no
/// set-ID bit away.
fn mode_left(attr: &Attr, who: Caller) -> Option<u32> {
    mode_killed(attr.mode & 0o7777, in_group(attr, who))
}

/// Whether a write by `who` takes set-ID bits away from `inode`, as far as its cached
/// attributes tell (the kernel's own cached mode decided this before).
fn write_takes_set_ids(inode: &OpenInode, kill_suidgid: bool, who: Caller) -> bool {
    kill_suidgid && mode_left(&super::lock(&inode.attr).0, who).is_some()
}

impl MountFs {
    /// Before a write of `inode`: take away its file capability, and its set-ID bits if
    /// the kernel flagged the write (`kill_suidgid`: its caller lacks `CAP_FSETID`). With
    /// neither to take (the usual case, known from memory), no round.
    pub(super) async fn kill_for_write(
        &self,
        ino: InodeId,
        inode: &OpenInode,
        kill_suidgid: bool,
        who: Caller,
    ) -> FsResult<()> {
        let set_ids = write_takes_set_ids(inode, kill_suidgid, who);
        if !set_ids && self.known_absent_xattr(ino, SECURITY_CAPABILITY) {
            return Ok(());
        }
        self.kill_capability(ino).await?;
        if set_ids {
            if let Some(mode) = self.fresh_mode_left(ino, who).await? {
                let set = SetAttr {
                    mode: Some(mode),
                    ..SetAttr::default()
                };
                self.setattr_as_asked(ino, set).await?;
            }
            // A WRITE's reply carries no attributes: the kernel would keep the set-ID
            // mode (and `execve` honour it) until its attribute TTL ran out.
            self.forget_kernel_attrs(ino);
        }
        Ok(())
    }

    /// [`mode_left`] from attributes fetched now: a mode cached here may predate another
    /// mount's chmod, which writing the whole mode back would undo.
    async fn fresh_mode_left(&self, ino: InodeId, who: Caller) -> FsResult<Option<u32>> {
        let fresh = self.meta_about(ino).await?.getattr(ino, false).await?;
        Ok(mode_left(&fresh, who))
    }

    /// Whether a write (flagged `kill_suidgid` or not) of `inode` by `who` takes nothing
    /// away, known from memory: no set-ID bit it would take, and no capability.
    pub(super) fn nothing_to_kill(
        &self,
        ino: InodeId,
        inode: &OpenInode,
        kill_suidgid: bool,
        who: Caller,
    ) -> bool {
        !write_takes_set_ids(inode, kill_suidgid, who)
            && self.known_absent_xattr(ino, SECURITY_CAPABILITY)
    }

    /// `set` with what it takes away added: the mode without its set-ID bits (unless
    /// `set` names a mode itself), after the file capability is removed.
    pub(super) async fn with_kills(
        &self,
        ino: InodeId,
        mut set: SetAttr,
        who: Caller,
    ) -> FsResult<SetAttr> {
        if set.uid.is_none() && set.gid.is_none() && set.size.is_none() {
            return Ok(set);
        }
        let attr = self.getattr(ino).await?;
        let (set_ids, capability) = setattr_kills(&set, attr.kind, who);
        if capability && attr.kind == FileKind::Regular {
            self.kill_capability(ino).await?;
        }
        // The cached mode says whether there is anything to take (as the kernel's own
        // cached mode did); what the new mode is comes from attributes fetched now.
        if set_ids && set.mode.is_none() && mode_left(&attr, who).is_some() {
            set.mode = self.fresh_mode_left(ino, who).await?;
        }
        Ok(set)
    }

    /// Remove `ino`'s `security.capability`, if it has one; then it is known to have none.
    async fn kill_capability(&self, ino: InodeId) -> FsResult<()> {
        match self.getxattr(ino, SECURITY_CAPABILITY).await {
            Ok(_) => match self.removexattr(ino, SECURITY_CAPABILITY).await {
                Ok(()) => {}
                Err(e) if e.to_errno() == Errno::ENODATA => {}
                Err(e) => return Err(e),
            },
            Err(e) if e.to_errno() == Errno::ENODATA => return Ok(()),
            Err(e) => return Err(e),
        }
        self.remember_no_caps(ino);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_user_id_always_goes_and_set_group_id_with_group_execution_or_another_group() {
        assert_eq!(mode_killed(0o4755, true), Some(0o755));
        assert_eq!(mode_killed(0o2755, true), Some(0o755));
        assert_eq!(mode_killed(0o6775, true), Some(0o775));
        // Mandatory locking's mark stays for the file's group; set-user-ID still goes.
        assert_eq!(mode_killed(0o2644, true), None);
        assert_eq!(mode_killed(0o6644, true), Some(0o2644));
        assert_eq!(mode_killed(0o2644, false), Some(0o644));
        assert_eq!(mode_killed(0o755, false), None);
        assert_eq!(mode_killed(0o1777, false), None);
    }

    #[test]
    fn a_chown_kills_for_anyone_a_truncate_only_for_the_unprivileged() {
        let root = Caller { uid: 0, gid: 0 };
        let user = Caller {
            uid: 1000,
            gid: 1000,
        };
        let chown = SetAttr {
            uid: Some(5),
            ..SetAttr::default()
        };
        let truncate = SetAttr {
            size: Some(0),
            ..SetAttr::default()
        };
        let touch = SetAttr {
            mode: Some(0o644),
            ..SetAttr::default()
        };
        assert_eq!(setattr_kills(&chown, FileKind::Regular, root), (true, true));
        assert_eq!(
            setattr_kills(&chown, FileKind::Directory, root),
            (false, false)
        );
        assert_eq!(
            setattr_kills(&truncate, FileKind::Regular, root),
            (false, true)
        );
        assert_eq!(
            setattr_kills(&truncate, FileKind::Regular, user),
            (true, true)
        );
        assert_eq!(
            setattr_kills(&touch, FileKind::Regular, user),
            (false, false)
        );
    }
}
