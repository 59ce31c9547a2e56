//! The redis store's bounded side: every command whose reply carries data (GET, GETRANGE, SCAN, INFO, the
//! identity marker) goes over `resp` connections of its own, each reply bounded by what the caller expects.
//!
//! The redis crate buffers a whole reply before anyone can look at its length, so a lying server's
//! `$4000000000` (or `*2147483647`) would cost gigabytes there; here a length is checked against the limit as
//! soon as its header arrives. Connections log in as the store's (AUTH, SELECT), run TLS for `rediss://`, and are
//! pooled once a reply has been read whole.

use std::time::Duration;

use crate::error::{Result, StoreError};
use crate::resp::{Limits, Pool, Reply, RespConn};
use crate::resp::{classify_server_message, unexpected_reply};
use crate::tls::TlsClient;

/// What a bounded connection needs to reach and log in to the server.
pub(super) struct Target {
    pub host: String,
    pub port: u16,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: Option<TlsClient>,
}

/// Bounded connections to one redis server.
pub(super) struct Reader {
    uri: String,
    target: Target,
    pool: Pool,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl Reader {
    pub fn new(
        uri: &str,
        target: Target,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Reader {
        Reader {
            uri: uri.to_string(),
            target,
            pool: Pool::new(),
            connect_timeout,
            response_timeout,
        }
    }

    /// Sends `commands` in one round trip on a pooled (or new) connection and returns their replies; a server
    /// error reply comes back as `Reply::Error` for the caller to judge. All commands must be idempotent: a
    /// pooled connection the server closed meanwhile is replaced and the commands sent once more.
    pub async fn pipeline(&self, commands: &[(&[&[u8]], Limits)]) -> Result<Vec<Reply>> {
        let pooled = self.pool.take();
        let was_pooled = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect().await?,
        };
        let replies = match conn.pipeline(commands).await {
            Err(e) if was_pooled && e.is_retryable() => {
                conn = self.connect().await?;
                conn.pipeline(commands).await?
            }
            other => other?,
        };
        // Every reply was read whole: the connection is in a known state and can serve the next request.
        self.pool.give(conn);
        Ok(replies)
    }

    /// One command, one reply (see `pipeline`).
    pub async fn request(&self, args: &[&[u8]], limits: Limits) -> Result<Reply> {
        let mut replies = self.pipeline(&[(args, limits)]).await?;
        replies.pop().ok_or_else(|| self.protocol("no reply"))
    }

    /// A new logged-in connection (TLS, AUTH and SELECT as configured).
    async fn connect(&self) -> Result<RespConn> {
        let t = &self.target;
        let (connect, respond) = (self.connect_timeout, self.response_timeout);
        let mut conn = match &t.tls {
            Some(tls) => RespConn::tls(&t.host, t.port, &self.uri, tls, connect, respond).await?,
            None => RespConn::tcp(&t.host, t.port, &self.uri, connect, respond).await?,
        };
        let ok = Limits::bulk(0);
        if let Some(pw) = &t.password {
            let reply = match &t.username {
                Some(u) => {
                    conn.request(&[b"AUTH", u.as_bytes(), pw.as_bytes()], &ok)
                        .await?
                }
                None => conn.request(&[b"AUTH", pw.as_bytes()], &ok).await?,
            };
            self.expect_ok("AUTH", reply)?;
        }
        if t.db != 0 {
            let db = t.db.to_string();
            let reply = conn.request(&[b"SELECT", db.as_bytes()], &ok).await?;
            self.expect_ok("SELECT", reply)?;
        }
        Ok(conn)
    }

    fn expect_ok(&self, what: &str, reply: Reply) -> Result<()> {
        match reply {
            Reply::Status(s) if s == "OK" => Ok(()),
            other => Err(self.unexpected(what, other)),
        }
    }

    /// A reply that is not what `what` answers: the server's own error, classified, or a protocol error.
    pub fn unexpected(&self, what: &str, reply: Reply) -> StoreError {
        match reply {
            Reply::Error(m) => classify_server_message(self.uri.clone(), m),
            other => unexpected_reply(&self.uri, what, &other),
        }
    }

    fn protocol(&self, reason: &str) -> StoreError {
        StoreError::Protocol {
            uri: self.uri.clone(),
            reason: reason.to_string(),
        }
    }
}

/// An integer reply (RESP integer, or a number in a bulk string as SCAN's cursor is).
pub(super) fn reply_int(r: &Reply) -> Option<i64> {
    match r {
        Reply::Int(n) => Some(*n),
        Reply::Bulk(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Reply::Status(s) => s.parse().ok(),
        _ => None,
    }
}
