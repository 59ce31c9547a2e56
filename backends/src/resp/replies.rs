//! What RESP servers (redis and 0-db) say, as store errors: a server's error text classified into the
//! `StoreError` that tells a caller what to do, unexpected replies shown briefly, INFO fields, and the
//! connection timeouts both store kinds use.

use std::time::Duration;

use crate::error::StoreError;

pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// A reply that is not what `what` answers, shown (at most 200 characters of it) in a protocol error.
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
