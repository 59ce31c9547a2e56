//! The one error type of the qsfs library. Each variant says what went wrong in words a user can act on; `errno`
//! and `is_retryable` classify it for the FUSE edge and for retry loops.

use std::path::PathBuf;

use qsfs_backends::StoreError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum QsfsError {
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    /// An option of `init` (named as the command line spells it) is out of range.
    #[error("--{option}: {reason}")]
    InitOption {
        option: &'static str,
        reason: String,
    },
    /// A volume file or directory others may read or change: refused, with the command that fixes it.
    #[error("{path}: {reason}")]
    Exposed { path: PathBuf, reason: String },
    #[error("key does not match this volume ({path})")]
    WrongKey { path: PathBuf },
    #[error("key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error("volume {path} already exists; refusing to overwrite it")]
    VolumeExists { path: PathBuf },
    #[error("no volume at {path} (run `qsfs init` first)")]
    NoVolume { path: PathBuf },
    #[error(
        "volume {path} is in use by another qsfs process (pid {pid}); if it is mounted, `qsfs umount` it first"
    )]
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
    #[error("metadata log: {0}")]
    MetaLog(String),
    #[error("{0}")]
    ReadOnly(String),
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
    #[error("{0}: file name too long")]
    NameTooLong(String),
    #[error("{0}: no such attribute")]
    NoAttribute(String),
    #[error("{0}: operation not supported")]
    Unsupported(String),
    #[error("{0}: operation not permitted")]
    NotPermitted(String),
    #[error("{0} interrupted")]
    Interrupted(String),
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
            // A stopped audit or repair keeps its progress (checkpoint, queue): running it again continues.
            QsfsError::Interrupted(_) => true,
            _ => false,
        }
    }
}

impl QsfsError {
    /// The errno a FUSE reply carries for this error: the one place the library's errors meet POSIX. Lost or
    /// damaged data and unreachable stores are EIO (a reader must never mistake data loss for a missing file);
    /// a store that reports itself full is ENOSPC; namespace errors map to their POSIX namesakes.
    pub fn errno(&self) -> i32 {
        use nix::libc;
        match self {
            QsfsError::NotFound(_) => libc::ENOENT,
            QsfsError::Exists(_) => libc::EEXIST,
            QsfsError::NotADirectory(_) => libc::ENOTDIR,
            QsfsError::IsADirectory(_) => libc::EISDIR,
            QsfsError::NotEmpty(_) => libc::ENOTEMPTY,
            QsfsError::Invalid(_) | QsfsError::InitOption { .. } => libc::EINVAL,
            QsfsError::NameTooLong(_) => libc::ENAMETOOLONG,
            QsfsError::NoAttribute(_) => libc::ENODATA,
            QsfsError::Unsupported(_) => libc::EOPNOTSUPP,
            QsfsError::NotPermitted(_) => libc::EPERM,
            QsfsError::NoSpace(_) => libc::ENOSPC,
            QsfsError::Interrupted(_) => libc::EINTR,
            QsfsError::ReadOnly(_) => libc::EROFS,
            QsfsError::Store(StoreError::Full { .. }) => libc::ENOSPC,
            QsfsError::Metadata(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DiskFull =>
            {
                libc::ENOSPC
            }
            QsfsError::Io { source, .. } => match source.raw_os_error() {
                Some(code) if code == libc::ENOSPC || code == libc::EDQUOT => libc::ENOSPC,
                _ => libc::EIO,
            },
            // Everything else means the volume could not do what was asked with the data it holds: a shard or
            // segment that is missing, corrupt or unreadable, a store that is unreachable or too few stores for
            // the write quorum, a metadata failure. EIO is what POSIX programs treat as "the device failed".
            QsfsError::Store(_)
            | QsfsError::NotEnoughStores { .. }
            | QsfsError::CorruptShard { .. }
            | QsfsError::AeadFailure { .. }
            | QsfsError::CorruptSegment { .. }
            | QsfsError::Unreadable { .. }
            | QsfsError::Metadata(_)
            | QsfsError::Config { .. }
            | QsfsError::Exposed { .. }
            | QsfsError::WrongKey { .. }
            | QsfsError::KeyFile { .. }
            | QsfsError::VolumeExists { .. }
            | QsfsError::NoVolume { .. }
            | QsfsError::VolumeLocked { .. }
            | QsfsError::SchemaTooNew { .. }
            | QsfsError::MetaLog(_)
            | QsfsError::CodecParams(_) => libc::EIO,
        }
    }
}

pub type Result<T, E = QsfsError> = std::result::Result<T, E>;
