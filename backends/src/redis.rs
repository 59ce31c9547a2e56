//! `RedisStore`: shards as string values in a Redis database (redis crate, tokio, `ConnectionManager`).
//!
//! Keys are `qsfs:s:<hex locator>`; the identity marker is `qsfs:identity`, written with `SET NX` so it is never
//! overwritten. The locator is the shard key's 32 bytes.
//!
//! Connections are lazy: `new` does no network I/O, so a volume with a redis store down still opens; the first
//! command connects (2 s connect timeout, 30 s response timeout, one quick reconnect attempt) and a refused or
//! timed-out connection is `Unavailable`, which callers retry. The `ConnectionManager` reconnects after the
//! server comes back.
//!
//! Durability is the server's: a put is durable when it returns only with `appendonly yes` and
//! `appendfsync always` (Redis 7.0 has no `WAITAOF` to demand it per command). `probe` logs a warning once when
//! the server runs without an append-only file.
//!
//! Shard reads (`get`) do not go through the redis crate but over `resp` connections of their own, whose replies
//! are bounded by the shard length the caller expects (see `get`).
//!
//! Also home to the RESP error helpers the 0-db store shares.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    Cmd, ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisConnectionInfo, RedisError, Value,
};

use crate::error::{Result, StoreError};
use crate::resp::{Limits, Pool, Reply, RespConn};
use crate::store::{Locator, ShardKey, ShardStore, StoreHealth, StoreIdentity};
use crate::uri::StoreUri;

pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

const SHARD_PREFIX: &str = "qsfs:s:";
const IDENTITY_KEY: &str = "qsfs:identity";

/// A shard store in one Redis database.
pub struct RedisStore {
    uri: String,
    conn: ConnectionManager,
    /// Where shard reads connect: they go over `resp` connections whose replies are bounded (see `get`).
    target: Target,
    reads: Pool,
    warned_no_aof: AtomicBool,
}

/// What a raw shard-read connection needs to reach and log in to the server.
struct Target {
    host: String,
    port: u16,
    db: i64,
    username: Option<String>,
    password: Option<String>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("uri", &self.uri)
            .finish()
    }
}

impl RedisStore {
    /// Prepares a store for a `redis://` URI without connecting. Must be called inside a tokio runtime.
    pub fn new(uri: &StoreUri) -> Result<RedisStore> {
        let StoreUri::Redis {
            host,
            port,
            db,
            username,
            password,
        } = uri
        else {
            return Err(StoreError::InvalidUri {
                uri: uri.to_string(),
                reason: "not a redis:// URI".into(),
            });
        };
        let shown = uri.to_string();
        let invalid = |e: RedisError| StoreError::InvalidUri {
            uri: shown.clone(),
            reason: e.to_string(),
        };
        let mut settings = RedisConnectionInfo::default().set_db(*db);
        if let Some(u) = username {
            settings = settings.set_username(u);
        }
        // Read now (file or variable): a password that cannot be had is an error naming where it was looked for.
        let password = match password {
            Some(p) => Some(p.resolve().map_err(|reason| StoreError::Auth {
                uri: shown.clone(),
                reason,
            })?),
            None => None,
        };
        if let Some(p) = &password {
            settings = settings.set_password(p.clone());
        }
        let info = ConnectionAddr::Tcp(host.clone(), *port)
            .into_connection_info()
            .map_err(invalid)?
            .set_redis_settings(settings);
        let client = redis::Client::open(info).map_err(invalid)?;
        // One retry with a short backoff: our callers have their own retry policy, and a dead server must
        // answer Unavailable in seconds rather than after the crate's default backoff ladder.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_millis(500));
        let conn = client
            .get_connection_manager_lazy(config)
            .map_err(invalid)?;
        Ok(RedisStore {
            uri: shown,
            conn,
            target: Target {
                host: host.clone(),
                port: *port,
                db: *db,
                username: username.clone(),
                password: password.clone(),
            },
            reads: Pool::new(),
            warned_no_aof: AtomicBool::new(false),
        })
    }

    fn shard_key(loc: &Locator) -> Vec<u8> {
        let mut k = SHARD_PREFIX.as_bytes().to_vec();
        k.extend_from_slice(loc.to_hex().as_bytes());
        k
    }

