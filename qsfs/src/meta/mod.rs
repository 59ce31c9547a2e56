//! The volume's metadata in SQLite: the namespace (inodes, directory entries, xattrs), the data map (segments and
//! their shards, the stores, garbage awaiting deletion) and, in later schema versions, operation queues (the
//! mount's upload queue; the repair queue in `ops`; audit history and checkpoint in `audit_log`).
//!
//! WAL mode, foreign keys on, a `schema_version` table and numbered migrations applied in one transaction each.
//! One writer connection behind a mutex: every change to the volume goes through `MetaStore::write`, which runs a
//! closure inside one IMMEDIATE transaction so a put or a rename commits all of its rows or none. Reads run on a
//! small pool of read-only connections, so a lookup never waits behind a writer's fsync (WAL readers see the last
//! committed state).
//!
//! Durability levels. `write` commits with `synchronous=FULL`: the WAL is fsynced before the commit returns. The
//! mount's namespace changes (create, mkdir, rename, chmod...) use `write_fast`, which commits with
//! `synchronous=NORMAL`: atomic and consistent, but the last few commits may be lost in a power cut. That keeps the
//! durability promise because every promise the filesystem makes (fsync, close, fsyncdir) ends in a FULL commit or
//! `sync`, and the WAL is one sequential file: fsyncing it makes every earlier frame durable too, so a FULL commit
//! also hardens all the NORMAL commits before it. Nothing a caller was promised rests on a NORMAL commit alone.

mod attrs;
mod audit_log;
mod capture;
#[cfg(test)]
mod capture_tests;
pub mod checks;
mod data;
mod fsops;
#[cfg(test)]
mod fsops_tests;
pub mod journal;
mod namespace;
mod ops;
mod packs;
mod queue;
pub mod reserve;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags};

use crate::error::{QsfsError, Result};

pub use attrs::*;
pub use audit_log::*;
pub use data::*;
pub use fsops::*;
pub use namespace::*;
pub use ops::*;
pub use packs::*;
pub use queue::*;
pub use schema::{SCHEMA_VERSION, migrate_image};

/// How long a statement waits for a lock held by another connection.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Read-only connections kept for `read`.
const READERS: usize = 4;

/// Pages in the write-ahead log at which a commit checkpoints it itself. SQLite's default is 1000, which a burst
/// of small files reaches every few dozen milliseconds; a mount checkpoints in the background instead
/// (`checkpoint`), and this only bounds the log when nothing does.
const WAL_BACKSTOP_PAGES: i64 = 4000;

pub struct MetaStore {
    conn: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    path: PathBuf,
    /// The writer's current `synchronous` level is FULL (changed only under the writer lock).
    full: std::sync::atomic::AtomicBool,
    /// Set while this copy of the volume is not its writer (see `crate::replica::lease`): why.
    read_only: Mutex<Option<String>>,
    /// Inline plaintext was uploaded and may still sit in the write-ahead log (see `scrub_if_due`).
    scrub_due: std::sync::atomic::AtomicBool,
    /// Room kept for commits on a full disk (see `reserve`).
    reserve: reserve::Reserve,
    /// Notes what each transaction changes, for the metadata log (see `capture`).
    capture: capture::Capture,
    /// A read-write connection that only checkpoints (see `checkpoint`).
    checkpointer: Mutex<Connection>,
    /// Commits so far, and how many there had been at the last checkpoint.
    commits: std::sync::atomic::AtomicU64,
    checkpointed: std::sync::atomic::AtomicU64,
}

