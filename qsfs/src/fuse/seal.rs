//! Sealing: the worker pool that encodes and places segment snapshots and commits them, inode deletion, recovery
//! at mount (the upload queue resumed) and the drain at unmount. What close and fsync wait for is in `flush`.
//!
//! A job either has no queue row (sealed straight from staging: a full segment of a sequential writer, or an
//! fsync's dirty data; a failure puts its bytes back as dirty and leaves its errno for the next close/fsync) or
//! one (its bytes are durable locally in the upload queue: a failure is retried until it succeeds, and a mount
//! that stops first leaves the row for the next one).

use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::commit::CommitView;
use super::engine::{Cell, Engine, Job};
use crate::error::{QsfsError, Result};
use crate::meta::{self, SegmentRecord};

/// Snapshots in flight over all files before a writer waits: bounds staging disk use and store load.
const MAX_INFLIGHT: usize = 32;
/// A queued upload about to retry re-checks down stores last checked longer ago than this.
const RETRY_REVIVE_GAP: Duration = Duration::from_secs(2);
/// Dirty data untouched this long is sealed by the housekeeping thread.
pub const IDLE_SEAL: Duration = Duration::from_secs(2);

/// The receiving end of the seal workers' shared channel.
type JobQueue = Arc<std::sync::Mutex<mpsc::Receiver<(Arc<Cell>, Arc<Job>)>>>;

/// Seals and uploads the jobs of one shared channel, one job per unit of work; done once the channel is closed
/// and empty (`stop_workers`).
struct SealWorker {
    eng: Arc<Engine>,
    rx: JobQueue,
    sealed: u64,
    /// Jobs taken from the channel while gathering a pack that did not go into it: this worker's next ones.
    carry: std::collections::VecDeque<(Arc<Cell>, Arc<Job>)>,
}

impl crate::workers::Worker for SealWorker {
    fn name(&self) -> &'static str {
        "seal/upload"
    }

    fn work(&mut self, _stop: &Arc<std::sync::atomic::AtomicBool>) -> crate::workers::Next {
        use crate::workers::Next;
        // Carried jobs first, without the channel's lock: the lock is not fair, and a worker waiting for it while
        // the others take turns at the channel would hold its carried jobs (and an fsync waiting on them) forever.
        if !self.carry.is_empty() {
            let (pack, alone): (Vec<_>, Vec<_>) = self
                .carry
                .drain(..)
                .partition(|(_, job)| self.eng.packable(job));
            self.sealed += (pack.len() + alone.len()) as u64;
            self.eng.run_pack(pack);
            for (cell, job) in alone {
                self.eng.run_job(&cell, &job);
            }
            return Next::Busy;
        }
        let rx = self.rx.lock().unwrap_or_else(|p| p.into_inner());
        let next = rx.recv_timeout(Duration::from_millis(500));
        match next {
            Ok((cell, job)) if self.eng.packable(&job) => {
                let (pack, others) = self.eng.gather_pack((cell, job), &rx);
                drop(rx);
                self.sealed += pack.len() as u64;
                self.eng.run_pack(pack);
                self.carry.extend(others);
                Next::Busy
            }
            Ok((cell, job)) => {
                drop(rx);
                self.eng.run_job(&cell, &job);
                self.sealed += 1;
                Next::Busy
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Next::Idle(Duration::ZERO),
            Err(mpsc::RecvTimeoutError::Disconnected) => Next::Done,
        }
    }

    fn status(&self) -> String {
        format!("{} segments sealed and uploaded or queued", self.sealed)
    }
}

impl Engine {
    /// Starts `n` sealing workers (workers of the engine's `seal_pool`, fed by one channel). Fails if none can be
    /// started: jobs would go to a channel no one reads, and every flush would wait forever. Fewer than `n` (the
    /// system is short of threads) is a warning.
    pub fn start_workers(self: &Arc<Self>, n: usize) -> crate::error::Result<usize> {
        let (tx, rx) = mpsc::channel::<(Arc<Cell>, Arc<Job>)>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let mut started = 0;
        let mut last_error = None;
        for _ in 0..n {
            let worker = SealWorker {
                eng: self.clone(),
                rx: rx.clone(),
                sealed: 0,
                carry: Default::default(),
            };
            match self.seal_pool.start(worker) {
                Ok(()) => started += 1,
                Err(e) => last_error = Some(e),
            }
        }
        if let Some(e) = last_error {
            if started == 0 {
                return Err(e);
            }
            tracing::warn!(started, wanted = n, error = %e, "fewer seal workers than asked for");
        }
        self.seal_workers.store(started, Ordering::Release);
        *self.jobs_tx.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        Ok(started)
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
        self.send(cell, job);
    }

