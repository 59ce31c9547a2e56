//! Restores from the CLI: stores that lie about the metadata log or serve a damaged snapshot piece, passphrase
//! volumes on redis with M servers dead, and 0-db volumes whose data sits in seq-mode namespaces (ids recorded in
//! the log must stay valid).

use std::fs;

use super::{
    back_up_key, init_on_outside_dir_stores, log_records, lose_machine, restore, snapshot_pieces,
    take_away,
};
use crate::helpers::tree::{assert_same_file, assert_same_tree, random_file, standard_tree};
use crate::helpers::{Redis, Vol, run_qsfs, s, strs};
use qsfs_backends::testing::{ZdbServerConfig, ZdbServerMode, ZdbTestServer};

const KIB: u64 = 1024;

/// Store 0 rolled back to an older copy, store 1 missing the newest record, store 2 with a flipped byte in it,
/// store 3 holding another volume's record: a restore *from store 0* still gets the newest state, from the honest
/// stores, and names every store that disagreed.
#[test]
fn restore_outvotes_rolled_back_truncated_forged_and_foreign_logs() {
    let v = Vol::new();
    let stores = init_on_outside_dir_stores(&v);
    let src = v.scratch("src");
    for (i, name) in ["f1", "f2", "f3"].iter().enumerate() {
        random_file(&src.join(name), 100 * KIB + i as u64, 40 + i as u64);
    }
    v.ok(&["put", s(&src.join("f1")), "/f1"]);
    let old0 = v.scratch("old0");
    assert!(
        std::process::Command::new("cp")
            .args(["-a", &format!("{}/.", stores.join("0").display()), s(&old0)])
            .status()
            .unwrap()
            .success()
    );
    v.ok(&["put", s(&src.join("f2")), "/f2"]);
    v.ok(&["put", s(&src.join("f3")), "/f3"]);
    v.ok(&["rm", "/f1"]);
    let key = back_up_key(&v);

    let newest = log_records(&stores.join("4")).last().unwrap().0;
    fs::remove_dir_all(stores.join("0")).unwrap();
    fs::rename(&old0, stores.join("0")).unwrap();
    let find = |store: usize, seq: u64| {
        log_records(&stores.join(store.to_string()))
            .into_iter()
            .find(|(n, _)| *n == seq)
            .unwrap_or_else(|| panic!("store {store} has no record {seq}"))
            .1
    };
    fs::remove_file(find(1, newest)).unwrap();
    crate::helpers::stores::flip_bytes(&find(2, newest), 1);
    // Another volume's record under this volume's name for it: its bytes, with the same sequence number.
    let w = Vol::new();
    let wstores = init_on_outside_dir_stores(&w);
    for i in 0..newest {
        w.ok(&["put", s(&src.join("f1")), &format!("/w{i}")]);
    }
    let foreign = log_records(&wstores.join("0"))
        .into_iter()
        .find(|(n, _)| *n == newest)
        .expect("the other volume reached the same record number")
        .1;
    fs::copy(&foreign, find(3, newest)).unwrap();

    lose_machine(&v);
    let out = restore(
        &v,
        &format!("dir:{}", stores.join("0").display()),
        &key,
        &[],
    )
    .ok();
    for store in ["store 0", "store 1", "store 2", "store 3"] {
        assert!(
            out.lines()
                .any(|l| l.contains("disagreed") && l.contains(store)),
            "{store} not reported:\n{out}"
        );
    }
    for store in ["store 4", "store 5"] {
        assert!(
            !out.lines()
                .any(|l| l.contains("disagreed") && l.contains(&format!("{store} "))),
            "{store} is honest:\n{out}"
        );
    }
    assert_eq!(v.ls("/"), vec!["f2", "f3"], "the newest state: f1 removed");
    let got = v.scratch("got");
    for name in ["f2", "f3"] {
        v.ok(&["get", &format!("/{name}"), s(&got.join(name))]);
        assert_same_file(&src.join(name), &got.join(name));
    }
    assert!(v.ok(&["fsck"]).contains("clean"));
    // The rolled-back store lost the newer shards: restore recorded them, repair rebuilds them.
    assert!(out.contains("run `qsfs repair`"), "{out}");
    v.ok(&["repair"]);
    v.ok(&["audit", "--full"]);
}

