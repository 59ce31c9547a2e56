//! `ZdbStore`: shards in a 0-db (zdb) namespace, following /work/shared/zdb-protocol.md and the 0-db v2.0.7
//! sources.
//!
//! - User mode: the shard key's 32 raw bytes are the 0-db key and the locator; the identity marker is the key
//!   `qsfs:identity` (never 32 bytes long, so it cannot collide with a shard). 0-db has no SETNX: write_identity
//!   reads first and refuses if a marker is there (volume init is single-writer).
//! - Seq mode: `SET "" value` returns the 8-byte little-endian id the server chose; that id is the locator. The
//!   identity marker is the namespace's first entry (id 0), so `write_identity` on a namespace that already
//!   had entries is refused. A second put of the same key stores a second copy under a new id (seq mode has no
//!   names); the caller records the locator it got, and `gc` finds the spare copy through `list`.
//!
//! Wire details that matter:
//! - Connections are lazy and our own (a multiplexed redis-crate connection, no `CLIENT SETINFO`, RESP2, so
//!   nothing but our commands reaches a server that rejects unknown ones). Every new connection starts in
//!   namespace `default`, so each one runs `AUTH SECURE CHALLENGE` + `SELECT ns SECURE sha1("nonce:password")`
//!   (or a plain `SELECT ns` without a password) before use; a broken connection is dropped and the next call
//!   reconnects and authenticates again.
//! - Values over 8 MiB make the server close the connection, so sizes are checked before sending (`TooLarge`).
//! - No range reads (`GETRANGE` is not supported): `supports_range() == false`.
//! - `SET` answering nil means the identical value is already stored: success. `DEL` of a missing key
//!   (`-Key not found`) is success.
//! - `SCAN [cursor]` answers `[cursor, [[key, size, timestamp], …]]` batches (about 2 ms of index walking each)
//!   and `-No more data` at the end; the cursor is an opaque binary string (zdbd/commands_scan.c).
//!
//! Durability is the server's: 0-db fsyncs each write only when started with `--sync`.
//! The namespace must exist (created by the 0-db admin with `NSNEW`); this store never needs admin rights.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, Value,
};
use sha1::{Digest, Sha1};
use tokio::sync::Mutex;

use crate::error::{Result, StoreError};
use crate::redis::{
    CONNECT_TIMEOUT, RESPONSE_TIMEOUT, info_field, is_connection_error, server_message,
    unexpected_reply,
};
use crate::store::{Locator, ShardKey, ShardStore, StoreHealth, StoreIdentity};
use crate::uri::StoreUri;

/// 0-db's largest value (`REDIS_MAX_PAYLOAD`, 8 MiB, inclusive).
pub const ZDB_MAX_VALUE: u64 = 8 * 1024 * 1024;

const IDENTITY_KEY: &[u8] = b"qsfs:identity";
/// The seq-mode marker's id: the first entry of the namespace.
const SEQ_MARKER_ID: [u8; 8] = [0; 8];

/// How a namespace names its entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ZdbMode {
    /// Keys chosen by the client (qsfs uses the shard key).
    User,
    /// Keys are ids the server assigns in sequence.
    Seq,
}

impl fmt::Display for ZdbMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ZdbMode::User => "user",
            ZdbMode::Seq => "seq",
        })
    }
}

/// A shard store in one 0-db namespace.
pub struct ZdbStore {
    uri: String,
    client: redis::Client,
    namespace: String,
    password: Option<String>,
    mode: ZdbMode,
    /// The current authenticated connection and its generation (so a failed request drops only the connection
    /// it failed on, not a fresh one another task just made).
    conn: Mutex<Option<(u64, MultiplexedConnection)>>,
    generation: AtomicU64,
}

impl fmt::Debug for ZdbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZdbStore")
            .field("uri", &self.uri)
            .field("mode", &self.mode)
            .finish()
    }
}

/// A server error reply's text, kept apart from transport failures so callers can match on 0-db's messages.
type Reply = std::result::Result<Value, String>;

