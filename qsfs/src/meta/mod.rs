//! The volume's metadata in SQLite: the namespace (inodes, directory entries, xattrs), the data map (segments and
//! their shards, the stores, garbage awaiting deletion) and, in later schema versions, operation queues.
//!
//! WAL mode, foreign keys on, a `schema_version` table and numbered migrations applied in one transaction each.
//! One writer connection behind a mutex: every change to the volume goes through `MetaStore::write`, which runs a
//! closure inside one IMMEDIATE transaction so a put or a rename commits all of its rows or none.

mod data;
mod namespace;
mod schema;

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::error::{QsfsError, Result};

pub use data::*;
pub use namespace::*;
pub use schema::SCHEMA_VERSION;

pub struct MetaStore {
    conn: Mutex<Connection>,
}

impl MetaStore {
    /// Opens (and migrates) the database; `create` allows making a new file.
    pub fn open(path: &Path, create: bool) -> Result<MetaStore> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let mut conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a committed transaction survives power loss, which the durability promise needs.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.set_prepared_statement_cache_capacity(64);
        schema::migrate(&mut conn)?;
        Ok(MetaStore {
            conn: Mutex::new(conn),
        })
    }

    /// Runs `f` in one IMMEDIATE transaction and commits it; an error rolls everything back.
    pub fn write<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` on the connection for reads (a consistent snapshot inside one deferred transaction).
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        let out = f(&tx)?;
        tx.finish()?;
        Ok(out)
    }
}

pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl From<QsfsError> for rusqlite::Error {
    fn from(e: QsfsError) -> Self {
        rusqlite::Error::ToSqlConversionFailure(Box::new(e))
    }
}
