//! The upload queue of `qsfs mount --writeback`: one row per segment whose plaintext is durable in a local file
//! under `VOLUME/cache/queue/` and whose inode size is already committed. The uploader encodes and places each
//! one and, in the transaction that records the segment, deletes the row. Rows die with their inode (ON DELETE
//! CASCADE); their files are then leftovers that the mount and `fsck` sweep.

use rusqlite::{Connection, params};

use super::now_ns;
use crate::error::Result;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedSegment {
    pub id: i64,
    pub ino: u64,
    pub index: u64,
    pub plain_len: u64,
    /// File name inside the queue directory.
    pub file: String,
}

pub fn enqueue(conn: &Connection, ino: u64, index: u64, plain_len: u64, file: &str) -> Result<i64> {
    conn.prepare_cached(
        "INSERT INTO upload_queue (ino, idx, plain_len, file, since_ns) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![ino as i64, index as i64, plain_len as i64, file, now_ns()])?;
    Ok(conn.last_insert_rowid())
}

/// Removes a row; true if it was still there (a truncate or unlink may have removed it first).
pub fn dequeue(conn: &Connection, id: i64) -> Result<bool> {
    Ok(conn
        .prepare_cached("DELETE FROM upload_queue WHERE id = ?1")?
        .execute([id])?
        > 0)
}

fn queued_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<QueuedSegment> {
    Ok(QueuedSegment {
        id: r.get(0)?,
        ino: r.get::<_, i64>(1)? as u64,
        index: r.get::<_, i64>(2)? as u64,
        plain_len: r.get::<_, i64>(3)? as u64,
        file: r.get(4)?,
    })
}

/// Every queued segment, oldest first (the order they must be applied in).
pub fn queued_segments(conn: &Connection) -> Result<Vec<QueuedSegment>> {
    let mut st =
        conn.prepare_cached("SELECT id, ino, idx, plain_len, file FROM upload_queue ORDER BY id")?;
    let rows = st.query_map([], queued_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Drops the queued segments of `ino` at index >= `from`; returns them so their files can be removed.
pub fn drop_queued_from(conn: &Connection, ino: u64, from: u64) -> Result<Vec<QueuedSegment>> {
    let gone: Vec<QueuedSegment> = {
        let mut st = conn.prepare_cached(
            "SELECT id, ino, idx, plain_len, file FROM upload_queue WHERE ino = ?1 AND idx >= ?2",
        )?;
        let rows = st.query_map(params![ino as i64, from as i64], queued_from_row)?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    conn.prepare_cached("DELETE FROM upload_queue WHERE ino = ?1 AND idx >= ?2")?
        .execute(params![ino as i64, from as i64])?;
    Ok(gone)
}

pub fn queue_len(conn: &Connection) -> Result<u64> {
    Ok(
        conn.query_row("SELECT COUNT(*) FROM upload_queue", [], |r| {
            r.get::<_, i64>(0)
        })? as u64,
    )
}

/// Records placed shards that no row will reference (a sealed segment whose commit was superseded or cancelled)
/// as garbage, so `collect_garbage` deletes them from their stores.
pub fn add_garbage(conn: &Connection, shards: &[super::ShardRow]) -> Result<()> {
    let mut st = conn
        .prepare_cached("INSERT INTO garbage (store_id, locator, since_ns) VALUES (?1, ?2, ?3)")?;
    for s in shards {
        if let (Some(store), Some(loc)) = (s.store_id, &s.locator) {
            st.execute(params![store, loc, now_ns()])?;
        }
    }
    Ok(())
}
