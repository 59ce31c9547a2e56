//! Audits and repairs on the embedded dir stores: shard files deleted, bytes flipped, files truncated, a store
//! emptied with its marker kept; more than M shards of one file lost.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;

use super::{assert_clean_full_audit, assert_detected, assert_healed, audit, num, repair, status};
use crate::helpers::stores::{flip_bytes, shard_files};
use crate::helpers::tree::{assert_no_wrong_files, assert_same_file, random_file, standard_tree};
use crate::helpers::{Vol, s};

const KIB: u64 = 1024;

fn pick(files: &[PathBuf], n: usize, rng: &mut StdRng) -> Vec<PathBuf> {
    assert!(files.len() >= n, "only {} shard files", files.len());
    files.choose_multiple(rng, n).cloned().collect()
}

/// A default volume (six dir stores, 4+2) with the standard tree at /data; returns the tree's source.
fn volume(v: &Vol) -> PathBuf {
    v.init_default(&["--segment-size", "64KiB"]);
    let src = v.scratch("src").join("tree");
    standard_tree(&src, 64 * KIB, 0, 21);
    v.ok(&["put", s(&src), "/data"]);
    src
}

#[test]
fn dir_store_damage_is_detected_repaired_and_verified() {
    let v = Vol::new();
    let src = volume(&v);
    let (run, j) = audit(&v, &[]);
    let d = run.describe();
    run.ok();
    assert_eq!(j["verdict"], "healthy", "{d}");
    for st in j["stores"].as_array().unwrap() {
        assert!(
            num(&st["shards"]) > 0 && st["shards"] == st["sampled"],
            "{d}"
        );
        assert_eq!(st["detection_probability"].as_f64(), Some(1.0), "{d}");
    }
    let st = status(&v);
    assert_eq!(st["last_audit"]["verdict"], "healthy", "{st}");
    assert_eq!(st["repair_queue"], 0, "{st}");
    assert!(
        st["stores"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["score"].as_f64() == Some(1.0)),
        "{st}"
    );

    let mut rng = StdRng::seed_from_u64(7);
    // Damage on at most two stores at a time keeps every segment within its M = 2 losses.

    // 1. Shard files deleted.
    let mut doomed = pick(&shard_files(&v.store_dir(0)), 3, &mut rng);
    doomed.extend(pick(&shard_files(&v.store_dir(3)), 2, &mut rng));
    for f in &doomed {
        fs::remove_file(f).unwrap();
    }
    assert_detected(&v, 5, 0);
    assert_healed(&v, &src, 5, &[]);
    for f in &doomed {
        assert!(f.is_file(), "{} was rebuilt in place", f.display());
    }

    // 2. Bytes flipped (16 bytes in the middle of the file and 16 near its end).
    let mut flipped = pick(&shard_files(&v.store_dir(1)), 3, &mut rng);
    flipped.extend(pick(&shard_files(&v.store_dir(4)), 2, &mut rng));
    for f in &flipped {
        flip_bytes(f, 16);
    }
    assert_detected(&v, 0, 5);
    assert_healed(&v, &src, 5, &[]);

    // 3. Files truncated to half.
    let mut cut = pick(&shard_files(&v.store_dir(2)), 2, &mut rng);
    cut.extend(pick(&shard_files(&v.store_dir(5)), 2, &mut rng));
    for f in &cut {
        let len = fs::metadata(f).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(f)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
    }
    assert_detected(&v, 0, 4);
    assert_healed(&v, &src, 4, &[]);

    // 4. A store back empty with its marker kept (its disk restored from an old, empty backup, say): every shard
    //    of it is missing, the audit escalates on it, and the repair rebuilds all of them in place.
    let all = shard_files(&v.store_dir(3));
    for f in &all {
        fs::remove_file(f).unwrap();
    }
    assert!(v.store_dir(3).join("qsfs-store.id").is_file());
    let j = assert_detected(&v, all.len() as u64, 0);
    assert_eq!(
        j["stores"][3]["escalated"], false,
        "the store holds fewer than c shards: all were checked"
    );
    assert_healed(&v, &src, all.len() as u64, &[]);
    assert_eq!(shard_files(&v.store_dir(3)).len(), all.len());

    let st = status(&v);
    let seg = &st["segments"];
    assert_eq!(seg["healthy"], seg["total"], "{st}");
    assert_eq!(st["last_audit"]["mode"], "full", "{st}");
    assert!(
        st["stores"][3]["score"].as_f64().unwrap() < 1.0,
        "store 3 failed checks: {st}"
    );
}

