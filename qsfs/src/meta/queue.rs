//! The upload queue of `qsfs mount --writeback`: one row per segment whose plaintext is durable locally — in a
//! file under `VOLUME/cache/queue/`, or, for a small segment, in the row itself (`data`) — and whose inode size
//! is already committed. The uploader encodes and places each
//! one and, in the transaction that records the segment, deletes the row. Rows die with their inode (ON DELETE
//! CASCADE); their files are then leftovers that the mount and `fsck` sweep.

use rusqlite::{Connection, OptionalExtension, params};

use super::now_ns;
use crate::error::Result;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedSegment {
    pub id: i64,
    pub ino: u64,
    pub index: u64,
    pub plain_len: u64,
    /// File name inside the queue directory (empty for an inline segment).
    pub file: String,
    /// The bytes are in the row (read them with [`queued_data`]), not in a file.
    pub inline: bool,
}

pub fn enqueue(conn: &Connection, ino: u64, index: u64, plain_len: u64, file: &str) -> Result<i64> {
    conn.prepare_cached(
        "INSERT INTO upload_queue (ino, idx, plain_len, file, since_ns) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![ino as i64, index as i64, plain_len as i64, file, now_ns()])?;
    Ok(conn.last_insert_rowid())
}

/// Queues a small segment with its bytes in the row itself.
pub fn enqueue_inline(conn: &Connection, ino: u64, index: u64, data: &[u8]) -> Result<i64> {
    conn.prepare_cached(
        "INSERT INTO upload_queue (ino, idx, plain_len, file, since_ns, data) VALUES (?1, ?2, ?3, '', ?4, ?5)",
    )?
    .execute(params![ino as i64, index as i64, data.len() as i64, now_ns(), data])?;
    Ok(conn.last_insert_rowid())
}

/// The bytes of inline queued segment `id` (None if the row is gone or keeps its bytes in a file).
pub fn queued_data(conn: &Connection, id: i64) -> Result<Option<Vec<u8>>> {
    Ok(conn
        .prepare_cached("SELECT data FROM upload_queue WHERE id = ?1")?
        .query_row([id], |r| r.get::<_, Option<Vec<u8>>>(0))
        .optional()?
        .flatten())
}

/// Whether queued segment `id` keeps its plaintext in its row.
pub fn is_inline(conn: &Connection, id: i64) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT data IS NOT NULL FROM upload_queue WHERE id = ?1")?
        .query_row([id], |r| r.get::<_, bool>(0))
        .optional()?
        .unwrap_or(false))
}

/// Whether any queued segment keeps its plaintext in its row.
pub fn any_inline(conn: &Connection) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM upload_queue WHERE data IS NOT NULL)")?
        .query_row([], |r| r.get::<_, bool>(0))?)
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
        inline: r.get(5)?,
    })
}

/// Every queued segment, oldest first (the order they must be applied in).
pub fn queued_segments(conn: &Connection) -> Result<Vec<QueuedSegment>> {
    let mut st = conn.prepare_cached(
        "SELECT id, ino, idx, plain_len, file, data IS NOT NULL FROM upload_queue ORDER BY id",
    )?;
    let rows = st.query_map([], queued_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Drops the queued segments of `ino` at index >= `from`; returns them so their files can be removed.
pub fn drop_queued_from(conn: &Connection, ino: u64, from: u64) -> Result<Vec<QueuedSegment>> {
    let gone: Vec<QueuedSegment> = {
        let mut st = conn.prepare_cached(
            "SELECT id, ino, idx, plain_len, file, data IS NOT NULL FROM upload_queue WHERE ino = ?1 AND idx >= ?2",
        )?;
        let rows = st.query_map(params![ino as i64, from as i64], queued_from_row)?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    conn.prepare_cached("DELETE FROM upload_queue WHERE ino = ?1 AND idx >= ?2")?
        .execute(params![ino as i64, from as i64])?;
    Ok(gone)
}

/// The upload queue at a glance: segments, plaintext bytes, and when the oldest was queued (ns since the epoch).
pub fn queue_summary(conn: &Connection) -> Result<(u64, u64, Option<i64>)> {
    Ok(conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(plain_len), 0), MIN(since_ns) FROM upload_queue",
        [],
        |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u64,
                r.get(2)?,
            ))
        },
    )?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{MetaStore, NewInode, ROOT_INO, create_node, ensure_root};

    #[test]
    fn inline_and_file_rows_round_trip_and_die_with_their_inode() {
        let dir = tempfile::tempdir().unwrap();
        let m = MetaStore::open(&dir.path().join("meta.db"), true).unwrap();
        let (ino, file_id, inline_id) = m
            .write(|c| {
                ensure_root(c, 0, 0)?;
                let ino = create_node(c, ROOT_INO, b"f", &NewInode::test_file())?.ino;
                let file_id = enqueue(c, ino, 0, 70_000, "q-1")?;
                let inline_id = enqueue_inline(c, ino, 1, b"small bytes")?;
                Ok((ino, file_id, inline_id))
            })
            .unwrap();
        let rows = m.read(queued_segments).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].id, rows[0].inline, rows[0].file.as_str()),
            (file_id, false, "q-1")
        );
        assert_eq!(
            (rows[1].id, rows[1].inline, rows[1].plain_len),
            (inline_id, true, 11)
        );
        assert_eq!(
            m.read(|c| queued_data(c, inline_id)).unwrap().as_deref(),
            Some(&b"small bytes"[..])
        );
        assert_eq!(m.read(|c| queued_data(c, file_id)).unwrap(), None);
        let dropped = m.write(|c| drop_queued_from(c, ino, 1)).unwrap();
        assert_eq!(dropped.len(), 1);
        assert!(dropped[0].inline);
        assert_eq!(m.read(|c| queued_data(c, inline_id)).unwrap(), None);
        assert_eq!(m.read(queue_len).unwrap(), 1);
    }
}
