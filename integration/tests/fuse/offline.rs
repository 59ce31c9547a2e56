//! Offline: fewer than `write_quorum` stores answer (two of six redis-servers killed mid-copy, quorum 5). Writes
//! keep landing in staging and `close` succeeds, up to `--staging-limit`; reads of the staged data work; past the
//! limit a write waits for uploads (30 s), then fails with ENOSPC; `fsync` waits for the file's uploads (30 s),
//! then fails with EIO and keeps the data. When the stores return, the queued uploads finish on their own,
//! `fsync` succeeds, and after the unmount every closed byte reads back and `qsfs audit --full` is clean.

use std::fs;
use std::time::{Duration, Instant};

use super::full_disk::{Written, assert_reads_back, write_file};
use super::mount::Mount;
use super::{fuse_available, sh};
use crate::helpers::{Redis, Vol, s, strs};

const MIB: usize = 1 << 20;

/// Rows in the volume's upload queue, read while a mount holds it.
fn upload_queue(v: &Vol) -> Option<u64> {
    let out = sh(
        "sqlite3",
        &[
            "-readonly",
            s(&v.path.join("meta.db")),
            "SELECT count(*) FROM upload_queue;",
        ],
    );
    out.stdout.trim().parse().ok()
}

#[test]
fn offline_writes_fill_staging_to_the_limit_and_upload_when_stores_return() {
    if !fuse_available("offline_writes_fill_staging_to_the_limit_and_upload_when_stores_return") {
        return;
    }
    let mut redis = Redis::start(6);
    let v = Vol::new();
    let mut args = vec!["init".to_string()];
    args.extend(redis.store_args(0));
    v.ok(&strs(&args));
    let mp = v.scratch("mnt");
    let m = Mount::start(&v, &mp, &["--staging-limit", "20MiB"]);
    let before = write_file(&m.path("before"), 1, 6 * MIB, true);
    assert!(before.ok(), "{before:?}");

    // Two of six stores gone: four answer, below the write quorum of five.
    redis.kill(0);
    redis.kill(1);
    let mut closed: Vec<Written> = Vec::new();
    let mut refused = None;
    for n in 0..12u64 {
        let t = Instant::now();
        let w = write_file(&m.path(&format!("off-{n:02}")), 100 + n, 3 * MIB, false);
        if w.ok() {
            closed.push(w);
            continue;
        }
        refused = Some((w, t.elapsed()));
        break;
    }
    let (refused, waited) = refused.expect("writes past --staging-limit 20MiB kept succeeding");
    assert_eq!(
        refused.error.as_ref().and_then(|e| e.raw_os_error()),
        Some(nix::libc::ENOSPC),
        "a write past the staging limit: {refused:?}; mount output:\n{}",
        m.log_text()
    );
    assert!(
        waited >= Duration::from_secs(25),
        "it failed without waiting for uploads ({waited:?})"
    );
    assert!(
        closed.len() >= 4,
        "fewer closes than the limit allows: {closed:?}"
    );
    let _ = fs::remove_file(m.path(&refused.name));
    // Staged data reads back while the stores are away.
    for w in &closed {
        assert_reads_back(&m.mp, w, "while offline");
    }
    // fsync while the stores are away: waits for the file's uploads, then EIO; the data stays.
    let t = Instant::now();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.path(&closed[0].name))
        .unwrap();
    let synced = f.sync_all();
    let took = t.elapsed();
    assert_eq!(
        synced.as_ref().err().and_then(|e| e.raw_os_error()),
        Some(nix::libc::EIO),
        "fsync with two of six stores away: {synced:?}"
    );
    assert!(
        took >= Duration::from_secs(25) && took < Duration::from_secs(120),
        "fsync gave up after {took:?}"
    );
    drop(f);
    assert_reads_back(&m.mp, &closed[0], "after the failed fsync");

    // The stores return: the queue drains by itself, and fsync succeeds.
    redis.servers[0].restart().unwrap();
    redis.servers[1].restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    while upload_queue(&v) != Some(0) {
        assert!(
            Instant::now() < deadline,
            "the upload queue did not drain after the stores returned ({:?} rows); mount output:\n{}",
            upload_queue(&v),
            m.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.path(&closed[0].name))
        .unwrap();
    f.sync_all().expect("fsync once the stores are back");
    drop(f);
    m.umount();

    let audit = v.run(&["audit", "--full"]);
    assert_eq!(
        audit.code,
        Some(0),
        "audit --full after the offline spell:\n{}",
        audit.describe()
    );
    let m = Mount::start(&v, &mp, &[]);
    assert_reads_back(&m.mp, &before, "after the stores returned");
    for w in &closed {
        assert_reads_back(&m.mp, w, "after the stores returned");
    }
    m.umount();
}
