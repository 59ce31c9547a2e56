//! The data engine against a model: random writes, truncates, flushes and reads on 4 KiB segments, compared byte
//! for byte with a `Vec<u8>`; truncate-down-then-up reads zeros; what flush made durable survives an engine that
//! stops without draining (a crash), local-first and with `--sync-close`; a failed upload never puts its older
//! bytes back over a newer write; a local-first close succeeds with every store down and its data reaches the
//! stores once they answer, while fsync fails meanwhile.

use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};

use super::engine::Engine;
use crate::config::ByteSize;
use crate::meta::{self, NewInode, ROOT_INO};
use crate::volume::{InitOptions, Volume};

const SEG: u64 = 4096;

fn volume(dir: &std::path::Path) -> Volume {
    let opts = InitOptions {
        segment_size: ByteSize(SEG),
        ..InitOptions::default()
    };
    Volume::init(dir, &opts).unwrap();
    Volume::open(dir).unwrap()
}

fn new_file(vol: &Volume, name: &str) -> u64 {
    vol.meta()
        .write(|c| Ok(meta::create_node(c, ROOT_INO, name.as_bytes(), &NewInode::test_file())?.ino))
        .unwrap()
}

fn engine(vol: Volume, sync_close: bool) -> Arc<Engine> {
    let eng = Engine::new(Arc::new(vol), 1 << 20, sync_close).unwrap();
    eng.start_workers(3).unwrap();
    eng
}

/// A volume of 4 KiB segments whose stores are each wrapped in a `FaultyStore`, and those wrappers.
fn faulty_volume(dir: &std::path::Path) -> (Volume, Vec<Arc<qsfs_backends::FaultyStore>>) {
    use qsfs_backends::{FaultyStore, ShardStore};
    let opts = InitOptions {
        segment_size: ByteSize(SEG),
        ..InitOptions::default()
    };
    Volume::init(dir, &opts).unwrap();
    let faulty = std::sync::Mutex::new(Vec::new());
    let wrap = |_id: u32, store: Arc<dyn ShardStore>| -> Arc<dyn ShardStore> {
        let f = Arc::new(FaultyStore::wrap(store));
        faulty.lock().unwrap().push(f.clone());
        f
    };
    let vol = Volume::open_with_store_wrapper(dir, &wrap).unwrap();
    (vol, faulty.into_inner().unwrap())
}