impl ZdbStore {
    /// Prepares a store for a `zdb://` URI: reads the password file, connects nothing.
    pub fn new(uri: &StoreUri) -> Result<ZdbStore> {
        let StoreUri::Zdb {
            host,
            port,
            namespace,
            password_file,
            mode,
        } = uri
        else {
            return Err(StoreError::InvalidUri {
                uri: uri.to_string(),
                reason: "not a zdb:// URI".into(),
            });
        };
        let shown = uri.to_string();
        let password = match password_file {
            Some(path) => Some(read_password(path).map_err(|reason| StoreError::Auth {
                uri: shown.clone(),
                reason,
            })?),
            None => None,
        };
        let invalid = |e: redis::RedisError| StoreError::InvalidUri {
            uri: shown.clone(),
            reason: e.to_string(),
        };
        // RESP2, db 0, no password and no CLIENT SETINFO: the crate sends nothing on connect.
        let info = ConnectionAddr::Tcp(host.clone(), *port)
            .into_connection_info()
            .map_err(invalid)?
            .set_redis_settings(RedisConnectionInfo::default().set_skip_set_lib_name());
        let client = redis::Client::open(info).map_err(invalid)?;
        Ok(ZdbStore {
            uri: shown,
            client,
            namespace: namespace.clone(),
            password,
            mode: *mode,
            conn: Mutex::new(None),
            generation: AtomicU64::new(0),
        })
    }

    pub fn mode(&self) -> ZdbMode {
        self.mode
    }

    fn unavailable(&self, reason: impl Into<String>) -> StoreError {
        StoreError::Unavailable {
            uri: self.uri.clone(),
            reason: reason.into(),
        }
    }

    fn unexpected(&self, what: &str, v: &Value) -> StoreError {
        unexpected_reply(&self.uri, what, v)
    }

    /// Maps a 0-db error reply to the error a caller can act on.
    fn server_error(&self, what: &str, msg: String) -> StoreError {
        let uri = self.uri.clone();
        let m = msg.as_str();
        if m.starts_with("No space left") {
            StoreError::Full { uri }
        } else if m.starts_with("Namespace is in read-only mode") {
            StoreError::Auth {
                uri,
                reason: format!("{m}: the namespace is public but needs its password to write"),
            }
        } else if m.starts_with("Access denied")
            || m.starts_with("Permission denied")
            || m.starts_with("Namespace protected and private")
            || m.starts_with("No CHALLENGE requested")
        {
            StoreError::Auth {
                uri,
                reason: format!("{what}: {m}"),
            }
        } else if m.starts_with("Namespace is temporarily")
            || m.starts_with("Cannot write")
            || m.starts_with("Cannot delete key")
            || m.starts_with("Internal")
            || m.starts_with("Your active namespace is not available")
        {
            StoreError::Unavailable {
                uri,
                reason: format!("{what}: {m}"),
            }
        } else {
            StoreError::Protocol {
                uri,
                reason: format!("{what}: {m}"),
            }
        }
    }

