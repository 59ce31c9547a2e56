//! The availability half of the segment codec: how a sealed segment is cut into k equal data shards and how the
//! m parity shards are computed and used (reed-solomon-simd). The metadata log's snapshots are coded with the same
//! functions (`replica::snapshot`), so both have one erasure code.
//!
//! Layout: the sealed bytes (ciphertext + tag) fill the data shards in order and the tail of the last ones is zero
//! padding up to `k * shard_len`. `shard_len` is the smallest even length (at least 2, reed-solomon-simd's rule) that
//! holds the sealed bytes, so it follows from the sealed length alone and decode can check it. Reconstruction runs
//! only when a data shard is missing: the read path fetches data shards first, and with all of them present the
//! segment is a plain concatenation.

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

use crate::error::{QsfsError, Result};

/// Data bytes per shard for a sealed segment of `stored_len` bytes over `k` data shards.
pub fn shard_len_for(stored_len: u64, k: usize) -> u64 {
    let per_shard = stored_len.div_ceil(k as u64);
    (per_shard + per_shard % 2).max(2)
}

/// True when reed-solomon-simd can code `k` data and `m` parity shards.
pub(crate) fn supports(k: usize, m: usize) -> bool {
    ReedSolomonEncoder::supports(k, m)
}

/// Computes the `m` parity shards of the `k` data shards (each `shard_len` bytes) and hands each to `each` with
/// its parity index (0-based), straight from the encoder's buffers.
pub(crate) fn for_each_parity(
    k: usize,
    m: usize,
    shard_len: usize,
    data_shards: &[&[u8]],
    mut each: impl FnMut(usize, &[u8]),
) -> Result<()> {
    debug_assert_eq!(data_shards.len(), k);
    let params_error =
        |e: reed_solomon_simd::Error| QsfsError::CodecParams(format!("erasure coding: {e}"));
    let mut encoder = ReedSolomonEncoder::new(k, m, shard_len).map_err(params_error)?;
    for shard in data_shards {
        encoder.add_original_shard(shard).map_err(params_error)?;
    }
    let result = encoder.encode().map_err(params_error)?;
    for (index, shard) in result.recovery_iter().enumerate() {
        each(index, shard);
    }
    Ok(())
}

/// The `m` parity shards of the `k` data shards, owned (for rebuilds, which need only some of them).
pub(crate) fn parity(
    k: usize,
    m: usize,
    shard_len: usize,
    data_shards: &[&[u8]],
) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::with_capacity(m);
    for_each_parity(k, m, shard_len, data_shards, |_, p| out.push(p.to_vec()))?;
    Ok(out)
}

