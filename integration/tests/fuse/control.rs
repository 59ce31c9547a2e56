//! Admin commands on a mounted volume, through its control socket, while the mount is busy with a write loop:
//! `status --json` (with the mount's own section), `audit`, `audit --full`, damage found and `repair`ed, `store
//! add` then `store drain` of another store, `gc` of an orphan — each with the same JSON and exit status as on an
//! unmounted volume, and every file written meanwhile reads back identical. Another user is refused by the
//! socket; the mount's workers show in `status` and it stops cleanly at umount.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::fuse_available;
use super::mount::Mount;
use crate::audit::{audit, num, repair};
use crate::helpers::stores::{flip_bytes, shard_files};
use crate::helpers::{Vol, s};

/// Writes numbered files into the mount until told to stop; returns what it wrote.
fn write_loop(mp: &Path, stop: Arc<AtomicBool>) -> JoinHandle<Vec<(String, Vec<u8>)>> {
    let dir = mp.join("loop");
    fs::create_dir_all(&dir).unwrap();
    std::thread::spawn(move || {
        let mut written = Vec::new();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let name = format!("f{i}");
            let data = super::record_bytes(i, 40_000 + (i as usize % 7) * 30_000);
            fs::write(dir.join(&name), &data).unwrap();
            written.push((name, data));
            i += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        written
    })
}

fn json_of(v: &Vol, args: &[&str]) -> serde_json::Value {
    let out = v.ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}):\n{out}"))
}

#[test]
fn admin_commands_run_on_a_busy_mount() {
    if !fuse_available("admin_commands_run_on_a_busy_mount") {
        return;
    }
    let v = Vol::new();
    v.init_default(&["--segment-size", "64KiB"]);
    let mount = Mount::start(&v, &v.scratch("mnt"), &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = write_loop(&mount.path(""), stop.clone());
    std::thread::sleep(Duration::from_millis(500));

    // status: the volume's report plus the mount's own section, with every worker.
    let st = json_of(&v, &["status", "--json"]);
    assert_eq!(num(&st["data_shards"]), 4, "{st}");
    let workers: Vec<&str> = st["mount"]["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("no mount section: {st}"))
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        workers,
        [
            "seal/upload",
            "housekeeping",
            "store reviver",
            "local committer",
            "metadata checkpointer",
            "audit/repair",
            "gc"
        ],
        "{st}"
    );
    assert!(st["mount"]["upload_queue"]["segments"].is_u64(), "{st}");
    let human = v.ok(&["status"]);
    assert!(
        human.contains("workers") && human.contains("uploads"),
        "{human}"
    );

    // audit, sampled and full: clean while the writes go on.
    let (run, j) = audit(&v, &[]);
    let d = run.describe();
    run.ok();
    assert_eq!(j["verdict"], "healthy", "{d}");
    let (run, _) = audit(&v, &["--full"]);
    run.ok();

    // Damage on one store: the full audit fails naming it (exit 1, as unmounted); repair fixes it.
    let damaged = shard_files(&v.store_dir(3));
    assert!(!damaged.is_empty());
    flip_bytes(&damaged[0], 8);
    let (run, j) = audit(&v, &["--full"]);
    let d = run.describe();
    run.failed();
    let bad: u64 = j["stores"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|st| num(&st["store_id"]) == 3)
        .map(|st| num(&st["corrupt"]) + num(&st["known_bad"]))
        .sum();
    assert!(bad > 0, "{d}");
    let (run, r) = repair(&v, &[]);
    let d = run.describe();
    run.ok();
    assert!(num(&r["rebuilt"]) + num(&r["copied"]) > 0, "{d}");

    // A store added, then another drained, while the writes go on.
    let extra = v.scratch("extra-store");
    let added = v.ok(&["store", "add", &format!("dir:{}", s(&extra))]);
    assert!(added.contains("added store 6"), "{added}");
    let drained = json_of(&v, &["store", "drain", "0", "--json"]);
    assert_eq!(drained["retired"], true, "{drained}");
    let st = json_of(&v, &["status", "--json"]);
    let ids: Vec<u64> = st["stores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| num(&s["id"]))
        .collect();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6], "{st}");

    // gc: an orphan planted on a store is reclaimed, nothing live is touched.
    let orphan = crate::gc::plant_orphan(&shard_files(&v.store_dir(2))[0]);
    let gc = json_of(&v, &["gc", "--json"]);
    let reclaimed: u64 = gc["stores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| num(&s["orphans_deleted"]))
        .sum();
    assert!(reclaimed >= 1 && !orphan.exists(), "{gc}");

    // stats: a live view from the mount's counters, by mountpoint.
    let rows = v.ok(&[
        "stats",
        s(&mount.path("")),
        "--interval",
        "0.3",
        "--count",
        "2",
    ]);
    assert_eq!(
        rows.lines().count(),
        4,
        "two header lines and two rows:\n{rows}"
    );
    let raw = v.ok(&["stats", "--raw"]);
    assert!(
        raw.contains("qsfs_fuse_operations_total{op=\"write\"}"),
        "{raw}"
    );

    stop.store(true, Ordering::Relaxed);
    let written = writer.join().expect("the write loop");
    assert!(written.len() > 10, "only {} files written", written.len());
    let (run, _) = audit(&v, &["--full"]);
    run.ok();
    for (name, data) in &written {
        let back = fs::read(mount.path("loop").join(name)).unwrap();
        assert!(back == *data, "{name} changed");
    }
    mount.umount();
    // After the mount: the same commands open the volume themselves, and its socket is gone.
    assert!(!v.path.join("control.sock").exists());
    let (run, _) = audit(&v, &["--full"]);
    run.ok();
    let st = json_of(&v, &["status", "--json"]);
    assert!(st.get("mount").is_none(), "{st}");
    let stats = v.run(&["stats", "--count", "1"]);
    assert!(stats.stderr.contains("not mounted"), "{}", stats.describe());
    stats.failed();
}

/// Only the volume's owner or root may use the socket: another user reaching it (here the socket is opened to
/// everyone on purpose, so the check under test is the peer's credentials) is refused, and the mount goes on.
#[test]
fn another_user_is_refused_by_the_control_socket() {
    if !fuse_available("another_user_is_refused_by_the_control_socket") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to act as another user");
        return;
    }
    let v = Vol::new();
    v.init_default(&[]);
    let mount = Mount::start(&v, &v.scratch("mnt"), &[]);
    let socket = v.path.join("control.sock");
    fs::set_permissions(&v.path, fs::Permissions::from_mode(0o711)).unwrap();
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).unwrap();
    let out = super::sh(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            s(&crate::helpers::qsfs_bin()),
            "--volume",
            s(&v.path),
            "status",
        ],
    );
    fs::set_permissions(&v.path, fs::Permissions::from_mode(0o700)).unwrap();
    assert!(
        !out.success(),
        "another user ran status:\n{}",
        out.describe()
    );
    assert!(
        out.describe().contains("only the volume's owner"),
        "{}",
        out.describe()
    );
    // The mount still serves its owner.
    let st = v.ok(&["status"]);
    assert!(st.contains("workers"), "{st}");
    mount.umount();
}

