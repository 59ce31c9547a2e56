//! The `fuser::Filesystem` impl: decode each request, call the method that does the work, reply. Errors reach the
//! kernel through `QsfsError::errno`, the one mapping.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::SystemTime;

use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};

use super::QsfsFs;
use super::attr::{self, TTL};
use crate::error::QsfsError;
use crate::meta::{AttrChanges, Inode, RenameMode};

fn errno(e: &QsfsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn log_err(op: &str, e: &QsfsError) {
    match e.errno() {
        nix::libc::EIO | nix::libc::ENOSPC => tracing::error!(op, error = %e, "request failed"),
        _ => tracing::debug!(op, error = %e, "request refused"),
    }
}

/// fuser's reply types each have an `error` method but share no trait for it.
pub(super) trait Refuse {
    fn refuse(self, errno: Errno);
}

macro_rules! refuse_with_error {
    ($($reply:ty),* $(,)?) => {
        $(impl Refuse for $reply {
            fn refuse(self, errno: Errno) {
                self.error(errno)
            }
        })*
    };
}

refuse_with_error!(
    ReplyAttr,
    ReplyCreate,
    ReplyData,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyEmpty,
    ReplyEntry,
    ReplyOpen,
    ReplyWrite,
    ReplyXattr,
);

/// Answers one request: `ok` gets the reply and the value; an error is logged under `op` and answered with its
/// errno (through `QsfsError::errno`, the one mapping).
pub(super) fn respond<R: Refuse, T>(
    reply: R,
    op: &str,
    res: Result<T, QsfsError>,
    ok: impl FnOnce(R, T),
) {
    match res {
        Ok(v) => ok(reply, v),
        Err(e) => {
            log_err(op, &e);
            // "No such attribute" is an answer, not a failure: the kernel asks for security.capability before
            // every write, and counting those would bury real errors.
            if e.errno() != nix::libc::ENODATA {
                super::op_metrics::note_failure();
            }
            reply.refuse(errno(&e))
        }
    }
}

fn entry(reply: ReplyEntry, res: Result<Inode, QsfsError>, op: &str) {
    respond(reply, op, res, |r, i| {
        r.entry(&TTL, &attr::to_attr(&i), Generation(0))
    });
}

fn empty(reply: ReplyEmpty, res: Result<(), QsfsError>, op: &str) {
    respond(reply, op, res, |r, ()| r.ok());
}

fn time_ns(t: Option<TimeOrNow>) -> Option<i64> {
    t.map(|t| match t {
        TimeOrNow::Now => crate::meta::now_ns(),
        TimeOrNow::SpecificTime(t) => attr::ns(t),
    })
}

impl Filesystem for QsfsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // 1 MiB writes (the kernel's usual ceiling of 256 pages): fewer, larger requests to stage.
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            // File handles (name_to_handle_at, NFS export) are refused with EOPNOTSUPP rather than handed out and
            // then answered with ESTALE once the kernel has forgotten the inode: serving them would need lookups
            // of "." and ".." by inode and generation numbers that are never reused.
            InitFlags::FUSE_NO_EXPORT_SUPPORT,
        ] {
            let _ = config.add_capabilities(flag);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        self.eng.cache.stop_prefetch();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _timer = self.op_timer("lookup");
        entry(reply, self.lookup_name(parent.0, name.as_bytes()), "lookup");
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _timer = self.op_timer("getattr");
        respond(reply, "getattr", self.inode(ino.0), |r, i| {
            r.attr(&TTL, &attr::to_attr(&i))
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _timer = self.op_timer("setattr");
        let changes = AttrChanges {
            mode,
            uid,
            gid,
            atime_ns: time_ns(atime),
            mtime_ns: time_ns(mtime),
            ctime_ns: ctime.map(attr::ns),
        };
        let mut res = self.set_attr(ino.0, &changes, size, fh.map(|f| f.0));
        // A truncate by an unprivileged caller drops set-ID bits, as a write does.
        if size.is_some() && res.is_ok() {
            res = self
                .drop_privs(ino.0, &super::privs::Caller::of(req))
                .and_then(|()| self.inode(ino.0));
        }
        respond(reply, "setattr", res, |r, i| {
            r.attr(&TTL, &attr::to_attr(&i))
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _timer = self.op_timer("readlink");
        respond(reply, "readlink", self.read_link(ino.0), |r, t| r.data(&t));
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _timer = self.op_timer("mknod");
        let res = match attr::kind_from_mode(mode) {
            Some(kind) => self.make_node(req, parent.0, name.as_bytes(), kind, mode, rdev, None),
            None => Err(QsfsError::Invalid("mknod: unknown file type".into())),
        };
        entry(reply, res, "mknod");
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let _timer = self.op_timer("mkdir");
        let res = self.make_node(
            req,
            parent.0,
            name.as_bytes(),
            crate::meta::FileKind::Dir,
            mode,
            0,
            None,
        );
        entry(reply, res, "mkdir");
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _timer = self.op_timer("unlink");
        empty(
            reply,
            self.remove(parent.0, name.as_bytes(), false),
            "unlink",
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _timer = self.op_timer("rmdir");
        empty(reply, self.remove(parent.0, name.as_bytes(), true), "rmdir");
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _timer = self.op_timer("symlink");
        let res = self.make_node(
            req,
            parent.0,
            link_name.as_bytes(),
            crate::meta::FileKind::Symlink,
            0o777,
            0,
            Some(target.as_os_str().as_bytes().to_vec()),
        );
        entry(reply, res, "symlink");
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _timer = self.op_timer("rename");
        let res = if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            Err(QsfsError::Invalid("RENAME_WHITEOUT".into()))
        } else {
            let mode = RenameMode {
                no_replace: flags.contains(RenameFlags::RENAME_NOREPLACE),
                exchange: flags.contains(RenameFlags::RENAME_EXCHANGE),
            };
            self.rename_entry(
                parent.0,
                name.as_bytes(),
                newparent.0,
                newname.as_bytes(),
                mode,
            )
        };
        empty(reply, res, "rename");
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _timer = self.op_timer("link");
        entry(
            reply,
            self.hard_link(ino.0, newparent.0, newname.as_bytes()),
            "link",
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _timer = self.op_timer("open");
        respond(reply, "open", self.open_file(ino.0, flags.0), |r, fh| {
            r.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE)
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _timer = self.op_timer("read");
        respond(
            reply,
            "read",
            self.read_file(fh.0, offset, size),
            |r, data| r.data(&data),
        );
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _timer = self.op_timer("write");
        respond(
            reply,
            "write",
            self.write_file(fh.0, offset, data, &super::privs::Caller::of(req)),
            |r, ()| r.written(data.len() as u32),
        );
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _timer = self.op_timer("flush");
        empty(reply, self.flush_file(fh.0, false), "flush");
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _timer = self.op_timer("release");
        empty(reply, self.release_file(fh.0), "release");
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _timer = self.op_timer("fsync");
        empty(reply, self.flush_file(fh.0, true), "fsync");
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _timer = self.op_timer("opendir");
        respond(reply, "opendir", self.open_dir(ino.0), |r, fh| {
            r.opened(FileHandle(fh), FopenFlags::empty())
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let _timer = self.op_timer("readdir");
        self.read_dir(fh.0, offset, reply);
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let _timer = self.op_timer("readdirplus");
        self.read_dir_plus(fh.0, offset, reply);
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _timer = self.op_timer("releasedir");
        self.release_dir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _timer = self.op_timer("fsyncdir");
        // Directory changes are SQLite commits: hardening the log makes every one so far durable.
        let synced = self
            .eng
            .vol
            .meta()
            .sync()
            .and_then(|()| self.eng.vol.replicate_metadata());
        empty(reply, synced, "fsyncdir");
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _timer = self.op_timer("statfs");
        let c = self.capacity();
        reply.statfs(
            c.blocks,
            c.free,
            c.free,
            c.files + c.free.min(u32::MAX as u64),
            c.free.min(u32::MAX as u64),
            attr::STATFS_BSIZE as u32,
            crate::meta::NAME_MAX as u32,
            attr::STATFS_BSIZE as u32,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _timer = self.op_timer("setxattr");
        empty(
            reply,
            self.set_xattr(ino.0, name.as_bytes(), value, flags),
            "setxattr",
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _timer = self.op_timer("getxattr");
        respond(
            reply,
            "getxattr",
            self.get_xattr(ino.0, name.as_bytes()),
            |r, v| xattr_reply(r, &v, size),
        );
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _timer = self.op_timer("listxattr");
        respond(reply, "listxattr", self.list_xattr(ino.0), |r, v| {
            xattr_reply(r, &v, size)
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _timer = self.op_timer("removexattr");
        empty(
            reply,
            self.remove_xattr(ino.0, name.as_bytes()),
            "removexattr",
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _timer = self.op_timer("create");
        let res = self.create_file(req, parent.0, name.as_bytes(), mode, flags);
        respond(reply, "create", res, |r, (i, fh)| {
            r.created(
                &TTL,
                &attr::to_attr(&i),
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_KEEP_CACHE,
            )
        });
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        let _timer = self.op_timer("ioctl");
        // No device-style controls here; ENOTTY is what a plain file answers (isatty, TCGETS).
        reply.error(Errno::ENOTTY);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _timer = self.op_timer("fallocate");
        empty(
            reply,
            self.allocate(fh.0, offset, length, mode),
            "fallocate",
        );
    }
}

/// getxattr/listxattr protocol: size 0 asks for the length; a too-small buffer is ERANGE.
fn xattr_reply(reply: ReplyXattr, value: &[u8], size: u32) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}
