//! qsfs through mount(8): `qsfs install-helper` links /sbin/mount.fuse.qsfs, after which
//! `mount -t fuse.qsfs qsfs:VOLUME MP -o …` and an fstab line (read with `mount --fstab`) mount a volume, the
//! kernel lists it as `fuse.qsfs` with source `qsfs:VOLUME` (findmnt -S finds it), mount options take effect
//! (`ro`, `allow_other`, `noatime`, and `_netdev`/`nofail` passed over), `remount,ro|rw` flips it (the serving
//! process then writes nothing while read-only) and plain `umount` ends it.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::mount::wait_for;
use super::{fuse_available, sh};
use crate::helpers::{Vol, qsfs_bin, s};

const HELPER: &str = "/sbin/mount.fuse.qsfs";

/// Puts back whatever /sbin/mount.fuse.qsfs was before the test.
struct HelperGuard(Option<PathBuf>);

impl Drop for HelperGuard {
    fn drop(&mut self) {
        let _ = fs::remove_file(HELPER);
        if let Some(old) = &self.0 {
            let _ = std::os::unix::fs::symlink(old, HELPER);
        }
    }
}

/// The /proc/mounts line of `mp`: (source, type, options).
fn proc_mount(mp: &Path) -> Option<(String, String, String)> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 3 && Path::new(f[1]) == mp).then(|| (f[0].into(), f[2].into(), f[3].into()))
    })
}

/// `umount MP`, then waits until the serving process has released the volume (`qsfs status` opens it).
fn umount_and_wait(v: &Vol, mp: &Path) {
    sh("umount", &[s(mp)]).ok();
    assert!(
        wait_for(Duration::from_secs(120), || v.run(&["status"]).code
            == Some(0)),
        "the mount process did not release the volume after umount"
    );
}

fn atime(p: &Path) -> i64 {
    fs::metadata(p).unwrap().atime()
}

#[test]
fn mount_t_fuse_qsfs_and_fstab_lines_work() {
    if !fuse_available("mount_t_fuse_qsfs_and_fstab_lines_work") {
        return;
    }
    let _guard = HelperGuard(fs::read_link(HELPER).ok());
    let installed = sh(s(&qsfs_bin()), &["install-helper"]).ok();
    assert!(installed.contains(HELPER), "{installed}");
    let v = Vol::new();
    v.init_default(&["--segment-size", "64KiB"]);
    let vol = fs::canonicalize(&v.path).unwrap();
    let source = format!("qsfs:{}", vol.display());
    let mp = fs::canonicalize(v.scratch("mnt")).unwrap();

    // mount -t: type, source and options as the kernel shows them; noatime keeps an old access time.
    sh(
        "mount",
        &[
            "-t",
            "fuse.qsfs",
            &source,
            s(&mp),
            "-o",
            "allow_other,noatime,_netdev",
        ],
    )
    .ok();
    let (src, fstype, opts) = proc_mount(&mp).expect("mounted");
    assert_eq!(
        (src.as_str(), fstype.as_str()),
        (source.as_str(), "fuse.qsfs")
    );
    assert!(opts.contains("allow_other"), "{opts}");
    let found = sh("findmnt", &["-n", "-o", "TARGET", "-S", &source]).ok();
    assert_eq!(found.trim(), s(&mp));
    assert!(sh("df", &["-T", s(&mp)]).ok().contains("fuse.qsfs"));
    let f = mp.join("f");
    fs::write(&f, b"through mount(8)").unwrap();
    sh("touch", &["-a", "-d", "2001-01-01", s(&f)]).ok();
    let old = atime(&f);
    assert_eq!(fs::read(&f).unwrap(), b"through mount(8)");
    assert_eq!(atime(&f), old, "noatime wrote the access time");

    // remount,ro: the kernel refuses writes, and the serving process (within its next housekeeping round) writes
    // nothing of its own: a strictatime-free read leaves the metadata as it was. remount,rw: writes work again.
    sh("mount", &["-o", "remount,ro", s(&mp)]).ok();
    let (_, _, opts) = proc_mount(&mp).unwrap();
    assert!(opts.split(',').any(|o| o == "ro"), "{opts}");
    let e = fs::write(mp.join("h"), b"x").expect_err("a write after remount,ro");
    assert_eq!(e.raw_os_error(), Some(nix::errno::Errno::EROFS as i32));
    std::thread::sleep(Duration::from_secs(2));
    let dump = || sh("sqlite3", &[s(&vol.join("meta.db")), ".dump"]).ok();
    let before = dump();
    assert_eq!(fs::read(&f).unwrap(), b"through mount(8)");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        dump() == before,
        "a mount remounted read-only changed its metadata"
    );
    sh("mount", &["-o", "remount,rw", s(&mp)]).ok();
    fs::write(mp.join("h"), b"writable again").unwrap();
    umount_and_wait(&v, &mp);

    // An fstab line: ro, the default relatime (an access time older than a day is refreshed by a read).
    let fstab = v.scratch("etc").join("fstab");
    fs::write(
        &fstab,
        format!(
            "{source} {} fuse.qsfs ro,allow_other,_netdev,nofail 0 0\n",
            mp.display()
        ),
    )
    .unwrap();
    sh("mount", &["--fstab", s(&fstab), s(&mp)]).ok();
    let (_, _, opts) = proc_mount(&mp).expect("mounted from fstab");
    assert!(opts.split(',').any(|o| o == "ro"), "{opts}");
    assert_eq!(fs::read(&f).unwrap(), b"through mount(8)");
    let e = fs::write(mp.join("g"), b"x").expect_err("a write on an ro fstab mount");
    assert_eq!(e.raw_os_error(), Some(nix::errno::Errno::EROFS as i32));
    umount_and_wait(&v, &mp);

    // Options qsfs does not know are refused by name; remount is refused.
    let bad = sh(
        "mount",
        &["-t", "fuse.qsfs", &source, s(&mp), "-o", "bogus_option"],
    );
    assert!(
        !bad.success() && bad.describe().contains("bogus_option"),
        "{}",
        bad.describe()
    );
    assert!(proc_mount(&mp).is_none());

    // relatime (the default): a read refreshes an access time older than a day.
    let m = super::mount::Mount::start(&v, &mp, &[]);
    sh("touch", &["-a", "-d", "2001-01-01", s(&f)]).ok();
    let old = atime(&f);
    fs::read(&f).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || atime(&f) > old),
        "relatime did not refresh a 25-year-old access time"
    );
    m.umount();
}
