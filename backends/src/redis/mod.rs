//! `RedisStore`: shards as string values in a Redis database, over TCP (`redis://`) or TLS (`rediss://`).
//!
//! Keys are `qsfs:s:<hex locator>`; the identity marker is `qsfs:identity`, written with `SET NX` so it is never
//! overwritten. The locator is the shard key's 32 bytes.
//!
//! Two kinds of connection: writes (SET, DEL, EXISTS) go through the redis crate's `ConnectionManager`; every
//! command whose reply carries data goes through `reader`, whose replies are bounded by what is expected.
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
//! `errors` maps the redis crate's errors; the RESP helpers both RESP stores use live in `resp`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, RedisError, Value};

use crate::error::{Result, StoreError};
use crate::resp::{Limits, Reply};
use crate::tls::TlsClient;

mod errors;
mod reader;

use crate::resp::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT, info_field, unexpected_reply};
use crate::store::{Locator, ShardKey, ShardStore, StoreHealth, StoreIdentity};
use crate::uri::StoreUri;
use errors::{int, map_redis_error};
use reader::{Reader, Target, reply_int};

const SHARD_PREFIX: &str = "qsfs:s:";
const IDENTITY_KEY: &str = "qsfs:identity";
/// Largest identity marker accepted (a real one is under 200 bytes).
const IDENTITY_MAX: u64 = 64 * 1024;
/// Largest INFO section accepted (a real one is a few KB).
const INFO_MAX: u64 = 1024 * 1024;
/// Keys asked per SCAN step; the server may answer more (a hint), so the reply limit is far above it.
const SCAN_COUNT: &str = "1000";
const SCAN_LIMITS: Limits = Limits {
    max_bulk: 1024,
    max_array: 100_000,
    max_depth: 2,
    max_elements: 100_003,
};

/// A shard store in one Redis database.
pub struct RedisStore {
    uri: String,
    conn: ConnectionManager,
    /// Bounded connections for every reply that carries data.
    reader: Reader,
    warned_no_aof: AtomicBool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("uri", &self.uri)
            .finish()
    }
}

