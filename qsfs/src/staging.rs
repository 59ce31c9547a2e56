//! The mount's local staging area, `VOLUME/cache/`: plaintext of segments that were written but not yet sealed
//! onto the stores.
//!
//! - `staging/`: one sparse file per dirty segment, written in place by FUSE writes. Never promised to survive a
//!   crash (the durability promise is made by fsync/close, after sealing), so the mount empties it at start.
//! - `queue/`: segments of `--writeback` mounts that close has made durable locally (small ones are kept in their
//!   SQLite queue rows instead). Each file is fsynced and named by a row of the SQLite upload queue before close
//!   returns; the uploader deletes it after the segment commits.
//!
//! One staged object per segment keeps a segment's snapshot immutable once it is handed to the sealer (later
//! writes go to a fresh one), and lets a queued segment be renamed into `queue/` instead of copied. A small
//! segment stays in memory — no file is created at all — until it grows past [`MEMORY_MAX`] or the mount's
//! in-memory staging reaches [`MEMORY_BUDGET`]: creating and deleting a file per small file cost more than the rest
//! of its write (ext4 inode allocation), and a small closed segment goes into its queue row anyway.
//!
//! The area counts the bytes of its live segments, in memory or in files: the mount's staging limit and
//! free-space check (`fuse::space`) admit writes against it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::durable;
use crate::error::{QsfsError, Result};

pub const STAGING_DIR: &str = "staging";
pub const QUEUE_DIR: &str = "queue";
/// A staged segment larger than this is kept in a file (the inline queue limit: smaller ones are queued in
/// their SQLite row).
pub const MEMORY_MAX: u64 = 64 * 1024;
/// In-memory staging of the whole mount at most; past it new segments are staged in files.
pub const MEMORY_BUDGET: u64 = 64 << 20;

pub struct StagingArea {
    staging: PathBuf,
    queue: PathBuf,
    next: AtomicU64,
    /// Bytes staged in memory now, over all segments.
    in_memory: Arc<AtomicU64>,
    /// Bytes held by this area's live segments (dirty, sealing and queued): what the mount's staging limit
    /// counts (`fuse::space`).
    usage: Arc<AtomicU64>,
}

