//! The 0-db connection of a `ZdbStore`: made lazily, authenticated on every new connection (each one starts
//! in namespace `default`), replaced when it breaks; plus the mapping of 0-db's error replies.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, Value,
};
use sha1::{Digest, Sha1};
use tokio::sync::Mutex;

use crate::error::{Result, StoreError};
use crate::redis::{
    CONNECT_TIMEOUT, RESPONSE_TIMEOUT, is_connection_error, server_message, unexpected_reply,
};

/// A server error reply's text, kept apart from transport failures so callers can match on 0-db's messages.
pub(super) type Reply = std::result::Result<Value, String>;

pub(super) struct ZdbConn {
    uri: String,
    client: redis::Client,
    namespace: String,
    password: Option<String>,
    /// The current authenticated connection and its generation (so a failed request drops only the connection
    /// it failed on, not a fresh one another task just made).
    slot: Mutex<Option<(u64, MultiplexedConnection)>>,
    generation: AtomicU64,
}

impl ZdbConn {
    pub(super) fn new(
        uri: String,
        host: &str,
        port: u16,
        namespace: &str,
        password: Option<String>,
    ) -> Result<ZdbConn> {
        let invalid = |e: redis::RedisError| StoreError::InvalidUri {
            uri: uri.clone(),
            reason: e.to_string(),
        };
        // RESP2, db 0, no password and no CLIENT SETINFO: the crate sends nothing on connect.
        let info = ConnectionAddr::Tcp(host.to_string(), port)
            .into_connection_info()
            .map_err(invalid)?
            .set_redis_settings(RedisConnectionInfo::default().set_skip_set_lib_name());
        let client = redis::Client::open(info).map_err(invalid)?;
        Ok(ZdbConn {
            uri,
            client,
            namespace: namespace.to_string(),
            password,
            slot: Mutex::new(None),
            generation: AtomicU64::new(0),
        })
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

    fn server_error(&self, what: &str, msg: String) -> StoreError {
        server_error(&self.uri, what, msg)
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
        let mut slot = self.slot.lock().await;
        if let Some((generation, conn)) = slot.as_ref() {
            return Ok((*generation, conn.clone()));
        }
        let conn = self.connect().await?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *slot = Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    async fn drop_connection(&self, generation: u64) {
        let mut slot = self.slot.lock().await;
        if slot.as_ref().is_some_and(|(g, _)| *g == generation) {
            *slot = None;
        }
    }

    /// Sends one command on the authenticated connection: `Ok(Ok(value))`, `Ok(Err(server message))`, or a
    /// transport failure as `Unavailable` (after which the next call reconnects).
    pub(super) async fn query(&self, cmd: &Cmd) -> Result<Reply> {
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

/// Maps a 0-db error reply to the error a caller can act on.
pub(super) fn server_error(uri: &str, what: &str, msg: String) -> StoreError {
    let uri = uri.to_string();
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

/// The namespace password: the first line of a private file (see `crate::secret`).
pub(super) fn read_password(path: &Path) -> std::result::Result<String, String> {
    crate::secret::read_password_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "hunter2\nignored\n").unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
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