impl RedisStore {
    /// Prepares a store for a `redis://` or `rediss://` URI without connecting (a `ca-file` is read now). Must be
    /// called inside a tokio runtime.
    pub fn new(uri: &StoreUri) -> Result<RedisStore> {
        let StoreUri::Redis {
            host,
            port,
            db,
            username,
            password,
            tls,
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
        let tls = match tls {
            Some(t) => Some(TlsClient::new(&shown, t.ca_file.as_deref())?),
            None => None,
        };
        let addr = match tls {
            Some(_) => ConnectionAddr::TcpTls {
                host: host.clone(),
                port: *port,
                insecure: false,
                tls_params: None,
            },
            None => ConnectionAddr::Tcp(host.clone(), *port),
        };
        let info = addr
            .into_connection_info()
            .map_err(invalid)?
            .set_redis_settings(settings);
        let client = match &tls {
            Some(t) => redis::Client::build_with_tls(info, t.redis_certificates()),
            None => redis::Client::open(info),
        }
        .map_err(invalid)?;
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
        let target = Target {
            host: host.clone(),
            port: *port,
            db: *db,
            username: username.clone(),
            password,
            tls,
        };
        Ok(RedisStore {
            reader: Reader::new(&shown, target, CONNECT_TIMEOUT, RESPONSE_TIMEOUT),
            uri: shown,
            conn,
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

    fn unexpected(&self, what: &str, v: &Value) -> StoreError {
        unexpected_reply(&self.uri, what, v)
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

    /// Bounded by `max_len` as soon as the reply's length arrives (see `reader`). GETRANGE 0 max_len-1 would
    /// bound an honest server only: a liar or a man in the middle answers what it likes.
    async fn get(&self, loc: &Locator, max_len: u64) -> Result<Vec<u8>> {
        let key = Self::shard_key(loc);
        match self
            .reader
            .request(&[b"GET", &key], Limits::bulk(max_len))
            .await?
        {
            Reply::Bulk(b) => Ok(b),
            Reply::Nil => Err(StoreError::NotFound {
                uri: self.uri.clone(),
            }),
            other => Err(self.reader.unexpected("GET", other)),
        }
    }

    async fn get_range(&self, loc: &Locator, offset: u64, len: u64) -> Result<Vec<u8>> {
        // GETRANGE clamps out-of-range requests to what exists and answers "" for missing keys, so EXISTS and
        // STRLEN travel in the same round trip to tell missing, short and valid apart.
        let key = Self::shard_key(loc);
        let end = offset.saturating_add(len).saturating_sub(1);
        let (from, to) = (
            offset.min(i64::MAX as u64).to_string(),
            end.min(i64::MAX as u64).to_string(),
        );
        let number = Limits::bulk(0);
        let replies = self
            .reader
            .pipeline(&[
                (&[b"EXISTS", &key], number),
                (&[b"STRLEN", &key], number),
                (
                    &[b"GETRANGE", &key, from.as_bytes(), to.as_bytes()],
                    Limits::bulk(len),
                ),
            ])
            .await?;
        let [exists, size, data] = <[Reply; 3]>::try_from(replies)
            .map_err(|_| self.reader.unexpected("GETRANGE", Reply::Nil))?;
        if reply_int(&exists) != Some(1) {
            return match exists {
                Reply::Int(_) => Err(StoreError::NotFound {
                    uri: self.uri.clone(),
                }),
                other => Err(self.reader.unexpected("EXISTS", other)),
            };
        }
        let size = match reply_int(&size) {
            Some(n) if n >= 0 => n as u64,
            _ => return Err(self.reader.unexpected("STRLEN", size)),
        };
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
            Reply::Bulk(b) if b.len() as u64 == len => Ok(b),
            other => Err(self.reader.unexpected("GETRANGE", other)),
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
        let text = Limits::bulk(INFO_MAX);
        let replies = self
            .reader
            .pipeline(&[
                (&[b"INFO", b"memory"], text),
                (&[b"INFO", b"persistence"], text),
            ])
            .await?;
        let mut sections = replies.into_iter().map(|r| match r {
            Reply::Bulk(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
            other => Err(self.reader.unexpected("INFO", other)),
        });
        let memory = sections.next().transpose()?.unwrap_or_default();
        let persistence = sections.next().transpose()?.unwrap_or_default();
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
        let mut cursor = "0".to_string();
        let pattern = format!("{SHARD_PREFIX}*");
        loop {
            let args: [&[u8]; 6] = [
                b"SCAN",
                cursor.as_bytes(),
                b"MATCH",
                pattern.as_bytes(),
                b"COUNT",
                SCAN_COUNT.as_bytes(),
            ];
            let reply = self.reader.request(&args, SCAN_LIMITS).await?;
            let (next, keys) = match reply {
                Reply::Array(mut parts) if parts.len() == 2 => match (parts.pop(), parts.pop()) {
                    (Some(Reply::Array(keys)), Some(Reply::Bulk(next))) => (next, keys),
                    _ => return Err(self.reader.unexpected("SCAN", Reply::Array(parts))),
                },
                other => return Err(self.reader.unexpected("SCAN", other)),
            };
            for k in keys {
                let Reply::Bulk(k) = k else { continue };
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
            cursor = match std::str::from_utf8(&next)
                .ok()
                .and_then(|c| c.parse::<u64>().ok())
            {
                Some(0) => break,
                Some(n) => n.to_string(),
                None => return Err(self.reader.unexpected("SCAN", Reply::Bulk(next))),
            };
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
        let reply = self
            .reader
            .request(
                &[b"GET", IDENTITY_KEY.as_bytes()],
                Limits::bulk(IDENTITY_MAX),
            )
            .await?;
        match reply {
            Reply::Nil => Ok(None),
            Reply::Bulk(b) => {
                StoreIdentity::decode(&b)
                    .map(Some)
                    .ok_or_else(|| StoreError::Protocol {
                        uri: self.uri.clone(),
                        reason: format!("{IDENTITY_KEY} is not a qsfs identity marker"),
                    })
            }
            other => Err(self.reader.unexpected("GET", other)),
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
