//! Data-map rows: segments, their shards, the stores, and garbage (shards no longer referenced, deleted from their
//! stores only after the transaction that dropped them has committed — invariant 2).

use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, params};

use super::now_ns;
use crate::codec::SegmentInfo;
use crate::error::Result;

/// A shard's condition as far as metadata knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ShardState {
    /// Durable on its store when last written or checked.
    Ok = 0,
    /// Could not be placed, or found absent.
    Missing = 1,
    /// Found with wrong bytes.
    Corrupt = 2,
}

impl ShardState {
    fn from_i64(v: i64) -> ShardState {
        match v {
            0 => ShardState::Ok,
            2 => ShardState::Corrupt,
            _ => ShardState::Missing,
        }
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ShardRow {
    pub index: usize,
    pub store_id: Option<u32>,
    pub locator: Option<Vec<u8>>,
    pub blob_len: u64,
    pub root: [u8; 32],
    pub state: ShardState,
}

/// One segment as recorded: what the codec needs to decode it and where each shard is.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SegmentRecord {
    pub id: u64,
    /// The file it belongs to (sealed into segments written with `FLAG_BOUND`).
    pub ino: u64,
    pub index: u64,
    pub info: SegmentInfo,
    pub shards: Vec<ShardRow>,
    /// Set for a small file segment stored inside a pack segment (see `packs`): its bytes are
    /// `info.plain_len` bytes at `offset` of the pack's plaintext, and `info`'s other fields and `shards` are
    /// empty (the pack's record holds them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack: Option<PackSlice>,
}

/// Where a packed file segment's bytes are: the pack's own record, and the offset in its plaintext.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PackSlice {
    pub offset: u64,
    pub record: Box<SegmentRecord>,
}

impl SegmentRecord {
    /// The record whose shards hold this segment's bytes: the pack's for a packed segment, else its own.
    pub fn stored(&self) -> &SegmentRecord {
        match &self.pack {
            Some(p) => &p.record,
            None => self,
        }
    }
}

/// Records segment `rec` as part `rec.index` of file `ino`, replacing (and turning into garbage) any older version.
pub fn put_segment(conn: &Connection, ino: u64, rec: &SegmentRecord) -> Result<()> {
    let emptied = drop_segment_range(conn, ino, rec.index, Some(rec.index + 1))?;
    let (pack_id, pack_off) = match &rec.pack {
        Some(p) => (Some(p.record.id as i64), p.offset as i64),
        None => (None, 0),
    };
    conn.prepare_cached(
        "INSERT INTO segments (id, ino, idx, plain_len, stored_len, shard_len, nonce, flags, pack_id, pack_off)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        rec.id as i64,
        ino as i64,
        rec.index as i64,
        rec.info.plain_len as i64,
        rec.info.stored_len as i64,
        rec.info.shard_len as i64,
        &rec.info.nonce[..],
        rec.info.flags,
        pack_id,
        pack_off
    ])?;
    let mut st = conn.prepare_cached(
        "INSERT INTO shards (segment_id, idx, store_id, locator, blob_len, root, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for s in &rec.shards {
        st.execute(params![
            rec.id as i64,
            s.index as i64,
            s.store_id,
            s.locator,
            s.blob_len as i64,
            &s.root[..],
            s.state as i64
        ])?;
    }
    // Only now: the replaced version may have been the only member so far of the very pack this one goes into
    // (two versions of a segment gathered into one pack), which is not dead.
    super::drop_packs_if_dead(conn, &emptied)
}

/// Drops every segment of `ino` at index >= `from` (truncate, delete); their shards become garbage.
pub fn drop_segments_from(conn: &Connection, ino: u64, from: u64) -> Result<()> {
    let emptied = drop_segment_range(conn, ino, from, None)?;
    super::drop_packs_if_dead(conn, &emptied)
}

