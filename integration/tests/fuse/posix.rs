//! POSIX corners where the mount must behave like a local filesystem, each checked side by side with the same
//! steps on a directory of the local disk: set-user/group-ID bits dropped by an unprivileged write or truncate.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::mount::Mount;
use super::{fuse_available, sh};
use crate::helpers::{Vol, s};

/// Lets user nobody reach `dir` through the test's temporary directories.
fn open_path_to(dir: &Path) {
    let mut d = Some(dir.to_path_buf());
    while let Some(p) = d {
        if p.starts_with(std::env::temp_dir()) && p != std::env::temp_dir() {
            let mode = fs::metadata(&p).unwrap().mode();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode | 0o711)).unwrap();
        }
        d = p.parent().map(|p| p.to_path_buf());
    }
}

/// Runs `sh -c SCRIPT` as nobody (uid/gid 65534, no supplementary groups), with $F set to `file`.
fn as_nobody(script: &str, file: &Path) {
    let out = sh(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "env",
            &format!("F={}", file.display()),
            "sh",
            "-c",
            script,
        ],
    );
    out.ok();
}

/// The modes a file ends with after each step: chmod (as root) to `start`, then `script` as nobody.
fn modes_after(dir: &Path, steps: &[(u32, u32, &str)]) -> Vec<String> {
    let f = dir.join("setid");
    fs::write(&f, b"x").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o666)).unwrap();
    steps
        .iter()
        .map(|(gid, start, script)| {
            std::os::unix::fs::chown(&f, Some(0), Some(*gid)).unwrap();
            fs::set_permissions(&f, fs::Permissions::from_mode(*start)).unwrap();
            as_nobody(script, &f);
            // Read at once: the mount invalidates the kernel's cached attributes when it drops a bit itself.
            format!("{:o}", fs::metadata(&f).unwrap().mode() & 0o7777)
        })
        .collect()
}

#[test]
fn unprivileged_write_and_truncate_drop_set_id_bits_like_ext4() {
    if !fuse_available("unprivileged_write_and_truncate_drop_set_id_bits_like_ext4") {
        return;
    }
    let v = Vol::new();
    v.init_default(&["--segment-size", "64KiB"]);
    let mp = fs::canonicalize(v.scratch("mnt")).unwrap();
    let local = fs::canonicalize(v.scratch("local")).unwrap();
    open_path_to(&mp);
    open_path_to(&local);
    let m = Mount::start(&v, &mp, &["--allow-other"]);
    fs::set_permissions(&mp, fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(&local, fs::Permissions::from_mode(0o777)).unwrap();
    // (file's group, mode before, what nobody does)
    let steps = [
        (0, 0o2666, "echo hi >> \"$F\""),
        (0, 0o2666, "truncate -s 1 \"$F\""),
        (0, 0o4666, "echo hi >> \"$F\""),
        (0, 0o6676, "echo hi >> \"$F\""),
        (65534, 0o2666, "echo hi >> \"$F\""),
        (65534, 0o2676, "echo hi >> \"$F\""),
        (65534, 0o6666, "truncate -s 0 \"$F\""),
    ];
    let want = modes_after(&local, &steps);
    let got = modes_after(&mp, &steps);
    assert_eq!(
        want[0], "666",
        "the local disk drops S_ISGID for a writer outside the group (kernel too old for this test?)"
    );
    assert_eq!(
        got,
        want,
        "set-ID bits after each step: mount vs local disk ({})",
        s(&local)
    );
    m.umount();
}

/// fallocate promises space: past what statfs reports free it fails with ENOSPC (and changes nothing), within it
/// it succeeds.
#[test]
fn fallocate_past_free_space_is_enospc() {
    if !fuse_available("fallocate_past_free_space_is_enospc") {
        return;
    }
    let v = Vol::new();
    v.init_default(&["--segment-size", "64KiB"]);
    let mp = v.scratch("mnt");
    let m = Mount::start(&v, &mp, &[]);
    let st = nix::sys::statvfs::statvfs(&mp).unwrap();
    let free = st.blocks_available() * st.fragment_size();
    assert!(free > 0, "statfs reports no free space");
    let f = m.path("big");
    let too_much = (free + (1 << 30)).to_string();
    let out = sh("fallocate", &["-l", &too_much, s(&f)]);
    assert!(
        !out.success(),
        "fallocate of {too_much} bytes with {free} free succeeded"
    );
    assert!(
        out.describe().contains("No space left"),
        "{}",
        out.describe()
    );
    assert_eq!(
        fs::metadata(&f).map(|m| m.len()).unwrap_or(0),
        0,
        "a refused fallocate changes nothing"
    );
    sh("fallocate", &["-l", "1048576", s(&f)]).ok();
    assert_eq!(fs::metadata(&f).unwrap().len(), 1 << 20);
    m.umount();
}

/// Every file under `dir` with its size and modification time: what a read-only mount must leave as it was.
fn listing(dir: &Path) -> Vec<(String, u64, i64)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                todo.push(e.path());
            } else {
                out.push((
                    e.path().display().to_string(),
                    m.len(),
                    m.mtime_nsec() + m.mtime() * 1_000_000_000,
                ));
            }
        }
    }
    out.sort();
    out
}

