//! The segment codec: turns a sealed segment's plaintext into `k + m` self-verifying shard blobs and back.
//!
//! Encode: zstd (kept only if it shrinks the segment) → XChaCha20-Poly1305 with a fresh random nonce and associated
//! data binding format version, volume, segment id, flags and plaintext length (`seal.rs`) → the sealed bytes cut into
//! `k` equal, zero-padded data shards and `m` reed-solomon parity shards (`erasure.rs`) → each shard wrapped in a
//! `qsfs_por::ShardBlob` whose Merkle root goes into [`SegmentInfo::roots`] and names the shard on its store.
//!
//! Decode is the reverse and never returns wrong bytes: the caller verifies every fetched blob against its root
//! ([`SegmentCodec::verify_shard`]), reed-solomon runs only when a data shard is missing, padding must be zero, the
//! AEAD tag covers the whole segment, and decompression must yield exactly the recorded length.
//!
//! Shard names. The brief proposed `keyed_hash(naming key, root)`; here the name also binds the volume id, segment
//! id and shard index. Reason: a pure content address collides whenever two shards have the same bytes, and that
//! happens routinely — with few sealed bytes and many data shards, trailing data shards are all padding zeros, so
//! every small segment would own a shard of the same name on the same store and garbage-collecting one segment would
//! delete another's shard. The name is still derived from the root (so a rebuilt shard gets its old name back and a
//! re-upload after a crash is idempotent) and still opaque to the store (invariant 4).
//!
//! Everything here is pure CPU work with no I/O; a [`SegmentCodec`] is `Send + Sync` and is shared in an `Arc` by
//! the codec worker pool.

pub(crate) mod erasure;
mod rebuild;
mod seal;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::fmt;

use chacha20poly1305::XChaCha20Poly1305;
use qsfs_backends::ShardKey;
use qsfs_por::{ShardBlob, ShardLayout};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::error::{QsfsError, Result};
pub use erasure::shard_len_for;
pub use rebuild::Rebuilt;
use seal::SealContext;
pub use seal::TAG_LEN;

/// Version of the sealed-segment format; part of the associated data, so a future format can never be mistaken
/// for this one.
pub const SEGMENT_FORMAT_VERSION: u8 = 1;
/// `SegmentInfo::flags` bit: the sealed body is zstd-compressed.
pub const FLAG_COMPRESSED: u32 = 1;
/// `SegmentInfo::flags` bit: the associated data binds the segment to its file and index (`SegmentPlace`).
pub const FLAG_BOUND: u32 = 2;

/// Where a segment belongs: its file's inode and its index in the file. Sealed into segments written since the
/// flag existed, so metadata cannot make one file's segment serve as another's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentPlace {
    pub ino: u64,
    pub index: u64,
}
/// Most shards (k + m) one segment may have. Shard indexes fit a byte, which keeps metadata and names compact.
pub const MAX_SHARDS: usize = 255;

const SHARD_KEY_DOMAIN: &[u8] = b"qsfs shard key v1";

/// Erasure-coding and compression settings of a volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodecParams {
    /// k: shards carrying the sealed segment; any k of the k + m shards restore it.
    pub data_shards: usize,
    /// m: parity shards; up to m shards of a segment may be lost.
    pub parity_shards: usize,
    /// zstd level (zstd's own range; 1 is fastest, negative levels are faster still).
    pub zstd_level: i32,
}

impl CodecParams {
    pub fn total_shards(&self) -> usize {
        self.data_shards + self.parity_shards
    }

    /// Checks k ≥ 1, m ≥ 1, k + m ≤ `MAX_SHARDS` (and that reed-solomon-simd supports the pair) and the zstd level.
    pub fn validate(&self) -> Result<()> {
        let (k, m) = (self.data_shards, self.parity_shards);
        if k == 0 || m == 0 {
            return Err(QsfsError::CodecParams(format!(
                "need at least one data and one parity shard, got {k}+{m}"
            )));
        }
        if k.saturating_add(m) > MAX_SHARDS || !erasure::supports(k, m) {
            return Err(QsfsError::CodecParams(format!(
                "{k}+{m} shards: at most {MAX_SHARDS} in total"
            )));
        }
        let levels = zstd::compression_level_range();
        if !levels.contains(&self.zstd_level) {
            return Err(QsfsError::CodecParams(format!(
                "zstd level {} outside {}..={}",
                self.zstd_level,
                levels.start(),
                levels.end()
            )));
        }
        Ok(())
    }
}