impl StagingArea {
    /// Opens `cache_dir`'s staging area, creating it if needed. `clean` empties `staging/` (leftovers of a crashed
    /// mount: never promised, never referenced).
    pub fn open(cache_dir: &Path, clean: bool) -> Result<StagingArea> {
        let staging = cache_dir.join(STAGING_DIR);
        let queue = cache_dir.join(QUEUE_DIR);
        for d in [&staging, &queue] {
            crate::private::create_dir_all(d)?;
        }
        if clean {
            for path in list_files(&staging)? {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(StagingArea {
            staging,
            queue,
            next: AtomicU64::new(0),
            in_memory: Arc::default(),
            usage: Arc::default(),
        })
    }

    /// The byte count of this area's live segments (shared: it changes as they are written and removed).
    pub fn usage(&self) -> Arc<AtomicU64> {
        self.usage.clone()
    }

    pub fn queue_dir(&self) -> &Path {
        &self.queue
    }

    /// A new staged segment holding `base` (the segment's current bytes, or nothing): in memory while it is small
    /// and the budget allows, else in a new file.
    pub fn create(&self, base: &[u8]) -> Result<Staged> {
        let name = format!(
            "{}-{}",
            std::process::id(),
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let staged = Staged {
            path: Mutex::new(self.staging.join(name)),
            data: RwLock::new(Data::Memory(Vec::new())),
            cursor: Mutex::new(()),
            len: AtomicU64::new(0),
            keep: AtomicBool::new(false),
            in_memory: self.in_memory.clone(),
            usage: self.usage.clone(),
            counted: AtomicBool::new(true),
        };
        if self.in_memory.load(Ordering::Relaxed) + MEMORY_MAX > MEMORY_BUDGET {
            staged.spill()?;
        }
        if !base.is_empty() {
            staged.write_at(0, base)?;
        }
        Ok(staged)
    }

    /// Opens a queued segment left by an earlier mount.
    pub fn open_queued(&self, file: &str, len: u64) -> Result<Staged> {
        let path = self.queue.join(file);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| QsfsError::io(format!("opening queued segment {}", path.display()), e))?;
        self.usage.fetch_add(len, Ordering::AcqRel);
        Ok(Staged {
            path: Mutex::new(path),
            data: RwLock::new(Data::File(f)),
            cursor: Mutex::new(()),
            len: AtomicU64::new(len),
            keep: AtomicBool::new(true),
            in_memory: self.in_memory.clone(),
            usage: self.usage.clone(),
            counted: AtomicBool::new(true),
        })
    }

    /// Makes `staged` durable and moves it into the queue directory under a new unique name, which it returns.
    /// The caller fsyncs the queue directory (once for a batch) before committing rows that name the files.
    pub fn enqueue(&self, staged: &Staged) -> Result<String> {
        staged.spill()?;
        staged.sync()?;
        let name = format!(
            "{}-{}-{}",
            crate::meta::now_ns(),
            std::process::id(),
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let target = self.queue.join(&name);
        let mut path = staged.path.lock().unwrap_or_else(|p| p.into_inner());
        std::fs::rename(&*path, &target)
            .map_err(|e| QsfsError::io(format!("queueing {}", path.display()), e))?;
        *path = target;
        staged.keep.store(true, Ordering::Release);
        Ok(name)
    }

    pub fn sync_queue_dir(&self) -> Result<()> {
        durable::sync_dir(&self.queue)
    }

    /// Files in the queue directory (for the mount's and fsck's leftover sweep).
    pub fn queue_files(&self) -> Result<Vec<PathBuf>> {
        list_files(&self.queue)
    }

    pub fn staging_files(&self) -> Result<Vec<PathBuf>> {
        list_files(&self.staging)
    }
}

fn list_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(QsfsError::io(format!("listing {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| QsfsError::io(format!("listing {}", dir.display()), e))?;
        out.push(e.path());
    }
    Ok(out)
}

/// One segment's plaintext, in memory or in a local file. Bytes past `len` do not exist; holes inside read as
/// zeros. A file is removed when the `Staged` is dropped, unless it was queued (then the uploader removes it
/// explicitly, after the commit that forgets its queue row).
pub struct Staged {
    /// The file's path (where it will be, while the bytes are in memory).
    path: Mutex<PathBuf>,
    data: RwLock<Data>,
    cursor: Mutex<()>,
    len: AtomicU64,
    keep: AtomicBool,
    in_memory: Arc<AtomicU64>,
    /// The area's byte count, which holds `len` for this segment while `counted`.
    usage: Arc<AtomicU64>,
    counted: AtomicBool,
}

enum Data {
    /// The bytes written so far (shorter than `len` when the segment ends in a hole).
    Memory(Vec<u8>),
    File(File),
}

impl Staged {
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn io_err(&self, what: &str, e: std::io::Error) -> QsfsError {
        let path = self.path.lock().unwrap_or_else(|p| p.into_inner());
        QsfsError::io(format!("{what} staging file {}", path.display()), e)
    }

    fn read_data(&self) -> std::sync::RwLockReadGuard<'_, Data> {
        self.data.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_data(&self) -> std::sync::RwLockWriteGuard<'_, Data> {
        self.data.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves in-memory bytes into the file (a segment that outgrew memory, or one being queued as a file).
    fn spill(&self) -> Result<()> {
        let mut data = self.write_data();
        let Data::Memory(bytes) = &mut *data else {
            return Ok(());
        };
        let path = self.path.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // Plaintext of open files: private whatever the umask.
        let file = crate::private::file_options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| QsfsError::io(format!("creating staging file {}", path.display()), e))?;
        file.write_all_at(bytes, 0)
            .map_err(|e| QsfsError::io(format!("writing staging file {}", path.display()), e))?;
        self.in_memory
            .fetch_sub(bytes.capacity() as u64, Ordering::Relaxed);
        *data = Data::File(file);
        Ok(())
    }

    pub fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        let end = offset + bytes.len() as u64;
        {
            let data = self.read_data();
            if let Data::File(f) = &*data {
                f.write_all_at(bytes, offset)
                    .map_err(|e| self.io_err("writing", e))?;
                self.grow_to(end);
                return Ok(());
            }
        }
        let mut data = self.write_data();
        if let Data::Memory(v) = &mut *data
            && end <= MEMORY_MAX
        {
            let before = v.capacity();
            if (v.len() as u64) < end {
                v.resize(end as usize, 0);
            }
            v[offset as usize..end as usize].copy_from_slice(bytes);
            self.in_memory
                .fetch_add((v.capacity() - before) as u64, Ordering::Relaxed);
            self.grow_to(end);
            return Ok(());
        }
        drop(data);
        self.spill()?;
        self.write_at(offset, bytes)
    }

    /// Fills `buf` from `offset`; bytes at or past `len` are zeros.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let len = self.len();
        let avail = len.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (data, tail) = buf.split_at_mut(avail);
        tail.fill(0);
        let guard = self.read_data();
        let file = match &*guard {
            Data::Memory(v) => {
                let have = v.get(offset as usize..).unwrap_or(&[]);
                let n = have.len().min(data.len());
                data[..n].copy_from_slice(&have[..n]);
                data[n..].fill(0);
                return Ok(());
            }
            Data::File(f) => f,
        };
        let mut done = 0;
        while done < data.len() {
            let n = file
                .read_at(&mut data[done..], offset + done as u64)
                .map_err(|e| self.io_err("reading", e))?;
            if n == 0 {
                // The file is shorter than `len` (a trailing hole never written): zeros.
                data[done..].fill(0);
                break;
            }
            done += n;
        }
        Ok(())
    }

    /// The first `len` bytes.
    pub fn read_prefix(&self, len: u64) -> Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let want = len.min(self.len()) as usize;
        let guard = self.read_data();
        let mut buf = match &*guard {
            Data::Memory(v) => v[..want.min(v.len())].to_vec(),
            Data::File(f) => {
                let mut buf = Vec::with_capacity(want);
                // read_to_end fills the spare capacity without zero-filling it first (a segment is megabytes).
                // The file cursor is used here only (everything else reads and writes at explicit offsets); the
                // lock keeps two callers from moving it under each other.
                let _cursor = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
                let mut file = f;
                file.seek(SeekFrom::Start(0))
                    .and_then(|_| file.take(want as u64).read_to_end(&mut buf))
                    .map_err(|e| self.io_err("reading", e))?;
                buf
            }
        };
        // A trailing hole never written reads as zeros.
        buf.resize(want, 0);
        Ok(buf)
    }