    async fn connect(&self) -> Result<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let setup = async {
            let mut conn = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|e| self.unavailable(format!("connect: {e}")))?;
            self.authenticate(&mut conn).await?;
            Ok(conn)
        };
        // Bound the whole handshake, not just the TCP connect: a wedged server must not hang the caller.
        match tokio::time::timeout(CONNECT_TIMEOUT * 3, setup).await {
            Ok(r) => r,
            Err(_) => Err(self.unavailable("connection handshake timed out")),
        }
    }

    /// Selects our namespace on a fresh connection, with the SECURE challenge when we have a password.
    async fn authenticate(&self, conn: &mut MultiplexedConnection) -> Result<()> {
        let mut select = redis::cmd("SELECT");
        select.arg(&self.namespace);
        if let Some(password) = &self.password {
            let nonce = match raw(
                conn,
                redis::cmd("AUTH").arg("SECURE").arg("CHALLENGE"),
                &self.uri,
            )
            .await?
            {
                Ok(Value::SimpleString(n)) => n,
                Ok(v) => return Err(self.unexpected("AUTH SECURE CHALLENGE", &v)),
                Err(m) => return Err(self.server_error("AUTH SECURE CHALLENGE", m)),
            };
            let digest = Sha1::digest(format!("{nonce}:{password}").as_bytes());
            select.arg("SECURE").arg(hex::encode(digest));
        }
        match raw(conn, &select, &self.uri).await? {
            Ok(Value::Okay) => Ok(()),
            Ok(v) => Err(self.unexpected("SELECT", &v)),
            Err(m) if m.starts_with("Namespace not found") => Err(StoreError::Protocol {
                uri: self.uri.clone(),
                reason: format!(
                    "namespace {:?} does not exist on the server (the 0-db admin creates it with NSNEW)",
                    self.namespace
                ),
            }),
            Err(m)
                if m.starts_with("Namespace protected and private") && self.password.is_none() =>
            {
                Err(StoreError::Auth {
                    uri: self.uri.clone(),
                    reason: format!(
                        "{m}: this namespace needs a password (add ?password-file=PATH to the URI)"
                    ),
                })
            }
            Err(m) if m.starts_with("Access denied") => Err(StoreError::Auth {
                uri: self.uri.clone(),
                reason: "wrong namespace password (SELECT: Access denied)".into(),
            }),
            Err(m) => Err(self.server_error("SELECT", m)),
        }
    }

    async fn connection(&self) -> Result<(u64, MultiplexedConnection)> {
        let mut slot = self.conn.lock().await;
        if let Some((generation, conn)) = slot.as_ref() {
            return Ok((*generation, conn.clone()));
        }
        let conn = self.connect().await?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *slot = Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    async fn drop_connection(&self, generation: u64) {
        let mut slot = self.conn.lock().await;
        if slot.as_ref().is_some_and(|(g, _)| *g == generation) {
            *slot = None;
        }
    }

    /// Sends one command on the authenticated connection: `Ok(Ok(value))`, `Ok(Err(server message))`, or a
    /// transport failure as `Unavailable` (after which the next call reconnects).
    async fn query(&self, cmd: &Cmd) -> Result<Reply> {
        let (generation, mut conn) = self.connection().await?;
        let reply = raw(&mut conn, cmd, &self.uri).await;
        if let Ok(Err(m)) = &reply
            && m.starts_with("Your active namespace is not available")
        {
            self.drop_connection(generation).await;
        }
        if reply.is_err() {
            self.drop_connection(generation).await;
        }
        reply
    }

    fn check_size(&self, data: &[u8]) -> Result<()> {
        if data.len() as u64 > ZDB_MAX_VALUE {
            return Err(StoreError::TooLarge {
                uri: self.uri.clone(),
                size: data.len() as u64,
                limit: ZDB_MAX_VALUE,
            });
        }
        Ok(())
    }

    async fn get_key(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.query(redis::cmd("GET").arg(key)).await? {
            Ok(Value::BulkString(b)) => Ok(Some(b)),
            Ok(Value::Nil) => Ok(None),
            Ok(v) => Err(self.unexpected("GET", &v)),
            Err(m) => Err(self.server_error("GET", m)),
        }
    }

    fn identity_key(&self) -> &'static [u8] {
        match self.mode {
            ZdbMode::User => IDENTITY_KEY,
            ZdbMode::Seq => &SEQ_MARKER_ID,
        }
    }

    /// Every live key in the namespace, walking SCAN batches until `-No more data`.
    async fn scan_keys(&self) -> Result<Vec<Vec<u8>>> {
        let mut keys = Vec::new();
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let mut cmd = redis::cmd("SCAN");
            if let Some(c) = &cursor {
                cmd.arg(c.as_slice());
            }
            let v = match self.query(&cmd).await? {
                Ok(v) => v,
                Err(m) if m.starts_with("No more data") => break,
                Err(m) => return Err(self.server_error("SCAN", m)),
            };
            let (next, batch) = parse_scan_reply(v).map_err(|v| self.unexpected("SCAN", &v))?;
            if batch.is_empty() {
                break;
            }
            keys.extend(batch);
            cursor = Some(next);
        }
        Ok(keys)
    }
}

/// Sends `cmd` and separates server error replies (returned as their text) from transport failures.
async fn raw(conn: &mut MultiplexedConnection, cmd: &Cmd, uri: &str) -> Result<Reply> {
    match cmd.query_async::<Value>(conn).await {
        Ok(v) => Ok(Ok(v)),
        Err(e) if is_connection_error(&e) => Err(StoreError::Unavailable {
            uri: uri.to_string(),
            reason: e.to_string(),
        }),
        Err(e) => match server_message(&e) {
            Some(m) => Ok(Err(m)),
            None => Err(StoreError::Protocol {
                uri: uri.to_string(),
                reason: e.to_string(),
            }),
        },
    }
}

/// `[cursor, [[key, size, timestamp], …]]` → (cursor, keys); the offending value on any other shape.
fn parse_scan_reply(v: Value) -> std::result::Result<(Vec<u8>, Vec<Vec<u8>>), Value> {
    let Value::Array(parts) = &v else {
        return Err(v);
    };
    let (Some(Value::BulkString(cursor)), Some(Value::Array(entries))) =
        (parts.first(), parts.get(1))
    else {
        return Err(v);
    };
    let mut keys = Vec::with_capacity(entries.len());
    for e in entries {
        match e {
            Value::Array(fields) => match fields.first() {
                Some(Value::BulkString(k)) => keys.push(k.clone()),
                _ => return Err(v.clone()),
            },
            _ => return Err(v.clone()),
        }
    }
    Ok((cursor.clone(), keys))
}

