//! The mount's data engine: per-inode state of files being written or read (`Cell`), and the read, write and
//! truncate paths over staging, in-flight seals and committed segments.
//!
//! A file's bytes are, newest first: its dirty staging file for a segment (`FileState::dirty`), else the newest
//! sealing job's snapshot of that segment (`FileState::jobs`), else the committed segment in SQLite, else zeros.
//!
//! Invariant kept in the database at every commit (what makes crashes and regrowth safe): every segment row of a
//! file lies within the committed size (`idx * segment_size + plain_len <= size`). Reads never look past the size,
//! and growing a file therefore exposes zeros, never old bytes: a truncate that cuts a committed segment
//! re-encodes that boundary segment in the same transaction that shrinks the size.
//!
//! Locks, always taken in this order: the cell table, a cell's `commit` (serializes that inode's metadata
//! commits, so segment versions land in order), a cell's `st` (short, never held across store I/O except when a
//! write must first read the segment it modifies).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak, mpsc};
use std::time::Instant;

use crate::error::{QsfsError, Result};
use crate::meta::{self, AttrChanges, FileKind, Inode};
use crate::read_cache::ReadCache;
use crate::staging::{Staged, StagingArea};
use crate::volume::Volume;

/// Segments read ahead of a sequential reader.
const READAHEAD_SEGMENTS: u64 = 4;

/// A segment snapshot handed to the sealer: encoded, placed and committed by a worker (or, for a local-first
/// close, first recorded in the upload queue).
pub(crate) struct Job {
    pub idx: u64,
    /// Global, increasing: a commit of an older version never replaces a newer one.
    pub version: u64,
    pub data: Arc<Staged>,
    pub plain_len: u64,
    pub cancelled: AtomicBool,
    pub queue_id: Mutex<Option<i64>>,
    /// The errno this job failed with: every flush that waited on it reports it, whoever else saw it first.
    pub failed: Mutex<Option<i32>>,
    /// Made (or being made) durable in the upload queue: set before the job is visible, so a flush never waits
    /// for it as if it were a seal straight from staging (a queued upload waits for its stores, indefinitely).
    pub queued: AtomicBool,
    /// The next retry's backoff for a queued job whose upload failed (milliseconds; 0 before the first failure).
    pub retry_delay_ms: AtomicU64,
    /// The errno of a queued job's last failed upload (0: none): an fsync that gives up waiting reports it
    /// (ENOSPC when the stores are full, EIO when they are away).
    pub last_errno: std::sync::atomic::AtomicI32,
    /// An fsync waits for this job: a pack gathering it uploads now, whatever `--upload-lag` allows.
    pub wanted: AtomicBool,
}

impl Job {
    pub fn queue_id(&self) -> Option<i64> {
        *self.queue_id.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }
}

/// A snapshot to seal, with the file it belongs to.
pub(crate) type SealRequest = (Arc<Cell>, Arc<Job>);

pub(crate) struct FileState {
    pub size: u64,
    /// The size committed in SQLite.
    pub db_size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// Times changed by writes and not committed yet.
    pub times_dirty: bool,
    pub dirty: BTreeMap<u64, Arc<Staged>>,
    pub jobs: Vec<Arc<Job>>,
    /// Newest committed version per segment index.
    pub committed: HashMap<u64, u64>,
    pub opens: u32,
    /// errno of a failed background seal, reported by the next flush or fsync.
    pub error: Option<i32>,
    pub last_write: Option<Instant>,
    /// Commits made with synchronous=NORMAL since the last durable point.
    pub unsynced: bool,
    /// Where the last read ended: a read starting there is sequential and triggers readahead.
    pub read_end: u64,
    /// Readahead has queued every segment below this index for the current sequential run; later requests of
    /// the run (the kernel reads 128 KiB at a time, dozens per segment) queue only what lies beyond.
    pub prefetched: u64,
    /// The file lost its last name while open: the last release deletes it.
    pub unlinked: bool,
    /// Mode, owner and access time set while the file is open, committed with its size and times at the next
    /// close, fsync or idle seal (`Engine::hold_attrs`).
    pub held: AttrChanges,
}

impl FileState {
    /// The newest live job snapshot of segment `idx`.
    pub fn newest_job(&self, idx: u64) -> Option<&Arc<Job>> {
        self.jobs
            .iter()
            .filter(|j| j.idx == idx && !j.is_cancelled())
            .max_by_key(|j| j.version)
    }

