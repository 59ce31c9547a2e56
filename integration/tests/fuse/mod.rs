//! End-to-end tests of `qsfs mount`: real FUSE mounts of real volumes, driven by ordinary programs (`cp -a`,
//! `diff -r`, `tar`, the `sqlite3` CLI) and by writers that check the durability promise — when fsync or close
//! returns 0 the data survives a `kill -9` of the mount and a store dying mid-write.
//!
//! Every test needs root and `/dev/fuse` (it is mode 0600 here); without them it prints a skip notice and passes.
//! POSIX conformance (pjdfstest) and random I/O (fsx) run on mounts from `integration/run-tests.sh`, not here.
//!
//! [`mount::Mount`] owns one `qsfs --volume V mount MP --foreground` child: it waits until MP shows up as a FUSE
//! mount in `/proc/self/mounts`, and on drop unmounts (`qsfs umount`, then `umount -l` / `fusermount3 -uz`) and
//! kills the child. A watchdog SIGKILLs a mount that outlives [`mount::MOUNT_DEADLINE`], so a hung filesystem fails
//! its test (every blocked syscall returns ENOTCONN) instead of hanging the whole suite.

pub mod mount;

mod control;
mod crash;
mod fstab;
pub mod full_disk;
mod lifecycle;
mod metrics;
mod offline;
mod packs;
mod posix;
mod redis;
mod sqlite;
mod trees;
pub mod writer;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether FUSE tests can run here: root (for /dev/fuse, mode 0600) and `/dev/fuse` present. Prints a skip notice
/// naming the test when not.
pub fn fuse_available(test: &str) -> bool {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("SKIP {test}: /dev/fuse is missing (FUSE tests need the fuse kernel module)");
        return false;
    }
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIP {test}: not root (/dev/fuse is 0600 here; FUSE tests mount as root)");
        return false;
    }
    true
}

/// The outcome of an external command.
#[derive(Debug)]
pub struct Out {
    pub what: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    pub fn describe(&self) -> String {
        fn clip(s: &str) -> &str {
            let mut end = s.len().min(6000);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            &s[..end]
        }
        format!(
            "`{}` exited with {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            self.code,
            clip(&self.stdout),
            clip(&self.stderr)
        )
    }

    /// Asserts exit code 0 and returns stdout.
    #[track_caller]
    pub fn ok(self) -> String {
        assert!(self.success(), "command failed:\n{}", self.describe());
        self.stdout
    }
}

/// Runs `cmd` (stdin closed, output captured), killing it after `timeout`. Panics when it cannot start or times out.
pub fn run_cmd(cmd: &mut Command, timeout: Duration) -> Out {
    try_run_cmd(cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`run_cmd`], but returns failures to start or finish as `Err` (for cleanup paths that must not panic).
pub fn try_run_cmd(cmd: &mut Command, timeout: Duration) -> Result<Out, String> {
    let what = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run `{what}`: {e}"))?;
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`{what}` did not finish within {timeout:?}; stderr:\n{}",
                    err.join().unwrap_or_default()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for `{what}`: {e}")),
        }
    };
    Ok(Out {
        what,
        code: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Runs `program args...` with a 10-minute timeout.
pub fn sh(program: &str, args: &[&str]) -> Out {
    run_cmd(Command::new(program).args(args), Duration::from_secs(600))
}

/// Runs `program args...` in `dir` with a 10-minute timeout.
pub fn sh_in(dir: &Path, program: &str, args: &[&str]) -> Out {
    run_cmd(
        Command::new(program).args(args).current_dir(dir),
        Duration::from_secs(600),
    )
}

/// `diff -r --no-dereference A B` (symlinks compared by target): asserts no difference.
#[track_caller]
pub fn assert_diff_r_clean(a: &Path, b: &Path) {
    let out = sh(
        "diff",
        &[
            "-r",
            "--no-dereference",
            crate::helpers::s(a),
            crate::helpers::s(b),
        ],
    );
    assert!(
        out.success() && out.stdout.is_empty(),
        "diff -r found differences:\n{}",
        out.describe()
    );
}

/// Deterministic pseudo-random bytes for record `seed` (what a writer wrote, regenerated for checking).
pub fn record_bytes(seed: u64, len: usize) -> Vec<u8> {
    use rand::rngs::StdRng;
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}
