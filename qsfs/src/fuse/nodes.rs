//! Namespace callbacks: names, attributes, links, renames, extended attributes and statfs. Each is one SQLite
//! transaction committed with `synchronous=NORMAL` (see `meta` for why that keeps the durability promise);
//! permission checks are the kernel's (`default_permissions`).

use std::time::{Duration, Instant};

use fuser::Request;
use nix::libc;

use super::QsfsFs;
use super::attr::{self, Capacity};
use crate::error::{QsfsError, Result};
use crate::meta::{self, AttrChanges, FileKind, Inode, NewInode, RenameMode};

/// How long a statfs answer is reused: each one probes every store.
const STATFS_CACHE: Duration = Duration::from_secs(5);

impl QsfsFs {
    /// An inode as the kernel should see it: the row, with sizes and times of unflushed writes laid over it.
    pub(super) fn inode(&self, ino: u64) -> Result<Inode> {
        let i = self
            .eng
            .vol
            .meta()
            .read_short(|c| meta::get_inode(c, ino))?
            .ok_or_else(|| QsfsError::NotFound(format!("inode {ino}")))?;
        Ok(self.with_open_state(i))
    }

    /// `i` as a handle that has the file open sees it: with the size, times and attribute changes held in its cell.
    fn with_open_state(&self, mut i: Inode) -> Inode {
        if i.kind == FileKind::File {
            self.eng.overlay(&mut i);
        }
        i
    }

    pub(super) fn lookup_name(&self, parent: u64, name: &[u8]) -> Result<Inode> {
        if name.len() > meta::NAME_MAX {
            return Err(QsfsError::NameTooLong(
                String::from_utf8_lossy(name).into_owned(),
            ));
        }
        let found = self.eng.vol.meta().read_short(|c| {
            let Some(ino) = meta::lookup(c, parent, name)? else {
                return Ok(None);
            };
            meta::get_inode(c, ino)
        })?;
        let i =
            found.ok_or_else(|| QsfsError::NotFound(String::from_utf8_lossy(name).into_owned()))?;
        Ok(self.with_open_state(i))
    }

