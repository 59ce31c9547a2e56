//! Room for written data in staging (`VOLUME/cache/`): a write is admitted only while both
//!
//! - the bytes held in staging and the upload queue (data not yet on the stores) stay within the staging limit
//!   (`--staging-limit`, default half the size of the filesystem holding the volume), and
//! - the volume's filesystem keeps `headroom` bytes free beyond what this write and those admitted beside it
//!   will take, so the metadata database always has room for the commits that record uploads (and free staging
//!   again) — a full disk must slow writers down, not wedge the mount.
//!
//! A write without room waits (up to [`SPACE_WAIT`]) for uploads to free staging, then fails with ENOSPC: the
//! writer sees what a full local disk shows, and nothing it wrote before is lost. Offline (fewer than
//! `write_quorum` stores answer) nothing frees staging, so closed data piles up to the limit, then writes fail
//! after the wait, until the stores return and the queue drains.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{QsfsError, Result};
use crate::meta::reserve::disk_room;

/// How long a write waits for uploads to free staging before it fails with ENOSPC.
pub const SPACE_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting write looks again.
const POLL: Duration = Duration::from_millis(50);

/// The default staging limit for a filesystem of `total` bytes: half of it, so a mount whose stores are away
/// cannot fill the disk it shares with everything else; at least 64 MiB, so a tiny disk still takes a few
/// segments (the free-space headroom then decides).
pub fn default_limit(total: u64) -> u64 {
    (total / 2).max(64 << 20)
}

/// Free bytes on the volume's filesystem that staging never takes: 1/32 of it, between 2 and 64 MiB.
pub fn headroom_for(total: u64) -> u64 {
    (total / 32).clamp(2 << 20, 64 << 20)
}

pub(crate) struct Space {
    /// A directory on the filesystem staging lives on (`VOLUME/cache`).
    dir: PathBuf,
    /// Bytes in staging files (dirty, sealing and queued segments): kept by the staging area.
    usage: Arc<AtomicU64>,
    limit: AtomicU64,
    headroom: u64,
    /// Admitted and not yet written; guarded with the check that admits them, so two writers cannot both take the
    /// last free bytes.
    pending: Mutex<u64>,
    /// How long a write waits for room, in milliseconds (`SPACE_WAIT`; tests shorten it).
    pub wait_ms: AtomicU64,
}

/// Room taken by a write until it has landed in staging (then `usage` counts it).
pub(crate) struct Admitted<'a> {
    space: &'a Space,
    len: u64,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let mut p = self.space.pending.lock().unwrap_or_else(|p| p.into_inner());
        *p = p.saturating_sub(self.len);
    }
}

impl Space {
    /// Sizes the defaults from the filesystem holding `dir`; `usage` is the staging area's byte count.
    pub fn new(dir: &Path, usage: Arc<AtomicU64>) -> Space {
        let total = match disk_room(dir) {
            Ok((_, total)) => total,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "size of the staging disk unknown");
                0
            }
        };
        Space {
            dir: dir.to_path_buf(),
            usage,
            limit: AtomicU64::new(default_limit(total)),
            headroom: headroom_for(total),
            pending: Mutex::new(0),
            wait_ms: AtomicU64::new(SPACE_WAIT.as_millis() as u64),
        }
    }

    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Bytes in staging and the upload queue.
    pub fn used(&self) -> u64 {
        self.usage.load(Ordering::Acquire)
    }

    /// Admits a write of `len` bytes, waiting for uploads to free room; ENOSPC once the wait is over.
    pub fn admit(&self, len: u64) -> Result<Admitted<'_>> {
        let wait = Duration::from_millis(self.wait_ms.load(Ordering::Relaxed));
        let deadline = Instant::now() + wait;
        let mut waited = false;
        loop {
            let short = {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                match self.shortfall(len, *pending) {
                    None => {
                        *pending += len;
                        if waited {
                            tracing::debug!(len, "staging had room again");
                        }
                        return Ok(Admitted { space: self, len });
                    }
                    Some(why) => why,
                }
            };
            if Instant::now() >= deadline {
                return Err(QsfsError::NoSpace(short));
            }
            if !waited {
                tracing::info!(reason = %short, "a write waits for uploads to free staging");
                waited = true;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Why a write of `len` bytes does not fit now (beside `pending` admitted ones), or None if it does.
    fn shortfall(&self, len: u64, pending: u64) -> Option<String> {
        let used = self.used();
        let limit = self.limit();
        if used.saturating_add(pending).saturating_add(len) > limit {
            return Some(format!(
                "staging holds {used} bytes not yet on the stores, its limit is {limit} (--staging-limit)"
            ));
        }
        match disk_room(&self.dir) {
            Ok((free, _)) if free < self.headroom.saturating_add(pending).saturating_add(len) => {
                Some(format!(
                    "{}: {free} bytes free, {} kept for the metadata",
                    self.dir.display(),
                    self.headroom
                ))
            }
            Ok(_) => None,
            // Not knowing the free space is no reason to refuse a write; a full disk still fails it with ENOSPC.
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_past_the_limit_wait_then_fail_with_enospc_and_go_through_once_room_frees() {
        let dir = tempfile::tempdir().unwrap();
        let usage = Arc::new(AtomicU64::new(0));
        let space = Space::new(dir.path(), usage.clone());
        space.set_limit(10 << 20);
        space.wait_ms.store(200, Ordering::Relaxed);
        let a = space.admit(6 << 20).unwrap();
        // Admitted but not written yet still counts: a second writer cannot take the same room.
        let e = space.admit(6 << 20).err().expect("over the limit");
        assert_eq!(e.errno(), nix::libc::ENOSPC, "{e}");
        assert!(e.to_string().contains("--staging-limit"), "{e}");
        usage.store(6 << 20, Ordering::Release);
        drop(a);
        assert!(space.admit(6 << 20).is_err());
        // An upload frees staging while the writer waits: it goes through.
        space.wait_ms.store(5_000, Ordering::Relaxed);
        let u = usage.clone();
        let freer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            u.store(0, Ordering::Release);
        });
        let t = Instant::now();
        space.admit(6 << 20).expect("room after the upload");
        assert!(t.elapsed() >= Duration::from_millis(250));
        freer.join().unwrap();
    }

    #[test]
    fn defaults_follow_the_disk() {
        assert_eq!(default_limit(64 << 20), 64 << 20);
        assert_eq!(default_limit(100 << 30), 50 << 30);
        assert_eq!(headroom_for(64 << 20), 2 << 20);
        assert_eq!(headroom_for(1 << 40), 64 << 20);
    }
}
