//! [`Mount`]: one `qsfs --volume V mount MP --foreground` child process for a test, and the mount-table checks
//! around it.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{Out, try_run_cmd};
use crate::helpers::{Vol, qsfs_bin, s};

/// How long a mount may take to appear in the mount table.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `qsfs umount` may take (it drains pending uploads first).
pub const UMOUNT_TIMEOUT: Duration = Duration::from_secs(300);

/// After this long a mount is SIGKILLed by its watchdog, so a hung filesystem fails its test (blocked syscalls
/// get ENOTCONN) instead of hanging the suite. `QSFS_FUSE_TEST_DEADLINE` (seconds) overrides it.
pub const MOUNT_DEADLINE: Duration = Duration::from_secs(20 * 60);

fn mount_deadline() -> Duration {
    std::env::var("QSFS_FUSE_TEST_DEADLINE")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(MOUNT_DEADLINE)
}

/// Undoes the octal escapes (`\040` for a space, …) of a `/proc/self/mounts` field.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The filesystem types of the mounts at `mp` in `/proc/self/mounts` (stacked mounts give several).
pub fn mount_types(mp: &Path) -> Vec<String> {
    let table = fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    table
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let _src = f.next()?;
            let target = f.next()?;
            let fstype = f.next()?;
            (Path::new(&unescape(target)) == mp).then(|| fstype.to_string())
        })
        .collect()
}

/// Whether `mp` is a FUSE mount (type `fuse` or `fuse.SUBTYPE`) in `/proc/self/mounts`.
pub fn is_fuse_mount(mp: &Path) -> bool {
    mount_types(mp)
        .iter()
        .any(|t| t == "fuse" || t.starts_with("fuse."))
}

/// Whether listing `mp` fails with ENOTCONN: a FUSE mount whose process died ("Transport endpoint is not
/// connected"). A listing, not a `stat`: the kernel may answer `stat` of the root from cached attributes.
pub fn is_stale(mp: &Path) -> bool {
    matches!(fs::read_dir(mp), Err(e) if e.raw_os_error() == Some(nix::libc::ENOTCONN))
}

/// Whether `mp` is a FUSE mount whose server answers (its root can be listed).
pub fn is_live_fuse_mount(mp: &Path) -> bool {
    is_fuse_mount(mp) && fs::read_dir(mp).is_ok()
}

/// `mp` with its parent canonicalized (a stale mountpoint itself cannot be stat-ed, let alone canonicalized).
fn absolute(mp: &Path) -> PathBuf {
    let parent = mp.parent().expect("mountpoint has a parent");
    let name = mp.file_name().expect("mountpoint has a name");
    fs::canonicalize(parent)
        .unwrap_or_else(|e| panic!("canonicalize {}: {e}", parent.display()))
        .join(name)
}

/// Waits up to `timeout` for `child` to exit.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() > deadline => return None,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => return None,
        }
    }
}

/// Best-effort removal of whatever is mounted at `mp` (no panics: used from `Drop`).
pub fn force_unmount(mp: &Path) {
    for (prog, args) in [("umount", vec!["-l"]), ("fusermount3", vec!["-u", "-z"])] {
        if !is_fuse_mount(mp) {
            return;
        }
        let mut cmd = Command::new(prog);
        cmd.args(&args).arg(mp);
        let _ = try_run_cmd(&mut cmd, Duration::from_secs(30));
    }
}

/// `qsfs umount MP` (no `--volume`: the mountpoint alone names the mount).
pub fn qsfs_umount(mp: &Path, timeout: Duration) -> Result<Out, String> {
    let mut cmd = Command::new(qsfs_bin());
    cmd.arg("umount")
        .arg(mp)
        .env_remove("QSFS_VOLUME")
        .env_remove("RUST_LOG");
    try_run_cmd(&mut cmd, timeout)
}

