//! Audit rows: the audit history (one row per audit with its JSON report, per-store check counts for the
//! stores' scores) and the checkpoint of an interrupted full audit.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::error::{QsfsError, Result};

/// The last audit, for `status`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditSummary {
    pub id: i64,
    /// Unix seconds.
    pub finished_unix: u64,
    pub mode: String,
    pub verdict: String,
    pub failures: u64,
}

/// Appends one audit to the history (keeping the newest 1000) with its per-store check counts.
pub fn record_audit(
    conn: &Connection,
    report: &qsfs_por::AuditReport,
    started_ns: i64,
    finished_ns: i64,
) -> Result<i64> {
    let json = serde_json::to_string(report)
        .map_err(|e| QsfsError::Invalid(format!("audit report: {e}")))?;
    let mode = serde_json::to_value(report.mode)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    conn.prepare_cached(
        "INSERT INTO audits (started_ns, finished_ns, mode, verdict, failures, report) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        started_ns,
        finished_ns,
        mode,
        report.verdict.label(),
        report.failures() as i64,
        json
    ])?;
    let id = conn.last_insert_rowid();
    let mut st = conn.prepare_cached(
        "INSERT INTO audit_stores (audit_id, store_id, checked, passed) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for s in &report.stores {
        st.execute(params![id, s.store_id, s.sampled as i64, s.passed as i64])?;
    }
    conn.prepare_cached("DELETE FROM audits WHERE id <= ?1 - 1000")?
        .execute([id])?;
    Ok(id)
}

pub fn last_audit(conn: &Connection) -> Result<Option<AuditSummary>> {
    Ok(conn
        .prepare_cached(
            "SELECT id, finished_ns, mode, verdict, failures FROM audits ORDER BY id DESC LIMIT 1",
        )?
        .query_row([], |r| {
            Ok(AuditSummary {
                id: r.get(0)?,
                finished_unix: (r.get::<_, i64>(1)?.max(0) / 1_000_000_000) as u64,
                mode: r.get(2)?,
                verdict: r.get(3)?,
                failures: r.get::<_, i64>(4)? as u64,
            })
        })
        .optional()?)
}

/// The JSON report of audit `id` (the newest when `None`).
pub fn audit_report_json(conn: &Connection, id: Option<i64>) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached(
            "SELECT report FROM audits WHERE id = COALESCE(?1, (SELECT MAX(id) FROM audits))",
        )?
        .query_row([id], |r| r.get(0))
        .optional()?)
}

/// Each store's score: the fraction of its checks that passed over its last 10 audits (unreachable checks count
/// as failed). Stores never checked are absent.
pub fn store_scores(conn: &Connection) -> Result<HashMap<u32, f64>> {
    let mut st = conn.prepare_cached(
        "SELECT store_id, SUM(passed), SUM(checked) FROM (
             SELECT store_id, passed, checked,
                    ROW_NUMBER() OVER (PARTITION BY store_id ORDER BY audit_id DESC) AS rn
             FROM audit_stores WHERE checked > 0)
         WHERE rn <= 10 GROUP BY store_id",
    )?;
    let rows = st.query_map([], |r| {
        let passed: i64 = r.get(1)?;
        let checked: i64 = r.get(2)?;
        Ok((r.get::<_, u32>(0)?, passed as f64 / checked.max(1) as f64))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Where an interrupted full audit stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Which stores it covers ("all" or a store id).
    pub scope: String,
    pub started_ns: i64,
    /// Segments with id up to this one are done (ids start at 1, so 0 means none).
    pub done_through: u64,
    /// The partial per-store results so far (JSON).
    pub partial: String,
}

pub fn load_checkpoint(conn: &Connection) -> Result<Option<Checkpoint>> {
    Ok(conn
        .prepare_cached(
            "SELECT scope, started_ns, done_through, partial FROM audit_checkpoint WHERE id = 1",
        )?
        .query_row([], |r| {
            Ok(Checkpoint {
                scope: r.get(0)?,
                started_ns: r.get(1)?,
                done_through: r.get::<_, i64>(2)? as u64,
                partial: r.get(3)?,
            })
        })
        .optional()?)
}

pub fn save_checkpoint(conn: &Connection, cp: &Checkpoint) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO audit_checkpoint (id, scope, started_ns, done_through, partial) VALUES (1, ?1, ?2, ?3, ?4)
         ON CONFLICT(id) DO UPDATE SET scope = excluded.scope, started_ns = excluded.started_ns,
             done_through = excluded.done_through, partial = excluded.partial",
    )?
    .execute(params![cp.scope, cp.started_ns, cp.done_through as i64, cp.partial])?;
    Ok(())
}

/// (segments with id <= `through`, all segments): a full audit's progress.
pub fn segment_progress(conn: &Connection, through: u64) -> Result<(u64, u64)> {
    Ok(conn
        .prepare_cached("SELECT COUNT(*) FILTER (WHERE id <= ?1), COUNT(*) FROM segments")?
        .query_row([through as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })?)
}

pub fn clear_checkpoint(conn: &Connection) -> Result<()> {
    conn.prepare_cached("DELETE FROM audit_checkpoint")?
        .execute([])?;
    Ok(())
}
