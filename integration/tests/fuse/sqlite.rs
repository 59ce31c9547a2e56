//! A real database on the mount: the `sqlite3` CLI creates, fills, updates, deletes, vacuums and checks two
//! databases (rollback journal and WAL) inside the mount; `PRAGMA integrity_check` says ok, and the contents are
//! the same after a remount and after `qsfs get` of the unmounted volume.

use std::fs;
use std::path::Path;

use super::mount::Mount;
use super::{fuse_available, sh};
use crate::helpers::{Vol, s};

/// `sqlite3 DB` fed `sql` on its command line (several statements; dot-commands are not needed).
#[track_caller]
fn sqlite(db: &Path, sql: &str) -> String {
    sh("sqlite3", &["-batch", "-bail", s(db), sql]).ok()
}

#[track_caller]
fn assert_integrity_ok(db: &Path) {
    let out = sqlite(db, "PRAGMA integrity_check;");
    assert_eq!(
        out.trim(),
        "ok",
        "PRAGMA integrity_check on {}",
        db.display()
    );
}

/// A digest of the table's contents: row count, byte count and an order-dependent fold of every row.
fn digest(db: &Path) -> String {
    sqlite(
        db,
        "SELECT count(*), sum(length(v)), sum(id * length(v)), group_concat(substr(hex(v), 1, 8), '') \
         FROM (SELECT id, v FROM t ORDER BY id);",
    )
}

/// Creates the table and works it over: 20,000 rows in one transaction, an index, updates, deletes, 200 small
/// autocommit transactions (each a journal or WAL commit with fsyncs), VACUUM.
fn workload(db: &Path, journal: &str) {
    sqlite(
        db,
        &format!(
            "PRAGMA journal_mode={journal};
             CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT NOT NULL, v BLOB NOT NULL);
             BEGIN;
             WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000)
               INSERT INTO t SELECT x, hex(randomblob(8)), randomblob(100 + (x * 37) % 900) FROM c;
             COMMIT;
             CREATE INDEX t_k ON t(k);
             UPDATE t SET v = randomblob(2000) WHERE id % 7 = 0;
             DELETE FROM t WHERE id % 11 = 0;"
        ),
    );
    let small: String = (0..200)
        .map(|i| {
            format!(
                "INSERT INTO t VALUES ({}, 'small{i}', randomblob(64));\n",
                100_000 + i
            )
        })
        .collect();
    sqlite(db, &small);
    sqlite(db, "VACUUM;");
    if journal == "WAL" {
        sqlite(db, "PRAGMA wal_checkpoint(TRUNCATE);");
    }
}

#[test]
fn sqlite_database_in_mount_passes_integrity_check() {
    if !fuse_available("sqlite_database_in_mount_passes_integrity_check") {
        return;
    }
    let v = Vol::new();
    v.init_default(&["--segment-size", "64KiB"]);
    let mp = v.scratch("mnt");

    let m = Mount::start(&v, &mp, &[]);
    fs::create_dir(m.path("db")).unwrap();
    let mut digests = Vec::new();
    for (name, journal) in [("delete.db", "DELETE"), ("wal.db", "WAL")] {
        let db = m.path("db").join(name);
        workload(&db, journal);
        assert_integrity_ok(&db);
        let d = digest(&db);
        assert!(
            d.starts_with("18382|"),
            "{name}: unexpected row count in digest {d:.80}"
        );
        digests.push((name, d));
    }
    m.umount();

    let m = Mount::start(&v, &mp, &[]);
    for (name, d) in &digests {
        let db = m.path("db").join(name);
        assert_integrity_ok(&db);
        assert_eq!(&digest(&db), d, "{name} changed across a remount");
    }
    m.umount();

    let out = v.scratch("out");
    for (name, d) in &digests {
        let local = out.join(name);
        v.ok(&["get", &format!("/db/{name}"), s(&local)]);
        assert_integrity_ok(&local);
        assert_eq!(&digest(&local), d, "{name} read back with `qsfs get`");
    }
    v.ok(&["fsck"]);
}
