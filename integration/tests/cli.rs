//! End-to-end tests of the `qsfs` command line: the real binary (`target/debug/qsfs`, or `$QSFS_BIN`) against
//! embedded dir stores, real `redis-server` processes and the 0-db protocol test server.
//!
//! Build the binary first (`cargo build -p qsfs`); `bash integration/run-tests.sh` does everything.

mod audit;
mod fuse;
mod gc;
mod helpers;
mod hostile;
mod local;
mod loss;
mod restore;
mod s3;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use helpers::status::Status;
use helpers::stores::{all_files, files_containing, flip_bytes, shard_files};
use helpers::tree::{
    MIB, TreeInfo, assert_no_wrong_files, assert_same_file, assert_same_tree, random_file,
    standard_tree, text_file,
};
use helpers::{Redis, Vol, run_qsfs, s, strs};
use qsfs_backends::testing::{NamespaceOptions, ZdbServerConfig, ZdbServerMode, ZdbTestServer};

const KIB: u64 = 1024;

/// Sorted directory listing of a local directory, like `qsfs ls` prints it.
fn local_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn canonical(p: &Path) -> String {
    fs::canonicalize(p).unwrap().to_str().unwrap().to_string()
}

/// Asserts the counters of `after` grew over `before` by exactly what `info` holds.
fn assert_counts_grew(before: &Status, after: &Status, info: TreeInfo) {
    assert_eq!(
        after.files - before.files,
        info.files,
        "status files after the put: {after:#?}"
    );
    assert_eq!(
        after.directories - before.directories,
        info.directories,
        "status directories after the put: {after:#?}"
    );
    assert_eq!(
        after.logical_bytes - before.logical_bytes,
        info.bytes,
        "status logical_bytes after the put: {after:#?}"
    );
}

