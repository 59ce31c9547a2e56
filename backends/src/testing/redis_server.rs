//! `RedisServer`: a real `redis-server` process for tests, on a free loopback port with its own data directory.
//!
//! Tests of the redis store (and integration tests that kill a store mid-run) need the genuine server, not a
//! mock, so its durability and error behaviour are the real ones. The process is configured for durability
//! (append-only file, fsync always, no RDB snapshots) and killed with SIGKILL on `kill()` and on drop.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh server may take to answer PING before we give up.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `redis-server` child process; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    // Owns the temp dir so it lives as long as the server (and is removed after it).
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a free 127.0.0.1 port and waits until it answers PING.
    ///
    /// Fails with `ErrorKind::NotFound` and an install hint when `redis-server` is not on PATH.
    pub fn start() -> io::Result<RedisServer> {
        let dir = tempfile::Builder::new().prefix("qsfs-redis-").tempdir()?;
        // A port picked by binding port 0 can be taken by someone else before redis binds it: retry a few times.
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            match spawn(port, dir.path()) {
                Ok(child) => {
                    return Ok(RedisServer {
                        child: Some(child),
                        port,
                        dir,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The store URI of database 0 on this server.
    pub fn uri(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The server's working directory (holds the append-only files and `redis.log`).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the server with SIGKILL (no clean shutdown, like a crash or power loss of the process) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data directory (after `kill`), so the append-only file is
    /// replayed: what was acknowledged before the kill must be there again.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        // The old socket may linger briefly; spawn retries until the deadline.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match spawn(self.port, self.dir.path()) {
                Ok(child) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound || Instant::now() > deadline => {
                    return Err(e);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// Spawns redis-server on `port` and waits for PING; kills the child if it never answers.
fn spawn(port: u16, dir: &Path) -> io::Result<Child> {
    let log: PathBuf = dir.join("redis.log");
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args(["--save", "", "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no"])
        .arg("--logfile")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "redis-server not found on PATH: install it with `apt-get install -y redis-server`",
                )
            } else {
                io::Error::new(e.kind(), format!("cannot run redis-server: {e}"))
            }
        })?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: String = tail.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
            return Err(io::Error::other(format!(
                "redis-server exited at start ({status}): {tail}"
            )));
        }
        if ping(port) {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "redis-server did not answer PING in time",
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True when something on `port` answers `PING` with `+PONG` (a loading server answers `-LOADING`, not ready).
fn ping(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    &buf[..got] == b"+PONG\r\n"
}
