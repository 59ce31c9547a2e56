//! The one error type of the backends crate. Every variant names the store it came from and knows whether a retry
//! can help (`is_retryable`): callers retry transient failures with backoff and give up at once on permanent ones.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{uri}: no such shard")]
    NotFound { uri: String },
    #[error("{uri}: store unreachable: {reason}")]
    Unavailable { uri: String, reason: String },
    #[error("{uri}: store is full")]
    Full { uri: String },
    #[error("{uri}: value of {size} bytes exceeds this store's limit of {limit} bytes")]
    TooLarge { uri: String, size: u64, limit: u64 },
    #[error("{uri}: this store cannot read byte ranges")]
    RangeUnsupported { uri: String },
    #[error("{uri}: range {offset}+{len} is past the end of a {size}-byte shard")]
    RangeOutOfBounds {
        uri: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error(
        "{uri}: no qsfs identity marker: this store was never initialised for a volume (or the disk behind it is not mounted)"
    )]
    IdentityMissing { uri: String },
    #[error(
        "{uri}: store belongs to volume {found_volume} store {found_store}, expected volume {expected_volume} store {expected_store}"
    )]
    IdentityMismatch {
        uri: String,
        found_volume: String,
        found_store: u32,
        expected_volume: String,
        expected_store: u32,
    },
    #[error(
        "{uri}: store already holds a qsfs identity marker (volume {volume} store {store}); refusing to overwrite it"
    )]
    IdentityExists {
        uri: String,
        volume: String,
        store: u32,
    },
    #[error("{uri}: authentication failed: {reason}")]
    Auth { uri: String, reason: String },
    #[error("{uri}: protocol error: {reason}")]
    Protocol { uri: String, reason: String },
    #[error("{uri}: I/O error: {source}")]
    Io {
        uri: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid store URI {uri:?}: {reason}")]
    InvalidUri { uri: String, reason: String },
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
            | StoreError::InvalidUri { uri, .. } => uri,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
