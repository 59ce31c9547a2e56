//! What close(2) and fsync(2) wait for: the mount's durability points.
//!
//! Local-first (the default). `close` returns once the file's dirty snapshots are in the local journal: small ones
//! inside their upload-queue rows, larger ones fsynced into `cache/queue/`, recorded with the new size in one
//! SQLite commit that is written but not synced — like ext4's commit interval, it survives `kill -9` of the mount
//! at once and a power loss once the local committer (`background::LOCAL_COMMITTER`) has synced it, within
//! [`super::background::LOCAL_COMMIT_INTERVAL`]; the WAL keeps commits in order, so a power loss drops only the
//! newest closes, never older ones. Sealing workers upload them in the background (packing small ones, see
//! `pack`), retrying until they succeed. Full segments of a sequential writer are already
//! being sealed straight from staging: close waits for those (and queues the bytes of any that failed), so
//! nothing it acknowledged lives only in an unqueued staging file.
//!
//! `fsync`/`fdatasync` return once every snapshot of the file taken so far is placed on at least `write_quorum`
//! stores and committed — its queued uploads included, for at most [`FSYNC_UPLOAD_WAIT`] — and the metadata log
//! records it depends on are on the stores. A failed upload fails fsync with its errno (EIO; ENOSPC when the stores
//! are full) and keeps the bytes (dirty, and queued at the next close), so a later fsync retries them.
//!
//! `--sync-close` makes every close an fsync (NFS-style close-to-open durability, the behaviour before
//! local-first).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::engine::{Cell, Engine, Job};
use crate::error::{QsfsError, Result};
use crate::meta;

/// Segments up to this size are queued with their bytes in the SQLite row: one commit makes them durable, where a
/// queue file costs a file fsync, a rename and a directory fsync first.
const INLINE_QUEUE_MAX: u64 = 64 * 1024;
/// How long an fsync waits for the file's queued uploads (stores away, retrying) before it fails with EIO; the
/// bytes stay queued and keep being retried.
pub const FSYNC_UPLOAD_WAIT: Duration = Duration::from_secs(30);

/// An fsync re-checks down stores last checked longer ago than this.
const FSYNC_REVIVE_GAP: Duration = Duration::from_secs(1);

/// Where a queued snapshot is kept until it is uploaded.
enum Queued {
    /// A file in the queue directory.
    File(String),
    /// The bytes, to go into the queue row.
    Inline(Vec<u8>),
}

fn errno_err(errno: i32) -> QsfsError {
    QsfsError::io(
        "uploading data written earlier",
        std::io::Error::from_raw_os_error(errno),
    )
}

impl Engine {
    /// close(2): durable locally (local-first) or on the stores (`--sync-close`).
    pub fn close_flush(&self, cell: &Arc<Cell>) -> Result<()> {
        if self.sync_close {
            return self.seal_and_wait(cell, false, true);
        }
        self.queue_locally(cell)
    }

    /// fsync(2)/fdatasync(2): the file's data on the stores and its metadata on the log. `sync_namespace` also
    /// hardens the local database when nothing of this file changed (fsync, not the close of `--sync-close`).
    pub fn fsync_flush(&self, cell: &Arc<Cell>, sync_namespace: bool) -> Result<()> {
        self.seal_and_wait(cell, sync_namespace, true)
    }

