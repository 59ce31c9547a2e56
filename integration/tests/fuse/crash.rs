//! `kill -9` of the mount process in the middle of a write loop whose every record is made durable (fsync,
//! fdatasync, or close of a small file) before it is logged as acknowledged. Mounting again must clean the stale
//! mountpoint ("Transport endpoint is not connected") by itself; every acknowledged record must read back exactly,
//! through the mount and through `qsfs get`; and `qsfs fsck` must be clean.

use std::time::{Duration, Instant};

use super::fuse_available;
use super::mount::{Mount, is_fuse_mount, is_stale, mount_types};
use super::writer::{Ack, OnError, Writer, assert_acks};
use crate::helpers::{Vol, s};

#[test]
fn kill_9_during_fsync_loop_then_remount_keeps_every_acked_record() {
    if !fuse_available("kill_9_during_fsync_loop_then_remount_keeps_every_acked_record") {
        return;
    }
    let v = Vol::new();
    v.init_default(&["--segment-size", "64KiB"]);
    let mp = v.scratch("mnt");
    let mut all: Vec<Ack> = Vec::new();

    // Default (local-first) mounts, where close makes data durable in the local upload queue that a remount must
    // carry on uploading, and --sync-close ones, each killed after a different number of acknowledged records.
    let rounds: [(u64, &[&str], usize); 4] = [
        (0, &[], 25),
        (1, &["--sync-close"], 40),
        (2, &[], 12),
        (3, &["--sync-close"], 60),
    ];
    for (round, extra, acks_before_kill) in rounds {
        let m = Mount::start(&v, &mp, extra);
        let dir = m.path("crash");
        // Earlier rounds' records are still there before this round starts writing.
        assert_acks(&dir, &all, &format!("round {round}, before writing"));
        let w = Writer::spawn(&dir, &format!("r{round}"), round + 1, OnError::Stop);
        let deadline = Instant::now() + Duration::from_secs(300);
        while w.acks() < acks_before_kill && !w.is_done() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let acked_before_kill = w.acks();
        assert!(
            acked_before_kill >= acks_before_kill,
            "round {round}: only {acked_before_kill} records acknowledged (writer done: {}); attempts: {:#?}\nmount \
             output:\n{}",
            w.is_done(),
            w.log
                .lock()
                .unwrap()
                .attempts
                .iter()
                .rev()
                .take(5)
                .collect::<Vec<_>>(),
            m.log_text()
        );
        // Land the kill at a varying point of a record's write/fsync.
        std::thread::sleep(Duration::from_millis(37 * (round + 1)));
        let mount_pid = m.pid();
        let _stale = m.kill9();
        let log = w.stop(Duration::from_secs(60));
        let last = log.attempts.last().cloned();
        eprintln!(
            "round {round}: killed mount pid {mount_pid} after {} acknowledged records; the writer's last attempt: \
             {last:?}",
            log.acks.len()
        );
        assert!(
            last.as_ref().is_some_and(|a| a.error.is_some()),
            "round {round}: the writer should have seen the mount die, last attempt {last:?}"
        );
        let stale = is_stale(&mp);
        eprintln!(
            "round {round}: after kill -9 the mountpoint is {}",
            if stale {
                "stale (ENOTCONN)"
            } else if is_fuse_mount(&mp) {
                "still a FUSE mount"
            } else {
                "no longer mounted"
            }
        );
        all.extend(log.acks.iter().cloned());

        // Mount again over whatever the kill left: qsfs must clean the stale mount itself.
        let m2 = Mount::start(&v, &mp, extra);
        assert!(!is_stale(&mp));
        let types = mount_types(&mp);
        assert_eq!(
            types.len(),
            1,
            "round {round}: the new mount should replace the stale one, not stack on it: {types:?}"
        );
        assert_acks(
            &m2.path("crash"),
            &all,
            &format!("round {round}, after kill -9 and remount"),
        );
        m2.umount();
        let fsck = v.run(&["fsck"]);
        assert_eq!(
            fsck.code,
            Some(0),
            "round {round}: fsck after the crash and remount:\n{}",
            fsck.describe()
        );
    }

    // The same records through the CLI's read path.
    let out = v.fresh_path("out");
    v.ok(&["get", "/crash", s(&out)]);
    assert_acks(&out, &all, "qsfs get after both rounds");
    eprintln!(
        "kill -9: {} acknowledged records verified ({} by fsync, {} by fdatasync, {} by close)",
        all.len(),
        all.iter().filter(|a| a.how == "fsync").count(),
        all.iter().filter(|a| a.how == "fdatasync").count(),
        all.iter().filter(|a| a.how == "close").count()
    );
}
