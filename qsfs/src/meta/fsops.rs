//! The namespace operations the FUSE mount needs beyond the CLI's: POSIX-checked create/remove, rename with
//! RENAME_NOREPLACE and RENAME_EXCHANGE, hard links, attribute changes, extended attributes, directory pages for
//! readdir, and orphan inodes (nlink 0: unlinked while open, or left by a crash).
//!
//! Like `namespace.rs`, every function runs inside a caller's transaction. Removing a name never deletes the
//! inode here: the mount decides, because an unlinked file may still be open. `delete_inode_if_unreferenced`
//! finishes the job once it is closed.

use rusqlite::{Connection, OptionalExtension, params};

use super::namespace::{INODE_COLS, inode_from_row};
use super::{DirEntry, FileKind, Inode, NewInode, get_inode, link, lookup, now_ns};
use crate::error::{QsfsError, Result};

/// Longest file name, as on Linux filesystems (NAME_MAX).
pub const NAME_MAX: usize = 255;

fn display(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

pub fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(QsfsError::NameTooLong(display(&name[..32])));
    }
    if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." {
        return Err(QsfsError::Invalid(display(name)));
    }
    Ok(())
}

pub(super) fn inode(conn: &Connection, ino: u64) -> Result<Inode> {
    get_inode(conn, ino)?.ok_or_else(|| QsfsError::NotFound(format!("inode {ino}")))
}

fn dir_inode(conn: &Connection, ino: u64) -> Result<Inode> {
    let i = inode(conn, ino)?;
    if i.kind != FileKind::Dir {
        return Err(QsfsError::NotADirectory(format!("inode {ino}")));
    }
    Ok(i)
}

pub fn dir_is_empty(conn: &Connection, dir: u64) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM dirents WHERE parent = ?1 LIMIT 1")?
        .query_row([dir as i64], |_| Ok(()))
        .optional()?
        .is_none())
}

/// The directory holding directory `dir` (its `..`); None for the root.
pub fn parent_of(conn: &Connection, dir: u64) -> Result<Option<u64>> {
    Ok(conn
        .prepare_cached("SELECT parent FROM dirents WHERE ino = ?1 LIMIT 1")?
        .query_row([dir as i64], |r| r.get::<_, i64>(0))
        .optional()?
        .map(|p| p as u64))
}

/// Creates `parent/name` as a new inode and returns it. EEXIST if the name is taken.
pub fn create_node(conn: &Connection, parent: u64, name: &[u8], new: &NewInode) -> Result<Inode> {
    check_name(name)?;
    dir_inode(conn, parent)?;
    if lookup(conn, parent, name)?.is_some() {
        return Err(QsfsError::Exists(display(name)));
    }
    // The create of every file: one insert with its links counted, the entry, the parent's update; no row is
    // written twice or read back (which `create_inode` + `link` would do).
    let now = now_ns();
    let dir = new.kind == FileKind::Dir;
    let nlink = if dir { 2 } else { 1 };
    let ino = super::namespace::insert_inode(conn, new, nlink, now)?;
    conn.prepare_cached("INSERT INTO dirents (parent, name, ino) VALUES (?1, ?2, ?3)")?
        .execute(params![parent as i64, name, ino as i64])?;
    conn.prepare_cached(
        "UPDATE inodes SET nlink = nlink + ?2, mtime_ns = ?3, ctime_ns = ?3 WHERE ino = ?1",
    )?
    .execute(params![parent as i64, i64::from(dir), now])?;
    Ok(Inode {
        ino,
        kind: new.kind,
        mode: new.mode & 0o7777,
        uid: new.uid,
        gid: new.gid,
        size: new.target.as_ref().map_or(0, |t| t.len() as u64),
        nlink,
        rdev: new.rdev,
        atime_ns: now,
        mtime_ns: now,
        ctime_ns: now,
        crtime_ns: now,
    })
}

/// Gives inode `ino` one more name. Directories cannot be hard-linked (EPERM).
pub fn add_link(conn: &Connection, ino: u64, parent: u64, name: &[u8]) -> Result<Inode> {
    check_name(name)?;
    dir_inode(conn, parent)?;
    let target = inode(conn, ino)?;
    if target.kind == FileKind::Dir {
        return Err(QsfsError::NotPermitted(display(name)));
    }
    if lookup(conn, parent, name)?.is_some() {
        return Err(QsfsError::Exists(display(name)));
    }
    link(conn, parent, name, ino)?;
    inode(conn, ino)
}