    /// Hands a job already counted in flight to the workers.
    fn send(&self, cell: Arc<Cell>, job: Arc<Job>) {
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
                let late = {
                    let (cell, job) = (cell.clone(), job.clone());
                    std::thread::Builder::new()
                        .name("qsfs-seal-late".into())
                        .spawn(move || eng.run_job(&cell, &job))
                };
                if let Err(e) = late {
                    // No thread to spare: fail the job now rather than leave its flush waiting forever.
                    tracing::error!(ino = cell.ino, error = %e, "cannot start a thread to seal a segment");
                    self.finish_job(&cell, &job, Some(nix::libc::EIO), true);
                }
            }
        }
    }

    /// Seal and upload jobs submitted and not finished.
    pub fn jobs_in_flight(&self) -> usize {
        *self.inflight.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queued segments waiting for their next upload attempt (stores away).
    pub fn retrying_uploads(&self) -> usize {
        self.retrying.load(Ordering::Acquire)
    }

    /// Makes a writer wait while too many snapshots are in flight.
    pub(super) fn wait_for_capacity(&self) {
        let (m, cv) = &self.inflight;
        let mut n = m.lock().unwrap_or_else(|p| p.into_inner());
        // Queued segments waiting to retry (stores away) hold no staging a writer could free by waiting.
        while n.saturating_sub(self.retrying.load(Ordering::Acquire)) > MAX_INFLIGHT {
            n = cv.wait(n).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn job_finished(&self) {
        let (m, cv) = &self.inflight;
        let mut n = m.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        cv.notify_all();
    }

    pub(super) fn run_job(&self, cell: &Arc<Cell>, job: &Arc<Job>) {
        self.seal_once(cell, job);
        self.maybe_evict(cell.ino);
    }

    /// One attempt at a job. A queued segment that fails is sent again later (see `retry_later`); any other
    /// failure finishes the job with its errno.
    fn seal_once(&self, cell: &Arc<Cell>, job: &Arc<Job>) {
        if self.drop_if_cancelled(cell, job) {
            return;
        }
        // Until the rows commit, gc must not take the placed shards for orphans.
        let placing = self.vol.placements().begin();
        let placed = job
            .data
            .read_prefix(job.plain_len)
            .and_then(|bytes| self.vol.encode_and_place(cell.ino, job.idx, &bytes));
        let committed = placed.and_then(|rec| self.commit_job(cell, job, rec));
        drop(placing);
        if let Err(e) = committed {
            self.seal_failed(cell, job, &e);
        }
    }

    /// A job's upload or commit failed. A queued segment is durable locally and its close already succeeded: it is
    /// tried again (a mount that stops first leaves its row for the next one); any other job finishes with the
    /// error's errno, its bytes back in dirty.
    pub(super) fn seal_failed(&self, cell: &Arc<Cell>, job: &Arc<Job>, e: &QsfsError) {
        if job.queue_id().is_none() {
            tracing::error!(ino = cell.ino, error = %e, "sealing a segment failed");
            self.finish_job(cell, job, Some(e.errno()), true);
            return;
        }
        if self.shutting_down.load(Ordering::Acquire) {
            tracing::warn!(ino = cell.ino, error = %e, "queued segment left for the next mount");
            self.finish_job(cell, job, None, false);
            return;
        }
        // A read-only copy or mount uploads nothing until it may write again: no warning per try.
        if !matches!(e, QsfsError::ReadOnly(_)) {
            tracing::warn!(ino = cell.ino, error = %e, "queued upload failed; retrying");
        }
        job.last_errno.store(e.errno(), Ordering::Release);
        self.retry_later(cell.clone(), job.clone());
    }

    /// Finishes a job a truncate, unlink or newer version cancelled before it was placed; true if it was.
    pub(super) fn drop_if_cancelled(&self, cell: &Cell, job: &Arc<Job>) -> bool {
        if !job.is_cancelled() {
            return false;
        }
        if let Some(q) = job.queue_id() {
            // Superseded or cut away: its row must not outlive it (the truncate or unlink that cancelled it may
            // have deleted it already; deleting again is harmless).
            match self.vol.meta().write_fast(|c| meta::dequeue(c, q)) {
                Ok(_) => job.data.remove(),
                Err(e) => tracing::warn!(ino = cell.ino, error = %e, "stale queue row left"),
            }
        }
        self.finish_job(cell, job, None, false);
        true
    }

    /// Sends a failed queued job to the workers again after a backoff, without holding a worker meanwhile (while
    /// the stores are away, every queued segment waits here and fsyncs and new writes still get workers). It
    /// stays in flight for `drain`, but not for writers' backpressure.
    fn retry_later(&self, cell: Arc<Cell>, job: Arc<Job>) {
        // 0.5 s doubling to at most 4 s: an fsync may be waiting on this upload.
        let delay = job.retry_delay_ms.load(Ordering::Relaxed).clamp(500, 4000);
        job.retry_delay_ms
            .store((delay * 2).min(4000), Ordering::Relaxed);
        self.retrying.fetch_add(1, Ordering::AcqRel);
        self.inflight.1.notify_all();
        let eng = self.self_arc();
        self.vol.io().handle().spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            // Stores that were down may be back: ask now rather than at the background schedule, so closed data
            // reaches them within seconds of their return.
            eng.vol
                .stores()
                .revive_checked_before(RETRY_REVIVE_GAP)
                .await;
            eng.retrying.fetch_sub(1, Ordering::AcqRel);
            eng.send(cell, job);
        });
    }

    /// Removes a finished job from its cell. A failed job's bytes go back to dirty (unless newer bytes or a
    /// truncate superseded them) and its errno waits for the next flush.
    pub(super) fn finish_job(
        &self,
        cell: &Cell,
        job: &Arc<Job>,
        errno: Option<i32>,
        restore: bool,
    ) {
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
        let view = CommitView::of(cell, job, self.seg);
        let outcome = self.vol.meta().write_fast(|c| {
            let outcome = view.apply(c, cell.ino, job, &rec)?;
            if !outcome.applied {
                meta::add_garbage(c, &rec.shards)?;
            }
            Ok(outcome)
        })?;
        self.after_commit(cell, job, &view, outcome);
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
        let dirty = {
            let st = cell.lock();
            !st.dirty.is_empty() || st.has_held_changes()
        };
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

    /// Seals files left dirty and idle for `IDLE_SEAL`, scrubs uploaded inline plaintext from the write-ahead log,
    /// and collects garbage: the housekeeping thread's round.
    pub fn housekeeping(&self, force: bool) {
        self.vol.meta().restore_reserve();
        if let Err(e) = self.vol.meta().scrub_if_due() {
            tracing::warn!(error = %e, "uploaded plaintext not yet scrubbed from the write-ahead log; will retry");
        }
        for cell in self.all_cells() {
            let due = {
                let st = cell.lock();
                (!st.dirty.is_empty() || !st.held.is_empty())
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
        // Changes that no durability point has shipped yet (namespace operations, local-first closes, uploads
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
        self.draining.store(true, Ordering::Release);
        let left = self.drain_uploads(timeout);
        self.draining.store(false, Ordering::Release);
        left
    }

    fn drain_uploads(&self, timeout: Duration) -> usize {
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
        if let Err(e) = self.commit_local() {
            tracing::error!(error = %e, "closed files' local journal could not be synced at unmount");
        }
        self.vol.meta().read(meta::queue_len).unwrap_or(0) as usize
    }

    /// Data whose upload failed (too few stores answer) is still dirty in memory: before the mount goes away it
    /// goes into the durable upload queue, like closed files' data, so the next mount uploads it instead of the
    /// bytes being lost with this process.
    fn park_unsealed(&self) {
        for cell in self.all_cells() {
            if cell.lock().dirty.is_empty() {
                continue;
            }
            match self.queue_dirty(&cell) {
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