/// Drops `ino`'s segments at indexes `from..to` (their shards become garbage). Returns the packs that held some
/// of them, for the caller to drop once its rows are written ([`super::drop_packs_if_dead`]).
fn drop_segment_range(conn: &Connection, ino: u64, from: u64, to: Option<u64>) -> Result<Vec<u64>> {
    let to = to.map_or(i64::MAX, |t| t as i64);
    let packs = conn
        .prepare_cached(
            "SELECT DISTINCT pack_id FROM segments
             WHERE ino = ?1 AND idx >= ?2 AND idx < ?3 AND pack_id IS NOT NULL",
        )?
        .query_map(params![ino as i64, from as i64, to], |r| {
            r.get::<_, i64>(0).map(|id| id as u64)
        })?
        .collect::<rusqlite::Result<Vec<u64>>>()?;
    conn.prepare_cached(
        "INSERT INTO garbage (store_id, locator, since_ns)
         SELECT sh.store_id, sh.locator, ?4 FROM shards sh JOIN segments s ON s.id = sh.segment_id
         WHERE s.ino = ?1 AND s.idx >= ?2 AND s.idx < ?3 AND sh.store_id IS NOT NULL AND sh.locator IS NOT NULL",
    )?
    .execute(params![ino as i64, from as i64, to, now_ns()])?;
    conn.prepare_cached("DELETE FROM segments WHERE ino = ?1 AND idx >= ?2 AND idx < ?3")?
        .execute(params![ino as i64, from as i64, to])?;
    Ok(packs)
}

fn shards_of(conn: &Connection, segment_id: u64) -> Result<Vec<ShardRow>> {
    let mut st = conn.prepare_cached(
        "SELECT idx, store_id, locator, blob_len, root, state FROM shards WHERE segment_id = ?1 ORDER BY idx",
    )?;
    let rows = st.query_map([segment_id as i64], |r| {
        let root: Vec<u8> = r.get(4)?;
        let mut root32 = [0u8; 32];
        if root.len() == 32 {
            root32.copy_from_slice(&root);
        }
        Ok(ShardRow {
            index: r.get::<_, i64>(0)? as usize,
            store_id: r.get(1)?,
            locator: r.get(2)?,
            blob_len: r.get::<_, i64>(3)? as u64,
            root: root32,
            state: ShardState::from_i64(r.get(5)?),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(super) const SEGMENT_COLS: &str =
    "id, idx, plain_len, stored_len, shard_len, nonce, flags, ino, pack_id, pack_off";

pub(super) fn segment_from_row(conn: &Connection, r: &rusqlite::Row<'_>) -> Result<SegmentRecord> {
    let id = r.get::<_, i64>(0)? as u64;
    let nonce_v: Vec<u8> = r.get(5)?;
    let mut nonce = [0u8; 24];
    if nonce_v.len() == 24 {
        nonce.copy_from_slice(&nonce_v);
    }
    let shards = shards_of(conn, id)?;
    let info = SegmentInfo {
        plain_len: r.get::<_, i64>(2)? as u64,
        stored_len: r.get::<_, i64>(3)? as u64,
        shard_len: r.get::<_, i64>(4)? as u64,
        nonce,
        flags: r.get(6)?,
        roots: shards.iter().map(|s| s.root).collect(),
    };
    let pack = match r.get::<_, Option<i64>>(8)? {
        Some(pack_id) => Some(PackSlice {
            offset: r.get::<_, i64>(9)? as u64,
            record: Box::new(super::packs::pack_record(conn, pack_id as u64)?),
        }),
        None => None,
    };
    Ok(SegmentRecord {
        id,
        ino: r.get::<_, i64>(7)? as u64,
        index: r.get::<_, i64>(1)? as u64,
        info,
        shards,
        pack,
    })
}

/// All segments of a file in index order (holes are simply absent).
pub fn segments_of(conn: &Connection, ino: u64) -> Result<Vec<SegmentRecord>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {SEGMENT_COLS} FROM segments WHERE ino = ?1 ORDER BY idx"
    ))?;
    let mut rows = st.query([ino as i64])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(segment_from_row(conn, r)?);
    }
    Ok(out)
}

pub fn segment_at(conn: &Connection, ino: u64, index: u64) -> Result<Option<SegmentRecord>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {SEGMENT_COLS} FROM segments WHERE ino = ?1 AND idx = ?2"
    ))?;
    let mut rows = st.query(params![ino as i64, index as i64])?;
    match rows.next()? {
        Some(r) => Ok(Some(segment_from_row(conn, r)?)),
        None => Ok(None),
    }
}

/// Records what a read learned about a shard (found missing or corrupt), if the segment still exists.
pub fn mark_shard(
    conn: &Connection,
    segment_id: u64,
    index: usize,
    state: ShardState,
) -> Result<()> {
    conn.prepare_cached("UPDATE shards SET state = ?3 WHERE segment_id = ?1 AND idx = ?2")?
        .execute(params![segment_id as i64, index as i64, state as i64])?;
    Ok(())
}

