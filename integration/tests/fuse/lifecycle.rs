//! The mount's life around the data: SIGTERM and SIGINT drain pending uploads and unmount like `qsfs umount`; a
//! daemonized `qsfs mount` and `--allow-other`; `qsfs fsck` finding and repairing metadata damage.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::mount::{
    Mount, force_unmount, is_fuse_mount, mount_pids, qsfs_detached, qsfs_umount, wait_for,
};
use super::{fuse_available, sh};
use crate::helpers::tree::{assert_same_file, random_file, standard_tree};
use crate::helpers::{Vol, s};

const KIB: u64 = 1024;

/// SIGTERM (on a default mount, whose closes only queue uploads locally) and SIGINT (on a `--sync-close` mount):
/// the process drains its uploads, unmounts and exits 0; the data is then all on the stores (every segment
/// healthy) and `qsfs get` returns it.
#[test]
fn sigterm_and_sigint_drain_uploads_and_unmount() {
    if !fuse_available("sigterm_and_sigint_drain_uploads_and_unmount") {
        return;
    }
    let v = Vol::new();
    v.init_default(&["--segment-size", "64KiB"]);
    let mp = v.scratch("mnt");
    let src = v.scratch("src");
    for (i, (sig, extra)) in [
        (Signal::SIGTERM, &[][..]),
        (Signal::SIGINT, &["--sync-close"][..]),
    ]
    .into_iter()
    .enumerate()
    {
        let local = src.join(format!("f{i}.bin"));
        random_file(&local, 3 * 1024 * 1024 + 17, 300 + i as u64);
        let mut m = Mount::start(&v, &mp, extra);
        fs::copy(&local, m.path(&format!("f{i}.bin"))).unwrap();
        let st = m.signal_and_wait(sig, Duration::from_secs(300));
        assert!(
            st.success(),
            "after {sig} the mount should drain, unmount and exit 0; got {st}; output:\n{}",
            m.log_text()
        );
        assert!(
            !is_fuse_mount(&mp),
            "{} is still mounted after {sig}",
            mp.display()
        );
        let status = v.status();
        assert_eq!(
            status.segments.healthy, status.segments.total,
            "after {sig}: every segment on all stores: {status:#?}"
        );
        let out = v.fresh_path(&format!("out{i}.bin"));
        v.ok(&["get", &format!("/f{i}.bin"), s(&out)]);
        assert_same_file(&local, &out);
    }
}

/// Unmounts and kills a daemonized mount on drop, whatever happened.
struct DaemonGuard(std::path::PathBuf);

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        if is_fuse_mount(&self.0) {
            let _ = qsfs_umount(&self.0, Duration::from_secs(60));
        }
        force_unmount(&self.0);
        for pid in mount_pids(&self.0) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// `cat FILE` as user nobody.
fn cat_as_nobody(path: &std::path::Path) -> super::Out {
    sh(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "cat",
            s(path),
        ],
    )
}