/// The two subkeys the codec needs (derived from the volume master key elsewhere).
#[derive(Clone)]
pub struct SegmentKeys {
    pub encryption: [u8; 32],
    pub shard_naming: [u8; 32],
}

impl Drop for SegmentKeys {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.encryption);
        zeroize::Zeroize::zeroize(&mut self.shard_naming);
    }
}

impl fmt::Debug for SegmentKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Invariant 4: no secret in logs, even through a stray `{:?}`.
        f.write_str("SegmentKeys { .. }")
    }
}

/// What metadata must record about a segment to read it back.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SegmentInfo {
    /// Bytes of plaintext.
    pub plain_len: u64,
    /// Bytes of the sealed segment: (possibly compressed) ciphertext plus the 16-byte tag.
    pub stored_len: u64,
    /// Data bytes per shard (even, ≥ 2; `shard_len_for(stored_len, k)`).
    pub shard_len: u64,
    pub nonce: [u8; 24],
    pub flags: u32,
    /// Merkle root of every shard, data shards first (k + m entries).
    pub roots: Vec<[u8; 32]>,
}

impl SegmentInfo {
    pub fn is_compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }
}

/// One shard ready to be stored: its blob, the blob's root and its name.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedShard {
    pub index: usize,
    pub key: ShardKey,
    pub root: [u8; 32],
    /// `qsfs_por::ShardBlob` bytes.
    pub blob: Vec<u8>,
}

impl fmt::Debug for EncodedShard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The blob can be megabytes; its length is what a log needs.
        f.debug_struct("EncodedShard")
            .field("index", &self.index)
            .field("key", &self.key)
            .field("root", &hex::encode(self.root))
            .field("blob_len", &self.blob.len())
            .finish()
    }
}

/// A whole encoded segment: metadata to record and shards to place.
#[derive(Clone, Debug)]
pub struct EncodedSegment {
    pub info: SegmentInfo,
    pub shards: Vec<EncodedShard>,
}

/// The codec of one volume: parameters, keys and volume id. Cheap to share in an `Arc`.
#[derive(Clone)]
pub struct SegmentCodec {
    params: CodecParams,
    cipher: XChaCha20Poly1305,
    naming_key: [u8; 32],
    volume_id: [u8; 16],
}

impl Drop for SegmentCodec {
    fn drop(&mut self) {
        // The cipher wipes its own key.
        zeroize::Zeroize::zeroize(&mut self.naming_key);
    }
}

impl fmt::Debug for SegmentCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentCodec")
            .field("params", &self.params)
            .field("volume_id", &hex::encode(self.volume_id))
            .finish_non_exhaustive()
    }
}

/// Sizes derived from a checked `SegmentInfo`.
struct Shape {
    stored_len: usize,
    shard_len: usize,
}

impl SegmentCodec {
    pub fn new(params: CodecParams, keys: SegmentKeys, volume_id: [u8; 16]) -> Result<Self> {
        params.validate()?;
        Ok(SegmentCodec {
            params,
            cipher: seal::cipher(&keys.encryption),
            naming_key: keys.shard_naming,
            volume_id,
        })
    }

    pub fn params(&self) -> &CodecParams {
        &self.params
    }

    pub fn volume_id(&self) -> &[u8; 16] {
        &self.volume_id
    }

    /// The store name of shard `index` of segment `segment_id` whose blob has Merkle root `root`:
    /// `BLAKE3-keyed(shard naming key, "qsfs shard key v1" || volume id || segment id || index || root)`.
    /// See the module docs for why it is not the root alone.
    pub fn shard_key(&self, segment_id: u64, index: usize, root: &[u8; 32]) -> ShardKey {
        let mut hasher = blake3::Hasher::new_keyed(&self.naming_key);
        hasher.update(SHARD_KEY_DOMAIN);
        hasher.update(&self.volume_id);
        hasher.update(&segment_id.to_le_bytes());
        hasher.update(&(index as u64).to_le_bytes());
        hasher.update(root);
        ShardKey(*hasher.finalize().as_bytes())
    }

