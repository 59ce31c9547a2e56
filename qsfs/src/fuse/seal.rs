//! Sealing: the worker pool that encodes and places segment snapshots and commits them, the flush that backs
//! fsync and close, the `--writeback` upload queue, inode deletion, recovery at mount and the drain at unmount.
//!
//! Durability. `flush` (close) and `fsync` return only after every snapshot of the file taken so far is placed
//! on at least `write_quorum` stores and committed, and after one FULL SQLite commit (or WAL fsync) that hardens
//! those commits; a failed upload makes them fail with its errno (EIO) and puts the bytes back as dirty, so a
//! later flush retries them. With `--writeback` they instead make the snapshots durable locally — small ones
//! inside their queue rows, larger ones fsynced into `cache/queue/` — record them in the upload queue with the
//! new size in one FULL commit, and return; workers upload in the background (retrying until they succeed), and
//! the rows survive a crash to be resumed by the next mount.

use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::engine::{Cell, Engine, Job};
use crate::error::{QsfsError, Result};
use crate::meta::{self, SegmentRecord};

/// Snapshots in flight over all files before a writer waits: bounds staging disk use and store load.
const MAX_INFLIGHT: usize = 32;
/// `--writeback` segments up to this size are queued with their bytes in the SQLite row: one commit makes them
/// durable, where a queue file costs a file fsync, a rename and a directory fsync first.
const INLINE_QUEUE_MAX: u64 = 64 * 1024;
/// Dirty data untouched this long is sealed by the housekeeping thread.
pub const IDLE_SEAL: Duration = Duration::from_secs(2);

