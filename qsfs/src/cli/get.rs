//! `qsfs get`: writing a file or tree of the volume into the local filesystem with `cp -r` semantics, without
//! ever following a symlink that `get` did not create.
//!
//! The destination the user names is resolved like cp resolves it (a symlink the user points at is theirs to
//! follow). Below it, every step is relative to a directory descriptor `get` opened itself: directories are made
//! with `mkdirat` and opened `O_NOFOLLOW`, files are written to a random temporary name created
//! `O_CREAT|O_EXCL|O_NOFOLLOW` (mode 0600 until the contents are verified) and renamed over their name only when
//! every byte has been decoded and verified. A symlink planted at a temporary name, a destination name or a
//! directory of the tree is refused or replaced, never written through — and no path is looked up twice, so
//! swapping a directory for a symlink in between gains nothing.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{Mode, fchmod, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, symlinkat, unlinkat};
use qsfs::Volume;
use qsfs::meta::{self, FileKind, ROOT_INO};

use super::progress;

/// One place to write: a name inside a directory `get` holds open, and the path to show in messages.
struct Dest<'a> {
    dir: &'a OwnedFd,
    name: &'a OsStr,
    shown: PathBuf,
}

pub fn get(vol: &Volume, src: &str, dest: &Path) -> Result<()> {
    let ino = vol
        .meta()
        .read(|c| meta::resolve(c, src))?
        .ok_or_else(|| qsfs::QsfsError::NotFound(src.to_string()))?;
    let name = meta::path_components(src)?.last().map(|s| s.to_string());
    let target = match (&name, dest.is_dir()) {
        (Some(n), true) => dest.join(n),
        _ => dest.to_path_buf(),
    };
    let total = super::transfer::volume_tree_size(vol, ino)?;
    let pb = progress::bar(total, "get");
    let display = if src.starts_with('/') {
        src.to_string()
    } else {
        format!("/{src}")
    };
    match target.file_name() {
        Some(base) => {
            // The user-named parent: created like `cp` would need it, resolved as the user wrote it.
            let parent = target
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            let dir = open_dir(parent, OFlag::empty())?;
            let to = Dest {
                dir: &dir,
                name: base,
                shown: target.clone(),
            };
            get_one(vol, ino, &display, &to, &pb)?;
        }
        // `.`, `..` or `/`: an existing directory the user named; the tree's entries go straight into it.
        None => {
            let dir = open_dir(&target, OFlag::empty())?;
            get_tree_into(vol, ino, &display, &dir, &target, &pb)?;
        }
    }
    pb.finish_and_clear();
    Ok(())
}

fn open_dir(path: &Path, extra: OFlag) -> Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | extra,
        Mode::empty(),
    )
    .with_context(|| format!("opening {}", path.display()))
}

fn get_one(vol: &Volume, ino: u64, vpath: &str, to: &Dest<'_>, pb: &ProgressBar) -> Result<()> {
    let (inode, link) = vol.meta().read(|c| {
        let inode =
            meta::get_inode(c, ino)?.ok_or_else(|| qsfs::QsfsError::NotFound(vpath.to_string()))?;
        let link = if inode.kind == FileKind::Symlink {
            meta::read_link(c, ino)?
        } else {
            None
        };
        Ok((inode, link))
    })?;
    match inode.kind {
        FileKind::Dir => {
            let dir = make_dir(to)?;
            get_tree_into(vol, ino, vpath, &dir, &to.shown, pb)?;
        }
        FileKind::Symlink => {
            // Replacing a name that exists (unlinkat never follows it), like the file case's rename does.
            match unlinkat(to.dir, to.name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("replacing {}", to.shown.display()));
                }
            }
            let link = OsString::from_vec(link.unwrap_or_default());
            symlinkat(link.as_os_str(), to.dir, to.name)
                .with_context(|| format!("creating {}", to.shown.display()))?;
        }
        FileKind::File => get_file(vol, ino, vpath, &inode, to, pb)?,
        _ => tracing::warn!(
            path = vpath,
            "skipping a special file (fifo, socket or device)"
        ),
    }
    Ok(())
}