/// Takes away one name. `dir` says which call this is: rmdir (the target must be an empty directory) or unlink
/// (it must not be a directory). Returns the inode and its remaining link count; the caller deletes it at 0 once
/// nothing holds it open.
pub fn remove_name(conn: &Connection, parent: u64, name: &[u8], dir: bool) -> Result<(u64, u32)> {
    check_name(name)?;
    let ino = lookup(conn, parent, name)?.ok_or_else(|| QsfsError::NotFound(display(name)))?;
    let target = inode(conn, ino)?;
    match (dir, target.kind == FileKind::Dir) {
        (true, false) => return Err(QsfsError::NotADirectory(display(name))),
        (false, true) => return Err(QsfsError::IsADirectory(display(name))),
        (true, true) if !dir_is_empty(conn, ino)? => {
            return Err(QsfsError::NotEmpty(display(name)));
        }
        _ => {}
    }
    drop_entry(conn, parent, name, &target)
}

/// Deletes the entry `parent/name -> target` and adjusts link counts (a directory loses its own two links, its
/// parent the `..`). Returns the inode's remaining link count.
fn drop_entry(conn: &Connection, parent: u64, name: &[u8], target: &Inode) -> Result<(u64, u32)> {
    conn.prepare_cached("DELETE FROM dirents WHERE parent = ?1 AND name = ?2")?
        .execute(params![parent as i64, name])?;
    let now = now_ns();
    let is_dir = target.kind == FileKind::Dir;
    let (links, parent_links) = if is_dir { (2, 1) } else { (1, 0) };
    conn.prepare_cached(
        "UPDATE inodes SET nlink = nlink - ?2, mtime_ns = ?3, ctime_ns = ?3 WHERE ino = ?1",
    )?
    .execute(params![parent as i64, parent_links, now])?;
    let left = target.nlink.saturating_sub(links);
    conn.prepare_cached("UPDATE inodes SET nlink = ?2, ctime_ns = ?3 WHERE ino = ?1")?
        .execute(params![target.ino as i64, left, now])?;
    Ok((target.ino, left))
}

/// What a rename did to the inode it replaced, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replaced {
    pub ino: u64,
    pub nlink: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameMode {
    /// RENAME_NOREPLACE: fail with EEXIST if the target exists.
    pub no_replace: bool,
    /// RENAME_EXCHANGE: swap the two names atomically; both must exist.
    pub exchange: bool,
}

