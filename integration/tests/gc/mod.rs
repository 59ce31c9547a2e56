//! `qsfs gc`: recorded garbage and orphan shards (shard blobs no metadata names, as a failed put leaves behind)
//! are reclaimed per store; `--dry-run` deletes nothing; the metadata log's objects, foreign files and every live
//! shard are left alone: every file still reads back identical and a full audit is clean.

use std::fs;
use std::path::{Path, PathBuf};

use crate::helpers::stores::shard_files;
use crate::helpers::tree::{assert_same_tree, standard_tree};
use crate::helpers::{Vol, s};
use crate::restore::init_on_outside_dir_stores;

/// A copy of `shard` under a sibling name (last hex digit changed): a valid shard blob no metadata names.
pub fn plant_orphan(shard: &Path) -> PathBuf {
    let name = shard.file_name().unwrap().to_str().unwrap();
    let last = name.chars().last().unwrap();
    let other = if last == '0' { '1' } else { '0' };
    let orphan = shard.with_file_name(format!("{}{other}", &name[..name.len() - 1]));
    assert!(!orphan.exists());
    fs::copy(shard, &orphan).unwrap();
    orphan
}

pub fn gc_json(v: &Vol, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["gc", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&v.ok(&all)).expect("gc --json prints JSON")
}

pub fn store_row(report: &serde_json::Value, id: u64) -> &serde_json::Value {
    report["stores"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["store_id"] == id)
        .unwrap_or_else(|| panic!("no row for store {id}: {report}"))
}

#[test]
fn gc_reclaims_orphan_shards_and_leaves_everything_else() {
    let v = Vol::new();
    let stores = init_on_outside_dir_stores(&v);
    let src = v.scratch("src").join("tree");
    standard_tree(&src, 64 * 1024, 1, 77);
    v.ok(&["put", s(&src), "/tree"]);
    // Overwrites leave garbage that the put itself collects; gc finds nothing recorded afterwards.
    v.ok(&["put", s(&src.join("one-byte")), "/tree/one-byte"]);

    let live0 = shard_files(&stores.join("0"));
    let orphan_a = plant_orphan(&live0[0]);
    let orphan_b = plant_orphan(&shard_files(&stores.join("3"))[1]);
    // A file under a shard-like name that is not a shard blob: foreign, never ours to delete.
    let foreign = {
        let name = live0[1].file_name().unwrap().to_str().unwrap().to_string();
        let p = live0[1].with_file_name(format!("{}{}", &name[..name.len() - 1], "f"));
        let p = if p.exists() {
            live0[1].with_file_name(format!("{}{}", &name[..name.len() - 1], "e"))
        } else {
            p
        };
        fs::write(&p, b"not a shard of this volume").unwrap();
        p
    };
    let blob_len = fs::metadata(&orphan_a).unwrap().len();

    let dry = gc_json(&v, &["--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(store_row(&dry, 0)["orphans"], 1, "{dry}");
    assert_eq!(store_row(&dry, 0)["orphan_bytes"], blob_len, "{dry}");
    assert_eq!(store_row(&dry, 3)["orphans"], 1, "{dry}");
    assert_eq!(store_row(&dry, 1)["orphans"], 0, "{dry}");
    assert!(
        orphan_a.exists() && orphan_b.exists(),
        "a dry run deletes nothing"
    );

    let done = gc_json(&v, &[]);
    assert_eq!(store_row(&done, 0)["orphans_deleted"], 1, "{done}");
    assert_eq!(store_row(&done, 3)["orphans_deleted"], 1, "{done}");
    assert!(!orphan_a.exists() && !orphan_b.exists(), "orphans deleted");
    assert!(foreign.exists(), "a foreign object is never deleted");
    assert_eq!(
        shard_files(&stores.join("0")).len(),
        live0.len() + 1,
        "every live shard (and the foreign file) stays"
    );

    let again = gc_json(&v, &[]);
    assert_eq!(store_row(&again, 0)["orphans"], 0, "{again}");
    let out = v.fresh_path("out");
    v.ok(&["get", "/tree", s(&out)]);
    assert_same_tree(&src, &out);
    v.ok(&["audit", "--full"]);
    assert!(v.ok(&["fsck"]).contains("clean"));
    // The human report names each store.
    let text = v.ok(&["gc", "--dry-run"]);
    assert!(
        text.contains("store 0 ") && text.contains("dry run: nothing deleted"),
        "{text}"
    );
}

/// `redis-cli -p PORT -n DB ARGS…` → its output (raw).
fn redis_cli(port: u16, db: u32, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "-n", &db.to_string(), "--raw"])
        .args(args)
        .output()
        .expect("run redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The same on redis stores: an orphan made with COPY (a shard value under a new shard key) is reclaimed.
#[test]
fn gc_reclaims_orphan_shards_on_redis_stores() {
    let r = crate::helpers::Redis::start(6);
    let v = Vol::new();
    let mut args = vec!["--segment-size", "64KiB"];
    let stores = r.store_args(0);
    args.extend(crate::helpers::strs(&stores));
    v.init(&args);
    let src = v.scratch("src").join("tree");
    standard_tree(&src, 64 * 1024, 1, 78);
    v.ok(&["put", s(&src), "/tree"]);

    let port = r.servers[2].port();
    let keys = redis_cli(port, 0, &["KEYS", "qsfs:s:*"]);
    let shard = keys
        .lines()
        .find(|k| {
            let head = redis_cli(port, 0, &["GETRANGE", k, "0", "7"]);
            head.starts_with("QSFSSHRD")
        })
        .expect("a shard on redis store 2")
        .to_string();
    let last = shard.chars().last().unwrap();
    let orphan = format!(
        "{}{}",
        &shard[..shard.len() - 1],
        if last == '0' { '1' } else { '0' }
    );
    assert_eq!(redis_cli(port, 0, &["COPY", &shard, &orphan]).trim(), "1");

    let dry = gc_json(&v, &["--dry-run"]);
    assert_eq!(store_row(&dry, 2)["orphans"], 1, "{dry}");
    assert_eq!(redis_cli(port, 0, &["EXISTS", &orphan]).trim(), "1");
    let done = gc_json(&v, &[]);
    assert_eq!(store_row(&done, 2)["orphans_deleted"], 1, "{done}");
    assert_eq!(redis_cli(port, 0, &["EXISTS", &orphan]).trim(), "0");
    assert_eq!(redis_cli(port, 0, &["EXISTS", &shard]).trim(), "1");
    let out = v.fresh_path("out");
    v.ok(&["get", "/tree", s(&out)]);
    assert_same_tree(&src, &out);
    assert!(v.ok(&["fsck"]).contains("clean"));
}
