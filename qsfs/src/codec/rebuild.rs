//! Rebuilding lost shards for repair: this module owns turning K shards of a segment back into the blobs of the
//! missing ones, working on borrowed shard data (the blobs as fetched, no copy per source) with the erasure coder
//! of the calling thread reused from one segment to the next (repair runs on long-lived worker threads, and a new
//! coder zeroes megabytes of work buffers each time).
//!
//! The sources may be *unproven*: shaped like the right shard (header, length, recorded root) but not hashed.
//! That is safe because every rebuilt blob's Merkle root is recomputed and compared with the root metadata
//! records, so a wrong source can only produce a [`Rebuilt::Mismatch`], never a wrong shard; and with exactly K
//! sources (an MDS code) every source contributes to every rebuilt shard, so a single bad source always shows.
//! The caller then proves its sources one by one and rebuilds from good ones.

use std::cell::RefCell;

use qsfs_por::{HEADER_LEN, ShardBlob, ShardHeader, ShardLayout};
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

use super::{EncodedShard, SegmentCodec, SegmentInfo, erasure};
use crate::error::{QsfsError, Result};

/// What a rebuild produced.
pub enum Rebuilt {
    /// Every wanted shard, each matching its recorded root.
    Shards(Vec<EncodedShard>),
    /// This wanted shard came out different from its recorded root: a source is bad (or metadata is).
    Mismatch(usize),
}

thread_local! {
    /// The erasure coders of this thread, kept between rebuilds (`reset` reuses their buffers).
    static CODERS: RefCell<Option<(ReedSolomonDecoder, ReedSolomonEncoder)>> = const { RefCell::new(None) };
}

impl SegmentCodec {
    /// The data bytes of shard `index` inside `blob`. With `prove`, the whole blob is verified against the
    /// recorded root (as [`SegmentCodec::verify_shard`]); without, only its shape: header, lengths and the root
    /// the header names — enough to tell a missing or foreign blob, not a damaged one (see the module docs).
    pub fn shard_data<'a>(
        &self,
        segment_id: u64,
        info: &SegmentInfo,
        index: usize,
        blob: &'a [u8],
        prove: bool,
    ) -> Result<&'a [u8]> {
        self.check_info(segment_id, info)?;
        let corrupt = |reason: String| QsfsError::CorruptShard {
            segment: segment_id,
            index,
            reason,
        };
        let root = info
            .roots
            .get(index)
            .ok_or_else(|| corrupt(format!("the segment has only {} shards", info.roots.len())))?;
        if prove {
            return ShardBlob::open(blob, root, info.shard_len).map_err(|e| corrupt(e.to_string()));
        }
        let header = ShardHeader::parse(blob).map_err(|e| corrupt(e.to_string()))?;
        let layout = ShardLayout::new(info.shard_len).map_err(|e| corrupt(e.to_string()))?;
        if header.data_len != info.shard_len
            || blob.len() as u64 != layout.blob_len()
            || &header.root != root
        {
            return Err(corrupt(
                "not the blob of this shard (header or length differs)".into(),
            ));
        }
        let start = HEADER_LEN as usize;
        Ok(&blob[start..start + info.shard_len as usize])
    }

    /// Rebuilds the blobs of the `wanted` shard indexes from the data of at least K others (`sources`, one slot
    /// per shard, `None` where absent), checking each rebuilt root against `info.roots`.
    pub fn rebuild_from(
        &self,
        segment_id: u64,
        info: &SegmentInfo,
        sources: &[Option<&[u8]>],
        wanted: &[usize],
    ) -> Result<Rebuilt> {
        let shape = self.check_info(segment_id, info)?;
        let (k, m) = (self.params.data_shards, self.params.parity_shards);
        if sources.len() != k + m {
            return Err(QsfsError::CorruptSegment {
                segment: segment_id,
                reason: format!("{} shard slots given, {} expected", sources.len(), k + m),
            });
        }
        if let Some((index, s)) = sources
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.filter(|s| s.len() != shape.shard_len).map(|s| (i, s)))
        {
            return Err(QsfsError::CorruptShard {
                segment: segment_id,
                index,
                reason: format!("{} data bytes, expected {}", s.len(), shape.shard_len),
            });
        }
        if let Some(&bad) = wanted.iter().find(|&&index| index >= k + m) {
            return Err(QsfsError::Invalid(format!(
                "rebuild of shard {bad} of segment {segment_id}, which has {} shards",
                k + m
            )));
        }
        with_coders(|decoder, encoder| {
            with_data(
                segment_id,
                (k, m),
                shape.shard_len,
                sources,
                decoder,
                |data| {
                    if wanted.iter().all(|&i| i < k) {
                        return Ok(self.encode_wanted(segment_id, info, wanted, data, &[]));
                    }
                    with_parity((k, m), shape.shard_len, data, encoder, |parity| {
                        Ok(self.encode_wanted(segment_id, info, wanted, data, parity))
                    })
                },
            )
        })
    }

    /// The blobs of the `wanted` shards, from all K data shards and (when a parity shard is wanted) all M parity
    /// shards; stops at the first whose root differs from the recorded one.
    fn encode_wanted(
        &self,
        segment_id: u64,
        info: &SegmentInfo,
        wanted: &[usize],
        data: &[&[u8]],
        parity: &[&[u8]],
    ) -> Rebuilt {
        let k = data.len();
        let mut out = Vec::with_capacity(wanted.len());
        for &index in wanted {
            let bytes = if index < k {
                data[index]
            } else {
                parity[index - k]
            };
            let shard = self.encode_shard(segment_id, index, bytes);
            if shard.root != info.roots[index] {
                return Rebuilt::Mismatch(index);
            }
            out.push(shard);
        }
        Rebuilt::Shards(out)
    }
}

