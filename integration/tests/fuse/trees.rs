//! Trees through the mount: `cp -a` in and `diff -r` against the source (then again after a remount, and out
//! through `qsfs get`); `tar x` of an archive with symlinks and hard links (link targets, link counts, shared
//! inode numbers, modes and times kept, also after a remount); times set right after writing stick.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use super::mount::Mount;
use super::{assert_diff_r_clean, fuse_available, sh, sh_in};
use crate::helpers::tree::{assert_same_tree, random_file, standard_tree, text_file};
use crate::helpers::{Vol, s};

const KIB: u64 = 1024;
const SEGMENT: u64 = 64 * KIB;

/// What `lstat` says about one entry, for comparing a tree with its copy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stat {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    nlink: u64,
    /// Seconds only: tar archives keep whole seconds.
    mtime: i64,
    link: Option<PathBuf>,
}

fn lstat(p: &Path) -> (Stat, u64, i64) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else {
        "other"
    };
    let st = Stat {
        kind,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        // A directory's size is the filesystem's business.
        size: if kind == "dir" { 0 } else { m.size() },
        nlink: if kind == "dir" { 0 } else { m.nlink() },
        mtime: m.mtime(),
        link: ft.is_symlink().then(|| fs::read_link(p).expect("readlink")),
    };
    (st, m.ino(), m.mtime_nsec())
}

/// Every entry under `root` (root itself as ""), symlinks not followed: its stat, inode number and mtime nanos.
fn stat_tree(root: &Path) -> BTreeMap<PathBuf, (Stat, u64, i64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let st = lstat(&p);
        if st.0.kind == "dir" {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        }
        out.insert(rel, st);
    }
    out
}

