//! The FUSE mount: a `Volume` served as a POSIX directory tree through fuser's pure-Rust session.
//!
//! - `ops.rs`: the `fuser::Filesystem` impl, a thin dispatcher: each callback calls a method that returns
//!   `Result` and the one errno mapping (`QsfsError::errno`) turns failures into replies.
//! - `nodes.rs`: namespace callbacks (lookup, attributes, create/remove/rename/link, xattrs, statfs).
//! - `files.rs`: open files and directories (open, read, write, flush, fsync, release, readdir).
//! - `engine.rs` / `seal.rs`: the data path (staging, sealing, the upload queue, durability).
//! - `session.rs`: mounting, signals, stale mounts, the drain at unmount, and `umount`.
//!
//! Who can mount. Root mounts directly with mount(2), no libfuse needed. A non-root user on a distribution whose
//! /dev/fuse is usable by everyone (Debian, Ubuntu, Fedora: mode 0666) mounts through the setuid `fusermount3`
//! helper (package `fuse3`), which fuser runs by itself when mount(2) is refused; `--allow-other` then also needs
//! `user_allow_other` in /etc/fuse.conf, and `qsfs umount` falls back to `fusermount3 -u` the same way.
//!
//! FUSE callbacks run on fuser's worker threads, which are plain threads: they reach the stores only through the
//! volume's `IoRuntime::block_on`, the crate's one async boundary.

mod attr;
mod background;
mod commit;
mod engine;
mod files;
mod flush;
mod live;
mod mounts;
mod nodes;
mod op_metrics;
mod ops;
mod pack;
#[cfg(test)]
mod pack_tests;
#[cfg(test)]
mod power_tests;
mod privs;
mod seal;
mod session;
mod space;
#[cfg(test)]
mod tests;
mod truncate;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use live::MountStatus;
pub use mounts::{MountEntry, find_mount, is_stale_mount, unmount, wait_for_exit};
pub use session::{
    AtimeMode, DEFAULT_CACHE_SIZE, MountHandle, MountOptions, MountReport, block_signals, mount,
};

use crate::error::QsfsError;
use crate::meta::{DirEntry, Inode};
use engine::{Cell, Engine};

/// An open regular file.
struct FileHandle {
    ino: u64,
    cell: Arc<Cell>,
    append: bool,
    /// Opened for reading only: its close has nothing of its own to make durable (see `flush_file`).
    read_only: bool,
    /// relatime: the access time is considered once per handle, on its first read.
    atime_checked: AtomicBool,
    /// Set-ID bits are checked once per handle, on its first write (see `privs`).
    privs_checked: AtomicBool,
}

/// An open directory: the page of entries last read, so sequential readdir calls continue by name instead of
/// re-reading from the start.
struct DirHandle {
    ino: u64,
    /// Index (0-based, among the real entries) of `page[0]`.
    page_start: u64,
    page: Vec<(DirEntry, Inode)>,
    /// The page is the directory's last.
    page_is_last: bool,
}

pub struct QsfsFs {
    eng: Arc<Engine>,
    files: Mutex<HashMap<u64, Arc<FileHandle>>>,
    dirs: Mutex<HashMap<u64, Arc<Mutex<DirHandle>>>>,
    next_fh: AtomicU64,
    statfs_cache: Mutex<Option<(Instant, attr::Capacity)>>,
    /// Where request metrics go (`--metrics`), if anywhere.
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Tells the kernel about changes it did not ask for (a mode the filesystem changed itself); set once the
    /// session exists.
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    /// Directories removed (rmdir, or replaced by a rename) while open: they live on, with no name, until their
    /// last handle closes, as files do.
    doomed_dirs: Mutex<std::collections::HashSet<u64>>,
    /// When reads write the access time.
    atime: AtimeMode,
}

impl QsfsFs {
    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    fn file(&self, fh: u64) -> Result<Arc<FileHandle>, QsfsError> {
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
            .ok_or_else(|| QsfsError::Invalid(format!("file handle {fh}")))
    }
}