    /// Records that version `version` of segment `idx` is committed. Older snapshots still in flight are void
    /// from now on: reading or rebuilding from them would resurrect replaced bytes, and their commits would be
    /// discarded anyway.
    pub fn mark_committed(&mut self, idx: u64, version: u64) {
        self.committed.insert(idx, version);
        for j in &self.jobs {
            if j.idx == idx && j.version < version {
                j.cancelled.store(true, Ordering::Release);
            }
        }
    }

    /// Upload-queue rows of snapshots of `idx` older than `version`: a commit of `version` deletes them in the
    /// same transaction, or a crash would let the next mount upload them over the newer bytes.
    pub fn older_rows(&self, idx: u64, version: u64) -> Vec<i64> {
        self.jobs
            .iter()
            .filter(|j| j.idx == idx && j.version < version)
            .filter_map(|j| j.queue_id())
            .collect()
    }

    pub fn is_idle(&self) -> bool {
        self.opens == 0 && self.dirty.is_empty() && self.jobs.is_empty() && self.held.is_empty()
    }

    /// Something a close must commit even without dirty data: held attributes, or times they changed.
    pub fn has_held_changes(&self) -> bool {
        !self.held.is_empty() || self.times_dirty
    }
}

pub(crate) struct Cell {
    pub ino: u64,
    pub st: Mutex<FileState>,
    /// Signalled whenever a job of this inode finishes.
    pub changed: Condvar,
    pub commit: Mutex<()>,
}

impl Cell {
    pub fn lock(&self) -> MutexGuard<'_, FileState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn lock_commit(&self) -> MutexGuard<'_, ()> {
        self.commit.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) struct Engine {
    pub vol: Arc<Volume>,
    pub staging: StagingArea,
    /// Room for writes in staging: the staging limit and the disk's free space (see `space`).
    pub space: super::space::Space,
    pub cache: Arc<ReadCache>,
    pub seg: u64,
    /// `--sync-close`: every close is an fsync (see `flush`).
    pub sync_close: bool,
    /// How long an fsync waits for queued uploads, in milliseconds (`flush::FSYNC_UPLOAD_WAIT`; tests shorten it).
    pub fsync_wait_ms: AtomicU64,
    /// `--upload-lag` in milliseconds (0: the default gathering, see `fuse::pack`).
    pub(super) upload_lag_ms: AtomicU64,
    /// Set while `drain` runs: packs being gathered upload at once.
    pub draining: AtomicBool,
    cells: Mutex<HashMap<u64, Arc<Cell>>>,
    version: AtomicU64,
    pub(super) jobs_tx: Mutex<Option<mpsc::Sender<SealRequest>>>,
    /// Jobs submitted and not finished, over all inodes (backpressure and drain).
    pub(super) inflight: (Mutex<usize>, Condvar),
    /// Of those, queued jobs waiting for their next upload attempt.
    pub(super) retrying: AtomicUsize,
    pub shutting_down: AtomicBool,
    /// Set when a commit produced garbage; the housekeeping thread collects it.
    pub garbage_pending: AtomicBool,
    /// A local-first close committed without syncing; the local committer (`background::LOCAL_COMMITTER`) syncs
    /// the metadata within `LOCAL_COMMIT_INTERVAL`.
    pub local_unsynced: AtomicBool,
    pub(super) seal_workers: AtomicUsize,
    /// The seal/upload workers (see `seal::SealWorker`).
    pub(super) seal_pool: crate::workers::Workers,
    me: Weak<Engine>,
}

impl Engine {
    pub fn new(vol: Arc<Volume>, cache_size: u64, sync_close: bool) -> Result<Arc<Engine>> {
        let staging = StagingArea::open(&vol.cache_dir(), true)?;
        let space = super::space::Space::new(&vol.cache_dir(), staging.usage());
        let cache = ReadCache::new(cache_size);
        cache.start_prefetch(vol.clone());
        Ok(Arc::new_cyclic(|me| Engine {
            me: me.clone(),
            seg: vol.segment_size(),
            vol,
            staging,
            space,
            cache,
            sync_close,
            fsync_wait_ms: AtomicU64::new(super::flush::FSYNC_UPLOAD_WAIT.as_millis() as u64),
            upload_lag_ms: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            cells: Mutex::new(HashMap::new()),
            version: AtomicU64::new(1),
            jobs_tx: Mutex::new(None),
            inflight: (Mutex::new(0), Condvar::new()),
            retrying: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
            garbage_pending: AtomicBool::new(false),
            local_unsynced: AtomicBool::new(false),
            seal_workers: AtomicUsize::new(0),
            seal_pool: crate::workers::Workers::new(),
        }))
    }