/// Fills in every missing data shard (indexes `0..k`) of `shards` (`k + m` entries, present ones already verified
/// and `shard_len` long). Does nothing when all data shards are present. Uses data shards first and only as many
/// parity shards as needed to reach `k`.
pub(crate) fn restore_data_shards(
    segment: u64,
    k: usize,
    m: usize,
    shard_len: usize,
    shards: &mut [Option<Vec<u8>>],
) -> Result<()> {
    let missing: Vec<usize> = (0..k).filter(|&i| shards[i].is_none()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut decoder =
        ReedSolomonDecoder::new(k, m, shard_len).map_err(|e| decode_error(segment, e))?;
    let sources: Vec<Option<&[u8]>> = shards.iter().map(|s| s.as_deref()).collect();
    let result = decode(&mut decoder, segment, (k, m), shard_len, &sources)?;
    let restored = missing
        .iter()
        .map(|&index| restored_data_shard(&result, segment, index).map(|s| (index, s.to_vec())))
        .collect::<Result<Vec<_>>>()?;
    drop(result);
    for (index, shard) in restored {
        shards[index] = Some(shard);
    }
    Ok(())
}

/// Resets `decoder` to `k` data and `m` parity shards of `shard_len` bytes, feeds it the present `sources` (`k + m`
/// entries; data shards first, then only as many parity shards as needed to reach `k`) and decodes. The missing
/// data shards are then in the result ([`restored_data_shard`]). Fails when fewer than `k` shards are present.
pub(crate) fn decode<'d>(
    decoder: &'d mut ReedSolomonDecoder,
    segment: u64,
    (k, m): (usize, usize),
    shard_len: usize,
    sources: &[Option<&[u8]>],
) -> Result<reed_solomon_simd::DecoderResult<'d>> {
    let available = sources.iter().filter(|s| s.is_some()).count();
    if available < k {
        return Err(QsfsError::CorruptSegment {
            segment,
            reason: format!(
                "only {available} of the {k} shards needed to reconstruct it are available"
            ),
        });
    }
    let rs = |e| decode_error(segment, e);
    decoder.reset(k, m, shard_len).map_err(rs)?;
    let mut fed = 0;
    for (index, shard) in sources[..k].iter().enumerate() {
        if let Some(shard) = shard {
            decoder.add_original_shard(index, shard).map_err(rs)?;
            fed += 1;
        }
    }
    for (index, shard) in sources[k..].iter().enumerate() {
        if fed == k {
            break;
        }
        if let Some(shard) = shard {
            decoder.add_recovery_shard(index, shard).map_err(rs)?;
            fed += 1;
        }
    }
    decoder.decode().map_err(rs)
}

/// Data shard `index` as `decode` restored it.
pub(crate) fn restored_data_shard<'r>(
    result: &'r reed_solomon_simd::DecoderResult<'_>,
    segment: u64,
    index: usize,
) -> Result<&'r [u8]> {
    result
        .restored_original(index)
        .ok_or_else(|| QsfsError::CorruptSegment {
            segment,
            reason: format!("erasure decoding did not restore data shard {index}"),
        })
}

fn decode_error(segment: u64, e: reed_solomon_simd::Error) -> QsfsError {
    QsfsError::CorruptSegment {
        segment,
        reason: format!("erasure decoding: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_len_is_even_minimal_and_at_least_two() {
        assert_eq!(shard_len_for(16, 4), 4);
        assert_eq!(shard_len_for(17, 4), 6);
        assert_eq!(shard_len_for(16, 10), 2);
        assert_eq!(shard_len_for(1, 1), 2);
        assert_eq!(shard_len_for(4 << 20, 4), 1 << 20);
        for stored in 16..300u64 {
            for k in 1..12 {
                let len = shard_len_for(stored, k);
                assert!(len.is_multiple_of(2) && len >= 2 && len * k as u64 >= stored);
                assert!(
                    len == 2 || (len - 2) * (k as u64) < stored,
                    "not minimal: {stored} over {k}"
                );
            }
        }
    }

    #[test]
    fn restores_from_any_k() {
        let (k, m, len) = (4, 2, 64);
        let data: Vec<u8> = (0..k * len).map(|i| (i * 7 + 3) as u8).collect();
        let data_shards: Vec<&[u8]> = data.chunks(len).collect();
        let parity = parity(k, m, len, &data_shards).unwrap();
        let all: Vec<Vec<u8>> = data.chunks(len).map(<[u8]>::to_vec).chain(parity).collect();
        for lost_a in 0..k + m {
            for lost_b in lost_a + 1..k + m {
                let mut shards: Vec<Option<Vec<u8>>> = all.iter().cloned().map(Some).collect();
                shards[lost_a] = None;
                shards[lost_b] = None;
                restore_data_shards(1, k, m, len, &mut shards).unwrap();
                for (i, shard) in shards[..k].iter().enumerate() {
                    assert_eq!(shard.as_deref(), Some(&all[i][..]));
                }
            }
        }
        let mut shards: Vec<Option<Vec<u8>>> = all.into_iter().map(Some).collect();
        shards[0] = None;
        shards[1] = None;
        shards[5] = None;
        assert!(restore_data_shards(1, k, m, len, &mut shards).is_err());
    }
}