pub struct GarbageShard {
    pub id: i64,
    pub store_id: u32,
    pub locator: Vec<u8>,
}

pub fn garbage_batch(conn: &Connection, limit: usize) -> Result<Vec<GarbageShard>> {
    let mut st =
        conn.prepare_cached("SELECT id, store_id, locator FROM garbage ORDER BY id LIMIT ?1")?;
    let rows = st.query_map([limit as i64], |r| {
        Ok(GarbageShard {
            id: r.get(0)?,
            store_id: r.get(1)?,
            locator: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn garbage_done(conn: &Connection, ids: &[i64]) -> Result<()> {
    let mut st = conn.prepare_cached("DELETE FROM garbage WHERE id = ?1")?;
    for id in ids {
        st.execute([id])?;
    }
    Ok(())
}

pub fn garbage_count(conn: &Connection) -> Result<u64> {
    Ok(conn.query_row("SELECT COUNT(*) FROM garbage", [], |r| r.get::<_, i64>(0))? as u64)
}

/// Makes the stores table mirror the config (URIs may be edited there when a server moves).
pub fn sync_store(conn: &Connection, id: u32, uri: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO stores (id, uri) VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET uri = excluded.uri",
    )?
    .execute(params![id, uri])?;
    Ok(())
}

/// Remembers a store's last observed state (0 up, 1 down) with the reason.
pub fn record_store_state(conn: &Connection, id: u32, up: bool, error: Option<&str>) -> Result<()> {
    let seen = if up { Some(now_ns()) } else { None };
    conn.prepare_cached(
        "UPDATE stores SET state = ?2, last_error = ?3, last_seen = COALESCE(?4, last_seen) WHERE id = ?1",
    )?
    .execute(params![id, if up { 0 } else { 1 }, error, seen])?;
    Ok(())
}

/// Per store: (shards recorded there in state Ok, their bytes).
pub fn store_usage(conn: &Connection) -> Result<HashMap<u32, (u64, u64)>> {
    let mut st = conn.prepare_cached(
        "SELECT store_id, COUNT(*), COALESCE(SUM(blob_len), 0) FROM shards
         WHERE store_id IS NOT NULL AND state = 0 GROUP BY store_id",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, u32>(0)?,
            (r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64),
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SegmentHealth {
    pub total: u64,
    /// Every shard is in state Ok on a reachable store.
    pub healthy: u64,
    /// Readable (at least K good shards) but not fully redundant.
    pub degraded: u64,
    /// Fewer than K good shards: data loss unless a store comes back.
    pub unreadable: u64,
}

pub fn segment_health(
    conn: &Connection,
    reachable: &HashSet<u32>,
    k: usize,
    total: usize,
) -> Result<SegmentHealth> {
    let mut st = conn.prepare_cached(
        "SELECT s.id, sh.store_id, sh.state FROM segments s JOIN shards sh ON sh.segment_id = s.id ORDER BY s.id",
    )?;
    let mut good: HashMap<i64, usize> = HashMap::new();
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let seg: i64 = r.get(0)?;
        let store: Option<u32> = r.get(1)?;
        let state: i64 = r.get(2)?;
        let entry = good.entry(seg).or_insert(0);
        if state == 0 && store.is_some_and(|s| reachable.contains(&s)) {
            *entry += 1;
        }
    }
    let mut h = SegmentHealth {
        total: good.len() as u64,
        ..Default::default()
    };
    for n in good.values() {
        if *n >= total {
            h.healthy += 1;
        } else if *n >= k {
            h.degraded += 1;
        } else {
            h.unreadable += 1;
        }
    }
    Ok(h)
}

/// A fresh random segment id (63 bits, so it fits SQLite's signed integer). Chosen before encoding because the
/// AEAD binds it; a collision (about 2^-31 at 2^16 segments) would fail the commit's UNIQUE check, never alias data.
pub fn new_segment_id() -> u64 {
    (rand::random::<u64>() >> 1).max(1)
}

/// Every locator on `store` that metadata names: live shards and recorded garbage (what `gc` must not call an
/// orphan).
pub fn locators_on_store(
    conn: &Connection,
    store: u32,
) -> Result<std::collections::HashSet<Vec<u8>>> {
    let mut st = conn.prepare_cached(
        "SELECT locator FROM shards WHERE store_id = ?1 AND locator IS NOT NULL
         UNION SELECT locator FROM garbage WHERE store_id = ?1",
    )?;
    let rows = st.query_map([store], |r| r.get::<_, Vec<u8>>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
