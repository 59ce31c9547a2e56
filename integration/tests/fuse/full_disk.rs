//! A full local disk is a normal event, not a crash. The volume lives on a small tmpfs (its `mount.log`-like output
//! too) and parallel writers write files with fsync until the disk is full: the mount stays alive, every failing
//! write or fsync fails with ENOSPC, and after an unmount every file whose writes and fsync succeeded reads back
//! exactly and `qsfs fsck` is clean.
//!
//! - `stores_elsewhere`: only the volume (staging, upload queue, metadata) is on the tmpfs; the stores have room.
//!   Writers wait for uploads to free staging: every write of 3 × 40 MiB through 64 MiB succeeds.
//! - `stores_on_it`: the embedded default, six dir stores inside the volume, so the stores fill the same disk:
//!   writes stop with ENOSPC once the stores are full.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::mount::{Mount, is_live_fuse_mount};
use super::{fuse_available, record_bytes, sh};
use crate::helpers::{Vol, s};

const MIB: usize = 1 << 20;

/// A tmpfs of `size` mounted at `dir` for the test's life.
pub(crate) struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    #[track_caller]
    pub(crate) fn mount(dir: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        sh(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                s(dir),
            ],
        )
        .ok();
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = sh("umount", &["-l", s(&self.dir)]);
    }
}

/// One file a writer made: `ok` when every write, the fsync and the close returned 0, else the first error.
#[derive(Debug)]
pub(crate) struct Written {
    pub name: String,
    pub seed: u64,
    pub len: usize,
    pub error: Option<std::io::Error>,
}

impl Written {
    pub(crate) fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Writes `len` bytes of record `seed` to `path` in 1 MiB writes, then fsync (`sync`) and close.
pub(crate) fn write_file(path: &Path, seed: u64, len: usize, sync: bool) -> Written {
    let data = record_bytes(seed, len);
    let res = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
        for chunk in data.chunks(MIB) {
            f.write_all(chunk)?;
        }
        if sync {
            f.sync_all()?;
        }
        nix::unistd::close(f).map_err(std::io::Error::from)
    })();
    Written {
        name: path.file_name().unwrap().to_string_lossy().into_owned(),
        seed,
        len,
        error: res.err(),
    }
}

/// Asserts `dir/name` holds exactly what `w` wrote.
#[track_caller]
pub(crate) fn assert_reads_back(dir: &Path, w: &Written, what: &str) {
    let mut got = Vec::new();
    fs::File::open(dir.join(&w.name))
        .and_then(|mut f| f.read_to_end(&mut got))
        .unwrap_or_else(|e| panic!("read {} {what}: {e}", w.name));
    assert!(
        got == record_bytes(w.seed, w.len),
        "{} reads back wrong {what} ({} bytes, want {})",
        w.name,
        got.len(),
        w.len
    );
}

/// `writers` threads, each writing files of `len` bytes (write, fsync, close) until one fails or it has made
/// `files`.
fn parallel_writers(dir: &Path, writers: u64, files: u64, len: usize) -> Vec<Written> {
    let threads: Vec<_> = (0..writers)
        .map(|t| {
            let dir = dir.to_path_buf();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                for n in 0..files {
                    let w = write_file(&dir.join(format!("w{t}-{n:02}")), 100 * t + n, len, true);
                    let failed = !w.ok();
                    out.push(w);
                    if failed {
                        break;
                    }
                }
                out
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("writer panicked"))
        .collect()
}

/// Mounts a volume living on a 64 MiB tmpfs, runs three parallel writers, checks the outcome, remounts and reads
/// every acknowledged file back. `init` creates the volume; returns the writes.
fn full_disk(test: &str, init: impl FnOnce(&Vol), files: u64, len: usize) -> Vec<Written> {
    let mut v = Vol::new();
    let small = Tmpfs::mount(&v.scratch("small"), "64m");
    v.path = small.dir.join("vol");
    init(&v);
    // The mountpoint beside the volume: the mount's output goes to a file next to it, on the full disk too.
    let mp = small.dir.join("mnt");
    let m = Mount::start(&v, &mp, &[]);
    let writes = parallel_writers(&m.path(""), 3, files, len);
    assert!(
        is_live_fuse_mount(&mp),
        "{test}: the mount died on a full disk; its output:\n{}",
        m.log_text()
    );
    for w in writes.iter().filter(|w| !w.ok()) {
        let errno = w.error.as_ref().and_then(|e| e.raw_os_error());
        assert_eq!(
            errno,
            Some(nix::libc::ENOSPC),
            "{test}: {} failed with {:?}, not ENOSPC; mount output:\n{}",
            w.name,
            w.error,
            m.log_text()
        );
        // What the user does on a full disk: remove what did not make it.
        let _ = fs::remove_file(m.path(&w.name));
    }
    for w in writes.iter().filter(|w| w.ok()) {
        assert_reads_back(&m.mp, w, "while mounted");
    }
    m.umount();
    let fsck = v.run(&["fsck"]);
    assert!(
        fsck.code == Some(0) && fsck.stdout.contains("clean"),
        "{test}: fsck after the full disk:\n{}",
        fsck.describe()
    );
    let m = Mount::start(&v, &mp, &[]);
    for w in writes.iter().filter(|w| w.ok()) {
        assert_reads_back(&m.mp, w, "after a remount");
    }
    m.umount();
    drop(small);
    writes
}

#[test]
fn full_disk_stores_elsewhere_writers_wait_for_uploads() {
    if !fuse_available("full_disk_stores_elsewhere_writers_wait_for_uploads") {
        return;
    }
    let stores = tempfile::Builder::new()
        .prefix("qsfs-it-stores-")
        .tempdir()
        .unwrap();
    let writes = full_disk(
        "stores elsewhere",
        |v| {
            let mut args = vec!["init".to_string()];
            for i in 0..6 {
                let d = stores.path().join(i.to_string());
                fs::create_dir_all(&d).unwrap();
                args.push("--store".into());
                args.push(format!("dir:{}", d.display()));
            }
            v.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        },
        1,
        40 * MIB,
    );
    // 120 MiB through a 64 MiB disk: the writers waited for uploads instead of failing.
    let failed: Vec<_> = writes.iter().filter(|w| !w.ok()).collect();
    assert!(
        failed.is_empty(),
        "writes failed with room on the stores: {failed:#?}"
    );
}

#[test]
fn full_disk_stores_on_it_writes_fail_with_enospc() {
    if !fuse_available("full_disk_stores_on_it_writes_fail_with_enospc") {
        return;
    }
    let writes = full_disk(
        "stores on the full disk",
        |v| v.init_default(&[]),
        12,
        3 * MIB,
    );
    assert!(
        writes.iter().any(|w| !w.ok()),
        "the disk never filled: {writes:#?}"
    );
    assert!(
        writes.iter().any(|w| w.ok()),
        "nothing fit on the disk: {writes:#?}"
    );
}
