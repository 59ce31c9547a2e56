//! Pack segments with stores lost, on every store kind. A mount uploads small files many to a pack segment; those
//! packs must keep the same promise as any segment: with one store gone before the mount opens, the mount starts,
//! reads every packed file and packs new ones (five stores are the write quorum); with M = 2 gone every file
//! still reads back, through `qsfs get` and through a mount; once the stores are back (or re-admitted when they
//! came back empty) `qsfs repair` restores full redundancy, `audit --full` is clean and fsck finds nothing.

use std::fs;
use std::path::Path;

use super::repair_to_full_redundancy;
use super::{Cluster, Loss, M, SEGMENT, assert_down, assert_full_redundancy, assert_reads, init};
use crate::fuse::mount::Mount;
use crate::fuse::{assert_diff_r_clean, record_bytes, sh};
use crate::helpers::{Vol, s};

/// Files `range` of a tree of small files (0 to a quarter segment, so every one is packed) under `root`, in
/// nine directories; when `mirror` is given, each is written there too (through a mount).
fn small_files(root: &Path, range: std::ops::Range<u64>, mirror: Option<&Path>) {
    for i in range {
        let rel = format!("d{}/f{i}", i % 9);
        let data = record_bytes(i, (i * 7919 % (SEGMENT / 4 + 1)) as usize);
        for top in std::iter::once(root).chain(mirror) {
            let path = top.join(&rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, &data).unwrap();
        }
    }
}

/// How many pack segments the volume holds (`gc --dry-run --json`).
fn packs(v: &Vol) -> u64 {
    let out = v.ok(&["gc", "--dry-run", "--json"]);
    let j: serde_json::Value = serde_json::from_str(&out).expect("gc --json");
    j["packs"]["packs"]
        .as_u64()
        .unwrap_or_else(|| panic!("packs.packs in {out}"))
}

/// Store 1 lost as `losses[0]` before a mount opens, then store 4 as `losses[1]`; see the module docs.
pub fn packs_with_stores_lost(c: &mut dyn Cluster, losses: [Loss; 2]) {
    let order = [1usize, 4];
    let v = Vol::new();
    init(c, &v);
    let want = v.scratch("want").join("data");
    small_files(&want, 0..300, None);
    let mp = v.scratch("mnt");
    let m = Mount::start(&v, &mp, &[]);
    sh("cp", &["-a", s(&want), s(&m.path("data"))]).ok();
    m.umount();
    let first = packs(&v);
    assert!(
        first > 0 && first < 150,
        "300 small files should share packs, not take {first}"
    );
    assert_full_redundancy(&v);

    // One store gone before the mount opens: it reads every packed file and packs new ones.
    c.lose(&v, order[0], losses[0]);
    let m = Mount::start(&v, &mp, &[]);
    assert_diff_r_clean(&want, &m.path("data"));
    small_files(&want, 300..450, Some(&m.path("data")));
    m.umount();
    assert!(
        packs(&v) > first,
        "files written with store 1 {:?} went into no new pack",
        losses[0]
    );
    assert_reads(&v, &want, &format!("with store 1 {:?}", losses[0]));

    // M = 2 gone: every packed file reads back, through `get` and through a mount.
    c.lose(&v, order[1], losses[1]);
    assert_down(&v, &order);
    assert_reads(&v, &want, &format!("with stores 1, 4 {losses:?}"));
    let m = Mount::start(&v, &mp, &["--read-only"]);
    assert_diff_r_clean(&want, &m.path("data"));
    m.umount();

    // Back (or re-admitted when they came back empty), repaired, clean.
    let mut down = order.to_vec();
    for k in (0..2).rev() {
        if losses[k].recoverable() {
            c.back(&v, order[k]);
            down.retain(|&i| i != order[k]);
        }
    }
    assert!(down.len() <= M);
    if !down.is_empty() {
        let st = assert_down(&v, &down);
        for &i in &down {
            v.ok(&["store", "readmit", &st.stores[i].uri]);
        }
    }
    repair_to_full_redundancy(&v);
    assert_reads(&v, &want, "after the stores came back and repair");
    assert!(v.ok(&["fsck"]).contains("clean"));
}