/// Waits until the last worker thread lets go of the volume, then drops it (releasing its lock), as a process
/// that ends would.
pub(super) fn wait_released(mut vol: Arc<Volume>) {
    for _ in 0..500 {
        match Arc::try_unwrap(vol) {
            Ok(v) => return drop(v),
            Err(v) => vol = v,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the volume is still held");
}

fn read_all(eng: &Engine, cell: &super::engine::Cell, size: u64) -> Vec<u8> {
    eng.read(cell, 0, size as u32 + 100).unwrap()
}

#[test]
fn random_ops_match_a_model() {
    for (seed, sync_close) in [(1u64, false), (2, true)] {
        let dir = tempfile::tempdir().unwrap();
        let vol = volume(dir.path());
        let ino = new_file(&vol, "f");
        let eng = engine(vol, sync_close);
        let cell = eng.open(ino).unwrap();
        let mut model: Vec<u8> = Vec::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for step in 0..600 {
            match rng.random_range(0..10) {
                0..=4 => {
                    let off = rng.random_range(0..6 * SEG);
                    let len = rng.random_range(1..2 * SEG) as usize;
                    let byte = (step % 251) as u8 + 1;
                    let data = vec![byte; len];
                    eng.write(&cell, off, &data, false).unwrap();
                    let end = off as usize + len;
                    if model.len() < end {
                        model.resize(end, 0);
                    }
                    model[off as usize..end].copy_from_slice(&data);
                }
                5..=6 => {
                    let size = rng.random_range(0..7 * SEG);
                    eng.truncate(&cell, size).unwrap();
                    model.resize(size as usize, 0);
                }
                7 if rng.random_bool(0.5) => eng.fsync_flush(&cell, true).unwrap(),
                7 => eng.close_flush(&cell).unwrap(),
                _ => {
                    let off = rng.random_range(0..7 * SEG);
                    let len = rng.random_range(1..3 * SEG) as u32;
                    let got = eng.read(&cell, off, len).unwrap();
                    let lo = (off as usize).min(model.len());
                    let hi = (off as usize + len as usize).min(model.len());
                    assert_eq!(
                        got,
                        model[lo..hi],
                        "seed {seed} step {step}: read {off}+{len}"
                    );
                }
            }
        }
        eng.fsync_flush(&cell, true).unwrap();
        assert_eq!(read_all(&eng, &cell, model.len() as u64), model);
        eng.drain(Duration::from_secs(30));
        let committed = eng
            .vol
            .meta()
            .read(|c| meta::get_inode(c, ino))
            .unwrap()
            .unwrap();
        assert_eq!(committed.size, model.len() as u64);
        // Every committed segment lies within the committed size (the invariant regrowth relies on).
        for s in eng.vol.meta().read(|c| meta::segments_of(c, ino)).unwrap() {
            assert!(s.index * SEG + s.info.plain_len <= committed.size);
        }
    }
}

#[test]
fn truncate_down_then_up_reads_zeros_after_commit() {
    let dir = tempfile::tempdir().unwrap();
    let vol = volume(dir.path());
    let ino = new_file(&vol, "f");
    let eng = engine(vol, false);
    let cell = eng.open(ino).unwrap();
    eng.write(&cell, 0, &vec![7u8; 3 * SEG as usize], false)
        .unwrap();
    eng.fsync_flush(&cell, true).unwrap();
    eng.truncate(&cell, SEG + 10).unwrap();
    eng.truncate(&cell, 3 * SEG).unwrap();
    eng.fsync_flush(&cell, true).unwrap();
    let data = read_all(&eng, &cell, 3 * SEG);
    assert!(data[..SEG as usize + 10].iter().all(|b| *b == 7));
    assert!(
        data[SEG as usize + 10..].iter().all(|b| *b == 0),
        "regrown range must read zeros"
    );
}

#[test]
fn flushed_data_survives_a_crash() {
    // (sync_close, the durability point is an fsync rather than a close)
    for (sync_close, fsync) in [(false, false), (false, true), (true, false)] {
        let dir = tempfile::tempdir().unwrap();
        let vol = volume(dir.path());
        let ino = new_file(&vol, "f");
        let eng = engine(vol, sync_close);
        let cell = eng.open(ino).unwrap();
        let durable: Vec<u8> = (0..5 * SEG as usize).map(|i| (i % 253) as u8).collect();
        eng.write(&cell, 0, &durable, false).unwrap();
        // A chmod of the open file is held in its cell: the flush must commit it with the data.
        let chmod = meta::AttrChanges {
            mode: Some(0o600),
            ..meta::AttrChanges::default()
        };
        assert!(eng.hold_attrs(ino, &chmod));
        if fsync {
            eng.fsync_flush(&cell, true).unwrap();
        } else {
            eng.close_flush(&cell).unwrap();
        }
        // Written after the flush and never flushed: may be lost, but must not corrupt what was flushed.
        eng.write(&cell, 2 * SEG, &[9u8; 100], false).unwrap();
        // "Crash": stop without draining and drop everything.
        eng.shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
        eng.stop_workers();
        eng.cache.stop_prefetch();
        drop(cell);
        let vol_arc = eng.vol.clone();
        drop(eng);
        wait_released(vol_arc);
        let vol = Volume::open(dir.path()).unwrap();
        let eng = engine(vol, sync_close);
        eng.recover().unwrap();
        let cell = eng.open(ino).unwrap();
        eng.drain(Duration::from_secs(30));
        let got = read_all(&eng, &cell, 5 * SEG);
        let mode = format!("sync_close={sync_close} fsync={fsync}");
        assert_eq!(got.len(), durable.len(), "{mode}");
        let row = eng
            .vol
            .meta()
            .read(|c| meta::get_inode(c, ino))
            .unwrap()
            .unwrap();
        assert_eq!(
            row.mode & 0o7777,
            0o600,
            "{mode}: the held chmod was not committed"
        );
        for (i, (g, d)) in got.iter().zip(&durable).enumerate() {
            let in_unflushed = (2 * SEG as usize..2 * SEG as usize + 100).contains(&i);
            assert!(
                g == d || (in_unflushed && *g == 9),
                "{mode}: byte {i} is {g}, flushed {d}"
            );
        }
    }
}

#[test]
fn a_failed_seal_never_puts_older_bytes_over_newer_ones() {
    use qsfs_backends::{Fault, FaultPlan, Op, Trigger};

    let dir = tempfile::tempdir().unwrap();
    let (vol, faulty) = faulty_volume(dir.path());
    let ino = new_file(&vol, "f");
    // Every upload hangs a moment, then fails: the first snapshot is still in flight when the second write lands.
    for f in &faulty {
        f.set_plan(
            FaultPlan::none()
                .with(
                    &[Op::Put],
                    Fault::Delay(Duration::from_millis(300)),
                    Trigger::Always,
                )
                .with(&[Op::Put], Fault::Unavailable, Trigger::Always),
        );
    }
    let eng = engine(vol, false);
    let cell = eng.open(ino).unwrap();
    eng.write(&cell, 0, &[1u8; 100], false).unwrap();
    let flusher = {
        let (eng, cell) = (eng.clone(), cell.clone());
        std::thread::spawn(move || eng.fsync_flush(&cell, false))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cell.lock().jobs.is_empty() || !cell.lock().dirty.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the flush never started sealing"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // A newer snapshot of the same segment, built from the one in flight.
    eng.write(&cell, 50, &[2u8; 100], false).unwrap();
    assert!(
        flusher.join().unwrap().is_err(),
        "the failed upload must fail the flush"
    );
    let got = eng.read(&cell, 0, 200).unwrap();
    assert_eq!(got.len(), 150);
    assert!(
        got[..50].iter().all(|b| *b == 1),
        "bytes only the failed snapshot had are kept"
    );
    assert!(
        got[50..].iter().all(|b| *b == 2),
        "the newer write survives the older snapshot's failure"
    );
}

#[test]
fn a_local_first_close_succeeds_offline_and_uploads_once_the_stores_answer() {
    use qsfs_backends::{Fault, FaultPlan, Op, Trigger};

    let dir = tempfile::tempdir().unwrap();
    let (vol, faulty) = faulty_volume(dir.path());
    let ino = new_file(&vol, "f");
    let eng = engine(vol, false);
    eng.fsync_wait_ms
        .store(1500, std::sync::atomic::Ordering::Relaxed);
    for f in &faulty {
        f.set_plan(FaultPlan::none().with(&[Op::Put], Fault::Unavailable, Trigger::Always));
    }
    let cell = eng.open(ino).unwrap();
    let data: Vec<u8> = (0..2 * SEG as usize + 77)
        .map(|i| (i % 241) as u8)
        .collect();
    eng.write(&cell, 0, &data, false).unwrap();
    eng.close_flush(&cell)
        .expect("a local-first close needs no store");
    assert_eq!(read_all(&eng, &cell, data.len() as u64), data);
    assert!(
        eng.fsync_flush(&cell, true).is_err(),
        "fsync must fail while no store takes the data"
    );
    assert!(
        eng.vol.meta().read(meta::queue_len).unwrap() > 0,
        "the closed data stays queued"
    );
    for f in &faulty {
        f.set_plan(FaultPlan::none());
    }
    eng.fsync_wait_ms
        .store(60_000, std::sync::atomic::Ordering::Relaxed);
    eng.fsync_flush(&cell, true)
        .expect("fsync succeeds once the stores answer");
    assert_eq!(eng.vol.meta().read(meta::queue_len).unwrap(), 0);
    let segments = eng.vol.meta().read(|c| meta::segments_of(c, ino)).unwrap();
    assert_eq!(segments.len(), 3, "every segment is on the stores");
    assert_eq!(read_all(&eng, &cell, data.len() as u64), data);
}