    async fn query(&self, cmd: &Cmd) -> Result<Value> {
        let mut conn = self.conn.clone();
        let v = cmd
            .query_async::<Value>(&mut conn)
            .await
            .map_err(|e| map_redis_error(&self.uri, e))?;
        Ok(v)
    }

    async fn query_pipe(&self, pipe: &redis::Pipeline) -> Result<Vec<Value>> {
        let mut conn = self.conn.clone();
        pipe.query_async::<Vec<Value>>(&mut conn)
            .await
            .map_err(|e| map_redis_error(&self.uri, e))
    }

    fn unexpected(&self, what: &str, v: &Value) -> StoreError {
        unexpected_reply(&self.uri, what, v)
    }

    /// A new logged-in connection for shard reads (AUTH and SELECT as configured).
    async fn read_conn(&self) -> Result<RespConn> {
        let t = &self.target;
        let mut conn = RespConn::tcp(
            &t.host,
            t.port,
            &self.uri,
            CONNECT_TIMEOUT,
            RESPONSE_TIMEOUT,
        )
        .await?;
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
            Reply::Error(m) => Err(classify_server_message(self.uri.clone(), m)),
            other => Err(StoreError::Protocol {
                uri: self.uri.clone(),
                reason: format!("unexpected reply to {what}: {other:?}"),
            }),
        }
    }
}

/// The whole text of a server error reply (`-CODE detail`), which the redis crate splits into code and detail.
/// A failed pipeline reports its failed commands' errors together; the first one stands for the pipeline.
pub(crate) fn server_message(e: &RedisError) -> Option<String> {
    let join = |code: &str, detail: Option<&str>| match detail {
        Some(d) => format!("{code} {d}"),
        None => code.to_string(),
    };
    match e.kind() {
        ErrorKind::Server(_) | ErrorKind::Extension => match e.code() {
            Some(code) => Some(join(code, e.detail())),
            None => {
                let errors = e.clone().into_server_errors()?;
                let (_, first) = errors.first()?;
                Some(join(first.code(), first.details()))
            }
        },
        _ => None,
    }
}

/// Errors that mean the connection is gone or stuck: the request may succeed on a fresh connection.
pub(crate) fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

pub(crate) fn unexpected_reply(uri: &str, what: &str, v: &dyn std::fmt::Debug) -> StoreError {
    let mut shown = format!("{v:?}");
    if shown.len() > 200 {
        let mut cut = 200;
        while !shown.is_char_boundary(cut) {
            cut -= 1;
        }
        shown.truncate(cut);
        shown.push('…');
    }
    StoreError::Protocol {
        uri: uri.to_string(),
        reason: format!("unexpected reply to {what}: {shown}"),
    }
}

/// Maps a redis crate error to the store error that says what a caller can do about it.
fn map_redis_error(uri: &str, e: RedisError) -> StoreError {
    let uri = uri.to_string();
    if is_connection_error(&e) {
        return StoreError::Unavailable {
            uri,
            reason: e.to_string(),
        };
    }
    if e.kind() == ErrorKind::AuthenticationFailed {
        return StoreError::Auth {
            uri,
            reason: e.to_string(),
        };
    }
    let Some(msg) = server_message(&e) else {
        return StoreError::Protocol {
            uri,
            reason: e.to_string(),
        };
    };
    classify_server_message(uri, msg)
}