static MOUNT_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A running `qsfs mount --foreground` child. Declare it after the [`Vol`] it mounts so it is dropped first.
pub struct Mount {
    /// The mountpoint, absolute.
    pub mp: PathBuf,
    volume: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    watchdog: Option<mpsc::Sender<()>>,
}

impl Mount {
    /// Mounts `vol` at `mp` (created when missing) with extra `qsfs mount` options, and waits until `mp` is a
    /// working FUSE mount. A stale mountpoint left by a killed mount is left as it is: `qsfs mount` must clean it.
    #[track_caller]
    pub fn start(vol: &Vol, mp: &Path, extra: &[&str]) -> Mount {
        if !is_stale(mp) {
            fs::create_dir_all(mp).unwrap_or_else(|e| panic!("create {}: {e}", mp.display()));
        }
        let mp = absolute(mp);
        let seq = MOUNT_SEQ.fetch_add(1, Ordering::Relaxed);
        let log = mp.with_file_name(format!(
            "{}.mount-{seq}.log",
            mp.file_name().unwrap().to_string_lossy()
        ));
        let log_file = File::create(&log).expect("create mount log");
        let mut cmd = Command::new(qsfs_bin());
        cmd.arg("--volume")
            .arg(&vol.path)
            .arg("mount")
            .arg(&mp)
            .arg("--foreground")
            .args(extra)
            .env_remove("QSFS_VOLUME")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log handle"))
            .stderr(log_file);
        // QSFS_FUSE_TEST_LOG=debug (say) turns on the mount's log for debugging a test; quiet by default.
        match std::env::var("QSFS_FUSE_TEST_LOG") {
            Ok(level) => cmd.env("RUST_LOG", level),
            Err(_) => cmd.env_remove("RUST_LOG"),
        };
        for (k, v) in &vol.envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", qsfs_bin().display()));
        let mut m = Mount {
            mp,
            volume: vol.path.clone(),
            child: Some(child),
            log,
            watchdog: None,
        };
        m.wait_ready(extra);
        m.start_watchdog();
        m
    }

    /// Polls until the mountpoint is a FUSE mount that answers (a stale one answers ENOTCONN).
    #[track_caller]
    fn wait_ready(&mut self, extra: &[&str]) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if is_live_fuse_mount(&self.mp) {
                return;
            }
            let child = self.child.as_mut().expect("child");
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                panic!(
                    "`qsfs --volume {} mount {} --foreground {}` exited with {st} before the mount appeared; its \
                     output:\n{}",
                    self.volume.display(),
                    self.mp.display(),
                    extra.join(" "),
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not become a FUSE mount within {READY_TIMEOUT:?} (mount types there: {:?}); mount \
                     output:\n{}",
                    self.mp.display(),
                    mount_types(&self.mp),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_watchdog(&mut self) {
        let (tx, rx) = mpsc::channel::<()>();
        let pid = self.pid();
        let mp = self.mp.clone();
        let deadline = mount_deadline();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(deadline) {
                eprintln!(
                    "WATCHDOG: the mount at {} (pid {pid}) outlived {deadline:?}; SIGKILLing it so blocked \
                     filesystem calls fail",
                    mp.display()
                );
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        });
        self.watchdog = Some(tx);
    }

    fn stop_watchdog(&mut self) {
        if let Some(tx) = self.watchdog.take() {
            let _ = tx.send(());
        }
    }