/// Snapshots are erasure-coded: each of six stores (4 + 2) holds its own piece, about a quarter of the compressed
/// snapshot, not all of it. With store 2 serving a damaged piece and store 4 none, a restore from store 0 decodes
/// the snapshot from the four that verify and names the two.
#[test]
fn restore_decodes_the_snapshot_around_a_damaged_and_a_missing_piece() {
    let v = Vol::new();
    let stores = init_on_outside_dir_stores(&v);
    let src = v.scratch("src").join("tree");
    standard_tree(&src, 64 * KIB, 0, 57);
    for i in 0..300 {
        random_file(&src.join(format!("many/file-{i:03}")), 100 + i, 1000 + i);
    }
    v.ok(&["put", s(&src), "/t"]);
    // A take-over starts a new epoch with a fresh snapshot, holding the tree, and deletes the first one.
    v.ok(&["take-over"]);
    let key = back_up_key(&v);

    let pieces: Vec<_> = (0..6)
        .map(|i| snapshot_pieces(&stores.join(i.to_string())))
        .collect();
    let sealed: u64 = pieces[0].iter().map(|p| p.2).sum();
    let chunks = pieces[0].len() as u64;
    assert!(
        sealed > 8 * KIB,
        "a snapshot of {sealed} bytes is too small to measure"
    );
    for (i, held) in pieces.iter().enumerate() {
        let bytes: u64 = held.iter().map(|p| p.3).sum();
        eprintln!(
            "store {i}: {bytes} bytes of snapshot pieces; the sealed snapshot is {sealed} bytes"
        );
        let piece_ids: Vec<u32> = held.iter().map(|p| p.1).collect();
        assert!(
            piece_ids.iter().all(|&p| p == i as u32),
            "store {i} holds pieces {piece_ids:?}"
        );
        assert!(
            bytes >= sealed / 4 && bytes <= sealed / 4 + chunks * (48 + 2),
            "store {i} holds {bytes} bytes of a {sealed}-byte snapshot: not a quarter"
        );
    }
    let whole_chunks = crate::helpers::stores::all_files(&stores)
        .into_iter()
        .filter(|f| fs::read(f).is_ok_and(|b| b.starts_with(b"QSFSSNP1")))
        .count();
    assert_eq!(
        whole_chunks, 0,
        "no whole-chunk snapshot objects are written any more"
    );
    crate::helpers::stores::flip_bytes(&pieces[2][0].0, 3);
    fs::remove_file(&pieces[4][0].0).unwrap();

    lose_machine(&v);
    let out = restore(
        &v,
        &format!("dir:{}", stores.join("0").display()),
        &key,
        &[],
    )
    .ok();
    let named = |store: &str, what: &str| {
        out.lines().any(|l| {
            l.contains("disagreed") && l.contains(&format!("{store} ")) && l.contains(what)
        })
    };
    assert!(named("store 2", "does not match the manifest"), "{out}");
    assert!(named("store 4", "lacks its piece"), "{out}");
    for store in ["store 0", "store 1", "store 3", "store 5"] {
        assert!(!named(store, ""), "{store} is honest:\n{out}");
    }
    let got = v.fresh_path("got");
    v.ok(&["get", "/t", s(&got)]);
    assert_same_tree(&src, &got);
    assert!(v.ok(&["fsck"]).contains("clean"));
}

/// A passphrase volume on six redis-servers; the machine is lost and M = 2 servers die: restore from one server's
/// URI and the passphrase; a wrong passphrase and the wrong kind of key are refused with one line each.
#[test]
fn restore_a_passphrase_volume_from_redis_with_m_servers_dead() {
    let mut r = Redis::start(6);
    let mut v = Vol::new();
    v.envs.push((
        "QSFS_TEST_PASS".into(),
        "correct horse battery staple".into(),
    ));
    let mut args = vec![
        "--segment-size",
        "64KiB",
        "--passphrase-env",
        "QSFS_TEST_PASS",
    ];
    let stores = r.store_args(0);
    args.extend(strs(&stores));
    v.init(&args);
    let src = v.scratch("src").join("tree");
    standard_tree(&src, 64 * KIB, 0, 91);
    v.ok(&["put", s(&src), "/t"]);
    lose_machine(&v);
    r.kill(2);
    r.kill(5);
    let uri = r.servers[0].uri();

    let wrong = run_qsfs(
        &[
            "--volume",
            s(&v.path),
            "restore",
            "--store",
            &uri,
            "--passphrase-env",
            "QSFS_TEST_PASS",
        ],
        &[("QSFS_TEST_PASS", "wrong horse")],
    )
    .failed();
    assert!(wrong.contains("wrong key or passphrase"), "{wrong}");
    assert!(
        !v.path.join("qsfs.toml").exists(),
        "a failed restore leaves no volume behind"
    );
    let keyfile = v.scratch("k").join("key");
    fs::write(&keyfile, "qsfs-key v1\n00\n").unwrap();
    let kind = restore(&v, &uri, &keyfile, &[]).failed();
    assert!(kind.contains("--passphrase-env"), "{kind}");

    let out = v
        .run(&[
            "restore",
            "--store",
            &uri,
            "--passphrase-env",
            "QSFS_TEST_PASS",
        ])
        .ok();
    assert_eq!(
        out.lines().filter(|l| l.contains("down:")).count(),
        2,
        "{out}"
    );
    let got = v.fresh_path("got");
    v.ok(&["get", "/t", s(&got)]);
    assert_same_tree(&src, &got);
}