/// `qsfs mount` without `--foreground` returns once the mount is up and leaves a daemon serving it; with
/// `--allow-other` another user can read a 0644 file but not a 0600 one; `qsfs umount` ends the daemon. Without
/// `--allow-other` the other user is refused outright.
#[test]
fn daemon_mount_allow_other_and_umount() {
    if !fuse_available("daemon_mount_allow_other_and_umount") {
        return;
    }
    let v = Vol::new();
    v.init_default(&["--segment-size", "64KiB"]);
    let mp = fs::canonicalize(v.scratch("mnt")).unwrap();
    // nobody must be able to reach the mountpoint through the temp directories.
    let mut dir = mp.parent().map(|p| p.to_path_buf());
    while let Some(d) = dir {
        if d.starts_with(std::env::temp_dir()) && d != std::env::temp_dir() {
            let mode = fs::metadata(&d).unwrap().mode();
            fs::set_permissions(&d, fs::Permissions::from_mode(mode | 0o711)).unwrap();
        }
        dir = d.parent().map(|p| p.to_path_buf());
    }

    let guard = DaemonGuard(mp.clone());
    let log = v.fresh_path("daemon.log");
    let (code, text) = qsfs_detached(
        &v,
        &["mount", s(&mp), "--allow-other"],
        &log,
        Duration::from_secs(120),
    );
    assert_eq!(code, Some(0), "qsfs mount (daemon) failed; output:\n{text}");
    assert!(
        is_fuse_mount(&mp),
        "`qsfs mount` returned before {} was mounted",
        mp.display()
    );
    let pids = mount_pids(&mp);
    assert!(
        !pids.is_empty(),
        "no daemon process serves {}",
        mp.display()
    );

    fs::write(mp.join("public.txt"), "for everyone\n").unwrap();
    fs::set_permissions(mp.join("public.txt"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(mp.join("private.txt"), "root only\n").unwrap();
    fs::set_permissions(mp.join("private.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    let out = cat_as_nobody(&mp.join("public.txt"));
    assert_eq!(
        out.stdout,
        "for everyone\n",
        "with --allow-other, nobody reads a 0644 file:\n{}",
        out.describe()
    );
    let out = cat_as_nobody(&mp.join("private.txt"));
    assert!(
        !out.success() && out.stderr.contains("Permission denied"),
        "nobody must not read a 0600 root file:\n{}",
        out.describe()
    );

    let out = qsfs_umount(&mp, Duration::from_secs(300)).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.success(), "qsfs umount:\n{}", out.describe());
    assert!(!is_fuse_mount(&mp), "still mounted after qsfs umount");
    assert!(
        wait_for(Duration::from_secs(30), || mount_pids(&mp).is_empty()),
        "the daemon {pids:?} is still running 30 s after qsfs umount"
    );
    drop(guard);

    // Without --allow-other the kernel turns every other user away.
    let m = Mount::start(&v, &mp, &[]);
    assert_eq!(
        fs::read_to_string(m.path("public.txt")).unwrap(),
        "for everyone\n"
    );
    let out = cat_as_nobody(&m.path("public.txt"));
    assert!(
        !out.success(),
        "without --allow-other another user must be refused:\n{}",
        out.describe()
    );
    m.umount();
}

/// Metadata damage made behind the volume's back (a wrong link count, a directory entry naming a missing inode):
/// `qsfs fsck` reports it and exits 1; `qsfs fsck --repair` fixes it; `qsfs fsck` is then clean and the healthy
/// files are untouched.
#[test]
fn fsck_finds_and_repairs_metadata_damage() {
    if !fuse_available("fsck_finds_and_repairs_metadata_damage") {
        return;
    }
    let v = Vol::new();
    v.init_default(&["--segment-size", "64KiB"]);
    let src = v.scratch("src").join("tree");
    standard_tree(&src, 64 * KIB, 0, 400);
    v.ok(&["put", s(&src), "/tree"]);
    let fsck = v.run(&["fsck"]);
    assert_eq!(
        fsck.code,
        Some(0),
        "fsck of a healthy volume:\n{}",
        fsck.describe()
    );

    let db = v.path.join("meta.db");
    sh(
        "sqlite3",
        &[
            s(&db),
            "UPDATE inodes SET nlink = nlink + 3 WHERE ino = \
               (SELECT ino FROM dirents WHERE name = CAST('one-byte' AS BLOB));
             INSERT INTO dirents(parent, name, ino) VALUES \
               ((SELECT parent FROM dirents WHERE name = CAST('tree' AS BLOB)), CAST('ghost' AS BLOB), 987654);",
        ],
    )
    .ok();
    let fsck = v.run(&["fsck"]);
    assert_eq!(
        fsck.code,
        Some(1),
        "fsck of a damaged volume must exit 1:\n{}",
        fsck.describe()
    );
    let report = format!("{}{}", fsck.stdout, fsck.stderr);
    assert!(
        report.contains("ghost") || report.contains("987654"),
        "fsck should name the dangling entry:\n{}",
        fsck.describe()
    );

    let repair = v.run(&["fsck", "--repair"]);
    assert_eq!(
        repair.code,
        Some(0),
        "fsck --repair:\n{}",
        repair.describe()
    );
    let fsck = v.run(&["fsck"]);
    assert_eq!(
        fsck.code,
        Some(0),
        "fsck after --repair:\n{}",
        fsck.describe()
    );
    assert_eq!(v.ls("/"), vec!["tree"], "the dangling entry is gone");

    let mp = v.scratch("mnt");
    let m = Mount::start(&v, &mp, &[]);
    assert_eq!(fs::metadata(m.path("tree/one-byte")).unwrap().nlink(), 1);
    super::assert_diff_r_clean(&src, &m.path("tree"));
    m.umount();
}

/// Under systemd (`Type=notify`): the mount tells the socket in NOTIFY_SOCKET `READY=1` once the mountpoint
/// serves, and `STOPPING=1` after `qsfs umount` has drained it. The socket here is the test's own datagram socket,
/// standing in for systemd's.
#[test]
fn mount_notifies_systemd_when_ready_and_when_stopping() {
    if !fuse_available("mount_notifies_systemd_when_ready_and_when_stopping") {
        return;
    }
    use std::os::unix::net::UnixDatagram;
    let mut v = Vol::new();
    v.init_default(&["--segment-size", "64KiB"]);
    let socket_path = v.scratch("notify").join("sd.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    v.envs
        .push(("NOTIFY_SOCKET".into(), s(&socket_path).to_string()));
    let mp = v.scratch("mnt");
    let m = Mount::start(&v, &mp, &[]);
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a READY message within 60 s");
    let ready = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(
        ready.lines().any(|l| l == "READY=1"),
        "first notification: {ready:?}"
    );
    assert!(
        is_fuse_mount(&mp),
        "READY=1 was sent, so the mount must be up"
    );
    fs::write(m.path("f"), b"served").unwrap();
    m.umount();
    let n = socket
        .recv(&mut buf)
        .expect("a STOPPING message after umount");
    let stopping = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(
        stopping.lines().any(|l| l == "STOPPING=1"),
        "notification after umount: {stopping:?}"
    );
}
