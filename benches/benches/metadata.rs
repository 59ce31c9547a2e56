//! What one metadata change costs, and where: the floor under every create and close in the mount, which commit
//! one SQLite transaction each and record that transaction's changeset for the metadata log.
//!
//! - `create, one transaction each`: `MetaStore::write_fast` around `create_node`, as the mount's create does
//!   (IMMEDIATE transaction, the changes captured, the changeset stored, an unsynced commit).
//! - `create, 256 per transaction`: the same creates grouped into one commit and one changeset: what grouping a
//!   burst into one transaction would cost per create.
//! - `create, one transaction each, a session each`: the same transaction on a plain connection to the same
//!   database, recorded by an SQLite session per transaction (the way the log was recorded before).
//! - `create, one transaction each, no log`: the same, with no session and no changeset: the commit alone.
//! - the same four for `set_size_times`, the row update a close of a written file commits.
//!
//! The database lives under `BENCH_DIR` (default: the system temp directory), which should be on the disk being
//! judged: `cargo bench -p qsfs-benches --bench metadata`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use qsfs::meta::{self, MetaStore, NewInode, ROOT_INO};
use qsfs_benches::bench_dir;
use rusqlite::session::Session;
use rusqlite::{Connection, TransactionBehavior};

/// Changes grouped into one transaction in the grouped cases.
const GROUP: u64 = 256;

/// How each change is committed through `MetaStore`.
#[derive(Clone, Copy)]
enum Commit {
    Each,
    Grouped,
}

/// Runs `iters` changes (`change(conn, n)` for a fresh `n` each) committed as `how` says; returns the time taken.
fn run(
    m: &MetaStore,
    counter: &AtomicU64,
    iters: u64,
    how: Commit,
    change: impl Fn(&Connection, u64) -> qsfs::Result<()>,
) -> Duration {
    let start = Instant::now();
    let mut left = iters;
    while left > 0 {
        let n = match how {
            Commit::Each => 1,
            Commit::Grouped => left.min(GROUP),
        };
        m.write_fast(|c| {
            for _ in 0..n {
                change(c, counter.fetch_add(1, Ordering::Relaxed))?;
            }
            Ok(())
        })
        .expect("metadata commit");
        left -= n;
    }
    start.elapsed()
}

/// Runs `iters` changes, one IMMEDIATE transaction each, on a plain connection; with `session`, each transaction
/// is watched by an SQLite session whose changeset is taken before the commit (how the log was recorded before
/// `MetaStore` captured changes itself). Returns the time taken.
fn run_plain(
    conn: &mut Connection,
    counter: &AtomicU64,
    iters: u64,
    session: bool,
    change: impl Fn(&Connection, u64) -> qsfs::Result<()>,
) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let i = counter.fetch_add(1, Ordering::Relaxed);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .expect("begin");
        if session {
            let mut watch = Session::new(&tx).expect("session");
            watch.table_filter(Some(|t: &str| meta::journal::LOGGED_TABLES.contains(&t)));
            watch.attach::<&str>(None).expect("attach");
            change(&tx, i).expect("change");
            let mut bytes = Vec::new();
            watch.changeset_strm(&mut bytes).expect("changeset");
            std::hint::black_box(bytes);
        } else {
            change(&tx, i).expect("change");
        }
        tx.commit().expect("commit");
    }
    start.elapsed()
}

/// A second connection to the metadata database, set up as `MetaStore`'s writer is for the mount's namespace
/// commits (write-ahead log, `synchronous=NORMAL`, foreign keys and secure delete on).
fn plain_connection(path: &std::path::Path) -> Connection {
    let conn = Connection::open(path).expect("plain connection");
    for (pragma, value) in [
        ("synchronous", "NORMAL"),
        ("foreign_keys", "ON"),
        ("secure_delete", "ON"),
    ] {
        conn.pragma_update(None, pragma, value).expect(pragma);
    }
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    conn
}

fn metadata(c: &mut Criterion) {
    let dir = bench_dir();
    let path = dir.path().join("meta.db");
    let m = MetaStore::open(&path, true).expect("metadata database");
    m.write(|c| meta::ensure_root(c, 0, 0)).expect("root");
    let mut plain = plain_connection(&path);
    let counter = AtomicU64::new(0);
    let cases = [
        ("one transaction each", Commit::Each),
        ("256 per transaction", Commit::Grouped),
    ];
    let plain_cases = [
        ("one transaction each, a session each", true),
        ("one transaction each, no log", false),
    ];

    let mut g = c.benchmark_group("metadata change");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    let create = |c: &Connection, i: u64| {
        meta::create_node(
            c,
            ROOT_INO,
            format!("f{i}").as_bytes(),
            &NewInode::test_file(),
        )
        .map(|_| ())
    };
    for (name, how) in cases {
        g.bench_function(format!("create, {name}"), |b| {
            b.iter_custom(|iters| run(&m, &counter, iters, how, create))
        });
    }
    for (name, session) in plain_cases {
        g.bench_function(format!("create, {name}"), |b| {
            b.iter_custom(|iters| run_plain(&mut plain, &counter, iters, session, create))
        });
    }
    // The close's update, over the files created above (inode numbers from 2 up, the root being 1).
    let created = counter.load(Ordering::Relaxed).max(1);
    let update_counter = AtomicU64::new(0);
    let update = |c: &Connection, i: u64| {
        let ino = 2 + i % created;
        meta::set_size_times(c, ino, 1024 + i, i as i64, i as i64)
    };
    for (name, how) in cases {
        g.bench_function(format!("size update, {name}"), |b| {
            b.iter_custom(|iters| run(&m, &update_counter, iters, how, update))
        });
    }
    for (name, session) in plain_cases {
        g.bench_function(format!("size update, {name}"), |b| {
            b.iter_custom(|iters| run_plain(&mut plain, &update_counter, iters, session, update))
        });
    }
    g.finish();
}

criterion_group!(benches, metadata);
criterion_main!(benches);
