//! The mount(8) side of qsfs: `mount -t fuse.qsfs qsfs:/path/to/volume /mnt/x -o allow_other,noatime` and
//! `/etc/fstab` lines call `/sbin/mount.fuse.qsfs SOURCE MOUNTPOINT -o OPTIONS`; `qsfs install-helper` makes that
//! name a link to this binary, and invoked under it the binary turns mount(8)'s calling convention into
//! `qsfs --volume VOLUME mount MOUNTPOINT [options]`.
//!
//! Options: `ro`/`rw`, `allow_other`, `noatime`/`relatime`/`strictatime`, `sync_close`, `cache_size=SIZE`,
//! `metrics=ADDR`; the ones that only mean something to mount(8) or the boot (`defaults`, `auto`, `noauto`,
//! `user`, `users`, `nouser`, `_netdev`, `nofail`, `x-*`, `comment=*`) and the kernel's usual flags (`suid`,
//! `nosuid`, `dev`, `nodev`, `exec`, `noexec`) are accepted and passed over. Anything else is refused by name
//! (`-s`, sloppy, passes it over too); `remount` is refused: unmount and mount again.

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

/// `mount.fuse.qsfs SOURCE MOUNTPOINT [-o OPTIONS] [-s] [-n] [-v] [-f]` → the `qsfs` arguments that mount it.
pub fn translate(args: &[OsString]) -> Result<Vec<OsString>> {
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
    let source = source.to_string_lossy();
    let volume = PathBuf::from(source.strip_prefix("qsfs:").unwrap_or(&source));
    let mut out: Vec<OsString> = vec!["qsfs".into(), "--volume".into(), volume.into()];
    out.push("mount".into());
    out.push(mountpoint.clone());
    for o in options.iter().filter(|o| !o.is_empty()) {
        out.extend(mount_flag(o, sloppy)?.into_iter().map(OsString::from));
    }
    Ok(out)
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
        ("metrics", Some(v)) => vec!["--metrics".into(), v.into()],
        ("remount", None) => {
            bail!("qsfs mounts cannot be remounted: unmount, then mount again with the new options")
        }
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

    fn joined(v: Vec<OsString>) -> String {
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
        let got = translate(&args("mount.fuse.qsfs /v /m -oro,cache_size=1GiB")).unwrap();
        assert_eq!(
            joined(got),
            "qsfs --volume /v mount /m --read-only --cache-size 1GiB"
        );
    }

    #[test]
    fn unknown_options_and_remount_are_refused_by_name() {
        let e = translate(&args("mount.fuse.qsfs qsfs:/v /m -o bogus")).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        assert!(translate(&args("mount.fuse.qsfs qsfs:/v /m -s -o bogus")).is_ok());
        let e = translate(&args("mount.fuse.qsfs qsfs:/v /m -o remount,ro")).unwrap_err();
        assert!(e.to_string().contains("remount"), "{e}");
        assert!(translate(&args("mount.fuse.qsfs qsfs:/v")).is_err());
    }

    #[test]
    fn recognises_its_names() {
        assert!(invoked_as_helper("/sbin/mount.fuse.qsfs".as_ref()));
        assert!(!invoked_as_helper("/usr/bin/qsfs".as_ref()));
    }
}
