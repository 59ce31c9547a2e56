//! Helpers for driving the real `qsfs` binary: locating it, running it against a temporary volume with a
//! timeout, and checking its exit codes and error lines.
//!
//! Every run goes through [`run_qsfs`], which kills the child after [`COMMAND_TIMEOUT`] so a hung binary (for
//! example one retrying a dead store forever) fails its test instead of hanging the whole suite.

#![allow(dead_code)] // Not every test binary uses every helper.

pub mod forwarder;
pub mod s3;
pub mod status;
pub mod stores;
pub mod tree;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use status::Status;

/// The longest any single `qsfs` invocation may take (the 100 MiB put/get in a debug build included).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// The root of the Cargo workspace (the parent of this package's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}

/// The `qsfs` binary under test: `$QSFS_BIN`, else `$CARGO_TARGET_DIR/debug/qsfs`, else
/// `<workspace>/target/debug/qsfs`. Panics with a build hint when it does not exist.
pub fn qsfs_bin() -> PathBuf {
    let bin = if let Some(p) = std::env::var_os("QSFS_BIN") {
        PathBuf::from(p)
    } else if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        let t = if t.is_absolute() {
            t
        } else {
            workspace_root().join(t)
        };
        t.join("debug").join("qsfs")
    } else {
        workspace_root().join("target").join("debug").join("qsfs")
    };
    assert!(
        bin.is_file(),
        "the qsfs binary is missing at {}: build it with `cargo build -p qsfs` (or point QSFS_BIN at it)",
        bin.display()
    );
    bin
}

/// A path as `&str` (all test paths are UTF-8 temp paths).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// The outcome of one `qsfs` invocation.
#[derive(Debug)]
pub struct Run {
    pub args: Vec<String>,
    /// The exit code, or `None` when the process died from a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// A multi-line description for assertion messages.
    pub fn describe(&self) -> String {
        fn clip(s: &str) -> String {
            const MAX: usize = 4000;
            if s.len() <= MAX {
                s.to_string()
            } else {
                let mut end = MAX;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{}… ({} bytes in all)", &s[..end], s.len())
            }
        }
        format!(
            "`qsfs {}` exited with {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.code,
            clip(&self.stdout),
            clip(&self.stderr)
        )
    }

    /// Asserts exit code 0 and returns stdout.
    #[track_caller]
    pub fn ok(self) -> String {
        assert_eq!(self.code, Some(0), "expected success:\n{}", self.describe());
        self.stdout
    }

    /// Asserts the given exit code and returns stderr.
    #[track_caller]
    pub fn code(self, code: i32) -> String {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit code {code}:\n{}",
            self.describe()
        );
        self.stderr
    }

    /// Asserts an operation failure: exit code 1 and exactly one stderr line starting `qsfs: `. Returns that line.
    #[track_caller]
    pub fn failed(self) -> String {
        let d = self.describe();
        let stderr = self.code(1);
        error_line(&stderr, &d)
    }
}

/// Checks that `stderr` holds exactly one error line, starting `qsfs: `, as its last line, and returns it.
///
/// Log lines before it (e.g. `WARN store marked down …`) are tolerated: the spec makes the *error* one line, and
/// a store going down mid-command is worth a warning. A multi-line error (a continuation after the `qsfs: ` line,
/// or two `qsfs: ` lines) is not.
#[track_caller]
pub fn error_line(stderr: &str, describe: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let errors = lines.iter().filter(|l| l.starts_with("qsfs: ")).count();
    assert_eq!(
        errors, 1,
        "want exactly one stderr line starting `qsfs: `:\n{describe}"
    );
    let last = lines.last().expect("one error line");
    assert!(
        last.starts_with("qsfs: "),
        "the `qsfs: ` error must be the last stderr line (one line):\n{describe}"
    );
    last.to_string()
}

/// Runs `qsfs` with `args` (plus `envs`), killing it after [`COMMAND_TIMEOUT`].
pub fn run_qsfs(args: &[&str], envs: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(qsfs_bin());
    cmd.args(args)
        // Keep the environment from leaking into the test: no default volume override, no log noise on stderr.
        .env_remove("QSFS_VOLUME")
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    run_with_timeout(
        cmd,
        args.iter().map(|a| a.to_string()).collect(),
        COMMAND_TIMEOUT,
    )
}

