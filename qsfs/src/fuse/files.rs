//! Open files and directories: handles, read/write/flush/fsync/release through the data engine, fallocate, and
//! readdir pages.
//!
//! readdir offsets: 1 and 2 are `.` and `..`; the n-th real entry (0-based, in name order) has offset n + 3. A
//! handle keeps the page it read last, so the kernel's next call (which resumes at the last offset it accepted)
//! continues inside that page or fetches the next one by name (keyset pagination): listing a directory of 100k
//! entries is linear, never quadratic.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use fuser::{FileType, Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus, Request};
use nix::libc;

use super::attr::{self, TTL};
use super::{DirHandle, FileHandle, QsfsFs};
use crate::error::{QsfsError, Result};
use crate::meta::{self, FileKind, Inode};

/// Entries fetched from SQLite per readdir page.
const DIR_PAGE: usize = 512;
/// relatime: an access time older than this is refreshed even if newer than mtime/ctime.
const ATIME_REFRESH_NS: i64 = 24 * 3600 * 1_000_000_000;

impl QsfsFs {
    fn add_handle(&self, ino: u64, cell: Arc<super::Cell>, flags: i32) -> u64 {
        let fh = self.new_fh();
        let h = Arc::new(FileHandle {
            ino,
            cell,
            append: flags & libc::O_APPEND != 0,
            read_only: flags & libc::O_ACCMODE == libc::O_RDONLY,
            atime_checked: std::sync::atomic::AtomicBool::new(false),
            privs_checked: std::sync::atomic::AtomicBool::new(false),
        });
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, h);
        fh
    }

    pub(super) fn open_file(&self, ino: u64, flags: i32) -> Result<u64> {
        let cell = self.eng.open(ino)?;
        Ok(self.add_handle(ino, cell, flags))
    }

    /// create(2) with O_CREAT (the kernel sends O_EXCL's EEXIST check to us as a plain create).
    pub(super) fn create_file(
        &self,
        req: &Request,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
    ) -> Result<(Inode, u64)> {
        let inode = self.make_node(req, parent, name, FileKind::File, mode, 0, None)?;
        let cell = self.eng.open_created(&inode)?;
        let fh = self.add_handle(inode.ino, cell, flags);
        Ok((inode, fh))
    }

    pub(super) fn read_file(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let h = self.file(fh)?;
        let data = self.eng.read(&h.cell, offset, size)?;
        // The access time is best effort: a read-only mount or copy keeps it, and no read fails for it.
        if !h.atime_checked.swap(true, Ordering::Relaxed)
            && let Err(e) = self.touch_atime(h.ino)
            && !matches!(e, QsfsError::ReadOnly(_))
        {
            tracing::warn!(ino = h.ino, error = %e, "access time not updated");
        }
        Ok(data)
    }

    /// relatime, as Linux mounts do by default: the access time is written only when it is older than the last
    /// modification or change, or a day old; so reading a file does not turn into a metadata write each time.
    fn touch_atime(&self, ino: u64) -> Result<()> {
        if self.atime == super::AtimeMode::Noatime {
            return Ok(());
        }
        let i = self.inode(ino)?;
        let now = meta::now_ns();
        if self.atime == super::AtimeMode::Strictatime
            || i.atime_ns <= i.mtime_ns
            || i.atime_ns <= i.ctime_ns
            || now - i.atime_ns > ATIME_REFRESH_NS
        {
            self.eng
                .vol
                .meta()
                .write_fast(|c| meta::set_atime(c, ino, now))?;
        }
        Ok(())
    }

    pub(super) fn write_file(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        caller: &super::privs::Caller,
    ) -> Result<()> {
        let h = self.file(fh)?;
        if !h
            .privs_checked
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            self.drop_privs(h.ino, caller)?;
        }
        self.eng.write(&h.cell, offset, data, h.append)?;
        Ok(())
    }

    /// flush (each close) and fsync: the durability points.
    ///
    /// The close of a descriptor opened read-only flushes nothing: it wrote nothing, so it neither waits for other
    /// descriptors' uploads nor takes (and reports) their errors, which belong to the writers' close or fsync.
    pub(super) fn flush_file(&self, fh: u64, fsync: bool) -> Result<()> {
        let h = self.file(fh)?;
        if fsync {
            return self.eng.fsync_flush(&h.cell, true);
        }
        if h.read_only {
            return Ok(());
        }
        self.eng.close_flush(&h.cell)
    }

    pub(super) fn release_file(&self, fh: u64) -> Result<()> {
        let h = self
            .files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
        match h {
            Some(h) => self.eng.release(&h.cell),
            None => Ok(()),
        }
    }

    /// fallocate: space is not reserved on stores (they fill as segments are sealed), so allocation means only
    /// the size change; punching a hole or zeroing a range writes zeros.
    pub(super) fn allocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> Result<()> {
        let h = self.file(fh)?;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| QsfsError::Invalid("fallocate range".into()))?;
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let zeroing = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0;
        let known =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 || (mode & libc::FALLOC_FL_PUNCH_HOLE != 0 && !keep_size) {
            return Err(QsfsError::Unsupported("fallocate mode".into()));
        }
        let size = h.cell.lock().size;
        // Allocating promises the space: refuse what the stores (as statfs reports them) cannot hold.
        let grow = if keep_size && zeroing {
            0
        } else {
            end.saturating_sub(size)
        };
        let room = self.capacity();
        if room.free_known && grow > room.free.saturating_mul(super::attr::STATFS_BSIZE) {
            return Err(QsfsError::NoSpace(format!(
                "fallocate of {grow} bytes: the stores have room for {}",
                room.free * super::attr::STATFS_BSIZE
            )));
        }
        if zeroing {
            let zend = if keep_size { end.min(size) } else { end };
            let mut pos = offset;
            let chunk = vec![0u8; (1 << 20).min(zend.saturating_sub(offset)) as usize];
            while pos < zend {
                let n = (zend - pos).min(chunk.len() as u64) as usize;
                self.eng.write(&h.cell, pos, &chunk[..n], false)?;
                pos += n as u64;
            }
        }
        if !keep_size && end > size {
            let cur = h.cell.lock().size;
            if end > cur {
                self.eng.truncate(&h.cell, end)?;
            }
        }
        Ok(())
    }

    pub(super) fn open_dir(&self, ino: u64) -> Result<u64> {
        let i = self.inode(ino)?;
        if i.kind != FileKind::Dir {
            return Err(QsfsError::NotADirectory(format!("inode {ino}")));
        }
        let fh = self.new_fh();
        let h = DirHandle {
            ino,
            page_start: 0,
            page: Vec::new(),
            page_is_last: false,
        };
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::new(Mutex::new(h)));
        Ok(fh)
    }

    pub(super) fn release_dir(&self, fh: u64) {
        let closed = self
            .dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
        let Some(h) = closed else { return };
        let ino = h.lock().unwrap_or_else(|p| p.into_inner()).ino;
        // The last handle of a directory removed while open: now it goes.
        let doomed = !self.dir_is_open(ino)
            && self
                .doomed_dirs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&ino);
        if doomed && let Err(e) = self.eng.forget_inode(ino) {
            tracing::warn!(ino, error = %e, "a removed directory was not deleted; the next mount deletes it");
        }
    }

    /// Whether a handle of directory `ino` is open.
    pub(super) fn dir_is_open(&self, ino: u64) -> bool {
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|h| h.lock().unwrap_or_else(|p| p.into_inner()).ino == ino)
    }

    fn dir_handle(&self, fh: u64) -> Result<Arc<Mutex<DirHandle>>> {
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
            .ok_or_else(|| QsfsError::Invalid(format!("directory handle {fh}")))
    }

    /// Makes `h.page` hold entry `n` (0-based) if the directory has one; returns its index in the page.
    fn seek_entry(&self, h: &mut DirHandle, n: u64) -> Result<Option<usize>> {
        loop {
            let page_end = h.page_start + h.page.len() as u64;
            if n >= h.page_start && n < page_end {
                return Ok(Some((n - h.page_start) as usize));
            }
            if n >= page_end && h.page_is_last && !h.page.is_empty() {
                return Ok(None);
            }
            // Continue after the current page when moving forward from it; otherwise start over (rewinddir,
            // or a seek backwards) and walk forward page by page.
            let (start, after) = if n >= page_end && !h.page.is_empty() {
                (page_end, h.page.last().map(|(e, _)| e.name.clone()))
            } else {
                (0, None)
            };
            let page = self
                .eng
                .vol
                .meta()
                .read(|c| meta::dir_page(c, h.ino, after.as_deref(), DIR_PAGE))?;
            h.page_is_last = page.len() < DIR_PAGE;
            h.page_start = start;
            h.page = page;
            if h.page.is_empty() {
                return Ok(None);
            }
        }
    }

    fn dot_entries(&self, ino: u64) -> Result<[(u64, Inode, &'static str); 2]> {
        let me = self.inode(ino)?;
        let parent_ino = self
            .eng
            .vol
            .meta()
            .read(|c| meta::parent_of(c, ino))?
            .unwrap_or(ino);
        let parent = self.inode(parent_ino)?;
        Ok([(1, me, "."), (2, parent, "..")])
    }

    pub(super) fn read_dir(&self, fh: u64, offset: u64, mut reply: ReplyDirectory) {
        let res = (|| -> Result<()> {
            let h = self.dir_handle(fh)?;
            let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
            if offset < 2 {
                for (off, i, name) in self.dot_entries(h.ino)? {
                    if off > offset && reply.add(INodeNo(i.ino), off, FileType::Directory, name) {
                        return Ok(());
                    }
                }
            }
            let mut n = offset.saturating_sub(2);
            while let Some(pos) = self.seek_entry(&mut h, n)? {
                for (e, _) in &h.page[pos..] {
                    if reply.add(INodeNo(e.ino), n + 3, attr::file_type(e.kind), os(&e.name)) {
                        return Ok(());
                    }
                    n += 1;
                }
            }
            Ok(())
        })();
        super::ops::respond(reply, "readdir", res, |r, ()| r.ok());
    }

    pub(super) fn read_dir_plus(&self, fh: u64, offset: u64, mut reply: ReplyDirectoryPlus) {
        let res = (|| -> Result<()> {
            let h = self.dir_handle(fh)?;
            let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
            if offset < 2 {
                for (off, i, name) in self.dot_entries(h.ino)? {
                    let a = attr::to_attr(&i);
                    if off > offset && reply.add(INodeNo(i.ino), off, name, &TTL, &a, Generation(0))
                    {
                        return Ok(());
                    }
                }
            }
            let mut n = offset.saturating_sub(2);
            while let Some(pos) = self.seek_entry(&mut h, n)? {
                for (e, i) in &h.page[pos..] {
                    let mut i = i.clone();
                    if i.kind == FileKind::File {
                        self.eng.overlay(&mut i);
                    }
                    let a = attr::to_attr(&i);
                    if reply.add(INodeNo(e.ino), n + 3, os(&e.name), &TTL, &a, Generation(0)) {
                        return Ok(());
                    }
                    n += 1;
                }
            }
            Ok(())
        })();
        super::ops::respond(reply, "readdirplus", res, |r, ()| r.ok());
    }
}

fn os(name: &[u8]) -> &std::ffi::OsStr {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(name)
}
