//! Whole-file operations on the namespace for the CLI: put a stream as a file, get a file into a stream, make
//! directories and symlinks, remove. Segments go through the ordered parallel pipeline, so a file of any size is
//! handled with bounded memory, and each put commits its namespace and data rows in one transaction.

use std::io::{Read, Write};

use super::Volume;
use crate::error::{QsfsError, Result};
use crate::meta::{self, FileKind, NewInode, SegmentRecord};
use crate::pipeline::{default_workers, ordered_parallel};

/// Attributes a put gives the new file (taken from the source file, like `cp -p`).
#[derive(Clone, Debug)]
pub struct PutOptions {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
}

impl Volume {
    /// Stores everything `reader` yields as file `name` in directory `parent`, replacing a file of that name
    /// (whose old segments become garbage). `progress` is told each segment's plaintext bytes as it lands.
    pub fn put_file(
        &self,
        parent: u64,
        name: &[u8],
        reader: &mut dyn Read,
        opts: &PutOptions,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        let display = String::from_utf8_lossy(name).into_owned();
        meta::check_name(name)?;
        // The file's inode comes first: every segment is sealed for its (inode, index). A new file's inode has
        // no name until the final transaction, so a failed or interrupted put leaves nothing visible (an
        // unnamed inode is removed here on failure, or as an orphan by the next mount or fsck).
        let (ino, fresh) = self
            .meta
            .write_fast(|c| match meta::lookup(c, parent, name)? {
                Some(existing) => {
                    let inode = meta::get_inode(c, existing)?
                        .ok_or_else(|| QsfsError::NotFound(display.clone()))?;
                    match inode.kind {
                        FileKind::File => Ok((existing, false)),
                        FileKind::Dir => Err(QsfsError::IsADirectory(display.clone())),
                        _ => Ok((new_inode(c, opts)?, true)),
                    }
                }
                None => Ok((new_inode(c, opts)?, true)),
            })?;
        let uploaded = self.upload_segments(ino, reader, progress);
        let (records, size) = match uploaded {
            Ok(v) => v,
            Err(e) => {
                if fresh
                    && let Err(undo) = self
                        .meta
                        .write_fast(|c| meta::delete_inode_if_unreferenced(c, ino).map(|_| ()))
                {
                    tracing::warn!(ino, error = %undo, "unnamed inode of a failed put left for fsck");
                }
                return Err(e);
            }
        };
        self.meta.write(|c| {
            if fresh {
                if meta::lookup(c, parent, name)?.is_some() {
                    meta::unlink(c, parent, name)?;
                }
                meta::link(c, parent, name, ino)?;
            } else {
                meta::drop_segments_from(c, ino, 0)?;
            }
            for rec in &records {
                meta::put_segment(c, ino, rec)?;
            }
            meta::set_size(c, ino, size, opts.mtime_ns)?;
            meta::set_mode_times(c, ino, opts.mode, opts.atime_ns, opts.mtime_ns)?;
            Ok(())
        })?;
        Ok(ino)
    }

