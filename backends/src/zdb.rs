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
//! - Connections are lazy and our own (the bounded `resp` client, RESP2, so nothing but our commands reaches a
//!   server that rejects unknown ones, and no reply is buffered past what the command can legitimately return). Every new connection starts in
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
//! Connection handling and the mapping of 0-db's error texts live in `zdb/conn.rs`. Behaviour was checked
//! against a real 0-db v2.0.7 built from its sources (tests/zdb.rs runs the suite on one when `zdb` is on PATH).
//!
//! Durability is the server's: 0-db fsyncs each write only when started with `--sync`.
//! The namespace must exist (created by the 0-db admin with `NSNEW`); this store never needs admin rights.

mod conn;

use std::fmt;

use async_trait::async_trait;

use crate::error::{Result, StoreError};
use crate::resp::{Limits, Reply as Value};
use crate::resp::{info_field, unexpected_reply};
use crate::store::{Locator, ShardKey, ShardStore, StoreHealth, StoreIdentity};
use crate::uri::StoreUri;
pub use crate::uri::ZdbMode;
use conn::{Answer, LIMITS, ZdbConn, read_password};

/// 0-db's largest value (`REDIS_MAX_PAYLOAD`, 8 MiB, inclusive).
pub const ZDB_MAX_VALUE: u64 = 8 * 1024 * 1024;

const IDENTITY_KEY: &[u8] = b"qsfs:identity";
/// Most keys `list` accepts from one namespace (far above any volume's shard count; about 1 GB of locators).
const MAX_LISTED: usize = 20_000_000;
/// An identity marker is a few short lines; anything longer at its key is refused unread.
const MARKER_MAX: u64 = 4096;
/// The seq-mode marker's id: the first entry of the namespace.
const SEQ_MARKER_ID: [u8; 8] = [0; 8];

/// A shard store in one 0-db namespace.
pub struct ZdbStore {
    uri: String,
    namespace: String,
    mode: ZdbMode,
    conn: ZdbConn,
}

