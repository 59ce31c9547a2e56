//! A durability writer for crash and store-failure tests: a thread that appends seeded records to files in a
//! mount, makes each durable (fsync, fdatasync, or close for small one-record files) and logs which ones
//! returned success — the acknowledged records every later read must return exactly.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::record_bytes;

const KIB: usize = 1024;

/// One record whose durability call returned success.
#[derive(Debug, Clone)]
pub struct Ack {
    /// Relative to the writer's directory.
    pub file: PathBuf,
    pub offset: u64,
    pub len: usize,
    pub seed: u64,
    /// "fsync", "fdatasync" or "close".
    pub how: &'static str,
}

/// One record's attempt: when it started and finished and how it ended.
#[derive(Debug, Clone)]
#[allow(dead_code)] // Some fields are only read through `Debug`, in failure messages.
pub struct Attempt {
    pub started: Instant,
    pub finished: Instant,
    pub file: PathBuf,
    pub how: &'static str,
    /// `None` on success, else the failing call and its error.
    pub error: Option<String>,
}

#[derive(Debug, Default)]
pub struct Log {
    pub acks: Vec<Ack>,
    pub attempts: Vec<Attempt>,
}

/// What the writer does when a call fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Stop writing (the mount is gone).
    Stop,
    /// Abandon the file (nothing more is appended to it, so no later success vouches for a failed record) and
    /// carry on with a fresh one.
    NewFile,
}

pub struct Writer {
    pub log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    done: std::sync::mpsc::Receiver<()>,
}

/// Records per big file before the writer closes it and starts the next.
const RECORDS_PER_FILE: u64 = 12;

/// One-record files (made durable by close alone) written after each big file.
const SMALL_FILES_PER_FILE: u64 = 3;

impl Writer {
    /// Starts writing into `dir` (created), files named `PREFIX-NNNN` (appended records) and `PREFIX-NNNN.smallK`
    /// (one record each, made durable by close alone).
    pub fn spawn(dir: &Path, prefix: &str, seed_base: u64, on_error: OnError) -> Writer {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, done) = std::sync::mpsc::channel();
        let (dir, prefix) = (dir.to_path_buf(), prefix.to_string());
        let (log2, stop2) = (log.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            write_loop(&dir, &prefix, seed_base, on_error, &log2, &stop2);
            let _ = tx.send(());
        });
        Writer {
            log,
            stop,
            handle: Some(handle),
            done,
        }
    }

    pub fn acks(&self) -> usize {
        self.log.lock().unwrap().acks.len()
    }

    /// Attempts started after `t` that have finished.
    pub fn finished_since(&self, t: Instant) -> Vec<Attempt> {
        self.log
            .lock()
            .unwrap()
            .attempts
            .iter()
            .filter(|a| a.started > t)
            .cloned()
            .collect()
    }

    pub fn is_done(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Asks the writer to stop after its current record and waits up to `timeout`; returns its log.
    #[track_caller]
    pub fn stop(mut self, timeout: Duration) -> Log {
        self.stop.store(true, Ordering::SeqCst);
        match self.done.recv_timeout(timeout) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("the writer did not stop within {timeout:?} (a filesystem call is hanging)")
            }
        }
        if let Some(h) = self.handle.take() {
            h.join().expect("writer thread panicked");
        }
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

fn record_len(seed: u64) -> usize {
    // 1 byte .. 160 KiB, so records straddle 64 KiB segments; a few tiny ones.
    let x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33;
    match x % 10 {
        0 => 1 + (x % 100) as usize,
        _ => 1 + (x % (160 * KIB as u64)) as usize,
    }
}

