//! Stores lost in the middle of a FUSE mount's writes: a writer thread creates whole files (write, fsync,
//! close) while store 2 goes away (`first`) and then store 5 ([`Loss::Gone`]). With one store gone every write
//! must succeed (5 left = the write quorum); with two gone the writes' fsync or close fail (EIO) but the data
//! stays readable through the mount, is queued at unmount and uploaded by the next mount once the stores are
//! back. The stores come back while a second mount runs: it notices within `REVIVE_INTERVAL` (30 s), places the
//! shards it could not place before and uploads the queued data; `status` then shows full redundancy without any
//! `qsfs repair`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{
    Cluster, Loss, assert_down, assert_full_redundancy, assert_reads, init,
    repair_to_full_redundancy, wait_until,
};
use crate::fuse::mount::Mount;
use crate::fuse::{record_bytes, sh};
use crate::helpers::{Vol, s};

/// What the writes after the second loss must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Fail: the mount sees both stores down, four left, below the quorum.
    Fail,
    /// Either: the first store still answers the mount (emptied, or restarted empty), so it may still count.
    Any,
}

/// One file the writer made: all its bytes written (`wrote`), then fsync and close.
#[derive(Debug, Clone)]
pub(super) struct FileWrite {
    name: String,
    seed: u64,
    len: usize,
    started: Instant,
    pub(super) finished: Instant,
    pub(super) wrote: bool,
    /// `None` when fsync and close returned 0, else the failing call and its error.
    pub(super) error: Option<String>,
}

pub(super) struct Writer {
    log: Arc<Mutex<Vec<FileWrite>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Writer {
    pub(super) fn spawn(dir: &Path) -> Writer {
        fs::create_dir_all(dir).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, l, st) = (dir.to_path_buf(), log.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            for n in 0u64.. {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let mut w = write_one(&d, n);
                w.finished = Instant::now();
                l.lock().unwrap().push(w);
            }
        });
        Writer {
            log,
            stop,
            handle: Some(handle),
        }
    }

    pub(super) fn finished(&self) -> Vec<FileWrite> {
        self.log.lock().unwrap().clone()
    }

    fn since(&self, t: Instant) -> Vec<FileWrite> {
        self.finished()
            .into_iter()
            .filter(|w| w.started > t)
            .collect()
    }

    #[track_caller]
    pub(super) fn wait(&self, what: &str, n: usize, t: Instant) {
        assert!(
            // Below the write quorum each file's fsync waits out the upload wait (30 s) before its EIO: three
            // of them, plus one already waiting, take up to two minutes on their own.
            wait_until(Duration::from_secs(240), || self.since(t).len() >= n
                || self.handle.as_ref().is_some_and(|h| h.is_finished())),
            "timed out waiting for {what}: {:#?}",
            self.finished()
        );
        assert!(self.since(t).len() >= n, "the writer stopped: {what}");
    }

    pub(super) fn stop(mut self) -> Vec<FileWrite> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().expect("writer panicked");
        self.finished()
    }
}

fn write_one(dir: &Path, n: u64) -> FileWrite {
    let seed = 7000 + n;
    let len = 1 + ((seed * 0x9E37_79B9) % (90 * 1024)) as usize;
    let name = format!("f-{n:04}");
    let mut w = FileWrite {
        name: name.clone(),
        seed,
        len,
        started: Instant::now(),
        finished: Instant::now(),
        wrote: false,
        error: None,
    };
    let data = record_bytes(seed, len);
    let mut f = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join(&name))
    {
        Ok(f) => f,
        Err(e) => {
            w.error = Some(format!("create: {e}"));
            return w;
        }
    };
    if let Err(e) = f.write_all(&data) {
        w.error = Some(format!("write: {e}"));
        return w;
    }
    w.wrote = true;
    let synced = f.sync_all().map_err(|e| format!("fsync: {e}"));
    let closed = nix::unistd::close(f).map_err(|e| format!("close: {e}"));
    w.error = synced.and(closed).err();
    w
}

