//! Namespace rows: inodes and directory entries. Functions take a `&Connection` that is inside a `MetaStore`
//! transaction, so callers compose several of them into one atomic change.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{data, now_ns};
use crate::error::{QsfsError, Result};

pub const ROOT_INO: u64 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    File = 1,
    Dir = 2,
    Symlink = 3,
    Fifo = 4,
    CharDevice = 5,
    BlockDevice = 6,
    Socket = 7,
}

impl FileKind {
    fn from_i64(v: i64) -> rusqlite::Result<FileKind> {
        Ok(match v {
            1 => FileKind::File,
            2 => FileKind::Dir,
            3 => FileKind::Symlink,
            4 => FileKind::Fifo,
            5 => FileKind::CharDevice,
            6 => FileKind::BlockDevice,
            7 => FileKind::Socket,
            _ => return Err(rusqlite::Error::IntegralValueOutOfRange(1, v)),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub ino: u64,
    pub kind: FileKind,
    /// Permission bits (07777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub rdev: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub crtime_ns: i64,
}

#[derive(Clone, Debug)]
pub struct NewInode {
    pub kind: FileKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    /// Symlink target.
    pub target: Option<Vec<u8>>,
}

impl NewInode {
    /// A root-owned regular file, mode 0644: what most tests and the metadata bench create.
    pub fn test_file() -> NewInode {
        NewInode {
            kind: FileKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            target: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    pub kind: FileKind,
}

pub(super) const INODE_COLS: &str =
    "ino, kind, mode, uid, gid, size, nlink, rdev, atime_ns, mtime_ns, ctime_ns, crtime_ns";

pub(super) fn inode_from_row(r: &Row<'_>) -> rusqlite::Result<Inode> {
    Ok(Inode {
        ino: r.get::<_, i64>(0)? as u64,
        kind: FileKind::from_i64(r.get(1)?)?,
        mode: r.get(2)?,
        uid: r.get(3)?,
        gid: r.get(4)?,
        size: r.get::<_, i64>(5)? as u64,
        nlink: r.get(6)?,
        rdev: r.get(7)?,
        atime_ns: r.get(8)?,
        mtime_ns: r.get(9)?,
        ctime_ns: r.get(10)?,
        crtime_ns: r.get(11)?,
    })
}

/// Creates the root directory on a new volume (idempotent).
pub fn ensure_root(conn: &Connection, uid: u32, gid: u32) -> Result<()> {
    let now = now_ns();
    conn.execute(
        "INSERT OR IGNORE INTO inodes (ino, kind, mode, uid, gid, nlink, atime_ns, mtime_ns, ctime_ns, crtime_ns)
         VALUES (?1, ?2, ?3, ?4, ?5, 2, ?6, ?6, ?6, ?6)",
        params![ROOT_INO as i64, FileKind::Dir as i64, 0o755, uid, gid, now],
    )?;
    Ok(())
}

pub fn get_inode(conn: &Connection, ino: u64) -> Result<Option<Inode>> {
    let mut st = conn.prepare_cached(&format!("SELECT {INODE_COLS} FROM inodes WHERE ino = ?1"))?;
    Ok(st.query_row([ino as i64], inode_from_row).optional()?)
}

pub fn lookup(conn: &Connection, parent: u64, name: &[u8]) -> Result<Option<u64>> {
    let mut st = conn.prepare_cached("SELECT ino FROM dirents WHERE parent = ?1 AND name = ?2")?;
    Ok(st
        .query_row(params![parent as i64, name], |r| r.get::<_, i64>(0))
        .optional()?
        .map(|i| i as u64))
}

/// Inserts an inode with no links yet; `link` gives it a name.
pub fn create_inode(conn: &Connection, new: &NewInode) -> Result<u64> {
    insert_inode(conn, new, 0, now_ns())
}

/// Inserts `new` with `nlink` links and every time `now`; returns its inode number.
pub(super) fn insert_inode(conn: &Connection, new: &NewInode, nlink: u32, now: i64) -> Result<u64> {
    let size = new.target.as_ref().map_or(0, |t| t.len() as i64);
    let mut st = conn.prepare_cached(
        "INSERT INTO inodes (kind, mode, uid, gid, size, nlink, rdev, atime_ns, mtime_ns, ctime_ns, crtime_ns, target)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?8, ?8, ?9)",
    )?;
    st.execute(params![
        new.kind as i64,
        new.mode & 0o7777,
        new.uid,
        new.gid,
        size,
        nlink,
        new.rdev,
        now,
        new.target
    ])?;
    Ok(conn.last_insert_rowid() as u64)
}

/// Adds the entry `parent/name -> ino`, counting the link (and a subdirectory's `..` in the parent).
pub fn link(conn: &Connection, parent: u64, name: &[u8], ino: u64) -> Result<()> {
    let child = get_inode(conn, ino)?.ok_or_else(|| QsfsError::NotFound(format!("inode {ino}")))?;
    conn.prepare_cached("INSERT INTO dirents (parent, name, ino) VALUES (?1, ?2, ?3)")?
        .execute(params![parent as i64, name, ino as i64])?;
    let now = now_ns();
    let links = if child.kind == FileKind::Dir { 2 } else { 1 };
    conn.prepare_cached("UPDATE inodes SET nlink = nlink + ?2, ctime_ns = ?3 WHERE ino = ?1")?
        .execute(params![ino as i64, links, now])?;
    let parent_links = if child.kind == FileKind::Dir { 1 } else { 0 };
    conn.prepare_cached(
        "UPDATE inodes SET nlink = nlink + ?2, mtime_ns = ?3, ctime_ns = ?3 WHERE ino = ?1",
    )?
    .execute(params![parent as i64, parent_links, now])?;
    Ok(())
}

/// Removes the entry `parent/name`; an inode whose last link goes is deleted and its data becomes garbage.
/// Returns the inode that was unlinked. Refuses a non-empty directory.
pub fn unlink(conn: &Connection, parent: u64, name: &[u8]) -> Result<u64> {
    let display = String::from_utf8_lossy(name).into_owned();
    let ino = lookup(conn, parent, name)?.ok_or_else(|| QsfsError::NotFound(display.clone()))?;
    let inode = get_inode(conn, ino)?.ok_or_else(|| QsfsError::NotFound(display.clone()))?;
    if inode.kind == FileKind::Dir && !list_dir(conn, ino)?.is_empty() {
        return Err(QsfsError::NotEmpty(display));
    }
    conn.prepare_cached("DELETE FROM dirents WHERE parent = ?1 AND name = ?2")?
        .execute(params![parent as i64, name])?;
    let now = now_ns();
    let (links, parent_links) = if inode.kind == FileKind::Dir {
        (2, 1)
    } else {
        (1, 0)
    };
    conn.prepare_cached(
        "UPDATE inodes SET nlink = nlink - ?2, mtime_ns = ?3, ctime_ns = ?3 WHERE ino = ?1",
    )?
    .execute(params![parent as i64, parent_links, now])?;
    conn.prepare_cached(
        "UPDATE inodes SET nlink = MAX(nlink - ?2, 0), ctime_ns = ?3 WHERE ino = ?1",
    )?
    .execute(params![ino as i64, links, now])?;
    if inode.nlink <= links {
        delete_inode_if_unreferenced(conn, ino)?;
    }
    Ok(ino)
}

/// Deletes an inode that has no links left, turning its segments into garbage. The FUSE layer calls this when the
/// last open handle of an unlinked file closes.
pub fn delete_inode_if_unreferenced(conn: &Connection, ino: u64) -> Result<bool> {
    let nlink: Option<i64> = conn
        .query_row(
            "SELECT nlink FROM inodes WHERE ino = ?1",
            [ino as i64],
            |r| r.get(0),
        )
        .optional()?;
    if nlink != Some(0) {
        return Ok(false);
    }
    data::drop_segments_from(conn, ino, 0)?;
    conn.prepare_cached("DELETE FROM inodes WHERE ino = ?1")?
        .execute([ino as i64])?;
    Ok(true)
}

pub fn list_dir(conn: &Connection, dir: u64) -> Result<Vec<DirEntry>> {
    let mut st = conn.prepare_cached(
        "SELECT d.name, d.ino, i.kind FROM dirents d JOIN inodes i ON i.ino = d.ino WHERE d.parent = ?1 ORDER BY d.name",
    )?;
    let rows = st.query_map([dir as i64], |r| {
        Ok(DirEntry {
            name: r.get(0)?,
            ino: r.get::<_, i64>(1)? as u64,
            kind: FileKind::from_i64(r.get(2)?)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn read_link(conn: &Connection, ino: u64) -> Result<Option<Vec<u8>>> {
    Ok(conn
        .prepare_cached("SELECT target FROM inodes WHERE ino = ?1")?
        .query_row([ino as i64], |r| r.get::<_, Option<Vec<u8>>>(0))
        .optional()?
        .flatten())
}

pub fn set_size(conn: &Connection, ino: u64, size: u64, mtime_ns: i64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE inodes SET size = ?2, mtime_ns = ?3, ctime_ns = ?3 WHERE ino = ?1",
    )?
    .execute(params![ino as i64, size as i64, mtime_ns])?;
    Ok(())
}

/// Sets the permission bits and times copied from a source file (`qsfs put` keeps them, like `cp -p`).
pub fn set_mode_times(
    conn: &Connection,
    ino: u64,
    mode: u32,
    atime_ns: i64,
    mtime_ns: i64,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE inodes SET mode = ?2, atime_ns = ?3, mtime_ns = ?4 WHERE ino = ?1",
    )?
    .execute(params![ino as i64, mode & 0o7777, atime_ns, mtime_ns])?;
    Ok(())
}

/// Splits `/a/b/c` into components, refusing `.` and `..` so a path always names one place.
pub fn path_components(path: &str) -> Result<Vec<&str>> {
    let mut out = Vec::new();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        if c == "." || c == ".." {
            return Err(QsfsError::Invalid(format!(
                "{path}: `.` and `..` are not allowed in volume paths"
            )));
        }
        out.push(c);
    }
    Ok(out)
}

/// Resolves an absolute volume path to an inode (symlinks are not followed).
pub fn resolve(conn: &Connection, path: &str) -> Result<Option<u64>> {
    let mut ino = ROOT_INO;
    for c in path_components(path)? {
        match get_inode(conn, ino)? {
            Some(i) if i.kind == FileKind::Dir => {}
            Some(_) => return Err(QsfsError::NotADirectory(path.to_string())),
            None => return Ok(None),
        }
        match lookup(conn, ino, c.as_bytes())? {
            Some(next) => ino = next,
            None => return Ok(None),
        }
    }
    Ok(Some(ino))
}

/// Totals for `status`: (regular files, directories other than the root, logical bytes).
pub fn namespace_totals(conn: &Connection) -> Result<(u64, u64, u64)> {
    Ok(conn.query_row(
        "SELECT COALESCE(SUM(kind = 1), 0), COALESCE(SUM(kind = 2 AND ino != 1), 0),
                COALESCE(SUM(CASE WHEN kind = 1 THEN size ELSE 0 END), 0) FROM inodes WHERE ino != 0",
        [],
        |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
            ))
        },
    )?)
}
