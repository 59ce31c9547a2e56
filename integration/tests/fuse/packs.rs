//! Local-first closes and pack segments through a real mount: `kill -9` of the mount right after `cp -a` of a
//! tree of small files returns (nothing synced, nothing uploaded on purpose) brings every closed file back after
//! remounting; thousands of small files share pack segments (a handful of shard files per store instead of one per
//! file), and after deletes and overwrites `qsfs gc` compacts the packs so that their bytes stay within twice
//! the live bytes, while every file reads back identical and fsck and a full audit are clean.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rand::{Rng, SeedableRng};

use super::mount::Mount;
use super::trees::assert_same_stats;
use super::{assert_diff_r_clean, fuse_available, sh};
use crate::helpers::{Vol, s};

/// A tree of `n` small files (0–12 KiB, a few of 200 KiB, which are queued as files rather than inline) in
/// nested directories, with varied modes and old mtimes (which `cp -a` sets on each file while it is open).
fn small_tree(root: &Path, n: usize, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for i in 0..n {
        let dir = root.join(format!("d{}/e{}", i % 17, i % 5));
        fs::create_dir_all(&dir).unwrap();
        let len = if i % 97 == 0 {
            200 * 1024
        } else {
            rng.random_range(0..12 * 1024)
        };
        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let f = dir.join(format!("f{i}"));
        fs::write(&f, data).unwrap();
        let mode = [0o600, 0o644, 0o640, 0o755, 0o700][i % 5];
        fs::set_permissions(&f, fs::Permissions::from_mode(mode)).unwrap();
        let when = std::time::UNIX_EPOCH
            + std::time::Duration::new(1_500_000_000 + i as u64, 1000 * i as u32);
        fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }
}

#[test]
fn kill_9_right_after_cp_a_keeps_every_closed_file() {
    if !fuse_available("kill_9_right_after_cp_a_keeps_every_closed_file") {
        return;
    }
    let v = Vol::new();
    v.init_default(&[]);
    let src = v.scratch("src").join("tree");
    small_tree(&src, 1500, 41);
    let mp = v.scratch("mnt");
    let m = Mount::start(&v, &mp, &[]);
    sh("cp", &["-a", s(&src), s(&m.path("tree"))]).ok();
    // At once: the closes' journal may be unsynced and most uploads not done.
    let _stale = m.kill9();
    let m = Mount::start(&v, &mp, &[]);
    assert_diff_r_clean(&src, &m.path("tree"));
    // Modes and times `cp -a` set on each open file (held until its close) were committed with the close.
    assert_same_stats(&src, &m.path("tree"), true);
    m.umount();
    assert!(v.ok(&["fsck"]).contains("clean"));
    let out = v.fresh_path("out");
    v.ok(&["get", "/tree", s(&out)]);
    assert_diff_r_clean(&src, &out);
}

/// `qsfs gc [--dry-run] --json`'s pack figures: (packs, pack bytes, live bytes, packs compacted).
fn gc_packs(v: &Vol, dry_run: bool) -> (u64, u64, u64, u64) {
    let mut args = vec!["gc", "--json"];
    if dry_run {
        args.push("--dry-run");
    }
    let out = v.ok(&args);
    let j: serde_json::Value = serde_json::from_str(&out).expect("gc --json");
    let p = &j["packs"];
    let n = |k: &str| {
        p[k].as_u64()
            .unwrap_or_else(|| panic!("packs.{k} in {out}"))
    };
    (n("packs"), n("pack_bytes"), n("live_bytes"), n("compacted"))
}

