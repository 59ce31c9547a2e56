//! Stores dying under a mount: six real redis-servers, write quorum 5, a writer making every record durable.
//! One server SIGKILLed mid-write: writes complete on the other five or fail with an error. A second one killed
//! (four left, below the quorum): every fsync started afterwards must fail — an fsync that returns 0 then would be
//! a promise the stores cannot keep — while a local-first close succeeds and its data reaches the stores later. Whatever was acknowledged reads back exactly, with
//! the servers down, after they restart, after a remount and through `qsfs get`.

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use super::fuse_available;
use super::mount::{Mount, wait_for};
use super::writer::{OnError, Writer, assert_acks, check_acks};
use crate::helpers::{Redis, Vol, s, strs};

/// Polls `cond` until it holds, panicking with `what` after `timeout`.
#[track_caller]
fn wait_until(timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
    assert!(
        wait_for(timeout, cond),
        "timed out after {timeout:?} waiting for {what}"
    );
}

#[test]
fn redis_store_killed_mid_write_never_loses_acknowledged_data() {
    if !fuse_available("redis_store_killed_mid_write_never_loses_acknowledged_data") {
        return;
    }
    let mut r = Redis::start(6);
    let v = Vol::new();
    let stores = r.store_args(0);
    let mut args = vec!["--segment-size", "64KiB", "--write-quorum", "5"];
    args.extend(strs(&stores));
    v.init(&args);
    let mp = v.scratch("mnt");

    let m = Mount::start(&v, &mp, &[]);
    let dir = m.path("w");
    let w = Writer::spawn(&dir, "rec", 7, OnError::NewFile);
    wait_until(Duration::from_secs(300), "10 acknowledged records", || {
        w.acks() >= 10 || w.is_done()
    });
    assert!(
        w.acks() >= 10,
        "no progress with all six stores up: {:#?}\nmount output:\n{}",
        w.log.lock().unwrap().attempts,
        m.log_text()
    );

    // One store dies mid-write: five left, exactly the quorum.
    r.kill(1);
    let t1 = Instant::now();
    wait_until(
        Duration::from_secs(300),
        "10 attempts after the first kill",
        || w.finished_since(t1).len() >= 10 || w.is_done(),
    );
    let after1 = w.finished_since(t1);
    let ok1 = after1.iter().filter(|a| a.error.is_none()).count();
    eprintln!(
        "one redis-server killed: {ok1} of {} later records acknowledged, errors: {:?}",
        after1.len(),
        after1
            .iter()
            .filter_map(|a| a.error.as_deref())
            .collect::<Vec<_>>()
    );

    // A second one: four left, below the write quorum of five.
    r.kill(4);
    let t2 = Instant::now();
    wait_until(
        Duration::from_secs(300),
        "6 attempts after the second kill",
        || w.finished_since(t2).len() >= 6 || w.is_done(),
    );
    let log = w.stop(Duration::from_secs(300));
    let after2: Vec<_> = log.attempts.iter().filter(|a| a.started > t2).collect();
    let ok2: Vec<_> = after2.iter().filter(|a| a.error.is_none()).collect();
    eprintln!(
        "two redis-servers killed: {} of {} later records acknowledged; errors: {:?}",
        ok2.len(),
        after2.len(),
        after2
            .iter()
            .filter_map(|a| a.error.as_deref())
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(
        after2.len() >= 6,
        "the writer stopped early: {:#?}",
        log.attempts.iter().rev().take(10).collect::<Vec<_>>()
    );
    assert!(
        ok2.is_empty(),
        "with 4 of 6 stores up and write quorum 5, these durability calls returned success: {ok2:#?}"
    );

    // close is local-first: below the quorum it still succeeds (the bytes wait in the local upload queue), while
    // fsync, the promise that the data is on the stores, must fail rather than return 0.
    let below = dir.join("close-below-quorum");
    let f = std::fs::File::create(&below).expect("create (metadata only) works below the quorum");
    f.write_all_at(b"written below the write quorum\n", 0)
        .expect("a write into the local staging works below the quorum");
    let closed = nix::unistd::close(f);
    assert!(
        closed.is_ok(),
        "a local-first close needs no store, yet failed: {closed:?}"
    );
    let synced = std::fs::File::open(&below).and_then(|f| f.sync_all());
    eprintln!("fsync of a closed file with two redis-servers down: {synced:?}");
    assert!(
        synced.is_err(),
        "fsync returned 0 with 4 of 6 stores up and write quorum 5"
    );

    // Everything acknowledged reads back: now (K = 4 stores left), after the servers restart, after a remount.
    assert_acks(&dir, &log.acks, "with two redis-servers down");
    r.servers[1].restart().expect("restart redis-server 1");
    r.servers[4].restart().expect("restart redis-server 4");
    assert_acks(&dir, &log.acks, "after the redis-servers restarted");

    // With the servers back, writes work again (the mount may take a while to notice).
    let probe = dir.join("after-restart");
    let recovered = wait_for(Duration::from_secs(120), || {
        std::fs::write(&probe, b"stores are back\n").is_ok()
            && std::fs::File::open(&probe)
                .and_then(|f| f.sync_all())
                .is_ok()
    });
    eprintln!("a write after the restart succeeded within 120 s: {recovered}");
    let first_log = m.log_path();
    m.umount();

    let m = Mount::start(&v, &mp, &[]);
    let problems = check_acks(&m.path("w"), &log.acks);
    if !problems.is_empty() {
        // What the metadata says about the files' segments, for the report.
        let segments = super::sh(
            "sqlite3",
            &[
                "-readonly",
                s(&v.path.join("meta.db")),
                "SELECT d.name, i.size, group_concat(sg.idx || ':' || sg.plain_len, ' ') FROM dirents d \
                 JOIN inodes i ON i.ino = d.ino LEFT JOIN segments sg ON sg.ino = d.ino \
                 GROUP BY d.ino ORDER BY d.name;",
            ],
        );
        eprintln!(
            "segments in meta.db after the remount:\n{}",
            segments.describe()
        );
    }
    assert!(
        problems.is_empty(),
        "after a remount, acknowledged records are lost or wrong:\n  {}\nthe writer's attempts (kills at {t1:?} and \
         {t2:?}):\n{:#?}\nfirst mount's output:\n{}\nsecond mount's output:\n{}",
        problems.join("\n  "),
        log.attempts,
        std::fs::read_to_string(&first_log).unwrap_or_default(),
        m.log_text()
    );
    assert_eq!(
        std::fs::read(m.path("w/close-below-quorum")).expect("the file closed below the quorum"),
        b"written below the write quorum\n",
        "a file closed while the stores were away reaches them once they are back"
    );
    m.umount();
    let out = v.fresh_path("out");
    v.ok(&["get", "/w", s(&out)]);
    assert_acks(&out, &log.acks, "through qsfs get");
    assert!(
        recovered,
        "no write succeeded within 120 s of the redis-servers restarting"
    );
    v.ok(&["fsck"]);
}
