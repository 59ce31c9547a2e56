//! `RedisServer`: a real `redis-server` process for tests, on a free loopback port with its own data directory.
//!
//! Tests of the redis store (and integration tests that kill a store mid-run) need the genuine server, not a
//! mock, so its durability and error behaviour are the real ones. The process is configured for durability
//! (append-only file, fsync always, no RDB snapshots) and killed with SIGKILL on `kill()` and on drop.
//!
//! `start_tls` also opens a TLS port whose certificate is signed by a throwaway
//! CA made with the `openssl` command in the server's directory. The certificate names `localhost` only, so
//! `rediss://127.0.0.1:…` is a name mismatch tests can provoke.

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
    /// The TLS port, when started with `start_tls`.
    tls_port: Option<u16>,
    // Owns the temp dir so it lives as long as the server (and is removed after it).
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a free 127.0.0.1 port and waits until it answers PING.
    ///
    /// Fails with `ErrorKind::NotFound` and an install hint when `redis-server` is not on PATH.
    pub fn start() -> io::Result<RedisServer> {
        RedisServer::start_with(false)
    }

    /// Like `start`, plus a TLS port (see `tls_uri`) whose certificate a fresh test CA signed.
    pub fn start_tls() -> io::Result<RedisServer> {
        RedisServer::start_with(true)
    }

    fn start_with(tls: bool) -> io::Result<RedisServer> {
        let dir = tempfile::Builder::new().prefix("qsfs-redis-").tempdir()?;
        if tls {
            make_test_certificates(dir.path())?;
        }
        // A port picked by binding port 0 can be taken by someone else before redis binds it: retry a few times.
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            let tls_port = if tls { Some(free_port()?) } else { None };
            match spawn(port, tls_port, dir.path()) {
                Ok(child) => {
                    return Ok(RedisServer {
                        child: Some(child),
                        port,
                        tls_port,
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

    /// The `rediss://` URI of database 0 on the TLS port, trusting the test CA (servers from `start_tls`).
    pub fn tls_uri(&self) -> Option<String> {
        let port = self.tls_port?;
        Some(format!(
            "rediss://localhost:{port}/0?ca-file={}",
            self.ca_file().display()
        ))
    }

    /// The test CA's certificate (PEM), for servers from `start_tls`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
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
            match spawn(self.port, self.tls_port, self.dir.path()) {
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

/// Runs `openssl` with `args` in `dir`, failing with its stderr.
fn openssl(dir: &Path, args: &[&str]) -> io::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run openssl: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "openssl {}: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A CA (`ca.crt`) and a server certificate it signed (`server.crt`, `server.key`) for `localhost`.
fn make_test_certificates(dir: &Path) -> io::Result<()> {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=qsfs test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
    openssl(dir, &ca)?;
    let mut csr = vec!["req", "-subj", "/CN=localhost"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(dir, &csr)?;
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n")?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ],
    )
}

/// Spawns redis-server on `port` (and `tls_port`) and waits for PING; kills the child if it never answers.
fn spawn(port: u16, tls_port: Option<u16>, dir: &Path) -> io::Result<Child> {
    let log: PathBuf = dir.join("redis.log");
    let mut command = Command::new("redis-server");
    if let Some(tls_port) = tls_port {
        command
            .args(["--tls-port", &tls_port.to_string()])
            .args([
                "--tls-cert-file",
                "server.crt",
                "--tls-key-file",
                "server.key",
            ])
            .args(["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"]);
    }
    let mut child = command
        .current_dir(dir)
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