/// Runs `f` with this thread's decoder and encoder (made on first use).
fn with_coders<T>(
    f: impl FnOnce(&mut ReedSolomonDecoder, &mut ReedSolomonEncoder) -> Result<T>,
) -> Result<T> {
    CODERS.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let params = |e: reed_solomon_simd::Error| {
                QsfsError::CodecParams(format!("erasure coding: {e}"))
            };
            // Any valid shape: `reset` sets the real one before each use.
            *slot = Some((
                ReedSolomonDecoder::new(1, 1, 2).map_err(params)?,
                ReedSolomonEncoder::new(1, 1, 2).map_err(params)?,
            ));
        }
        let (decoder, encoder) = slot.as_mut().expect("made above");
        f(decoder, encoder)
    })
}

/// Runs `f` on the K data shards: borrowed from `sources` where present, else restored by `decoder` (fed data
/// shards first, then as many parity shards as needed) and borrowed from its buffers.
fn with_data<T>(
    segment: u64,
    (k, m): (usize, usize),
    shard_len: usize,
    sources: &[Option<&[u8]>],
    decoder: &mut ReedSolomonDecoder,
    f: impl FnOnce(&[&[u8]]) -> Result<T>,
) -> Result<T> {
    if let Some(data) = sources[..k].iter().copied().collect::<Option<Vec<&[u8]>>>() {
        return f(&data);
    }
    let result = erasure::decode(decoder, segment, (k, m), shard_len, sources)?;
    let data = (0..k)
        .map(|index| match sources[index] {
            Some(shard) => Ok(shard),
            None => erasure::restored_data_shard(&result, segment, index),
        })
        .collect::<Result<Vec<&[u8]>>>()?;
    f(&data)
}

