//! The whole promise through a mount: a tree copied with `cp -a`, a SQLite database and an fsync'd append log are
//! written; the mount is killed with `kill -9`, the volume directory deleted (the machine is gone) and two of the
//! six stores' disks fail; `qsfs restore` from one store's URI and the key brings back every acknowledged byte and
//! every file's metadata (mode, times, link counts, xattrs), fsck is clean, and the volume mounts and takes writes.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{back_up_key, init_on_outside_dir_stores, lose_machine, restore, take_away};
use crate::fuse::mount::Mount;
use crate::fuse::writer::{OnError, Writer, assert_acks};
use crate::fuse::{fuse_available, sh};
use crate::helpers::tree::{assert_same_tree, standard_tree};
use crate::helpers::{Vol, s};

/// What a restore must bring back of each entry under a directory: type and mode, owner, size, mtime, link count,
/// symlink target and xattrs.
fn metadata_of(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
        let target = if m.file_type().is_symlink() {
            fs::read_link(&p).unwrap().display().to_string()
        } else {
            String::new()
        };
        let xattrs = if m.file_type().is_symlink() {
            String::new()
        } else {
            sh(
                "python3",
                &["-c", "import os,sys; p=sys.argv[1]; print(sorted((n, os.getxattr(p, n)) for n in os.listxattr(p)))", s(&p)],
            )
            .ok()
        };
        out.insert(
            p.strip_prefix(root).unwrap().to_path_buf(),
            format!(
                "mode={:o} uid={} gid={} size={} mtime={}.{} nlink={} target={target} xattrs={}",
                m.mode(),
                m.uid(),
                m.gid(),
                if m.is_dir() { 0 } else { m.size() },
                m.mtime(),
                m.mtime_nsec(),
                m.nlink(),
                xattrs.trim()
            ),
        );
        if m.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}

#[test]
fn machine_loss_restore_from_one_store_brings_back_every_acknowledged_byte() {
    if !fuse_available("machine_loss_restore_from_one_store_brings_back_every_acknowledged_byte") {
        return;
    }
    let v = Vol::new();
    let stores = init_on_outside_dir_stores(&v);
    let key = back_up_key(&v);
    let mp = v.scratch("mnt");
    let src = v.scratch("src").join("tree");
    standard_tree(&src, 64 * 1024, 1, 501);

    let m = Mount::start(&v, &mp, &[]);
    sh("cp", &["-a", s(&src), s(&m.path("tree"))]).ok();
    let f = m.path("tree/small.txt");
    let f = if f.exists() { f } else { m.path("tree") };
    sh(
        "python3",
        &[
            "-c",
            "import os,sys; os.setxattr(sys.argv[1], 'user.origin', b'restore-test')",
            s(&f),
        ],
    )
    .ok();
    fs::hard_link(
        m.path("tree/nested/a/sibling.bin"),
        m.path("tree/hard-link"),
    )
    .unwrap();
    std::os::unix::fs::symlink("nested/a/sibling.bin", m.path("tree/sym-link")).unwrap();
    sh("chmod", &["0640", s(&m.path("tree/nested/a/sibling.bin"))]).ok();
    sh(
        "touch",
        &["-d", "2001-02-03 04:05:06.789", s(&m.path("tree/nested"))],
    )
    .ok();
    let db = m.path("app.db");
    sh(
        "sqlite3",
        &[
            "-batch",
            "-bail",
            s(&db),
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); \
          WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000) \
          INSERT INTO t SELECT x, hex(randomblob(20)) FROM c;",
        ],
    )
    .ok();
    let log_dir = m.path("log");
    let w = Writer::spawn(&log_dir, "append", 7, OnError::Stop);
    let deadline = Instant::now() + Duration::from_secs(120);
    while w.acks() < 30 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = w.stop(Duration::from_secs(60));
    assert!(
        log.acks.len() >= 30,
        "only {} records acknowledged",
        log.acks.len()
    );
    // close is local-first: acknowledged on the stores is what fsync returned for (the append log's records; the
    // writer's small files and the copied tree were only closed). `sync FILE...` fsyncs each file.
    sh(
        "sh",
        &[
            "-c",
            "find \"$1\" \"$2\" -type f -exec sync {} +",
            "sh",
            s(&m.path("tree")),
            s(&log_dir),
        ],
    )
    .ok();
    // Namespace changes (chmod, link, touch) are durable at the next fsync: fsync the mount's root directory.
    sh(
        "python3",
        &[
            "-c",
            "import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd)",
            s(&mp),
        ],
    )
    .ok();
    let before = metadata_of(&m.path("tree"));
    let rows = sh(
        "sqlite3",
        &["-batch", s(&db), "SELECT count(*), sum(length(v)) FROM t;"],
    )
    .ok();
    let _stale = m.kill9();
    lose_machine(&v);
    take_away(&stores, 1);
    take_away(&stores, 4);

    let out = restore(
        &v,
        &format!("dir:{}", stores.join("2").display()),
        &key,
        &[],
    )
    .ok();
    assert_eq!(
        out.lines().filter(|l| l.contains("down:")).count(),
        2,
        "{out}"
    );
    assert!(v.ok(&["fsck"]).contains("clean"));

    let m = Mount::start(&v, &mp, &[]);
    assert_same_tree(&src, &strip_extras(&v, &m.path("tree")));
    assert_eq!(
        metadata_of(&m.path("tree")),
        before,
        "metadata after restore"
    );
    assert_eq!(
        sh(
            "sqlite3",
            &["-batch", s(&db), "SELECT count(*), sum(length(v)) FROM t;"]
        )
        .ok(),
        rows
    );
    assert_eq!(
        sh("sqlite3", &["-batch", s(&db), "PRAGMA integrity_check;"])
            .ok()
            .trim(),
        "ok"
    );
    assert_acks(&log_dir, &log.acks, "after restore");
    // One failed disk is replaced (its old contents back): the restored volume takes new writes with one store
    // still gone, and fsync succeeds.
    m.umount();
    fs::rename(stores.join("away-1"), stores.join("1")).unwrap();
    let m = Mount::start(&v, &mp, &[]);
    {
        use std::io::Write;
        let mut f = fs::File::create(m.path("after-restore")).unwrap();
        f.write_all(b"new data").unwrap();
        f.sync_all().expect("fsync with one store down");
    }
    m.umount();
    let got = v.fresh_path("got");
    v.ok(&["get", "/after-restore", s(&got)]);
    assert_eq!(fs::read(&got).unwrap(), b"new data");
}

/// The tree with the entries this test added after `cp -a` removed, in a copy, so it compares with the source.
fn strip_extras(v: &Vol, tree: &Path) -> PathBuf {
    let copy = v.fresh_path("tree-copy");
    sh("cp", &["-a", s(tree), s(&copy)]).ok();
    for extra in ["hard-link", "sym-link"] {
        fs::remove_file(copy.join(extra)).unwrap();
    }
    copy
}
