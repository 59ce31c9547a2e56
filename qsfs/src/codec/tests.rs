//! Tests of the segment codec: round trips over sizes and data kinds, loss tolerance, tamper detection
//! (invariants 3 and 5), repair determinism and parameter validation.

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use super::*;

const SEG: usize = 256 * 1024;
const VOLUME: [u8; 16] = [7; 16];

fn keys(seed: u8) -> SegmentKeys {
    SegmentKeys {
        encryption: [seed; 32],
        shard_naming: [seed.wrapping_add(100); 32],
    }
}

fn codec(k: usize, m: usize) -> SegmentCodec {
    SegmentCodec::new(
        CodecParams {
            data_shards: k,
            parity_shards: m,
            zstd_level: 1,
        },
        keys(1),
        VOLUME,
    )
    .unwrap()
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

fn text_bytes(len: usize) -> Vec<u8> {
    const WORDS: [&str; 8] = [
        "segment ", "shard ", "quantum ", "safe ", "storage ", "merkle ", "parity\n", "qsfs ",
    ];
    let mut text = Vec::with_capacity(len + 32);
    let mut i = 0usize;
    while text.len() < len {
        text.extend_from_slice(WORDS[(i * 7 + i / 5) % WORDS.len()].as_bytes());
        if i.is_multiple_of(13) {
            text.extend_from_slice(format!("{} ", i % 1000).as_bytes());
        }
        i += 1;
    }
    text.truncate(len);
    text
}

/// Verifies every blob and returns the shard data, as the read path would.
fn verified(codec: &SegmentCodec, segment: u64, encoded: &EncodedSegment) -> Vec<Option<Vec<u8>>> {
    encoded
        .shards
        .iter()
        .map(|shard| {
            Some(
                codec
                    .verify_shard(segment, &encoded.info, shard.index, &shard.blob)
                    .unwrap(),
            )
        })
        .collect()
}

fn round_trip(codec: &SegmentCodec, plaintext: &[u8]) -> EncodedSegment {
    let encoded = codec.encode(9, plaintext).unwrap();
    let info = &encoded.info;
    let (k, m) = (codec.params().data_shards, codec.params().parity_shards);
    assert_eq!(encoded.shards.len(), k + m);
    assert_eq!(info.roots.len(), k + m);
    assert_eq!(info.plain_len, plaintext.len() as u64);
    assert!(info.shard_len >= 2 && info.shard_len.is_multiple_of(2));
    assert!(info.shard_len * k as u64 >= info.stored_len);
    for (index, shard) in encoded.shards.iter().enumerate() {
        assert_eq!(shard.index, index);
        assert_eq!(shard.root, info.roots[index]);
        assert_eq!(shard.key, codec.shard_key(9, index, &shard.root));
    }
    assert_eq!(
        codec.decode(9, info, verified(codec, 9, &encoded)).unwrap(),
        plaintext
    );
    encoded
}

#[test]
fn round_trips_edge_sizes_and_data_kinds() {
    for (k, m) in [(4, 2), (1, 1), (3, 5), (10, 4)] {
        let codec = codec(k, m);
        for len in [0, 1, 2, 15, 16, 17, SEG - 1, SEG, SEG + 1] {
            for (kind, data) in [
                ("random", random_bytes(len, len as u64)),
                ("text", text_bytes(len)),
                ("zeros", vec![0; len]),
            ] {
                let encoded = round_trip(&codec, &data);
                let compressed = encoded.info.is_compressed();
                match kind {
                    "random" => assert!(
                        !compressed,
                        "random data of {len} bytes was stored compressed"
                    ),
                    _ if len >= 1000 => {
                        assert!(compressed, "{kind} data of {len} bytes was stored raw")
                    }
                    _ => {}
                }
                if !compressed {
                    assert_eq!(encoded.info.stored_len, len as u64 + TAG_LEN as u64);
                }
            }
        }
    }
}

#[test]
fn large_segments_are_probed_before_compressing() {
    // Large enough to be probed (see `seal::looks_incompressible`).
    let len = 4 << 20;
    let codec = codec(4, 2);
    let random = random_bytes(len, 7);
    assert!(!round_trip(&codec, &random).info.is_compressed());
    let text = text_bytes(len);
    assert!(round_trip(&codec, &text).info.is_compressed());
    // Half random, half text: the spread samples see the text, so the segment is compressed.
    let mut mixed = random[..len / 2].to_vec();
    mixed.extend_from_slice(&text[..len / 2]);
    let encoded = round_trip(&codec, &mixed);
    assert!(encoded.info.is_compressed());
    assert!(encoded.info.stored_len < (len * 3 / 4) as u64);
}

#[test]
fn max_shard_blob_len_bounds_real_blobs() {
    for (k, m) in [(4, 2), (3, 1)] {
        let codec = codec(k, m);
        for len in [0, 1, 4095, SEG] {
            let bound = codec.max_shard_blob_len(len as u64).unwrap();
            let random = codec.encode(1, &random_bytes(len, 1)).unwrap();
            assert!(
                random
                    .shards
                    .iter()
                    .all(|shard| shard.blob.len() as u64 == bound),
                "{k}+{m}, {len} bytes"
            );
            let text = codec.encode(1, &text_bytes(len)).unwrap();
            assert!(
                text.shards
                    .iter()
                    .all(|shard| shard.blob.len() as u64 <= bound)
            );
        }
    }
}

#[test]
fn empty_segment_has_distinct_shard_names() {
    // 16 sealed bytes over 10 data shards of 2 bytes: shards 8 and 9 are pure padding with identical roots.
    let codec = codec(10, 4);
    let a = round_trip(&codec, b"");
    assert_eq!((a.info.stored_len, a.info.shard_len), (16, 2));
    assert_eq!(a.shards[8].root, a.shards[9].root);
    let b = codec.encode(10, b"").unwrap();
    assert_eq!(a.shards[9].root, b.shards[9].root);
    let mut names: Vec<ShardKey> = a
        .shards
        .iter()
        .chain(&b.shards)
        .map(|shard| shard.key)
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(
        names.len(),
        28,
        "every shard of every segment needs its own name"
    );
}

#[test]
fn fresh_nonce_every_encode() {
    let codec = codec(4, 2);
    let a = codec.encode(1, b"same plaintext").unwrap();
    let b = codec.encode(1, b"same plaintext").unwrap();
    assert_ne!(a.info.nonce, b.info.nonce);
    assert_ne!(a.info.roots, b.info.roots);
}

#[test]
fn any_m_lost_decodes_and_m_plus_one_fails() {
    let codec = codec(4, 2);
    let plaintext = random_bytes(100_000, 3);
    let encoded = codec.encode(9, &plaintext).unwrap();
    let all = verified(&codec, 9, &encoded);
    for a in 0..6 {
        for b in a..6 {
            let mut shards = all.clone();
            shards[a] = None;
            shards[b] = None;
            assert_eq!(
                codec.decode(9, &encoded.info, shards).unwrap(),
                plaintext,
                "lost {a} and {b}"
            );
            for c in b + 1..6 {
                let mut shards = all.clone();
                (shards[a], shards[b], shards[c]) = (None, None, None);
                if a != b {
                    assert!(
                        codec.decode(9, &encoded.info, shards).is_err(),
                        "lost {a}, {b} and {c}"
                    );
                }
            }
        }
    }
}

#[test]
fn flipped_byte_in_any_blob_fails_verification() {
    let codec = codec(4, 2);
    let encoded = codec.encode(5, &text_bytes(50_000)).unwrap();
    for shard in &encoded.shards {
        for at in [
            0,
            8,
            20,
            40,
            63,
            64,
            shard.blob.len() / 2,
            shard.blob.len() - 33,
            shard.blob.len() - 1,
        ] {
            let mut blob = shard.blob.clone();
            blob[at] ^= 0x40;
            let err = codec
                .verify_shard(5, &encoded.info, shard.index, &blob)
                .unwrap_err();
            assert!(
                matches!(err, QsfsError::CorruptShard { segment: 5, .. }),
                "{err}"
            );
        }
        // Another shard's blob is not this shard, and truncation is caught.
        let other = &encoded.shards[(shard.index + 1) % 6].blob;
        assert!(
            codec
                .verify_shard(5, &encoded.info, shard.index, other)
                .is_err()
        );
        assert!(
            codec
                .verify_shard(
                    5,
                    &encoded.info,
                    shard.index,
                    &shard.blob[..shard.blob.len() - 1]
                )
                .is_err()
        );
    }
    assert!(
        codec
            .verify_shard(5, &encoded.info, 6, &encoded.shards[0].blob)
            .is_err()
    );
}

#[test]
fn shards_moved_to_another_segment_volume_or_key_fail_to_open() {
    let codec_a = codec(4, 2);
    let encoded = codec_a.encode(1, &text_bytes(10_000)).unwrap();
    let shards = verified(&codec_a, 1, &encoded);
    let err = codec_a
        .decode(2, &encoded.info, shards.clone())
        .unwrap_err();
    assert!(
        matches!(err, QsfsError::AeadFailure { segment: 2 }),
        "{err}"
    );

    let params = codec_a.params().clone();
    let other_volume = SegmentCodec::new(params.clone(), keys(1), [8; 16]).unwrap();
    let err = other_volume
        .decode(1, &encoded.info, shards.clone())
        .unwrap_err();
    assert!(
        matches!(err, QsfsError::AeadFailure { segment: 1 }),
        "{err}"
    );

    let other_key = SegmentCodec::new(params, keys(2), VOLUME).unwrap();
    let err = other_key.decode(1, &encoded.info, shards).unwrap_err();
    assert!(
        matches!(err, QsfsError::AeadFailure { segment: 1 }),
        "{err}"
    );
}

#[test]
fn tampered_metadata_is_an_error() {
    let codec = codec(4, 2);
    let encoded = codec.encode(3, &text_bytes(20_000)).unwrap();
    assert!(encoded.info.is_compressed());
    let shards = verified(&codec, 3, &encoded);
    let tamper = |edit: &dyn Fn(&mut SegmentInfo)| {
        let mut info = encoded.info.clone();
        edit(&mut info);
        codec.decode(3, &info, shards.clone()).unwrap_err()
    };
    assert!(matches!(
        tamper(&|i| i.nonce[0] ^= 1),
        QsfsError::AeadFailure { .. }
    ));
    assert!(matches!(
        tamper(&|i| i.plain_len += 1),
        QsfsError::AeadFailure { .. }
    ));
    assert!(matches!(
        tamper(&|i| i.flags = 0),
        QsfsError::CorruptSegment { .. }
    ));
    assert!(matches!(
        tamper(&|i| i.flags = 3),
        QsfsError::CorruptSegment { .. }
    ));
    assert!(matches!(
        tamper(&|i| i.shard_len += 2),
        QsfsError::CorruptSegment { .. }
    ));
    assert!(matches!(
        tamper(&|i| i.stored_len -= 1),
        QsfsError::CorruptSegment { .. }
    ));
    assert!(matches!(
        tamper(&|i| {
            i.roots.pop();
        }),
        QsfsError::CorruptSegment { .. }
    ));
}

#[test]
fn flag_flip_with_consistent_lengths_fails_the_tag() {
    // Raw segment: clearing nothing is possible, so set the flag with a plain length that passes the shape check.
    let codec = codec(2, 1);
    let data = random_bytes(1000, 4);
    let encoded = codec.encode(3, &data).unwrap();
    let mut info = encoded.info.clone();
    info.flags = FLAG_COMPRESSED;
    info.plain_len += 1;
    let err = codec
        .decode(3, &info, verified(&codec, 3, &encoded))
        .unwrap_err();
    assert!(matches!(err, QsfsError::AeadFailure { .. }), "{err}");
}

#[test]
fn bad_shard_buffers_are_errors() {
    let codec = codec(4, 2);
    let encoded = codec.encode(3, &random_bytes(999, 5)).unwrap();
    let shards = verified(&codec, 3, &encoded);
    // Non-zero padding in the last data shard (999 + 16 sealed bytes over 4 × 254).
    let mut padded = shards.clone();
    let last = padded[3].as_mut().unwrap();
    *last.last_mut().unwrap() = 1;
    assert!(matches!(
        codec.decode(3, &encoded.info, padded).unwrap_err(),
        QsfsError::CorruptSegment { .. }
    ));
    // A damaged data byte that slipped past verification still cannot become data.
    let mut damaged = shards.clone();
    damaged[0].as_mut().unwrap()[0] ^= 1;
    assert!(matches!(
        codec.decode(3, &encoded.info, damaged).unwrap_err(),
        QsfsError::AeadFailure { .. }
    ));
    let mut short = shards.clone();
    short[1].as_mut().unwrap().pop();
    assert!(matches!(
        codec.decode(3, &encoded.info, short).unwrap_err(),
        QsfsError::CorruptShard { index: 1, .. }
    ));
    assert!(
        codec
            .decode(3, &encoded.info, shards[..5].to_vec())
            .is_err()
    );
}

#[test]
fn decode_without_parity_needs_no_reconstruction() {
    let codec = codec(4, 2);
    let data = text_bytes(70_000);
    let encoded = codec.encode(3, &data).unwrap();
    let mut shards = verified(&codec, 3, &encoded);
    shards[4] = None;
    shards[5] = None;
    assert_eq!(codec.decode(3, &encoded.info, shards).unwrap(), data);
}

#[test]
fn rebuild_reproduces_identical_blobs() {
    let codec = codec(4, 2);
    let encoded = codec.encode(11, &text_bytes(123_457)).unwrap();
    let all = verified(&codec, 11, &encoded);
    for lost in [[0, 1], [0, 4], [2, 5], [4, 5], [3, 3]] {
        let mut shards = all.clone();
        shards[lost[0]] = None;
        shards[lost[1]] = None;
        let rebuilt = codec
            .rebuild_shards(11, &encoded.info, shards, &lost)
            .unwrap();
        for (shard, &index) in rebuilt.iter().zip(&lost) {
            assert_eq!(shard, &encoded.shards[index], "shard {index}");
            codec
                .verify_shard(11, &encoded.info, index, &shard.blob)
                .unwrap();
        }
    }
    let everything: Vec<usize> = (0..6).collect();
    let rebuilt = codec
        .rebuild_shards(11, &encoded.info, all.clone(), &everything)
        .unwrap();
    assert_eq!(rebuilt, encoded.shards);
}

#[test]
fn rebuild_rejects_bad_requests_and_inconsistent_inputs() {
    let codec = codec(4, 2);
    let encoded = codec.encode(11, &random_bytes(5000, 6)).unwrap();
    let mut shards = verified(&codec, 11, &encoded);
    assert!(matches!(
        codec.rebuild_shards(11, &encoded.info, shards.clone(), &[6]),
        Err(QsfsError::Invalid(_))
    ));
    let mut too_few = shards.clone();
    (too_few[0], too_few[1], too_few[2]) = (None, None, None);
    assert!(
        codec
            .rebuild_shards(11, &encoded.info, too_few, &[0])
            .is_err()
    );
    // An unverified, wrong input makes the rebuilt shard miss its recorded root.
    shards[1].as_mut().unwrap()[0] ^= 1;
    shards[0] = None;
    let err = codec
        .rebuild_shards(11, &encoded.info, shards, &[0])
        .unwrap_err();
    assert!(matches!(err, QsfsError::CorruptSegment { .. }), "{err}");
}

#[test]
fn decompression_is_bounded_by_plain_len() {
    let plain = vec![0u8; 1 << 20];
    let bomb = zstd::bulk::compress(&plain, 1).unwrap();
    assert!(seal::decompress(1, &bomb, 1000).is_err());
    assert!(seal::decompress(1, &bomb, (1 << 20) + 1).is_err());
    assert_eq!(seal::decompress(1, &bomb, 1 << 20).unwrap(), plain);
    assert!(seal::decompress(1, b"not zstd", 10).is_err());
}

#[test]
fn params_are_validated() {
    let bad = [
        (0, 2, 1),
        (4, 0, 1),
        (200, 56, 1),
        (4, 2, 23),
        (4, 2, i32::MIN),
    ];
    for (k, m, level) in bad {
        let params = CodecParams {
            data_shards: k,
            parity_shards: m,
            zstd_level: level,
        };
        let err = SegmentCodec::new(params, keys(1), VOLUME).unwrap_err();
        assert!(
            matches!(err, QsfsError::CodecParams(_)),
            "{k}+{m} level {level}: {err}"
        );
    }
    for (k, m, level) in [(1, 1, 1), (4, 2, 3), (200, 55, 19), (16, 4, -5)] {
        let params = CodecParams {
            data_shards: k,
            parity_shards: m,
            zstd_level: level,
        };
        assert!(
            SegmentCodec::new(params, keys(1), VOLUME).is_ok(),
            "{k}+{m} level {level}"
        );
    }
}

#[test]
fn codec_is_shareable_and_does_not_leak_keys() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<SegmentCodec>();
    let secret = SegmentKeys {
        encryption: [0xAB; 32],
        shard_naming: [0xCD; 32],
    };
    let codec = SegmentCodec::new(
        CodecParams {
            data_shards: 2,
            parity_shards: 1,
            zstd_level: 1,
        },
        secret.clone(),
        VOLUME,
    )
    .unwrap();
    for text in [format!("{secret:?}"), format!("{codec:?}")] {
        assert!(
            !text.contains("171")
                && !text.to_lowercase().contains("abab")
                && !text.contains("cdcd"),
            "{text}"
        );
    }
}

