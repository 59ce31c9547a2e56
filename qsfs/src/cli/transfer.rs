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
    let dest_ino = vol.meta().read(|c| meta::resolve(c, dest))?;
    let dest_is_dir = match dest_ino {
        Some(ino) => vol
            .meta()
            .read(|c| meta::get_inode(c, ino))?
            .is_some_and(|i| i.kind == FileKind::Dir),
        None => false,
    };
    let pb = progress::bar(total, "put");
    for src in srcs {
        let src_name = local_name(src)?;
        let (parent, name) = if dest_is_dir {
            (dest_ino.expect("exists"), src_name)
        } else if srcs.len() > 1 {
            (ensure_volume_dirs(vol, dest)?, src_name)
        } else {
            let comps = meta::path_components(dest)?;
            let Some((last, parents)) = comps.split_last() else {
                bail!("{dest}: not a valid destination")
            };
            (
                ensure_volume_dirs(vol, &parents.join("/"))?,
                last.as_bytes().to_vec(),
            )
        };
        put_one(vol, src, parent, &name, &pb)?;
    }
    pb.finish_and_clear();
    vol.collect_garbage()?;
    Ok(())
}

fn put_one(vol: &Volume, src: &Path, parent: u64, name: &[u8], pb: &ProgressBar) -> Result<()> {
    let md = fs::symlink_metadata(src).with_context(|| format!("{}", src.display()))?;
    let ft = md.file_type();
    if ft.is_dir() {
        let ino = vol.ensure_dir(parent, name, md.mode() & 0o7777)?;
        let mut entries: Vec<_> = fs::read_dir(src)
            .with_context(|| format!("{}", src.display()))?
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("{}", src.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            put_one(vol, &e.path(), ino, e.file_name().as_bytes(), pb)?;
        }
    } else if ft.is_symlink() {
        let target = fs::read_link(src).with_context(|| format!("{}", src.display()))?;
        vol.put_symlink(parent, name, target.as_os_str().as_bytes())?;
    } else if ft.is_file() {
        let mut file = fs::File::open(src).with_context(|| format!("{}", src.display()))?;
        let opts = PutOptions {
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            atime_ns: md.atime() * 1_000_000_000 + md.atime_nsec(),
            mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
        };
        vol.put_file(parent, name, &mut file, &opts, &mut |n| pb.inc(n))
            .with_context(|| format!("{}", src.display()))?;
    } else {
        tracing::warn!(path = %src.display(), "skipping a special file (fifo, socket or device)");
    }
    Ok(())
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
