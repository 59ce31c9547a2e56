//! `fsops` on a real database: creates, renames and link counts, and what a failed transaction leaves.

use super::fsops::*;
use super::*;
use crate::meta::{MetaStore, ROOT_INO, ensure_root};

fn store() -> (tempfile::TempDir, MetaStore) {
    let dir = tempfile::tempdir().unwrap();
    let m = MetaStore::open(&dir.path().join("meta.db"), true).unwrap();
    m.write(|c| ensure_root(c, 0, 0)).unwrap();
    (dir, m)
}

fn node(kind: FileKind) -> NewInode {
    NewInode {
        kind,
        mode: 0o755,
        uid: 0,
        gid: 0,
        rdev: 0,
        target: None,
    }
}

fn nlink(m: &MetaStore, ino: u64) -> u32 {
    m.read(|c| get_inode(c, ino)).unwrap().unwrap().nlink
}

#[test]
fn a_failed_or_panicking_write_leaves_nothing_and_the_next_one_commits() {
    let (_d, m) = store();
    let err = m.write(|c| {
        create_node(c, ROOT_INO, b"gone", &node(FileKind::File))?;
        Err::<(), _>(QsfsError::Invalid("no".into()))
    });
    assert!(err.is_err());
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        m.write_fast(|c| -> Result<()> {
            create_node(c, ROOT_INO, b"gone too", &node(FileKind::File))?;
            panic!("in the middle of a transaction")
        })
    }));
    assert!(panicked.is_err());
    m.write(|c| create_node(c, ROOT_INO, b"kept", &node(FileKind::File)))
        .unwrap();
    let names: Vec<Vec<u8>> = m
        .read(|c| list_dir(c, ROOT_INO))
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec![b"kept".to_vec()]);
}

#[test]
fn create_returns_the_row_it_wrote() {
    let (_d, m) = store();
    let mut link = node(FileKind::Symlink);
    link.target = Some(b"../t".to_vec());
    for (name, new) in [
        (&b"d"[..], node(FileKind::Dir)),
        (b"f", node(FileKind::File)),
        (b"l", link),
    ] {
        let made = m.write(|c| create_node(c, ROOT_INO, name, &new)).unwrap();
        let stored = m.read(|c| get_inode(c, made.ino)).unwrap();
        assert_eq!(made.nlink, if new.kind == FileKind::Dir { 2 } else { 1 });
        assert_eq!(Some(made), stored);
    }
}

#[test]
fn rename_modes_and_link_counts() {
    let (_d, m) = store();
    let (a, b, f, g) = m
        .write(|c| {
            let a = create_node(c, ROOT_INO, b"a", &node(FileKind::Dir))?.ino;
            let b = create_node(c, ROOT_INO, b"b", &node(FileKind::Dir))?.ino;
            let f = create_node(c, a, b"f", &node(FileKind::File))?.ino;
            let g = create_node(c, b, b"g", &node(FileKind::File))?.ino;
            Ok((a, b, f, g))
        })
        .unwrap();
    assert_eq!(nlink(&m, ROOT_INO), 4);
    // NOREPLACE refuses an existing target; a plain rename replaces it and reports the victim.
    let no = RenameMode {
        no_replace: true,
        exchange: false,
    };
    let err = m.write(|c| rename(c, a, b"f", b, b"g", no)).unwrap_err();
    assert_eq!(err.errno(), nix::libc::EEXIST);
    let replaced = m
        .write(|c| rename(c, a, b"f", b, b"g", RenameMode::default()))
        .unwrap();
    assert_eq!(replaced, Some(Replaced { ino: g, nlink: 0 }));
    assert_eq!(m.read(|c| lookup(c, b, b"g")).unwrap(), Some(f));
    // EXCHANGE swaps a directory and a file across parents; `..` links follow the directory.
    let sub = m
        .write(|c| Ok(create_node(c, a, b"sub", &node(FileKind::Dir))?.ino))
        .unwrap();
    assert_eq!(nlink(&m, a), 3);
    let ex = RenameMode {
        no_replace: false,
        exchange: true,
    };
    m.write(|c| rename(c, a, b"sub", b, b"g", ex)).unwrap();
    assert_eq!(m.read(|c| lookup(c, b, b"g")).unwrap(), Some(sub));
    assert_eq!(m.read(|c| lookup(c, a, b"sub")).unwrap(), Some(f));
    assert_eq!((nlink(&m, a), nlink(&m, b)), (2, 3));
    // A directory cannot move under itself.
    let err = m
        .write(|c| rename(c, ROOT_INO, b"b", sub, b"x", RenameMode::default()))
        .unwrap_err();
    assert_eq!(err.errno(), nix::libc::EINVAL);
    // rmdir of a non-empty directory, unlink of a directory.
    let err = m
        .write(|c| remove_name(c, ROOT_INO, b"b", true))
        .unwrap_err();
    assert_eq!(err.errno(), nix::libc::ENOTEMPTY);
    let err = m.write(|c| remove_name(c, b, b"g", false)).unwrap_err();
    assert_eq!(err.errno(), nix::libc::EISDIR);
    let (_, left) = m.write(|c| remove_name(c, b, b"g", true)).unwrap();
    assert_eq!(left, 0);
    assert_eq!(nlink(&m, b), 2);
}

