//! `ZdbTestServer`: a protocol-level 0-db server for tests, in memory, on a loopback port.
//!
//! It speaks 0-db's reduced RESP (requests must be arrays of bulk strings; a bulk over 8 MiB gets
//! `-Payload too big` and the connection is closed) and models the commands qsfs and its tests use, with the
//! real server's reply texts (see `zdb_commands`). It runs on its own thread with its own tokio runtime, so
//! synchronous tests (which run the real qsfs binary against it) can use it as well as async ones. Dropping it
//! stops it and closes every connection.
//!
//! Test levers beyond the protocol: create namespaces directly (with a password, mode, size limit), damage a
//! stored value, count entries, drop every client connection (clients must reconnect and re-authenticate), or
//! take the server "down" (connections are closed at once) and bring it back with its data.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::zdb_commands::{MAX_PAYLOAD, Reply, Session, State};
pub use super::zdb_commands::{NamespaceOptions, NsMode, ZdbServerMode, secure_hash};

/// Longest request header line we accept (`*N` / `$N`): anything longer is garbage.
const MAX_LINE: usize = 64;
/// 0-db refuses requests with more arguments than this.
const MAX_ARGS: usize = 1024;

/// How to run the server (`--mode`, `--admin`, and what NSINFO reports as free disk).
#[derive(Clone, Debug)]
pub struct ZdbServerConfig {
    pub mode: ZdbServerMode,
    /// `None`: every client is admin (as without `--admin`).
    pub admin_password: Option<String>,
    /// Reported as `data_disk_freespace_bytes` / `index_disk_freespace_bytes`.
    pub disk_free_bytes: u64,
}

impl Default for ZdbServerConfig {
    fn default() -> Self {
        ZdbServerConfig {
            mode: ZdbServerMode::Mixed,
            admin_password: None,
            disk_free_bytes: 1 << 40,
        }
    }
}

struct Shared {
    state: Mutex<State>,
    down: AtomicBool,
    /// Bumped to make every connection close (drop_connections / down / shutdown).
    kick: watch::Sender<u64>,
    /// Open connections: id -> the kick generation current when it was accepted.
    open: Mutex<HashMap<u64, u64>>,
    next_conn: AtomicU64,
    shutdown: watch::Sender<bool>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running in-memory 0-db protocol server; stopped when dropped.
pub struct ZdbTestServer {
    /// The loopback address the server listens on.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ZdbTestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZdbTestServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl ZdbTestServer {
    /// Binds 127.0.0.1 on a free port and starts serving on a background thread.
    pub fn start(config: ZdbServerConfig) -> std::io::Result<ZdbTestServer> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(
                config.mode,
                config.admin_password,
                config.disk_free_bytes,
            )),
            down: AtomicBool::new(false),
            kick: watch::channel(0).0,
            open: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            shutdown: watch::channel(false).0,
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("zdb-test-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(accept_loop(listener, s));
                // Dropping the runtime cancels the connection tasks, closing their sockets.
                drop(runtime);
            })?;
        Ok(ZdbTestServer {
            addr,
            shared,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Creates a namespace with default options (public, no password, the server's mode).
    pub fn create_namespace(&self, name: &str, password: Option<&str>) -> Result<(), String> {
        let opts = NamespaceOptions {
            password: password.map(str::to_string),
            ..NamespaceOptions::default()
        };
        self.create_namespace_with(name, &opts)
    }

    pub fn create_namespace_with(&self, name: &str, opts: &NamespaceOptions) -> Result<(), String> {
        self.shared.state().create_namespace(name, opts)
    }

    /// The mode a namespace runs in, if it exists.
    pub fn namespace_mode(&self, name: &str) -> Option<NsMode> {
        self.shared.state().namespace_mode(name)
    }

    /// A `zdb://` URI for a namespace of this server (mode taken from the namespace).
    pub fn uri(&self, namespace: &str, password_file: Option<&Path>) -> String {
        let mode = match self.namespace_mode(namespace) {
            Some(NsMode::Seq) => "seq",
            _ => "user",
        };
        let mut uri = format!("zdb://127.0.0.1:{}/{namespace}?mode={mode}", self.port());
        if let Some(p) = password_file {
            uri += &format!("&password-file={}", p.display());
        }
        uri
    }

    /// Live entries in a namespace (`DBSIZE`), if it exists.
    pub fn entry_count(&self, namespace: &str) -> Option<usize> {
        self.shared.state().live_count(namespace)
    }

    /// Flips a bit in the middle of the stored value of `key` (a shard key or an 8-byte seq id), as bit rot on
    /// the server would. False if there is no such live entry.
    pub fn corrupt_value(&self, namespace: &str, key: &[u8]) -> bool {
        self.shared.state().corrupt(namespace, key)
    }

    /// Closes every client connection and returns once they are closed (clients must reconnect and
    /// authenticate again). Connections made after the call are not affected.
    pub fn drop_connections(&self) {
        let mut generation = 0;
        self.shared.kick.send_modify(|n| {
            *n += 1;
            generation = *n;
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            let open = self.shared.open.lock().unwrap_or_else(|p| p.into_inner());
            if open.values().all(|&g| g >= generation) {
                return;
            }
            drop(open);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// While down, every connection is closed as soon as it is accepted and existing ones are dropped; data is
    /// kept for when the server comes back up.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        if down {
            self.drop_connections();
        }
    }
}

impl Drop for ZdbTestServer {
    fn drop(&mut self) {
        let _ = self.shared.shutdown.send(true);
        self.drop_connections();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("zdb test server: cannot listen: {e}");
            return;
        }
    };
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                if shared.down.load(Ordering::SeqCst) {
                    drop(stream);
                    continue;
                }
                // Registered before the task runs, so drop_connections sees every accepted connection.
                let mut kick = shared.kick.subscribe();
                let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
                shared.open.lock().unwrap_or_else(|p| p.into_inner()).insert(id, *kick.borrow_and_update());
                tokio::spawn(serve(stream, shared.clone(), id, kick));
            }
        }
    }
}

