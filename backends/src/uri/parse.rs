//! Parsing of redis (plain and TLS) and 0-db URIs: hosts, ports, %-escapes and the query parameters each scheme accepts.

use std::path::PathBuf;

use super::{REDIS_DEFAULT_PORT, StoreUri, TlsSettings, ZDB_DEFAULT_PORT, ZdbMode};
use crate::secret::{Password, is_secret_key, redact_raw};

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

pub(super) fn percent_decode(s: &str) -> Result<String, String> {
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

/// `tls`: the URI was `rediss://`, which alone accepts `ca-file=`.
pub(super) fn parse_redis(rest: &str, tls: bool) -> Result<StoreUri, String> {
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
    let RedisQuery {
        password: from_query,
        ca_file,
    } = parse_redis_query(query.unwrap_or(""), tls)?;
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
        tls: tls.then_some(TlsSettings { ca_file }),
    })
}

struct RedisQuery {
    password: Option<Password>,
    ca_file: Option<PathBuf>,
}

/// The query of a redis URI: `password-file=/abs/path` or `password-env=VAR`, and for `rediss://`
/// `ca-file=/abs/path`; nothing else.
fn parse_redis_query(query: &str, tls: bool) -> Result<RedisQuery, String> {
    let mut found = None;
    let mut ca_file = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("query item {:?} has no value", redact_raw(pair)))?;
        let password = match k {
            "ca-file" if !tls => {
                return Err("ca-file needs TLS: write rediss:// instead of redis://".into());
            }
            "ca-file" => {
                let path = PathBuf::from(percent_decode(v)?);
                if !path.is_absolute() {
                    return Err("ca-file must be an absolute path".into());
                }
                if ca_file.replace(path).is_some() {
                    return Err("ca-file is given twice".into());
                }
                continue;
            }
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
                    "unknown query parameter {:?} (expected password-file, password-env or ca-file)",
                    redact_raw(k)
                ));
            }
        };
        if found.replace(password).is_some() {
            return Err("give the password one way: password-file or password-env, once".into());
        }
    }
    Ok(RedisQuery {
        password: found,
        ca_file,
    })
}

pub(super) fn parse_zdb(rest: &str) -> Result<StoreUri, String> {
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
