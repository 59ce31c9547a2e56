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
//! - `zdb://host[:port]/namespace[?password-file=PATH&mode=user|seq]`: port 9900, mode `user` by default. The
//!   password lives in a file (its first line), never in the URI, so configs and logs cannot leak it.
//!
//! Hosts may be names, IPv4 addresses or bracketed IPv6 addresses (`[::1]`).
//!
//! `Display` and `Debug` never show a password: an inline redis password is shown as `***`, and error messages
//! about unparsable URIs drop everything before the last `@` and every `password=` value.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dir::DirStore;
use crate::error::{Result, StoreError};
use crate::redis::RedisStore;
use crate::secret::{Password, is_secret_key, redact_raw};
use crate::store::ShardStore;
use crate::zdb::{ZdbMode, ZdbStore};

pub const REDIS_DEFAULT_PORT: u16 = 6379;
pub const ZDB_DEFAULT_PORT: u16 = 9900;

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
    },
    Zdb {
        host: String,
        port: u16,
        namespace: String,
        password_file: Option<PathBuf>,
        mode: ZdbMode,
    },
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
            return parse_redis(rest).map_err(|r| bad(&r));
        }
        if let Some(rest) = text.strip_prefix("zdb://") {
            return parse_zdb(rest).map_err(|r| bad(&r));
        }
        Err(bad("unknown scheme (expected dir:, redis:// or zdb://)"))
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

    /// The store kind, for messages: `dir`, `redis` or `zdb`.
    pub fn scheme(&self) -> &'static str {
        match self {
            StoreUri::Dir { .. } => "dir",
            StoreUri::Redis { .. } => "redis",
            StoreUri::Zdb { .. } => "zdb",
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
            } => {
                write!(f, "redis://")?;
                let inline = matches!(password, Some(Password::Inline(_)));
                if username.is_some() || inline {
                    write!(f, "{}", username.as_deref().unwrap_or(""))?;
                    if inline {
                        write!(f, ":***")?;
                    }
                    write!(f, "@")?;
                }
                write!(f, "{}:{port}/{db}", bracket(host))?;
                match password {
                    Some(Password::File(p)) => write!(f, "?password-file={}", p.display()),
                    Some(Password::Env(v)) => write!(f, "?password-env={v}"),
                    _ => Ok(()),
                }
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
        }
    }
}

impl fmt::Debug for StoreUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Debug output lands in logs and panics: it must be as safe as Display.
        write!(f, "StoreUri({self})")
    }
}

/// Opens the store `uri` names. No network I/O happens here: redis and 0-db stores connect on first use, so a
/// volume whose stores are partly down still opens. `create` lets a dir store create its directory (volume
/// init); without it a missing directory is `Unavailable`, because an unmounted disk must never turn into writes
/// on the root filesystem.
pub async fn open_store(uri: &StoreUri, create: bool) -> Result<Arc<dyn ShardStore>> {
    Ok(match uri {
        StoreUri::Dir { path } => Arc::new(DirStore::open(path, create).await?),
        StoreUri::Redis { .. } => Arc::new(RedisStore::new(uri)?),
        StoreUri::Zdb { .. } => Arc::new(ZdbStore::new(uri)?),
    })
}

/// Hosts with a ':' are IPv6 addresses and need brackets in a URI.
fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Splits `host[:port]` (or `[v6][:port]`) into its parts.
fn parse_host_port(authority: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("unclosed '[' in host")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("unexpected text after ']'")?),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("missing host".into());
    }
    if host.contains(['@', '/', '?', '#', ' ']) {
        return Err(format!("invalid host {host:?}"));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("invalid port {p:?}")),
        },
    };
    Ok((host.to_string(), port))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or("truncated %-escape")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "invalid %-escape")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "%-escapes do not decode to UTF-8".to_string())
}

fn parse_redis(rest: &str) -> Result<StoreUri, String> {
    // Userinfo ends at the last '@': a password may hold '/', '?', '#' or ':' (percent-encoded or not).
    let (userinfo, after) = match rest.rfind('@') {
        Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
        None => (None, rest),
    };
    if after.contains('#') {
        return Err("fragments are not supported in redis URIs".into());
    }
    let (main, query) = match after.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (after, None),
    };
    let (hostport, path) = match main.find('/') {
        Some(i) => (&main[..i], &main[i + 1..]),
        None => (main, ""),
    };
    let (username, inline) = match userinfo {
        None => (None, None),
        Some(ui) => {
            let (u, p) = match ui.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (ui, None),
            };
            let username = if u.is_empty() {
                None
            } else {
                Some(percent_decode(u)?)
            };
            let password = match p {
                Some(p) if !p.is_empty() => Some(Password::Inline(percent_decode(p)?)),
                _ => None,
            };
            (username, password)
        }
    };
    let (host, port) = parse_host_port(hostport, REDIS_DEFAULT_PORT)?;
    let db = match path.trim_end_matches('/') {
        "" => 0,
        d => match d.parse::<i64>() {
            Ok(n) if n >= 0 => n,
            _ => {
                return Err(format!(
                    "invalid database number {d:?} (expected /0, /1, ...)"
                ));
            }
        },
    };
    let from_query = parse_password_query(query.unwrap_or(""))?;
    if inline.is_some() && from_query.is_some() {
        return Err(
            "give the password one way: in the URI or with password-file / password-env".into(),
        );
    }
    Ok(StoreUri::Redis {
        host,
        port,
        db,
        username,
        password: inline.or(from_query),
    })
}

