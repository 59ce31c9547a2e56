//! `qsfs audit --path`: per-file proof of retrievability. A file with more shards than the sample size c is
//! sampled (detection probability P for a δ loss of its shards), a small one fully challenged; damage to one
//! store shows on the files it touches only, as `degraded` with exit status 1; after `qsfs repair` every file is
//! `retrievable` again. The same report comes from a mounted volume through its control socket.

use serde_json::Value;

use super::{num, repair};
use crate::fuse::fuse_available;
use crate::fuse::mount::Mount;
use crate::helpers::stores::shard_files;
use crate::helpers::tree::random_file;
use crate::helpers::{Run, Vol, s};

fn audit_path(v: &Vol, extra: &[&str]) -> (Run, Value) {
    let mut args = vec!["audit", "--json", "--path"];
    args.extend_from_slice(extra);
    let run = v.run(&args);
    let json = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("audit --path --json is not JSON ({e}):\n{}", run.describe()));
    (run, json)
}

fn file<'a>(report: &'a Value, path: &str) -> &'a Value {
    report["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == path)
        .unwrap_or_else(|| panic!("{path} not in the report: {report}"))
}

#[test]
fn audit_path_proves_each_file_and_names_the_damaged_one() {
    let v = Vol::new();
    v.init_default(&["--segment-size", "32KiB"]);
    let src = v.scratch("src");
    // 8 MiB in 32 KiB segments: 256 segments, 1,536 shards, far more than c = 459.
    random_file(&src.join("big.dat"), 8 << 20, 7);
    random_file(&src.join("small.dat"), 40_000, 8);
    v.ok(&["put", s(&src.join("big.dat")), "/chain/big.dat"]);
    v.ok(&["put", s(&src.join("small.dat")), "/chain/small.dat"]);

    let (run, r) = audit_path(&v, &["/chain"]);
    let d = run.describe();
    run.ok();
    let big = file(&r, "/chain/big.dat");
    assert_eq!(num(&big["shards"]), 1536, "{d}");
    assert_eq!(num(&big["checked"]), 459, "sampled: {d}");
    assert!(
        big["detection_probability"].as_f64().unwrap() >= 0.99,
        "{d}"
    );
    assert_eq!(big["verdict"], "retrievable", "{d}");
    let small = file(&r, "/chain/small.dat");
    assert_eq!(
        num(&small["checked"]),
        num(&small["shards"]),
        "small files fully: {d}"
    );

    // A third of store 2's shards lost: about 5% of the big file's shards, caught by its sample.
    let shards = shard_files(&v.store_dir(2));
    for f in shards.iter().step_by(3) {
        std::fs::remove_file(f).unwrap();
    }
    let (run, r) = audit_path(&v, &["/chain"]);
    let d = run.describe();
    assert!(
        run.stderr.contains("/chain/big.dat") && run.stderr.contains("qsfs repair"),
        "{d}"
    );
    run.failed();
    let big = file(&r, "/chain/big.dat");
    assert!(num(&big["missing"]) > 0, "{d}");
    assert_eq!(big["verdict"], "degraded", "{d}");

    let (run, _) = repair(&v, &[]);
    run.ok();
    let (run, r) = audit_path(&v, &["/chain", "--full"]);
    let d = run.describe();
    run.ok();
    for f in r["files"].as_array().unwrap() {
        assert_eq!(f["verdict"], "retrievable", "{d}");
        assert_eq!(
            num(&f["checked"]),
            num(&f["shards"]),
            "--full checks every shard: {d}"
        );
    }
    let missing = v.run(&["audit", "--path", "/nope"]);
    assert!(missing.stderr.contains("/nope"), "{}", missing.describe());
    missing.failed();

    // The same through a mount's control socket.
    if fuse_available("audit_path_proves_each_file_and_names_the_damaged_one (mounted part)") {
        let mount = Mount::start(&v, &v.scratch("mnt"), &[]);
        let (run, r) = audit_path(&v, &["/chain/small.dat"]);
        let d = run.describe();
        run.ok();
        assert_eq!(
            file(&r, "/chain/small.dat")["verdict"],
            "retrievable",
            "{d}"
        );
        mount.umount();
    }
}
