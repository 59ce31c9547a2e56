//! The mount(8) side of qsfs: `mount -t fuse.qsfs qsfs:/path/to/volume /mnt/x -o allow_other,noatime` and
//! `/etc/fstab` lines call `/sbin/mount.fuse.qsfs SOURCE MOUNTPOINT -o OPTIONS`; `qsfs install-helper` makes that
//! name a link to this binary, and invoked under it the binary turns mount(8)'s calling convention into
//! `qsfs --volume VOLUME mount MOUNTPOINT [options]`.
//!
//! Options: `ro`/`rw`, `allow_other`, `noatime`/`relatime`/`strictatime`, `sync_close`, `cache_size=SIZE`,
//! `staging_limit=SIZE`, `upload_lag=DURATION`, `metrics=ADDR`; the ones that only mean something to mount(8) or the boot (`defaults`, `auto`, `noauto`,
//! `user`, `users`, `nouser`, `_netdev`, `nofail`, `x-*`, `comment=*`) and the kernel's usual flags (`suid`,
//! `nosuid`, `dev`, `nodev`, `exec`, `noexec`) are accepted and passed over. Anything else is refused by name
//! (`-s`, sloppy, passes it over too). `remount` with `ro` or `rw` flips the kernel's read-only flag (through
//! `mount -i`, which calls no helper); the serving process notices within a second and stops (or resumes)
//! writing anything itself. Nothing else changes on a remount (mount(8) passes the mount's current options along
//! with the new ones, so they are passed over): to change another option, unmount and mount again.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The names mount(8) finds the helper under.
pub const HELPER_NAMES: [&str; 2] = ["mount.fuse.qsfs", "mount.qsfs"];

/// Whether this process was started as the mount helper.
pub fn invoked_as_helper(argv0: &std::ffi::OsStr) -> bool {
    Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| HELPER_NAMES.contains(&n))
}

/// What mount(8) asked the helper for.
#[derive(Debug, PartialEq, Eq)]
pub enum HelperCall {
    /// Mount: the `qsfs` arguments that do it.
    Mount(Vec<OsString>),
    /// `-o remount,ro|rw` of a mounted volume.
    Remount {
        mountpoint: PathBuf,
        read_only: bool,
    },
}

/// `mount.fuse.qsfs SOURCE MOUNTPOINT [-o OPTIONS] [-s] [-n] [-v] [-f]` → what to do.
pub fn translate(args: &[OsString]) -> Result<HelperCall> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut sloppy = false;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("-o") => {
                let o = it.next().context("-o needs a list of options")?;
                options.extend(o.to_string_lossy().split(',').map(str::to_string));
            }
            Some(s) if s.starts_with("-o") => options.extend(s[2..].split(',').map(str::to_string)),
            Some("-s") => sloppy = true,
            Some("-f") => {
                bail!("mount.fuse.qsfs: -f (fake) is mount(8)'s business, not the helper's")
            }
            Some("-n" | "-v") => {}
            Some(s) if s.starts_with('-') => bail!("mount.fuse.qsfs: unknown flag {s}"),
            _ => positional.push(a.clone()),
        }
    }
    let [source, mountpoint] = positional.as_slice() else {
        bail!("usage: mount.fuse.qsfs qsfs:VOLUME MOUNTPOINT [-o OPTIONS]");
    };
    if options.iter().any(|o| o == "remount") {
        return remount_call(mountpoint, &options);
    }
    let source = source.to_string_lossy();
    let volume = PathBuf::from(source.strip_prefix("qsfs:").unwrap_or(&source));
    let mut out: Vec<OsString> = vec!["qsfs".into(), "--volume".into(), volume.into()];
    out.push("mount".into());
    out.push(mountpoint.clone());
    for o in options.iter().filter(|o| !o.is_empty()) {
        out.extend(mount_flag(o, sloppy)?.into_iter().map(OsString::from));
    }
    Ok(HelperCall::Mount(out))
}

/// A remount changes only `ro`/`rw` (the last one given wins).
fn remount_call(mountpoint: &OsString, options: &[String]) -> Result<HelperCall> {
    let mut read_only = None;
    for o in options {
        match o.as_str() {
            "ro" => read_only = Some(true),
            "rw" => read_only = Some(false),
            _ => {}
        }
    }
    let read_only = read_only.context("a remount needs ro or rw")?;
    Ok(HelperCall::Remount {
        mountpoint: PathBuf::from(mountpoint),
        read_only,
    })
}