fn read_password(path: &Path) -> std::result::Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read password file {}: {e}", path.display()))?;
    let password = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if password.is_empty() {
        return Err(format!("password file {} is empty", path.display()));
    }
    Ok(password.to_string())
}

#[async_trait]
impl ShardStore for ZdbStore {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn supports_range(&self) -> bool {
        false
    }

    fn max_value_size(&self) -> Option<u64> {
        Some(ZDB_MAX_VALUE)
    }

    async fn put(&self, key: &ShardKey, data: &[u8]) -> Result<Locator> {
        self.check_size(data)?;
        match self.mode {
            ZdbMode::User => match self
                .query(redis::cmd("SET").arg(&key.0[..]).arg(data))
                .await?
            {
                // The key echoed back, or nil: the identical value was already there.
                Ok(Value::BulkString(_) | Value::Nil) => Ok(Locator::from_key(key)),
                Ok(v) => Err(self.unexpected("SET", &v)),
                // A worm namespace refuses even an identical rewrite; identical content is still success.
                Err(m) if m.starts_with("Namespace is protected by worm mode") => {
                    match self.get_key(&key.0).await? {
                        Some(existing) if existing == data => Ok(Locator::from_key(key)),
                        _ => Err(self.server_error("SET", m)),
                    }
                }
                Err(m) => Err(self.server_error("SET", m)),
            },
            ZdbMode::Seq => match self.query(redis::cmd("SET").arg("").arg(data)).await? {
                Ok(Value::BulkString(id)) if id.len() == 8 => Ok(Locator(id)),
                Ok(v) => Err(self.unexpected("SET", &v)),
                Err(m) => Err(self.server_error("SET", m)),
            },
        }
    }