/// Asserts every file whose bytes were written reads back exactly under `dir` (a mount or a `get` copy).
#[track_caller]
pub(super) fn assert_files(dir: &Path, writes: &[FileWrite], what: &str) {
    for w in writes.iter().filter(|w| w.wrote) {
        let got = fs::read(dir.join(&w.name))
            .unwrap_or_else(|e| panic!("read {} {what} ({w:?}): {e}", w.name));
        assert!(
            got == record_bytes(w.seed, w.len),
            "{} reads back wrong {what} ({} bytes, want {}): {w:?}",
            w.name,
            got.len(),
            w.len
        );
    }
}

/// `(repair_queue rows, upload_queue rows)` in the volume's metadata, read while a mount holds it.
fn queues(v: &Vol) -> Option<(u64, u64)> {
    let out = sh(
        "sqlite3",
        &[
            "-readonly",
            s(&v.path.join("meta.db")),
            "SELECT (SELECT count(*) FROM repair_queue) || ' ' || (SELECT count(*) FROM upload_queue);",
        ],
    );
    let t = out.stdout.trim().to_string();
    let (a, b) = t.split_once(' ')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Store 2 lost as `first`, then store 5 killed/removed, both in the middle of a mount's writes.
pub fn lost_during_mount(c: &mut dyn Cluster, first: Loss, after_second: Expect) {
    let v = Vol::new();
    init(c, &v);
    let mp = v.scratch("mnt");
    let m = Mount::start(&v, &mp, &[]);
    let w = Writer::spawn(&m.path("data"));
    let t0 = Instant::now() - Duration::from_secs(1);
    w.wait("4 files with every store up", 4, t0);

    // One store lost mid-write: five left, the write quorum; every write still succeeds.
    c.lose(&v, 2, first);
    let t1 = Instant::now();
    w.wait("6 files after the first loss", 6, t1);
    let bad: Vec<_> = w
        .finished()
        .into_iter()
        .filter(|w| w.error.is_some())
        .collect();
    assert!(
        bad.is_empty(),
        "with one store {first:?} the quorum of 5 holds, yet writes failed: {bad:#?}\nmount output:\n{}",
        m.log_text()
    );
    assert_files(&m.path("data"), &w.finished(), "with one store down");

    // A second one: four left, below the quorum.
    c.lose(&v, 5, Loss::Gone);
    let t2 = Instant::now();
    w.wait("3 files after the second loss", 3, t2);
    let writes = w.stop();
    let bad: Vec<_> = writes
        .iter()
        .filter(|w| w.finished < t2 && w.error.is_some())
        .collect();
    assert!(
        bad.is_empty(),
        "writes with one store down failed: {bad:#?}"
    );
    let after: Vec<_> = writes.iter().filter(|w| w.started > t2).collect();
    let acked: Vec<_> = after.iter().filter(|w| w.error.is_none()).collect();
    eprintln!(
        "after the second loss: {} of {} files acknowledged; errors {:?}",
        acked.len(),
        after.len(),
        after
            .iter()
            .filter_map(|w| w.error.as_deref())
            .collect::<Vec<_>>()
    );
    if after_second == Expect::Fail {
        assert!(
            acked.is_empty(),
            "with 4 of 6 stores up and write quorum 5, fsync and close returned 0: {acked:#?}"
        );
        for w in &after {
            let e = w.error.as_deref().unwrap();
            assert!(
                e.contains("os error 5"),
                "a failed upload should be EIO: {w:?}"
            );
        }
    }
    // What `qsfs get /data` must give in the end: every file whose bytes were written.
    let want = v.scratch("want").join("data");
    fs::create_dir_all(&want).unwrap();
    for w in writes.iter().filter(|w| w.wrote) {
        fs::write(want.join(&w.name), record_bytes(w.seed, w.len)).unwrap();
    }
    // Whatever was written, acknowledged or not, reads back exactly (failed uploads from the local staging).
    assert_files(
        &m.path("data"),
        &writes,
        "through the mount with two stores down",
    );
    m.umount();

    // Unmounted with both still down: status names them; the acknowledged files read back through `qsfs get`;
    // a file whose upload failed (queued locally for the next mount) reads back exactly or fails cleanly.
    assert_down(&v, &[2, 5]);
    let mut findings = Vec::new();
    for w in writes.iter().filter(|w| w.wrote) {
        let o = v.fresh_path(&format!("get-two-down-{}", w.name));
        let r = v.run(&["get", &format!("/data/{}", w.name), s(&o)]);
        let right = fs::read(&o).is_ok_and(|b| b == record_bytes(w.seed, w.len));
        if w.error.is_none() {
            assert!(
                r.code == Some(0) && right,
                "acknowledged {} with two stores down: {}",
                w.name,
                r.describe()
            );
        } else if r.code == Some(0) && !right {
            let got = fs::read(&o).unwrap_or_default();
            findings.push(format!(
                "`qsfs get /data/{}` (upload failed, queued locally at unmount; stores 2 and 5 down) exited 0 but wrote {} bytes that are not the file's ({} of them zero) instead of the data or an error",
                w.name,
                got.len(),
                got.iter().filter(|&&b| b == 0).count()
            ));
        } else if r.code != Some(0) {
            let d = r.describe();
            let line = r.failed();
            assert!(
                line.contains(&w.name),
                "the error should name the file:\n{d}"
            );
            assert!(!o.exists() || right, "a failed get left wrong bytes:\n{d}");
        }
    }

    // A second mount, opened with both stores down, serves everything; the stores come back while it runs.
    let m = Mount::start(&v, &mp, &[]);
    assert_files(
        &m.path("data"),
        &writes,
        "in a mount opened with two stores down",
    );
    c.back(&v, 5);
    if first.recoverable() {
        c.back(&v, 2);
    }
    let t3 = Instant::now();
    let probe = m.path("data/probe-after-return");
    let back_in = wait_until(Duration::from_secs(90), || {
        let _ = fs::remove_file(&probe);
        fs::write(&probe, b"the stores are back\n").is_ok()
            && fs::File::open(&probe).and_then(|f| f.sync_all()).is_ok()
    });
    assert!(
        back_in,
        "no write succeeded within 90 s of the stores coming back (revival every 30 s)\nmount output:\n{}",
        m.log_text()
    );
    eprintln!(
        "a write succeeded {:?} after the stores came back",
        t3.elapsed()
    );
    if t3.elapsed() > Duration::from_secs(45) {
        findings.push(format!(
            "the mount took {:?} to write again after the stores came back: more than one revival interval \
             (30 s) plus slack, so at least one revival check of a store that was answering failed",
            t3.elapsed()
        ));
        // More than one revival interval: say what the mount saw (QSFS_FUSE_TEST_LOG=info shows the checks).
        let log = m.log_text();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(25)..].join("\n");
        eprintln!("slow revival; the mount's output ends:\n{tail}");
    }
    // The mount places what it could not (repair queue) and uploads what it queued (upload queue) by itself.
    let mut last = None;
    let drained = wait_until(Duration::from_secs(60), || {
        last = queues(&v);
        match last {
            Some((rq, uq)) => uq == 0 && (rq == 0 || !first.recoverable()),
            None => false,
        }
    });
    assert!(
        drained,
        "the mount did not drain its queues within 60 s of a write succeeding: (repair, upload) = {last:?}\nmount \
         output:\n{}",
        m.log_text()
    );
    eprintln!(
        "queues drained {:?} after the stores came back",
        t3.elapsed()
    );
    assert_files(&m.path("data"), &writes, "after the stores came back");
    m.umount();

    if first.recoverable() {
        // Full redundancy without any `qsfs repair`: the mount did it.
        assert_full_redundancy(&v);
    } else {
        let st = assert_down(&v, &[2]);
        v.ok(&["store", "readmit", &st.stores[2].uri]);
    }
    repair_to_full_redundancy(&v);

    // Everything written reads back through `qsfs get`.
    fs::write(want.join("probe-after-return"), b"the stores are back\n").unwrap();
    assert_reads(&v, &want, "after the stores came back");
    v.ok(&["fsck"]);
    assert!(
        findings.is_empty(),
        "wrong behaviour on the way:\n  {}",
        findings.join("\n  ")
    );
}
