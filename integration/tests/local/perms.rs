//! What another local user could read: the volume directory is 0700 and everything qsfs creates in it 0600
//! whatever the umask; a volume others can reach is refused; a small file's plaintext does not stay in the
//! metadata database (or its write-ahead log) once it is on the stores.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::Unmount;
use crate::fuse::fuse_available;
use crate::fuse::mount::{Mount, qsfs_umount, wait_for};
use crate::helpers::{Vol, qsfs_bin, s};

/// Runs `qsfs --volume V ARGS…` under `umask 000`, output to `log`; returns the exit code.
fn qsfs_umask0(v: &Vol, args: &[&str], log: &Path) -> Option<i32> {
    let f = fs::File::create(log).unwrap();
    Command::new("sh")
        .arg("-c")
        .arg("umask 000; exec \"$@\"")
        .arg("sh")
        .arg(qsfs_bin())
        .arg("--volume")
        .arg(&v.path)
        .args(args)
        .env_remove("QSFS_VOLUME")
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .status()
        .unwrap()
        .code()
}

/// Every directory under the volume is 0700 and every file 0600 — except inside the embedded stores' own
/// directories (ciphertext, written by the dir store), which the 0700 `stores/` keeps out of reach anyway.
fn assert_private(vol: &Path) -> usize {
    fn walk(p: &Path, vol: &Path, seen: &mut usize) {
        let md = fs::symlink_metadata(p).unwrap();
        let mode = md.permissions().mode() & 0o777;
        let want = if md.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} has mode {mode:04o}", p.display());
        *seen += 1;
        if md.is_dir() && p != vol.join("stores") {
            for e in fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path(), vol, seen);
            }
        }
    }
    let mut seen = 0;
    walk(vol, vol, &mut seen);
    seen
}

#[test]
fn volume_files_are_private_whatever_the_umask() {
    let v = Vol::new();
    let log = v.scratch("logs").join("qsfs.log");
    assert_eq!(
        qsfs_umask0(&v, &["init"], &log),
        Some(0),
        "{}",
        fs::read_to_string(&log).unwrap()
    );
    let f = v.scratch("src").join("a.txt");
    fs::write(&f, b"hello\n").unwrap();
    assert_eq!(qsfs_umask0(&v, &["put", s(&f), "/a.txt"], &log), Some(0));
    for name in ["qsfs.toml", "key", "meta.db", "cache", "lock", "stores"] {
        assert!(v.path.join(name).exists(), "{name} missing");
    }
    assert_private(&v.path);
    if !fuse_available("volume_files_are_private_whatever_the_umask (mounted part)") {
        return;
    }
    let mp = v.scratch("mnt");
    let _cleanup = Unmount(mp.clone());
    let code = qsfs_umask0(&v, &["mount", s(&mp)], &log);
    assert_eq!(code, Some(0), "{}", fs::read_to_string(&log).unwrap());
    // An open file has a staging file; a closed big one a queue file; a closed small one an inline row.
    let mut open = fs::File::create(mp.join("open.bin")).unwrap();
    open.write_all(&vec![7u8; 300 << 10]).unwrap();
    fs::write(mp.join("small.txt"), b"small\n").unwrap();
    fs::write(mp.join("big.bin"), vec![9u8; 200 << 10]).unwrap();
    for name in ["mount.log", "meta.db-wal", "meta.db-shm"] {
        assert!(v.path.join(name).exists(), "{name} missing while mounted");
    }
    let seen = assert_private(&v.path);
    assert!(seen > 10, "only {seen} entries checked");
    open.sync_all().unwrap();
    drop(open);
    let out = qsfs_umount(&mp, Duration::from_secs(60)).unwrap();
    assert!(out.success(), "{}", out.describe());
    assert_private(&v.path);
}

#[test]
fn a_volume_others_can_reach_is_refused() {
    let v = Vol::new();
    v.init_default(&[]);
    fs::set_permissions(&v.path, fs::Permissions::from_mode(0o755)).unwrap();
    let err = v.run(&["ls", "/"]).failed();
    let canon = fs::canonicalize(&v.path).unwrap();
    assert!(
        err.contains(&format!("chmod 700 {}", canon.display())),
        "{err}"
    );
    fs::set_permissions(&v.path, fs::Permissions::from_mode(0o700)).unwrap();
    let cfg = v.path.join("qsfs.toml");
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o620)).unwrap();
    let err = v.run(&["ls", "/"]).failed();
    assert!(
        err.contains("chmod 600") && err.contains("qsfs.toml"),
        "{err}"
    );
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o600)).unwrap();
    v.ok(&["ls", "/"]);
}

fn holds(path: &Path, needle: &[u8]) -> bool {
    fs::read(path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
}

/// A small file closed on a mount waits in the upload queue with its plaintext inline in `meta.db`; once it is
/// on the stores, neither the database nor its write-ahead log may still hold it.
#[test]
fn uploaded_small_files_leave_no_plaintext_in_the_database() {
    if !fuse_available("uploaded_small_files_leave_no_plaintext_in_the_database") {
        return;
    }
    let v = Vol::new();
    v.init_default(&[]);
    let mp = v.scratch("mnt");
    let m = Mount::start(&v, &mp, &[]);
    let marker = format!("plaintext-marker-{:032x}", rand::random::<u128>());
    // Closed without fsync: close queues the bytes locally (inline, for a small file) and uploads follow.
    fs::write(m.path("secret.txt"), marker.repeat(20)).unwrap();
    let db = v.path.join("meta.db");
    let wal = v.path.join("meta.db-wal");
    let clean = wait_for(Duration::from_secs(20), || {
        !holds(&db, marker.as_bytes()) && !holds(&wal, marker.as_bytes())
    });
    assert!(
        clean,
        "the plaintext is still in meta.db or meta.db-wal after its upload"
    );
    m.umount();
    assert!(
        !holds(&db, marker.as_bytes()),
        "plaintext in meta.db after umount"
    );
}