    /// The largest shard blob a segment of up to `plain_len` plaintext bytes can produce (incompressible data is
    /// stored raw, so that is the worst case). Lets a volume check store value limits without encoding anything.
    pub fn max_shard_blob_len(&self, plain_len: u64) -> Result<u64> {
        let shard_len = shard_len_for(
            plain_len.saturating_add(TAG_LEN as u64),
            self.params.data_shards,
        );
        ShardLayout::new(shard_len)
            .map(|layout| layout.blob_len())
            .map_err(|e| QsfsError::CodecParams(format!("segments of {plain_len} bytes: {e}")))
    }

    /// Compresses, seals and erasure-codes one segment that belongs to no file position (tests, tools).
    pub fn encode(&self, segment_id: u64, plaintext: &[u8]) -> Result<EncodedSegment> {
        self.encode_at(segment_id, None, plaintext)
    }

    /// Compresses, seals and erasure-codes one segment, bound to `place` when given. Any length works, including 0.
    pub fn encode_at(
        &self,
        segment_id: u64,
        place: Option<SegmentPlace>,
        plaintext: &[u8],
    ) -> Result<EncodedSegment> {
        let (k, m) = (self.params.data_shards, self.params.parity_shards);
        let (body, mut flags) =
            seal::body_and_flags(plaintext, self.params.zstd_level, FLAG_COMPRESSED)?;
        if place.is_some() {
            flags |= FLAG_BOUND;
        }
        let body_len = body.len();
        let stored_len = body_len + TAG_LEN;
        let shard_len = shard_len_for(stored_len as u64, k) as usize;
        // Sealed bytes and zero padding in one buffer, so the data shards are plain sub-slices of it. Built without
        // zero-filling the part the body overwrites, and reusing the compressor's buffer when there is one.
        let mut data = match body {
            Cow::Owned(compressed) => compressed,
            Cow::Borrowed(plain) => {
                let mut data = Vec::with_capacity(k * shard_len);
                data.extend_from_slice(plain);
                data
            }
        };
        data.resize(k * shard_len, 0);
        let mut nonce = [0u8; 24];
        // ThreadRng is a CSPRNG seeded from the OS; 192-bit random nonces make reuse negligible.
        rand::rng().fill_bytes(&mut nonce);
        let context = self.seal_context(segment_id, flags, plaintext.len() as u64, place);
        seal::seal_in_place(&self.cipher, &nonce, &context, &mut data, body_len)?;

        let data_shards: Vec<&[u8]> = data.chunks_exact(shard_len).collect();
        let mut shards: Vec<EncodedShard> = Vec::with_capacity(k + m);
        for (index, shard) in data_shards.iter().enumerate() {
            shards.push(self.encode_shard(segment_id, index, shard));
        }
        erasure::for_each_parity(k, m, shard_len, &data_shards, |index, shard| {
            shards.push(self.encode_shard(segment_id, k + index, shard))
        })?;
        let info = SegmentInfo {
            plain_len: plaintext.len() as u64,
            stored_len: stored_len as u64,
            shard_len: shard_len as u64,
            nonce,
            flags,
            roots: shards.iter().map(|shard| shard.root).collect(),
        };
        Ok(EncodedSegment { info, shards })
    }

    /// Verifies one fetched blob of shard `index` against `info.roots[index]`; returns the shard data bytes.
    pub fn verify_shard(
        &self,
        segment_id: u64,
        info: &SegmentInfo,
        index: usize,
        blob: &[u8],
    ) -> Result<Vec<u8>> {
        self.open_shard(segment_id, info, index, blob, true)
    }