    pub(super) fn self_arc(&self) -> Arc<Engine> {
        self.me
            .upgrade()
            .expect("the engine outlives its own calls")
    }

    pub fn next_version(&self) -> u64 {
        self.version.fetch_add(1, Ordering::Relaxed)
    }

    fn cells(&self) -> MutexGuard<'_, HashMap<u64, Arc<Cell>>> {
        self.cells.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn load_cell(&self, ino: u64) -> Result<Arc<Cell>> {
        let inode = self
            .vol
            .meta()
            .read_short(|c| meta::get_inode(c, ino))?
            .ok_or_else(|| QsfsError::NotFound(format!("inode {ino}")))?;
        Self::new_cell(&inode)
    }

    fn new_cell(inode: &Inode) -> Result<Arc<Cell>> {
        if inode.kind != FileKind::File {
            return Err(QsfsError::IsADirectory(format!("inode {}", inode.ino)));
        }
        Ok(Arc::new(Cell {
            ino: inode.ino,
            st: Mutex::new(FileState {
                size: inode.size,
                db_size: inode.size,
                mtime_ns: inode.mtime_ns,
                ctime_ns: inode.ctime_ns,
                times_dirty: false,
                dirty: BTreeMap::new(),
                jobs: Vec::new(),
                committed: HashMap::new(),
                opens: 0,
                error: None,
                last_write: None,
                unsynced: false,
                read_end: 0,
                prefetched: 0,
                unlinked: false,
                held: AttrChanges::default(),
            }),
            changed: Condvar::new(),
            commit: Mutex::new(()),
        }))
    }

    /// The cell of `ino`, created (unopened) if needed. Used by recovery; ops go through `open`.
    pub fn cell(&self, ino: u64) -> Result<Arc<Cell>> {
        let mut cells = self.cells();
        if let Some(c) = cells.get(&ino) {
            return Ok(c.clone());
        }
        let c = self.load_cell(ino)?;
        cells.insert(ino, c.clone());
        Ok(c)
    }

    pub fn existing(&self, ino: u64) -> Option<Arc<Cell>> {
        self.cells().get(&ino).cloned()
    }

    pub fn all_cells(&self) -> Vec<Arc<Cell>> {
        self.cells().values().cloned().collect()
    }

    /// Counts an open handle of regular file `ino`.
    pub fn open(&self, ino: u64) -> Result<Arc<Cell>> {
        self.open_known(ino, None)
    }

    /// `open` of a file the caller has just created, from the row it committed: a create needs no read back.
    pub fn open_created(&self, inode: &Inode) -> Result<Arc<Cell>> {
        self.open_known(inode.ino, Some(inode))
    }

    fn open_known(&self, ino: u64, known: Option<&Inode>) -> Result<Arc<Cell>> {
        let mut cells = self.cells();
        let cell = match cells.get(&ino) {
            Some(c) => c.clone(),
            None => {
                let c = match known {
                    Some(inode) => Self::new_cell(inode)?,
                    None => self.load_cell(ino)?,
                };
                cells.insert(ino, c.clone());
                c
            }
        };
        cell.lock().opens += 1;
        Ok(cell)
    }

    /// Forgets a cell that holds nothing (no handle, no dirty data, no job).
    pub fn maybe_evict(&self, ino: u64) {
        let mut cells = self.cells();
        if let Some(c) = cells.get(&ino)
            && c.lock().is_idle()
        {
            cells.remove(&ino);
        }
    }

    /// Overlays what the engine knows newer than SQLite (size, times of unflushed writes) on `inode`.
    pub fn overlay(&self, inode: &mut Inode) {
        if let Some(c) = self.existing(inode.ino) {
            let st = c.lock();
            inode.size = st.size;
            st.held.apply_to(inode);
            if st.times_dirty {
                inode.mtime_ns = st.mtime_ns;
                inode.ctime_ns = inode.ctime_ns.max(st.ctime_ns);
            }
        }
    }

