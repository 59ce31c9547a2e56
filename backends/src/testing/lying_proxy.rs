//! A TCP proxy in front of a RESP server (a real redis-server, the 0-db test server) that lies on command: it
//! relays every request to the server and every reply back, except the replies to shard reads (`GET` of any key
//! but the identity marker) — or, after `lie_to_everything(true)`, to every command but the log-in ones — which it
//! rewrites as the current [`Lie`] says: the hostile store or man in the middle the bounded readers and hedged
//! reads are tested against.
//!
//! Thread-based and synchronous, so it serves tokio tests and the integration tests' qsfs processes alike.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the proxy answers shard reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lie {
    /// Relays the server's reply.
    Honest,
    /// `$4000000000` and then junk bytes for as long as the client reads.
    HugeBulk,
    /// `*2147483647` and then `:1` elements for as long as the client reads.
    HugeArray,
    /// `*1` nested without end.
    DeepArray,
    /// No reply at all; the connection stays open until the client gives up.
    Stall,
    /// An error reply full of terminal escape sequences (retitle, recolour, clear screen).
    Escapes,
    /// These bytes instead of the shard asked for (another shard's, say).
    Swap(Vec<u8>),
}

/// The error text `Lie::Escapes` sends.
pub const ESCAPE_ERROR: &str = "ERR \x1b]0;pwned\x07\x1b[2J\x1b[31mstore says hi\x1b[0m";

struct Shared {
    upstream: SocketAddr,
    lie: Mutex<Lie>,
    lies_told: AtomicU64,
    /// Lie to every command (but AUTH/SELECT), not just shard reads.
    everything: AtomicBool,
    stop: AtomicBool,
}

/// The running proxy; stops accepting when dropped.
pub struct LyingProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl LyingProxy {
    /// Listens on a free local port and relays to `upstream`, honestly until told otherwise.
    pub fn start(upstream: SocketAddr) -> io::Result<LyingProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            lie: Mutex::new(Lie::Honest),
            lies_told: AtomicU64::new(0),
            everything: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(&s, client);
                });
            }
        });
        Ok(LyingProxy { addr, shared })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn set_lie(&self, lie: Lie) {
        *self.shared.lie.lock().unwrap_or_else(|p| p.into_inner()) = lie;
    }

    /// Whether the lie answers every command (listings, INFO, range reads, the identity marker…) rather than
    /// shard reads only. Log-in commands (AUTH, SELECT) are always relayed.
    pub fn lie_to_everything(&self, on: bool) {
        self.shared.everything.store(on, Ordering::Relaxed);
    }

    /// How many replies were lies so far.
    pub fn lies_told(&self) -> u64 {
        self.shared.lies_told.load(Ordering::Relaxed)
    }
}

impl Drop for LyingProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Relays one client connection, command by command.
fn serve(shared: &Shared, client: TcpStream) -> io::Result<()> {
    let server = TcpStream::connect(shared.upstream)?;
    let mut from_client = BufReader::new(client.try_clone()?);
    let mut to_client = client;
    let mut from_server = BufReader::new(server.try_clone()?);
    let mut to_server = server;
    loop {
        let (raw, args) = read_value(&mut from_client)?;
        to_server.write_all(&raw)?;
        let (reply, _) = read_value(&mut from_server)?;
        let is_shard_read = args.len() == 2
            && args[0].eq_ignore_ascii_case(b"GET")
            && args[1].as_slice() != b"qsfs:identity";
        let is_login = args
            .first()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"AUTH") || c.eq_ignore_ascii_case(b"SELECT"));
        let targeted = is_shard_read || (shared.everything.load(Ordering::Relaxed) && !is_login);
        let lie = shared.lie.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if !targeted || lie == Lie::Honest {
            to_client.write_all(&reply)?;
            continue;
        }
        shared.lies_told.fetch_add(1, Ordering::Relaxed);
        match lie {
            Lie::Honest => unreachable!("relayed above"),
            Lie::HugeBulk => return stream(&mut to_client, b"$4000000000\r\n", &[b'x'; 65536]),
            Lie::HugeArray => {
                return stream(&mut to_client, b"*2147483647\r\n", &b":1\r\n".repeat(16384));
            }
            Lie::DeepArray => return stream(&mut to_client, b"", &b"*1\r\n".repeat(16384)),
            Lie::Stall => {
                // Hold the connection without a word until the client closes it.
                let mut sink = [0u8; 4096];
                while from_client.read(&mut sink)? > 0 {}
                let _ = to_server.shutdown(Shutdown::Both);
                return Ok(());
            }
            Lie::Escapes => to_client.write_all(format!("-{ESCAPE_ERROR}\r\n").as_bytes())?,
            Lie::Swap(bytes) => {
                to_client.write_all(format!("${}\r\n", bytes.len()).as_bytes())?;
                to_client.write_all(&bytes)?;
                to_client.write_all(b"\r\n")?;
            }
        }
    }
}

/// Writes `head` and then `chunk` over and over until the client stops reading (a bounded client closes the
/// connection as soon as it has seen the header). Gives up after a minute, whatever happens.
fn stream(to: &mut TcpStream, head: &[u8], chunk: &[u8]) -> io::Result<()> {
    to.set_write_timeout(Some(Duration::from_secs(60)))?;
    to.write_all(head)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        to.write_all(chunk)?;
    }
    Ok(())
}

/// Reads one RESP value from an honest peer: its raw bytes and, for an array of bulk strings (a command), the
/// strings. Test servers use it to read the commands a client sends.
pub fn read_value(r: &mut BufReader<TcpStream>) -> io::Result<(Vec<u8>, Vec<Vec<u8>>)> {
    let mut line = Vec::new();
    if r.read_until(b'\n', &mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let mut raw = line.clone();
    let mut args = Vec::new();
    let n = std::str::from_utf8(line.get(1..line.len().saturating_sub(2)).unwrap_or(&[]))
        .ok()
        .and_then(|t| t.parse::<i64>().ok());
    match (line.first(), n) {
        (Some(b'$'), Some(n)) if n >= 0 => {
            let mut body = vec![0; n as usize + 2];
            r.read_exact(&mut body)?;
            raw.extend_from_slice(&body);
            body.truncate(n as usize);
            args.push(body);
        }
        (Some(b'*'), Some(n)) => {
            for _ in 0..n.max(0) {
                let (inner, mut inner_args) = read_value(r)?;
                raw.extend(inner);
                args.append(&mut inner_args);
            }
        }
        _ => {}
    }
    Ok((raw, args))
}