/// `qsfs mount --read-only`: files read back, every change is refused with EROFS, and neither the metadata
/// (its SQL dump) nor any store file changes.
#[test]
fn read_only_mount_serves_reads_and_changes_nothing() {
    if !fuse_available("read_only_mount_serves_reads_and_changes_nothing") {
        return;
    }
    let v = Vol::new();
    let stores = crate::restore::init_on_outside_dir_stores(&v);
    let src = v.scratch("src").join("tree");
    crate::helpers::tree::standard_tree(&src, 64 * 1024, 1, 91);
    v.ok(&["put", s(&src), "/tree"]);
    let dump = || sh("sqlite3", &[s(&v.path.join("meta.db")), ".dump"]).ok();
    let (meta_before, stores_before) = (dump(), listing(&stores));

    let mp = v.scratch("mnt");
    let m = Mount::start(&v, &mp, &["--read-only"]);
    crate::helpers::tree::assert_same_tree(&src, &m.path("tree"));
    for (what, res) in [
        ("create", fs::write(m.path("new"), b"x")),
        (
            "append",
            fs::OpenOptions::new()
                .append(true)
                .open(m.path("tree/one-byte"))
                .map(|_| ()),
        ),
        ("mkdir", fs::create_dir(m.path("d"))),
        ("unlink", fs::remove_file(m.path("tree/one-byte"))),
        (
            "chmod",
            fs::set_permissions(m.path("tree/one-byte"), fs::Permissions::from_mode(0o600)),
        ),
    ] {
        let e = res.expect_err(&format!("{what} on a read-only mount succeeded"));
        assert_eq!(
            e.raw_os_error(),
            Some(nix::errno::Errno::EROFS as i32),
            "{what}: {e}"
        );
    }
    m.umount();
    assert_eq!(
        listing(&stores),
        stores_before,
        "a read-only mount changed store files"
    );
    assert!(
        dump() == meta_before,
        "a read-only mount changed the metadata"
    );
    v.ok(&["fsck"]);
}

/// What a program sees of a directory replaced by `rename()` while it holds it open: `fstat` and `readdir` on
/// its descriptor keep working (no names, no links) until it closes it, as on a local disk.
const REPLACED_DIR_SCRIPT: &str = r#"
import os, sys
root = sys.argv[1]
a, b = os.path.join(root, "a"), os.path.join(root, "b")
os.mkdir(a)
os.mkdir(b)
fd = os.open(b, os.O_RDONLY | os.O_DIRECTORY)
os.rename(a, b)
st = os.fstat(fd)
print("nlink", st.st_nlink, "dir", (st.st_mode & 0o170000) == 0o040000, "entries", os.listdir(fd))
os.close(fd)
print("b is a now", sorted(os.listdir(root)))
"#;

#[test]
fn a_directory_replaced_while_open_lives_until_closed() {
    if !fuse_available("a_directory_replaced_while_open_lives_until_closed") {
        return;
    }
    let v = Vol::new();
    v.init_default(&["--segment-size", "64KiB"]);
    let mp = v.scratch("mnt");
    let local = v.scratch("local");
    let m = Mount::start(&v, &mp, &[]);
    let run = |dir: &Path| sh("python3", &["-c", REPLACED_DIR_SCRIPT, s(dir)]).ok();
    let want = run(&local);
    let got = run(&mp);
    assert!(
        want.contains("nlink 0 dir True entries []"),
        "local disk: {want}"
    );
    assert_eq!(got, want, "mount vs local disk");
    m.umount();
    assert!(
        v.ok(&["fsck"]).contains("clean"),
        "the replaced directory is gone after close"
    );
}

/// name_to_handle_at(2) through ctypes: "ok" or the errno.
const FILE_HANDLE_SCRIPT: &str = r#"
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
class FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int), ("f_handle", ctypes.c_ubyte * 128)]
fh = FileHandle()
fh.handle_bytes = 128
mount_id = ctypes.c_int()
r = libc.name_to_handle_at(-100, sys.argv[1].encode(), ctypes.byref(fh), ctypes.byref(mount_id), 0)
print("ok" if r == 0 else ctypes.get_errno())
"#;

/// File handles are refused up front (EOPNOTSUPP), not handed out and later answered with ESTALE for a file that
/// still exists once the kernel has forgotten its inode.
#[test]
fn file_handles_are_refused_with_eopnotsupp() {
    if !fuse_available("file_handles_are_refused_with_eopnotsupp") {
        return;
    }
    let v = Vol::new();
    v.init_default(&["--segment-size", "64KiB"]);
    let mp = v.scratch("mnt");
    let m = Mount::start(&v, &mp, &[]);
    fs::write(m.path("f"), b"x").unwrap();
    let got = sh("python3", &["-c", FILE_HANDLE_SCRIPT, s(&m.path("f"))]).ok();
    assert_eq!(
        got.trim(),
        (nix::errno::Errno::EOPNOTSUPP as i32).to_string(),
        "name_to_handle_at on the mount"
    );
    m.umount();
}