    /// The mount process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("mount child").id()
    }

    /// Everything the mount process printed so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log)
            .unwrap_or_else(|e| format!("(no log at {}: {e})", self.log.display()))
    }

    /// The file the mount process's output goes to (it outlives the mount).
    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }

    /// `root/rel` inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mp.join(rel)
    }

    /// SIGKILLs the mount process and reaps it. The mountpoint is left as the kernel leaves it (normally stale:
    /// "Transport endpoint is not connected"); the returned guard unmounts it on drop only if it is still stale
    /// then (a test that mounts again expects `qsfs mount` to clean it).
    pub fn kill9(mut self) -> StaleGuard {
        self.stop_watchdog();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let mp = std::mem::take(&mut self.mp);
        std::mem::forget(self);
        StaleGuard { mp }
    }

    /// Sends `sig` to the mount process and waits up to `timeout` for it to exit; returns its exit status.
    #[track_caller]
    pub fn signal_and_wait(&mut self, sig: Signal, timeout: Duration) -> ExitStatus {
        self.stop_watchdog();
        let mut c = self.child.take().expect("mount child");
        kill(Pid::from_raw(c.id() as i32), sig).expect("send signal");
        match wait_timeout(&mut c, timeout) {
            Some(st) => st,
            None => {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "the mount did not exit within {timeout:?} of {sig}; its output:\n{}",
                    self.log_text()
                );
            }
        }
    }

    /// `qsfs umount MP`: asserts it succeeds, the mount process exits 0 and the mountpoint is no longer mounted.
    #[track_caller]
    pub fn umount(mut self) {
        self.stop_watchdog();
        let out = qsfs_umount(&self.mp, UMOUNT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.success(),
            "qsfs umount failed:\n{}\n--- mount output ---\n{}",
            out.describe(),
            self.log_text()
        );
        let mut c = self.child.take().expect("mount child");
        let st = wait_timeout(&mut c, Duration::from_secs(60));
        if st.is_none() {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(
            st.is_some_and(|st| st.success()),
            "after `qsfs umount` the mount process should exit 0, got {st:?}; its output:\n{}",
            self.log_text()
        );
        assert!(
            !is_fuse_mount(&self.mp),
            "{} is still mounted after `qsfs umount` ({:?})",
            self.mp.display(),
            mount_types(&self.mp)
        );
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop_watchdog();
        if let Some(mut c) = self.child.take() {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = qsfs_umount(&self.mp, Duration::from_secs(120));
                if wait_timeout(&mut c, Duration::from_secs(30)).is_none() {
                    let _ = c.kill();
                }
            }
            let _ = c.wait();
        }
        force_unmount(&self.mp);
    }
}

/// What a killed mount left behind; see [`Mount::kill9`].
pub struct StaleGuard {
    pub mp: PathBuf,
}

impl Drop for StaleGuard {
    fn drop(&mut self) {
        if is_stale(&self.mp) {
            force_unmount(&self.mp);
        }
    }
}

/// Process ids whose command line is `qsfs … mount MP …` (to find a daemonized mount).
pub fn mount_pids(mp: &Path) -> Vec<i32> {
    let want = s(mp);
    let mut pids = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return pids;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(raw) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "mount") && args.iter().any(|a| a == want) {
            pids.push(pid);
        }
    }
    pids
}

/// Waits up to `timeout` for `cond`.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `qsfs --volume V ARGS…` that should return by itself (e.g. a mount that daemonizes), with its output in
/// a file rather than pipes: a daemon that kept the pipes open would otherwise hold up the reader.
#[track_caller]
pub fn qsfs_detached(
    vol: &Vol,
    args: &[&str],
    log: &Path,
    timeout: Duration,
) -> (Option<i32>, String) {
    let f = File::create(log).expect("create log");
    let mut cmd = Command::new(qsfs_bin());
    cmd.arg("--volume")
        .arg(&vol.path)
        .args(args)
        .env_remove("QSFS_VOLUME")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(f.try_clone().expect("clone log handle"))
        .stderr(f);
    let mut c = cmd.spawn().expect("spawn qsfs");
    let st = wait_timeout(&mut c, timeout);
    if st.is_none() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let text = fs::read_to_string(log).unwrap_or_default();
    assert!(
        st.is_some(),
        "`qsfs {}` did not return within {timeout:?}; output:\n{text}",
        args.join(" ")
    );
    (st.and_then(|s| s.code()), text)
}