    /// Encodes and places everything `reader` yields as the segments of file `ino`, in parallel; returns the
    /// records, in order, and the byte count. Nothing is committed.
    fn upload_segments(
        &self,
        ino: u64,
        reader: &mut dyn Read,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(Vec<SegmentRecord>, u64)> {
        let seg_size = self.segment_size() as usize;
        let workers = default_workers();
        let mut records: Vec<SegmentRecord> = Vec::new();
        let mut size = 0u64;
        let mut index = 0u64;
        ordered_parallel(
            workers,
            workers * 2,
            || {
                let buf = read_full(reader, seg_size)?;
                if buf.is_empty() {
                    return Ok(None);
                }
                index += 1;
                Ok(Some((index - 1, buf)))
            },
            |(i, buf): (u64, Vec<u8>)| {
                let len = buf.len() as u64;
                Ok((self.encode_and_place(ino, i, &buf)?, len))
            },
            |(rec, len)| {
                size += len;
                progress(len);
                records.push(rec);
                Ok(())
            },
        )?;
        Ok((records, size))
    }

    /// Writes file `ino`'s bytes to `out` in order; holes and short segments read as zeros. `name` names the file
    /// in errors. Fails (never writes wrong bytes) if a segment cannot be decoded.
    pub fn get_file(
        &self,
        ino: u64,
        out: &mut dyn Write,
        name: &str,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let (inode, segments) = self.meta.read(|c| {
            let inode =
                meta::get_inode(c, ino)?.ok_or_else(|| QsfsError::NotFound(name.to_string()))?;
            Ok((inode, meta::segments_of(c, ino)?))
        })?;
        if inode.kind != FileKind::File {
            return Err(QsfsError::IsADirectory(name.to_string()));
        }
        let queued = self.queued_of(ino)?;
        let seg_size = self.segment_size();
        let count = inode.size.div_ceil(seg_size);
        let mut by_index = segments.into_iter().peekable();
        let mut next_index = 0u64;
        let workers = default_workers();
        ordered_parallel(
            workers,
            workers * 2,
            || {
                if next_index >= count {
                    return Ok(None);
                }
                let i = next_index;
                next_index += 1;
                while by_index.peek().is_some_and(|s| s.index < i) {
                    by_index.next();
                }
                let rec = if by_index.peek().is_some_and(|s| s.index == i) {
                    by_index.next()
                } else {
                    None
                };
                Ok(Some((i, rec)))
            },
            |(i, rec): (u64, Option<SegmentRecord>)| {
                let want = (inode.size - i * seg_size).min(seg_size) as usize;
                let mut data = match (queued.get(&i), rec) {
                    (Some(q), _) => self.read_queued(q, name)?,
                    (None, Some(r)) => self.read_segment(&r, name)?,
                    (None, None) => Vec::new(),
                };
                data.resize(want, 0);
                Ok(data)
            },
            |data| {
                out.write_all(&data)
                    .map_err(|e| QsfsError::io(format!("writing {name}"), e))?;
                progress(data.len() as u64);
                Ok(())
            },
        )
    }

    /// Returns the directory `parent/name`, creating it if absent.
    pub fn ensure_dir(&self, parent: u64, name: &[u8], mode: u32) -> Result<u64> {
        let display = String::from_utf8_lossy(name).into_owned();
        meta::check_name(name)?;
        self.meta.write(|c| match meta::lookup(c, parent, name)? {
            Some(ino) => match meta::get_inode(c, ino)? {
                Some(i) if i.kind == FileKind::Dir => Ok(ino),
                _ => Err(QsfsError::Exists(display.clone())),
            },
            None => {
                let (uid, gid) = current_ids();
                let ino = meta::create_inode(
                    c,
                    &NewInode {
                        kind: FileKind::Dir,
                        mode,
                        uid,
                        gid,
                        rdev: 0,
                        target: None,
                    },
                )?;
                meta::link(c, parent, name, ino)?;
                Ok(ino)
            }
        })
    }

    /// Creates (or replaces a symlink or file at) `parent/name` as a symlink to `target`.
    pub fn put_symlink(&self, parent: u64, name: &[u8], target: &[u8]) -> Result<u64> {
        let display = String::from_utf8_lossy(name).into_owned();
        meta::check_name(name)?;
        self.meta.write(|c| {
            if let Some(existing) = meta::lookup(c, parent, name)? {
                if meta::get_inode(c, existing)?.is_some_and(|i| i.kind == FileKind::Dir) {
                    return Err(QsfsError::IsADirectory(display.clone()));
                }
                meta::unlink(c, parent, name)?;
            }
            let (uid, gid) = current_ids();
            let new = NewInode {
                kind: FileKind::Symlink,
                mode: 0o777,
                uid,
                gid,
                rdev: 0,
                target: Some(target.to_vec()),
            };
            let ino = meta::create_inode(c, &new)?;
            meta::link(c, parent, name, ino)?;
            Ok(ino)
        })
    }

    /// Removes `path`; a directory only with `recursive` (or when empty). All in one transaction; the removed
    /// files' shards become garbage.
    pub fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        let comps = meta::path_components(path)?;
        let Some((name, parent_comps)) = comps.split_last() else {
            return Err(QsfsError::Invalid(format!(
                "{path}: refusing to remove the volume root"
            )));
        };
        let parent_path = format!("/{}", parent_comps.join("/"));
        self.meta.write(|c| {
            let parent = meta::resolve(c, &parent_path)?
                .ok_or_else(|| QsfsError::NotFound(path.to_string()))?;
            let ino = meta::lookup(c, parent, name.as_bytes())?
                .ok_or_else(|| QsfsError::NotFound(path.to_string()))?;
            let kind = meta::get_inode(c, ino)?.map(|i| i.kind);
            if kind == Some(FileKind::Dir) {
                if !recursive && !meta::list_dir(c, ino)?.is_empty() {
                    return Err(QsfsError::NotEmpty(format!("{path} (use -r)")));
                }
                remove_tree(c, ino)?;
            }
            meta::unlink(c, parent, name.as_bytes())?;
            Ok(())
        })
    }
}