    /// `verify_shard` without hashing the shard (see `ShardBlob::data_unhashed`): only for a decode whose AEAD
    /// check decides, with `verify_shard` to fall back on when it fails.
    pub fn shard_data_unhashed(
        &self,
        segment_id: u64,
        info: &SegmentInfo,
        index: usize,
        blob: &[u8],
    ) -> Result<Vec<u8>> {
        self.open_shard(segment_id, info, index, blob, false)
    }

    fn open_shard(
        &self,
        segment_id: u64,
        info: &SegmentInfo,
        index: usize,
        blob: &[u8],
        hashed: bool,
    ) -> Result<Vec<u8>> {
        self.check_info(segment_id, info)?;
        let root = info
            .roots
            .get(index)
            .ok_or_else(|| QsfsError::CorruptShard {
                segment: segment_id,
                index,
                reason: format!("the segment has only {} shards", info.roots.len()),
            })?;
        let opened = if hashed {
            ShardBlob::open(blob, root, info.shard_len)
        } else {
            ShardBlob::data_unhashed(blob, root, info.shard_len)
        };
        opened
            .map(<[u8]>::to_vec)
            .map_err(|e| QsfsError::CorruptShard {
                segment: segment_id,
                index,
                reason: e.to_string(),
            })
    }

    /// `decode_at` for a segment that belongs to no file position.
    pub fn decode(
        &self,
        segment_id: u64,
        info: &SegmentInfo,
        shards: Vec<Option<Vec<u8>>>,
    ) -> Result<Vec<u8>> {
        self.decode_at(segment_id, None, info, shards)
    }

    /// Reassembles the plaintext from >= k VERIFIED shard data buffers (None = missing), reconstructing with RS
    /// only when a data shard is missing (data shards first: decode only on loss). A bound segment opens only at
    /// the `place` it was sealed for.
    pub fn decode_at(
        &self,
        segment_id: u64,
        place: Option<SegmentPlace>,
        info: &SegmentInfo,
        mut shards: Vec<Option<Vec<u8>>>,
    ) -> Result<Vec<u8>> {
        let shape = self.check_info(segment_id, info)?;
        self.check_shards(segment_id, &shape, &shards)?;
        let k = self.params.data_shards;
        erasure::restore_data_shards(
            segment_id,
            k,
            self.params.parity_shards,
            shape.shard_len,
            &mut shards,
        )?;

        let mut sealed = Vec::with_capacity(k * shape.shard_len);
        for shard in shards.iter().take(k) {
            let shard = shard.as_deref().ok_or_else(|| QsfsError::CorruptSegment {
                segment: segment_id,
                reason: "a data shard is still missing after reconstruction".into(),
            })?;
            sealed.extend_from_slice(shard);
        }
        drop(shards);
        // Padding is outside the AEAD, so check it explicitly: wrong bytes anywhere are an error.
        if sealed[shape.stored_len..].iter().any(|&byte| byte != 0) {
            return Err(QsfsError::CorruptSegment {
                segment: segment_id,
                reason: "non-zero shard padding".into(),
            });
        }
        sealed.truncate(shape.stored_len);
        let place = if info.flags & FLAG_BOUND != 0 {
            Some(place.ok_or_else(|| QsfsError::CorruptSegment {
                segment: segment_id,
                reason: "a segment bound to a file position was read without one".into(),
            })?)
        } else {
            None
        };
        let context = self.seal_context(segment_id, info.flags, info.plain_len, place);
        seal::open_in_place(&self.cipher, &info.nonce, &context, &mut sealed)?;
        sealed.truncate(shape.stored_len - TAG_LEN);
        if info.is_compressed() {
            seal::decompress(segment_id, &sealed, info.plain_len)
        } else {
            Ok(sealed)
        }
    }

