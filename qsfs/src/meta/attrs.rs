//! Inode attributes: one setattr's changes (`AttrChanges`), the data path's size and times, access times, and the
//! mode, owner and access time an open file's cell held back until its next commit.

use rusqlite::{Connection, params};

use super::fsops::inode;
use super::{Inode, now_ns};
use crate::error::Result;

/// The attribute changes of one setattr call (size is the data path's business, not this one's).
#[derive(Clone, Copy, Debug, Default)]
pub struct AttrChanges {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime_ns: Option<i64>,
    pub mtime_ns: Option<i64>,
    pub ctime_ns: Option<i64>,
}

impl AttrChanges {
    /// Mode, owner and access time: what an open file's cell holds back until the file's next commit (its times
    /// travel with its size, `set_size_times`).
    pub fn held(&self) -> AttrChanges {
        AttrChanges {
            mtime_ns: None,
            ctime_ns: None,
            ..*self
        }
    }

    pub fn is_empty(&self) -> bool {
        self.mode.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.atime_ns.is_none()
            && self.mtime_ns.is_none()
            && self.ctime_ns.is_none()
    }

    /// These changes followed by `newer`: each field of `newer` that is set wins.
    pub fn then(&self, newer: &AttrChanges) -> AttrChanges {
        AttrChanges {
            mode: newer.mode.or(self.mode),
            uid: newer.uid.or(self.uid),
            gid: newer.gid.or(self.gid),
            atime_ns: newer.atime_ns.or(self.atime_ns),
            mtime_ns: newer.mtime_ns.or(self.mtime_ns),
            ctime_ns: newer.ctime_ns.or(self.ctime_ns),
        }
    }

    /// `inode` as these changes leave it (mode, owner and times; ctime is the caller's).
    pub fn apply_to(&self, inode: &mut Inode) {
        if let Some(m) = self.mode {
            inode.mode = m & 0o7777;
        }
        if let Some(u) = self.uid {
            inode.uid = u;
        }
        if let Some(g) = self.gid {
            inode.gid = g;
        }
        if let Some(a) = self.atime_ns {
            inode.atime_ns = a;
        }
        if let Some(m) = self.mtime_ns {
            inode.mtime_ns = m;
        }
    }
}

/// Writes the mode, owner and access time an open file held back (see `AttrChanges::held`); fields not set
/// keep their values.
pub fn set_held_attrs(conn: &Connection, ino: u64, ch: &AttrChanges) -> Result<()> {
    if ch.is_empty() {
        return Ok(());
    }
    conn.prepare_cached(
        "UPDATE inodes SET mode = COALESCE(?2, mode), uid = COALESCE(?3, uid), gid = COALESCE(?4, gid),
         atime_ns = COALESCE(?5, atime_ns) WHERE ino = ?1",
    )?
    .execute(params![
        ino as i64,
        ch.mode.map(|m| m & 0o7777),
        ch.uid,
        ch.gid,
        ch.atime_ns
    ])?;
    Ok(())
}

/// Applies `ch` to `ino`; any change also sets ctime (to `ch.ctime_ns` or now). Returns the new inode.
pub fn set_attrs(conn: &Connection, ino: u64, ch: &AttrChanges) -> Result<Inode> {
    let mut cur = inode(conn, ino)?;
    ch.apply_to(&mut cur);
    cur.ctime_ns = ch.ctime_ns.unwrap_or_else(now_ns);
    conn.prepare_cached(
        "UPDATE inodes SET mode = ?2, uid = ?3, gid = ?4, atime_ns = ?5, mtime_ns = ?6, ctime_ns = ?7
         WHERE ino = ?1",
    )?
    .execute(params![
        ino as i64,
        cur.mode,
        cur.uid,
        cur.gid,
        cur.atime_ns,
        cur.mtime_ns,
        cur.ctime_ns
    ])?;
    Ok(cur)
}

/// Records a file's size and times after its data changed (the data path's commit).
pub fn set_size_times(
    conn: &Connection,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE inodes SET size = ?2, mtime_ns = ?3, ctime_ns = MAX(ctime_ns, ?4) WHERE ino = ?1",
    )?
    .execute(params![ino as i64, size as i64, mtime_ns, ctime_ns])?;
    Ok(())
}

/// Records an access time (relatime: the mount writes it only when it is older than mtime/ctime or a day old).
pub fn set_atime(conn: &Connection, ino: u64, atime_ns: i64) -> Result<()> {
    conn.prepare_cached("UPDATE inodes SET atime_ns = ?2 WHERE ino = ?1")?
        .execute(params![ino as i64, atime_ns])?;
    Ok(())
}