fn write_loop(
    dir: &Path,
    prefix: &str,
    seed_base: u64,
    on_error: OnError,
    log: &Mutex<Log>,
    stop: &AtomicBool,
) {
    let attempt = |started: Instant, file: &Path, how: &'static str, error: Option<String>| {
        log.lock().unwrap().attempts.push(Attempt {
            started,
            finished: Instant::now(),
            file: file.to_path_buf(),
            how,
            error,
        });
    };
    for f in 0u64.. {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let name = PathBuf::from(format!("{prefix}-{f:04}"));
        let path = dir.join(&name);
        let t = Instant::now();
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) => {
                attempt(t, &name, "create", Some(format!("create: {e}")));
                match on_error {
                    OnError::Stop => return,
                    OnError::NewFile => continue,
                }
            }
        };
        let mut offset = 0u64;
        let mut failed = false;
        for r in 0..RECORDS_PER_FILE {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let seed = seed_base * 1_000_000_000 + f * 1000 + r;
            let len = record_len(seed);
            let data = record_bytes(seed, len);
            let how = if r % 3 == 2 { "fdatasync" } else { "fsync" };
            let t = Instant::now();
            let res = file
                .write_all_at(&data, offset)
                .map_err(|e| format!("write: {e}"))
                .and_then(|()| {
                    if how == "fsync" {
                        file.sync_all()
                    } else {
                        file.sync_data()
                    }
                    .map_err(|e| format!("{how}: {e}"))
                });
            match res {
                Ok(()) => {
                    log.lock().unwrap().acks.push(Ack {
                        file: name.clone(),
                        offset,
                        len,
                        seed,
                        how,
                    });
                    attempt(t, &name, how, None);
                    offset += len as u64;
                }
                Err(e) => {
                    attempt(t, &name, how, Some(e));
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            // Not acknowledged whatever close says: the failed record's fate is unknown.
            drop(file);
            match on_error {
                OnError::Stop => return,
                OnError::NewFile => continue,
            }
        }
        let t = Instant::now();
        if let Err(e) = nix::unistd::close(file) {
            attempt(t, &name, "close", Some(format!("close: {e}")));
            match on_error {
                OnError::Stop => return,
                OnError::NewFile => continue,
            }
        }
        // Small files made durable by close alone (no fsync).
        for k in 0..SMALL_FILES_PER_FILE {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let small = PathBuf::from(format!("{prefix}-{f:04}.small{k}"));
            let seed = seed_base * 1_000_000_000 + f * 1000 + 900 + k;
            let len = 1 + (seed.wrapping_mul(0x2545_F491_4F6C_DD1D) % (8 * KIB as u64)) as usize;
            let t = Instant::now();
            let res = File::create(dir.join(&small))
                .and_then(|file| {
                    file.write_all_at(&record_bytes(seed, len), 0)?;
                    Ok(file)
                })
                .map_err(|e| format!("create/write: {e}"))
                .and_then(|file| nix::unistd::close(file).map_err(|e| format!("close: {e}")));
            match res {
                Ok(()) => {
                    log.lock().unwrap().acks.push(Ack {
                        file: small.clone(),
                        offset: 0,
                        len,
                        seed,
                        how: "close",
                    });
                    attempt(t, &small, "close", None);
                }
                Err(e) => {
                    attempt(t, &small, "close", Some(e));
                    if on_error == OnError::Stop {
                        return;
                    }
                }
            }
        }
    }
}

/// Checks every acknowledged record under `dir` reads back exactly; returns the problems found.
pub fn check_acks(dir: &Path, acks: &[Ack]) -> Vec<String> {
    let mut problems = Vec::new();
    for a in acks {
        let p = dir.join(&a.file);
        let f = match File::open(&p) {
            Ok(f) => f,
            Err(e) => {
                problems.push(format!("{} (acked by {}): open: {e}", p.display(), a.how));
                continue;
            }
        };
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        if size < a.offset + a.len as u64 {
            problems.push(format!(
                "{}: {} bytes long, but a record at {}+{} was acked by {}",
                p.display(),
                size,
                a.offset,
                a.len,
                a.how
            ));
            continue;
        }
        let mut buf = vec![0u8; a.len];
        if let Err(e) = f.read_exact_at(&mut buf, a.offset) {
            problems.push(format!("{}: read {}+{}: {e}", p.display(), a.offset, a.len));
            continue;
        }
        let want = record_bytes(a.seed, a.len);
        if buf != want {
            let at = buf.iter().zip(&want).position(|(x, y)| x != y).unwrap_or(0);
            let differing = buf.iter().zip(&want).filter(|(x, y)| x != y).count();
            let zeros = buf.iter().filter(|b| **b == 0).count();
            problems.push(format!(
                "{}: the record at {}+{} (acked by {}) differs at byte {at} of it ({differing} bytes differ, {zeros} \
                 of the {} read are zero; file size {size})",
                p.display(),
                a.offset,
                a.len,
                a.how,
                a.len
            ));
        }
    }
    problems
}

/// Asserts every acknowledged record reads back (see [`check_acks`]).
#[track_caller]
pub fn assert_acks(dir: &Path, acks: &[Ack], when: &str) {
    let problems = check_acks(dir, acks);
    assert!(
        problems.is_empty(),
        "{when}: {} of {} acknowledged records are lost or wrong:\n  {}",
        problems.len(),
        acks.len(),
        problems
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}
