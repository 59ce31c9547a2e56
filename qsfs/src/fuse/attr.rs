//! Translating metadata rows into what the kernel wants: `FileAttr`, file types, modes, timestamps, and statfs
//! numbers from the stores' free space.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};
use nix::libc;

use crate::meta::{self, FileKind, Inode};
use crate::volume::Volume;

/// How long the kernel may trust attributes and names. All changes pass through this mount, which tells the
/// kernel about each one, so a short TTL costs little and keeps `ls -l` and `stat` cheap.
pub const TTL: Duration = Duration::from_secs(1);
/// The I/O size `stat` reports: large, so cp and friends move data in big requests.
pub const BLKSIZE: u32 = 128 * 1024;

pub fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Socket => FileType::Socket,
    }
}

/// The kind named by the `S_IFMT` bits of a mknod mode.
pub fn kind_from_mode(mode: u32) -> Option<FileKind> {
    Some(match mode & libc::S_IFMT {
        libc::S_IFREG | 0 => FileKind::File,
        libc::S_IFIFO => FileKind::Fifo,
        libc::S_IFSOCK => FileKind::Socket,
        libc::S_IFCHR => FileKind::CharDevice,
        libc::S_IFBLK => FileKind::BlockDevice,
        libc::S_IFDIR => FileKind::Dir,
        _ => return None,
    })
}

pub fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

pub fn ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos().min(i64::MAX as u128) as i64,
        Err(e) => -(e.duration().as_nanos().min(i64::MAX as u128) as i64),
    }
}

pub fn to_attr(i: &Inode) -> FileAttr {
    FileAttr {
        ino: INodeNo(i.ino),
        size: i.size,
        blocks: i.size.div_ceil(512),
        atime: time(i.atime_ns),
        mtime: time(i.mtime_ns),
        ctime: time(i.ctime_ns),
        crtime: time(i.crtime_ns),
        kind: file_type(i.kind),
        perm: (i.mode & 0o7777) as u16,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        rdev: i.rdev,
        blksize: BLKSIZE,
        flags: 0,
    }
}

/// statfs numbers in 4 KiB blocks.
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    pub blocks: u64,
    pub free: u64,
    pub files: u64,
    /// Every store that answered said how much room it has (redis, say, cannot): only then does `free` bound
    /// what fits.
    pub free_known: bool,
}

pub const STATFS_BSIZE: u64 = 4096;

/// Capacity as a user sees it: each byte written costs (K+M)/K bytes spread over the stores, so the stores' raw
/// free and used space is scaled by K/(K+M). Stores that cannot tell their free space count as holding nothing
/// free; unreachable stores are skipped.
pub fn capacity(vol: &Volume) -> Capacity {
    // Stores already marked down are left out; one that fails to answer now makes the free space unknown.
    let up = vol.stores().up_ids();
    let probes: Vec<Option<qsfs_backends::StoreHealth>> = vol
        .io()
        .block_on(vol.stores().probe_all())
        .into_iter()
        .filter(|(id, _)| up.contains(id))
        .map(|(_, r)| r.ok())
        .collect();
    let (mut free, mut used) = (0u64, 0u64);
    let free_known = !probes.is_empty()
        && probes
            .iter()
            .all(|h| h.as_ref().is_some_and(|h| h.free_bytes.is_some()));
    for h in probes.into_iter().flatten() {
        free = free.saturating_add(h.free_bytes.unwrap_or(0));
        used = used.saturating_add(h.used_bytes.unwrap_or(0));
    }
    let cfg = vol.config();
    let (k, total) = (
        cfg.data_shards as u128,
        (cfg.data_shards + cfg.parity_shards) as u128,
    );
    let scale = |b: u64| ((b as u128 * k / total) as u64) / STATFS_BSIZE;
    let files = vol.meta().read(meta::checks::inode_count).unwrap_or(0);
    Capacity {
        blocks: scale(free.saturating_add(used)),
        free: scale(free),
        files,
        free_known,
    }
}