/// More than M shards of a segment gone: the audit and the repair report data loss naming the file (and only
/// that file), exit 1, and the file fails to read instead of returning wrong bytes.
#[test]
fn damage_beyond_m_is_reported_as_data_loss_naming_the_file() {
    let v = Vol::new();
    v.init_default(&["--segment-size", "64KiB"]);
    let keep = v.scratch("src").join("keep.bin");
    let lose = v.scratch("src").join("lose.bin");
    random_file(&keep, 200 * KIB, 1);
    random_file(&lose, 150 * KIB, 2);
    v.ok(&["put", s(&keep), "/keep.bin"]);
    let before: BTreeSet<PathBuf> = (0..6).flat_map(|i| shard_files(&v.store_dir(i))).collect();
    v.ok(&["put", s(&lose), "/lose.bin"]);
    // lose.bin's shards on stores 0, 1 and 2: three of each segment's six, one more than M.
    for i in 0..3 {
        for f in shard_files(&v.store_dir(i)) {
            if !before.contains(&f) {
                fs::remove_file(f).unwrap();
            }
        }
    }
    let (run, j) = audit(&v, &[]);
    let d = run.describe();
    let line = run.failed();
    assert_eq!(j["verdict"], "at_risk", "{d}");
    let lost = j["lost"].as_array().unwrap();
    assert_eq!(lost.len(), 3, "lose.bin's three segments: {d}");
    for l in lost {
        assert_eq!(l["files"], serde_json::json!(["/lose.bin"]), "{d}");
        assert_eq!(num(&l["needed"]), 4);
        assert!(num(&l["healthy_shards"]) < 4);
    }
    assert!(
        line.contains("DATA LOST") && line.contains("/lose.bin") && !line.contains("keep.bin"),
        "{line}"
    );

    let (run, r) = repair(&v, &[]);
    let d = run.describe();
    let line = run.failed();
    assert!(
        line.contains("DATA LOST") && line.contains("/lose.bin"),
        "{line}"
    );
    assert_eq!(r["lost"].as_array().unwrap().len(), 3, "{d}");

    let out = v.fresh_path("keep.out");
    v.ok(&["get", "/keep.bin", s(&out)]);
    assert_same_file(&keep, &out);
    let out = v.fresh_path("lose.out");
    let line = v.run(&["get", "/lose.bin", s(&out)]).failed();
    assert!(line.contains("lose.bin"), "{line}");
    assert_no_wrong_files(&lose, &out);
}

/// `audit --store` checks one store only; `status` keeps the history's verdict and per-store scores.
#[test]
fn audit_of_one_store_and_the_human_report() {
    let v = Vol::new();
    let src = volume(&v);
    let victim = shard_files(&v.store_dir(4))[0].clone();
    fs::remove_file(&victim).unwrap();
    let uri = status(&v)["stores"][4]["uri"].as_str().unwrap().to_string();
    let (run, j) = audit(&v, &["--store", &uri]);
    let d = run.describe();
    run.failed();
    assert_eq!(j["stores"].as_array().unwrap().len(), 1, "{d}");
    assert_eq!(num(&j["stores"][0]["store_id"]), 4, "{d}");
    assert_eq!(num(&j["totals"]["missing"]), 1, "{d}");
    // Other stores are not checked, and their damage is not seen.
    let (run, _) = audit(&v, &["--store", "2"]);
    run.ok();
    // The human report names δ, P and c and the result.
    let run = v.run(&["audit"]);
    let d = run.describe();
    let out = run.stdout.clone();
    run.failed();
    for needle in [
        "δ = 1%",
        "P = 99%",
        "c = 459",
        "known-bad",
        "median",
        "result     DEGRADED",
    ] {
        assert!(out.contains(needle), "{needle:?} missing:\n{d}");
    }
    let human = v.ok(&["status"]);
    assert!(
        human.contains("audit     last sampled audit") && human.contains("score"),
        "{human}"
    );
    assert_healed(&v, &src, 1, &[]);
    assert_clean_full_audit(&v);
}
