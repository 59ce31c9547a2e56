//! Proofs of retrievability for qsfs: the Merkle trees over shard leaves (BLAKE3, domain-separated leaves and
//! nodes), the versioned shard blob layout every store holds, inclusion proofs that an audit checks from a few range
//! reads, and the sampling math that says how many leaves an audit must check. Pure and synchronous.
//!
//! - [`merkle`]: the hash rule, [`ShardTree`], [`MerklePath`], [`verify_leaf`].
//! - [`shard_blob`]: [`ShardBlob`] encode/open, [`ShardLayout`] byte ranges for audits.
//! - [`sampling`]: [`samples_needed`] (δ, P → c).
//! - [`challenge`]: [`Nonce`], [`Challenge`] drawing, [`LeafProbe`] range reads and their verification.
//! - [`report`]: [`AuditReport`] and its parts, the verdict scale.

pub mod challenge;
pub mod error;
pub mod merkle;
pub mod report;
pub mod sampling;
pub mod shard_blob;

pub use challenge::{Challenge, ChallengeStream, LeafProbe, NONCE_LEN, Nonce, Sample};
pub use error::{PorError, Result};
pub use merkle::{
    Blake3Hasher, Hash, LEAF_SIZE, MerklePath, ShardTree, leaf_hash, node_hash, verify_leaf,
};
pub use report::{
    AuditMode, AuditReport, AuditTotals, Guarantee, Latencies, LostSegment, REPORT_VERSION,
    StoreAudit, Verdict, detection_probability,
};
pub use sampling::samples_needed;
pub use shard_blob::{HEADER_LEN, SHARD_BLOB_VERSION, ShardBlob, ShardHeader, ShardLayout};
