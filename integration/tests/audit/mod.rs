//! Audits and self-healing through the real binary: `qsfs audit`, `qsfs repair` and `qsfs store add|drain|readmit`
//! against embedded dir stores (`dir.rs`) and real redis-servers (`redis.rs`).
//!
//! Every damage scenario checks the same four things: an audit with the default δ = 1%, P = 99% detects the
//! damage (exit status 1, the counts in `--json`), `qsfs repair` restores full redundancy, every file reads back
//! byte-identical, and a following `qsfs audit --full` is clean (exit status 0). The volumes are small enough
//! that the audit's c = 459 probes per store reach every leaf of every shard, which is what lets a single flipped
//! byte be found by a sampled audit; on large stores the same damage is caught with the stated probability only
//! once it touches δ of the shards, and always by `audit --full`.

mod dir;
mod file;
mod redis;

use std::path::Path;

use serde_json::Value;

use crate::helpers::tree::assert_same_tree;
use crate::helpers::{Run, Vol, s};

/// `qsfs audit --json EXTRA...`: the run and its parsed report.
pub fn audit(v: &Vol, extra: &[&str]) -> (Run, Value) {
    let mut args = vec!["audit", "--json"];
    args.extend_from_slice(extra);
    let run = v.run(&args);
    let json = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("audit --json is not JSON ({e}):\n{}", run.describe()));
    (run, json)
}

/// `qsfs repair --json EXTRA...`: the run and its parsed report.
pub fn repair(v: &Vol, extra: &[&str]) -> (Run, Value) {
    let mut args = vec!["repair", "--json"];
    args.extend_from_slice(extra);
    let run = v.run(&args);
    let json = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("repair --json is not JSON ({e}):\n{}", run.describe()));
    (run, json)
}

/// `qsfs status --json` as a plain JSON value (the typed helper insists on store ids 0..n, which a drained
/// volume no longer has).
pub fn status(v: &Vol) -> Value {
    serde_json::from_str(&v.ok(&["status", "--json"])).expect("status --json is JSON")
}

pub fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Asserts the audit failed (exit 1, one `qsfs:` line) finding exactly `missing` missing and `corrupt` corrupt
/// shards, all queued for repair.
#[track_caller]
pub fn assert_detected(v: &Vol, missing: u64, corrupt: u64) -> Value {
    let (run, j) = audit(v, &[]);
    let d = run.describe();
    let line = run.failed();
    let t = &j["totals"];
    assert_eq!(
        (num(&t["missing"]), num(&t["corrupt"])),
        (missing, corrupt),
        "audit totals:\n{d}"
    );
    assert_eq!(num(&j["queued_for_repair"]), missing + corrupt, "{d}");
    // Degraded, or at risk when two damaged shards hit one segment (its margin over K is then zero) — but no
    // data lost.
    assert!(
        j["verdict"] == "degraded" || j["verdict"] == "at_risk",
        "{d}"
    );
    assert!(j["lost"].as_array().unwrap().is_empty(), "{d}");
    assert!(line.contains("queued for repair"), "{line}");
    let g = &j["guarantee"];
    assert_eq!(
        (g["delta"].as_f64(), g["confidence"].as_f64()),
        (Some(0.01), Some(0.99)),
        "{d}"
    );
    assert_eq!(num(&g["samples_per_store"]), 459, "{d}");
    j
}

/// Repair succeeds having rebuilt `rebuilt` shards, `/data` reads back as `src`, and `audit --full` is clean.
#[track_caller]
pub fn assert_healed(v: &Vol, src: &Path, rebuilt: u64, extra: &[&str]) -> Value {
    let (run, r) = repair(v, extra);
    let d = run.describe();
    run.ok();
    assert_eq!(num(&r["rebuilt"]), rebuilt, "{d}");
    assert_eq!(num(&r["remaining"]), 0, "{d}");
    assert!(r["failures"].as_array().unwrap().is_empty(), "{d}");
    let out = v.fresh_path(&format!("out-{}", rand::random::<u32>()));
    v.ok(&["get", "/data", s(&out)]);
    assert_same_tree(src, &out);
    assert_clean_full_audit(v);
    r
}

#[track_caller]
pub fn assert_clean_full_audit(v: &Vol) {
    let (run, j) = audit(v, &["--full"]);
    let d = run.describe();
    run.ok();
    assert_eq!(j["mode"], "full", "{d}");
    assert_eq!(j["verdict"], "healthy", "{d}");
    let t = &j["totals"];
    for k in ["missing", "corrupt", "unreachable", "known_bad"] {
        assert_eq!(num(&t[k]), 0, "{k}:\n{d}");
    }
    assert_eq!(num(&t["sampled"]), num(&t["passed"]), "{d}");
}
