//! Pack segments in metadata. A pack is one segment carrying the bytes of many small file segments (small files
//! and the tails of larger ones, uploaded together), so that storing them costs one set of K+M shard writes
//! instead of one per file. A pack is a `segments` row of the hidden pack holder inode ([`PACK_HOLDER`], which no
//! directory entry names), with the pack's id as its index; its shards are audited and repaired like any other
//! segment's. A packed file segment is a `segments` row without shards that names its pack (`pack_id`) and where
//! its bytes start in the pack's plaintext (`pack_off`).
//!
//! Overwrites and deletes leave dead bytes in packs. A pack with no member left is dropped whole, by the
//! transaction that removed its last member ([`drop_packs_if_dead`]; its shards become garbage there); one whose live share fell below a
//! threshold is compacted by the volume: its live members are copied into a new pack and moved there
//! ([`move_member`]), which leaves the old pack dead.

use rusqlite::{Connection, OptionalExtension, params};

use super::data::{SEGMENT_COLS, segment_from_row};
use super::{SegmentRecord, now_ns};
use crate::error::{QsfsError, Result};

/// The inode that owns every pack segment. Inode numbers start at 1 (the root), and the kernel never sees 0.
pub const PACK_HOLDER: u64 = 0;

/// Creates the pack holder inode if this volume has none yet (in the transaction of the first pack, so the
/// metadata log carries it to a restore).
fn ensure_pack_holder(conn: &Connection) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO inodes (ino, kind, mode, uid, gid, size, nlink, atime_ns, mtime_ns, ctime_ns, crtime_ns)
         VALUES (0, 1, 32768, 0, 0, 0, 1, 0, 0, 0, 0)",
    )?
    .execute([])?;
    Ok(())
}

/// Records a placed pack (its `ino` must be [`PACK_HOLDER`] and its index its id). Its members are recorded by
/// the caller, in the same transaction, with `put_segment`.
pub fn put_pack(conn: &Connection, rec: &SegmentRecord) -> Result<()> {
    ensure_pack_holder(conn)?;
    super::put_segment(conn, PACK_HOLDER, rec)
}

/// The pack segment `id`.
pub fn pack_record(conn: &Connection, id: u64) -> Result<SegmentRecord> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {SEGMENT_COLS} FROM segments WHERE id = ?1 AND ino = 0"
    ))?;
    let mut rows = st.query([id as i64])?;
    match rows.next()? {
        Some(r) => segment_from_row(conn, r),
        None => Err(QsfsError::CorruptSegment {
            segment: id,
            reason: "a file segment names a pack that metadata does not hold".into(),
        }),
    }
}

/// A pack no file segment lives in any more.
const DEAD_PACK: &str =
    "s.ino = 0 AND NOT EXISTS (SELECT 1 FROM segments f WHERE f.pack_id = s.id)";

/// Drops every pack no file segment lives in any more; their shards become garbage. Returns how many. This scans
/// every pack: the commits that empty a pack drop it themselves ([`drop_packs_if_dead`]), so this is `gc`'s sweep.
pub fn drop_dead_packs(conn: &Connection) -> Result<usize> {
    conn.prepare_cached(&format!(
        "INSERT INTO garbage (store_id, locator, since_ns)
         SELECT sh.store_id, sh.locator, ?1 FROM shards sh JOIN segments s ON s.id = sh.segment_id
         WHERE {DEAD_PACK} AND sh.store_id IS NOT NULL AND sh.locator IS NOT NULL"
    ))?
    .execute([now_ns()])?;
    Ok(conn
        .prepare_cached(&format!("DELETE FROM segments AS s WHERE {DEAD_PACK}"))?
        .execute([])?)
}

/// Drops those of `packs` that no file segment lives in any more (their shards become garbage): what a commit that
/// moved or dropped members of these packs calls, so an emptied pack goes in the transaction that emptied it.
pub fn drop_packs_if_dead(conn: &Connection, packs: &[u64]) -> Result<()> {
    let mut garbage = conn.prepare_cached(&format!(
        "INSERT INTO garbage (store_id, locator, since_ns)
         SELECT sh.store_id, sh.locator, ?1 FROM shards sh JOIN segments s ON s.id = sh.segment_id
         WHERE s.id = ?2 AND {DEAD_PACK} AND sh.store_id IS NOT NULL AND sh.locator IS NOT NULL"
    ))?;
    let mut delete = conn.prepare_cached(&format!(
        "DELETE FROM segments AS s WHERE s.id = ?1 AND {DEAD_PACK}"
    ))?;
    for &id in packs {
        garbage.execute(params![now_ns(), id as i64])?;
        delete.execute([id as i64])?;
    }
    Ok(())
}

/// A pack's size and how much of it is still some file's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackUse {
    pub id: u64,
    pub plain_len: u64,
    pub live: u64,
    pub members: u64,
}