#[test]
fn hard_links_count_and_dirs_refuse() {
    let (_d, m) = store();
    let f = m
        .write(|c| Ok(create_node(c, ROOT_INO, b"f", &node(FileKind::File))?.ino))
        .unwrap();
    m.write(|c| add_link(c, f, ROOT_INO, b"g")).unwrap();
    assert_eq!(nlink(&m, f), 2);
    let (_, left) = m.write(|c| remove_name(c, ROOT_INO, b"f", false)).unwrap();
    assert_eq!(left, 1);
    let d = m
        .write(|c| Ok(create_node(c, ROOT_INO, b"d", &node(FileKind::Dir))?.ino))
        .unwrap();
    let err = m.write(|c| add_link(c, d, ROOT_INO, b"d2")).unwrap_err();
    assert_eq!(err.errno(), nix::libc::EPERM);
    let long = vec![b'x'; NAME_MAX + 1];
    let err = m.write(|c| add_link(c, f, ROOT_INO, &long)).unwrap_err();
    assert_eq!(err.errno(), nix::libc::ENAMETOOLONG);
}

#[test]
fn dir_pages_walk_every_entry_once_in_order() {
    let (_d, m) = store();
    m.write(|c| {
        for i in 0..1234 {
            create_node(
                c,
                ROOT_INO,
                format!("n{i:05}").as_bytes(),
                &node(FileKind::File),
            )?;
        }
        Ok(())
    })
    .unwrap();
    let mut seen = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = m
            .read(|c| dir_page(c, ROOT_INO, after.as_deref(), 100))
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|(e, _)| e.name.clone());
        seen.extend(page.into_iter().map(|(e, _)| e.name));
    }
    assert_eq!(seen.len(), 1234);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn xattrs_create_replace_remove() {
    let (_d, m) = store();
    let f = m
        .write(|c| Ok(create_node(c, ROOT_INO, b"f", &node(FileKind::File))?.ino))
        .unwrap();
    let err = m
        .write(|c| set_xattr(c, f, b"user.a", b"1", false, true))
        .unwrap_err();
    assert_eq!(err.errno(), nix::libc::ENODATA);
    m.write(|c| set_xattr(c, f, b"user.a", b"1", true, false))
        .unwrap();
    let err = m
        .write(|c| set_xattr(c, f, b"user.a", b"2", true, false))
        .unwrap_err();
    assert_eq!(err.errno(), nix::libc::EEXIST);
    m.write(|c| set_xattr(c, f, b"user.a", b"2", false, true))
        .unwrap();
    assert_eq!(
        m.read(|c| get_xattr(c, f, b"user.a")).unwrap(),
        Some(b"2".to_vec())
    );
    assert_eq!(
        m.read(|c| list_xattrs(c, f)).unwrap(),
        vec![b"user.a".to_vec()]
    );
    m.write(|c| remove_xattr(c, f, b"user.a")).unwrap();
    assert_eq!(m.read(|c| get_xattr(c, f, b"user.a")).unwrap(), None);
}
