//! `qsfs put`: copying local files and trees into the volume with `cp -r` semantics (`get` is in `get.rs`).

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use qsfs::Volume;
use qsfs::meta::{self, FileKind, ROOT_INO};
use qsfs::volume::PutOptions;

use super::progress;

pub fn put(vol: &Volume, srcs: &[PathBuf], dest: &str) -> Result<()> {
    let mut total = 0;
    for s in srcs {
        fs::symlink_metadata(s).with_context(|| format!("{}", s.display()))?;
        total += local_tree_size(s);
    }
    vol.stores().check_writable(vol.config().write_quorum)?;
    let place = destination(vol, dest, srcs.len())?;
    let pb = progress::bar(total, "put");
    let mut stored = 0;
    for src in srcs {
        let (parent, name) = match &place {
            Place::Into(dir) => (*dir, local_name(src)?),
            Place::As(parent, name) => (*parent, name.clone()),
        };
        stored += put_one(vol, src, parent, &name, &pb)?;
    }
    pb.finish_and_clear();
    if stored == 0 {
        bail!("nothing was stored: special files (fifos, sockets, devices) are skipped");
    }
    vol.collect_garbage()?;
    Ok(())
}

/// Where `put` stores its sources: into an existing (or, for several sources or a DEST ending in `/`, a new)
/// directory under their own names, or as DEST itself.
enum Place {
    Into(u64),
    As(u64, Vec<u8>),
}

/// cp's rules for DEST: an existing directory receives the sources; several sources or a trailing `/` need a
/// directory (created with its parents when missing, "not a directory" when DEST is something else); otherwise
/// DEST names the one source's copy. Empty components (`//a//b`) are ignored, as a POSIX path lookup does.
fn destination(vol: &Volume, dest: &str, sources: usize) -> Result<Place> {
    let comps = meta::path_components(dest)?;
    for c in &comps {
        meta::check_name(c.as_bytes())?;
    }
    let wants_dir = sources > 1 || dest.ends_with('/') || comps.is_empty();
    let existing = vol.meta().read(|c| match meta::resolve(c, dest)? {
        Some(ino) => Ok(meta::get_inode(c, ino)?.map(|i| (ino, i.kind))),
        None => Ok(None),
    })?;
    match existing {
        Some((ino, FileKind::Dir)) => Ok(Place::Into(ino)),
        Some(_) if wants_dir => Err(qsfs::QsfsError::NotADirectory(dest.to_string()).into()),
        None if wants_dir => Ok(Place::Into(ensure_volume_dirs(vol, dest)?)),
        _ => {
            let (last, parents) = comps.split_last().expect("a non-directory DEST has a name");
            Ok(Place::As(
                ensure_volume_dirs(vol, &parents.join("/"))?,
                last.as_bytes().to_vec(),
            ))
        }
    }
}

/// Stores `src` (a tree: recursively) as `name` in `parent`; returns how many entries were stored.
fn put_one(vol: &Volume, src: &Path, parent: u64, name: &[u8], pb: &ProgressBar) -> Result<u64> {
    let md = fs::symlink_metadata(src).with_context(|| format!("{}", src.display()))?;
    let ft = md.file_type();
    if ft.is_dir() {
        let ino = vol.ensure_dir(parent, name, md.mode() & 0o7777)?;
        let mut entries: Vec<_> = fs::read_dir(src)
            .with_context(|| format!("{}", src.display()))?
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("{}", src.display()))?;
        entries.sort_by_key(|e| e.file_name());
        let mut stored = 1;
        for e in entries {
            stored += put_one(vol, &e.path(), ino, e.file_name().as_bytes(), pb)?;
        }
        return Ok(stored);
    } else if ft.is_symlink() {
        let target = fs::read_link(src).with_context(|| format!("{}", src.display()))?;
        vol.put_symlink(parent, name, target.as_os_str().as_bytes())?;
    } else if ft.is_file() {
        let mut file = fs::File::open(src).with_context(|| format!("{}", src.display()))?;
        let opts = PutOptions {
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            atime_ns: timestamp_ns(src, md.atime(), md.atime_nsec()),
            mtime_ns: timestamp_ns(src, md.mtime(), md.mtime_nsec()),
        };
        vol.put_file(parent, name, &mut file, &opts, &mut |n| pb.inc(n))
            .with_context(|| format!("{}", src.display()))?;
    } else {
        tracing::warn!(path = %src.display(), "skipping a special file (fifo, socket or device)");
        return Ok(0);
    }
    Ok(1)
}

/// A local timestamp in the volume's nanoseconds since 1970. The i64 range ends in 2262: later (and much earlier)
/// times are clamped to it, with a warning, instead of wrapping around to a date centuries away.
fn timestamp_ns(path: &Path, secs: i64, nsec: i64) -> i64 {
    let ns = secs
        .checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(nsec));
    ns.unwrap_or_else(|| {
        tracing::warn!(path = %path.display(), "timestamp outside 1677..2262 stored as the nearest one inside");
        if secs < 0 { i64::MIN } else { i64::MAX }
    })
}

/// `mkdir -p` inside the volume; returns the innermost directory.
fn ensure_volume_dirs(vol: &Volume, path: &str) -> Result<u64> {
    let mut ino = ROOT_INO;
    for c in meta::path_components(path)? {
        ino = vol.ensure_dir(ino, c.as_bytes(), 0o755)?;
    }
    Ok(ino)
}

fn local_name(src: &Path) -> Result<Vec<u8>> {
    if let Some(n) = src.file_name() {
        return Ok(n.as_bytes().to_vec());
    }
    let canon = src
        .canonicalize()
        .with_context(|| format!("{}", src.display()))?;
    match canon.file_name() {
        Some(n) => Ok(n.as_bytes().to_vec()),
        None => bail!(
            "{}: cannot put the filesystem root; name a directory",
            src.display()
        ),
    }
}

fn local_tree_size(path: &Path) -> u64 {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => fs::read_dir(path)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| local_tree_size(&e.path()))
                    .sum()
            })
            .unwrap_or(0),
        Ok(md) if md.is_file() => md.len(),
        _ => 0,
    }
}

pub(super) fn volume_tree_size(vol: &Volume, ino: u64) -> Result<u64> {
    Ok(vol.meta().read(|c| {
        fn walk(c: &rusqlite::Connection, ino: u64) -> qsfs::Result<u64> {
            let Some(inode) = meta::get_inode(c, ino)? else {
                return Ok(0);
            };
            match inode.kind {
                FileKind::File => Ok(inode.size),
                FileKind::Dir => {
                    let mut sum = 0;
                    for e in meta::list_dir(c, ino)? {
                        sum += walk(c, e.ino)?;
                    }
                    Ok(sum)
                }
                _ => Ok(0),
            }
        }
        walk(c, ino)
    })?)
}