/// `[gc]` in qsfs.toml: the mount's gc worker reclaims an orphan on its own, shows in `status`, and stops at umount.
#[test]
fn the_mount_collects_orphans_in_the_background() {
    if !fuse_available("the_mount_collects_orphans_in_the_background") {
        return;
    }
    let v = Vol::new();
    v.init_default(&[]);
    let config = v.path.join("qsfs.toml");
    let text = fs::read_to_string(&config).unwrap();
    let gc_section = "[gc]\nenabled = true\ninterval = \"1d\"";
    assert!(
        text.contains(gc_section),
        "init writes the [gc] defaults: {text}"
    );
    fs::write(
        &config,
        text.replace(gc_section, "[gc]\nenabled = true\ninterval = \"2s\""),
    )
    .unwrap();
    let mount = Mount::start(&v, &v.scratch("mnt"), &[]);
    fs::write(mount.path("f"), super::record_bytes(1, 300_000)).unwrap();
    fs::File::open(mount.path("f")).unwrap().sync_all().unwrap();
    let orphan = crate::gc::plant_orphan(&shard_files(&v.store_dir(1))[0]);
    let gone = super::mount::wait_for(Duration::from_secs(30), || !orphan.exists());
    let st = json_of(&v, &["status", "--json"]);
    assert!(gone, "the orphan is still there after 30 s: {st}");
    let gc = st["mount"]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "gc")
        .unwrap_or_else(|| panic!("no gc worker: {st}"));
    assert!(gc["status"].as_str().unwrap().contains("orphan"), "{st}");
    assert_eq!(
        fs::read(mount.path("f")).unwrap(),
        super::record_bytes(1, 300_000)
    );
    mount.umount();
}

/// Ctrl-C in the CLI stops the operation the mount runs for it, not the mount: a long `audit --full` through
/// the socket is interrupted (its checkpoint kept, so the next full audit resumes), and the mount serves on.
#[test]
fn ctrl_c_stops_the_operation_not_the_mount() {
    if !fuse_available("ctrl_c_stops_the_operation_not_the_mount") {
        return;
    }
    let v = Vol::new();
    v.init_default(&["--segment-size", "64KiB"]);
    let mount = Mount::start(&v, &v.scratch("mnt"), &[]);
    for i in 0..4 {
        fs::write(
            mount.path(&format!("big{i}")),
            super::record_bytes(i, 48 << 20),
        )
        .unwrap();
    }
    // On the stores, so the audit has every shard to read.
    for i in 0..4 {
        fs::File::open(mount.path(&format!("big{i}")))
            .unwrap()
            .sync_all()
            .unwrap();
    }
    // The interrupt must land after the audit's first checkpoint and before its end, and the whole audit reads its
    // ~300 MB in well under a second here: a few delays are tried until one lands in between. An interrupted audit
    // whose checkpoint was lost never resumes, whatever the delay.
    let mut tried = Vec::new();
    let full = [250u64, 120, 500, 60, 900]
        .into_iter()
        .find_map(|delay_ms| {
            let mut client = std::process::Command::new(crate::helpers::qsfs_bin())
                .args(["--volume", s(&v.path), "audit", "--full", "--json"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(delay_ms));
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(client.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            )
            .unwrap();
            if client.wait().unwrap().success() {
                tried.push(format!("{delay_ms} ms: the audit ended first"));
                return None;
            }
            // The mount serves on, and the next full audit resumes from the interrupted one's checkpoint.
            let st = json_of(&v, &["status", "--json"]);
            assert!(st["mount"].is_object(), "{st}");
            let full = json_of(&v, &["audit", "--full", "--json"]);
            if full["resumed"] == true {
                return Some(full);
            }
            tried.push(format!("{delay_ms} ms: interrupted, not resumed: {full}"));
            None
        });
    let full = full.unwrap_or_else(|| panic!("no interrupted audit was resumed: {tried:#?}"));
    assert_eq!(full["verdict"], "healthy", "{full}");
    assert_eq!(
        fs::read(mount.path("big3")).unwrap(),
        super::record_bytes(3, 48 << 20)
    );
    mount.umount();
}
