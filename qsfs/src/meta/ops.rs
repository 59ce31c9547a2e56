//! Operation rows of self-healing: the persistent repair queue, when each store was first seen unreachable, and
//! the look-ups audits and repairs need (a store's shard population, a segment by id, the names of a file, how
//! close each segment is to data loss). Audit history and checkpoint rows are in `audit_log`.
//!
//! The repair queue is filled by triggers (schema version 3) whenever a shard row is recorded missing or corrupt,
//! and explicitly for shards on a lost or drained store; rows die with their segment (ON DELETE CASCADE).

use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{SegmentRecord, ShardState, now_ns, segment_at};
use crate::error::Result;

/// Why a shard is in the repair queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RepairReason {
    /// Absent from its store, or never placed (a write below full quorum).
    Missing = 1,
    /// Wrong bytes on its store.
    Corrupt = 2,
    /// Its store has been unreachable for longer than the grace period.
    StoreLost = 3,
    /// Its store is being drained for retirement.
    Drain = 4,
}

impl RepairReason {
    fn from_i64(v: i64) -> RepairReason {
        match v {
            2 => RepairReason::Corrupt,
            3 => RepairReason::StoreLost,
            4 => RepairReason::Drain,
            _ => RepairReason::Missing,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairItem {
    pub segment_id: u64,
    pub index: usize,
    pub reason: RepairReason,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// Queues one shard (no-op if it is queued already). True when newly queued.
pub fn queue_repair(
    conn: &Connection,
    segment_id: u64,
    index: usize,
    reason: RepairReason,
) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "INSERT OR IGNORE INTO repair_queue (segment_id, idx, reason, since_ns)
             SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM segments WHERE id = ?1)",
        )?
        .execute(params![
            segment_id as i64,
            index as i64,
            reason as i64,
            now_ns()
        ])?
        > 0)
}

/// Queues every shard recorded on `store` (a lost or drained store). Returns how many were newly queued.
pub fn queue_store_shards(conn: &Connection, store: u32, reason: RepairReason) -> Result<u64> {
    Ok(conn
        .prepare_cached(
            "INSERT OR IGNORE INTO repair_queue (segment_id, idx, reason, since_ns)
             SELECT segment_id, idx, ?2, ?3 FROM shards WHERE store_id = ?1",
        )?
        .execute(params![store, reason as i64, now_ns()])? as u64)
}

/// Records every shard on `store` as missing (a wiped store re-admitted by the admin); the triggers queue them.
pub fn mark_store_shards_missing(conn: &Connection, store: u32) -> Result<u64> {
    Ok(conn
        .prepare_cached("UPDATE shards SET state = ?2 WHERE store_id = ?1")?
        .execute(params![store, ShardState::Missing as i64])? as u64)
}

