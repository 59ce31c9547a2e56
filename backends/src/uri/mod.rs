//! Store URIs: parsing the strings users write in volume configs, showing them without secrets, and opening the
//! store a URI names.
//!
//! Grammar (one store per URI):
//! - `dir:/abs/path` (also `dir:///abs/path`): a local directory, see [`DirStore`]. Relative paths are refused:
//!   a config read from another working directory must never point somewhere else.
//! - `redis://[user@]host[:port][/db][?password-file=PATH | ?password-env=VAR]`: port 6379, db 0 by default. The
//!   password is read when the store is opened: from a private file (its first line; refused if group or others
//!   can read it) or an environment variable. `redis://[user]:password@host…` (with `%XX` escapes) is still
//!   understood in `qsfs.toml`, but `qsfs` refuses it on the command line, where every local user can read it.
//! - `rediss://…[&ca-file=PATH]`: the same over TLS, the server's certificate checked against the CAs in
//!   `ca-file` (PEM) or the system's store.
//! - `zdb://host[:port]/namespace[?password-file=PATH&mode=user|seq]`: port 9900, mode `user` by default. The
//!   password lives in a file (its first line), never in the URI, so configs and logs cannot leak it.
//!
//! - `s3://BUCKET[/PREFIX]?endpoint=URL&region=R[&style=path|virtual][&credentials-file=PATH][&profile=NAME]
//!   [&ca-file=PATH]`: an S3-compatible bucket, see [`S3Uri`]. Keys come from `AWS_ACCESS_KEY_ID` /
//!   `AWS_SECRET_ACCESS_KEY` or a private credentials file, never from the URI.
//!
//! Hosts may be names, IPv4 addresses or bracketed IPv6 addresses (`[::1]`).
//!
//! `Display` and `Debug` never show a password: an inline redis password is shown as `***`, and error messages
//! about unparsable URIs drop everything before the last `@` and every `password=` value.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};
use crate::secret::{Password, redact_raw};

mod parse;
mod s3;
use parse::{parse_redis, parse_zdb};
pub use s3::{DEFAULT_REGION, S3Style, S3Uri};

pub const REDIS_DEFAULT_PORT: u16 = 6379;
pub const ZDB_DEFAULT_PORT: u16 = 9900;

/// How a `rediss://` store checks its server: against the CAs in `ca_file` (PEM), or the system's store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub ca_file: Option<PathBuf>,
}

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

/// A parsed store URI.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUri {
    Dir {
        path: PathBuf,
    },
    Redis {
        host: String,
        port: u16,
        db: i64,
        username: Option<String>,
        password: Option<Password>,
        /// `Some` for `rediss://`: every connection runs TLS and verifies the server's certificate.
        tls: Option<TlsSettings>,
    },
    Zdb {
        host: String,
        port: u16,
        namespace: String,
        password_file: Option<PathBuf>,
        mode: ZdbMode,
    },
    S3(S3Uri),
}

impl StoreUri {
    pub fn parse(text: &str) -> Result<StoreUri> {
        let bad = |reason: &str| StoreError::InvalidUri {
            uri: redact_raw(text),
            reason: reason.to_string(),
        };
        let text = text.trim();
        if let Some(rest) = text.strip_prefix("dir:") {
            // `dir:///x` is the URL-style spelling of `dir:/x`.
            let path = rest
                .strip_prefix("//")
                .filter(|p| p.starts_with('/'))
                .unwrap_or(rest);
            if path.is_empty() {
                return Err(bad("missing directory path (expected dir:/absolute/path)"));
            }
            if !Path::new(path).is_absolute() {
                return Err(bad(
                    "directory path must be absolute (expected dir:/absolute/path)",
                ));
            }
            return Ok(StoreUri::Dir {
                path: PathBuf::from(path),
            });
        }
        if let Some(rest) = text.strip_prefix("redis://") {
            return parse_redis(rest, false).map_err(|r| bad(&r));
        }
        if let Some(rest) = text.strip_prefix("rediss://") {
            return parse_redis(rest, true).map_err(|r| bad(&r));
        }
        if let Some(rest) = text.strip_prefix("zdb://") {
            return parse_zdb(rest).map_err(|r| bad(&r));
        }
        if let Some(rest) = text.strip_prefix("s3://") {
            return s3::parse_s3(rest).map(StoreUri::S3).map_err(|r| bad(&r));
        }
        Err(bad(
            "unknown scheme (expected dir:, redis://, rediss://, zdb:// or s3://)",
        ))
    }

    /// True when the URI carries a password itself (not a file or variable naming where to find it).
    pub fn has_inline_password(&self) -> bool {
        matches!(
            self,
            StoreUri::Redis {
                password: Some(Password::Inline(_)),
                ..
            }
        )
    }

    /// The store kind, for messages: `dir`, `redis`, `zdb` or `s3`.
    pub fn scheme(&self) -> &'static str {
        match self {
            StoreUri::Dir { .. } => "dir",
            StoreUri::Redis { .. } => "redis",
            StoreUri::Zdb { .. } => "zdb",
            StoreUri::S3(_) => "s3",
        }
    }
}

impl std::str::FromStr for StoreUri {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<StoreUri> {
        StoreUri::parse(s)
    }
}

impl fmt::Display for StoreUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUri::Dir { path } => write!(f, "dir:{}", path.display()),
            StoreUri::Redis {
                host,
                port,
                db,
                username,
                password,
                tls,
            } => {
                write!(
                    f,
                    "{}",
                    if tls.is_some() {
                        "rediss://"
                    } else {
                        "redis://"
                    }
                )?;
                let inline = matches!(password, Some(Password::Inline(_)));
                if username.is_some() || inline {
                    write!(f, "{}", username.as_deref().unwrap_or(""))?;
                    if inline {
                        write!(f, ":***")?;
                    }
                    write!(f, "@")?;
                }
                write!(f, "{}:{port}/{db}", bracket(host))?;
                let mut query = Vec::new();
                match password {
                    Some(Password::File(p)) => query.push(format!("password-file={}", p.display())),
                    Some(Password::Env(v)) => query.push(format!("password-env={v}")),
                    _ => {}
                }
                if let Some(TlsSettings { ca_file: Some(p) }) = tls {
                    query.push(format!("ca-file={}", p.display()));
                }
                if !query.is_empty() {
                    write!(f, "?{}", query.join("&"))?;
                }
                Ok(())
            }
            StoreUri::Zdb {
                host,
                port,
                namespace,
                password_file,
                mode,
            } => {
                write!(f, "zdb://{}:{port}/{namespace}?mode={mode}", bracket(host))?;
                if let Some(p) = password_file {
                    write!(f, "&password-file={}", p.display())?;
                }
                Ok(())
            }
            StoreUri::S3(s3) => s3.fmt(f),
        }
    }
}

impl fmt::Debug for StoreUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Debug output lands in logs and panics: it must be as safe as Display.
        write!(f, "StoreUri({self})")
    }
}

/// Hosts with a ':' are IPv6 addresses and need brackets in a URI.
fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests;
