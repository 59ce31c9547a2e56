//! What one metadata transaction changed, as an SQLite changeset, without an SQLite session.
//!
//! The session extension costs about half of a small transaction: each new session reads every table's layout
//! (`table_xinfo`) and prepares a SELECT per table when it writes its changeset, and the log needs one session
//! per transaction. This module does the same work with costs paid once: the table layouts are read when the
//! capture is installed, a pre-update hook (which the writer connection owns, so nothing borrows it) notes each
//! changed row's primary key and old values, and at commit the current rows are read with cached statements.
//!
//! The output is byte-for-byte the session extension's changeset format, with the session's rules: one change per
//! row (keyed by primary key) holding the row's values before the transaction; an UPDATE is noted under its old
//! key and, as an INSERT, under its new one; the net change is decided at commit from the row as it is then, so a
//! statement that failed and was rolled back leaves nothing behind; a change is "indirect" only when every write
//! to its row came from a trigger or a foreign-key action. Rows are written table by table in the order the
//! tables were first changed, each table's rows in the order they were first changed. `capture_tests` checks the
//! result against a real session.
//!
//! No SQLite session may ever be opened on a connection that carries this hook: a connection has one pre-update
//! hook, and the session extension would take the hook's context for one of its own sessions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::hooks::PreUpdateCase;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension};

use crate::error::{QsfsError, Result};

/// Operation codes and value types of the changeset format (SQLite's own constants).
const OP_INSERT: u8 = 18;
const OP_DELETE: u8 = 9;
const OP_UPDATE: u8 = 23;
const UNDEFINED: u8 = 0;

/// A column value, kept as SQLite stored it (text as bytes: nothing here needs it decoded).
#[derive(Clone, Debug, PartialEq)]
enum Val {
    Null,
    Int(i64),
    Real(f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl Val {
    fn from_ref(v: ValueRef<'_>) -> Val {
        match v {
            ValueRef::Null => Val::Null,
            ValueRef::Integer(i) => Val::Int(i),
            ValueRef::Real(r) => Val::Real(r),
            ValueRef::Text(t) => Val::Text(t.to_vec()),
            ValueRef::Blob(b) => Val::Blob(b.to_vec()),
        }
    }

    /// The session's test for "this column changed": a different type, or a different value of the same type.
    fn same_as(&self, now: &Val) -> bool {
        match (self, now) {
            (Val::Null, Val::Null) => true,
            (Val::Int(a), Val::Int(b)) => a == b,
            (Val::Real(a), Val::Real(b)) => a == b,
            (Val::Text(a), Val::Text(b)) | (Val::Blob(a), Val::Blob(b)) => a == b,
            _ => false,
        }
    }

    /// Appends the value in the changeset's record format.
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            Val::Null => out.push(5),
            Val::Int(i) => {
                out.push(1);
                out.extend_from_slice(&i.to_be_bytes());
            }
            Val::Real(r) => {
                out.push(2);
                out.extend_from_slice(&r.to_bits().to_be_bytes());
            }
            Val::Text(b) | Val::Blob(b) => {
                out.push(if matches!(self, Val::Text(_)) { 3 } else { 4 });
                put_varint(out, b.len() as u64);
                out.extend_from_slice(b);
            }
        }
    }
}

/// SQLite's variable-length integer: big-endian groups of 7 bits, the high bit set on all but the last byte
/// (lengths here never reach the 9-byte form).
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    let mut groups = [0u8; 10];
    let mut n = 0;
    loop {
        groups[n] = (v & 0x7f) as u8;
        n += 1;
        v >>= 7;
        if v == 0 {
            break;
        }
    }
    for i in (0..n).rev() {
        out.push(groups[i] | if i > 0 { 0x80 } else { 0 });
    }
}