    /// `report`: this answers a caller's fsync/close, so it takes (and returns) the error a background seal of
    /// this file left; otherwise that error stays for the next one that does.
    fn seal_and_wait(&self, cell: &Arc<Cell>, sync_namespace: bool, report: bool) -> Result<()> {
        // Stores that were down may be back: the data waiting here should not wait for the background check.
        self.vol
            .io()
            .block_on(self.vol.stores().revive_checked_before(FSYNC_REVIVE_GAP));
        let waits: Vec<Arc<Job>> = {
            let mut st = cell.lock();
            let dirty = std::mem::take(&mut st.dirty);
            for (idx, staged) in dirty {
                self.start_job(cell, &mut st, idx, staged);
            }
            st.jobs.clone()
        };
        // A pack gathering under `--upload-lag` uploads now rather than make this fsync wait for the lag.
        for j in &waits {
            j.wanted.store(true, Ordering::Release);
        }
        let wait = Duration::from_millis(self.fsync_wait_ms.load(Ordering::Relaxed));
        let deadline = Instant::now() + wait;
        let mut st = cell.lock();
        while st
            .jobs
            .iter()
            .any(|j| waits.iter().any(|w| Arc::ptr_eq(j, w)))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // Stores full: ENOSPC, as for a local disk; stores away (or anything else): EIO.
                let full = waits
                    .iter()
                    .any(|j| j.last_errno.load(Ordering::Acquire) == nix::libc::ENOSPC);
                let errno = if full {
                    nix::libc::ENOSPC
                } else {
                    nix::libc::EIO
                };
                return Err(QsfsError::io(
                    "waiting for queued data to reach the stores (it stays queued and is retried)",
                    std::io::Error::from_raw_os_error(errno),
                ));
            }
            st = cell
                .changed
                .wait_timeout(st, left.min(Duration::from_millis(500)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
            // Still waiting: the stores this data needs may have come back since the last look.
            drop(st);
            self.vol
                .io()
                .block_on(self.vol.stores().revive_checked_before(FSYNC_REVIVE_GAP));
            st = cell.lock();
        }
        let own = waits
            .iter()
            .find_map(|j| *j.failed.lock().unwrap_or_else(|p| p.into_inner()));
        let pending = if report { st.error.take() } else { None };
        if let Some(e) = own.or(pending) {
            return Err(errno_err(e));
        }
        drop(st);
        self.commit_size(cell, sync_namespace)
    }

    /// The idle sealer and the last release: no caller waits, so the dirty data goes the way of a close (queued
    /// locally, or sealed with `--sync-close`). Errors stay in the file for the next close/fsync.
    pub fn flush_quietly(&self, cell: &Arc<Cell>) -> Result<()> {
        if self.sync_close {
            return self.seal_and_wait(cell, false, false);
        }
        self.queue_locally(cell)
    }

