//! `capture` against the SQLite session extension it stands in for: the same random transactions on two copies
//! of one database, one watched by a session and one by the capture, must give the same changes, and the
//! capture's changeset must turn the old database into the new one.

use proptest::prelude::*;
use rusqlite::Connection;
use rusqlite::session::{ConflictType, Session};

use super::capture::Capture;
use super::journal::LOGGED_TABLES;

/// A table beside the volume's own with what they lack: a text key, a real column, and a primary key whose order
/// differs from the columns'.
const EXTRA: &str =
    "CREATE TABLE t (a INTEGER, b TEXT, c REAL, d BLOB, PRIMARY KEY (b, a)) WITHOUT ROWID";

fn tables() -> Vec<&'static str> {
    LOGGED_TABLES.iter().copied().chain(["t"]).collect()
}

fn database() -> Connection {
    let mut conn = Connection::open_in_memory().unwrap();
    super::schema::migrate(&mut conn).unwrap();
    conn.execute_batch(EXTRA).unwrap();
    conn.execute_batch(
        "PRAGMA foreign_keys = ON;
         INSERT INTO inodes (ino, kind, mode, uid, gid, atime_ns, mtime_ns, ctime_ns, crtime_ns)
             VALUES (1, 1, 493, 0, 0, 1, 1, 1, 1), (2, 0, 420, 0, 0, 1, 1, 1, 1), (3, 0, 420, 0, 0, 1, 1, 1, 1),
                    (4, 0, 420, 0, 0, 1, 1, 1, 1);
         INSERT INTO dirents VALUES (1, x'61', 2), (1, x'62', 3);
         INSERT INTO xattrs VALUES (2, x'61', x'01'), (3, x'61', x'02'), (3, x'62', x''), (4, x'61', x''),
                                   (4, x'62', x'01');
         INSERT INTO t VALUES (1, 'x', 1.5, x'00'), (2, 'x', NULL, NULL), (1, 'y', -0.0, x'ff');",
    )
    .unwrap();
    conn
}

#[derive(Clone, Debug)]
enum Op {
    AddInode(i64, i64),
    SetInode(i64, i64, Option<Vec<u8>>),
    DropInode(i64),
    Link(i64, u8, i64),
    Move(i64, u8, i64, u8),
    Unlink(i64, u8),
    PutXattr(i64, u8, Vec<u8>),
    DropXattr(i64, u8),
    PutT(i64, String, Option<f64>, Option<Vec<u8>>),
    SetT(i64, String, f64),
    ShiftT(String),
    DropT(i64, String),
    /// Runs the op inside a savepoint that is rolled back.
    Undone(Box<Op>),
}

fn op() -> impl Strategy<Value = Op> {
    let ino = 1i64..6;
    let name = 0u8..3;
    let blob = proptest::collection::vec(any::<u8>(), 0..3);
    let key = prop_oneof![
        Just("x".to_string()),
        Just("y".to_string()),
        Just("z".to_string())
    ];
    let leaf = prop_oneof![
        (ino.clone(), 0i64..3).prop_map(|(i, m)| Op::AddInode(i, m)),
        (ino.clone(), 0i64..3, proptest::option::of(blob.clone()))
            .prop_map(|(i, s, t)| Op::SetInode(i, s, t)),
        ino.clone().prop_map(Op::DropInode),
        (ino.clone(), name.clone(), ino.clone()).prop_map(|(p, n, i)| Op::Link(p, n, i)),
        (ino.clone(), name.clone(), ino.clone(), name.clone())
            .prop_map(|(p, n, q, m)| Op::Move(p, n, q, m)),
        (ino.clone(), name.clone()).prop_map(|(p, n)| Op::Unlink(p, n)),
        (ino.clone(), name.clone(), blob.clone()).prop_map(|(i, n, v)| Op::PutXattr(i, n, v)),
        (ino.clone(), name.clone()).prop_map(|(i, n)| Op::DropXattr(i, n)),
        (
            0i64..3,
            key.clone(),
            proptest::option::of(prop_oneof![
                Just(0.0),
                Just(-0.0),
                Just(1.5),
                Just(f64::NAN)
            ]),
            proptest::option::of(blob)
        )
            .prop_map(|(a, b, c, d)| Op::PutT(a, b, c, d)),
        (0i64..3, key.clone(), prop_oneof![Just(0.0), Just(1.5)])
            .prop_map(|(a, b, c)| Op::SetT(a, b, c)),
        key.clone().prop_map(Op::ShiftT),
        (0i64..3, key).prop_map(|(a, b)| Op::DropT(a, b)),
    ];
    leaf.prop_recursive(1, 4, 1, |inner| inner.prop_map(|o| Op::Undone(Box::new(o))))
}

