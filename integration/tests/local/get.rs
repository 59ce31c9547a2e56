//! `qsfs get` never writes through a symlink it did not create.

use std::fs;
use std::os::unix::fs::symlink;

use crate::helpers::{Vol, s};

/// A symlink planted at the temporary name the old `get` used (`.NAME.qsfs-partial`) must not be written
/// through: the victim keeps its bytes and its mode, and the file arrives under its own name.
#[test]
fn get_does_not_write_through_a_planted_temp_symlink() {
    let v = Vol::new();
    v.init_default(&[]);
    let src = v.scratch("src").join("t.txt");
    fs::write(&src, b"volume bytes\n").unwrap();
    v.ok(&["put", s(&src), "/t.txt"]);

    let victim = v.scratch("victim").join("victim");
    fs::write(&victim, b"precious\n").unwrap();
    fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let dl = v.scratch("dl");
    symlink(&victim, dl.join(".x.qsfs-partial")).unwrap();

    v.ok(&["get", "/t.txt", s(&dl.join("x"))]);
    assert_eq!(
        fs::read(&victim).unwrap(),
        b"precious\n",
        "victim overwritten"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&victim).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "victim chmodded");
    assert_eq!(fs::read(dl.join("x")).unwrap(), b"volume bytes\n");
    // No temporary file is left behind next to the result (the planted link stays, untouched).
    let left: Vec<String> = fs::read_dir(&dl)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".qsfs-partial") && n != ".x.qsfs-partial")
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

/// A directory get refuses to descend into a symlinked directory planted inside the tree it writes, so nothing
/// lands outside the destination.
#[test]
fn directory_get_does_not_follow_a_planted_directory_symlink() {
    let v = Vol::new();
    v.init_default(&[]);
    let tree = v.scratch("src").join("tree");
    fs::create_dir_all(tree.join("sub")).unwrap();
    fs::write(tree.join("sub/f.txt"), b"inner\n").unwrap();
    v.ok(&["put", s(&tree), "/tree"]);

    let elsewhere = v.scratch("elsewhere");
    let dl = v.scratch("dl");
    fs::create_dir(dl.join("tree")).unwrap();
    symlink(&elsewhere, dl.join("tree/sub")).unwrap();

    let err = v.run(&["get", "/tree", s(&dl)]).failed();
    assert!(err.contains("symlink"), "{err}");
    assert!(
        fs::read_dir(&elsewhere).unwrap().next().is_none(),
        "get wrote through the symlinked directory into {}",
        elsewhere.display()
    );
}

/// A symlink at a file's destination name is replaced by the file, not followed.
#[test]
fn get_replaces_a_symlink_at_the_destination_name() {
    let v = Vol::new();
    v.init_default(&[]);
    let tree = v.scratch("src").join("tree");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("f.txt"), b"from the volume\n").unwrap();
    v.ok(&["put", s(&tree), "/tree"]);

    let victim = v.scratch("victim").join("victim");
    fs::write(&victim, b"precious\n").unwrap();
    let dl = v.scratch("dl");
    fs::create_dir(dl.join("tree")).unwrap();
    symlink(&victim, dl.join("tree/f.txt")).unwrap();

    v.ok(&["get", "/tree", s(&dl)]);
    assert_eq!(fs::read(&victim).unwrap(), b"precious\n");
    let md = fs::symlink_metadata(dl.join("tree/f.txt")).unwrap();
    assert!(md.is_file(), "the symlink was not replaced by the file");
    assert_eq!(
        fs::read(dl.join("tree/f.txt")).unwrap(),
        b"from the volume\n"
    );
}