/// A logged table's layout, read once.
struct Table {
    name: String,
    /// Per column: its place in the primary key (1-based), or 0 — the changeset header's bytes.
    pk: Vec<u8>,
    /// `SELECT` of every column of one row, by primary key (columns in table order, keys in column order).
    select: String,
}

impl Table {
    fn read(conn: &Connection, name: &str) -> Result<Table> {
        let mut columns = Vec::new();
        let mut pk = Vec::new();
        let mut stmt = conn.prepare(&format!("PRAGMA main.table_xinfo('{name}')"))?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            if r.get::<_, i64>(6)? != 0 {
                return Err(QsfsError::MetaLog(format!(
                    "table {name} has a hidden column; the metadata log cannot record it"
                )));
            }
            columns.push(r.get::<_, String>(1)?);
            pk.push(r.get::<_, i64>(5)? as u8);
        }
        if !pk.iter().any(|&p| p != 0) {
            return Err(QsfsError::MetaLog(format!(
                "table {name} has no primary key; the metadata log cannot record it"
            )));
        }
        let keys: Vec<String> = columns
            .iter()
            .zip(&pk)
            .filter(|(_, p)| **p != 0)
            .enumerate()
            .map(|(i, (c, _))| format!("\"{c}\" IS ?{}", i + 1))
            .collect();
        let cols: Vec<String> = columns.iter().map(|c| format!("\"{c}\"")).collect();
        let select = format!(
            "SELECT {} FROM main.\"{name}\" WHERE {}",
            cols.join(", "),
            keys.join(" AND ")
        );
        Ok(Table {
            name: name.to_string(),
            pk,
            select,
        })
    }

    fn header(&self, out: &mut Vec<u8>) {
        out.push(b'T');
        put_varint(out, self.pk.len() as u64);
        out.extend_from_slice(&self.pk);
        out.extend_from_slice(self.name.as_bytes());
        out.push(0);
    }
}

/// How a row's first change in the transaction found it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FirstOp {
    /// The row did not exist: only its key is known.
    Insert,
    /// The row existed: its old values are kept.
    Existed,
}

struct RowChange {
    first: FirstOp,
    indirect: bool,
    /// The primary key's values, in column order.
    key: Vec<Val>,
    /// Every column's value before the transaction (empty for `FirstOp::Insert`).
    old: Vec<Val>,
}

#[derive(Default)]
struct TableChanges {
    rows: Vec<RowChange>,
    /// Encoded primary key → index in `rows`.
    by_key: HashMap<Vec<u8>, usize>,
}

/// The transaction in progress's changes, shared by the hook and the committer.
#[derive(Default)]
struct Noted {
    armed: bool,
    failed: Option<String>,
    /// Per changed table (index into `Capture::tables`), in the order tables were first changed.
    tables: Vec<(usize, TableChanges)>,
}

impl Noted {
    fn note(
        &mut self,
        ti: usize,
        table: &Table,
        first: FirstOp,
        depth: i32,
        value: &dyn Fn(i32) -> rusqlite::Result<Val>,
    ) {
        let mut key = Vec::new();
        let mut key_bytes = Vec::new();
        for (i, _) in table.pk.iter().enumerate().filter(|(_, p)| **p != 0) {
            match value(i as i32) {
                // Like the session, a row whose key holds a NULL is not recorded.
                Ok(Val::Null) => return,
                Ok(v) => key.push(v),
                Err(e) => {
                    return self.fail(format!("reading a changed row of {}: {e}", table.name));
                }
            }
        }
        key.iter().for_each(|v| v.put(&mut key_bytes));
        let slot = match self.tables.iter().position(|(t, _)| *t == ti) {
            Some(s) => s,
            None => {
                self.tables.push((ti, TableChanges::default()));
                self.tables.len() - 1
            }
        };
        let changes = &mut self.tables[slot].1;
        if let Some(&i) = changes.by_key.get(&key_bytes) {
            changes.rows[i].indirect &= depth > 0;
            return;
        }
        let mut old = Vec::new();
        if first == FirstOp::Existed {
            for i in 0..table.pk.len() {
                match value(i as i32) {
                    Ok(v) => old.push(v),
                    Err(e) => {
                        return self.fail(format!("reading a changed row of {}: {e}", table.name));
                    }
                }
            }
        }
        changes.by_key.insert(key_bytes, changes.rows.len());
        changes.rows.push(RowChange {
            first,
            indirect: depth > 0,
            key,
            old,
        });
    }

