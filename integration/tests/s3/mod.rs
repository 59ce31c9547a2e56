//! End to end on S3 stores (buckets on a real Garage server): objects deleted and damaged behind qsfs's back are
//! found by `qsfs audit` and rebuilt by `qsfs repair` under their own names; `qsfs gc` reclaims an orphan object
//! and nothing else; a volume is restored on a new machine from one S3 store's URI and the key. The loss
//! scenarios (buckets cut off, emptied, mixed with dir and redis stores, a Garage node killed) are in `loss::s3`.

use crate::audit::{assert_detected, assert_healed};
use crate::gc::{gc_json, store_row};
use crate::helpers::s3::S3Buckets;
use crate::helpers::tree::{assert_same_tree, standard_tree};
use crate::helpers::{Vol, s, strs};
use crate::restore::{back_up_key, lose_machine, restore};

const KIB: u64 = 1024;

/// A 4+2 volume on the six buckets of `b`, with the standard tree at `dest`; returns the tree's source.
fn volume(v: &Vol, b: &S3Buckets, dest: &str, seed: u64) -> std::path::PathBuf {
    let stores = b.store_args(0..6);
    let mut args = vec!["--segment-size", "64KiB"];
    args.extend(strs(&stores));
    v.init(&args);
    let src = v.scratch("src").join("tree");
    standard_tree(&src, 64 * KIB, 0, seed);
    v.ok(&["put", s(&src), dest]);
    src
}

#[test]
fn s3_deleted_and_damaged_objects_are_detected_and_healed() {
    let b = S3Buckets::start(6);
    let v = Vol::new();
    let src = volume(&v, &b, "/data", 31);
    let shards0: Vec<_> = b.shards(0).into_iter().map(|(l, _)| l).collect();
    for l in &shards0[..3] {
        b.delete(0, l);
    }
    for (l, bytes) in &b.shards(1)[..2] {
        let mut bad = bytes.clone();
        let mid = bad.len() / 2;
        bad[mid..mid + 16].copy_from_slice(b"not what we put!");
        b.overwrite(1, l, &bad);
    }
    // Cut short, as an interrupted upload through a careless proxy would leave it.
    let (l, bytes) = b.shards(2).swap_remove(0);
    b.overwrite(2, &l, &bytes[..bytes.len() / 2]);
    assert_detected(&v, 3, 3);
    assert_healed(&v, &src, 6, &[]);
    let now: Vec<_> = b.shards(0).into_iter().map(|(l, _)| l).collect();
    assert_eq!(
        now, shards0,
        "deleted objects were rebuilt under their own names"
    );
}

#[test]
fn s3_gc_reclaims_an_orphan_object_only() {
    let b = S3Buckets::start(6);
    let v = Vol::new();
    let src = volume(&v, &b, "/tree", 78);
    let (shard, bytes) = b.shards(2).swap_remove(0);
    let mut orphan = shard.clone();
    *orphan.0.last_mut().unwrap() ^= 1;
    b.overwrite(2, &orphan, &bytes);
    let before = b.objects(2).len();

    let dry = gc_json(&v, &["--dry-run"]);
    assert_eq!(store_row(&dry, 2)["orphans"], 1, "{dry}");
    assert_eq!(b.objects(2).len(), before);
    let done = gc_json(&v, &[]);
    assert_eq!(store_row(&done, 2)["orphans_deleted"], 1, "{done}");
    let left = b.objects(2);
    assert_eq!(left.len(), before - 1);
    assert!(!left.contains(&orphan) && left.contains(&shard));
    let out = v.fresh_path("out");
    v.ok(&["get", "/tree", s(&out)]);
    assert_same_tree(&src, &out);
    assert!(v.ok(&["fsck"]).contains("clean"));
}

/// The machine is gone; one S3 store's URI and the key bring the volume back, two buckets cut off.
#[test]
fn s3_volume_restored_from_one_store_uri_and_the_key() {
    let mut b = S3Buckets::start(6);
    let v = Vol::new();
    let src = volume(&v, &b, "/z", 17);
    let key = back_up_key(&v);
    lose_machine(&v);
    b.cut(0);
    b.cut(5);
    let out = restore(&v, &b.uri(3), &key, &[]).ok();
    assert!(!out.is_empty());
    let got = v.fresh_path("got");
    v.ok(&["get", "/z", s(&got)]);
    assert_same_tree(&src, &got);
}