fn run_with_timeout(mut cmd: Command, args: Vec<String>, timeout: Duration) -> Run {
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()));
    // Drain both pipes on their own threads so a chatty child never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().expect("wait for qsfs") {
            Some(st) => break st,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = err.join().unwrap_or_default();
                panic!(
                    "`qsfs {}` did not finish within {timeout:?}; stderr:\n{stderr}",
                    args.join(" ")
                );
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    Run {
        args,
        code: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// A temporary volume directory (not created: `qsfs init` creates it) with a scratch area beside it.
pub struct Vol {
    tmp: tempfile::TempDir,
    pub path: PathBuf,
    /// Extra environment for every run (e.g. a passphrase variable).
    pub envs: Vec<(String, String)>,
}

impl Vol {
    pub fn new() -> Vol {
        let tmp = tempfile::Builder::new()
            .prefix("qsfs-it-")
            .tempdir()
            .expect("temp dir");
        let path = tmp.path().join("vol");
        Vol {
            tmp,
            path,
            envs: Vec::new(),
        }
    }

    /// A fresh, existing scratch directory beside the volume (for trees to put and targets to get into).
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        fs::create_dir_all(&p).expect("create scratch dir");
        p
    }

    /// A path beside the volume that does not exist yet.
    pub fn fresh_path(&self, name: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        assert!(!p.exists(), "{} already exists", p.display());
        p
    }

    /// Runs `qsfs --volume VOL args...`.
    pub fn run(&self, args: &[&str]) -> Run {
        let mut all = vec!["--volume", s(&self.path)];
        all.extend_from_slice(args);
        let envs: Vec<(&str, &str)> = self
            .envs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        run_qsfs(&all, &envs)
    }

    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        self.run(args).ok()
    }

    /// `qsfs init` with extra options; asserts success and the volume's on-disk layout.
    #[track_caller]
    pub fn init(&self, extra: &[&str]) {
        let mut args = vec!["init"];
        args.extend_from_slice(extra);
        self.ok(&args);
        // A passphrase volume derives its key and need not keep a key file.
        let passphrase = extra.contains(&"--passphrase-env");
        for f in ["qsfs.toml", "key", "meta.db"] {
            let p = self.path.join(f);
            if f == "key" && passphrase {
                continue;
            }
            assert!(p.is_file(), "init did not create {}", p.display());
        }
        assert!(
            self.path.join("cache").is_dir(),
            "init did not create {}/cache",
            self.path.display()
        );
        let key = self.path.join("key");
        if key.exists() {
            let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(
                mode,
                0o600,
                "{} has mode {mode:o}, want 0600",
                key.display()
            );
        }
    }

    /// `qsfs init` with the default (embedded dir) stores, checking they exist at VOLUME/stores/0..5.
    #[track_caller]
    pub fn init_default(&self, extra: &[&str]) {
        self.init(extra);
        for i in 0..6 {
            let d = self.store_dir(i);
            assert!(
                d.is_dir(),
                "default init did not create store directory {}",
                d.display()
            );
        }
    }

    /// The directory of embedded dir store `i`.
    pub fn store_dir(&self, i: usize) -> PathBuf {
        self.path.join("stores").join(i.to_string())
    }

    /// `qsfs status --json`, parsed and checked against the schema.
    #[track_caller]
    pub fn status(&self) -> Status {
        let out = self.ok(&["status", "--json"]);
        Status::parse(&out)
    }

    /// `qsfs ls PATH` as a list of names.
    #[track_caller]
    pub fn ls(&self, path: &str) -> Vec<String> {
        self.ok(&["ls", path]).lines().map(str::to_string).collect()
    }
}

impl Default for Vol {
    fn default() -> Self {
        Vol::new()
    }
}

/// `n` real redis-servers, each with its own port and data directory.
pub struct Redis {
    pub servers: Vec<qsfs_backends::testing::RedisServer>,
}

impl Redis {
    pub fn start(n: usize) -> Redis {
        Redis::start_with(n, qsfs_backends::testing::RedisServer::start)
    }

    /// Servers with a TLS port each (their own test CA); `store_args` then names `rediss://` URIs.
    pub fn start_tls(n: usize) -> Redis {
        Redis::start_with(n, qsfs_backends::testing::RedisServer::start_tls)
    }

    fn start_with(
        n: usize,
        start: fn() -> std::io::Result<qsfs_backends::testing::RedisServer>,
    ) -> Redis {
        let servers = (0..n)
            .map(|i| start().unwrap_or_else(|e| panic!("cannot start redis-server #{i}: {e}")))
            .collect();
        Redis { servers }
    }

    /// `--store URI` arguments for database `db` of every server (over TLS when it has a TLS port).
    pub fn store_args(&self, db: u32) -> Vec<String> {
        self.servers
            .iter()
            .flat_map(|r| {
                let uri = match r.tls_uri() {
                    Some(tls) => tls.replace(":0?ca-file", &format!(":{db}?ca-file")),
                    None => format!("redis://127.0.0.1:{}/{db}", r.port()),
                };
                ["--store".to_string(), uri]
            })
            .collect()
    }

    /// SIGKILLs server `i`.
    pub fn kill(&mut self, i: usize) {
        self.servers[i].kill();
    }
}

/// Borrows a `Vec<String>` as `Vec<&str>` for argument lists.
pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