/// Every pack with its live bytes, emptiest first.
pub fn pack_usage(conn: &Connection) -> Result<Vec<PackUse>> {
    let mut st = conn.prepare_cached(
        "SELECT p.id, p.plain_len, COALESCE(SUM(f.plain_len), 0), COUNT(f.id)
         FROM segments p LEFT JOIN segments f ON f.pack_id = p.id
         WHERE p.ino = 0 GROUP BY p.id ORDER BY 3 * 1.0 / MAX(p.plain_len, 1), p.id",
    )?;
    let rows = st.query_map([], |r| {
        Ok(PackUse {
            id: r.get::<_, i64>(0)? as u64,
            plain_len: r.get::<_, i64>(1)? as u64,
            live: r.get::<_, i64>(2)? as u64,
            members: r.get::<_, i64>(3)? as u64,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// One file segment living in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackMember {
    /// The file segment's own row id.
    pub id: u64,
    pub ino: u64,
    pub index: u64,
    pub offset: u64,
    pub len: u64,
}

pub fn pack_members(conn: &Connection, pack_id: u64) -> Result<Vec<PackMember>> {
    let mut st = conn.prepare_cached(
        "SELECT id, ino, idx, pack_off, plain_len FROM segments WHERE pack_id = ?1 ORDER BY pack_off",
    )?;
    let rows = st.query_map([pack_id as i64], |r| {
        Ok(PackMember {
            id: r.get::<_, i64>(0)? as u64,
            ino: r.get::<_, i64>(1)? as u64,
            index: r.get::<_, i64>(2)? as u64,
            offset: r.get::<_, i64>(3)? as u64,
            len: r.get::<_, i64>(4)? as u64,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Moves `member` from pack `from` to offset `offset` of pack `to`, unless the file segment changed since it was
/// read (rewritten, truncated or deleted meanwhile: then its old bytes are simply dead). True if moved.
pub fn move_member(
    conn: &Connection,
    member: &PackMember,
    from: u64,
    to: u64,
    offset: u64,
) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "UPDATE segments SET pack_id = ?1, pack_off = ?2
             WHERE id = ?3 AND pack_id = ?4 AND pack_off = ?5 AND plain_len = ?6",
        )?
        .execute(params![
            to as i64,
            offset as i64,
            member.id as i64,
            from as i64,
            member.offset as i64,
            member.len as i64
        ])?
        > 0)
}

/// Whether segment `id` is a pack.
pub fn is_pack(conn: &Connection, id: u64) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM segments WHERE id = ?1 AND ino = 0")?
        .query_row([id as i64], |_| Ok(()))
        .optional()?
        .is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::SegmentInfo;
    use crate::meta::{
        MetaStore, NewInode, PackSlice, ROOT_INO, ShardRow, ShardState, create_node,
        drop_segments_from, ensure_root, garbage_count, put_segment, sync_store,
    };

    fn info(plain_len: u64) -> SegmentInfo {
        SegmentInfo {
            plain_len,
            stored_len: 0,
            shard_len: 0,
            nonce: [0; 24],
            flags: 0,
            roots: Vec::new(),
        }
    }

    fn file(m: &MetaStore, name: &[u8]) -> u64 {
        m.write(|c| Ok(create_node(c, ROOT_INO, name, &NewInode::test_file())?.ino))
            .unwrap()
    }

    #[test]
    fn the_commit_that_removes_a_packs_last_member_drops_the_pack() {
        let dir = tempfile::tempdir().unwrap();
        let m = MetaStore::open(&dir.path().join("meta.db"), true).unwrap();
        m.write(|c| {
            ensure_root(c, 0, 0)?;
            sync_store(c, 0, "dir:///s0")
        })
        .unwrap();
        let (a, b) = (file(&m, b"a"), file(&m, b"b"));
        let pack = SegmentRecord {
            id: 77,
            ino: PACK_HOLDER,
            index: 77,
            info: info(200),
            shards: vec![ShardRow {
                index: 0,
                store_id: Some(0),
                locator: Some(b"pack-77".to_vec()),
                blob_len: 100,
                root: [0; 32],
                state: ShardState::Ok,
            }],
            pack: None,
        };
        let member = |id: u64, ino: u64, offset: u64| SegmentRecord {
            id,
            ino,
            index: 0,
            info: info(100),
            shards: Vec::new(),
            pack: Some(PackSlice {
                offset,
                record: Box::new(pack.clone()),
            }),
        };
        m.write(|c| {
            put_pack(c, &pack)?;
            put_segment(c, a, &member(1, a, 0))?;
            put_segment(c, b, &member(2, b, 100))
        })
        .unwrap();
        let packs = || m.read(pack_usage).unwrap();

        m.write(|c| drop_segments_from(c, a, 0)).unwrap();
        assert_eq!(packs().len(), 1, "one member is left");
        assert_eq!(m.read(garbage_count).unwrap(), 0);
        // Rewriting b's only segment in place of its packed one empties the pack.
        let own = SegmentRecord {
            id: 3,
            pack: None,
            ..member(3, b, 0)
        };
        m.write(|c| put_segment(c, b, &own)).unwrap();
        assert!(packs().is_empty(), "the emptied pack is dropped");
        assert_eq!(m.read(garbage_count).unwrap(), 1, "its shard is garbage");
        assert_eq!(m.write(drop_dead_packs).unwrap(), 0, "no sweep needed");

        // Two versions of one file segment gathered into one pack: the second replaces the first in the pack's
        // own transaction, which must not take the pack for dead in between.
        let new_pack = SegmentRecord {
            id: 78,
            index: 78,
            ..pack.clone()
        };
        let version = |id: u64, offset: u64| SegmentRecord {
            pack: Some(PackSlice {
                offset,
                record: Box::new(new_pack.clone()),
            }),
            ..member(id, a, offset)
        };
        m.write(|c| {
            put_pack(c, &new_pack)?;
            put_segment(c, a, &version(4, 0))?;
            put_segment(c, a, &version(5, 100))
        })
        .unwrap();
        let left = packs();
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!((left[0].id, left[0].members), (78, 1), "{left:?}");
        let rec = m
            .read(|c| crate::meta::segment_at(c, a, 0))
            .unwrap()
            .unwrap();
        assert_eq!(rec.pack.map(|p| (p.record.id, p.offset)), Some((78, 100)));
    }
}