/// The query of a redis URI: `password-file=/abs/path` or `password-env=VAR`, nothing else.
fn parse_password_query(query: &str) -> Result<Option<Password>, String> {
    let mut found = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("query item {:?} has no value", redact_raw(pair)))?;
        let password = match k {
            "password-file" => {
                let path = PathBuf::from(percent_decode(v)?);
                if !path.is_absolute() {
                    return Err("password-file must be an absolute path".into());
                }
                Password::File(path)
            }
            "password-env" => {
                let valid = v
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(
                        "password-env must name an environment variable (letters, digits, _)"
                            .into(),
                    );
                }
                Password::Env(v.to_string())
            }
            k if is_secret_key(k) => {
                return Err(
                    "passwords do not belong in URIs: use ?password-file=PATH or ?password-env=VAR"
                        .into(),
                );
            }
            _ => {
                return Err(format!(
                    "unknown query parameter {:?} (expected password-file or password-env)",
                    redact_raw(k)
                ));
            }
        };
        if found.replace(password).is_some() {
            return Err("give the password one way: password-file or password-env, once".into());
        }
    }
    Ok(found)
}

fn parse_zdb(rest: &str) -> Result<StoreUri, String> {
    // Checked before anything is split: a password may hold '/', '?' or '&', and no later message may quote a
    // piece of it. (An '@' in a password-file path is written %40.)
    if rest.contains('@') {
        return Err("passwords do not belong in zdb URIs: use ?password-file=PATH".into());
    }
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    let (authority, namespace) = main
        .split_once('/')
        .ok_or("missing namespace (expected zdb://host:port/namespace)")?;
    let (host, port) = parse_host_port(authority, ZDB_DEFAULT_PORT)?;
    let namespace = namespace.trim_end_matches('/');
    if namespace.is_empty() {
        return Err("missing namespace (expected zdb://host:port/namespace)".into());
    }
    // 0-db limits namespace names to 128 characters; spaces and '/' would break its files and our URI.
    if namespace.len() > 128 || namespace.contains(['/', ' ', '#', '&', '=']) {
        return Err(format!("invalid namespace name {namespace:?}"));
    }
    let mut password_file = None;
    let mut mode = ZdbMode::User;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("query item {pair:?} has no value"))?;
        match k {
            "password-file" => {
                let path = PathBuf::from(percent_decode(v)?);
                if !path.is_absolute() {
                    return Err("password-file must be an absolute path".into());
                }
                password_file = Some(path);
            }
            "mode" => {
                mode = match v {
                    "user" => ZdbMode::User,
                    "seq" => ZdbMode::Seq,
                    _ => return Err(format!("invalid mode {v:?} (expected user or seq)")),
                }
            }
            "password" => {
                return Err("passwords do not belong in zdb URIs: use ?password-file=PATH".into());
            }
            _ => {
                return Err(format!(
                    "unknown query parameter {k:?} (expected password-file or mode)"
                ));
            }
        }
    }
    Ok(StoreUri::Zdb {
        host,
        port,
        namespace: namespace.to_string(),
        password_file,
        mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> StoreUri {
        StoreUri::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        match StoreUri::parse(s) {
            Ok(u) => panic!("{s} parsed as {u}"),
            Err(e) => {
                assert!(matches!(e, StoreError::InvalidUri { .. }), "{e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn dir_uris() {
        assert_eq!(
            ok("dir:/srv/qsfs/a"),
            StoreUri::Dir {
                path: "/srv/qsfs/a".into()
            }
        );
        assert_eq!(
            ok("dir:///srv/x"),
            StoreUri::Dir {
                path: "/srv/x".into()
            }
        );
        assert_eq!(ok("dir:/srv/x").to_string(), "dir:/srv/x");
        assert!(err("dir:relative/path").contains("absolute"));
        assert!(err("dir:./x").contains("absolute"));
        assert!(err("dir:").contains("missing"));
    }

    #[test]
    fn redis_uris() {
        assert_eq!(
            ok("redis://127.0.0.1:7000/3"),
            StoreUri::Redis {
                host: "127.0.0.1".into(),
                port: 7000,
                db: 3,
                username: None,
                password: None
            }
        );
        assert_eq!(
            ok("redis://localhost"),
            StoreUri::Redis {
                host: "localhost".into(),
                port: 6379,
                db: 0,
                username: None,
                password: None
            }
        );
        let u = ok("redis://:s3cr%40t@h:1/2");
        assert_eq!(
            u,
            StoreUri::Redis {
                host: "h".into(),
                port: 1,
                db: 2,
                username: None,
                password: Some(Password::Inline("s3cr@t".into()))
            }
        );
        assert_eq!(u.to_string(), "redis://:***@h:1/2");
        assert!(!format!("{u:?}").contains("s3cr"));
        let u = ok("redis://alice:pw@[::1]:6380/");
        assert_eq!(u.to_string(), "redis://alice:***@[::1]:6380/0");
        assert_eq!(ok("redis://h:1").to_string(), "redis://h:1/0");
        assert!(err("redis://h:0/0").contains("port"));
        assert!(err("redis://h:99999/0").contains("port"));
        assert!(err("redis://h:1/x").contains("database"));
        assert!(err("redis://h:1/-1").contains("database"));
        assert!(err("redis://:1/0").contains("host"));
        assert!(err("redis://h/0?x=1").contains("unknown query parameter"));
        // The error message of an unparsable URI must not leak its password either.
        let e = err("redis://:hunter2@h:bad/0");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn redis_passwords_from_files_and_variables() {
        let u = ok("redis://h:1/2?password-file=/etc/qsfs/redis%20pw");
        assert_eq!(
            u,
            StoreUri::Redis {
                host: "h".into(),
                port: 1,
                db: 2,
                username: None,
                password: Some(Password::File("/etc/qsfs/redis pw".into()))
            }
        );
        assert!(!u.has_inline_password());
        assert_eq!(
            u.to_string(),
            "redis://h:1/2?password-file=/etc/qsfs/redis pw"
        );
        let u = ok("redis://alice@h?password-env=REDIS_PW");
        assert_eq!(
            u.to_string(),
            "redis://alice@h:6379/0?password-env=REDIS_PW"
        );
        assert_eq!(ok(&u.to_string()), u, "Display output parses back");
        assert!(ok("redis://:pw@h").has_inline_password());
        assert!(err("redis://h?password-file=rel").contains("absolute"));
        assert!(err("redis://h?password-env=1X").contains("password-env"));
        assert!(err("redis://:pw@h?password-env=X").contains("one way"));
        assert!(err("redis://h?password-env=X&password-file=/p").contains("one way"));
        let e = err("redis://h?password=hunter2");
        assert!(e.contains("password-file") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn passwords_with_any_character_never_show() {
        for pw in ["p/w", "a?b", "x#y", "p:q", "pa@ss", "s p", "%2F", "a/b@c/d"] {
            let text = format!("redis://:{pw}@h:1/0");
            match StoreUri::parse(&text) {
                Ok(u) => {
                    assert!(!u.to_string().contains(pw), "{pw}: {u}");
                    assert!(!format!("{u:?}").contains(pw), "{pw}: {u:?}");
                }
                Err(e) => assert!(!e.to_string().contains(pw), "{pw}: {e}"),
            }
            let bad = format!("redis://:{pw}@h:bad/0");
            let e = err(&bad);
            assert!(!e.contains(pw), "{pw}: {e}");
        }
        assert_eq!(
            StoreUri::parse("redis://:pa/ss@h:1/0").unwrap(),
            StoreUri::Redis {
                host: "h".into(),
                port: 1,
                db: 0,
                username: None,
                password: Some(Password::Inline("pa/ss".into()))
            }
        );
    }

    #[test]
    fn zdb_uris() {
        assert_eq!(
            ok("zdb://10.0.0.5/ns1"),
            StoreUri::Zdb {
                host: "10.0.0.5".into(),
                port: 9900,
                namespace: "ns1".into(),
                password_file: None,
                mode: ZdbMode::User
            }
        );
        let u = ok("zdb://h:9901/ns?password-file=/etc/qsfs/pw&mode=seq");
        assert_eq!(
            u,
            StoreUri::Zdb {
                host: "h".into(),
                port: 9901,
                namespace: "ns".into(),
                password_file: Some("/etc/qsfs/pw".into()),
                mode: ZdbMode::Seq
            }
        );
        assert_eq!(
            u.to_string(),
            "zdb://h:9901/ns?mode=seq&password-file=/etc/qsfs/pw"
        );
        assert_eq!(ok(&u.to_string()), u, "Display output parses back");
        assert_eq!(
            ok("zdb://[::1]/n?mode=user").to_string(),
            "zdb://[::1]:9900/n?mode=user"
        );
        assert!(err("zdb://h:9900").contains("namespace"));
        assert!(err("zdb://h:9900/").contains("namespace"));
        assert!(err("zdb://h/ns?mode=fast").contains("mode"));
        assert!(err("zdb://h/ns?foo=1").contains("unknown"));
        assert!(err("zdb://h/ns?password-file=rel/pw").contains("absolute"));
        let e = err("zdb://:pw@h/ns");
        assert!(e.contains("password-file") && !e.contains(":pw@"), "{e}");
        assert!(err("zdb://h/ns?password=x").contains("password-file"));
    }

    #[test]
    fn unknown_scheme() {
        assert!(err("s3://bucket").contains("scheme"));
        assert!(err("/abs/path").contains("scheme"));
    }
}