impl fmt::Debug for ZdbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZdbStore")
            .field("uri", &self.uri)
            .field("mode", &self.mode)
            .finish()
    }
}

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
        let conn = ZdbConn::new(shown.clone(), host, *port, namespace, password)?;
        Ok(ZdbStore {
            uri: shown,
            namespace: namespace.clone(),
            mode: *mode,
            conn,
        })
    }

    pub fn mode(&self) -> ZdbMode {
        self.mode
    }

    fn unexpected(&self, what: &str, v: &Value) -> StoreError {
        unexpected_reply(&self.uri, what, v)
    }

    fn server_error(&self, what: &str, msg: String) -> StoreError {
        conn::server_error(&self.uri, what, msg)
    }

    fn protocol(&self, reason: String) -> StoreError {
        StoreError::Protocol {
            uri: self.uri.clone(),
            reason,
        }
    }

    async fn query(&self, args: &[&[u8]]) -> Result<Answer> {
        self.conn.query(args, &LIMITS).await
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

    /// The value under `key` if it is at most `max_len` bytes (`Refused` beyond, before it is buffered).
    async fn get_key(&self, key: &[u8], max_len: u64) -> Result<Option<Vec<u8>>> {
        match self
            .conn
            .query(&[b"GET", key], &Limits::bulk(max_len))
            .await?
        {
            Ok(Value::Bulk(b)) => Ok(Some(b)),
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
            let mut cmd: Vec<&[u8]> = vec![b"SCAN"];
            if let Some(c) = &cursor {
                cmd.push(c.as_slice());
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
            // A server that never ends the walk (the same cursor again, or keys without end) must not make
            // `list` loop or grow forever.
            if cursor.as_ref() == Some(&next) {
                return Err(self.protocol("SCAN returned the same cursor again".into()));
            }
            if keys.len() + batch.len() > MAX_LISTED {
                return Err(self.protocol(format!("SCAN listed more than {MAX_LISTED} keys")));
            }
            keys.extend(batch);
            cursor = Some(next);
        }
        Ok(keys)
    }
}

/// `[cursor, [[key, size, timestamp], …]]` → (cursor, keys); the offending value on any other shape.
fn parse_scan_reply(v: Value) -> std::result::Result<(Vec<u8>, Vec<Vec<u8>>), Value> {
    let Value::Array(parts) = &v else {
        return Err(v);
    };
    let (Some(Value::Bulk(cursor)), Some(Value::Array(entries))) = (parts.first(), parts.get(1))
    else {
        return Err(v);
    };
    let mut keys = Vec::with_capacity(entries.len());
    for e in entries {
        match e {
            Value::Array(fields) => match fields.first() {
                Some(Value::Bulk(k)) => keys.push(k.clone()),
                _ => return Err(v.clone()),
            },
            _ => return Err(v.clone()),
        }
    }
    Ok((cursor.clone(), keys))
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

    fn locate(&self, key: &ShardKey) -> Option<Locator> {
        match self.mode {
            ZdbMode::User => Some(Locator::from_key(key)),
            ZdbMode::Seq => None,
        }
    }

    async fn put(&self, key: &ShardKey, data: &[u8]) -> Result<Locator> {
        self.check_size(data)?;
        match self.mode {
            ZdbMode::User => match self.query(&[b"SET", &key.0[..], data]).await? {
                // The key echoed back, or nil: the identical value was already there.
                Ok(Value::Bulk(_) | Value::Nil) => Ok(Locator::from_key(key)),
                Ok(v) => Err(self.unexpected("SET", &v)),
                // A worm namespace refuses even an identical rewrite; identical content is still success.
                Err(m) if m.starts_with("Namespace is protected by worm mode") => {
                    match self.get_key(&key.0, data.len() as u64).await? {
                        Some(existing) if existing == data => Ok(Locator::from_key(key)),
                        _ => Err(self.server_error("SET", m)),
                    }
                }
                Err(m) => Err(self.server_error("SET", m)),
            },
            ZdbMode::Seq => match self.query(&[b"SET", b"", data]).await? {
                Ok(Value::Bulk(id)) if id.len() == 8 => Ok(Locator(id)),
                Ok(v) => Err(self.unexpected("SET", &v)),
                Err(m) => Err(self.server_error("SET", m)),
            },
        }
    }

    async fn get(&self, loc: &Locator, max_len: u64) -> Result<Vec<u8>> {
        self.get_key(&loc.0, max_len)
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
        match self.query(&[b"DEL", loc.0.as_slice()]).await? {
            Ok(Value::Status(s)) if s == "OK" => Ok(()),
            Ok(v) => Err(self.unexpected("DEL", &v)),
            Err(m) if m.starts_with("Key not found") => Ok(()),
            Err(m) => Err(self.server_error("DEL", m)),
        }
    }

    async fn exists(&self, loc: &Locator) -> Result<bool> {
        match self.query(&[b"EXISTS", loc.0.as_slice()]).await? {
            Ok(Value::Int(n)) => Ok(n > 0),
            Ok(v) => Err(self.unexpected("EXISTS", &v)),
            Err(m) => Err(self.server_error("EXISTS", m)),
        }
    }

    async fn probe(&self) -> Result<StoreHealth> {
        let text = match self.query(&[b"NSINFO", self.namespace.as_bytes()]).await? {
            Ok(Value::Bulk(b)) => String::from_utf8_lossy(&b).into_owned(),
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
        // A transient failure here must fail the listing: guessing could offer the marker to gc as an orphan.
        if saw_marker_slot {
            match self.read_identity().await {
                Ok(Some(_)) => {}
                // Deleted since the SCAN: nothing to list.
                Ok(None) => {}
                Err(StoreError::Protocol { .. }) => out.push(Locator(SEQ_MARKER_ID.to_vec())),
                Err(e) => return Err(e),
            }
        }
        // 0-db's SCAN walks the index log, where an overwritten key can appear more than once.
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn write_identity(&self, identity: &StoreIdentity) -> Result<()> {
        if let Some(existing) = self.get_key(self.identity_key(), MARKER_MAX).await? {
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
            ZdbMode::User => match self.query(&[b"SET", IDENTITY_KEY, &marker]).await? {
                Ok(Value::Bulk(_) | Value::Nil) => Ok(()),
                Ok(v) => Err(self.unexpected("SET", &v)),
                Err(m) => Err(self.server_error("SET", m)),
            },
            ZdbMode::Seq => match self.query(&[b"SET", b"", &marker]).await? {
                Ok(Value::Bulk(id)) if id == SEQ_MARKER_ID => Ok(()),
                Ok(Value::Bulk(id)) => {
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
        match self.get_key(self.identity_key(), MARKER_MAX).await? {
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

    async fn remove_identity(&self, identity: &StoreIdentity) -> Result<()> {
        if self.read_identity().await?.as_ref() != Some(identity) {
            return Ok(());
        }
        match self.mode {
            ZdbMode::User => self.delete(&Locator(IDENTITY_KEY.to_vec())).await,
            ZdbMode::Seq => Err(StoreError::Protocol {
                uri: self.uri.clone(),
                reason: "a seq namespace's identity marker is its first entry and cannot be taken back: use a fresh namespace".into(),
            }),
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
                Value::Bulk(k.to_vec()),
                Value::Int(3),
                Value::Int(1700000000),
            ])
        };
        let v = Value::Array(vec![
            Value::Bulk(vec![1, 2, 3]),
            Value::Array(vec![entry(b"a"), entry(b"bb")]),
        ]);
        let (cursor, keys) = parse_scan_reply(v).unwrap();
        assert_eq!(cursor, vec![1, 2, 3]);
        assert_eq!(keys, vec![b"a".to_vec(), b"bb".to_vec()]);
        assert!(parse_scan_reply(Value::Nil).is_err());
        assert!(parse_scan_reply(Value::Array(vec![Value::Int(0)])).is_err());
    }
}
