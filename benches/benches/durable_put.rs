//! What one durable small write costs on this disk: the floor under every `close` of a small file, since the
//! durability promise says close returns only when the data is on `write_quorum` stores and its metadata is
//! committed.
//!
//! - `fdatasync 1 KiB append`: the cheapest durable write there is (one file, no new name) — what any durable
//!   close must pay at least once.
//! - `dir store put, 1 store`: one shard through the real `DirStore` (temp file, fsync, rename, directory fsync).
//! - `dir store put, 6 stores at once`: one small segment's six shards placed concurrently on six dir stores on
//!   the same disk, as the embedded default volume does on every close of a small file.
//!
//! The stores live under `BENCH_DIR` (default: the system temp directory), which should be on the disk being
//! judged: `cargo bench -p qsfs-benches --bench durable_put`.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use qsfs_backends::{DirStore, ShardKey, ShardStore};
use qsfs_benches::bench_dir;

const SHARD: usize = 400;
const STORES: usize = 6;

/// A fresh key per put: every put creates a new shard file, as sealing new segments does.
fn next_key(counter: &AtomicU64, store: usize) -> ShardKey {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&n.to_le_bytes());
    key[8] = store as u8;
    // Spread over the fan-out directories like real (hash-named) shards.
    key[31] = (n as u8).wrapping_mul(151);
    key[0] ^= key[31];
    ShardKey(key)
}

fn durable_put(c: &mut Criterion) {
    let dir = bench_dir();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let stores: Vec<DirStore> = (0..STORES)
        .map(|i| {
            rt.block_on(DirStore::open(dir.path().join(format!("store{i}")), true))
                .expect("dir store")
        })
        .collect();
    let shard = vec![0x5au8; SHARD];
    let counter = AtomicU64::new(0);

    let mut g = c.benchmark_group("durable small write");
    g.sample_size(30)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));

    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("append.log"))
        .expect("append log");
    g.bench_function("fdatasync 1 KiB append", |b| {
        b.iter(|| {
            log.write_all(&[0x33u8; 1024]).expect("append");
            log.sync_data().expect("fdatasync");
        })
    });
    g.bench_function("dir store put, 1 store", |b| {
        b.iter(|| {
            rt.block_on(stores[0].put(&next_key(&counter, 0), &shard))
                .expect("put")
        })
    });
    g.bench_function("dir store put, 6 stores at once", |b| {
        b.iter(|| {
            rt.block_on(async {
                // Concurrently, as `StoreSet::place` does.
                let mut puts = tokio::task::JoinSet::new();
                for (i, store) in stores.iter().enumerate() {
                    let (store, key, shard) = (store.clone(), next_key(&counter, i), shard.clone());
                    puts.spawn(async move { store.put(&key, &shard).await });
                }
                while let Some(joined) = puts.join_next().await {
                    joined.expect("put task").expect("put");
                }
            })
        })
    });
    g.finish();
}

criterion_group!(benches, durable_put);
criterion_main!(benches);
