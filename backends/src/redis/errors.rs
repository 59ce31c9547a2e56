//! Errors and replies of RESP servers (redis and 0-db): classifying a server's error text and a redis crate error
//! into the `StoreError` that tells a caller what to do, and reading INFO fields.

use redis::{ErrorKind, RedisError, Value};

use crate::error::StoreError;

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
pub(super) fn map_redis_error(uri: &str, e: RedisError) -> StoreError {
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
pub(crate) fn classify_server_message(uri: String, msg: String) -> StoreError {
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

pub(super) fn int(v: &Value) -> Option<i64> {
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
