//! The one error type of `qsfs-por`: everything that can be wrong with a shard blob, a Merkle proof or a sampling
//! request. Messages name the offending value so an audit report can say what failed without a debugger.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Error)]
pub enum PorError {
    #[error("shard blob is {len} bytes, shorter than its {needed}-byte header")]
    BlobTooShort { len: usize, needed: usize },
    #[error("shard blob has bad magic (not a qsfs shard)")]
    BadMagic,
    #[error("shard blob format version {found} is not supported (this build reads {supported})")]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("shard blob header field {field} is {found}, expected {expected}")]
    HeaderMismatch {
        field: &'static str,
        found: u64,
        expected: u64,
    },
    #[error("shard blob is {found} bytes, its header implies {expected}")]
    BlobLength { found: u64, expected: u64 },
    #[error("{part} is {found} bytes, expected {expected}")]
    PartLength {
        part: &'static str,
        found: usize,
        expected: usize,
    },
    #[error("shard blob header names root {found}, expected {expected}")]
    HeaderRoot { found: String, expected: String },
    #[error("shard data does not hash to the expected Merkle root")]
    RootMismatch,
    #[error("shard blob's stored Merkle nodes do not match its data")]
    NodeMismatch,
    #[error("leaf index {index} out of range: the shard has {leaf_count} leaves")]
    LeafOutOfRange { index: u64, leaf_count: u64 },
    #[error("shard of {data_len} bytes is too large to lay out on this platform")]
    TooLarge { data_len: u64 },
    #[error("invalid sampling parameter {name} = {value}: must lie strictly between 0 and 1")]
    SamplingParam { name: &'static str, value: f64 },
    #[error("audit nonce {found:?} is not 64 hex digits")]
    BadNonce { found: String },
}

impl PorError {
    /// Always false: every `PorError` is a verdict about bytes or parameters that asking again cannot change
    /// (store I/O errors, which can be transient, are the callers' and never pass through this type).
    pub fn is_retryable(&self) -> bool {
        false
    }
}

pub type Result<T, E = PorError> = std::result::Result<T, E>;