/// Maps a server error reply's text (`CODE detail`) to the store error that says what a caller can do about it.
fn classify_server_message(uri: String, msg: String) -> StoreError {
    let upper = msg.to_ascii_uppercase();
    if upper.starts_with("OOM") {
        StoreError::Full { uri }
    } else if upper.starts_with("NOAUTH")
        || upper.starts_with("WRONGPASS")
        || upper.starts_with("NOPERM")
        || upper.contains("INVALID PASSWORD")
        || upper.contains("INVALID USERNAME-PASSWORD")
    {
        StoreError::Auth { uri, reason: msg }
    } else if upper.starts_with("MISCONF") && upper.contains("NO SPACE LEFT") {
        StoreError::Full { uri }
    } else if upper.starts_with("LOADING")
        || upper.starts_with("MISCONF")
        || upper.starts_with("READONLY")
        || upper.starts_with("BUSY")
        || upper.starts_with("MASTERDOWN")
        || upper.starts_with("TRYAGAIN")
    {
        // The server is up but cannot serve writes right now (loading, disk trouble, demoted replica).
        StoreError::Unavailable { uri, reason: msg }
    } else {
        StoreError::Protocol { uri, reason: msg }
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// `key:value` lines of an INFO reply.
pub(crate) fn info_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn info_text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::VerbatimString { text, .. } => Some(text),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

#[async_trait]
impl ShardStore for RedisStore {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn supports_range(&self) -> bool {
        true
    }

    fn max_value_size(&self) -> Option<u64> {
        // Redis strings are capped by proto-max-bulk-len (512 MiB by default): far above any shard.
        None
    }

    async fn put(&self, key: &ShardKey, data: &[u8]) -> Result<Locator> {
        let loc = Locator::from_key(key);
        // Plain SET (not NX): a second put of a content-named shard carries the same bytes, and rewriting
        // heals a copy that was damaged on the server.
        match self
            .query(redis::cmd("SET").arg(Self::shard_key(&loc)).arg(data))
            .await?
        {
            Value::Okay => Ok(loc),
            v => Err(self.unexpected("SET", &v)),
        }
    }

    /// Over a `resp` connection, not the redis crate: the crate buffers a whole reply before anyone can look at
    /// its length, so a lying server's `$4000000000` would cost gigabytes. Here the bulk length is checked against
    /// `max_len` as soon as its header arrives. (GETRANGE 0 max_len-1 would bound an honest server only: a liar
    /// or a man in the middle answers what it likes, so the reply has to be bounded by the reader anyway.)
    async fn get(&self, loc: &Locator, max_len: u64) -> Result<Vec<u8>> {
        let args: [&[u8]; 2] = [b"GET", &Self::shard_key(loc)];
        let limits = Limits::bulk(max_len);
        let pooled = self.reads.take();
        let was_pooled = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.read_conn().await?,
        };
        let reply = match conn.request(&args, &limits).await {
            // An idle connection the server closed meanwhile: GET is idempotent, so one fresh try at once.
            Err(e) if was_pooled && e.is_retryable() => {
                conn = self.read_conn().await?;
                conn.request(&args, &limits).await?
            }
            other => other?,
        };
        // The reply was read whole: the connection is in a known state and can serve the next read.
        self.reads.give(conn);
        match reply {
            Reply::Bulk(b) => Ok(b),
            Reply::Nil => Err(StoreError::NotFound {
                uri: self.uri.clone(),
            }),
            Reply::Error(m) => Err(classify_server_message(self.uri.clone(), m)),
            other => Err(StoreError::Protocol {
                uri: self.uri.clone(),
                reason: format!("unexpected reply to GET: {other:?}"),
            }),
        }
    }

    async fn get_range(&self, loc: &Locator, offset: u64, len: u64) -> Result<Vec<u8>> {
        // GETRANGE clamps out-of-range requests to what exists and answers "" for missing keys, so EXISTS and
        // STRLEN travel in the same round trip to tell missing, short and valid apart.
        let key = Self::shard_key(loc);
        let end = offset.saturating_add(len).saturating_sub(1);
        let mut pipe = redis::pipe();
        pipe.cmd("EXISTS").arg(&key).cmd("STRLEN").arg(&key);
        pipe.cmd("GETRANGE")
            .arg(&key)
            .arg(offset.min(i64::MAX as u64))
            .arg(end.min(i64::MAX as u64));
        let replies = self.query_pipe(&pipe).await?;
        let [exists, size, data] = replies.as_slice() else {
            return Err(StoreError::Protocol {
                uri: self.uri.clone(),
                reason: "short pipeline reply".into(),
            });
        };
        if int(exists) != Some(1) {
            return Err(StoreError::NotFound {
                uri: self.uri.clone(),
            });
        }
        let size = int(size).ok_or_else(|| self.unexpected("STRLEN", size))? as u64;
        if offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(StoreError::RangeOutOfBounds {
                uri: self.uri.clone(),
                offset,
                len,
                size,
            });
        }
        if len == 0 {
            return Ok(Vec::new());
        }
        match data {
            Value::BulkString(b) if b.len() as u64 == len => Ok(b.clone()),
            v => Err(self.unexpected("GETRANGE", v)),
        }
    }

    async fn delete(&self, loc: &Locator) -> Result<()> {
        match self
            .query(redis::cmd("DEL").arg(Self::shard_key(loc)))
            .await?
        {
            Value::Int(_) => Ok(()),
            v => Err(self.unexpected("DEL", &v)),
        }
    }

    async fn exists(&self, loc: &Locator) -> Result<bool> {
        let v = self
            .query(redis::cmd("EXISTS").arg(Self::shard_key(loc)))
            .await?;
        Ok(int(&v).ok_or_else(|| self.unexpected("EXISTS", &v))? > 0)
    }

    async fn probe(&self) -> Result<StoreHealth> {
        let mut pipe = redis::pipe();
        pipe.cmd("INFO")
            .arg("memory")
            .cmd("INFO")
            .arg("persistence");
        let mut replies = self.query_pipe(&pipe).await?.into_iter();
        let memory = replies.next().and_then(info_text).unwrap_or_default();
        let persistence = replies.next().and_then(info_text).unwrap_or_default();
        let used = info_field(&memory, "used_memory");
        let max = info_field(&memory, "maxmemory").filter(|&m| m > 0);
        if info_field(&persistence, "aof_enabled") == Some(0)
            && !self.warned_no_aof.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(store = %self.uri, "redis runs without appendonly: acknowledged shards may be lost on a crash");
        }
        Ok(StoreHealth {
            free_bytes: max.map(|m| m.saturating_sub(used.unwrap_or(0))),
            used_bytes: used,
        })
    }

    async fn list(&self) -> Result<Vec<Locator>> {
        let mut out = Vec::new();
        let mut cursor: u64 = 0;
        let pattern = format!("{SHARD_PREFIX}*");
        loop {
            let v = self
                .query(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000),
                )
                .await?;
            let Value::Array(parts) = &v else {
                return Err(self.unexpected("SCAN", &v));
            };
            let (Some(next), Some(Value::Array(keys))) =
                (parts.first().and_then(int), parts.get(1))
            else {
                return Err(self.unexpected("SCAN", &v));
            };
            for k in keys {
                let Value::BulkString(k) = k else { continue };
                let Some(hex) = k.strip_prefix(SHARD_PREFIX.as_bytes()) else {
                    continue;
                };
                match hex::decode(hex) {
                    Ok(bytes) if bytes.len() == 32 => out.push(Locator(bytes)),
                    _ => {
                        tracing::debug!(store = %self.uri, "ignoring foreign key under {SHARD_PREFIX}")
                    }
                }
            }
            cursor = next as u64;
            if cursor == 0 {
                break;
            }
        }
        // SCAN may return a key more than once while the keyspace is rehashing.
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn write_identity(&self, identity: &StoreIdentity) -> Result<()> {
        let cmd = redis::cmd("SET")
            .arg(IDENTITY_KEY)
            .arg(identity.encode())
            .arg("NX")
            .to_owned();
        match self.query(&cmd).await? {
            Value::Okay => Ok(()),
            Value::Nil => match self.read_identity().await? {
                Some(found) => Err(StoreError::IdentityExists {
                    uri: self.uri.clone(),
                    volume: found.volume_id,
                    store: found.store_id,
                }),
                None => Err(StoreError::Protocol {
                    uri: self.uri.clone(),
                    reason: "SET NX refused but no marker".into(),
                }),
            },
            v => Err(self.unexpected("SET NX", &v)),
        }
    }

    async fn read_identity(&self) -> Result<Option<StoreIdentity>> {
        match self.query(redis::cmd("GET").arg(IDENTITY_KEY)).await? {
            Value::Nil => Ok(None),
            Value::BulkString(b) => {
                StoreIdentity::decode(&b)
                    .map(Some)
                    .ok_or_else(|| StoreError::Protocol {
                        uri: self.uri.clone(),
                        reason: format!("{IDENTITY_KEY} is not a qsfs identity marker"),
                    })
            }
            v => Err(self.unexpected("GET", &v)),
        }
    }

    async fn remove_identity(&self, identity: &StoreIdentity) -> Result<()> {
        if self.read_identity().await?.as_ref() != Some(identity) {
            return Ok(());
        }
        match self.query(redis::cmd("DEL").arg(IDENTITY_KEY)).await? {
            Value::Int(_) => Ok(()),
            v => Err(self.unexpected("DEL", &v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields() {
        let text = "# Memory\r\nused_memory:1024\r\nmaxmemory:0\r\nused_memory_human:1K\r\n";
        assert_eq!(info_field(text, "used_memory"), Some(1024));
        assert_eq!(info_field(text, "maxmemory"), Some(0));
        assert_eq!(info_field(text, "missing"), None);
    }
}