fn remove_tree(c: &rusqlite::Connection, dir: u64) -> Result<()> {
    for entry in meta::list_dir(c, dir)? {
        if entry.kind == FileKind::Dir {
            remove_tree(c, entry.ino)?;
        }
        meta::unlink(c, dir, &entry.name)?;
    }
    Ok(())
}

impl Volume {
    /// The segments of `ino` that a mount queued locally because it could not upload them yet (the stores were
    /// down when it stopped), newest per index: they are newer than any committed version of their index.
    fn queued_of(&self, ino: u64) -> Result<std::collections::BTreeMap<u64, meta::QueuedSegment>> {
        let all = self.meta.read(meta::queued_segments)?;
        Ok(all
            .into_iter()
            .filter(|q| q.ino == ino)
            .map(|q| (q.index, q))
            .collect())
    }

    /// A queued segment's bytes, from its queue row or its file in the local queue directory.
    fn read_queued(&self, q: &meta::QueuedSegment, name: &str) -> Result<Vec<u8>> {
        if q.inline {
            return self
                .meta
                .read(|c| meta::queued_data(c, q.id))?
                .ok_or_else(|| {
                    QsfsError::Invalid(format!("{name}: queued segment {} has no bytes", q.index))
                });
        }
        let path = self
            .cache_dir()
            .join(crate::staging::QUEUE_DIR)
            .join(&q.file);
        let mut bytes = std::fs::read(&path).map_err(|e| {
            QsfsError::io(
                format!(
                    "{name}: reading data not yet uploaded from {}",
                    path.display()
                ),
                e,
            )
        })?;
        if (bytes.len() as u64) < q.plain_len {
            return Err(QsfsError::Invalid(format!(
                "{name}: the local copy of a segment not yet uploaded is truncated ({})",
                path.display()
            )));
        }
        bytes.truncate(q.plain_len as usize);
        Ok(bytes)
    }
}

/// A file inode with no name yet (link count 0).
fn new_inode(c: &rusqlite::Connection, opts: &PutOptions) -> Result<u64> {
    let new = NewInode {
        kind: FileKind::File,
        mode: opts.mode,
        uid: opts.uid,
        gid: opts.gid,
        rdev: 0,
        target: None,
    };
    meta::create_inode(c, &new)
}

fn current_ids() -> (u32, u32) {
    (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    )
}

/// Reads up to `len` bytes, stopping early only at end of input.
fn read_full(reader: &mut dyn Read, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(QsfsError::io("reading input", e)),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}
