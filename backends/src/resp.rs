//! A small RESP2 client whose every reply is bounded before it is buffered: the wire code for the replies a store
//! controls the size of (shard reads on redis, everything on 0-db).
//!
//! Why not the redis crate here: it buffers a whole reply before handing it over, so a server (or a man in the
//! middle) answering `$4000000000` or `*2147483647` makes the client allocate gigabytes before any caller can look
//! at the length. This reader checks each bulk length, array length, nesting depth, line length and the total
//! element count against [`Limits`] as soon as the header arrives, and refuses (`StoreError::Refused`) without
//! reading on. A connection that saw a refused, malformed or unfinished reply is never reused: its stream position
//! is unknown.

use std::pin::Pin;
use std::time::Duration;

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
};

use crate::error::{Result, StoreError};
use crate::tls::TlsClient;

/// How much of a reply this client accepts.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest bulk string, in bytes.
    pub max_bulk: u64,
    /// Largest array (elements of one array).
    pub max_array: u64,
    /// Deepest nesting of arrays.
    pub max_depth: usize,
    /// Most elements in the whole reply, all arrays together.
    pub max_elements: u64,
}

impl Limits {
    /// For a reply expected to be one bulk string of at most `max_bulk` bytes (or nil, or an error).
    pub fn bulk(max_bulk: u64) -> Limits {
        Limits {
            max_bulk,
            max_array: 0,
            max_depth: 0,
            max_elements: 1,
        }
    }
}

/// Longest status, error or header line (0-db's and redis's longest texts are far shorter).
const MAX_LINE: usize = 4096;
/// Arrays are preallocated only up to this many elements: a declared length is a claim, not a fact.
const PREALLOC: usize = 64;

/// One RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Reply>),
}

/// Why a reply was not accepted: the caller turns it into a `StoreError` naming its store.
fn refused(uri: &str, reason: String) -> StoreError {
    StoreError::Refused {
        uri: uri.to_string(),
        reason,
    }
}

fn protocol(uri: &str, reason: String) -> StoreError {
    StoreError::Protocol {
        uri: uri.to_string(),
        reason,
    }
}

fn broken(uri: &str, e: std::io::Error) -> StoreError {
    StoreError::Unavailable {
        uri: uri.to_string(),
        reason: format!("connection: {e}"),
    }
}

/// Reads one line up to `\r\n`, at most `MAX_LINE` bytes, without the terminator.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, uri: &str) -> Result<Vec<u8>> {
    let mut line = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE as u64 + 2)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| broken(uri, e))?;
    if n == 0 {
        return Err(broken(uri, std::io::ErrorKind::UnexpectedEof.into()));
    }
    if !line.ends_with(b"\r\n") {
        return Err(if line.len() > MAX_LINE {
            refused(uri, format!("reply line longer than {MAX_LINE} bytes"))
        } else {
            broken(uri, std::io::ErrorKind::UnexpectedEof.into())
        });
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn parse_int(uri: &str, text: &[u8]) -> Result<i64> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse::<i64>().ok())
        .ok_or_else(|| {
            protocol(
                uri,
                format!("bad length or integer {:?}", String::from_utf8_lossy(text)),
            )
        })
}

/// One element's header, read and checked: a complete scalar, or an array still to be filled.
enum Head {
    Done(Reply),
    Array(u64),
}

async fn read_head<R: AsyncBufRead + Unpin>(r: &mut R, limits: &Limits, uri: &str) -> Result<Head> {
    let line = read_line(r, uri).await?;
    let Some((&kind, rest)) = line.split_first() else {
        return Err(protocol(uri, "empty reply line".into()));
    };
    let text = || String::from_utf8_lossy(rest).into_owned();
    Ok(Head::Done(match kind {
        b'+' => Reply::Status(text()),
        b'-' => Reply::Error(text()),
        b':' => Reply::Int(parse_int(uri, rest)?),
        b'$' => match parse_int(uri, rest)? {
            -1 => Reply::Nil,
            n if n < 0 => return Err(protocol(uri, format!("bulk length {n}"))),
            n if n as u64 > limits.max_bulk => {
                return Err(refused(
                    uri,
                    format!(
                        "reply of {n} bytes announced, at most {} expected",
                        limits.max_bulk
                    ),
                ));
            }
            n => {
                let mut data = Vec::with_capacity(n as usize);
                (&mut *r)
                    .take(n as u64)
                    .read_to_end(&mut data)
                    .await
                    .map_err(|e| broken(uri, e))?;
                let mut end = [0u8; 2];
                if data.len() as u64 != n as u64 {
                    return Err(broken(uri, std::io::ErrorKind::UnexpectedEof.into()));
                }
                r.read_exact(&mut end).await.map_err(|e| broken(uri, e))?;
                if &end != b"\r\n" {
                    return Err(protocol(uri, "bulk string not followed by CRLF".into()));
                }
                Reply::Bulk(data)
            }
        },
        b'*' => match parse_int(uri, rest)? {
            -1 => Reply::Nil,
            n if n < 0 => return Err(protocol(uri, format!("array length {n}"))),
            n if n as u64 > limits.max_array => {
                return Err(refused(
                    uri,
                    format!(
                        "array of {n} elements announced, at most {} expected",
                        limits.max_array
                    ),
                ));
            }
            n => return Ok(Head::Array(n as u64)),
        },
        other => {
            return Err(protocol(
                uri,
                format!("unknown reply type byte 0x{other:02x}"),
            ));
        }
    }))
}