    /// chmod, chown and utimens of a file some handle has open: the changes are held in its cell (reads of the
    /// inode see them at once) and committed with the file's size and times at its next close, fsync or idle
    /// seal — one transaction for `cp -a`'s write, fchown, fchmod, futimens and close instead of four. Returns
    /// false (the caller commits now) when the file is not open here or this copy may not write.
    pub fn hold_attrs(&self, ino: u64, ch: &AttrChanges) -> bool {
        let Some(cell) = self.existing(ino) else {
            return false;
        };
        if self.vol.check_writer().is_err() {
            return false;
        }
        // The commit lock orders this after a commit in progress, which read the cell's times before it.
        let _commit = cell.lock_commit();
        let mut st = cell.lock();
        if st.opens == 0 {
            return false;
        }
        st.held = st.held.then(&ch.held());
        if let Some(m) = ch.mtime_ns {
            st.mtime_ns = m;
        }
        st.ctime_ns = ch.ctime_ns.unwrap_or_else(meta::now_ns);
        st.times_dirty = true;
        true
    }

    /// Keeps a cell's idea of the times in step with an explicit utimens/chmod, so a later flush does not
    /// overwrite them with older values.
    pub fn times_changed(&self, ino: u64, mtime_ns: i64, ctime_ns: i64) {
        if let Some(c) = self.existing(ino) {
            let mut st = c.lock();
            st.mtime_ns = mtime_ns;
            st.ctime_ns = ctime_ns;
        }
    }

    /// Reads up to `len` bytes at `offset` (fewer at end of file).
    pub fn read(&self, cell: &Cell, offset: u64, len: u32) -> Result<Vec<u8>> {
        enum Src {
            Local(Arc<Staged>, u64),
            Db,
        }
        let seg = self.seg;
        let (end, plan, sequential) = {
            let mut st = cell.lock();
            let end = st.size.min(offset.saturating_add(len as u64));
            let mut plan = Vec::new();
            let mut pos = offset;
            while pos < end {
                let idx = pos / seg;
                let src = if let Some(d) = st.dirty.get(&idx) {
                    Src::Local(d.clone(), d.len())
                } else if let Some(j) = st.newest_job(idx) {
                    Src::Local(j.data.clone(), j.plain_len)
                } else {
                    Src::Db
                };
                plan.push((idx, src));
                pos = (idx + 1) * seg;
            }
            let sequential = offset == st.read_end && offset > 0;
            st.read_end = end;
            if !sequential {
                st.prefetched = 0;
            }
            (end, plan, sequential)
        };
        if offset >= end {
            return Ok(Vec::new());
        }
        // Filled piece by piece in file order; only holes and the local pieces' room are zero-filled.
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut last_db = None;
        for (idx, src) in plan {
            let seg_start = idx * seg;
            let from = offset.max(seg_start);
            let to = end.min(seg_start + seg);
            let piece_end = out.len() + (to - from) as usize;
            match src {
                Src::Local(staged, valid) => {
                    out.resize(piece_end, 0);
                    let dst = &mut out[piece_end - (to - from) as usize..];
                    staged.read_at(from - seg_start, dst)?;
                    // Bytes past the snapshot's length are zeros even if the file behind it grew later.
                    let valid_end = seg_start + valid;
                    if to > valid_end {
                        let z = valid_end.max(from);
                        dst[(z - from) as usize..].fill(0);
                    }
                }
                Src::Db => {
                    let rec = self
                        .vol
                        .meta()
                        .read(|c| meta::segment_at(c, cell.ino, idx))?;
                    if let Some(rec) = rec {
                        let data =
                            self.cache
                                .get(&self.vol, &rec, &format!("inode {}", cell.ino))?;
                        let lo = (from - seg_start) as usize;
                        let hi = ((to - seg_start) as usize).min(data.len());
                        if hi > lo {
                            out.extend_from_slice(&data[lo..hi]);
                        }
                    }
                    // Past the segment's bytes (or no segment at all): a hole.
                    out.resize(piece_end, 0);
                    last_db = Some(idx);
                }
            }
        }
        if sequential && let Some(idx) = last_db {
            self.readahead(cell, idx, end);
        }
        Ok(out)
    }

    fn readahead(&self, cell: &Cell, idx: u64, size: u64) {
        let (first, last) = {
            let mut st = cell.lock();
            let last = (idx + READAHEAD_SEGMENTS).min(st.size.max(size).div_ceil(self.seg));
            let first = (idx + 1).max(st.prefetched);
            st.prefetched = st.prefetched.max(last);
            (first, last)
        };
        for i in first..last {
            if let Ok(Some(rec)) = self.vol.meta().read(|c| meta::segment_at(c, cell.ino, i)) {
                self.cache.prefetch(rec);
            }
        }
    }