/// Renames `parent/name` to `new_parent/new_name` atomically (inside the caller's transaction).
pub fn rename(
    conn: &Connection,
    parent: u64,
    name: &[u8],
    new_parent: u64,
    new_name: &[u8],
    mode: RenameMode,
) -> Result<Option<Replaced>> {
    check_name(name)?;
    check_name(new_name)?;
    if mode.no_replace && mode.exchange {
        return Err(QsfsError::Invalid(
            "RENAME_NOREPLACE with RENAME_EXCHANGE".into(),
        ));
    }
    dir_inode(conn, parent)?;
    dir_inode(conn, new_parent)?;
    let src_ino = lookup(conn, parent, name)?.ok_or_else(|| QsfsError::NotFound(display(name)))?;
    let src = inode(conn, src_ino)?;
    let dst = match lookup(conn, new_parent, new_name)? {
        Some(d) => Some(inode(conn, d)?),
        None => None,
    };
    if src.kind == FileKind::Dir && is_ancestor_or_self(conn, src_ino, new_parent)? {
        // Moving a directory under itself would detach a cycle from the tree.
        return Err(QsfsError::Invalid(display(new_name)));
    }
    if let Some(d) = &dst
        && d.kind == FileKind::Dir
        && mode.exchange
        && is_ancestor_or_self(conn, d.ino, parent)?
    {
        return Err(QsfsError::Invalid(display(name)));
    }
    let now = now_ns();
    if mode.exchange {
        let dst = dst.ok_or_else(|| QsfsError::NotFound(display(new_name)))?;
        if dst.ino == src.ino {
            return Ok(None);
        }
        let set = "UPDATE dirents SET ino = ?3 WHERE parent = ?1 AND name = ?2";
        conn.prepare_cached(set)?
            .execute(params![parent as i64, name, dst.ino as i64])?;
        conn.prepare_cached(set)?
            .execute(params![new_parent as i64, new_name, src.ino as i64])?;
        if parent != new_parent {
            // A directory changing parents moves its `..` link with it.
            let delta = (src.kind == FileKind::Dir) as i64 - (dst.kind == FileKind::Dir) as i64;
            bump_nlink(conn, parent, -delta)?;
            bump_nlink(conn, new_parent, delta)?;
        }
        touch_dirs(conn, parent, new_parent, now)?;
        touch_ctime(conn, &[src.ino, dst.ino], now)?;
        return Ok(None);
    }
    let mut replaced = None;
    if let Some(d) = dst {
        if mode.no_replace {
            return Err(QsfsError::Exists(display(new_name)));
        }
        if d.ino == src.ino {
            // Two names of one inode: POSIX says do nothing and succeed.
            return Ok(None);
        }
        match (src.kind == FileKind::Dir, d.kind == FileKind::Dir) {
            (true, false) => return Err(QsfsError::NotADirectory(display(new_name))),
            (false, true) => return Err(QsfsError::IsADirectory(display(new_name))),
            (true, true) if !dir_is_empty(conn, d.ino)? => {
                return Err(QsfsError::NotEmpty(display(new_name)));
            }
            _ => {}
        }
        let (ino, nlink) = drop_entry(conn, new_parent, new_name, &d)?;
        replaced = Some(Replaced { ino, nlink });
    }
    conn.prepare_cached("DELETE FROM dirents WHERE parent = ?1 AND name = ?2")?
        .execute(params![parent as i64, name])?;
    conn.prepare_cached("INSERT INTO dirents (parent, name, ino) VALUES (?1, ?2, ?3)")?
        .execute(params![new_parent as i64, new_name, src.ino as i64])?;
    if src.kind == FileKind::Dir && parent != new_parent {
        bump_nlink(conn, parent, -1)?;
        bump_nlink(conn, new_parent, 1)?;
    }
    touch_dirs(conn, parent, new_parent, now)?;
    touch_ctime(conn, &[src.ino], now)?;
    Ok(replaced)
}

/// True if `dir` is `ancestor` or lies below it.
fn is_ancestor_or_self(conn: &Connection, ancestor: u64, dir: u64) -> Result<bool> {
    let mut cur = dir;
    // Bounded by the tree's depth; the bound guards against a corrupt database with a cycle.
    for _ in 0..100_000 {
        if cur == ancestor {
            return Ok(true);
        }
        match parent_of(conn, cur)? {
            Some(p) if p != cur => cur = p,
            _ => return Ok(false),
        }
    }
    Err(QsfsError::Invalid(
        "directory tree too deep or cyclic".into(),
    ))
}

fn bump_nlink(conn: &Connection, ino: u64, delta: i64) -> Result<()> {
    if delta != 0 {
        conn.prepare_cached("UPDATE inodes SET nlink = MAX(nlink + ?2, 0) WHERE ino = ?1")?
            .execute(params![ino as i64, delta])?;
    }
    Ok(())
}

fn touch_dirs(conn: &Connection, a: u64, b: u64, now: i64) -> Result<()> {
    let mut st =
        conn.prepare_cached("UPDATE inodes SET mtime_ns = ?2, ctime_ns = ?2 WHERE ino = ?1")?;
    st.execute(params![a as i64, now])?;
    if b != a {
        st.execute(params![b as i64, now])?;
    }
    Ok(())
}

fn touch_ctime(conn: &Connection, inos: &[u64], now: i64) -> Result<()> {
    let mut st = conn.prepare_cached("UPDATE inodes SET ctime_ns = ?2 WHERE ino = ?1")?;
    for ino in inos {
        st.execute(params![*ino as i64, now])?;
    }
    Ok(())
}