/// Data in 0-db seq-mode namespaces (locators are server-assigned ids, kept in the log) and the log in user-mode
/// ones: after a machine loss and a restore from a user-mode namespace, every file reads back.
#[test]
fn restore_keeps_zdb_seq_mode_ids_valid() {
    let seq = ZdbTestServer::start(ZdbServerConfig {
        mode: ZdbServerMode::Seq,
        ..ZdbServerConfig::default()
    })
    .expect("start a seq-mode 0-db server");
    let user = ZdbTestServer::start(ZdbServerConfig {
        mode: ZdbServerMode::User,
        ..ZdbServerConfig::default()
    })
    .expect("start a user-mode 0-db server");
    let mut uris = Vec::new();
    for (srv, name) in [(&seq, "s"), (&user, "u")] {
        for i in 0..3 {
            let ns = format!("{name}{i}");
            srv.create_namespace(&ns, None).unwrap();
            uris.push(srv.uri(&ns, None));
        }
    }
    let v = Vol::new();
    let mut args = vec!["--segment-size", "64KiB", "--write-quorum", "5"];
    for u in &uris {
        args.extend(["--store", u.as_str()]);
    }
    v.init(&args);
    let src = v.scratch("src").join("tree");
    standard_tree(&src, 64 * KIB, 0, 17);
    v.ok(&["put", s(&src), "/z"]);
    let key = back_up_key(&v);
    lose_machine(&v);
    let seq_only = restore(&v, &uris[0], &key, &[]).failed();
    assert!(seq_only.contains("seq-mode"), "{seq_only}");
    restore(&v, &uris[4], &key, &[]).ok();
    let got = v.fresh_path("got");
    v.ok(&["get", "/z", s(&got)]);
    assert_same_tree(&src, &got);
}

/// A dir store's disk missing during the restore is one of M down stores, named in the report.
#[test]
fn restore_with_m_dir_stores_missing_names_them() {
    let v = Vol::new();
    let stores = init_on_outside_dir_stores(&v);
    let src = v.scratch("src").join("tree");
    standard_tree(&src, 64 * KIB, 1, 23);
    v.ok(&["put", s(&src), "/t"]);
    let key = back_up_key(&v);
    lose_machine(&v);
    take_away(&stores, 0);
    take_away(&stores, 3);
    let out = restore(
        &v,
        &format!("dir:{}", stores.join("5").display()),
        &key,
        &["--json"],
    )
    .ok();
    let report: serde_json::Value = serde_json::from_str(&out).expect("restore --json");
    let down = report["stores_down"].as_array().expect("stores_down");
    assert_eq!(down.len(), 2, "{report:#}");
    assert!(
        down.iter()
            .any(|d| d.as_str().unwrap().starts_with("store 0:")),
        "{report:#}"
    );
    assert_eq!(report["fsck_problems"], 0, "{report:#}");
    let got = v.fresh_path("got");
    v.ok(&["get", "/t", s(&got)]);
    assert_same_tree(&src, &got);
}

/// Segments are sealed for their file and position: swapping two files' segment rows in `meta.db` (a tampered
/// database or log) makes both reads fail instead of serving the other file's bytes.
#[test]
fn swapped_segment_rows_never_serve_another_files_bytes() {
    let v = Vol::new();
    v.init_default(&["--segment-size", "64KiB"]);
    let src = v.scratch("src");
    random_file(&src.join("a"), 10_000, 5);
    random_file(&src.join("b"), 10_000, 6);
    v.ok(&["put", s(&src.join("a")), "/a"]);
    v.ok(&["put", s(&src.join("b")), "/b"]);
    let db = v.path.join("meta.db");
    let sql = "UPDATE segments SET ino = -ino WHERE idx = 0 AND ino IN (SELECT ino FROM dirents WHERE name IN (CAST('a' AS BLOB), CAST('b' AS BLOB)));
               UPDATE segments SET ino = (SELECT ino FROM dirents WHERE name = CAST('a' AS BLOB)) WHERE ino = -(SELECT ino FROM dirents WHERE name = CAST('b' AS BLOB));
               UPDATE segments SET ino = (SELECT ino FROM dirents WHERE name = CAST('b' AS BLOB)) WHERE ino = -(SELECT ino FROM dirents WHERE name = CAST('a' AS BLOB));";
    let out = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(sql)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = v.scratch("got");
    for name in ["a", "b"] {
        let line = v
            .run(&["get", &format!("/{name}"), s(&got.join(name))])
            .failed();
        assert!(line.contains("cannot be decrypted"), "{line}");
        assert!(
            !got.join(name).exists(),
            "no file with another file's bytes"
        );
    }
}
