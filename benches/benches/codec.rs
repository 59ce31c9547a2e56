//! Throughput of the segment codec on 4 MiB segments: every stage alone (zstd level 1, XChaCha20-Poly1305 seal,
//! reed-solomon 4+2 encode and decode with two data shards lost, Merkle/ShardBlob build and verify), then whole
//! `SegmentCodec::encode`/`decode` on text-like and random data, on one thread and on all cores.
//!
//! Stages call the underlying crates exactly as `qsfs::codec` does, so a slow whole-segment number can be traced to
//! its stage. Measurement is kept short (10 samples, 3 s) so the whole file runs in a few minutes:
//! `cargo bench -p qsfs-benches --bench codec`.

use std::hint::black_box;
use std::thread;
use std::time::Duration;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qsfs::codec::{CodecParams, EncodedSegment, SegmentCodec, SegmentKeys};
use qsfs_por::ShardBlob;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

const SEGMENT: usize = 4 << 20;
const K: usize = 4;
const M: usize = 2;

fn random_data(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

/// Log- and source-like text: words drawn from a skewed vocabulary, numbers and line breaks. zstd level 1 shrinks
/// it roughly three- to fourfold, about what logs and code give.
fn text_data(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 24] = [
        "the", "segment", "shard", "store", "parity", "error", "volume", "write", "read", "fn",
        "let", "return", "audit", "repair", "merkle", "root", "INFO", "WARN", "request", "bytes",
        "ok", "took", "ms", "id=",
    ];
    let mut rng = StdRng::seed_from_u64(seed);
    let mut text = Vec::with_capacity(len + 64);
    while text.len() < len {
        // Squaring a uniform index skews toward the first words, like natural word frequencies.
        let pick = rng.random::<f64>().powi(2);
        text.extend_from_slice(WORDS[(pick * WORDS.len() as f64) as usize].as_bytes());
        match rng.random_range(0..12) {
            0 => text.extend_from_slice(format!(" {}", rng.random_range(0..100_000)).as_bytes()),
            1 => text.push(b'\n'),
            _ => {}
        }
        text.push(b' ');
    }
    text.truncate(len);
    text
}

fn codec() -> SegmentCodec {
    SegmentCodec::new(
        CodecParams {
            data_shards: K,
            parity_shards: M,
            zstd_level: 1,
        },
        SegmentKeys {
            encryption: [1; 32],
            shard_naming: [2; 32],
        },
        [3; 16],
    )
    .expect("valid codec parameters")
}

