//! Set-user-ID and set-group-ID bits dropped on write and truncate, as a local filesystem drops them.
//!
//! Without `FUSE_HANDLE_KILLPRIV(_V2)` the kernel clears S_ISUID itself (a setattr before the write) but clears
//! S_ISGID only when the file is group-executable: it leaves to the filesystem the rule that current kernels apply
//! to local filesystems — S_ISGID also goes when the writer is not in the file's group (and lacks CAP_FSETID). So
//! a non-root caller's first write through a handle, and every truncate by one, checks the mode here and drops
//! what ext4 would. Root stands for CAP_FSETID (the caller's capabilities are not visible through FUSE).

use fuser::Request;

use super::QsfsFs;
use crate::error::Result;
use crate::meta::AttrChanges;

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_IXGRP: u32 = 0o0010;

/// Who asked: the request's credentials.
#[derive(Clone, Copy, Debug)]
pub(super) struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl Caller {
    pub fn of(req: &Request) -> Caller {
        Caller {
            uid: req.uid(),
            gid: req.gid(),
            pid: req.pid(),
        }
    }

    /// Whether the caller is in group `gid`: its primary group or one of its supplementary groups (read from
    /// /proc; a process that is gone counts as not in the group, which only ever drops more).
    fn in_group(&self, gid: u32) -> bool {
        if self.gid == gid {
            return true;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", self.pid)) else {
            return false;
        };
        status
            .lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .is_some_and(|groups| groups.split_whitespace().any(|g| g.parse() == Ok(gid)))
    }
}

/// The bits of `mode` (a file owned by group `file_gid`) a write or truncate by `caller` removes.
pub(super) fn privs_to_drop(mode: u32, file_gid: u32, caller: &Caller) -> u32 {
    if caller.uid == 0 || mode & (S_ISUID | S_ISGID) == 0 {
        return 0;
    }
    let mut drop = mode & S_ISUID;
    if mode & S_ISGID != 0 && (mode & S_IXGRP != 0 || !caller.in_group(file_gid)) {
        drop |= S_ISGID;
    }
    drop
}

impl QsfsFs {
    /// Before a write or truncate of `ino` by `caller`: drops the set-ID bits a local filesystem would.
    pub(super) fn drop_privs(&self, ino: u64, caller: &Caller) -> Result<()> {
        if caller.uid == 0 {
            return Ok(());
        }
        let i = self.inode(ino)?;
        let drop = privs_to_drop(i.mode, i.gid, caller);
        if drop == 0 {
            return Ok(());
        }
        let change = AttrChanges {
            mode: Some(i.mode & !drop),
            ..AttrChanges::default()
        };
        self.set_attr(ino, &change, None, None)?;
        // The kernel caches attributes for a second: tell it the mode changed (attributes only, no pages).
        if let Some(n) = self.notifier.get() {
            let _ = n.inval_inode(fuser::INodeNo(ino), -1, 0);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(uid: u32, gid: u32) -> Caller {
        // pid 0 has no /proc entry: only the primary group counts.
        Caller { uid, gid, pid: 0 }
    }

    #[test]
    fn drops_like_a_local_filesystem() {
        let nobody = caller(65534, 65534);
        assert_eq!(
            privs_to_drop(0o2666, 0, &nobody),
            S_ISGID,
            "not in the group"
        );
        assert_eq!(
            privs_to_drop(0o2666, 65534, &nobody),
            0,
            "in the group, not executable"
        );
        assert_eq!(
            privs_to_drop(0o2676, 65534, &nobody),
            S_ISGID,
            "group-executable"
        );
        assert_eq!(privs_to_drop(0o6666, 65534, &nobody), S_ISUID);
        assert_eq!(privs_to_drop(0o6755, 0, &nobody), S_ISUID | S_ISGID);
        assert_eq!(privs_to_drop(0o0666, 0, &nobody), 0);
        assert_eq!(
            privs_to_drop(0o6777, 0, &caller(0, 0)),
            0,
            "root keeps them"
        );
    }
}