    pub fn truncate(&self, len: u64) -> Result<()> {
        match &mut *self.write_data() {
            Data::Memory(v) => v.truncate(len as usize),
            Data::File(f) => f.set_len(len).map_err(|e| self.io_err("truncating", e))?,
        }
        let old = self.len.swap(len, Ordering::AcqRel);
        if self.counted.load(Ordering::Acquire) {
            if len > old {
                self.usage.fetch_add(len - old, Ordering::AcqRel);
            } else {
                self.usage.fetch_sub(old - len, Ordering::AcqRel);
            }
        }
        Ok(())
    }

    /// Extends `len` to `end` if shorter, counting the growth in the area's usage.
    fn grow_to(&self, end: u64) {
        let old = self.len.fetch_max(end, Ordering::AcqRel);
        if end > old && self.counted.load(Ordering::Acquire) {
            self.usage.fetch_add(end - old, Ordering::AcqRel);
        }
    }

    /// Takes this segment's bytes out of the area's count (once).
    fn uncount(&self) {
        if self.counted.swap(false, Ordering::AcqRel) {
            self.usage.fetch_sub(self.len(), Ordering::AcqRel);
        }
    }

    /// Makes a file-backed segment durable (in-memory ones have nothing on disk to sync).
    pub fn sync(&self) -> Result<()> {
        if let Data::File(f) = &*self.read_data() {
            // Extending the file to `len` first makes a trailing hole part of the durable file.
            f.set_len(self.len())
                .and_then(|_| f.sync_all())
                .map_err(|e| self.io_err("syncing", e))?;
        }
        Ok(())
    }

    /// Removes the file now (a queued segment after its upload committed, or a cancelled one).
    pub fn remove(&self) {
        self.keep.store(false, Ordering::Release);
        if matches!(&*self.read_data(), Data::File(_)) {
            let path = self.path.lock().unwrap_or_else(|p| p.into_inner());
            let _ = std::fs::remove_file(&*path);
        }
        self.keep.store(true, Ordering::Release); // removed; nothing left for Drop to do
        self.uncount();
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        self.uncount();
        match &*self.read_data() {
            Data::Memory(v) => {
                self.in_memory
                    .fetch_sub(v.capacity() as u64, Ordering::Relaxed);
            }
            Data::File(_) if !self.keep.load(Ordering::Acquire) => {
                let path = self.path.lock().unwrap_or_else(|p| p.into_inner());
                let _ = std::fs::remove_file(&*path);
            }
            Data::File(_) => {}
        }
    }
}
