//! The one error type of the backends crate. Every variant names the store it came from and knows whether a retry
//! can help (`is_retryable`): callers retry transient failures with backoff and give up at once on permanent ones.
//!
//! Text in these errors may come from a store (error replies, reasons): a hostile store could put terminal escape
//! sequences in it. Every string field is therefore shown through [`sanitize`] by the `Display` impl, so nothing a
//! store said reaches a terminal or a log raw, whoever prints the error.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{}: no such shard", clean(uri))]
    NotFound { uri: String },
    #[error("{}: store unreachable: {}", clean(uri), clean(reason))]
    Unavailable { uri: String, reason: String },
    #[error("{}: store is full", clean(uri))]
    Full { uri: String },
    #[error(
        "{}: value of {size} bytes exceeds this store's limit of {limit} bytes",
        clean(uri)
    )]
    TooLarge { uri: String, size: u64, limit: u64 },
    #[error("{}: this store cannot read byte ranges", clean(uri))]
    RangeUnsupported { uri: String },
    #[error(
        "{}: range {offset}+{len} is past the end of a {size}-byte shard",
        clean(uri)
    )]
    RangeOutOfBounds {
        uri: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error(
        "{}: no qsfs identity marker: this store was never initialised for a volume (or the disk behind it is not mounted)",
        clean(uri)
    )]
    IdentityMissing { uri: String },
    #[error(
        "{}: store belongs to volume {} store {found_store}, expected volume {} store {expected_store}",
        clean(uri),
        clean(found_volume),
        clean(expected_volume)
    )]
    IdentityMismatch {
        uri: String,
        found_volume: String,
        found_store: u32,
        expected_volume: String,
        expected_store: u32,
    },
    #[error(
        "{}: store already holds a qsfs identity marker (volume {} store {store}); refusing to overwrite it",
        clean(uri),
        clean(volume)
    )]
    IdentityExists {
        uri: String,
        volume: String,
        store: u32,
    },
    #[error("{}: authentication failed: {}", clean(uri), clean(reason))]
    Auth { uri: String, reason: String },
    #[error("{}: protocol error: {}", clean(uri), clean(reason))]
    Protocol { uri: String, reason: String },
    #[error("{}: I/O error: {}", clean(uri), clean(&source.to_string()))]
    Io {
        uri: String,
        #[source]
        source: std::io::Error,
    },
    /// The store served something that cannot be the object asked for, refused before it was buffered: more
    /// bytes than expected, a reply of the wrong shape, a special file where a shard file should be. Permanent:
    /// asking again gets the same answer; the copy on the store is bad and repair rewrites it.
    #[error("{}: refused what the store served: {}", clean(uri), clean(reason))]
    Refused { uri: String, reason: String },
    #[error("invalid store URI {uri:?}: {}", clean(reason))]
    InvalidUri { uri: String, reason: String },
}

/// What a failed read says about the blob it asked for (see [`StoreError::read_fault`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFault {
    /// The store does not have it.
    Missing,
    /// The store has something, but not the blob: truncated, oversized, unreadable or of the wrong kind.
    Damaged,
    /// The store did not answer usefully; nothing is known about the blob.
    Unreachable,
}

impl StoreError {
    /// True when the same request may succeed later (network trouble, a server restarting); false when repeating it
    /// cannot help (missing shard, wrong identity, a value too big, bad URI).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Unavailable { .. } => true,
            StoreError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }

    /// What a failed read says about the blob asked for — the one classification every reader uses (the read
    /// path, audits, repair), so a failing disk is recorded against its shard everywhere alike.
    pub fn read_fault(&self) -> ReadFault {
        match self {
            StoreError::NotFound { .. } => ReadFault::Missing,
            // Cut short, oversized, or not a blob at all (a FIFO, a reply of the wrong shape).
            StoreError::RangeOutOfBounds { .. } | StoreError::Refused { .. } => ReadFault::Damaged,
            // A disk that fails to read the file: the copy is unreadable, whatever the cause.
            StoreError::Io { .. } if !self.is_retryable() => ReadFault::Damaged,
            // Everything else is about the store, not the blob (down, refusing us, talking nonsense).
            _ => ReadFault::Unreachable,
        }
    }

    /// The store the error came from, as its redacted URI.
    pub fn uri(&self) -> &str {
        match self {
            StoreError::NotFound { uri }
            | StoreError::Unavailable { uri, .. }
            | StoreError::Full { uri }
            | StoreError::TooLarge { uri, .. }
            | StoreError::RangeUnsupported { uri }
            | StoreError::RangeOutOfBounds { uri, .. }
            | StoreError::IdentityMissing { uri }
            | StoreError::IdentityMismatch { uri, .. }
            | StoreError::IdentityExists { uri, .. }
            | StoreError::Auth { uri, .. }
            | StoreError::Protocol { uri, .. }
            | StoreError::Io { uri, .. }
            | StoreError::Refused { uri, .. }
            | StoreError::InvalidUri { uri, .. } => uri,
        }
    }
}

/// `text` with every control character (C0, DEL, C1 — so every ANSI escape sequence's introducer) replaced by
/// its `\u{..}` escape: safe to print on a terminal or write to a log. Text that came from a store passes through
/// here before anyone shows it.
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// Control characters, and the Unicode line separators and bidi overrides that can disguise what a line says.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `sanitize` for the `Display` impl, which borrows its fields.
fn clean(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(unsafe_char) {
        std::borrow::Cow::Owned(sanitize(text))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_text_is_shown_without_control_characters() {
        let e = StoreError::Protocol {
            uri: "redis://h:1/0".into(),
            reason: "ERR \x1b]0;pwned\x07\x1b[31mred\r\nline\u{9b}2J \u{202e}rtl".into(),
        };
        let shown = e.to_string();
        assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
        assert!(!shown.contains('\u{202e}'), "{shown:?}");
        assert!(shown.contains("\\u{1b}[31mred"), "{shown:?}");
        assert_eq!(sanitize("plain text: ok"), "plain text: ok");
        let io = StoreError::Io {
            uri: "dir:/x".into(),
            source: std::io::Error::other("bad\x1b[2Jname"),
        };
        assert!(!io.to_string().contains('\x1b'));
    }
}