#[test]
fn small_files_share_packs_and_gc_compacts_them() {
    if !fuse_available("small_files_share_packs_and_gc_compacts_them") {
        return;
    }
    let v = Vol::new();
    v.init_default(&[]);
    let src = v.scratch("src").join("tree");
    small_tree(&src, 3000, 42);
    let mp = v.scratch("mnt");
    let m = Mount::start(&v, &mp, &[]);
    sh("cp", &["-a", s(&src), s(&m.path("tree"))]).ok();
    m.umount();

    let (packs, _, live, _) = gc_packs(&v, true);
    assert!(live > 0, "no small file was packed");
    let shard_files = crate::helpers::stores::shard_files(&v.store_dir(0)).len();
    eprintln!("3000 small files: {packs} packs, {shard_files} shard files on store 0");
    assert!(
        shard_files < 3000 / 5,
        "{shard_files} shard files on one store for 3000 small files: not packed"
    );

    // Delete two files in three and overwrite every seventh of the others, in the mount and in the source.
    let m = Mount::start(&v, &mp, &[]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(43);
    for i in 0..3000usize {
        let rel = format!("d{}/e{}/f{i}", i % 17, i % 5);
        if i % 3 != 0 {
            fs::remove_file(src.join(&rel)).unwrap();
            fs::remove_file(m.path(&format!("tree/{rel}"))).unwrap();
        } else if i % 7 == 0 {
            let data: Vec<u8> = (0..rng.random_range(1..4096))
                .map(|_| rng.random())
                .collect();
            fs::write(src.join(&rel), &data).unwrap();
            fs::write(m.path(&format!("tree/{rel}")), &data).unwrap();
        }
    }
    m.umount();
    let (_, _, _, compacted) = gc_packs(&v, false);
    assert!(compacted > 0, "gc compacted no pack");
    let (packs, pack_bytes, live, _) = gc_packs(&v, true);
    eprintln!("after deletes and gc: {packs} packs, {pack_bytes} bytes for {live} live");
    assert!(
        pack_bytes <= 2 * live,
        "packs hold {pack_bytes} bytes for {live} live after gc"
    );
    let m = Mount::start(&v, &mp, &["--cache-size", "4MiB"]);
    sh("diff", &["-r", s(&src), s(&m.path("tree"))]).ok();
    m.umount();
    assert!(v.ok(&["fsck"]).contains("clean"));
    v.ok(&["audit", "--full"]);
}

/// `qsfs status --json` of a mounted volume: its `mount.upload_queue` section.
fn upload_queue(v: &Vol) -> serde_json::Value {
    let out = v.ok(&["status", "--json"]);
    let st: serde_json::Value = serde_json::from_str(&out).expect("status --json");
    st["mount"]["upload_queue"].clone()
}

/// `--upload-lag`: closed small files wait (queued locally, shown in `status`) for others to share their pack,
/// across pauses; an fsync of one of them uploads them at once, and the unmount uploads what is left without
/// waiting for the lag.
#[test]
fn upload_lag_holds_small_files_until_fsync_or_unmount() {
    if !fuse_available("upload_lag_holds_small_files_until_fsync_or_unmount") {
        return;
    }
    let v = Vol::new();
    v.init_default(&[]);
    let mp = v.scratch("mnt");
    let m = Mount::start(&v, &mp, &["--upload-lag", "10m"]);
    for i in 0..3 {
        fs::write(m.path(&format!("f{i}")), format!("small file {i}")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let q = upload_queue(&v);
    assert_eq!(q["segments"], 3, "the closes wait for the lag: {q}");
    assert_eq!(q["upload_lag_secs"], 600.0, "{q}");
    assert!(v.ok(&["status"]).contains("upload lag up to 600.0 s"));

    fs::File::open(m.path("f1")).unwrap().sync_all().unwrap();
    assert_eq!(upload_queue(&v)["segments"], 0, "fsync uploaded the pack");
    fs::write(m.path("f3"), "small file 3").unwrap();
    assert_eq!(upload_queue(&v)["segments"], 1);
    m.umount();

    let out = v.fresh_path("out");
    v.ok(&["get", "/", s(&out)]);
    for i in 0..4 {
        assert_eq!(
            fs::read_to_string(out.join(format!("f{i}"))).unwrap(),
            format!("small file {i}")
        );
    }
    assert!(v.ok(&["fsck"]).contains("clean"));
}