    /// Creates a node of any kind. Ownership follows Linux: the caller's uid; the parent's gid when the parent
    /// is set-group-ID (and a new directory inherits that bit), else the caller's gid.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn make_node(
        &self,
        req: &Request,
        parent: u64,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        rdev: u32,
        target: Option<Vec<u8>>,
    ) -> Result<Inode> {
        self.eng.vol.meta().write_fast(|c| {
            let p = meta::get_inode(c, parent)?
                .ok_or_else(|| QsfsError::NotFound(format!("inode {parent}")))?;
            let mut mode = mode & 0o7777;
            let gid = if p.mode & libc::S_ISGID != 0 {
                if kind == FileKind::Dir {
                    mode |= libc::S_ISGID;
                }
                p.gid
            } else {
                req.gid()
            };
            let new = NewInode {
                kind,
                mode,
                uid: req.uid(),
                gid,
                rdev,
                target: target.clone(),
            };
            meta::create_node(c, parent, name, &new)
        })
    }

    /// unlink/rmdir. An inode left with no names is deleted now, or at its last close if it is open.
    pub(super) fn remove(&self, parent: u64, name: &[u8], dir: bool) -> Result<()> {
        let (ino, nlink) = self
            .eng
            .vol
            .meta()
            .write_fast(|c| meta::remove_name(c, parent, name, dir))?;
        if nlink == 0 {
            self.forget_node(ino)?;
        }
        Ok(())
    }

    /// Deletes inode `ino`, which has no name left, once nothing holds it open: an open file waits in the engine,
    /// an open directory here until its last `releasedir`.
    fn forget_node(&self, ino: u64) -> Result<()> {
        if self.dir_is_open(ino) {
            self.doomed_dirs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(ino);
            return Ok(());
        }
        self.eng.forget_inode(ino)
    }

    pub(super) fn rename_entry(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        mode: RenameMode,
    ) -> Result<()> {
        let replaced = self
            .eng
            .vol
            .meta()
            .write_fast(|c| meta::rename(c, parent, name, new_parent, new_name, mode))?;
        if let Some(r) = replaced
            && r.nlink == 0
        {
            self.forget_node(r.ino)?;
        }
        Ok(())
    }

    pub(super) fn hard_link(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> Result<Inode> {
        let mut i = self
            .eng
            .vol
            .meta()
            .write_fast(|c| meta::add_link(c, ino, new_parent, new_name))?;
        if i.kind == FileKind::File {
            self.eng.overlay(&mut i);
        }
        Ok(i)
    }

    pub(super) fn read_link(&self, ino: u64) -> Result<Vec<u8>> {
        self.eng
            .vol
            .meta()
            .read_short(|c| meta::read_link(c, ino))?
            .ok_or_else(|| QsfsError::Invalid(format!("inode {ino} is not a symlink")))
    }

    /// setattr: size through the data engine (it may cut and re-encode a segment), the rest as one row update.
    pub(super) fn set_attr(
        &self,
        ino: u64,
        ch: &AttrChanges,
        size: Option<u64>,
        fh: Option<u64>,
    ) -> Result<Inode> {
        if let Some(size) = size {
            if size > i64::MAX as u64 {
                return Err(QsfsError::Invalid("size too large".into()));
            }
            let kind = self.inode(ino)?.kind;
            match kind {
                FileKind::File => {}
                FileKind::Dir => return Err(QsfsError::IsADirectory(format!("inode {ino}"))),
                _ => {
                    return Err(QsfsError::Invalid(format!(
                        "inode {ino}: not a regular file"
                    )));
                }
            }
            let handle = fh.and_then(|f| self.file(f).ok());
            match handle {
                Some(h) => self.eng.truncate(&h.cell, size)?,
                None => {
                    // truncate(2) on a path: hold the file open for the change, and seal before letting go so
                    // no dirty state outlives the call.
                    let cell = self.eng.open(ino)?;
                    let res = self
                        .eng
                        .truncate(&cell, size)
                        .and_then(|_| self.eng.close_flush(&cell));
                    let released = self.eng.release(&cell);
                    res.and(released)?;
                }
            }
        }
        let any = ch.mode.is_some()
            || ch.uid.is_some()
            || ch.gid.is_some()
            || ch.atime_ns.is_some()
            || ch.mtime_ns.is_some()
            || ch.ctime_ns.is_some();
        if any && self.eng.hold_attrs(ino, ch) {
            return self.inode(ino);
        }
        if any {
            // With the file's commit lock held (if it is open): a seal or flush commits the cell's size and times,
            // and must not read the cell before this commit and write after it, putting older times back.
            let cell = self.eng.existing(ino);
            let _commit = cell.as_deref().map(|c| c.lock_commit());
            let i = self
                .eng
                .vol
                .meta()
                .write_fast(|c| meta::set_attrs(c, ino, ch))?;
            if i.kind == FileKind::File {
                self.eng.times_changed(ino, i.mtime_ns, i.ctime_ns);
            }
        }
        self.inode(ino)
    }

    pub(super) fn capacity(&self) -> Capacity {
        let mut cache = self.statfs_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, c)) = *cache
            && at.elapsed() < STATFS_CACHE
        {
            return c;
        }
        let c = attr::capacity(&self.eng.vol);
        *cache = Some((Instant::now(), c));
        c
    }

    /// Only `user.` attributes are stored; other namespaces (security, trusted, system ACLs) are not supported,
    /// and reads of them answer "no such attribute" without touching SQLite (the kernel asks for
    /// security.capability on writes).
    fn xattr_name(name: &[u8]) -> Result<()> {
        if name.starts_with(b"user.") {
            if name.len() > 255 {
                return Err(QsfsError::NameTooLong("xattr name".into()));
            }
            Ok(())
        } else {
            Err(QsfsError::Unsupported(
                String::from_utf8_lossy(name).into_owned(),
            ))
        }
    }

    pub(super) fn get_xattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        if Self::xattr_name(name).is_err() {
            return Err(QsfsError::NoAttribute(
                String::from_utf8_lossy(name).into_owned(),
            ));
        }
        self.eng
            .vol
            .meta()
            .read_short(|c| meta::get_xattr(c, ino, name))?
            .ok_or_else(|| QsfsError::NoAttribute(String::from_utf8_lossy(name).into_owned()))
    }

    pub(super) fn set_xattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        Self::xattr_name(name)?;
        if value.len() > 64 * 1024 {
            return Err(QsfsError::NoSpace("xattr value larger than 64 KiB".into()));
        }
        let create = flags & libc::XATTR_CREATE != 0;
        let replace = flags & libc::XATTR_REPLACE != 0;
        self.eng
            .vol
            .meta()
            .write_fast(|c| meta::set_xattr(c, ino, name, value, create, replace))
    }

    /// The names, each NUL-terminated, as listxattr returns them.
    pub(super) fn list_xattr(&self, ino: u64) -> Result<Vec<u8>> {
        let names = self
            .eng
            .vol
            .meta()
            .read_short(|c| meta::list_xattrs(c, ino))?;
        let mut out = Vec::new();
        for n in names {
            out.extend_from_slice(&n);
            out.push(0);
        }
        Ok(out)
    }

    pub(super) fn remove_xattr(&self, ino: u64, name: &[u8]) -> Result<()> {
        if Self::xattr_name(name).is_err() {
            return Err(QsfsError::NoAttribute(
                String::from_utf8_lossy(name).into_owned(),
            ));
        }
        self.eng
            .vol
            .meta()
            .write_fast(|c| meta::remove_xattr(c, ino, name))
    }
}