/// Runs `op`; a statement that fails (a constraint, a foreign key) is rolled back by SQLite and the rest goes on.
fn run(conn: &Connection, op: &Op) {
    use rusqlite::params;
    let name = |n: &u8| vec![b'a' + n];
    let _ = match op {
        Op::AddInode(i, m) => conn.execute(
            "INSERT INTO inodes (ino, kind, mode, uid, gid, atime_ns, mtime_ns, ctime_ns, crtime_ns)
             VALUES (?1, 0, ?2, 0, 0, 2, 2, 2, 2)",
            params![i, m],
        ),
        Op::SetInode(i, s, t) => conn.execute(
            "UPDATE inodes SET size = ?2, target = ?3 WHERE ino = ?1",
            params![i, s, t],
        ),
        Op::DropInode(i) => conn.execute("DELETE FROM inodes WHERE ino = ?1", [i]),
        Op::Link(p, n, i) => conn.execute("INSERT INTO dirents VALUES (?1, ?2, ?3)", params![p, name(n), i]),
        Op::Move(p, n, q, m) => conn.execute(
            "UPDATE dirents SET parent = ?3, name = ?4 WHERE parent = ?1 AND name = ?2",
            params![p, name(n), q, name(m)],
        ),
        Op::Unlink(p, n) => conn.execute("DELETE FROM dirents WHERE parent = ?1 AND name = ?2", params![p, name(n)]),
        Op::PutXattr(i, n, v) => conn.execute(
            "INSERT OR REPLACE INTO xattrs VALUES (?1, ?2, ?3)",
            params![i, name(n), v],
        ),
        Op::DropXattr(i, n) => conn.execute("DELETE FROM xattrs WHERE ino = ?1 AND name = ?2", params![i, name(n)]),
        Op::PutT(a, b, c, d) => conn.execute("INSERT OR REPLACE INTO t VALUES (?1, ?2, ?3, ?4)", params![a, b, c, d]),
        Op::SetT(a, b, c) => conn.execute("UPDATE t SET c = ?3 WHERE a = ?1 AND b = ?2", params![a, b, c]),
        Op::ShiftT(b) => conn.execute("UPDATE t SET a = a + 1 WHERE b = ?1", [b]),
        Op::DropT(a, b) => conn.execute("DELETE FROM t WHERE a = ?1 AND b = ?2", params![a, b]),
        Op::Undone(inner) => {
            conn.execute_batch("SAVEPOINT undone").unwrap();
            run(conn, inner);
            conn.execute_batch("ROLLBACK TO undone; RELEASE undone").unwrap();
            Ok(0)
        }
    };
}