/// Up to `limit` entries of `dir` after `after` (by name), with each entry's inode: one readdir(plus) page.
/// Keyset pagination keeps a 100k-entry listing linear.
pub fn dir_page(
    conn: &Connection,
    dir: u64,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<(DirEntry, Inode)>> {
    let cols = INODE_COLS
        .split(", ")
        .map(|c| format!("i.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {cols}, d.name FROM dirents d JOIN inodes i ON i.ino = d.ino
         WHERE d.parent = ?1 AND d.name > ?2 ORDER BY d.name LIMIT ?3"
    );
    let mut st = conn.prepare_cached(&sql)?;
    // An empty blob sorts before every name, so it stands for "from the start".
    let after = after.unwrap_or(&[]);
    let mut rows = st.query(params![dir as i64, after, limit as i64])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let inode = inode_from_row(r)?;
        let name: Vec<u8> = r.get(12)?;
        out.push((
            DirEntry {
                name,
                ino: inode.ino,
                kind: inode.kind,
            },
            inode,
        ));
    }
    Ok(out)
}

/// Inodes with no names left: unlinked while open, or stranded by a crash. The mount deletes them at start.
pub fn orphan_inodes(conn: &Connection) -> Result<Vec<u64>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {INODE_COLS} FROM inodes WHERE nlink = 0 AND ino != 1"
    ))?;
    let rows = st.query_map([], inode_from_row)?;
    Ok(rows
        .map(|r| r.map(|i| i.ino))
        .collect::<rusqlite::Result<_>>()?)
}

/// Inodes and how many directory entries name them, for fsck: (inode, entries, subdirectories).
pub fn link_census(conn: &Connection) -> Result<Vec<(Inode, u32, u32)>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {INODE_COLS},
            (SELECT COUNT(*) FROM dirents d WHERE d.ino = inodes.ino),
            (SELECT COUNT(*) FROM dirents d JOIN inodes c ON c.ino = d.ino
               WHERE d.parent = inodes.ino AND c.kind = 2)
         FROM inodes WHERE ino != 0"
    ))?;
    let rows = st.query_map([], |r| {
        Ok((
            inode_from_row(r)?,
            r.get::<_, u32>(12)?,
            r.get::<_, u32>(13)?,
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Sets an inode's link count (fsck --repair).
pub fn set_nlink(conn: &Connection, ino: u64, nlink: u32) -> Result<()> {
    conn.prepare_cached("UPDATE inodes SET nlink = ?2 WHERE ino = ?1")?
        .execute(params![ino as i64, nlink])?;
    Ok(())
}

// Extended attributes. Only the `user.` namespace is stored; the mount refuses the others before calling these.

pub fn get_xattr(conn: &Connection, ino: u64, name: &[u8]) -> Result<Option<Vec<u8>>> {
    Ok(conn
        .prepare_cached("SELECT value FROM xattrs WHERE ino = ?1 AND name = ?2")?
        .query_row(params![ino as i64, name], |r| r.get(0))
        .optional()?)
}

/// XATTR_CREATE / XATTR_REPLACE semantics: `create` fails if present, `replace` if absent.
pub fn set_xattr(
    conn: &Connection,
    ino: u64,
    name: &[u8],
    value: &[u8],
    create: bool,
    replace: bool,
) -> Result<()> {
    inode(conn, ino)?;
    let exists = get_xattr(conn, ino, name)?.is_some();
    if create && exists {
        return Err(QsfsError::Exists(display(name)));
    }
    if replace && !exists {
        return Err(QsfsError::NoAttribute(display(name)));
    }
    conn.prepare_cached(
        "INSERT INTO xattrs (ino, name, value) VALUES (?1, ?2, ?3)
         ON CONFLICT(ino, name) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![ino as i64, name, value])?;
    touch_ctime(conn, &[ino], now_ns())
}

pub fn list_xattrs(conn: &Connection, ino: u64) -> Result<Vec<Vec<u8>>> {
    let mut st = conn.prepare_cached("SELECT name FROM xattrs WHERE ino = ?1 ORDER BY name")?;
    let rows = st.query_map([ino as i64], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn remove_xattr(conn: &Connection, ino: u64, name: &[u8]) -> Result<()> {
    let n = conn
        .prepare_cached("DELETE FROM xattrs WHERE ino = ?1 AND name = ?2")?
        .execute(params![ino as i64, name])?;
    if n == 0 {
        return Err(QsfsError::NoAttribute(display(name)));
    }
    touch_ctime(conn, &[ino], now_ns())
}