    fn fail(&mut self, why: String) {
        self.failed.get_or_insert(why);
    }

    fn clear(&mut self) {
        self.armed = false;
        self.failed = None;
        self.tables.clear();
    }
}

/// The writer connection's change capture (see the module docs).
pub(super) struct Capture {
    tables: Arc<Vec<Table>>,
    noted: Arc<Mutex<Noted>>,
}

impl Capture {
    /// Reads the layout of `tables` and installs the hook on `conn`, which must be migrated already.
    pub(super) fn install(conn: &mut Connection, tables: &[&str]) -> Result<Capture> {
        let tables: Arc<Vec<Table>> = Arc::new(
            tables
                .iter()
                .map(|t| Table::read(conn, t))
                .collect::<Result<_>>()?,
        );
        let noted = Arc::new(Mutex::new(Noted::default()));
        let (hook_tables, hook_noted) = (tables.clone(), noted.clone());
        conn.preupdate_hook(Some(
            move |_: rusqlite::hooks::Action, db: &str, name: &str, case: &PreUpdateCase| {
                if db != "main" {
                    return;
                }
                let Some(ti) = hook_tables.iter().position(|t| t.name == name) else {
                    return;
                };
                let table = &hook_tables[ti];
                let mut noted = lock(&hook_noted);
                if !noted.armed || noted.failed.is_some() {
                    return;
                }
                let columns = match case {
                    PreUpdateCase::Insert(new) => new.get_column_count(),
                    PreUpdateCase::Delete(old) => old.get_column_count(),
                    PreUpdateCase::Update {
                        old_value_accessor: old,
                        ..
                    } => old.get_column_count(),
                    PreUpdateCase::Unknown => -1,
                };
                // Like the session: a table whose columns changed since its layout was read cannot be recorded.
                if usize::try_from(columns).ok() != Some(table.pk.len()) {
                    return noted.fail(format!(
                        "{name} has {columns} columns, not the {} the log was set up with",
                        table.pk.len()
                    ));
                }
                match case {
                    PreUpdateCase::Insert(new) => {
                        let get = |i| new.get_new_column_value(i).map(Val::from_ref);
                        noted.note(ti, table, FirstOp::Insert, new.get_query_depth(), &get);
                    }
                    PreUpdateCase::Delete(old) => {
                        let get = |i| old.get_old_column_value(i).map(Val::from_ref);
                        noted.note(ti, table, FirstOp::Existed, old.get_query_depth(), &get);
                    }
                    PreUpdateCase::Update {
                        old_value_accessor: old,
                        new_value_accessor: new,
                    } => {
                        let depth = old.get_query_depth();
                        let get_old = |i| old.get_old_column_value(i).map(Val::from_ref);
                        noted.note(ti, table, FirstOp::Existed, depth, &get_old);
                        let get_new = |i| new.get_new_column_value(i).map(Val::from_ref);
                        noted.note(ti, table, FirstOp::Insert, depth, &get_new);
                    }
                    PreUpdateCase::Unknown => noted.fail(format!("unknown change to {name}")),
                }
            },
        ))?;
        Ok(Capture { tables, noted })
    }

    /// Starts noting a transaction's changes; the returned watch ends it.
    pub(super) fn watch(&self) -> Watch<'_> {
        let mut noted = lock(&self.noted);
        noted.clear();
        noted.armed = true;
        Watch { capture: self }
    }
}

