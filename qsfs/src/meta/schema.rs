//! Schema versions and the migrations between them. A database newer than this binary is refused rather than
//! guessed at.

use rusqlite::Connection;

use crate::error::{QsfsError, Result};

/// Each entry upgrades the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: namespace, data map, stores.
    r#"
    CREATE TABLE inodes (
        ino       INTEGER PRIMARY KEY AUTOINCREMENT,
        kind      INTEGER NOT NULL,
        mode      INTEGER NOT NULL,
        uid       INTEGER NOT NULL,
        gid       INTEGER NOT NULL,
        size      INTEGER NOT NULL DEFAULT 0,
        nlink     INTEGER NOT NULL DEFAULT 0,
        rdev      INTEGER NOT NULL DEFAULT 0,
        atime_ns  INTEGER NOT NULL,
        mtime_ns  INTEGER NOT NULL,
        ctime_ns  INTEGER NOT NULL,
        crtime_ns INTEGER NOT NULL,
        target    BLOB
    );
    CREATE TABLE dirents (
        parent INTEGER NOT NULL REFERENCES inodes(ino),
        name   BLOB NOT NULL,
        ino    INTEGER NOT NULL REFERENCES inodes(ino),
        PRIMARY KEY (parent, name)
    ) WITHOUT ROWID;
    CREATE INDEX dirents_by_ino ON dirents(ino);
    CREATE TABLE xattrs (
        ino   INTEGER NOT NULL REFERENCES inodes(ino) ON DELETE CASCADE,
        name  BLOB NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (ino, name)
    ) WITHOUT ROWID;
    CREATE TABLE stores (
        id         INTEGER PRIMARY KEY,
        uri        TEXT NOT NULL,
        state      INTEGER NOT NULL DEFAULT 0,
        last_seen  INTEGER,
        last_error TEXT
    );
    CREATE TABLE segments (
        id         INTEGER PRIMARY KEY,
        ino        INTEGER NOT NULL REFERENCES inodes(ino),
        idx        INTEGER NOT NULL,
        plain_len  INTEGER NOT NULL,
        stored_len INTEGER NOT NULL,
        shard_len  INTEGER NOT NULL,
        nonce      BLOB NOT NULL,
        flags      INTEGER NOT NULL,
        UNIQUE (ino, idx)
    );
    CREATE TABLE shards (
        segment_id INTEGER NOT NULL REFERENCES segments(id) ON DELETE CASCADE,
        idx        INTEGER NOT NULL,
        store_id   INTEGER REFERENCES stores(id),
        locator    BLOB,
        blob_len   INTEGER NOT NULL,
        root       BLOB NOT NULL,
        state      INTEGER NOT NULL,
        PRIMARY KEY (segment_id, idx)
    ) WITHOUT ROWID;
    CREATE INDEX shards_by_store ON shards(store_id);
    CREATE TABLE garbage (
        id       INTEGER PRIMARY KEY,
        store_id INTEGER NOT NULL REFERENCES stores(id),
        locator  BLOB NOT NULL,
        since_ns INTEGER NOT NULL
    );
    "#,
    // 1 -> 2: the mount's persistent upload queue (`qsfs mount --writeback`): segments whose plaintext is durable
    // in VOLUME/cache/queue/FILE and whose inode size is already committed, waiting to be encoded and placed.
    r#"
    CREATE TABLE upload_queue (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        ino       INTEGER NOT NULL REFERENCES inodes(ino) ON DELETE CASCADE,
        idx       INTEGER NOT NULL,
        plain_len INTEGER NOT NULL,
        file      TEXT NOT NULL,
        since_ns  INTEGER NOT NULL
    );
    CREATE INDEX upload_queue_by_ino ON upload_queue(ino, idx);
    "#,
    // 2 -> 3: audits and self-healing. `repair_queue` holds every shard that must be rebuilt or moved; triggers
    // queue a shard in the same transaction that records it missing or corrupt (a failed write, a read, an audit),
    // so no path can forget to. Rows die with their segment. `audits`/`audit_stores` are the audit history,
    // `audit_checkpoint` lets an interrupted full audit resume. `stores.down_since_ns` is when a store was first
    // seen unreachable (NULL while reachable): the lost-store grace period counts from it.
    r#"
    ALTER TABLE stores ADD COLUMN down_since_ns INTEGER;
    CREATE TABLE repair_queue (
        segment_id INTEGER NOT NULL REFERENCES segments(id) ON DELETE CASCADE,
        idx        INTEGER NOT NULL,
        reason     INTEGER NOT NULL,
        since_ns   INTEGER NOT NULL,
        attempts   INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        PRIMARY KEY (segment_id, idx)
    ) WITHOUT ROWID;
    CREATE TRIGGER shards_bad_on_insert AFTER INSERT ON shards WHEN NEW.state <> 0
    BEGIN
        INSERT OR IGNORE INTO repair_queue (segment_id, idx, reason, since_ns)
        VALUES (NEW.segment_id, NEW.idx, NEW.state, CAST(unixepoch('subsec') * 1000000000 AS INTEGER));
    END;
    CREATE TRIGGER shards_bad_on_update AFTER UPDATE OF state ON shards WHEN NEW.state <> 0
    BEGIN
        INSERT OR IGNORE INTO repair_queue (segment_id, idx, reason, since_ns)
        VALUES (NEW.segment_id, NEW.idx, NEW.state, CAST(unixepoch('subsec') * 1000000000 AS INTEGER));
    END;
    INSERT OR IGNORE INTO repair_queue (segment_id, idx, reason, since_ns)
        SELECT segment_id, idx, state, CAST(unixepoch('subsec') * 1000000000 AS INTEGER) FROM shards WHERE state <> 0;
    CREATE TABLE audits (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        started_ns  INTEGER NOT NULL,
        finished_ns INTEGER NOT NULL,
        mode        TEXT NOT NULL,
        verdict     TEXT NOT NULL,
        failures    INTEGER NOT NULL,
        report      TEXT NOT NULL
    );
    CREATE TABLE audit_stores (
        audit_id INTEGER NOT NULL REFERENCES audits(id) ON DELETE CASCADE,
        store_id INTEGER NOT NULL,
        checked  INTEGER NOT NULL,
        passed   INTEGER NOT NULL,
        PRIMARY KEY (audit_id, store_id)
    ) WITHOUT ROWID;
    CREATE TABLE audit_checkpoint (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        scope      TEXT NOT NULL,
        started_ns INTEGER NOT NULL,
        done_through INTEGER NOT NULL,
        partial    TEXT NOT NULL
    );
    "#,
    // 3 -> 4: small queued segments keep their bytes in the queue row itself (`data`, with `file` empty), so a
    // `--writeback` close of a small file costs one SQLite commit instead of a file fsync, a rename and a
    // directory fsync before it.
    r#"
    ALTER TABLE upload_queue ADD COLUMN data BLOB;
    "#,
    // 4 -> 5: the metadata log (see `journal`). `meta_log_pending` holds each committed transaction's changeset
    // (SQLite session extension) until it is shipped to the stores as a log record; `meta_log_state` is the head
    // of the shipped chain: the last record's sequence number and hash, the newest snapshot's, and the writer
    // epoch the chain is written in.
    r#"
    CREATE TABLE meta_log_pending (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        changeset BLOB NOT NULL
    );
    CREATE TABLE meta_log_state (
        id            INTEGER PRIMARY KEY CHECK (id = 1),
        seq           INTEGER NOT NULL,
        hash          BLOB NOT NULL,
        snapshot_seq  INTEGER NOT NULL,
        snapshot      BLOB,
        since_bytes   INTEGER NOT NULL,
        since_records INTEGER NOT NULL,
        epoch         INTEGER NOT NULL
    );
    INSERT INTO meta_log_state VALUES (1, 0, zeroblob(32), 0, NULL, 0, 0, 1);
    "#,
    // 5 -> 6: pack segments (see `packs`). A pack is a segment of the hidden pack holder inode (0) carrying the
    // bytes of many small file segments; such a file segment has no shards of its own and names its pack and
    // the offset of its bytes in the pack's plaintext.
    r#"
    ALTER TABLE segments ADD COLUMN pack_id INTEGER;
    ALTER TABLE segments ADD COLUMN pack_off INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX segments_by_pack ON segments(pack_id) WHERE pack_id IS NOT NULL;
    "#,
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings a database image (a restored snapshot) up to this binary's schema before the log's changesets are
/// applied to it: changesets recorded under an older schema still apply to the added columns' defaults.
pub fn migrate_image(conn: &mut Connection) -> Result<()> {
    migrate(conn)
}

pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let current: Option<i64> = conn
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .map(Some)
        .or_else(|e| {
            if e == rusqlite::Error::QueryReturnedNoRows {
                Ok(None)
            } else {
                Err(e)
            }
        })?;
    let mut version = current.unwrap_or(0);
    if version > SCHEMA_VERSION {
        return Err(QsfsError::SchemaTooNew {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    while version < SCHEMA_VERSION {
        let tx = conn.transaction()?;
        tx.execute_batch(MIGRATIONS[version as usize])?;
        version += 1;
        if current.is_none() && version == 1 {
            tx.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                [version],
            )?;
        } else {
            tx.execute("UPDATE schema_version SET version = ?1", [version])?;
        }
        tx.commit()?;
    }
    Ok(())
}
