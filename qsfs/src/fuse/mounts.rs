//! The system's mount table as qsfs needs it: finding the mount at a path (`/proc/self/mountinfo`), telling a
//! stale mount (its serving process gone) from a live one, unmounting, and waiting for a mount process to exit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{QsfsError, Result};

/// A mount table entry.
#[derive(Clone, Debug)]
pub struct MountEntry {
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
    /// The kernel's read-only flag for this mount (`ro` among its per-mount options).
    pub read_only: bool,
}

impl MountEntry {
    pub fn is_qsfs(&self) -> bool {
        self.fstype.starts_with("fuse") && self.source.starts_with("qsfs")
    }

    /// The volume directory named in the source, if it was recorded.
    pub fn volume(&self) -> Option<PathBuf> {
        self.source.strip_prefix("qsfs:").map(PathBuf::from)
    }
}

fn unescape(field: &str) -> String {
    // /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && let Ok(digits) = std::str::from_utf8(&b[i + 1..i + 4])
            && let Ok(v) = u8::from_str_radix(digits, 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount table entry at `mountpoint` (the last one, if several are stacked).
pub fn find_mount(mountpoint: &Path) -> Option<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = absolute(mountpoint);
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut l = left.split(' ').skip(4);
            let mp = unescape(l.next()?);
            let read_only = l.next()?.split(',').any(|o| o == "ro");
            let mut r = right.split(' ');
            let fstype = r.next()?.to_string();
            let source = unescape(r.next()?);
            Some(MountEntry {
                mountpoint: PathBuf::from(mp),
                fstype,
                source,
                read_only,
            })
        })
        .rfind(|m| m.mountpoint == want)
}

/// `path` made absolute without touching the last component (stat on a dead mount fails).
fn absolute(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => parent
            .canonicalize()
            .map(|p| p.join(name))
            .unwrap_or(abs.clone()),
        _ => abs,
    }
}

/// True if a FUSE filesystem is mounted at `mountpoint` but nothing serves it any more ("Transport endpoint is
/// not connected").
pub fn is_stale_mount(mountpoint: &Path) -> bool {
    matches!(std::fs::metadata(mountpoint), Err(e) if e.raw_os_error() == Some(nix::libc::ENOTCONN))
}

/// Detaches a dead mount at `mountpoint` left by a crashed process. Refuses a live one.
///
/// `stat` alone cannot tell: for a moment after the daemon dies the kernel still answers it from cached
/// attributes. So a qsfs mount found there is judged by its volume's lock, which a live mount process holds for its
/// whole life: our own volume's lock is held by us (we opened it), so nobody else serves it; another volume whose
/// lock can be taken has no live server either.
pub(super) fn clean_stale(mountpoint: &Path, own_volume: &Path) -> Result<bool> {
    if is_stale_mount(mountpoint) {
        tracing::warn!(mountpoint = %mountpoint.display(), "cleaning a stale mount left by a crashed qsfs");
        unmount(mountpoint, true)?;
        return Ok(true);
    }
    if let Some(m) = find_mount(mountpoint)
        && m.is_qsfs()
    {
        let served_volume = m.source.strip_prefix("qsfs:").map(PathBuf::from);
        let dead = match &served_volume {
            Some(v) if v.as_path() == own_volume => true,
            Some(v) => crate::volume::VolumeLock::acquire(v).is_ok(),
            None => false,
        };
        if dead {
            tracing::warn!(mountpoint = %mountpoint.display(), "cleaning a stale mount left by a crashed qsfs");
            unmount(mountpoint, true)?;
            return Ok(true);
        }
        return Err(QsfsError::Exists(format!(
            "{}: a qsfs volume is already mounted here ({})",
            mountpoint.display(),
            m.source
        )));
    }
    Ok(false)
}

/// Unmounts `mountpoint`: directly as root, through `fusermount3 -u` otherwise. `lazy` detaches even if busy.
pub fn unmount(mountpoint: &Path, lazy: bool) -> Result<()> {
    let target = absolute(mountpoint);
    let flags = if lazy {
        nix::mount::MntFlags::MNT_DETACH
    } else {
        nix::mount::MntFlags::empty()
    };
    // A file closed a moment ago may still be on its way out of the kernel (its release is asynchronous): a busy
    // mount gets two seconds before it counts as busy.
    let mut tries = 0;
    let umounted = loop {
        match nix::mount::umount2(&target, flags) {
            Err(nix::errno::Errno::EBUSY) if tries < 20 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => break other,
        }
    };
    match umounted {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => Err(QsfsError::io(
            format!(
                "{}: busy (files are open, or a process has its working directory inside)",
                target.display()
            ),
            std::io::Error::from_raw_os_error(nix::libc::EBUSY),
        )),
        Err(nix::errno::Errno::EPERM) => {
            let mut cmd = std::process::Command::new("fusermount3");
            cmd.arg(if lazy { "-uz" } else { "-u" }).arg(&target);
            let out = cmd
                .output()
                .map_err(|e| QsfsError::io("running fusermount3 -u", e))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(QsfsError::io(
                    format!(
                        "fusermount3 -u {}: {}",
                        target.display(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                    std::io::Error::other("unmount refused"),
                ))
            }
        }
        Err(e) => Err(QsfsError::io(
            format!("unmounting {}", target.display()),
            e.into(),
        )),
    }
}

/// Waits until process `pid` has exited (or is a zombie): `qsfs umount` waits for the drain this way.
pub fn wait_for_exit(pid: u32, mut tick: impl FnMut(Duration)) {
    let start = std::time::Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
        let alive = match stat {
            Ok(s) => s
                .rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
                .unwrap_or(false),
            Err(_) => false,
        };
        if !alive {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
        tick(start.elapsed());
    }
}
