//! The confidentiality half of the segment codec: zstd compression and XChaCha20-Poly1305 sealing, plus the
//! associated data that binds a sealed segment to its place in one volume (invariant 5).
//!
//! The associated data is `"qsfs segment" || format version || volume id || segment id || flags || plain length`,
//! and for segments with `FLAG_BOUND` also `|| file's inode || index in the file`: a segment row moved to another
//! file or position in metadata (a tampered or swapped row) then fails to open instead of serving another file's
//! bytes.
//! Binding the flags means a "compressed" bit flipped in metadata cannot make valid ciphertext decompress as
//! something else; binding the plaintext length (beyond what the brief asked) means a wrong length in metadata is
//! caught by the tag before it can size an allocation or pass the zstd size check.

use std::borrow::Cow;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};

use crate::error::{QsfsError, Result};

/// Bytes of the Poly1305 tag at the end of every sealed segment.
pub const TAG_LEN: usize = 16;

const AAD_DOMAIN: &[u8; 12] = b"qsfs segment";

/// Who a sealed segment belongs to and how it was sealed; everything here goes into the associated data.
pub(super) struct SealContext {
    pub format_version: u8,
    pub volume_id: [u8; 16],
    pub segment_id: u64,
    pub flags: u32,
    pub plain_len: u64,
    /// (inode, index) for bound segments.
    pub place: Option<(u64, u64)>,
}

impl SealContext {
    fn associated_data(&self) -> Vec<u8> {
        let mut aad = vec![0u8; 49];
        aad[..12].copy_from_slice(AAD_DOMAIN);
        aad[12] = self.format_version;
        aad[13..29].copy_from_slice(&self.volume_id);
        aad[29..37].copy_from_slice(&self.segment_id.to_le_bytes());
        aad[37..41].copy_from_slice(&self.flags.to_le_bytes());
        aad[41..49].copy_from_slice(&self.plain_len.to_le_bytes());
        if let Some((ino, index)) = self.place {
            aad.extend_from_slice(&ino.to_le_bytes());
            aad.extend_from_slice(&index.to_le_bytes());
        }
        aad
    }
}

/// Compresses `plaintext` at `level`; `None` when compression does not shrink it (the segment is then stored raw,
/// which also covers the empty segment and already-compressed or encrypted data).
pub(super) fn compress(plaintext: &[u8], level: i32) -> Result<Option<Vec<u8>>> {
    if plaintext.is_empty() || looks_incompressible(plaintext, level)? {
        return Ok(None);
    }
    let compressed =
        zstd::bulk::compress(plaintext, level).map_err(|e| QsfsError::io("zstd compression", e))?;
    Ok((compressed.len() < plaintext.len()).then_some(compressed))
}

/// Segments at least this large are probed before they are compressed whole.
const PROBE_FROM: usize = 512 * 1024;
const PROBE_SAMPLES: usize = 8;
const PROBE_SAMPLE_LEN: usize = 16 * 1024;

/// Compresses a few samples spread over a large segment and says whether they shrank by less than 2 %: random,
/// encrypted or already-compressed data, which zstd would only copy at full cost (btrfs decides the same way).
/// A wrong guess costs some compression, never data.
fn looks_incompressible(plaintext: &[u8], level: i32) -> Result<bool> {
    if plaintext.len() < PROBE_FROM {
        return Ok(false);
    }
    let step = plaintext.len() / PROBE_SAMPLES;
    let mut sample = Vec::with_capacity(PROBE_SAMPLES * PROBE_SAMPLE_LEN);
    for i in 0..PROBE_SAMPLES {
        sample.extend_from_slice(&plaintext[i * step..i * step + PROBE_SAMPLE_LEN]);
    }
    let compressed =
        zstd::bulk::compress(&sample, level).map_err(|e| QsfsError::io("zstd compression", e))?;
    Ok(compressed.len() * 100 >= sample.len() * 98)
}

/// Decompresses a segment body that must expand to exactly `plain_len` bytes. zstd is given exactly that much
/// room, so a body claiming more (a decompression bomb, or corruption the tag somehow missed) is an error rather
/// than an unbounded allocation.
pub(super) fn decompress(segment: u64, body: &[u8], plain_len: u64) -> Result<Vec<u8>> {
    let capacity = usize::try_from(plain_len).map_err(|_| QsfsError::CorruptSegment {
        segment,
        reason: format!("plain length {plain_len} too large"),
    })?;
    let plain = zstd::bulk::decompress(body, capacity).map_err(|e| QsfsError::CorruptSegment {
        segment,
        reason: format!("zstd: {e}"),
    })?;
    if plain.len() as u64 != plain_len {
        return Err(QsfsError::CorruptSegment {
            segment,
            reason: format!(
                "decompressed to {} bytes, metadata says {plain_len}",
                plain.len()
            ),
        });
    }
    Ok(plain)
}

/// Chooses the body to seal: the compressed bytes when they are smaller, else the plaintext itself.
pub(super) fn body_and_flags(
    plaintext: &[u8],
    level: i32,
    compressed_flag: u32,
) -> Result<(Cow<'_, [u8]>, u32)> {
    Ok(match compress(plaintext, level)? {
        Some(compressed) => (Cow::Owned(compressed), compressed_flag),
        None => (Cow::Borrowed(plaintext), 0),
    })
}

/// Encrypts `buffer[..body_len]` in place and writes the tag at `buffer[body_len..body_len + TAG_LEN]`.
pub(super) fn seal_in_place(
    cipher: &XChaCha20Poly1305,
    nonce: &[u8; 24],
    context: &SealContext,
    buffer: &mut [u8],
    body_len: usize,
) -> Result<()> {
    let tag = cipher
        .encrypt_in_place_detached(
            XNonce::from_slice(nonce),
            &context.associated_data(),
            &mut buffer[..body_len],
        )
        // The only failure is a message beyond XChaCha20's 256 GiB limit, far past any segment size.
        .map_err(|_| QsfsError::CorruptSegment {
            segment: context.segment_id,
            reason: "segment too large to seal".into(),
        })?;
    buffer[body_len..body_len + TAG_LEN].copy_from_slice(&tag);
    Ok(())
}

/// Decrypts `sealed` (ciphertext followed by its tag) in place; on success the first `len - TAG_LEN` bytes are the
/// body. Any mismatch — wrong key, volume, segment, flags, length or a damaged byte — is `AeadFailure`.
pub(super) fn open_in_place(
    cipher: &XChaCha20Poly1305,
    nonce: &[u8; 24],
    context: &SealContext,
    sealed: &mut [u8],
) -> Result<()> {
    let failure = || QsfsError::AeadFailure {
        segment: context.segment_id,
    };
    let body_len = sealed.len().checked_sub(TAG_LEN).ok_or_else(failure)?;
    let (body, tag) = sealed.split_at_mut(body_len);
    let tag = Tag::clone_from_slice(tag);
    cipher
        .decrypt_in_place_detached(
            XNonce::from_slice(nonce),
            &context.associated_data(),
            body,
            &tag,
        )
        .map_err(|_| failure())
}

/// A cipher for the segment encryption key.
pub(super) fn cipher(key: &[u8; 32]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(key.into())
}