impl MetaStore {
    /// Opens (and migrates) the database; `create` allows making a new file.
    pub fn open(path: &Path, create: bool) -> Result<MetaStore> {
        // First, so that on a full disk opening (WAL recovery, migrations) finds the reserve's room.
        let reserve = reserve::Reserve::open(path);
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
            // SQLite creates the database 0644 (less the umask) and gives its -wal and -shm the database file's
            // mode: creating it 0600 first keeps all three private.
            crate::private::file_options()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| QsfsError::io(format!("creating {}", path.display()), e))?;
        }
        let mut conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a committed transaction survives power loss, which the durability promise needs.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Deleted rows are overwritten with zeros, so a small file's plaintext queued inline (`queue`) does not
        // stay in the database file once it is uploaded.
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.set_prepared_statement_cache_capacity(64);
        schema::migrate(&mut conn)?;
        let capture = capture::Capture::install(&mut conn, journal::LOGGED_TABLES)?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_BACKSTOP_PAGES)?;
        let checkpointer = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Its own automatic checkpoints are off: it runs them when asked.
        checkpointer.pragma_update(None, "wal_autocheckpoint", 0)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            r.busy_timeout(std::time::Duration::from_secs(10))?;
            r.set_prepared_statement_cache_capacity(64);
            readers.push(Mutex::new(r));
        }
        Ok(MetaStore {
            conn: Mutex::new(conn),
            readers,
            path: path.to_path_buf(),
            full: std::sync::atomic::AtomicBool::new(true),
            read_only: Mutex::new(None),
            scrub_due: std::sync::atomic::AtomicBool::new(false),
            reserve,
            capture,
            checkpointer: Mutex::new(checkpointer),
            commits: std::sync::atomic::AtomicU64::new(0),
            checkpointed: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Like `write`, but commits with `synchronous=NORMAL` (no fsync): for namespace changes whose durability
    /// comes from a later FULL commit or `sync` (see the module docs).
    pub fn write_fast<T>(&self, f: impl FnMut(&Connection) -> Result<T>) -> Result<T> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        self.set_full(&conn, false)?;
        self.commit_with_room(&mut conn, f)
    }

    /// `commit_logged`, with the reserve's room on a full disk: released before the commit when the disk is nearly
    /// full, or after a commit that failed for want of space, which is then tried once more. (The closure may so
    /// run twice; every run is inside a transaction that was rolled back, so only the last one counts.)
    fn commit_with_room<T>(
        &self,
        conn: &mut Connection,
        mut f: impl FnMut(&Connection) -> Result<T>,
    ) -> Result<T> {
        self.reserve.release_if_low();
        match self.commit_logged(conn, &mut f) {
            Err(e) if is_disk_full(&e) && self.reserve.release() => self.commit_logged(conn, f),
            other => other,
        }
    }

    /// The mount's housekeeping: allocates the metadata's reserve again once the disk has room.
    pub fn restore_reserve(&self) {
        self.reserve.restore_if_room();
    }

    /// Refuses (with `why`) every later transaction that changes a replicated row; `None` allows them again.
    pub fn set_read_only(&self, why: Option<String>) {
        *self.read_only.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    /// Runs `f` in one IMMEDIATE transaction, records the changeset of what it changed in the metadata log's
    /// pending table (`journal`) and commits both together; an error rolls everything back. Every change to the
    /// volume's metadata passes through here, which is also where a read-only copy's changes are refused.
    fn commit_logged<T>(
        &self,
        conn: &mut Connection,
        f: impl FnOnce(&Connection) -> Result<T>,
    ) -> Result<T> {
        // BEGIN and COMMIT are cached statements: rusqlite's `Transaction` would parse both again for every commit.
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let _rollback = RollbackUnlessCommitted(conn);
        let watch = self.capture.watch();
        let out = f(conn)?;
        if !watch.is_empty()
            && let Some(why) = self
                .read_only
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        {
            return Err(QsfsError::ReadOnly(why));
        }
        journal::record(conn, &watch.changeset(conn)?)?;
        conn.prepare_cached("COMMIT")?.execute([])?;
        self.commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(out)
    }

    /// Copies what was committed since the last checkpoint from the write-ahead log into the database, on a
    /// connection of its own and without waiting for readers or the writer (a PASSIVE checkpoint): the mount runs
    /// this in the background so that commits answering FUSE requests never pay for copying and fsyncing pages.
    /// Returns whether there was anything to do.
    pub fn checkpoint(&self) -> Result<bool> {
        use std::sync::atomic::Ordering::Relaxed;
        let commits = self.commits.load(Relaxed);
        if commits == self.checkpointed.load(Relaxed) {
            return Ok(false);
        }
        let conn = self.checkpointer.lock().unwrap_or_else(|p| p.into_inner());
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        self.checkpointed.store(commits, Relaxed);
        Ok(true)
    }

    /// Copies a consistent image of the database to `dest` (`VACUUM INTO`) under the writer lock, so no commit
    /// lands half-way; returns the newest pending log entry's id at that moment (the image contains every change
    /// up to it, and none after).
    pub fn snapshot_into(&self, dest: &Path) -> Result<i64> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let pending = journal::last_pending(&conn)?;
        conn.execute("VACUUM INTO ?1", [dest.to_string_lossy()])?;
        Ok(pending)
    }

    /// Switches the writer's `synchronous` level (called with the writer lock held); a no-op when it is already
    /// there, so runs of commits of one kind pay nothing.
    fn set_full(&self, conn: &Connection, full: bool) -> Result<()> {
        if self.full.load(std::sync::atomic::Ordering::Relaxed) != full {
            conn.pragma_update(None, "synchronous", if full { "FULL" } else { "NORMAL" })?;
            self.full.store(full, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Makes every commit so far durable: fsyncs the write-ahead log (where NORMAL commits sit until a
    /// checkpoint, which syncs the database file itself). For fsync/fsyncdir when nothing else needs writing.
    pub fn sync(&self) -> Result<()> {
        // Without the writer lock: every commit that returned before this call has its frames in the log file (or,
        // once a checkpoint restarted the log, in the database file, which the checkpoint synced first), and an
        // fsync makes them all durable; so commits need not wait behind this one.
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        match std::fs::File::open(&wal) {
            Ok(f) => f
                .sync_all()
                .map_err(|e| QsfsError::io("syncing the metadata log", e)),
            // No log file: everything has been checkpointed into the (synced) database file.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(QsfsError::io("opening the metadata log", e)),
        }
    }

    /// Notes that a queued segment with its plaintext in its row was uploaded (and its row deleted):
    /// `scrub_if_due` then clears it out of the write-ahead log.
    pub fn note_inline_uploaded(&self) {
        self.scrub_due
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Once an inline upload was noted and no queued segment keeps plaintext in its row any more, checkpoints
    /// the write-ahead log into the database and truncates it: `secure_delete` zeroes deleted rows in the
    /// database's pages, but the log still holds the frames that inserted them until it is checkpointed and reset.
    /// Never waits: with a reader in the way the checkpoint is skipped and tried again at the next call (the
    /// mount's housekeeping round, twice a second), so no commit ever queues behind it.
    pub fn scrub_if_due(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        if !self.scrub_due.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let done = (|| -> Result<bool> {
            if queue::any_inline(&conn)? {
                return Ok(false); // the last of a burst of small files scrubs for all of them
            }
            conn.busy_timeout(std::time::Duration::ZERO)?;
            let busy = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            });
            conn.busy_timeout(BUSY_TIMEOUT)?;
            Ok(busy? == 0)
        })();
        if !matches!(done, Ok(true)) {
            self.scrub_due.store(true, Ordering::Release);
        }
        done.map(|_| ())
    }

    /// Runs `f` in one IMMEDIATE transaction and commits it; an error rolls everything back.
    pub fn write<T>(&self, f: impl FnMut(&Connection) -> Result<T>) -> Result<T> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        self.set_full(&conn, true)?;
        self.commit_with_room(&mut conn, f)
    }

    /// A short read for the mount's hot paths (getattr, lookup): on the writer connection when no commit holds it,
    /// else like `read`. While this holds the writer lock nothing can commit, so `f` sees one state without a
    /// transaction of its own; and the writer's page cache is current, where a reader connection must drop its
    /// cache and read pages again after every commit. Never for scans: a commit waits for it.
    pub fn read_short<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        match self.conn.try_lock() {
            Ok(conn) => f(&conn),
            Err(_) => self.read(f),
        }
    }

    /// Runs `f` on the connection for reads (a consistent snapshot inside one deferred transaction).
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        // Any idle reader will do; if all are busy, queue on one chosen by thread so waits spread out.
        let mut guard = self.readers.iter().find_map(|r| r.try_lock().ok());
        let mut conn = match guard.take() {
            Some(g) => g,
            None => {
                let i = thread_slot() % self.readers.len();
                self.readers[i].lock().unwrap_or_else(|p| p.into_inner())
            }
        };
        let tx = conn.transaction()?;
        let out = f(&tx)?;
        tx.finish()?;
        Ok(out)
    }
}

/// Rolls back the writer's open transaction when dropped: after an error, a COMMIT that failed (a full disk
/// leaves the transaction open), or a panic in the closure.
struct RollbackUnlessCommitted<'a>(&'a Connection);

impl Drop for RollbackUnlessCommitted<'_> {
    fn drop(&mut self) {
        if !self.0.is_autocommit()
            && let Err(e) = self.0.execute_batch("ROLLBACK")
        {
            tracing::warn!(error = %e, "rolling back a metadata transaction failed");
        }
    }
}

/// SQLITE_FULL: the disk (or the database's size limit) has no room for the commit.
fn is_disk_full(e: &QsfsError) -> bool {
    matches!(e, QsfsError::Metadata(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::DiskFull)
}

fn thread_slot() -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::thread::current().id().hash(&mut h);
    h.finish() as usize
}

/// `YYYY-MM-DD HH:MM` in UTC (days-to-civil conversion; no time zone database needed).
pub fn utc_time(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
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
