//! The queries `fsck` (and statfs, status) ask of the metadata: consistency checks and the few repairs that touch
//! rows directly. Kept here so that no SQL lives outside `meta`.

use rusqlite::{Connection, params};

use crate::error::Result;

/// A directory entry that points nowhere or hangs from something that is not a directory.
pub struct BadEntry {
    pub parent: i64,
    pub name: Vec<u8>,
    pub ino: i64,
    pub why: String,
}

pub fn bad_entries(c: &Connection) -> Result<Vec<BadEntry>> {
    let mut st = c.prepare(
        "SELECT d.parent, d.name, d.ino,
                CASE WHEN i.ino IS NULL THEN 'names a missing inode'
                     WHEN p.ino IS NULL THEN 'is in a missing directory'
                     ELSE 'is in a non-directory' END
         FROM dirents d LEFT JOIN inodes i ON i.ino = d.ino LEFT JOIN inodes p ON p.ino = d.parent
         WHERE i.ino IS NULL OR p.ino IS NULL OR p.kind != 2",
    )?;
    let rows = st.query_map([], |x| {
        Ok(BadEntry {
            parent: x.get(0)?,
            name: x.get(1)?,
            ino: x.get(2)?,
            why: x.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Removes one directory entry, whatever it points at.
pub fn delete_entry(c: &Connection, parent: i64, name: &[u8]) -> Result<()> {
    c.execute(
        "DELETE FROM dirents WHERE parent = ?1 AND name = ?2",
        params![parent, name],
    )?;
    Ok(())
}

/// Sets a nameless inode's link count to 0 before it is linked somewhere (lost+found) again.
pub fn clear_nlink(c: &Connection, ino: u64) -> Result<()> {
    c.execute("UPDATE inodes SET nlink = 0 WHERE ino = ?1", [ino as i64])?;
    Ok(())
}

/// The root's expected link count: 2 + its subdirectories.
pub fn root_links_wanted(c: &Connection) -> Result<u32> {
    Ok(c.query_row(
        "SELECT 2 + COUNT(*) FROM dirents d JOIN inodes i ON i.ino = d.ino WHERE d.parent = 1 AND i.kind = 2",
        [],
        |x| x.get(0),
    )?)
}

/// (inode, index) of segments whose inode is gone or not a regular file.
pub fn stray_segments(c: &Connection) -> Result<Vec<(i64, i64)>> {
    let mut st = c.prepare(
        "SELECT s.ino, s.idx FROM segments s LEFT JOIN inodes i ON i.ino = s.ino
         WHERE i.ino IS NULL OR i.kind != 1",
    )?;
    let rows = st.query_map([], |x| Ok((x.get(0)?, x.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// (inode, size) of every regular file (not the pack holder, whose segments are packs).
pub fn file_sizes(c: &Connection) -> Result<Vec<(u64, u64)>> {
    let mut st = c.prepare("SELECT ino, size FROM inodes WHERE kind = 1 AND ino != 0")?;
    let rows = st.query_map([], |x| {
        Ok((x.get::<_, i64>(0)? as u64, x.get::<_, i64>(1)? as u64))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// One shard that metadata records as good: (segment, index, store, locator, inode).
pub type RecordedShard = (u64, usize, u32, Vec<u8>, u64);

pub fn good_shards(c: &Connection) -> Result<Vec<RecordedShard>> {
    let mut st = c.prepare(
        "SELECT sh.segment_id, sh.idx, sh.store_id, sh.locator, s.ino FROM shards sh
         JOIN segments s ON s.id = sh.segment_id
         WHERE sh.state = 0 AND sh.store_id IS NOT NULL AND sh.locator IS NOT NULL",
    )?;
    let rows = st.query_map([], |x| {
        Ok((
            x.get::<_, i64>(0)? as u64,
            x.get::<_, i64>(1)? as usize,
            x.get(2)?,
            x.get(3)?,
            x.get::<_, i64>(4)? as u64,
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn inode_count(c: &Connection) -> Result<u64> {
    Ok(
        c.query_row("SELECT COUNT(*) FROM inodes WHERE ino != 0", [], |r| {
            r.get::<_, i64>(0)
        })? as u64,
    )
}

/// Committed transactions whose changes are not yet shipped to the stores' metadata log.
pub fn pending_log_entries(c: &Connection) -> Result<u64> {
    Ok(
        c.query_row("SELECT COUNT(*) FROM meta_log_pending", [], |r| {
            r.get::<_, i64>(0)
        })? as u64,
    )
}