/// A changeset split into (table header, change) pairs, sorted: the session orders a table's rows by hash, the
/// capture by first change, and both are valid.
fn changes(cs: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    fn value_len(b: &[u8]) -> usize {
        match b[0] {
            0 | 5 => 1,
            1 | 2 => 9,
            _ => {
                let (mut n, mut i) = (0usize, 1);
                loop {
                    n = (n << 7) | usize::from(b[i] & 0x7f);
                    i += 1;
                    if b[i - 1] & 0x80 == 0 {
                        break i + n;
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    let (mut at, mut header, mut ncol) = (0, Vec::new(), 0);
    while at < cs.len() {
        if cs[at] == b'T' {
            ncol = usize::from(cs[at + 1]);
            let end = at + 2 + ncol + cs[at + 2 + ncol..].iter().position(|&c| c == 0).unwrap() + 1;
            header = cs[at..end].to_vec();
            at = end;
            continue;
        }
        let start = at;
        let records = if cs[at] == 23 { 2 } else { 1 };
        at += 2;
        for _ in 0..records * ncol {
            at += value_len(&cs[at..]);
        }
        out.push((header.clone(), cs[start..at].to_vec()));
    }
    out.sort();
    out
}

fn dump(conn: &Connection) -> Vec<String> {
    let mut rows = Vec::new();
    for table in tables() {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {table} ORDER BY 1, 2"))
            .unwrap();
        let n = stmt.column_count();
        let mut q = stmt.query([]).unwrap();
        while let Some(r) = q.next().unwrap() {
            let vals: Vec<String> = (0..n)
                .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                .collect();
            rows.push(format!("{table}: {}", vals.join(", ")));
        }
    }
    rows
}

fn check(ops: &[Op]) -> Result<(), TestCaseError> {
    let session_db = database();
    let mut capture_db = database();
    let replay_db = database();
    let capture = Capture::install(&mut capture_db, &tables()).unwrap();

    session_db.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut session = Session::new(&session_db).unwrap();
    let watched = tables();
    session.table_filter(Some(move |t: &str| watched.contains(&t)));
    session.attach::<&str>(None).unwrap();
    ops.iter().for_each(|o| run(&session_db, o));
    let mut expected = Vec::new();
    session.changeset_strm(&mut expected).unwrap();
    drop(session);

    capture_db.execute_batch("BEGIN IMMEDIATE").unwrap();
    let watch = capture.watch();
    ops.iter().for_each(|o| run(&capture_db, o));
    let got = watch.changeset(&capture_db).unwrap();
    capture_db.execute_batch("COMMIT").unwrap();

    prop_assert_eq!(changes(&got), changes(&expected));
    if changes(&expected).len() == 1 {
        prop_assert_eq!(&got, &expected);
    }
    // As a restore replays the log: cascades are in the log already.
    replay_db
        .execute_batch("PRAGMA foreign_keys = OFF")
        .unwrap();
    let mut input: &[u8] = &got;
    replay_db
        .apply_strm(
            &mut input,
            None::<fn(&str) -> bool>,
            |kind: ConflictType, _| panic!("conflict {kind:?}"),
        )
        .unwrap();
    prop_assert_eq!(dump(&replay_db), dump(&capture_db));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]
    #[test]
    fn capture_matches_a_session(ops in proptest::collection::vec(op(), 1..12)) {
        check(&ops)?;
    }
}

#[test]
fn a_transaction_that_changes_nothing_in_the_end_logs_nothing() {
    let mut conn = database();
    let capture = Capture::install(&mut conn, &tables()).unwrap();
    conn.execute_batch("BEGIN").unwrap();
    let watch = capture.watch();
    conn.execute_batch(
        "UPDATE inodes SET size = 9 WHERE ino = 2; UPDATE inodes SET size = 0 WHERE ino = 2",
    )
    .unwrap();
    assert!(!watch.is_empty(), "a logged table was written");
    assert!(watch.changeset(&conn).unwrap().is_empty());
}

#[test]
fn writes_outside_a_watch_are_not_noted() {
    let mut conn = database();
    let capture = Capture::install(&mut conn, &tables()).unwrap();
    conn.execute_batch("UPDATE inodes SET size = 9 WHERE ino = 2")
        .unwrap();
    let watch = capture.watch();
    assert!(watch.is_empty());
    assert!(watch.changeset(&conn).unwrap().is_empty());
}

#[test]
fn a_table_whose_columns_changed_since_install_is_an_error_not_a_short_changeset() {
    let mut conn = database();
    let capture = Capture::install(&mut conn, &tables()).unwrap();
    conn.execute_batch("ALTER TABLE t ADD COLUMN e INTEGER")
        .unwrap();
    let watch = capture.watch();
    conn.execute_batch("INSERT INTO t VALUES (7, 'w', 0.5, x'01', 3)")
        .unwrap();
    let err = watch.changeset(&conn).unwrap_err().to_string();
    assert!(err.contains("columns"), "{err}");
}