/// Runs `f` on the M parity shards of the K data shards, borrowed from `encoder`'s buffers.
fn with_parity<T>(
    (k, m): (usize, usize),
    shard_len: usize,
    data: &[&[u8]],
    encoder: &mut ReedSolomonEncoder,
    f: impl FnOnce(&[&[u8]]) -> Result<T>,
) -> Result<T> {
    let params =
        |e: reed_solomon_simd::Error| QsfsError::CodecParams(format!("erasure coding: {e}"));
    encoder.reset(k, m, shard_len).map_err(params)?;
    for shard in data {
        encoder.add_original_shard(shard).map_err(params)?;
    }
    let result = encoder.encode().map_err(params)?;
    let parity: Vec<&[u8]> = result.recovery_iter().collect();
    f(&parity)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{RngCore, SeedableRng};

    use super::*;
    use crate::codec::{CodecParams, SegmentKeys};

    fn codec(k: usize, m: usize) -> SegmentCodec {
        let params = CodecParams {
            data_shards: k,
            parity_shards: m,
            zstd_level: 1,
        };
        let keys = SegmentKeys {
            encryption: [3; 32],
            shard_naming: [4; 32],
        };
        SegmentCodec::new(params, keys, [9; 16]).unwrap()
    }

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut data = vec![0u8; len];
        StdRng::seed_from_u64(seed).fill_bytes(&mut data);
        data
    }

    /// Shape only: a blob with a flipped data byte passes unproven and fails proven; another shard's blob and a
    /// cut one fail both ways.
    #[test]
    fn shard_data_checks_shape_and_proves_on_demand() {
        let codec = codec(4, 2);
        let enc = codec.encode(5, &random(50_000, 1)).unwrap();
        let blob = &enc.shards[2].blob;
        let data = codec.shard_data(5, &enc.info, 2, blob, true).unwrap();
        assert_eq!(
            data,
            codec.shard_data(5, &enc.info, 2, blob, false).unwrap()
        );
        let mut flipped = blob.clone();
        flipped[HEADER_LEN as usize + 7] ^= 1;
        assert!(codec.shard_data(5, &enc.info, 2, &flipped, false).is_ok());
        assert!(codec.shard_data(5, &enc.info, 2, &flipped, true).is_err());
        for prove in [false, true] {
            let other = &enc.shards[3].blob;
            assert!(codec.shard_data(5, &enc.info, 2, other, prove).is_err());
            assert!(
                codec
                    .shard_data(5, &enc.info, 2, &blob[..blob.len() - 1], prove)
                    .is_err()
            );
        }
    }

    /// What lets repair skip proving its sources: with exactly K sources, a damaged byte in any one of them makes
    /// every rebuilt shard miss its root, whichever shards are lost. Also checks that the per-thread coders give
    /// identical blobs when reused across shapes.
    #[test]
    fn any_single_bad_source_shows_as_a_mismatch() {
        for (k, m) in [(4, 2), (2, 1), (3, 3)] {
            let codec = codec(k, m);
            let enc = codec.encode(7, &random(30_001 * k, k as u64)).unwrap();
            let n = k + m;
            let datas: Vec<&[u8]> = (enc.shards.iter())
                .map(|s| {
                    codec
                        .shard_data(7, &enc.info, s.index, &s.blob, true)
                        .unwrap()
                })
                .collect();
            for lost in 0..n {
                // K sources: every shard but `lost` and, past K, the last ones.
                let keep: Vec<usize> = (0..n).filter(|&i| i != lost).take(k).collect();
                let sources: Vec<Option<&[u8]>> = (0..n)
                    .map(|i| keep.contains(&i).then_some(datas[i]))
                    .collect();
                match codec.rebuild_from(7, &enc.info, &sources, &[lost]).unwrap() {
                    Rebuilt::Shards(s) => assert_eq!(s[0], enc.shards[lost]),
                    Rebuilt::Mismatch(i) => panic!("good sources, shard {i} mismatched"),
                }
                for &bad in &keep {
                    let mut damaged = datas[bad].to_vec();
                    let at = damaged.len() / 3;
                    damaged[at] ^= 0x40;
                    let mut s = sources.clone();
                    s[bad] = Some(&damaged);
                    let got = codec.rebuild_from(7, &enc.info, &s, &[lost]).unwrap();
                    assert!(
                        matches!(got, Rebuilt::Mismatch(i) if i == lost),
                        "{k}+{m}: source {bad} damaged, shard {lost} rebuilt anyway"
                    );
                }
            }
        }
    }
}