/// What reading one request produced.
enum Request {
    Args(Vec<Vec<u8>>),
    /// A protocol violation: send this error and close.
    Reject(&'static str),
}

/// Removes a connection from `Shared::open` when its task ends (or is cancelled at shutdown).
struct Registered<'a>(&'a Shared, u64);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

async fn serve(stream: TcpStream, shared: Arc<Shared>, id: u64, mut kick: watch::Receiver<u64>) {
    let _registered = Registered(&shared, id);
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let mut wr = BufWriter::with_capacity(64 * 1024, wr);
    let mut session = Session::new(&shared.state());
    loop {
        let request = tokio::select! {
            _ = kick.changed() => return,
            r = read_request(&mut rd) => r,
        };
        let (reply, close) = match request {
            Ok(Some(Request::Args(argv))) => shared.state().dispatch(&mut session, &argv),
            Ok(Some(Request::Reject(msg))) => (Reply::Error(msg.into()), true),
            Ok(None) | Err(_) => return,
        };
        let mut out = Vec::new();
        encode(&reply, &mut out);
        if wr.write_all(&out).await.is_err() || wr.flush().await.is_err() || close {
            return;
        }
    }
}

async fn read_line<R: AsyncBufReadExt + Unpin>(rd: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = (&mut *rd)
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "header line too long or truncated",
        ));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(line))
}

fn number(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}

/// Reads one `*N` array of `$len` bulk strings. `Ok(None)` at a clean end of stream.
async fn read_request<R: AsyncBufReadExt + Unpin>(rd: &mut R) -> std::io::Result<Option<Request>> {
    let Some(line) = read_line(rd).await? else {
        return Ok(None);
    };
    if line.first() != Some(&b'*') {
        return Ok(Some(Request::Reject("Malformed request, array expected")));
    }
    let argc = number(&line[1..]).unwrap_or(0);
    if argc <= 0 {
        return Ok(Some(Request::Reject("Missing arguments")));
    }
    if argc as usize > MAX_ARGS {
        return Ok(Some(Request::Reject("Too many arguments")));
    }
    let mut argv = Vec::with_capacity(argc as usize);
    for _ in 0..argc {
        let Some(header) = read_line(rd).await? else {
            return Ok(None);
        };
        if header.first() != Some(&b'$') {
            return Ok(Some(Request::Reject("Malformed query string")));
        }
        let len = number(&header[1..]).unwrap_or(-1);
        if len < 0 {
            return Ok(Some(Request::Reject("Malformed query string")));
        }
        if len as usize > MAX_PAYLOAD {
            return Ok(Some(Request::Reject("Payload too big")));
        }
        let mut buf = vec![0u8; len as usize + 2];
        rd.read_exact(&mut buf).await?;
        buf.truncate(len as usize);
        argv.push(buf);
    }
    Ok(Some(Request::Args(argv)))
}

fn encode(reply: &Reply, out: &mut Vec<u8>) {
    match reply {
        Reply::Simple(s) => out.extend_from_slice(format!("+{s}\r\n").as_bytes()),
        Reply::Error(s) => out.extend_from_slice(format!("-{s}\r\n").as_bytes()),
        Reply::Int(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
        Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
        Reply::Bulk(b) => {
            out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        }
        Reply::Array(items) => {
            out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
            for i in items {
                encode(i, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_zdb() {
        let mut out = Vec::new();
        encode(
            &Reply::Array(vec![
                Reply::Bulk(b"k".to_vec()),
                Reply::Int(3),
                Reply::Nil,
                Reply::Error("Key not found".into()),
            ]),
            &mut out,
        );
        assert_eq!(out, b"*4\r\n$1\r\nk\r\n:3\r\n$-1\r\n-Key not found\r\n");
    }
}