    /// Rebuilds the blobs of the missing shard indexes from >= k verified shards (for repair). The result is
    /// byte-identical to what `encode` produced (erasure coding and blob layout are deterministic given the sealed
    /// bytes); every rebuilt root is checked against `info.roots` before it is returned.
    pub fn rebuild_shards(
        &self,
        segment_id: u64,
        info: &SegmentInfo,
        shards: Vec<Option<Vec<u8>>>,
        wanted: &[usize],
    ) -> Result<Vec<EncodedShard>> {
        let shape = self.check_info(segment_id, info)?;
        self.check_shards(segment_id, &shape, &shards)?;
        let sources: Vec<Option<&[u8]>> = shards.iter().map(Option::as_deref).collect();
        match self.rebuild_from(segment_id, info, &sources, wanted)? {
            Rebuilt::Shards(shards) => Ok(shards),
            Rebuilt::Mismatch(index) => Err(QsfsError::CorruptSegment {
                segment: segment_id,
                reason: format!("rebuilt shard {index} does not match its recorded Merkle root"),
            }),
        }
    }

    fn encode_shard(&self, segment_id: u64, index: usize, data: &[u8]) -> EncodedShard {
        let (blob, root) = ShardBlob::encode(data);
        EncodedShard {
            index,
            key: self.shard_key(segment_id, index, &root),
            root,
            blob,
        }
    }

    fn seal_context(
        &self,
        segment_id: u64,
        flags: u32,
        plain_len: u64,
        place: Option<SegmentPlace>,
    ) -> SealContext {
        SealContext {
            format_version: SEGMENT_FORMAT_VERSION,
            volume_id: self.volume_id,
            segment_id,
            flags,
            plain_len,
            place: place.map(|p| (p.ino, p.index)),
        }
    }

    /// Checks that `info` is a layout `encode` could have produced with these parameters. Metadata is local and
    /// trusted, but a mismatch (another k+m, a damaged row) must surface as an error, not as an odd slice panic.
    fn check_info(&self, segment: u64, info: &SegmentInfo) -> Result<Shape> {
        let corrupt = |reason: String| QsfsError::CorruptSegment {
            segment,
            reason: format!("metadata: {reason}"),
        };
        let (k, n) = (self.params.data_shards, self.params.total_shards());
        if info.roots.len() != n {
            return Err(corrupt(format!(
                "{} shard roots recorded, the codec uses {n}",
                info.roots.len()
            )));
        }
        if info.flags & !(FLAG_COMPRESSED | FLAG_BOUND) != 0 {
            return Err(corrupt(format!("unknown flags {:#x}", info.flags)));
        }
        if info.stored_len < TAG_LEN as u64 {
            return Err(corrupt(format!(
                "stored length {} is shorter than the tag",
                info.stored_len
            )));
        }
        if info.shard_len != shard_len_for(info.stored_len, k) {
            return Err(corrupt(format!(
                "shard length {} does not fit stored length {}",
                info.shard_len, info.stored_len
            )));
        }
        let body_len = info.stored_len - TAG_LEN as u64;
        // Compression is kept only when it shrinks the segment, and a raw body is the plaintext itself.
        let consistent = if info.is_compressed() {
            info.plain_len > body_len
        } else {
            info.plain_len == body_len
        };
        if !consistent {
            return Err(corrupt(format!(
                "plain length {} does not fit stored length {}",
                info.plain_len, info.stored_len
            )));
        }
        let too_large = || {
            corrupt(format!(
                "shard length {} too large for this platform",
                info.shard_len
            ))
        };
        let shard_len = usize::try_from(info.shard_len).map_err(|_| too_large())?;
        shard_len.checked_mul(k).ok_or_else(too_large)?;
        Ok(Shape {
            stored_len: info.stored_len as usize,
            shard_len,
        })
    }

    fn check_shards(&self, segment: u64, shape: &Shape, shards: &[Option<Vec<u8>>]) -> Result<()> {
        let n = self.params.total_shards();
        if shards.len() != n {
            return Err(QsfsError::CorruptSegment {
                segment,
                reason: format!("{} shard slots given, {n} expected", shards.len()),
            });
        }
        for (index, shard) in shards.iter().enumerate() {
            if let Some(shard) = shard
                .as_ref()
                .filter(|shard| shard.len() != shape.shard_len)
            {
                return Err(QsfsError::CorruptShard {
                    segment,
                    index,
                    reason: format!("{} data bytes, expected {}", shard.len(), shape.shard_len),
                });
            }
        }
        Ok(())
    }
}