/// `cp -r SRC DEST` with the system `cp`, to build expected trees.
fn cp_r(src: &Path, dest: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-r")
        .arg(src)
        .arg(dest)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "cp -r {} {} failed",
        src.display(),
        dest.display()
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Default (embedded dir) stores
// ---------------------------------------------------------------------------------------------------------------

/// The main round trip on a default volume: init, put a tree with a 100 MiB random file, ls, status, get, rm.
#[test]
fn dir_stores_put_get_ls_rm_status_round_trip() {
    let v = Vol::new();
    v.init_default(&[]);

    let st0 = v.status();
    assert_eq!(
        (st0.data_shards, st0.parity_shards),
        (4, 2),
        "default shards: {st0:#?}"
    );
    assert_eq!(st0.segment_size, 4 * MIB, "default segment size: {st0:#?}");
    assert_eq!(st0.volume, canonical(&v.path), "status volume: {st0:#?}");
    assert_eq!(st0.stores.len(), 6, "default stores: {st0:#?}");
    for (i, st) in st0.stores.iter().enumerate() {
        assert_eq!(
            st.uri,
            format!("dir:{}", canonical(&v.store_dir(i))),
            "default store {i}: {st0:#?}"
        );
        assert!(st.reachable, "default store {i} unreachable: {st0:#?}");
        assert!(
            st.free_bytes.is_some(),
            "a dir store knows its free bytes: {st0:#?}"
        );
        assert_eq!(st.shards, 0);
    }
    assert_eq!(st0.segments.total, 0);
    assert_eq!(st0.files, 0);
    assert!(v.ls("/").is_empty(), "a new volume is empty");
    assert!(
        v.ok(&["ls"]).is_empty(),
        "`ls` without a path lists the root"
    );

    let src = v.scratch("src").join("tree");
    let info = standard_tree(&src, 4 * MIB, 100, 1);
    v.ok(&["put", s(&src), "/data"]);

    assert_eq!(v.ls("/"), vec!["data"]);
    assert_eq!(v.ls("/data"), local_names(&src), "ls /data");
    assert_eq!(
        v.ls("/data/nested/a"),
        local_names(&src.join("nested/a")),
        "ls /data/nested/a"
    );
    assert_eq!(v.ls("/data/empty-top-dir"), Vec::<String>::new());

    // ls -l: one line per entry, same order, ending with the name, files showing their size.
    let long = v.ok(&["ls", "-l", "/data"]);
    let names = local_names(&src);
    let lines: Vec<&str> = long.lines().collect();
    assert_eq!(lines.len(), names.len(), "ls -l /data:\n{long}");
    for (line, name) in lines.iter().zip(&names) {
        assert!(
            line.ends_with(name.as_str()),
            "ls -l line {line:?} should end with {name:?}"
        );
        let p = src.join(name);
        if p.is_file() {
            let size = fs::metadata(&p).unwrap().len().to_string();
            assert!(
                line[..line.len() - name.len()]
                    .split_whitespace()
                    .any(|w| w == size),
                "ls -l line {line:?} should show the size {size}"
            );
        }
    }

    let st1 = v.status();
    assert_counts_grew(&st0, &st1, info);
    let min_segments = 100 * MIB / (4 * MIB);
    assert!(
        st1.segments.total >= min_segments,
        "at least {min_segments} segments for 100 MiB: {st1:#?}"
    );
    assert_eq!(
        st1.segments.healthy, st1.segments.total,
        "all segments healthy: {st1:#?}"
    );
    for (i, st) in st1.stores.iter().enumerate() {
        let on_disk = shard_files(&v.store_dir(i)).len() as u64;
        assert_eq!(
            st.shards, on_disk,
            "store {i}: status shards vs shard files on disk: {st1:#?}"
        );
        assert!(st.bytes > 0);
    }

    let out = v.fresh_path("out");
    v.ok(&["get", "/data", s(&out)]);
    assert_same_tree(&src, &out);

    // rm: a directory needs -r; files go one by one; -r removes the tree.
    let line = v.run(&["rm", "/data"]).failed();
    assert!(
        line.contains("data"),
        "rm of a directory without -r should name it: {line}"
    );
    assert_eq!(v.ls("/"), vec!["data"], "a refused rm removes nothing");
    v.ok(&["rm", "/data/one-byte"]);
    assert!(!v.ls("/data").contains(&"one-byte".to_string()));
    v.ok(&["rm", "-r", "/data"]);
    assert!(v.ls("/").is_empty(), "rm -r /data leaves an empty root");
    let st2 = v.status();
    assert_eq!(
        (st2.files, st2.directories, st2.logical_bytes),
        (st0.files, st0.directories, st0.logical_bytes)
    );
    let line = v.run(&["get", "/data", s(&v.fresh_path("out2"))]).failed();
    assert!(
        line.contains("data"),
        "get of a removed path should name it: {line}"
    );
}

/// put and get follow `cp -r`: a missing DEST becomes the copy, an existing directory receives SRC by name.
#[test]
fn put_and_get_follow_cp_r_rules() {
    let v = Vol::new();
    v.init_default(&["--segment-size", "512KiB"]);
    assert_eq!(v.status().segment_size, 512 * KIB);

    let src = v.scratch("src");
    let tree = src.join("tree");
    standard_tree(&tree, 512 * KIB, 0, 2);
    let f1 = src.join("f1.bin");
    random_file(&f1, 1000, 20);
    let f2 = src.join("f2.txt");
    text_file(&f2, 5000, "f2");

    v.ok(&["put", s(&tree), "/t"]); // missing DEST: /t is the copy of tree
    assert_eq!(v.ls("/t"), local_names(&tree));
    v.ok(&["put", s(&f1), s(&f2), "/t"]); // several SRCs into an existing directory
    v.ok(&["put", s(&tree), "/t"]); // existing directory DEST: /t/tree
    v.ok(&["put", s(&f1), "/single.bin"]); // a single file to a new name
    let mut want_root = vec!["single.bin".to_string(), "t".to_string()];
    want_root.sort();
    assert_eq!(v.ls("/"), want_root);

    let expected = v.scratch("expected").join("t");
    cp_r(&tree, &expected);
    cp_r(&f1, &expected);
    cp_r(&f2, &expected);
    cp_r(&tree, &expected);
    assert_eq!(v.ls("/t"), local_names(&expected));

    let out = v.scratch("out");
    let x = out.join("x.bin");
    v.ok(&["get", "/single.bin", s(&x)]); // missing DEST: a file of that name
    assert_same_file(&f1, &x);
    v.ok(&["get", "/single.bin", s(&out)]); // existing directory: out/single.bin
    assert_same_file(&f1, &out.join("single.bin"));
    v.ok(&["get", "/t/tree", s(&out)]); // a directory into an existing directory
    assert_same_tree(&tree, &out.join("tree"));
    let out2 = v.fresh_path("out2");
    v.ok(&["get", "/t", s(&out2)]); // a directory to a missing DEST
    assert_same_tree(&expected, &out2);
}

/// Flipped bytes in DirStore shard files are caught and the data rebuilt from the others; beyond M corrupted
/// shards per segment, get fails instead of returning wrong bytes.
#[test]
fn corrupted_dir_store_shards_never_become_wrong_bytes() {
    let v = Vol::new();
    v.init_default(&["--segment-size", "512KiB"]);
    let src = v.scratch("src").join("file.bin");
    random_file(&src, 3 * 512 * KIB + 999, 30);
    v.ok(&["put", s(&src), "/file.bin"]);

    let corrupt_store = |i: usize| {
        let files = shard_files(&v.store_dir(i));
        assert!(
            !files.is_empty(),
            "store {i} holds no shard files after a put"
        );
        for f in files {
            flip_bytes(&f, 16);
        }
    };

    corrupt_store(0);
    let out1 = v.fresh_path("out1.bin");
    v.ok(&["get", "/file.bin", s(&out1)]);
    assert_same_file(&src, &out1);

    corrupt_store(3); // now M = 2 shards of every segment are corrupt
    let out2 = v.fresh_path("out2.bin");
    v.ok(&["get", "/file.bin", s(&out2)]);
    assert_same_file(&src, &out2);

    corrupt_store(5); // M + 1: undecodable
    let out3 = v.fresh_path("out3.bin");
    let line = v.run(&["get", "/file.bin", s(&out3)]).failed();
    assert!(
        line.contains("file.bin"),
        "the error should name the unreadable file: {line}"
    );
    assert_no_wrong_files(&src, &out3);
}

/// A distinctive plaintext marker (and the file name, and the key) never appears in any dir store's bytes.
#[test]
fn plaintext_never_reaches_dir_stores() {
    let v = Vol::new();
    v.init_default(&[]);
    let (marker, name) = plaintext_fixture(&v);
    let stores = v.path.join("stores");
    assert!(!all_files(&stores).is_empty());
    assert_eq!(
        files_containing(&stores, marker.as_bytes()),
        Vec::<std::path::PathBuf>::new(),
        "plaintext in stores"
    );
    assert_eq!(
        files_containing(&stores, name.as_bytes()),
        Vec::<std::path::PathBuf>::new(),
        "file name in stores"
    );
    let key = fs::read(v.path.join("key")).unwrap();
    assert_eq!(
        files_containing(&stores, &key),
        Vec::<std::path::PathBuf>::new(),
        "key bytes in stores"
    );
}

const MARKER: &str = "QSFS-PLAINTEXT-MARKER-3b9f0c2e71d4a8";
const SECRET_NAME: &str = "secret-name-QSFS-7c41e9.txt";

/// Puts a compressible file full of [`MARKER`] named [`SECRET_NAME`]; returns (marker, name).
fn plaintext_fixture(v: &Vol) -> (&'static str, &'static str) {
    let f = v.scratch("src").join(SECRET_NAME);
    text_file(&f, 2 * MIB, MARKER);
    v.ok(&["put", s(&f), &format!("/private/{SECRET_NAME}")]);
    assert_eq!(v.ls("/private"), vec![SECRET_NAME]);
    (MARKER, SECRET_NAME)
}

// ---------------------------------------------------------------------------------------------------------------
// Keys and config
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn wrong_key_is_refused_before_anything_is_touched() {
    let a = Vol::new();
    a.init_default(&[]);
    let f = a.scratch("src").join("f.bin");
    random_file(&f, 100_000, 40);
    a.ok(&["put", s(&f), "/f.bin"]);
    let b = Vol::new();
    b.init_default(&[]);

    let before: Vec<_> = (0..6).map(|i| shard_files(&a.store_dir(i))).collect();
    fs::copy(b.path.join("key"), a.path.join("key")).unwrap();
    fs::set_permissions(a.path.join("key"), fs::Permissions::from_mode(0o600)).unwrap();

    let out = a.fresh_path("out.bin");
    for args in [
        vec!["ls", "/"],
        vec!["status", "--json"],
        vec!["get", "/f.bin", s(&out)],
        vec!["put", s(&f), "/g.bin"],
        vec!["rm", "/f.bin"],
    ] {
        let line = a.run(&args).failed();
        assert!(
            line.contains("key does not match this volume"),
            "`{}` with a wrong key: {line}",
            args.join(" ")
        );
    }
    assert!(
        !out.exists(),
        "a get with the wrong key must not create its output"
    );
    let after: Vec<_> = (0..6).map(|i| shard_files(&a.store_dir(i))).collect();
    assert_eq!(before, after, "a wrong key must not touch the stores");
}

#[test]
fn init_refuses_an_existing_volume() {
    let v = Vol::new();
    v.init_default(&[]);
    let key = fs::read(v.path.join("key")).unwrap();
    let toml = fs::read(v.path.join("qsfs.toml")).unwrap();
    v.run(&["init"]).failed();
    v.run(&["init", "--data-shards", "2", "--parity-shards", "1"])
        .failed();
    assert_eq!(
        fs::read(v.path.join("key")).unwrap(),
        key,
        "a refused init must not replace the key"
    );
    assert_eq!(
        fs::read(v.path.join("qsfs.toml")).unwrap(),
        toml,
        "a refused init must not rewrite qsfs.toml"
    );
    v.status();
}

#[test]
fn key_readable_by_group_or_other_is_refused() {
    let v = Vol::new();
    v.init_default(&[]);
    let key = v.path.join("key");
    for mode in [0o644, 0o640, 0o604] {
        fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
        let line = v.run(&["ls", "/"]).failed();
        assert!(
            line.contains("key"),
            "a key with mode {mode:o} should be refused with a message about the key: {line}"
        );
    }
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    v.ls("/");
}

#[test]
fn broken_config_is_reported_with_file_and_key() {
    let v = Vol::new();
    v.init_default(&[]);
    let path = v.path.join("qsfs.toml");
    let orig = fs::read_to_string(&path).unwrap();

    fs::write(&path, format!("bogus_setting = 1\n{orig}")).unwrap();
    let line = v.run(&["ls", "/"]).failed();
    assert!(
        line.contains("qsfs.toml") && line.contains("bogus_setting"),
        "unknown key: {line}"
    );

    let idx = orig
        .lines()
        .position(|l| l.trim_start().starts_with("segment_size"))
        .unwrap_or_else(|| panic!("qsfs.toml has no segment_size line:\n{orig}"));
    let bad: Vec<String> = orig
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == idx {
                "segment_size = \"12 parsecs\"".to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    fs::write(&path, bad.join("\n") + "\n").unwrap();
    let line = v.run(&["ls", "/"]).failed();
    assert!(
        line.contains("qsfs.toml") && line.contains("segment_size"),
        "bad size: {line}"
    );

    fs::write(&path, &orig).unwrap();
    v.ls("/");
}

/// Non-default shards, segment size, explicit `dir:` stores and write quorum show up in status and work.
#[test]
fn explicit_dir_stores_and_options() {
    let v = Vol::new();
    let base = v.scratch("elsewhere");
    let uris: Vec<String> = (0..5)
        .map(|i| format!("dir:{}", s(&base.join(format!("s{i}")))))
        .collect();
    let mut args = vec![
        "--data-shards",
        "3",
        "--parity-shards",
        "2",
        "--segment-size",
        "64KiB",
        "--write-quorum",
        "4",
    ];
    for u in &uris {
        args.extend(["--store", u.as_str()]);
    }
    v.init(&args);
    let st = v.status();
    assert_eq!(
        (
            st.data_shards,
            st.parity_shards,
            st.segment_size,
            st.write_quorum
        ),
        (3, 2, 64 * KIB, 4),
        "{st:#?}"
    );
    let got: Vec<&str> = st.stores.iter().map(|x| x.uri.as_str()).collect();
    assert_eq!(got, strs(&uris), "store URIs in status");

    let src = v.scratch("src").join("tree");
    let info = standard_tree(&src, 64 * KIB, 0, 5);
    v.ok(&["put", s(&src), "/x"]);
    let st2 = v.status();
    assert_counts_grew(&st, &st2, info);
    assert_eq!(st2.segments.healthy, st2.segments.total);
    for i in 0..5 {
        let n = shard_files(&base.join(format!("s{i}"))).len() as u64;
        assert_eq!(n, st2.stores[i].shards, "store {i} shard files: {st2:#?}");
    }
    let out = v.fresh_path("out");
    v.ok(&["get", "/x", s(&out)]);
    assert_same_tree(&src, &out);
}

#[test]
fn qsfs_volume_env_selects_the_volume() {
    let v = Vol::new();
    run_qsfs(&["init"], &[("QSFS_VOLUME", s(&v.path))]).ok();
    assert!(
        v.path.join("qsfs.toml").is_file(),
        "init with QSFS_VOLUME should create the volume there"
    );
    let out = run_qsfs(&["status", "--json"], &[("QSFS_VOLUME", s(&v.path))]).ok();
    assert_eq!(Status::parse(&out).volume, canonical(&v.path));
}

#[test]
fn passphrase_volume_round_trip_and_wrong_passphrase() {
    let mut v = Vol::new();
    v.envs.push((
        "QSFS_TEST_PASS".into(),
        "correct horse battery staple".into(),
    ));
    v.init_default(&["--passphrase-env", "QSFS_TEST_PASS"]);
    let f = v.scratch("src").join("f.bin");
    random_file(&f, 300_000, 50);
    v.ok(&["put", s(&f), "/f.bin"]);
    let out = v.fresh_path("out.bin");
    v.ok(&["get", "/f.bin", s(&out)]);
    assert_same_file(&f, &out);
    v.envs[0].1 = "wrong horse".into();
    let line = v.run(&["ls", "/"]).failed();
    assert!(
        line.contains("key does not match this volume"),
        "wrong passphrase: {line}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Exit codes
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn usage_errors_exit_2() {
    let v = Vol::new();
    for args in [
        vec!["frobnicate"],
        vec!["--volume", s(&v.path), "frobnicate"],
        vec!["--volume", s(&v.path), "put"],
        vec!["--volume", s(&v.path), "get", "/only-one-arg"],
        vec!["--volume", s(&v.path), "init", "--data-shards", "many"],
        vec!["--volume", s(&v.path), "ls", "--no-such-flag"],
        vec![],
    ] {
        let r = run_qsfs(&args, &[]);
        let d = r.describe();
        let stderr = r.code(2);
        assert!(
            !stderr.trim().is_empty(),
            "a usage error should explain itself on stderr:\n{d}"
        );
    }
    assert!(!v.path.exists(), "usage errors must not create a volume");
    run_qsfs(&["--help"], &[]).ok();
    run_qsfs(&["status", "--help"], &[]).ok();
}

#[test]
fn operation_errors_exit_1_with_one_line() {
    let v = Vol::new();
    let line = v.run(&["ls", "/"]).failed();
    assert!(
        line.contains(s(&v.path)) || line.contains("vol"),
        "no volume: the error should name it: {line}"
    );
    v.init_default(&[]);
    let out = v.fresh_path("out");
    let line = v.run(&["get", "/missing-file", s(&out)]).failed();
    assert!(line.contains("missing-file"), "{line}");
    assert!(!out.exists());
    let line = v.run(&["ls", "/missing-dir"]).failed();
    assert!(line.contains("missing-dir"), "{line}");
    let line = v.run(&["rm", "/missing-file"]).failed();
    assert!(line.contains("missing-file"), "{line}");
    let local = v.fresh_path("no-such-local-file");
    let line = v.run(&["put", s(&local), "/x"]).failed();
    assert!(line.contains("no-such-local-file"), "{line}");
    assert!(v.ls("/").is_empty());
    // Each cause once: an error that already shows its OS cause is not followed by that cause again.
    let under_a_file = v.fresh_path("plain-file");
    std::fs::write(&under_a_file, b"x").unwrap();
    let line = run_qsfs(&["--volume", s(&under_a_file.join("v")), "init"], &[]).failed();
    assert_eq!(line.matches("os error 20").count(), 1, "{line}");
}

// ---------------------------------------------------------------------------------------------------------------
// Redis stores (real redis-server processes)
// ---------------------------------------------------------------------------------------------------------------

/// Six redis-servers: round trip; SIGKILL one, then two (= M): status reports them and get is still exact; a
/// third: get fails naming the file and leaves no wrong bytes.
#[test]
fn redis_stores_survive_m_failures_and_fail_cleanly_beyond() {
    let mut r = Redis::start(6);
    let v = Vol::new();
    let stores = r.store_args(0);
    let mut args = vec!["--segment-size", "512KiB"];
    args.extend(strs(&stores));
    v.init(&args);

    let st0 = v.status();
    let src = v.scratch("src").join("tree");
    let info = standard_tree(&src, 512 * KIB, 0, 60);
    v.ok(&["put", s(&src), "/data"]);
    let out = v.fresh_path("out0");
    v.ok(&["get", "/data", s(&out)]);
    assert_same_tree(&src, &out);

    let st = v.status();
    assert_counts_grew(&st0, &st, info);
    for (i, x) in st.stores.iter().enumerate() {
        assert_eq!(x.uri, r.servers[i].uri(), "store {i} URI: {st:#?}");
        assert!(x.reachable);
    }
    let total = st.segments.total;
    assert!(total >= 6, "several segments expected: {st:#?}");
    assert_eq!(st.segments.healthy, total);

    r.kill(1);
    let st = v.status();
    assert_eq!(st.unreachable(), vec![1], "{st:#?}");
    assert!(
        st.stores[1].error.as_deref().is_some_and(|e| !e.is_empty()),
        "{st:#?}"
    );
    assert_eq!(
        (
            st.segments.total,
            st.segments.healthy,
            st.segments.degraded,
            st.segments.unreadable
        ),
        (total, 0, total, 0)
    );
    let out = v.fresh_path("out1");
    v.ok(&["get", "/data", s(&out)]);
    assert_same_tree(&src, &out);

    r.kill(4); // M = 2 stores down
    let st = v.status();
    assert_eq!(st.unreachable(), vec![1, 4], "{st:#?}");
    assert_eq!(
        (
            st.segments.healthy,
            st.segments.degraded,
            st.segments.unreadable
        ),
        (0, total, 0),
        "{st:#?}"
    );
    let out = v.fresh_path("out2");
    v.ok(&["get", "/data", s(&out)]);
    assert_same_tree(&src, &out);

    r.kill(2); // M + 1: nothing with data is decodable
    let st = v.status();
    assert_eq!(st.unreachable(), vec![1, 2, 4], "{st:#?}");
    assert_eq!(
        (
            st.segments.healthy,
            st.segments.degraded,
            st.segments.unreadable
        ),
        (0, 0, total),
        "{st:#?}"
    );
    let out = v.fresh_path("out3.bin");
    let line = v.run(&["get", "/data/multi-segment.bin", s(&out)]).failed();
    assert!(
        line.contains("multi-segment.bin"),
        "the error should name the unreadable file: {line}"
    );
    assert_no_wrong_files(&src.join("multi-segment.bin"), &out);
    let out = v.fresh_path("out4");
    v.run(&["get", "/data", s(&out)]).failed();
    assert_no_wrong_files(&src, &out);
}

/// Asserts a failed put left the volume as `before`: same root listing, same counters, no new segments.
#[track_caller]
fn assert_nothing_committed(v: &Vol, before: &Status, root: &[&str]) {
    let ls = v.ls("/");
    let st = v.status();
    let r = v.run(&["ls", "-l", "/data"]);
    let tree = format!("{}{}", r.stdout, r.stderr);
    assert!(
        ls == root
            && (
                st.files,
                st.directories,
                st.logical_bytes,
                st.segments.total
            ) == (
                before.files,
                before.directories,
                before.logical_bytes,
                before.segments.total
            ),
        "a failed put must commit nothing: ls / = {ls:?} (want {root:?}); files/dirs/bytes/segments = {:?}, \
         before {:?}; ls -l /data:\n{tree}",
        (
            st.files,
            st.directories,
            st.logical_bytes,
            st.segments.total
        ),
        (
            before.files,
            before.directories,
            before.logical_bytes,
            before.segments.total
        ),
    );
}

/// Below the write quorum a put fails and commits nothing; at the quorum it succeeds, degraded.
#[test]
fn redis_put_below_write_quorum_commits_nothing() {
    let mut r = Redis::start(6);
    let strict = Vol::new();
    let s0 = r.store_args(0);
    let mut args = vec!["--segment-size", "256KiB", "--write-quorum", "6"];
    args.extend(strs(&s0));
    strict.init(&args);
    let lax = Vol::new();
    let s1 = r.store_args(1);
    let mut args = vec!["--segment-size", "256KiB", "--write-quorum", "5"];
    args.extend(strs(&s1));
    lax.init(&args);
    let strict0 = strict.status();
    assert_eq!(strict0.write_quorum, 6);
    assert_eq!(lax.status().write_quorum, 5);

    let src = strict.scratch("src").join("tree");
    standard_tree(&src, 256 * KIB, 0, 70);

    r.kill(0); // 5 reachable: enough for the lax volume only
    lax.ok(&["put", s(&src), "/data"]);
    let lax1 = lax.status();
    assert_eq!(lax1.unreachable(), vec![0], "{lax1:#?}");
    assert!(lax1.segments.total > 0);
    assert_eq!(
        (lax1.segments.healthy, lax1.segments.degraded),
        (0, lax1.segments.total),
        "{lax1:#?}"
    );
    let out = lax.fresh_path("out");
    lax.ok(&["get", "/data", s(&out)]);
    assert_same_tree(&src, &out);

    r.kill(3); // 4 reachable: below both quorums
    let st = strict.status();
    assert_eq!(st.unreachable(), vec![0, 3], "{st:#?}");
    let line = lax.run(&["put", s(&src), "/data/again"]).failed();
    assert!(
        line.contains("reachable") || line.contains("quorum"),
        "{line}"
    );
    assert_nothing_committed(&lax, &lax1, &["data"]);

    // The brief's case: write quorum 6 with 2 of 6 stores down.
    strict.run(&["put", s(&src), "/data"]).failed();
    assert_nothing_committed(&strict, &strict0, &[]);
}

/// The plaintext marker never appears in any redis-server's files (the append-only files with fsync always).
#[test]
fn plaintext_never_reaches_redis() {
    let r = Redis::start(6);
    let v = Vol::new();
    let stores = r.store_args(0);
    v.init(&strs(&stores));
    let (marker, name) = plaintext_fixture(&v);
    let key = fs::read(v.path.join("key")).unwrap();
    for (i, srv) in r.servers.iter().enumerate() {
        let dir = srv.data_dir();
        assert!(
            !all_files(dir).is_empty(),
            "redis #{i} has no files in {}",
            dir.display()
        );
        for (what, needle) in [
            ("plaintext", marker.as_bytes()),
            ("file name", name.as_bytes()),
            ("key", &key),
        ] {
            let hits = files_containing(dir, needle);
            assert!(
                hits.is_empty(),
                "{what} found in redis #{i} files: {hits:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 0-db stores (protocol-level test server)
// ---------------------------------------------------------------------------------------------------------------

/// Six namespaces of one 0-db test server (`mode` fixes the server's runtime mode); a private password-protected
/// namespace per store when `password` is set, read through a `password-file`.
fn zdb_round_trip(mode: ZdbServerMode, password: Option<&str>) {
    let srv = ZdbTestServer::start(ZdbServerConfig {
        mode,
        ..ZdbServerConfig::default()
    })
    .expect("start zdb server");
    let v = Vol::new();
    let pwfile = password.map(|p| {
        let f = v.scratch("secrets").join("zdb-password");
        fs::write(&f, p).unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        f
    });
    let mut uris = Vec::new();
    for i in 0..6 {
        let ns = format!("qsfs-{i}");
        let opts = NamespaceOptions {
            password: password.map(str::to_string),
            public: password.is_none(),
            ..NamespaceOptions::default()
        };
        srv.create_namespace_with(&ns, &opts).unwrap();
        uris.push(srv.uri(&ns, pwfile.as_deref()));
    }
    let want_mode = if mode == ZdbServerMode::Seq {
        "mode=seq"
    } else {
        "mode=user"
    };
    assert!(uris.iter().all(|u| u.contains(want_mode)), "{uris:?}");

    let mut args = vec!["--segment-size", "512KiB"];
    for u in &uris {
        args.extend(["--store", u.as_str()]);
    }
    v.init(&args);
    let st0 = v.status();
    let src = v.scratch("src").join("tree");
    let info = standard_tree(&src, 512 * KIB, 0, 80);
    v.ok(&["put", s(&src), "/z"]);
    let out = v.fresh_path("out");
    v.ok(&["get", "/z", s(&out)]);
    assert_same_tree(&src, &out);

    let st = v.status();
    assert_counts_grew(&st0, &st, info);
    let got: Vec<&str> = st.stores.iter().map(|x| x.uri.as_str()).collect();
    assert_eq!(got, strs(&uris), "store URIs in status");
    assert!(st.stores.iter().all(|x| x.reachable), "{st:#?}");
    assert!(st.segments.total > 0);
    assert_eq!(st.segments.healthy, st.segments.total, "{st:#?}");
    for i in 0..6 {
        let n = srv.entry_count(&format!("qsfs-{i}")).unwrap() as u64;
        assert!(
            n >= st.segments.total,
            "namespace qsfs-{i} holds {n} entries for {} segments",
            st.segments.total
        );
    }
}

#[test]
fn zdb_user_mode_with_password_round_trip() {
    zdb_round_trip(ZdbServerMode::User, Some("zdb-namespace-secret"));
}

#[test]
fn zdb_seq_mode_round_trip() {
    zdb_round_trip(ZdbServerMode::Seq, None);
}