    /// The staging file of segment `idx` for writing, creating it from the segment's current bytes if needed.
    /// `covers` says the coming write replaces every existing byte of the segment, so none need reading.
    fn staged_for_write(
        &self,
        cell: &Cell,
        st: &mut FileState,
        idx: u64,
        covers: bool,
    ) -> Result<Arc<Staged>> {
        if let Some(d) = st.dirty.get(&idx) {
            return Ok(d.clone());
        }
        let seg_start = idx * self.seg;
        let existing = st.size.saturating_sub(seg_start).min(self.seg);
        let base: Vec<u8> = if existing == 0 || covers {
            Vec::new()
        } else if let Some(j) = st.newest_job(idx) {
            j.data.read_prefix(j.plain_len.min(existing))?
        } else {
            match self
                .vol
                .meta()
                .read(|c| meta::segment_at(c, cell.ino, idx))?
            {
                Some(rec) => {
                    let data = self
                        .cache
                        .get(&self.vol, &rec, &format!("inode {}", cell.ino))?;
                    data[..(existing as usize).min(data.len())].to_vec()
                }
                None => Vec::new(),
            }
        };
        let staged = Arc::new(self.staging.create(&base)?);
        st.dirty.insert(idx, staged.clone());
        Ok(staged)
    }

    /// Writes `data` at `offset` (or at the end of file with `append`); returns the offset written at.
    pub fn write(&self, cell: &Arc<Cell>, offset: u64, data: &[u8], append: bool) -> Result<u64> {
        // Before any lock: a write without room waits here for uploads, then fails with ENOSPC.
        let _room = self.space.admit(data.len() as u64)?;
        let seg = self.seg;
        let mut full = Vec::new();
        let offset = {
            let mut st = cell.lock();
            let offset = if append { st.size } else { offset };
            let end = offset
                .checked_add(data.len() as u64)
                .filter(|e| *e <= i64::MAX as u64)
                .ok_or_else(|| QsfsError::Invalid("write past the largest file size".into()))?;
            let mut pos = offset;
            while pos < end {
                let idx = pos / seg;
                let seg_start = idx * seg;
                let in_off = pos - seg_start;
                let n = (seg - in_off).min(end - pos);
                let existing = st.size.saturating_sub(seg_start).min(seg);
                let covers = in_off == 0 && n >= existing;
                let staged = self.staged_for_write(cell, &mut st, idx, covers)?;
                let chunk = &data[(pos - offset) as usize..(pos - offset + n) as usize];
                staged.write_at(in_off, chunk)?;
                pos += n;
                st.size = st.size.max(pos);
                // A sequential writer just filled this segment: seal it now, in the background, so a long write
                // streams to the stores instead of piling up in staging. (Writes inside a segment do not, or
                // random small writes would re-encode a whole segment each.)
                if in_off + n == seg {
                    full.push(idx);
                }
            }
            let now = meta::now_ns();
            st.mtime_ns = now;
            st.ctime_ns = now;
            st.times_dirty = true;
            st.last_write = Some(Instant::now());
            for idx in &full {
                if let Some(staged) = st.dirty.remove(idx) {
                    self.start_job(cell, &mut st, *idx, staged);
                }
            }
            offset
        };
        if !full.is_empty() {
            self.wait_for_capacity();
        }
        Ok(offset)
    }

    /// Turns a dirty segment into a job and hands it to the sealer.
    pub(super) fn start_job(
        &self,
        cell: &Arc<Cell>,
        st: &mut FileState,
        idx: u64,
        staged: Arc<Staged>,
    ) -> Arc<Job> {
        let job = self.new_job(idx, staged, None);
        st.jobs.push(job.clone());
        self.submit(cell.clone(), job.clone());
        job
    }

    pub(super) fn new_job(&self, idx: u64, staged: Arc<Staged>, queue_id: Option<i64>) -> Arc<Job> {
        Arc::new(Job {
            idx,
            version: self.next_version(),
            plain_len: staged.len(),
            data: staged,
            cancelled: AtomicBool::new(false),
            queue_id: Mutex::new(queue_id),
            failed: Mutex::new(None),
            queued: AtomicBool::new(queue_id.is_some()),
            retry_delay_ms: AtomicU64::new(0),
            last_errno: std::sync::atomic::AtomicI32::new(0),
            wanted: AtomicBool::new(false),
        })
    }
}
