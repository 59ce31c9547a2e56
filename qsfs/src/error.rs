//! The one error type of the qsfs library. Each variant says what went wrong in words a user can act on; `errno`
//! and `is_retryable` classify it for the FUSE edge and for retry loops.

use std::path::PathBuf;

use qsfs_backends::StoreError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum QsfsError {
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("key does not match this volume ({path})")]
    WrongKey { path: PathBuf },
    #[error("key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error("volume {path} already exists; refusing to overwrite it")]
    VolumeExists { path: PathBuf },
    #[error("no volume at {path} (run `qsfs init` first)")]
    NoVolume { path: PathBuf },
    #[error("volume {path} is in use by another qsfs process (pid {pid})")]
    VolumeLocked { path: PathBuf, pid: String },
    #[error("metadata database: {0}")]
    Metadata(#[from] rusqlite::Error),
    #[error("metadata schema version {found} is newer than this qsfs understands ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("only {available} of the {needed} stores needed for a write are reachable: {detail}")]
    NotEnoughStores {
        needed: usize,
        available: usize,
        detail: String,
    },
    #[error("shard {index} of segment {segment} is corrupt: {reason}")]
    CorruptShard {
        segment: u64,
        index: usize,
        reason: String,
    },
    #[error(
        "segment {segment} cannot be decrypted: it is corrupt or belongs to another volume or segment"
    )]
    AeadFailure { segment: u64 },
    #[error("segment {segment} is corrupt: {reason}")]
    CorruptSegment { segment: u64, reason: String },
    #[error(
        "{path}: data lost: segment {segment} has only {available} readable shards, {needed} needed"
    )]
    Unreadable {
        path: String,
        segment: u64,
        available: usize,
        needed: usize,
    },
    #[error("invalid codec parameters: {0}")]
    CodecParams(String),
    #[error("{0}: no such file or directory")]
    NotFound(String),
    #[error("{0}: file exists")]
    Exists(String),
    #[error("{0}: not a directory")]
    NotADirectory(String),
    #[error("{0}: is a directory")]
    IsADirectory(String),
    #[error("{0}: directory not empty")]
    NotEmpty(String),
    #[error("{0}: invalid argument")]
    Invalid(String),
    #[error("no space left: {0}")]
    NoSpace(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl QsfsError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        QsfsError::Io {
            context: context.into(),
            source,
        }
    }

    /// True when trying again later may succeed (a store that was briefly unreachable).
    pub fn is_retryable(&self) -> bool {
        match self {
            QsfsError::Store(e) => e.is_retryable(),
            QsfsError::NotEnoughStores { .. } => true,
            _ => false,
        }
    }
}

pub type Result<T, E = QsfsError> = std::result::Result<T, E>;