    /// Local-first close: waits for the file's straight-from-staging seals (a sequential writer's full segments),
    /// whose failures put their bytes back as dirty, then queues everything dirty durably. A failed seal is no
    /// error for close: its bytes are queued now, and the upload is retried.
    fn queue_locally(&self, cell: &Arc<Cell>) -> Result<()> {
        let waits: Vec<Arc<Job>> = {
            let st = cell.lock();
            st.jobs
                .iter()
                .filter(|j| !j.queued.load(std::sync::atomic::Ordering::Acquire))
                .cloned()
                .collect()
        };
        let mut st = cell.lock();
        while st
            .jobs
            .iter()
            .any(|j| waits.iter().any(|w| Arc::ptr_eq(j, w)))
        {
            st = cell.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if let Some(e) = st.error.take() {
            tracing::warn!(
                ino = cell.ino,
                errno = e,
                "upload failed; the data is queued locally"
            );
        }
        drop(st);
        self.queue_dirty(cell)
    }

    /// Commits the in-memory size and times with a FULL commit if they changed, else hardens earlier NORMAL
    /// commits of this file (or, for fsync, of the namespace) with a WAL sync; then ships the metadata log.
    fn commit_size(&self, cell: &Cell, always_sync: bool) -> Result<()> {
        let _commit = cell.lock_commit();
        let (size, mtime, ctime, held, changed, unsynced) = {
            let mut st = cell.lock();
            let held = std::mem::take(&mut st.held);
            (
                st.size,
                st.mtime_ns,
                st.ctime_ns,
                held,
                st.times_dirty || st.size != st.db_size || !held.is_empty(),
                st.unsynced,
            )
        };
        if changed {
            let committed = self.vol.meta().write(|c| {
                meta::set_size_times(c, cell.ino, size, mtime, ctime)?;
                meta::set_held_attrs(c, cell.ino, &held)
            });
            if let Err(e) = committed {
                hold_again(cell, &held);
                return Err(e);
            }
        } else if unsynced || always_sync {
            self.vol.meta().sync()?;
        }
        // The durability point: the metadata this file depends on goes to the stores' log before fsync returns
        // (a no-op when nothing is pending).
        self.vol.replicate_metadata()?;
        let mut st = cell.lock();
        st.db_size = size;
        st.unsynced = false;
        if st.mtime_ns == mtime {
            st.times_dirty = false;
        }
        Ok(())
    }

    /// Puts each dirty snapshot in the local journal (fsynced into the queue directory, or inline in its row), then
    /// one unsynced commit records the queue rows and the size; the local committer syncs it, the uploads run
    /// later.
    pub(super) fn queue_dirty(&self, cell: &Arc<Cell>) -> Result<()> {
        let _commit = cell.lock_commit();
        let mut batch = Vec::new();
        let (size, mtime, ctime, held, changed) = {
            let mut st = cell.lock();
            let dirty = std::mem::take(&mut st.dirty);
            for (idx, staged) in dirty {
                let queued = if staged.len() <= INLINE_QUEUE_MAX {
                    staged.read_prefix(staged.len()).map(Queued::Inline)
                } else {
                    self.staging.enqueue(&staged).map(Queued::File)
                };
                match queued {
                    Ok(queued) => {
                        // Visible as the newest snapshot at once, so reads and writes during the commit below
                        // see these bytes; submitted only once their rows are committed.
                        let job = self.new_job(idx, staged, None);
                        job.queued.store(true, Ordering::Release);
                        st.jobs.push(job.clone());
                        batch.push((job, queued));
                    }
                    Err(e) => {
                        st.dirty.insert(idx, staged);
                        for (j, _) in &batch {
                            st.jobs.retain(|x| !Arc::ptr_eq(x, j));
                            st.dirty.insert(j.idx, j.data.clone());
                        }
                        return Err(e);
                    }
                }
            }
            let held = std::mem::take(&mut st.held);
            let changed =
                st.times_dirty || st.size != st.db_size || !batch.is_empty() || !held.is_empty();
            (st.size, st.mtime_ns, st.ctime_ns, held, changed)
        };
        let restore = |batch: &[(Arc<Job>, Queued)]| {
            hold_again(cell, &held);
            let mut st = cell.lock();
            for (j, _) in batch {
                st.jobs.retain(|x| !Arc::ptr_eq(x, j));
                if !j.is_cancelled() {
                    st.dirty.entry(j.idx).or_insert_with(|| j.data.clone());
                }
            }
        };
        if batch.iter().any(|(_, q)| matches!(q, Queued::File(_)))
            && let Err(e) = self.staging.sync_queue_dir()
        {
            restore(&batch);
            return Err(e);
        }
        // Local-first: the rows are written, not synced: they survive the process, and the local committer syncs
        // them within `LOCAL_COMMIT_INTERVAL` (segments queued as files were fsynced above).
        let committed = if changed {
            self.vol.meta().write_fast(|c| {
                let mut ids = Vec::with_capacity(batch.len());
                for (j, queued) in &batch {
                    ids.push(match queued {
                        Queued::File(name) => meta::enqueue(c, cell.ino, j.idx, j.plain_len, name)?,
                        Queued::Inline(bytes) => meta::enqueue_inline(c, cell.ino, j.idx, bytes)?,
                    });
                }
                meta::set_size_times(c, cell.ino, size, mtime, ctime)?;
                meta::set_held_attrs(c, cell.ino, &held)?;
                Ok(ids)
            })
        } else {
            Ok(Vec::new())
        };
        let ids = match committed {
            Ok(ids) => ids,
            Err(e) => {
                restore(&batch);
                return Err(e);
            }
        };
        self.local_unsynced.store(true, Ordering::Release);
        let mut st = cell.lock();
        st.db_size = size;
        if st.mtime_ns == mtime {
            st.times_dirty = false;
        }
        for ((job, _), id) in batch.into_iter().zip(ids) {
            *job.queue_id.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
            self.submit(cell.clone(), job);
        }
        Ok(())
    }
}

/// Puts attribute changes whose commit failed back into the cell, under any held since (newer ones win).
fn hold_again(cell: &Cell, held: &meta::AttrChanges) {
    if held.is_empty() {
        return;
    }
    let mut st = cell.lock();
    st.held = held.then(&st.held);
}