fn lock(noted: &Mutex<Noted>) -> MutexGuard<'_, Noted> {
    noted.lock().unwrap_or_else(|p| p.into_inner())
}

/// One transaction's capture in progress; dropping it forgets what was noted.
pub(super) struct Watch<'a> {
    capture: &'a Capture,
}

impl Watch<'_> {
    /// Whether the transaction wrote to a logged table at all.
    pub(super) fn is_empty(&self) -> bool {
        lock(&self.capture.noted).tables.is_empty()
    }

    /// The transaction's changeset, reading the changed rows as they are now (inside the transaction, before it
    /// commits); empty when nothing logged changed in the end.
    pub(super) fn changeset(self, conn: &Connection) -> Result<Vec<u8>> {
        let mut noted = lock(&self.capture.noted);
        noted.armed = false;
        if let Some(why) = noted.failed.take() {
            return Err(QsfsError::MetaLog(why));
        }
        let noted_tables = std::mem::take(&mut noted.tables);
        drop(noted);
        let mut out = Vec::new();
        for (ti, changes) in &noted_tables {
            let table = &self.capture.tables[*ti];
            let mut body = Vec::new();
            let mut select = conn.prepare_cached(&table.select)?;
            for row in &changes.rows {
                let now = select
                    .query_row(
                        rusqlite::params_from_iter(row.key.iter().map(as_sql)),
                        |r| {
                            (0..table.pk.len())
                                .map(|i| r.get_ref(i).map(Val::from_ref))
                                .collect::<rusqlite::Result<Vec<Val>>>()
                        },
                    )
                    .optional()?;
                append_row(&mut body, &table.pk, row, now.as_deref());
            }
            if !body.is_empty() {
                table.header(&mut out);
                out.extend_from_slice(&body);
            }
        }
        Ok(out)
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        lock(&self.capture.noted).clear();
    }
}

fn as_sql(v: &Val) -> rusqlite::types::ToSqlOutput<'_> {
    use rusqlite::types::ToSqlOutput::Borrowed;
    Borrowed(match v {
        Val::Null => ValueRef::Null,
        Val::Int(i) => ValueRef::Integer(*i),
        Val::Real(r) => ValueRef::Real(*r),
        Val::Text(t) => ValueRef::Text(t),
        Val::Blob(b) => ValueRef::Blob(b),
    })
}

/// One row's net change, as the session writes it: an INSERT of the row as it is now when it did not exist
/// before, a DELETE of its old values when it is gone, an UPDATE naming the key and the changed columns' old and
/// new values (others "undefined") when it changed, nothing when it is as it was.
fn append_row(out: &mut Vec<u8>, pk: &[u8], row: &RowChange, now: Option<&[Val]>) {
    let indirect = u8::from(row.indirect);
    match (row.first, now) {
        (FirstOp::Insert, Some(now)) => {
            out.extend_from_slice(&[OP_INSERT, indirect]);
            now.iter().for_each(|v| v.put(out));
        }
        (FirstOp::Insert, None) => {}
        (FirstOp::Existed, None) => {
            out.extend_from_slice(&[OP_DELETE, indirect]);
            row.old.iter().for_each(|v| v.put(out));
        }
        (FirstOp::Existed, Some(now)) => {
            let changed: Vec<bool> = row
                .old
                .iter()
                .zip(now)
                .map(|(o, n)| !o.same_as(n))
                .collect();
            if !changed.contains(&true) {
                return;
            }
            out.extend_from_slice(&[OP_UPDATE, indirect]);
            for (i, old) in row.old.iter().enumerate() {
                if changed[i] || pk[i] != 0 {
                    old.put(out);
                } else {
                    out.push(UNDEFINED);
                }
            }
            for (i, new) in now.iter().enumerate() {
                if changed[i] {
                    new.put(out);
                } else {
                    out.push(UNDEFINED);
                }
            }
        }
    }
}