fn data_kind() -> impl Strategy<Value = Vec<u8>> {
    (0usize..(SEG + 2), any::<u64>(), 0..3u8).prop_map(|(len, seed, kind)| match kind {
        0 => random_bytes(len, seed),
        1 => text_bytes(len),
        _ => {
            // Half random, half text: compresses, but not trivially.
            let mut data = random_bytes(len / 2, seed);
            data.extend(text_bytes(len - len / 2));
            data
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn round_trip_with_any_m_lost(data in data_kind(), k in 1usize..7, m in 1usize..4, lost_seed in any::<u64>()) {
        let codec = codec(k, m);
        let encoded = codec.encode(77, &data).unwrap();
        let mut shards = verified(&codec, 77, &encoded);
        let mut rng = StdRng::seed_from_u64(lost_seed);
        let mut lost = Vec::new();
        while lost.len() < m {
            let index = (rng.next_u32() as usize) % (k + m);
            if !lost.contains(&index) {
                lost.push(index);
                shards[index] = None;
            }
        }
        prop_assert_eq!(&codec.decode(77, &encoded.info, shards.clone()).unwrap(), &data);
        let rebuilt = codec.rebuild_shards(77, &encoded.info, shards, &lost).unwrap();
        for shard in rebuilt {
            prop_assert_eq!(&shard, &encoded.shards[shard.index]);
        }
    }

    #[test]
    fn flipped_blob_byte_fails(len in 0usize..20_000, shard in 0usize..6, at in any::<usize>(), flip in 1..=255u8) {
        let codec = codec(4, 2);
        let encoded = codec.encode(1, &random_bytes(len, len as u64)).unwrap();
        let mut blob = encoded.shards[shard].blob.clone();
        let at = at % blob.len();
        blob[at] ^= flip;
        prop_assert!(codec.verify_shard(1, &encoded.info, shard, &blob).is_err());
    }
}
