//! The local half of the metadata log: every transaction that `MetaStore::write`/`write_fast` commits is watched
//! (`capture`), and the changeset it produced (exactly the rows it inserted, updated or deleted, in the SQLite
//! session extension's format) is kept in `meta_log_pending` in the same transaction, so a crash can never commit
//! a change without its log entry.
//! `crate::replica` ships pending changesets to the stores as encrypted, chained records and advances
//! `meta_log_state`.
//!
//! Only the tables a restore needs are logged: the namespace, the data map and garbage. Operation
//! tables that make sense only on this machine (the upload queue, which points at local files and may hold
//! plaintext; the repair queue, which triggers rebuild from the shards table; audit history) and the log's own
//! tables are not.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Result;

/// Tables whose changes are replicated.
/// `stores` is not among them: its rows are the config's stores plus this machine's view of their health,
/// which changes at every open; a restore rebuilds them from the volume descriptor.
pub const LOGGED_TABLES: &[&str] = &[
    "inodes", "dirents", "xattrs", "segments", "shards", "garbage",
];

/// Tables a snapshot leaves empty: local-only state (see the module docs).
pub const LOCAL_TABLES: &[&str] = &[
    "upload_queue",
    "repair_queue",
    "audits",
    "audit_stores",
    "audit_checkpoint",
    "meta_log_pending",
];

/// Keeps a transaction's changeset in `meta_log_pending` (nothing when it changed no logged row).
pub(super) fn record(conn: &Connection, changeset: &[u8]) -> Result<()> {
    if !changeset.is_empty() {
        conn.prepare_cached("INSERT INTO meta_log_pending (changeset) VALUES (?1)")?
            .execute([changeset])?;
    }
    Ok(())
}

/// The shipped chain's head, as `meta_log_state` records it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogState {
    /// Sequence number of the last record on the stores (0: none yet).
    pub seq: u64,
    /// Hash of that record (all zero before the first).
    pub hash: [u8; 32],
    /// Sequence number of the newest snapshot record (0: none yet).
    pub snapshot_seq: u64,
    /// That snapshot's manifest, to delete its segments once a newer one supersedes it.
    pub snapshot: Option<Vec<u8>>,
    /// Record bytes and records shipped since that snapshot: when they grow, a new snapshot is due.
    pub since_bytes: u64,
    pub since_records: u64,
    /// The writer epoch records are written in (see `crate::replica::lease`).
    pub epoch: u64,
}

pub fn log_state(conn: &Connection) -> Result<LogState> {
    Ok(conn
        .prepare_cached(
            "SELECT seq, hash, snapshot_seq, snapshot, since_bytes, since_records, epoch FROM meta_log_state
             WHERE id = 1",
        )?
        .query_row([], |r| {
            let hash: Vec<u8> = r.get(1)?;
            Ok(LogState {
                seq: r.get::<_, i64>(0)? as u64,
                hash: hash.try_into().unwrap_or([0; 32]),
                snapshot_seq: r.get::<_, i64>(2)? as u64,
                snapshot: r.get(3)?,
                since_bytes: r.get::<_, i64>(4)? as u64,
                since_records: r.get::<_, i64>(5)? as u64,
                epoch: r.get::<_, i64>(6)? as u64,
            })
        })?)
}

pub fn set_log_state(conn: &Connection, st: &LogState) -> Result<()> {
    conn.prepare_cached(
        "UPDATE meta_log_state SET seq = ?1, hash = ?2, snapshot_seq = ?3, snapshot = ?4, since_bytes = ?5,
         since_records = ?6, epoch = ?7 WHERE id = 1",
    )?
    .execute(params![
        st.seq as i64,
        &st.hash[..],
        st.snapshot_seq as i64,
        st.snapshot,
        st.since_bytes as i64,
        st.since_records as i64,
        st.epoch as i64
    ])?;
    Ok(())
}

/// The newest pending changeset's id (0 when nothing is pending): what a durability point waits for.
pub fn last_pending(conn: &Connection) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT MAX(id) FROM meta_log_pending")?
        .query_row([], |r| r.get::<_, Option<i64>>(0))?
        .unwrap_or(0))
}

/// Pending changesets in commit order, oldest first, up to about `max_bytes` (at least one).
pub fn pending_batch(conn: &Connection, max_bytes: usize) -> Result<Vec<(i64, Vec<u8>)>> {
    let mut stmt = conn.prepare_cached("SELECT id, changeset FROM meta_log_pending ORDER BY id")?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    let mut total = 0;
    while let Some(r) = rows.next()? {
        let bytes: Vec<u8> = r.get(1)?;
        if !out.is_empty() && total + bytes.len() > max_bytes {
            break;
        }
        total += bytes.len();
        out.push((r.get(0)?, bytes));
    }
    Ok(out)
}

/// Forgets pending changesets up to and including `id`: they are on the stores (or inside a snapshot).
pub fn drop_pending_through(conn: &Connection, id: i64) -> Result<()> {
    conn.prepare_cached("DELETE FROM meta_log_pending WHERE id <= ?1")?
        .execute([id])?;
    Ok(())
}

/// The oldest pending changeset's id, if any.
pub fn first_pending(conn: &Connection) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT MIN(id) FROM meta_log_pending")?
        .query_row([], |r| r.get::<_, Option<i64>>(0))
        .optional()?
        .flatten())
}
