//! Room for the metadata on a full disk: a pre-allocated file beside the database (`meta.db.reserve`, its blocks
//! really allocated, not a sparse file) that is deleted when the disk runs out, so SQLite can still commit — and the
//! commits that record uploads, delete files and collect garbage are the ones that give space back. Without it a
//! full disk leaves the database unable to commit anything ("database or disk is full"), `fsck` included.
//!
//! Released when a commit finds less than the reserve free (checked before each commit with a statvfs, skipped
//! for up to `ROOMY_RECHECK` while the last check saw `ROOMY` times the reserve free) or fails with SQLITE_FULL
//! (then the commit is tried once more); allocated again, by the mount's housekeeping or the next open, once the
//! disk has room for it twice over.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A check that found this many times the reserve free...
const ROOMY: u64 = 8;
/// ...is trusted for this long: a small-file burst commits thousands of times a second, and a statvfs each was
/// a tenth of a create's time. A disk cannot lose `ROOMY - 1` reserves' worth of room that fast here, and a
/// commit that still meets a full disk releases the reserve and is retried anyway.
const ROOMY_RECHECK: Duration = Duration::from_millis(20);

/// `(free, total)` bytes of the filesystem holding `path`, as an unprivileged writer sees them.
pub fn disk_room(path: &Path) -> io::Result<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    let unit = st.fragment_size() as u64;
    Ok((
        (st.blocks_available() as u64).saturating_mul(unit),
        (st.blocks() as u64).saturating_mul(unit),
    ))
}

/// The reserve for a filesystem of `total` bytes: 1/32 of it, between 1 and 32 MiB.
pub fn reserve_size(total: u64) -> u64 {
    (total / 32).clamp(1 << 20, 32 << 20)
}

pub struct Reserve {
    path: PathBuf,
    size: u64,
    /// The file is there, allocated.
    held: AtomicBool,
    /// Serializes allocating and releasing.
    busy: Mutex<()>,
    /// When a check last found `ROOMY` times the reserve free.
    roomy_at: Mutex<Option<Instant>>,
}

impl Reserve {
    /// The reserve of database `db`: released at once when the disk is nearly full (so opening and migrating
    /// the database can commit), else allocated if missing. Never fails: without a reserve the volume works as
    /// before, only less well on a full disk.
    pub fn open(db: &Path) -> Reserve {
        let mut name = db.as_os_str().to_owned();
        name.push(".reserve");
        let dir = db.parent().unwrap_or(Path::new("."));
        let total = disk_room(dir).map(|(_, t)| t).unwrap_or(0);
        let r = Reserve {
            path: PathBuf::from(name),
            size: reserve_size(total),
            held: AtomicBool::new(false),
            busy: Mutex::new(()),
            roomy_at: Mutex::new(None),
        };
        r.held.store(r.is_allocated(), Ordering::Release);
        if !r.release_if_low() {
            r.restore_if_room();
        }
        r
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    fn is_allocated(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.path).is_ok_and(|m| m.blocks() * 512 >= self.size)
    }

    fn free(&self) -> Option<u64> {
        disk_room(self.path.parent().unwrap_or(Path::new(".")))
            .ok()
            .map(|(free, _)| free)
    }

    /// Before a commit: releases the reserve when less than its size is free. Returns whether it did.
    pub fn release_if_low(&self) -> bool {
        if !self.is_held() {
            return false;
        }
        let mut roomy_at = self.roomy_at.lock().unwrap_or_else(|p| p.into_inner());
        if roomy_at.is_some_and(|t| t.elapsed() < ROOMY_RECHECK) {
            return false;
        }
        let free = self.free();
        *roomy_at = free
            .filter(|&f| f >= self.size.saturating_mul(ROOMY))
            .map(|_| Instant::now());
        drop(roomy_at);
        if free.is_none_or(|f| f >= self.size) {
            return false;
        }
        self.release()
    }

    /// Deletes the reserve file, giving its blocks to the database. Returns whether anything was freed.
    pub fn release(&self) -> bool {
        let _busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if !self.held.swap(false, Ordering::AcqRel) {
            return false;
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                tracing::warn!(
                    bytes = self.size,
                    "disk nearly full: the metadata's reserve is released"
                );
                true
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "metadata reserve not released");
                false
            }
        }
    }

    /// Allocates the reserve again if it is missing and the disk has room for it twice over (so taking it does
    /// not itself fill the disk).
    pub fn restore_if_room(&self) {
        if self.is_held() || self.free().is_none_or(|f| f < self.size.saturating_mul(2)) {
            return;
        }
        let _busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        match allocate(&self.path, self.size) {
            Ok(()) => self.held.store(true, Ordering::Release),
            Err(e) => {
                let _ = std::fs::remove_file(&self.path);
                tracing::debug!(path = %self.path.display(), error = %e, "metadata reserve not allocated");
            }
        }
    }
}

/// Creates `path` with `size` bytes really allocated: fallocate, or zeros written where it is not supported.
fn allocate(path: &Path, size: u64) -> io::Result<()> {
    use std::io::Write;
    let mut f = crate::private::file_options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let len = i64::try_from(size).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    match nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, len) {
        Ok(()) => {}
        Err(nix::errno::Errno::EOPNOTSUPP) => {
            let zeros = vec![0u8; 1 << 20];
            let mut left = size;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                f.write_all(&zeros[..n])?;
                left -= n as u64;
            }
        }
        Err(e) => return Err(e.into()),
    }
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_allocated_released_and_allocated_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("meta.db");
        let r = Reserve::open(&db);
        assert!(r.is_held(), "a disk with room gets a reserve");
        assert!(r.is_allocated());
        assert!(!r.release_if_low(), "plenty free: kept");
        assert!(r.release());
        assert!(!r.path().exists());
        assert!(!r.release(), "released once");
        r.restore_if_room();
        assert!(r.is_held() && r.is_allocated());
        // A second open finds the allocated file and keeps it.
        assert!(Reserve::open(&db).is_held());
    }

    #[test]
    fn sizes_follow_the_disk() {
        assert_eq!(reserve_size(64 << 20), 2 << 20);
        assert_eq!(reserve_size(8 << 20), 1 << 20);
        assert_eq!(reserve_size(1 << 40), 32 << 20);
    }
}