/// Where a `--writeback` snapshot is kept until it is uploaded.
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
    /// Starts `n` sealing workers.
    pub fn start_workers(self: &Arc<Self>, n: usize) {
        let (tx, rx) = mpsc::channel::<(Arc<Cell>, Arc<Job>)>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..n {
            let (eng, rx) = (self.clone(), rx.clone());
            let _ = std::thread::Builder::new()
                .name(format!("qsfs-seal-{i}"))
                .spawn(move || {
                    loop {
                        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((cell, job)) = next else { break };
                        eng.run_job(&cell, &job);
                    }
                });
        }
        self.seal_workers.store(n, Ordering::Release);
        *self.jobs_tx.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    /// Stops the workers once the queue they share is empty.
    pub fn stop_workers(&self) {
        self.jobs_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    pub(super) fn submit(&self, cell: Arc<Cell>, job: Arc<Job>) {
        *self.inflight.0.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        let tx = self.jobs_tx.lock().unwrap_or_else(|p| p.into_inner());
        match tx.as_ref() {
            Some(tx) => {
                let _ = tx.send((cell, job));
            }
            None => {
                drop(tx);
                // No pool (stopped at shutdown): seal on a thread of its own, never on the caller's, which may
                // hold this cell's locks.
                let eng = self.self_arc();
                let _ = std::thread::Builder::new()
                    .name("qsfs-seal-late".into())
                    .spawn(move || eng.run_job(&cell, &job));
            }
        }
    }

    /// Makes a writer wait while too many snapshots are in flight.
    pub(super) fn wait_for_capacity(&self) {
        let (m, cv) = &self.inflight;
        let mut n = m.lock().unwrap_or_else(|p| p.into_inner());
        while *n > MAX_INFLIGHT {
            n = cv.wait(n).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn job_finished(&self) {
        let (m, cv) = &self.inflight;
        let mut n = m.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        cv.notify_all();
    }

    fn run_job(&self, cell: &Arc<Cell>, job: &Arc<Job>) {
        let mut delay = Duration::from_millis(500);
        loop {
            if job.is_cancelled() {
                if let Some(q) = job.queue_id() {
                    // Superseded or cut away: its row must not outlive it (the truncate or unlink that cancelled
                    // it may have deleted it already; deleting again is harmless).
                    match self.vol.meta().write_fast(|c| meta::dequeue(c, q)) {
                        Ok(_) => job.data.remove(),
                        Err(e) => {
                            tracing::warn!(ino = cell.ino, error = %e, "stale queue row left")
                        }
                    }
                }
                self.finish_job(cell, job, None, false);
                break;
            }
            let placed = job
                .data
                .read_prefix(job.plain_len)
                .and_then(|bytes| self.vol.encode_and_place(cell.ino, job.idx, &bytes));
            match placed.and_then(|rec| self.commit_job(cell, job, rec)) {
                Ok(()) => break,
                Err(e) if job.queue_id().is_some() => {
                    // A queued segment is durable locally and close already succeeded: keep trying; a mount
                    // that stops first leaves the row for the next one.
                    if self.shutting_down.load(Ordering::Acquire) {
                        tracing::warn!(ino = cell.ino, error = %e, "queued segment left for the next mount");
                        self.finish_job(cell, job, None, false);
                        break;
                    }
                    tracing::warn!(ino = cell.ino, error = %e, "queued upload failed; retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
                Err(e) => {
                    tracing::error!(ino = cell.ino, error = %e, "sealing a segment failed");
                    self.finish_job(cell, job, Some(e.errno()), true);
                    break;
                }
            }
        }
        self.maybe_evict(cell.ino);
    }

    /// Removes a finished job from its cell. A failed job's bytes go back to dirty (unless newer bytes or a
    /// truncate superseded them) and its errno waits for the next flush.
    fn finish_job(&self, cell: &Cell, job: &Arc<Job>, errno: Option<i32>, restore: bool) {
        let mut st = cell.lock();
        st.jobs.retain(|j| !Arc::ptr_eq(j, job));
        if restore && !job.is_cancelled() {
            let newer = st
                .jobs
                .iter()
                .any(|j| j.idx == job.idx && j.version > job.version);
            // A newer job or dirty snapshot of this segment already holds these bytes: `staged_for_write` starts
            // a new snapshot from the newest one (or from nothing only when the write covers every byte), so
            // putting the older bytes back would overwrite newer data.
            if !newer && !st.dirty.contains_key(&job.idx) {
                st.dirty.insert(job.idx, job.data.clone());
            }
        }
        if let Some(e) = errno {
            st.error = Some(e);
            *job.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        }
        drop(st);
        cell.changed.notify_all();
        self.job_finished();
    }

    /// Records a placed segment, unless a truncate cancelled it or a newer version already committed (then its
    /// shards become garbage).
    fn commit_job(&self, cell: &Cell, job: &Arc<Job>, rec: SegmentRecord) -> Result<()> {
        let _commit = cell.lock_commit();
        let (stale, db_size, mtime, ctime, older) = {
            let st = cell.lock();
            let older = st.older_rows(job.idx, job.version);
            let stale = job.is_cancelled()
                || st
                    .committed
                    .get(&job.idx)
                    .is_some_and(|v| *v >= job.version);
            let end = job.idx * self.seg + job.plain_len;
            (stale, st.db_size.max(end), st.mtime_ns, st.ctime_ns, older)
        };
        let queue_id = job.queue_id();
        let applied = self.vol.meta().write_fast(|c| {
            let live = match queue_id {
                Some(q) => meta::dequeue(c, q)? && !stale,
                None => !stale,
            };
            if !live {
                meta::add_garbage(c, &rec.shards)?;
                return Ok(false);
            }
            meta::put_segment(c, cell.ino, &rec)?;
            for q in &older {
                meta::dequeue(c, *q)?;
            }
            meta::set_size_times(c, cell.ino, db_size, mtime, ctime)?;
            Ok(true)
        })?;
        {
            let mut st = cell.lock();
            if applied {
                st.mark_committed(job.idx, job.version);
                st.db_size = st.db_size.max(db_size);
                st.unsynced = true;
                // `times_dirty` stays set even when the row got the cell's current times: a setattr may have
                // committed newer times between this job's read of the cell and its commit, and only the flush's
                // own commit of the cell's times puts them back.
            }
        }
        if queue_id.is_some() {
            job.data.remove();
        }
        self.garbage_pending.store(true, Ordering::Release);
        self.finish_job(cell, job, None, false);
        Ok(())
    }

    /// close(2) and the idle sealer: makes everything written so far durable (or, with `--writeback`, durable
    /// locally and queued). fsync adds a WAL sync even when nothing was written (`sync_namespace`).
    pub fn flush(&self, cell: &Arc<Cell>, sync_namespace: bool) -> Result<()> {
        self.flush_reporting(cell, sync_namespace, true)
    }

    /// A flush on behalf of no caller (the idle sealer, the last release): it fails only for its own jobs and
    /// leaves the file's pending error for the next fsync/close, which must see it.
    pub fn flush_quietly(&self, cell: &Arc<Cell>) -> Result<()> {
        self.flush_reporting(cell, false, false)
    }

    /// `report`: this flush answers an fsync/close, so it takes (and returns) the error a background seal of this
    /// file left; otherwise that error stays for the next one that does.
    fn flush_reporting(&self, cell: &Arc<Cell>, sync_namespace: bool, report: bool) -> Result<()> {
        if self.writeback {
            return self.queue_dirty(cell, sync_namespace, report);
        }
        let waits: Vec<Arc<Job>> = {
            let mut st = cell.lock();
            let dirty = std::mem::take(&mut st.dirty);
            for (idx, staged) in dirty {
                self.start_job(cell, &mut st, idx, staged);
            }
            st.jobs
                .iter()
                .filter(|j| j.queue_id().is_none())
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

    /// Commits the in-memory size and times with a FULL commit if they changed, else hardens earlier NORMAL
    /// commits of this file (or, for fsync, of the namespace) with a WAL sync.
    fn commit_size(&self, cell: &Cell, always_sync: bool) -> Result<()> {
        let _commit = cell.lock_commit();
        let (size, mtime, ctime, changed, unsynced) = {
            let st = cell.lock();
            (
                st.size,
                st.mtime_ns,
                st.ctime_ns,
                st.times_dirty || st.size != st.db_size,
                st.unsynced,
            )
        };
        if changed {
            self.vol
                .meta()
                .write(|c| meta::set_size_times(c, cell.ino, size, mtime, ctime))?;
        } else if unsynced || always_sync {
            self.vol.meta().sync()?;
        }
        // The durability point: the metadata this file depends on goes to the stores' log before close/fsync
        // returns (a no-op when nothing is pending).
        self.vol.replicate_metadata()?;
        let mut st = cell.lock();
        st.db_size = size;
        st.unsynced = false;
        if st.mtime_ns == mtime {
            st.times_dirty = false;
        }
        Ok(())
    }

    /// `--writeback` flush: fsync each dirty snapshot into the queue directory, then one FULL commit records the
    /// queue rows and the size; the uploads run later.
    fn queue_dirty(&self, cell: &Arc<Cell>, always_sync: bool, report: bool) -> Result<()> {
        let _commit = cell.lock_commit();
        let mut batch = Vec::new();
        let (size, mtime, ctime, changed) = {
            let mut st = cell.lock();
            if report && let Some(e) = st.error.take() {
                return Err(errno_err(e));
            }
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
            let changed = st.times_dirty || st.size != st.db_size || !batch.is_empty();
            (st.size, st.mtime_ns, st.ctime_ns, changed)
        };
        let restore = |batch: &[(Arc<Job>, Queued)]| {
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
        let committed = if changed {
            self.vol.meta().write(|c| {
                let mut ids = Vec::with_capacity(batch.len());
                for (j, queued) in &batch {
                    ids.push(match queued {
                        Queued::File(name) => meta::enqueue(c, cell.ino, j.idx, j.plain_len, name)?,
                        Queued::Inline(bytes) => meta::enqueue_inline(c, cell.ino, j.idx, bytes)?,
                    });
                }
                meta::set_size_times(c, cell.ino, size, mtime, ctime)?;
                Ok(ids)
            })
        } else if always_sync || cell.lock().unsynced {
            self.vol.meta().sync().map(|_| Vec::new())
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
        let mut st = cell.lock();
        st.db_size = size;
        st.unsynced = false;
        if st.mtime_ns == mtime {
            st.times_dirty = false;
        }
        for ((job, _), id) in batch.into_iter().zip(ids) {
            *job.queue_id.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
            self.submit(cell.clone(), job);
        }
        Ok(())
    }

    /// Deletes inode `ino` (no names left) unless a handle still holds it open; the last release calls this
    /// again. Its segments and queued uploads go with it.
    pub fn forget_inode(&self, ino: u64) -> Result<()> {
        if let Some(cell) = self.existing(ino) {
            let _commit = cell.lock_commit();
            let mut st = cell.lock();
            if st.opens > 0 {
                st.unlinked = true;
                return Ok(());
            }
            st.dirty.clear();
            for j in &st.jobs {
                j.cancelled.store(true, Ordering::Release);
            }
        }
        self.vol
            .meta()
            .write_fast(|c| meta::delete_inode_if_unreferenced(c, ino))?;
        self.garbage_pending.store(true, Ordering::Release);
        self.maybe_evict(ino);
        Ok(())
    }

    /// The last handle of `cell` closed: seal what is left (errors are logged: release cannot report them, the
    /// data stays dirty for the idle sealer) and delete the inode if it was unlinked meanwhile.
    pub fn release(&self, cell: &Arc<Cell>) -> Result<()> {
        let last = {
            let mut st = cell.lock();
            st.opens = st.opens.saturating_sub(1);
            st.opens == 0
        };
        if !last {
            return Ok(());
        }
        let dirty = !cell.lock().dirty.is_empty();
        if dirty && let Err(e) = self.flush_quietly(cell) {
            tracing::error!(ino = cell.ino, error = %e, "data written after close is not yet on the stores");
        }
        let unlinked = cell.lock().unlinked;
        if unlinked {
            self.forget_inode(cell.ino)?;
        }
        self.maybe_evict(cell.ino);
        Ok(())
    }

    /// At mount: deletes orphan inodes (unlinked while open when the last mount died), drops leftover queue files,
    /// and resumes the upload queue. Returns (orphans deleted, queued segments resumed).
    pub fn recover(self: &Arc<Self>) -> Result<(usize, usize)> {
        let orphans = self.vol.meta().read(meta::orphan_inodes)?;
        for ino in &orphans {
            self.vol
                .meta()
                .write_fast(|c| meta::delete_inode_if_unreferenced(c, *ino))?;
        }
        let queued = self.vol.meta().read(meta::queued_segments)?;
        let known: std::collections::HashSet<&str> =
            queued.iter().map(|q| q.file.as_str()).collect();
        for path in self.staging.queue_files()? {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !known.contains(name) {
                let _ = std::fs::remove_file(&path);
            }
        }
        let mut resumed = 0;
        for q in &queued {
            let staged = if q.inline {
                // Back into a staging file (this mount's, removed once uploaded): the sealer and reads work on
                // files.
                self.vol
                    .meta()
                    .read(|c| meta::queued_data(c, q.id))
                    .and_then(|bytes| {
                        bytes.ok_or_else(|| {
                            QsfsError::Invalid("inline queued segment without bytes".into())
                        })
                    })
                    .and_then(|bytes| self.staging.create(&bytes))
            } else {
                self.staging.open_queued(&q.file, q.plain_len)
            };
            let staged = match staged {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    tracing::error!(ino = q.ino, segment = q.index, error = %e,
                        "queued segment's local file is gone; its bytes are lost");
                    self.vol
                        .meta()
                        .write(|c| meta::dequeue(c, q.id).map(|_| ()))?;
                    continue;
                }
            };
            let cell = self.cell(q.ino)?;
            let job = self.new_job(q.index, staged, Some(q.id));
            cell.lock().jobs.push(job.clone());
            self.submit(cell, job);
            resumed += 1;
        }
        if !orphans.is_empty() {
            self.garbage_pending.store(true, Ordering::Release);
        }
        Ok((orphans.len(), resumed))
    }

    /// Seals files left dirty and idle for `IDLE_SEAL`, and collects garbage: the housekeeping thread's round.
    pub fn housekeeping(&self, force: bool) {
        for cell in self.all_cells() {
            let due = {
                let st = cell.lock();
                !st.dirty.is_empty()
                    && (force || st.last_write.is_none_or(|t| t.elapsed() >= IDLE_SEAL))
            };
            if due && let Err(e) = self.flush_quietly(&cell) {
                tracing::warn!(ino = cell.ino, error = %e, "idle seal failed; will retry");
            }
            self.maybe_evict(cell.ino);
        }
        // A copy that is not the volume's writer ships nothing and deletes nothing (its writes fail with EROFS).
        if self.vol.recheck_lease_if_due().is_err() {
            return;
        }
        // Changes that no durability point has shipped yet (namespace operations, `--writeback` closes, uploads
        // that finished in the background) follow within a housekeeping round.
        if let Err(e) = self.vol.replicate_metadata() {
            tracing::warn!(error = %e, "metadata not yet on the stores; will retry");
        }
        if self.garbage_pending.swap(false, Ordering::AcqRel)
            && let Err(e) = self.vol.collect_garbage()
        {
            tracing::warn!(error = %e, "garbage collection failed; will retry");
            self.garbage_pending.store(true, Ordering::Release);
        }
    }

    /// Before unmount: seal (or queue) every dirty file and wait up to `timeout` for uploads in flight. Returns
    /// how many queued segments remain for the next mount.
    pub fn drain(&self, timeout: Duration) -> usize {
        self.housekeeping(true);
        let deadline = Instant::now() + timeout;
        let (m, cv) = &self.inflight;
        let mut n = m.lock().unwrap_or_else(|p| p.into_inner());
        while *n > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            n = cv
                .wait_timeout(n, left.min(Duration::from_millis(200)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(n);
        self.park_unsealed();
        self.vol.meta().read(meta::queue_len).unwrap_or(0) as usize
    }

    /// Data whose upload failed (too few stores answer) is still dirty in memory: before the mount goes away it
    /// goes into the durable upload queue, like `--writeback` data, so the next mount uploads it instead of the
    /// bytes being lost with this process.
    fn park_unsealed(&self) {
        for cell in self.all_cells() {
            if cell.lock().dirty.is_empty() {
                continue;
            }
            match self.queue_dirty(&cell, false, false) {
                Ok(()) => tracing::warn!(
                    ino = cell.ino,
                    "data not yet on the stores is queued locally for the next mount"
                ),
                Err(e) => tracing::error!(ino = cell.ino, error = %e,
                    "data not yet on the stores could not be queued locally and is lost"),
            }
        }
    }
}