/// Asserts `copy` has the same entries as `orig` with equal types, modes, owners, sizes, link counts, symlink
/// targets and mtimes (whole seconds; nanoseconds too when `nanos`), and that names sharing an inode in `orig`
/// share one in `copy` (and only those).
#[track_caller]
pub(super) fn assert_same_stats(orig: &Path, copy: &Path, nanos: bool) {
    let a = stat_tree(orig);
    let b = stat_tree(copy);
    let names_a: Vec<_> = a.keys().collect();
    let names_b: Vec<_> = b.keys().collect();
    assert_eq!(
        names_a,
        names_b,
        "entry names differ between {} and {}",
        orig.display(),
        copy.display()
    );
    let mut problems = Vec::new();
    for (rel, (sa, ia, na)) in &a {
        let (sb, ib, nb) = &b[rel];
        // The copy's root was created by the test (mkdir), not by the copy: only compare its type.
        if rel.as_os_str().is_empty() {
            continue;
        }
        if sa != sb {
            problems.push(format!(
                "{}: source {sa:?}\n    copy   {sb:?}",
                rel.display()
            ));
        }
        if nanos && sa.kind != "symlink" && na != nb {
            problems.push(format!("{}: mtime nanoseconds {na} vs {nb}", rel.display()));
        }
        // Hard links: the same inode in the source <=> the same inode in the copy.
        for (rel2, (sa2, ia2, _)) in &a {
            if rel2 <= rel || sa.kind != "file" || sa2.kind != "file" {
                continue;
            }
            let (_, ib2, _) = &b[rel2];
            if (ia == ia2) != (ib == ib2) {
                problems.push(format!(
                    "{} and {}: same inode in the source: {}, in the copy: {}",
                    rel.display(),
                    rel2.display(),
                    ia == ia2,
                    ib == ib2
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} differs from {}:\n  {}",
        copy.display(),
        orig.display(),
        problems.join("\n  ")
    );
}

/// `cp -a` a tree (odd sizes around the 64 KiB segment size, a 12 MiB random file, text, empty files and
/// directories, unusual modes) into a mount; `diff -r` and metadata must match, also after unmount and remount
/// with a small read cache; `qsfs get` of the unmounted volume gives the same tree; fsck is clean.
#[test]
fn cp_a_tree_into_mount_then_diff_r_and_remount() {
    if !fuse_available("cp_a_tree_into_mount_then_diff_r_and_remount") {
        return;
    }
    let v = Vol::new();
    v.init_default(&["--segment-size", "64KiB"]);
    let src = v.scratch("src").join("tree");
    standard_tree(&src, SEGMENT, 12, 101);
    text_file(
        &src.join("compressible.txt"),
        3 * 1024 * 1024,
        "compressible",
    );
    for (name, mode) in [
        ("odd-4097.bin", 0o600),
        ("one-byte", 0o751),
        ("nested/a", 0o700),
    ] {
        fs::set_permissions(src.join(name), fs::Permissions::from_mode(mode)).unwrap();
    }
    let mp = v.scratch("mnt");

    let m = Mount::start(&v, &mp, &[]);
    let dest = m.path("tree");
    sh("cp", &["-a", s(&src), s(&dest)]).ok();
    assert_diff_r_clean(&src, &dest);
    assert_same_stats(&src, &dest, true);
    // Rewrite part of a file in place across a segment boundary, then cut it inside a segment, through the
    // mount and on the source alike; then give both the same mtime.
    for root in [&src, &dest] {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(root.join("multi-segment.bin"))
            .unwrap();
        f.write_all_at(&[0xA5; 300], SEGMENT - 100).unwrap();
        f.set_len(2 * SEGMENT + 7).unwrap();
        f.sync_all().unwrap();
    }
    sh(
        "touch",
        &[
            "-r",
            s(&src.join("multi-segment.bin")),
            s(&dest.join("multi-segment.bin")),
        ],
    )
    .ok();
    assert_diff_r_clean(&src, &dest);
    m.umount();

    // Remount with a read cache smaller than the big file: everything still reads back exact.
    let m = Mount::start(&v, &mp, &["--cache-size", "4MiB"]);
    assert_diff_r_clean(&src, &m.path("tree"));
    assert_same_stats(&src, &m.path("tree"), false);
    m.umount();

    let out = v.fresh_path("out");
    v.ok(&["get", "/tree", s(&out)]);
    assert_same_tree(&src, &out);
    v.ok(&["fsck"]);
}

/// Builds a tree with hard links (a group of three names, one of two, across directories) and symlinks
/// (relative, to a directory, absolute, dangling, long, a chain), with odd modes and old mtimes.
fn links_tree(root: &Path) {
    fs::create_dir_all(root.join("sub/deeper")).unwrap();
    random_file(&root.join("hard/a"), 200 * KIB + 3, 201);
    fs::hard_link(root.join("hard/a"), root.join("hard/b")).unwrap();
    fs::hard_link(root.join("hard/a"), root.join("sub/deeper/c")).unwrap();
    text_file(&root.join("pair/x.txt"), 5000, "pair");
    fs::hard_link(root.join("pair/x.txt"), root.join("pair/y.txt")).unwrap();
    random_file(&root.join("sub/plain.bin"), 70 * KIB, 202);
    fs::write(root.join("exec.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("exec.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(root.join("pair/x.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    symlink("hard/a", root.join("link-rel")).unwrap();
    symlink("sub", root.join("link-dir")).unwrap();
    symlink("/etc/hostname", root.join("link-abs")).unwrap();
    symlink("does/not/exist", root.join("link-dangling")).unwrap();
    symlink("link-rel", root.join("link-chain")).unwrap();
    symlink("../../hard/b", root.join("sub/deeper/up-link")).unwrap();
    let long: String = (0..60)
        .map(|i| format!("segment{i:02}/"))
        .collect::<String>()
        + "end";
    symlink(&long, root.join("link-long")).unwrap();
    fs::create_dir(root.join("empty-dir")).unwrap();
    // Old, distinct mtimes so a copy that does not keep them shows.
    let out = sh(
        "touch",
        &[
            "-h",
            "-d",
            "2001-02-03 04:05:06",
            s(&root.join("link-rel")),
            s(&root.join("hard/a")),
        ],
    );
    out.ok();
    sh(
        "touch",
        &["-d", "1999-12-31 23:59:59", s(&root.join("pair/x.txt"))],
    )
    .ok();
}

/// `tar x` of an archive holding symlinks and hard links into a mount: types, link targets, link counts, shared
/// inode numbers, modes, owners and mtimes as in the source, also after a remount; then unlinking one name of a
/// hard-link group lowers the others' link count and keeps their data.
#[test]
fn tar_x_with_symlinks_and_hard_links() {
    if !fuse_available("tar_x_with_symlinks_and_hard_links") {
        return;
    }
    let v = Vol::new();
    v.init_default(&["--segment-size", "64KiB"]);
    let src = v.scratch("src").join("links");
    links_tree(&src);
    let tarball = v.fresh_path("links.tar");
    sh_in(&src, "tar", &["-cf", s(&tarball), "."]).ok();
    let mp = v.scratch("mnt");

    let m = Mount::start(&v, &mp, &[]);
    let x = m.path("x");
    fs::create_dir(&x).unwrap();
    sh_in(&x, "tar", &["-xpf", s(&tarball)]).ok();
    assert_diff_r_clean(&src, &x);
    assert_same_stats(&src, &x, false);
    assert_eq!(fs::metadata(x.join("hard/b")).unwrap().nlink(), 3);
    assert_eq!(
        fs::read(x.join("link-chain")).unwrap(),
        fs::read(src.join("hard/a")).unwrap()
    );
    m.umount();

    let m = Mount::start(&v, &mp, &[]);
    let x = m.path("x");
    assert_diff_r_clean(&src, &x);
    assert_same_stats(&src, &x, false);
    fs::remove_file(x.join("hard/a")).unwrap();
    fs::remove_file(src.join("hard/a")).unwrap();
    for rel in ["hard/b", "sub/deeper/c"] {
        assert_eq!(
            fs::metadata(x.join(rel)).unwrap().nlink(),
            2,
            "{rel} after unlinking one of its three names"
        );
    }
    // link-rel now dangles in both trees; link-dangling always did.
    assert_diff_r_clean(&src, &x);
    m.umount();

    let m = Mount::start(&v, &mp, &[]);
    assert_same_stats(&src, &m.path("x"), false);
    m.umount();
    v.ok(&["fsck"]);
}

/// What `cp -a` and `tar x` do to every file: write it (here sealing dozens of full segments in the background),
/// set its times through the open handle at once, close. The times set must stick — also after a remount —
/// even while the background seals of the file's segments are still committing.
#[test]
fn times_set_right_after_writing_survive_background_seals() {
    if !fuse_available("times_set_right_after_writing_survive_background_seals") {
        return;
    }
    let v = Vol::new();
    v.init_default(&["--segment-size", "64KiB"]);
    let mp = v.scratch("mnt");
    let m = Mount::start(&v, &mp, &[]);
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 24)
        .map(|i: u32| (i % 251) as u8)
        .collect();
    let when =
        |i: u64| std::time::UNIX_EPOCH + std::time::Duration::new(1_600_000_000 + i, 123_456_789);
    let files = 12;
    for i in 0..files {
        let mut f = fs::File::create(m.path(&format!("f{i}"))).unwrap();
        std::io::Write::write_all(&mut f, &data).unwrap();
        f.set_modified(when(i)).unwrap();
    }
    let check = |root: &Path, round: &str| {
        for i in 0..files {
            let md = fs::metadata(root.join(format!("f{i}"))).unwrap();
            assert_eq!(md.len(), data.len() as u64, "{round}: f{i} size");
            assert_eq!(
                md.modified().unwrap(),
                when(i),
                "{round}: f{i} lost the mtime set on it"
            );
        }
    };
    check(&m.path(""), "mounted");
    m.umount();
    let m = Mount::start(&v, &mp, &[]);
    check(&m.path(""), "after a remount");
    m.umount();
}