/// Flips the kernel's read-only flag of a mounted volume (`mount -i`: no helper is called again).
pub fn remount(mountpoint: &Path, read_only: bool) -> Result<()> {
    let status = std::process::Command::new("mount")
        .arg("-i")
        .arg("-o")
        .arg(if read_only {
            "remount,ro"
        } else {
            "remount,rw"
        })
        .arg(mountpoint)
        .status()
        .context("running mount -i")?;
    if !status.success() {
        bail!("remounting {} failed ({status})", mountpoint.display());
    }
    // The serving process follows the kernel's flag at its next housekeeping round (every half second): return
    // once it has, so a write right after `remount,rw` is not refused and nothing is written after `remount,ro`.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    Ok(())
}

/// The `qsfs mount` flags for one mount option.
fn mount_flag(option: &str, sloppy: bool) -> Result<Vec<String>> {
    let (name, value) = match option.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (option, None),
    };
    let flags = match (name, value) {
        ("ro", None) => vec!["--read-only".to_string()],
        ("allow_other", None) => vec!["--allow-other".to_string()],
        ("sync_close", None) => vec!["--sync-close".to_string()],
        ("noatime" | "relatime" | "strictatime", None) => vec!["--atime".into(), name.into()],
        ("cache_size", Some(v)) => vec!["--cache-size".into(), v.into()],
        ("staging_limit", Some(v)) => vec!["--staging-limit".into(), v.into()],
        ("upload_lag", Some(v)) => vec!["--upload-lag".into(), v.into()],
        ("metrics", Some(v)) => vec!["--metrics".into(), v.into()],
        (
            "rw" | "defaults" | "auto" | "noauto" | "user" | "users" | "nouser" | "_netdev"
            | "nofail" | "suid" | "nosuid" | "dev" | "nodev" | "exec" | "noexec",
            None,
        ) => Vec::new(),
        ("comment", Some(_)) => Vec::new(),
        (n, _) if n.starts_with("x-") => Vec::new(),
        _ if sloppy => Vec::new(),
        _ => bail!("mount option {option} is not one qsfs knows"),
    };
    Ok(flags)
}

/// `qsfs install-helper [--dir DIR]`: links DIR/mount.fuse.qsfs (default /sbin, where mount(8) looks) to this
/// binary, replacing an older link but never a file that is not one.
pub fn install(dir: &Path) -> Result<PathBuf> {
    let exe = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .context("finding the qsfs executable")?;
    let link = dir.join(HELPER_NAMES[0]);
    match std::fs::symlink_metadata(&link) {
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::remove_file(&link).with_context(|| format!("replacing {}", link.display()))?
        }
        Ok(_) => bail!(
            "{} exists and is not a link; remove it first",
            link.display()
        ),
        Err(_) => {}
    }
    std::os::unix::fs::symlink(&exe, &link)
        .with_context(|| format!("creating {} (as root?)", link.display()))?;
    Ok(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    fn joined(call: HelperCall) -> String {
        let HelperCall::Mount(v) = call else {
            panic!("not a mount: {call:?}")
        };
        v.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn fstab_options_become_mount_flags() {
        let got = translate(&args(
            "mount.fuse.qsfs qsfs:/var/lib/qsfs/a /mnt/a -o rw,allow_other,noatime,_netdev,nofail,x-systemd.after=x",
        ))
        .unwrap();
        assert_eq!(
            joined(got),
            "qsfs --volume /var/lib/qsfs/a mount /mnt/a --allow-other --atime noatime"
        );
        let got = translate(&args(
            "mount.fuse.qsfs /v /m -oro,cache_size=1GiB,upload_lag=30s",
        ))
        .unwrap();
        assert_eq!(
            joined(got),
            "qsfs --volume /v mount /m --read-only --cache-size 1GiB --upload-lag 30s"
        );
    }

    #[test]
    fn unknown_options_are_refused_by_name_and_remount_only_flips_ro() {
        let e = translate(&args("mount.fuse.qsfs qsfs:/v /m -o bogus")).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        assert!(translate(&args("mount.fuse.qsfs qsfs:/v /m -s -o bogus")).is_ok());
        assert_eq!(
            translate(&args("mount.fuse.qsfs qsfs:/v /m -o remount,ro,_netdev")).unwrap(),
            HelperCall::Remount {
                mountpoint: "/m".into(),
                read_only: true
            }
        );
        assert!(translate(&args("mount.fuse.qsfs qsfs:/v /m -o remount")).is_err());
        assert!(translate(&args("mount.fuse.qsfs qsfs:/v")).is_err());
    }

    #[test]
    fn recognises_its_names() {
        assert!(invoked_as_helper("/sbin/mount.fuse.qsfs".as_ref()));
        assert!(!invoked_as_helper("/usr/bin/qsfs".as_ref()));
    }
}