/// Fetches the children of volume directory `ino` into the open local directory `dir`, then gives `dir` the
/// directory's mode (last, so a read-only directory can still be filled).
fn get_tree_into(
    vol: &Volume,
    ino: u64,
    vpath: &str,
    dir: &OwnedFd,
    shown: &Path,
    pb: &ProgressBar,
) -> Result<()> {
    let (mode, children) = vol.meta().read(|c| {
        let inode =
            meta::get_inode(c, ino)?.ok_or_else(|| qsfs::QsfsError::NotFound(vpath.to_string()))?;
        Ok((inode.mode, meta::list_dir(c, ino)?))
    })?;
    for child in children {
        let name = String::from_utf8_lossy(&child.name).into_owned();
        let child_vpath = if ino == ROOT_INO {
            format!("/{name}")
        } else {
            format!("{vpath}/{name}")
        };
        let child_name = OsStr::from_bytes(&child.name);
        let to = Dest {
            dir,
            name: child_name,
            shown: shown.join(child_name),
        };
        get_one(vol, child.ino, &child_vpath, &to, pb)?;
    }
    fchmod(dir, Mode::from_bits_truncate(mode & 0o7777))
        .with_context(|| format!("setting the mode of {}", shown.display()))?;
    Ok(())
}

/// Creates (or reuses) directory `to` and opens it without following a symlink: a symlink at that name is an
/// error, never a way out of the destination tree.
fn make_dir(to: &Dest<'_>) -> Result<OwnedFd> {
    match mkdirat(to.dir, to.name, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", to.shown.display())),
    }
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(to.dir, to.name, flags, Mode::empty()) {
        Ok(fd) => Ok(fd),
        // Linux says ENOTDIR (O_DIRECTORY) or ELOOP (O_NOFOLLOW) for a symlink: tell the two cases apart.
        Err(Errno::ELOOP | Errno::ENOTDIR) => {
            let is_link = fstatat(to.dir, to.name, AtFlags::AT_SYMLINK_NOFOLLOW)
                .is_ok_and(|st| st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFLNK);
            if is_link {
                bail!(
                    "{}: is a symlink; qsfs get does not write through symlinks it did not create",
                    to.shown.display()
                )
            }
            bail!("{}: exists and is not a directory", to.shown.display())
        }
        Err(e) => Err(e).with_context(|| format!("opening {}", to.shown.display())),
    }
}

fn get_file(
    vol: &Volume,
    ino: u64,
    vpath: &str,
    inode: &meta::Inode,
    to: &Dest<'_>,
    pb: &ProgressBar,
) -> Result<()> {
    if let Ok(st) = fstatat(to.dir, to.name, AtFlags::AT_SYMLINK_NOFOLLOW)
        && st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR
    {
        bail!("{}: is a directory", to.shown.display());
    }
    let (tmp_name, out) = create_temp(to)?;
    let result = (|| -> Result<()> {
        let mut out = out;
        vol.get_file(ino, &mut out, vpath, &mut |n| pb.inc(n))?;
        out.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(inode.mode))?;
        out.set_modified(mtime(inode.mtime_ns))?;
        out.sync_all()?;
        renameat(to.dir, tmp_name.as_os_str(), to.dir, to.name)
            .with_context(|| format!("writing {}", to.shown.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = unlinkat(to.dir, tmp_name.as_os_str(), UnlinkatFlags::NoRemoveDir);
    }
    result
}

/// A fresh temporary file beside `to`: a random name (nobody can plant anything at it in advance), created
/// exclusively and without following symlinks, private until the file is complete.
fn create_temp(to: &Dest<'_>) -> Result<(OsString, File)> {
    // The visible part of the name is cut so that it and the random suffix fit NAME_MAX.
    let base: Vec<u8> = to.name.as_bytes().iter().copied().take(200).collect();
    for _ in 0..16 {
        let mut name = b".".to_vec();
        name.extend_from_slice(&base);
        name.extend_from_slice(format!(".{:016x}.qsfs-partial", rand::random::<u64>()).as_bytes());
        let name = OsString::from_vec(name);
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match openat(
            to.dir,
            name.as_os_str(),
            flags,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => return Ok((name, File::from(fd))),
            Err(Errno::EEXIST) => continue,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("creating a temporary file for {}", to.shown.display())
                });
            }
        }
    }
    bail!(
        "{}: could not create a temporary file with a fresh name",
        to.shown.display()
    )
}

/// A modification time from the volume's nanoseconds, before 1970 clamped to the epoch.
fn mtime(ns: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns.max(0) as u64)
}