fn datasets() -> [(&'static str, Vec<u8>); 2] {
    [
        ("text", text_data(SEGMENT, 1)),
        ("random", random_data(SEGMENT, 2)),
    ]
}

fn verified_shards(codec: &SegmentCodec, encoded: &EncodedSegment) -> Vec<Option<Vec<u8>>> {
    encoded
        .shards
        .iter()
        .map(|s| {
            Some(
                codec
                    .verify_shard(1, &encoded.info, s.index, &s.blob)
                    .expect("fresh shard verifies"),
            )
        })
        .collect()
}

fn stages(c: &mut Criterion) {
    let mut group = c.benchmark_group("stage");
    group.throughput(Throughput::Bytes(SEGMENT as u64));
    for (name, data) in datasets() {
        group.bench_with_input(
            BenchmarkId::new("zstd1_compress", name),
            &data,
            |b, data| b.iter(|| zstd::bulk::compress(black_box(data), 1).expect("compress")),
        );
        let compressed = zstd::bulk::compress(&data, 1).expect("compress");
        eprintln!(
            "zstd level 1 on {name}: {SEGMENT} -> {} bytes",
            compressed.len()
        );
        group.bench_with_input(
            BenchmarkId::new("zstd1_decompress", name),
            &compressed,
            |b, compressed| {
                b.iter(|| {
                    zstd::bulk::decompress(black_box(compressed), SEGMENT).expect("decompress")
                })
            },
        );
    }

    let key = [9u8; 32];
    let cipher = XChaCha20Poly1305::new((&key).into());
    let nonce = *XNonce::from_slice(&[5u8; 24]);
    let mut buffer = random_data(SEGMENT, 3);
    group.bench_function("xchacha20poly1305_seal", |b| {
        b.iter(|| {
            cipher
                .encrypt_in_place_detached(&nonce, b"aad", black_box(&mut buffer))
                .expect("seal")
        })
    });

    let shard_len = SEGMENT / K;
    let sealed = random_data(SEGMENT, 4);
    let originals: Vec<&[u8]> = sealed.chunks(shard_len).collect();
    group.bench_function("rs_encode_4+2", |b| {
        b.iter(|| reed_solomon_simd::encode(K, M, black_box(&originals)).expect("rs encode"))
    });
    let recovery = reed_solomon_simd::encode(K, M, &originals).expect("rs encode");
    group.bench_function("rs_decode_4+2_lost2", |b| {
        b.iter(|| {
            // Data shards 0 and 1 lost: rebuild them from shards 2, 3 and both parity shards.
            let present = [(2, originals[2]), (3, originals[3])];
            let parity = [(0, &recovery[0][..]), (1, &recovery[1][..])];
            reed_solomon_simd::decode(K, M, black_box(present), black_box(parity))
                .expect("rs decode")
        })
    });

    group.bench_function("shard_blob_encode_4x1MiB", |b| {
        b.iter(|| {
            originals
                .iter()
                .map(|shard| ShardBlob::encode(black_box(shard)))
                .collect::<Vec<_>>()
        })
    });
    let blobs: Vec<_> = originals
        .iter()
        .map(|shard| ShardBlob::encode(shard))
        .collect();
    group.bench_function("shard_blob_open_4x1MiB", |b| {
        b.iter(|| {
            for (blob, root) in &blobs {
                ShardBlob::open(black_box(blob), root, shard_len as u64).expect("open");
            }
        })
    });
    group.finish();
}

fn whole_segment(c: &mut Criterion) {
    let codec = codec();
    let mut group = c.benchmark_group("segment_1thread");
    group.throughput(Throughput::Bytes(SEGMENT as u64));
    for (name, data) in datasets() {
        group.bench_with_input(BenchmarkId::new("encode", name), &data, |b, data| {
            b.iter(|| codec.encode(1, black_box(data)).expect("encode"))
        });
        let encoded = codec.encode(1, &data).expect("encode");
        group.bench_with_input(
            BenchmarkId::new("verify_6_blobs", name),
            &encoded,
            |b, encoded| b.iter(|| verified_shards(&codec, black_box(encoded))),
        );
        let shards = verified_shards(&codec, &encoded);
        group.bench_with_input(BenchmarkId::new("decode", name), &shards, |b, shards| {
            b.iter(|| {
                codec
                    .decode(1, &encoded.info, black_box(shards.clone()))
                    .expect("decode")
            })
        });
        let mut lossy = shards.clone();
        lossy[0] = None;
        lossy[1] = None;
        group.bench_with_input(
            BenchmarkId::new("decode_lost2", name),
            &lossy,
            |b, lossy| {
                b.iter(|| {
                    codec
                        .decode(1, &encoded.info, black_box(lossy.clone()))
                        .expect("decode")
                })
            },
        );
    }
    group.finish();
}

fn all_cores(c: &mut Criterion) {
    let codec = codec();
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let mut group = c.benchmark_group(format!("segment_{cores}threads"));
    // One segment per core per iteration.
    group.throughput(Throughput::Bytes((SEGMENT * cores) as u64));
    for (name, data) in datasets() {
        group.bench_with_input(BenchmarkId::new("encode", name), &data, |b, data| {
            b.iter(|| {
                thread::scope(|scope| {
                    for segment in 0..cores {
                        let codec = &codec;
                        scope.spawn(move || {
                            codec
                                .encode(segment as u64, black_box(data))
                                .expect("encode")
                        });
                    }
                })
            })
        });
        let encoded = codec.encode(1, &data).expect("encode");
        let shards = verified_shards(&codec, &encoded);
        group.bench_with_input(
            BenchmarkId::new("verify_and_decode", name),
            &encoded,
            |b, encoded| {
                b.iter(|| {
                    thread::scope(|scope| {
                        for _ in 0..cores {
                            scope.spawn(|| {
                                let shards = verified_shards(&codec, encoded);
                                codec.decode(1, &encoded.info, shards).expect("decode")
                            });
                        }
                    })
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("decode", name), &shards, |b, shards| {
            b.iter(|| {
                thread::scope(|scope| {
                    for _ in 0..cores {
                        scope.spawn(|| {
                            codec
                                .decode(1, &encoded.info, shards.clone())
                                .expect("decode")
                        });
                    }
                })
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = stages, whole_segment, all_cores
}
criterion_main!(benches);