/// Reads one whole reply within `limits`. Iterative (an explicit stack), so nesting costs no recursion.
pub async fn read_reply<R: AsyncBufRead + Unpin>(
    r: &mut R,
    limits: &Limits,
    uri: &str,
) -> Result<Reply> {
    // Arrays being filled: (elements so far, elements still to come).
    let mut stack: Vec<(Vec<Reply>, u64)> = Vec::new();
    let mut elements = 0u64;
    loop {
        let mut done = match read_head(r, limits, uri).await? {
            Head::Done(reply) => reply,
            Head::Array(n) => {
                if stack.len() >= limits.max_depth {
                    return Err(refused(
                        uri,
                        format!("arrays nested deeper than {}", limits.max_depth),
                    ));
                }
                elements += n;
                if elements > limits.max_elements {
                    return Err(refused(
                        uri,
                        format!("more than {} elements in one reply", limits.max_elements),
                    ));
                }
                if n > 0 {
                    stack.push((Vec::with_capacity((n as usize).min(PREALLOC)), n));
                    continue;
                }
                Reply::Array(Vec::new())
            }
        };
        // Attach the finished element to its array; close every array it completes.
        loop {
            let Some((items, left)) = stack.last_mut() else {
                return Ok(done);
            };
            items.push(done);
            *left -= 1;
            if *left > 0 {
                break;
            }
            let (items, _) = stack.pop().expect("just looked");
            done = Reply::Array(items);
        }
    }
}

/// A command in RESP's wire form: an array of bulk strings.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The byte stream under a connection: plain TCP, or TLS over it.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One connection speaking RESP2 with bounded replies.
pub struct RespConn {
    io: tokio::io::BufReader<Pin<Box<dyn Stream>>>,
    uri: String,
    timeout: Duration,
}

impl RespConn {
    /// Wraps an established stream; every request must be answered within `timeout`.
    pub fn new(stream: Box<dyn Stream>, uri: &str, timeout: Duration) -> RespConn {
        RespConn {
            io: tokio::io::BufReader::new(Box::into_pin(stream)),
            uri: uri.to_string(),
            timeout,
        }
    }

    /// Opens a TCP connection within `connect_timeout`.
    pub async fn tcp(
        host: &str,
        port: u16,
        uri: &str,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<RespConn> {
        let stream = connect_tcp(host, port, uri, connect_timeout).await?;
        Ok(RespConn::new(Box::new(stream), uri, timeout))
    }

    /// Opens a TCP connection and runs the TLS handshake over it, both within `connect_timeout`.
    pub async fn tls(
        host: &str,
        port: u16,
        uri: &str,
        tls: &TlsClient,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<RespConn> {
        let stream = connect_tcp(host, port, uri, connect_timeout).await?;
        let stream = tokio::time::timeout(connect_timeout, tls.handshake(stream, host, uri))
            .await
            .map_err(|_| StoreError::Unavailable {
                uri: uri.to_string(),
                reason: format!("TLS handshake: no answer within {connect_timeout:?}"),
            })??;
        Ok(RespConn::new(Box::new(stream), uri, timeout))
    }

    /// Sends one command and reads its reply within the limits and the timeout. After an `Err` the connection
    /// must be dropped.
    pub async fn request(&mut self, args: &[&[u8]], limits: &Limits) -> Result<Reply> {
        let mut replies = self.pipeline(&[(args, *limits)]).await?;
        Ok(replies.pop().unwrap_or(Reply::Nil))
    }

    /// Sends several commands in one write and reads their replies in order, each within its own limits, all
    /// within the timeout. After an `Err` the connection must be dropped.
    pub async fn pipeline(&mut self, commands: &[(&[&[u8]], Limits)]) -> Result<Vec<Reply>> {
        let exchange = async {
            let mut out = Vec::new();
            for (args, _) in commands {
                out.extend_from_slice(&encode(args));
            }
            self.io
                .write_all(&out)
                .await
                .map_err(|e| broken(&self.uri, e))?;
            self.io.flush().await.map_err(|e| broken(&self.uri, e))?;
            let mut replies = Vec::with_capacity(commands.len());
            for (_, limits) in commands {
                replies.push(read_reply(&mut self.io, limits, &self.uri).await?);
            }
            Ok(replies)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable {
                uri: self.uri.clone(),
                reason: format!("no reply within {:?}", self.timeout),
            }),
        }
    }
}

async fn connect_tcp(
    host: &str,
    port: u16,
    uri: &str,
    connect_timeout: Duration,
) -> Result<tokio::net::TcpStream> {
    let stream = tokio::time::timeout(
        connect_timeout,
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .map_err(|_| StoreError::Unavailable {
        uri: uri.to_string(),
        reason: format!("connect: no answer within {connect_timeout:?}"),
    })?
    .map_err(|e| StoreError::Unavailable {
        uri: uri.to_string(),
        reason: format!("connect: {e}"),
    })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Idle connections of one store, reused by later requests. Only connections whose last reply was read whole go
/// back in.
pub struct Pool {
    idle: std::sync::Mutex<Vec<RespConn>>,
}

/// Idle connections kept per store.
const POOL_IDLE: usize = 8;

impl Pool {
    pub fn new() -> Pool {
        Pool {
            idle: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn take(&self) -> Option<RespConn> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    pub fn give(&self, conn: RespConn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < POOL_IDLE {
            idle.push(conn);
        }
    }

    /// Drops every idle connection (after the server was found to misbehave, or to force a reconnect).
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl Default for Pool {
    fn default() -> Self {
        Pool::new()
    }
}

mod replies;
pub(crate) use replies::{
    CONNECT_TIMEOUT, RESPONSE_TIMEOUT, classify_server_message, info_field, unexpected_reply,
};

#[cfg(test)]
mod tests;
