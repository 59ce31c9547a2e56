//! The 0-db connections of a `ZdbStore`: made lazily over the bounded `resp` client, authenticated on every new
//! connection (each one starts in namespace `default`), dropped when they break; plus the mapping of 0-db's error
//! replies.

use std::path::Path;

use sha1::{Digest, Sha1};

use crate::error::{Result, StoreError};
use crate::resp::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT, unexpected_reply};
use crate::resp::{Limits, Pool, Reply, RespConn};

/// A server error reply's text, kept apart from transport failures so callers can match on 0-db's messages.
/// `Ok` never holds `Reply::Error`.
pub(super) type Answer = std::result::Result<Reply, String>;

/// What any 0-db reply may hold: one value up to 0-db's 8 MiB limit (plus slack for a marker or NSINFO text),
/// SCAN batches of a few hundred `[key, size, timestamp]` entries. Shard reads ask for less (`Limits::bulk`).
pub(super) const LIMITS: Limits = Limits {
    max_bulk: super::ZDB_MAX_VALUE + 64 * 1024,
    max_array: 100_000,
    max_depth: 3,
    max_elements: 400_000,
};

/// The 0-db connections of one store, over the bounded `resp` client: a server or a man in the middle cannot make
/// a reply cost more than the caller's limits. Several requests run at once on separate connections (a small pool
/// of idle ones is kept); each new connection is authenticated and selects the namespace before use.
pub(super) struct ZdbConn {
    uri: String,
    host: String,
    port: u16,
    namespace: String,
    password: Option<String>,
    pool: Pool,
}

impl ZdbConn {
    pub(super) fn new(
        uri: String,
        host: &str,
        port: u16,
        namespace: &str,
        password: Option<String>,
    ) -> Result<ZdbConn> {
        Ok(ZdbConn {
            uri,
            host: host.to_string(),
            port,
            namespace: namespace.to_string(),
            password,
            pool: Pool::new(),
        })
    }

    fn unexpected(&self, what: &str, v: &Reply) -> StoreError {
        unexpected_reply(&self.uri, what, v)
    }

    fn server_error(&self, what: &str, msg: String) -> StoreError {
        server_error(&self.uri, what, msg)
    }

    async fn connect(&self) -> Result<RespConn> {
        let setup = async {
            let mut conn = RespConn::tcp(
                &self.host,
                self.port,
                &self.uri,
                CONNECT_TIMEOUT,
                RESPONSE_TIMEOUT,
            )
            .await?;
            self.authenticate(&mut conn).await?;
            Ok(conn)
        };
        // Bound the whole handshake, not just the TCP connect: a wedged server must not hang the caller.
        match tokio::time::timeout(CONNECT_TIMEOUT * 3, setup).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable {
                uri: self.uri.clone(),
                reason: "connection handshake timed out".into(),
            }),
        }
    }

    /// Selects our namespace on a fresh connection, with the SECURE challenge when we have a password.
    async fn authenticate(&self, conn: &mut RespConn) -> Result<()> {
        let small = Limits::bulk(4096);
        let mut select: Vec<Vec<u8>> =
            vec![b"SELECT".to_vec(), self.namespace.clone().into_bytes()];
        if let Some(password) = &self.password {
            let nonce = match answer(
                conn.request(&[b"AUTH", b"SECURE", b"CHALLENGE"], &small)
                    .await?,
            ) {
                Ok(Reply::Status(n)) => n,
                Ok(v) => return Err(self.unexpected("AUTH SECURE CHALLENGE", &v)),
                Err(m) => return Err(self.server_error("AUTH SECURE CHALLENGE", m)),
            };
            let digest = Sha1::digest(format!("{nonce}:{password}").as_bytes());
            select.push(b"SECURE".to_vec());
            select.push(hex::encode(digest).into_bytes());
        }
        let args: Vec<&[u8]> = select.iter().map(|a| a.as_slice()).collect();
        match answer(conn.request(&args, &small).await?) {
            Ok(Reply::Status(s)) if s == "OK" => Ok(()),
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

    /// Sends one command on an authenticated connection: `Ok(Ok(reply))`, `Ok(Err(server message))`, or a
    /// transport failure (`Unavailable`) or a refused reply (`Refused`), after which that connection is dropped.
    pub(super) async fn query(&self, args: &[&[u8]], limits: &Limits) -> Result<Answer> {
        let pooled = self.pool.take();
        let was_pooled = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect().await?,
        };
        let reply = match conn.request(args, limits).await {
            // An idle connection the server closed meanwhile (a restart): one fresh try at once. Only for reads:
            // a write may have landed before the connection broke.
            Err(e) if was_pooled && e.is_retryable() && is_read(args) => {
                conn = self.connect().await?;
                conn.request(args, limits).await?
            }
            other => other?,
        };
        let reply = answer(reply);
        // A server restarted under us answers this on the old connection: drop it and reconnect next time.
        let stale =
            matches!(&reply, Err(m) if m.starts_with("Your active namespace is not available"));
        if !stale {
            self.pool.give(conn);
        }
        Ok(reply)
    }
}

fn is_read(args: &[&[u8]]) -> bool {
    matches!(
        args.first(),
        Some(&(b"GET" | b"EXISTS" | b"SCAN" | b"NSINFO"))
    )
}

/// Separates a server error reply (returned as its text) from the other replies.
fn answer(reply: Reply) -> Answer {
    match reply {
        Reply::Error(m) => Err(m),
        other => Ok(other),
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