    async fn get(&self, loc: &Locator) -> Result<Vec<u8>> {
        self.get_key(&loc.0)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                uri: self.uri.clone(),
            })
    }

    async fn get_range(&self, _loc: &Locator, _offset: u64, _len: u64) -> Result<Vec<u8>> {
        Err(StoreError::RangeUnsupported {
            uri: self.uri.clone(),
        })
    }

    async fn delete(&self, loc: &Locator) -> Result<()> {
        match self.query(redis::cmd("DEL").arg(loc.0.as_slice())).await? {
            Ok(Value::Okay) => Ok(()),
            Ok(v) => Err(self.unexpected("DEL", &v)),
            Err(m) if m.starts_with("Key not found") => Ok(()),
            Err(m) => Err(self.server_error("DEL", m)),
        }
    }

    async fn exists(&self, loc: &Locator) -> Result<bool> {
        match self
            .query(redis::cmd("EXISTS").arg(loc.0.as_slice()))
            .await?
        {
            Ok(Value::Int(n)) => Ok(n > 0),
            Ok(v) => Err(self.unexpected("EXISTS", &v)),
            Err(m) => Err(self.server_error("EXISTS", m)),
        }
    }

    async fn probe(&self) -> Result<StoreHealth> {
        let text = match self
            .query(redis::cmd("NSINFO").arg(&self.namespace))
            .await?
        {
            Ok(Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
            Ok(v) => return Err(self.unexpected("NSINFO", &v)),
            Err(m) => return Err(self.server_error("NSINFO", m)),
        };
        let used = info_field(&text, "data_size_bytes");
        let limit = info_field(&text, "data_limits_bytes").filter(|&l| l > 0);
        let disk = info_field(&text, "data_disk_freespace_bytes");
        let quota = limit.map(|l| l.saturating_sub(used.unwrap_or(0)));
        let free = match (quota, disk) {
            (Some(q), Some(d)) => Some(q.min(d)),
            (q, d) => q.or(d),
        };
        Ok(StoreHealth {
            free_bytes: free,
            used_bytes: used,
        })
    }

    async fn list(&self) -> Result<Vec<Locator>> {
        let want_len = match self.mode {
            ZdbMode::User => 32,
            ZdbMode::Seq => 8,
        };
        let mut out: Vec<Locator> = Vec::new();
        let mut saw_marker_slot = false;
        for key in self.scan_keys().await? {
            if self.mode == ZdbMode::Seq && key == SEQ_MARKER_ID {
                saw_marker_slot = true;
                continue;
            }
            // The marker (user mode) and any foreign keys have other lengths: not shards of ours.
            if key.len() == want_len {
                out.push(Locator(key));
            }
        }
        // In seq mode id 0 is the marker only if it holds one (a namespace used before its identity was written
        // has a shard there, and a shard must never be hidden from gc/fsck).
        if saw_marker_slot && !matches!(self.read_identity().await, Ok(Some(_))) {
            out.push(Locator(SEQ_MARKER_ID.to_vec()));
        }
        // 0-db's SCAN walks the index log, where an overwritten key can appear more than once.
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn write_identity(&self, identity: &StoreIdentity) -> Result<()> {
        if let Some(existing) = self.get_key(self.identity_key()).await? {
            return Err(match StoreIdentity::decode(&existing) {
                Some(found) => StoreError::IdentityExists { uri: self.uri.clone(), volume: found.volume_id, store: found.store_id },
                None => StoreError::Protocol {
                    uri: self.uri.clone(),
                    reason: "namespace is not empty and its first entry is not a qsfs identity marker: use a fresh namespace".into(),
                },
            });
        }
        let marker = identity.encode();
        match self.mode {
            ZdbMode::User => match self
                .query(redis::cmd("SET").arg(IDENTITY_KEY).arg(marker))
                .await?
            {
                Ok(Value::BulkString(_) | Value::Nil) => Ok(()),
                Ok(v) => Err(self.unexpected("SET", &v)),
                Err(m) => Err(self.server_error("SET", m)),
            },
            ZdbMode::Seq => match self.query(redis::cmd("SET").arg("").arg(marker)).await? {
                Ok(Value::BulkString(id)) if id == SEQ_MARKER_ID => Ok(()),
                Ok(Value::BulkString(id)) => {
                    // Ids are never reused: once a namespace had entries, id 0 can no longer be the marker.
                    let _ = self.delete(&Locator(id.clone())).await;
                    Err(StoreError::Protocol {
                        uri: self.uri.clone(),
                        reason: format!(
                            "seq namespace {:?} already had entries (the marker got id {}, not 0): the identity marker must be a namespace's first entry; use a fresh namespace",
                            self.namespace,
                            u64::from_le_bytes(id.as_slice().try_into().unwrap_or([0xff; 8]))
                        ),
                    })
                }
                Ok(v) => Err(self.unexpected("SET", &v)),
                Err(m) => Err(self.server_error("SET", m)),
            },
        }
    }

    async fn read_identity(&self) -> Result<Option<StoreIdentity>> {
        match self.get_key(self.identity_key()).await? {
            None => Ok(None),
            Some(bytes) => {
                StoreIdentity::decode(&bytes)
                    .map(Some)
                    .ok_or_else(|| StoreError::Protocol {
                        uri: self.uri.clone(),
                        reason: match self.mode {
                            ZdbMode::User => "qsfs:identity is not a qsfs identity marker".into(),
                            ZdbMode::Seq => {
                                "entry 0 of this seq namespace is not a qsfs identity marker".into()
                            }
                        },
                    })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_reply_shapes() {
        let entry = |k: &[u8]| {
            Value::Array(vec![
                Value::BulkString(k.to_vec()),
                Value::Int(3),
                Value::Int(1700000000),
            ])
        };
        let v = Value::Array(vec![
            Value::BulkString(vec![1, 2, 3]),
            Value::Array(vec![entry(b"a"), entry(b"bb")]),
        ]);
        let (cursor, keys) = parse_scan_reply(v).unwrap();
        assert_eq!(cursor, vec![1, 2, 3]);
        assert_eq!(keys, vec![b"a".to_vec(), b"bb".to_vec()]);
        assert!(parse_scan_reply(Value::Nil).is_err());
        assert!(parse_scan_reply(Value::Array(vec![Value::Int(0)])).is_err());
    }

    #[test]
    fn password_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "hunter2\nignored\n").unwrap();
        assert_eq!(read_password(&p).unwrap(), "hunter2");
        std::fs::write(&p, "\n").unwrap();
        assert!(read_password(&p).unwrap_err().contains("empty"));
        assert!(
            read_password(&dir.path().join("missing"))
                .unwrap_err()
                .contains("cannot read")
        );
    }
}
