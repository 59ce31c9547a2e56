//! Errors and replies of RESP servers (redis and 0-db): classifying a server's error text and a redis crate error
//! into the `StoreError` that tells a caller what to do, and reading INFO fields.

use redis::{ErrorKind, RedisError, Value};

use crate::error::StoreError;
use crate::resp::classify_server_message;

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

pub(super) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}