/// The whole queue, by segment and index.
pub fn repair_items(conn: &Connection) -> Result<Vec<RepairItem>> {
    let mut st = conn.prepare_cached(
        "SELECT segment_id, idx, reason, attempts, last_error FROM repair_queue ORDER BY segment_id, idx",
    )?;
    let rows = st.query_map([], |r| {
        Ok(RepairItem {
            segment_id: r.get::<_, i64>(0)? as u64,
            index: r.get::<_, i64>(1)? as usize,
            reason: RepairReason::from_i64(r.get(2)?),
            attempts: r.get(3)?,
            last_error: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn repair_done(conn: &Connection, segment_id: u64, index: usize) -> Result<()> {
    conn.prepare_cached("DELETE FROM repair_queue WHERE segment_id = ?1 AND idx = ?2")?
        .execute(params![segment_id as i64, index as i64])?;
    Ok(())
}

pub fn repair_attempt_failed(
    conn: &Connection,
    segment_id: u64,
    index: usize,
    error: &str,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE repair_queue SET attempts = attempts + 1, last_error = ?3 WHERE segment_id = ?1 AND idx = ?2",
    )?
    .execute(params![segment_id as i64, index as i64, error])?;
    Ok(())
}

/// Notes why a shard was queued (what the audit or read saw), for `qsfs repair` to show when it cannot fix it.
pub fn note_repair_reason(
    conn: &Connection,
    segment_id: u64,
    index: usize,
    reason: &str,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE repair_queue SET last_error = ?3 WHERE segment_id = ?1 AND idx = ?2",
    )?
    .execute(params![segment_id as i64, index as i64, reason])?;
    Ok(())
}

pub fn repair_queue_len(conn: &Connection) -> Result<u64> {
    Ok(
        conn.query_row("SELECT COUNT(*) FROM repair_queue", [], |r| {
            r.get::<_, i64>(0)
        })? as u64,
    )
}

/// Queue entries whose shard is recorded on one of `stores`.
pub fn repair_queue_len_on(conn: &Connection, stores: &HashSet<u32>) -> Result<u64> {
    let mut st = conn.prepare_cached(
        "SELECT sh.store_id, COUNT(*) FROM repair_queue q
         JOIN shards sh ON sh.segment_id = q.segment_id AND sh.idx = q.idx
         WHERE sh.store_id IS NOT NULL GROUP BY sh.store_id",
    )?;
    let rows = st.query_map([], |r| {
        Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    let mut n = 0;
    for row in rows {
        let (store, count) = row?;
        if stores.contains(&store) {
            n += count;
        }
    }
    Ok(n)
}

/// One segment by id, with the inode it belongs to.
pub fn segment_by_id(conn: &Connection, id: u64) -> Result<Option<(u64, SegmentRecord)>> {
    let found: Option<(i64, i64)> = conn
        .prepare_cached("SELECT ino, idx FROM segments WHERE id = ?1")?
        .query_row([id as i64], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((ino, index)) = found else {
        return Ok(None);
    };
    Ok(segment_at(conn, ino as u64, index as u64)?
        .filter(|rec| rec.id == id)
        .map(|rec| (ino as u64, rec)))
}

/// The good shards recorded on `store`, as (segment id, index), in a stable order: the population an audit of
/// that store samples from.
pub fn store_population(conn: &Connection, store: u32) -> Result<Vec<(u64, u32)>> {
    let mut st = conn.prepare_cached(
        "SELECT segment_id, idx FROM shards WHERE store_id = ?1 AND state = 0 AND locator IS NOT NULL
         ORDER BY segment_id, idx",
    )?;
    let rows = st.query_map([store], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, u32>(1)?))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Per store: shards recorded there in a bad state (awaiting repair).
pub fn known_bad_counts(conn: &Connection) -> Result<HashMap<u32, u64>> {
    let mut st = conn.prepare_cached(
        "SELECT store_id, COUNT(*) FROM shards WHERE store_id IS NOT NULL AND state <> 0 GROUP BY store_id",
    )?;
    let rows = st.query_map([], |r| {
        Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every shard row recorded on `store`, whatever its state.
pub fn shards_on_store(conn: &Connection, store: u32) -> Result<u64> {
    Ok(conn
        .prepare_cached("SELECT COUNT(*) FROM shards WHERE store_id = ?1")?
        .query_row([store], |r| r.get::<_, i64>(0))? as u64)
}

/// What an auditor needs to check one stored shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardTarget {
    pub segment_id: u64,
    pub index: usize,
    pub store_id: u32,
    pub locator: Vec<u8>,
    pub blob_len: u64,
    pub root: [u8; 32],
    /// Data bytes of the shard (the segment's shard length).
    pub data_len: u64,
    pub state: ShardState,
}

const TARGET_QUERY: &str = "SELECT sh.segment_id, sh.idx, sh.store_id, sh.locator, sh.blob_len, sh.root, s.shard_len, sh.state
     FROM shards sh JOIN segments s ON s.id = sh.segment_id";

fn target_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<ShardTarget>> {
    let store: Option<u32> = r.get(2)?;
    let locator: Option<Vec<u8>> = r.get(3)?;
    let root: Vec<u8> = r.get(5)?;
    let (Some(store_id), Some(locator), Ok(root)) = (store, locator, <[u8; 32]>::try_from(root))
    else {
        return Ok(None);
    };
    let state = match r.get::<_, i64>(7)? {
        0 => ShardState::Ok,
        2 => ShardState::Corrupt,
        _ => ShardState::Missing,
    };
    Ok(Some(ShardTarget {
        segment_id: r.get::<_, i64>(0)? as u64,
        index: r.get::<_, i64>(1)? as usize,
        store_id,
        locator,
        blob_len: r.get::<_, i64>(4)? as u64,
        root,
        data_len: r.get::<_, i64>(6)? as u64,
        state,
    }))
}

/// The targets of the given (segment, index) pairs that still exist with a location.
pub fn shard_targets(conn: &Connection, keys: &[(u64, u32)]) -> Result<Vec<ShardTarget>> {
    let mut st = conn.prepare_cached(&format!(
        "{TARGET_QUERY} WHERE sh.segment_id = ?1 AND sh.idx = ?2"
    ))?;
    let mut out = Vec::with_capacity(keys.len());
    for (segment, index) in keys {
        let mut rows = st.query(params![*segment as i64, *index as i64])?;
        if let Some(r) = rows.next()?
            && let Some(t) = target_from_row(r)?
        {
            out.push(t);
        }
    }
    Ok(out)
}

/// The located shards of up to `segments` segments with id > `after`, optionally only those on `store`, in
/// (segment, index) order; and the last segment id covered (None when there are no more segments).
pub fn shard_targets_after(
    conn: &Connection,
    after: u64,
    segments: usize,
    store: Option<u32>,
) -> Result<(Vec<ShardTarget>, Option<u64>)> {
    let last: Option<i64> = conn
        .prepare_cached(
            "SELECT MAX(id) FROM (SELECT id FROM segments WHERE id > ?1 ORDER BY id LIMIT ?2)",
        )?
        .query_row(params![after as i64, segments as i64], |r| r.get(0))?;
    let Some(last) = last else {
        return Ok((Vec::new(), None));
    };
    let mut st = conn.prepare_cached(&format!(
        "{TARGET_QUERY} WHERE sh.segment_id > ?1 AND sh.segment_id <= ?2 AND (?3 IS NULL OR sh.store_id = ?3)
         ORDER BY sh.segment_id, sh.idx"
    ))?;
    let mut rows = st.query(params![after as i64, last, store])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        if let Some(t) = target_from_row(r)? {
            out.push(t);
        }
    }
    Ok((out, Some(last as u64)))
}

/// Records an audit finding about a shard, but only if the row still points where the audit looked (a repair or
/// an overwrite may have moved or dropped it since). True when recorded.
pub fn mark_shard_at(
    conn: &Connection,
    segment_id: u64,
    index: usize,
    store: u32,
    locator: &[u8],
    state: ShardState,
) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "UPDATE shards SET state = ?5 WHERE segment_id = ?1 AND idx = ?2 AND store_id = ?3 AND locator = ?4",
        )?
        .execute(params![segment_id as i64, index as i64, store, locator, state as i64])?
        > 0)
}

/// Points shard `index` of `segment_id` at its new copy, in state good — only if the row is still the one the
/// repair started from (same root and old location). True when updated.
pub fn replace_shard(
    conn: &Connection,
    segment_id: u64,
    index: usize,
    root: &[u8; 32],
    old: (Option<u32>, Option<&[u8]>),
    new_store: u32,
    new_locator: &[u8],
) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "UPDATE shards SET store_id = ?6, locator = ?7, state = 0
             WHERE segment_id = ?1 AND idx = ?2 AND root = ?3 AND store_id IS ?4 AND locator IS ?5",
        )?
        .execute(params![
            segment_id as i64,
            index as i64,
            &root[..],
            old.0,
            old.1,
            new_store,
            new_locator
        ])?
        > 0)
}

/// Records one stored blob that nothing references any more, for `collect_garbage` to delete.
pub fn add_garbage_at(conn: &Connection, store: u32, locator: &[u8]) -> Result<()> {
    conn.prepare_cached("INSERT INTO garbage (store_id, locator, since_ns) VALUES (?1, ?2, ?3)")?
        .execute(params![store, locator, now_ns()])?;
    Ok(())
}

/// Drops garbage rows naming exactly this place: a fresh copy was just written there and must not be deleted.
pub fn forget_garbage_at(conn: &Connection, store: u32, locator: &[u8]) -> Result<()> {
    conn.prepare_cached("DELETE FROM garbage WHERE store_id = ?1 AND locator = ?2")?
        .execute(params![store, locator])?;
    Ok(())
}

/// Garbage rows still waiting on `store`.
pub fn garbage_on_store(conn: &Connection, store: u32) -> Result<u64> {
    Ok(conn
        .prepare_cached("SELECT COUNT(*) FROM garbage WHERE store_id = ?1")?
        .query_row([store], |r| r.get::<_, i64>(0))? as u64)
}

/// Forgets the garbage of a retired store (its blobs can no longer be deleted by this volume).
pub fn forget_garbage_on_store(conn: &Connection, store: u32) -> Result<u64> {
    Ok(conn
        .prepare_cached("DELETE FROM garbage WHERE store_id = ?1")?
        .execute([store])? as u64)
}

/// Notes whether a store answered: reachable clears `down_since_ns`; unreachable sets it if not set already, so
/// the grace period counts from the first time it was seen down.
pub fn note_store_reachability(conn: &Connection, store: u32, up: bool) -> Result<()> {
    if up {
        conn.prepare_cached("UPDATE stores SET down_since_ns = NULL WHERE id = ?1")?
            .execute([store])?;
    } else {
        conn.prepare_cached(
            "UPDATE stores SET down_since_ns = COALESCE(down_since_ns, ?2) WHERE id = ?1",
        )?
        .execute(params![store, now_ns()])?;
    }
    Ok(())
}

/// Stores seen unreachable and not since seen reachable, with the time they were first seen down (ns).
pub fn stores_down_since(conn: &Connection) -> Result<HashMap<u32, i64>> {
    let mut st = conn
        .prepare_cached("SELECT id, down_since_ns FROM stores WHERE down_since_ns IS NOT NULL")?;
    let rows = st.query_map([], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every store id the database has ever known (a retired store's id is never reused).
pub fn known_store_ids(conn: &Connection) -> Result<Vec<u32>> {
    let mut st = conn.prepare_cached("SELECT id FROM stores ORDER BY id")?;
    let rows = st.query_map([], |r| r.get::<_, u32>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// How many good shards each store holds (for placing rebuilt shards where there is least).
pub fn good_shards_per_store(conn: &Connection) -> Result<HashMap<u32, u64>> {
    let mut st = conn.prepare_cached(
        "SELECT store_id, COUNT(*) FROM shards WHERE store_id IS NOT NULL AND state = 0 GROUP BY store_id",
    )?;
    let rows = st.query_map([], |r| {
        Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A segment with fewer healthy shards than it needs to be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShortSegment {
    pub segment_id: u64,
    pub ino: u64,
    pub healthy: u64,
    /// Good shards on stores outside `usable`.
    pub elsewhere: u64,
}

/// Scans every segment: the smallest margin (healthy shards − `k`) and the segments below `k`. A shard is
/// healthy when it is recorded good, is not queued for repair and its store is in `usable`.
pub fn segment_margins(
    conn: &Connection,
    usable: &HashSet<u32>,
    k: usize,
) -> Result<(Option<i64>, Vec<ShortSegment>)> {
    let mut st = conn.prepare_cached(
        "SELECT s.id, s.ino, sh.store_id, sh.state,
                EXISTS (SELECT 1 FROM repair_queue q WHERE q.segment_id = sh.segment_id AND q.idx = sh.idx)
         FROM segments s JOIN shards sh ON sh.segment_id = s.id ORDER BY s.id",
    )?;
    let mut per: HashMap<u64, (u64, u64, u64)> = HashMap::new();
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let seg = r.get::<_, i64>(0)? as u64;
        let ino = r.get::<_, i64>(1)? as u64;
        let store: Option<u32> = r.get(2)?;
        let good = r.get::<_, i64>(3)? == 0;
        let queued: bool = r.get(4)?;
        let entry = per.entry(seg).or_insert((ino, 0, 0));
        match store {
            Some(s) if good && !queued && usable.contains(&s) => entry.1 += 1,
            Some(_) if good => entry.2 += 1,
            _ => {}
        }
    }
    let min_margin = per.values().map(|(_, h, _)| *h as i64 - k as i64).min();
    let mut short: Vec<ShortSegment> = per
        .into_iter()
        .filter(|(_, (_, h, _))| (*h as usize) < k)
        .map(|(segment_id, (ino, healthy, elsewhere))| ShortSegment {
            segment_id,
            ino,
            healthy,
            elsewhere,
        })
        .collect();
    short.sort_by_key(|s| s.segment_id);
    Ok((min_margin, short))
}

/// The paths of the files whose bytes segment `segment_id` of inode `ino` holds: that file's, or for a pack every
/// member's.
pub fn segment_paths(conn: &Connection, segment_id: u64, ino: u64) -> Result<Vec<String>> {
    if ino != super::PACK_HOLDER {
        return paths_of(conn, ino);
    }
    let mut out = Vec::new();
    for m in super::pack_members(conn, segment_id)? {
        out.extend(paths_of(conn, m.ino)?);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Every path naming inode `ino` (several for hard links), or a note when it has none (an open, unlinked file).
pub fn paths_of(conn: &Connection, ino: u64) -> Result<Vec<String>> {
    let mut names = conn.prepare_cached("SELECT parent, name FROM dirents WHERE ino = ?1")?;
    let links: Vec<(u64, Vec<u8>)> = names
        .query_map([ino as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    if links.is_empty() {
        return Ok(vec![format!("(inode {ino}, no name: unlinked while open)")]);
    }
    let mut out = Vec::new();
    for (parent, name) in links {
        let mut parts = vec![String::from_utf8_lossy(&name).into_owned()];
        let mut dir = parent;
        // Directories have one name each; the depth cap only guards against a damaged (cyclic) namespace.
        for _ in 0..4096 {
            if dir == super::ROOT_INO {
                break;
            }
            let up: Option<(i64, Vec<u8>)> = names
                .query_row([dir as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let Some((p, n)) = up else { break };
            parts.push(String::from_utf8_lossy(&n).into_owned());
            dir = p as u64;
        }
        parts.reverse();
        out.push(format!("/{}", parts.join("/")));
    }
    out.sort();
    Ok(out)
}
