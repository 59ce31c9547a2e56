//! Pack segments through the engine: many small files closed one after another share packs; every file reads
//! back identical — through a fresh engine, after deletes and overwrites, after compaction and gc — and the
//! packs' bytes stay within twice the live bytes once compacted; fsck finds nothing wrong.

use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};

use super::engine::Engine;
use crate::config::ByteSize;
use crate::meta::{self, NewInode, ROOT_INO};
use crate::volume::{InitOptions, Volume};

const SEG: u64 = 16 * 1024;

/// A fresh volume with `SEG`-sized segments.
fn new_volume() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let opts = InitOptions {
        segment_size: ByteSize(SEG),
        ..InitOptions::default()
    };
    Volume::init(dir.path(), &opts).unwrap();
    dir
}

/// A new empty file `name` in the root directory.
fn new_file(eng: &Engine, name: &str) -> u64 {
    eng.vol
        .meta()
        .write(|c| Ok(meta::create_node(c, ROOT_INO, name.as_bytes(), &NewInode::test_file())?.ino))
        .unwrap()
}

fn engine(dir: &std::path::Path) -> Arc<Engine> {
    let vol = Volume::open(dir).unwrap();
    let eng = Engine::new(Arc::new(vol), 1 << 20, false).unwrap();
    eng.start_workers(3).unwrap();
    eng
}

/// Writes `data` as the whole content of `ino` and closes it (local-first: queued, uploaded in the background).
fn write_and_close(eng: &Engine, ino: u64, data: &[u8]) {
    let cell = eng.open(ino).unwrap();
    eng.truncate(&cell, 0).unwrap();
    eng.write(&cell, 0, data, false).unwrap();
    eng.close_flush(&cell).unwrap();
    eng.release(&cell).unwrap();
}

fn read_file(eng: &Engine, ino: u64) -> Vec<u8> {
    let cell = eng.open(ino).unwrap();
    let size = cell.lock().size;
    let got = eng.read(&cell, 0, size as u32 + 10).unwrap();
    eng.release(&cell).unwrap();
    got
}

fn stop(eng: Arc<Engine>) {
    assert_eq!(eng.drain(Duration::from_secs(60)), 0, "uploads left queued");
    eng.stop_workers();
    eng.cache.stop_prefetch();
    let vol = eng.vol.clone();
    drop(eng);
    super::tests::wait_released(vol);
}

#[test]
fn small_files_share_packs_and_survive_deletes_overwrites_and_compaction() {
    let dir = new_volume();
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let eng = engine(dir.path());
    let mut files: Vec<(String, u64, Vec<u8>)> = Vec::new();
    for i in 0..400 {
        let name = format!("f{i}");
        let ino = new_file(&eng, &name);
        let len = rng.random_range(1..=3000usize);
        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        write_and_close(&eng, ino, &data);
        files.push((name, ino, data));
    }
    stop(eng);

    let eng = engine(dir.path());
    let packs = eng.vol.meta().read(meta::pack_usage).unwrap();
    let in_packs: u64 = packs.iter().map(|p| p.members).sum();
    assert_eq!(in_packs, 400, "every small file's segment is in a pack");
    // Closes arrive one at a time here: packs hold what arrived before a pause in the uploads' gathering.
    assert!(
        packs.len() <= 200,
        "400 files of at most 3000 bytes took {} packs",
        packs.len()
    );
    for (name, ino, data) in &files {
        assert_eq!(&read_file(&eng, *ino), data, "{name}");
    }

    // Delete two files in three, overwrite every fifth of the rest.
    let mut kept = Vec::new();
    for (i, (name, ino, data)) in files.into_iter().enumerate() {
        if i % 3 != 0 {
            let (gone, _) = eng
                .vol
                .meta()
                .write_fast(|c| meta::remove_name(c, ROOT_INO, name.as_bytes(), false))
                .unwrap();
            eng.forget_inode(gone).unwrap();
        } else if i % 5 == 0 {
            let new: Vec<u8> = (0..rng.random_range(1..=2000usize))
                .map(|_| rng.random())
                .collect();
            write_and_close(&eng, ino, &new);
            kept.push((name, ino, new));
        } else {
            kept.push((name, ino, data));
        }
    }
    assert_eq!(eng.drain(Duration::from_secs(60)), 0);
    let report = eng.vol.compact_packs().unwrap();
    assert!(report.compacted > 0, "{report:?}");
    eng.vol.collect_garbage().unwrap();
    let after = eng.vol.pack_census().unwrap();
    assert!(
        after.pack_bytes <= 2 * after.live_bytes,
        "packs hold {} bytes for {} live after compaction",
        after.pack_bytes,
        after.live_bytes
    );
    for (name, ino, data) in &kept {
        assert_eq!(&read_file(&eng, *ino), data, "{name} after compaction");
    }
    stop(eng);

    let vol = Volume::open(dir.path()).unwrap();
    let found = crate::fsck::fsck(&vol, false).unwrap();
    assert_eq!(found.unrepaired(), 0, "{:?}", found.problems);
    assert_eq!(vol.meta().read(meta::garbage_count).unwrap(), 0);
}

/// `--upload-lag`: closes of small files arriving with pauses still share one pack while the lag lasts (without
/// it each pause would end a pack); an fsync does not wait for the lag, and the drain uploads what is left.
#[test]
fn upload_lag_holds_a_pack_open_across_pauses_but_not_against_fsync_or_drain() {
    let dir = new_volume();
    let eng = engine(dir.path());
    eng.set_upload_lag(Duration::from_secs(600));
    let queued = |eng: &Engine| eng.vol.meta().read(meta::queue_len).unwrap();
    let mut files = Vec::new();
    for i in 0..4u8 {
        let name = format!("f{i}");
        let ino = new_file(&eng, &name);
        let data = vec![i; 100 + usize::from(i)];
        write_and_close(&eng, ino, &data);
        files.push((ino, data));
        // Longer than the default gathering's pause: without the lag each file would be a pack of its own.
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(queued(&eng), 4, "the lag holds the closes' uploads back");
    assert!(eng.vol.meta().read(meta::pack_usage).unwrap().is_empty());

    // An fsync of one of them: its pack (all four) uploads now.
    let cell = eng.open(files[1].0).unwrap();
    eng.fsync_flush(&cell, false).unwrap();
    eng.release(&cell).unwrap();
    let packs = eng.vol.meta().read(meta::pack_usage).unwrap();
    assert_eq!(packs.len(), 1, "{packs:?}");
    assert_eq!(packs[0].members, 4, "{packs:?}");

    // A fifth close waits again; the drain (unmount) uploads it without waiting for the lag.
    let ino = new_file(&eng, "f4");
    write_and_close(&eng, ino, b"last");
    files.push((ino, b"last".to_vec()));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(queued(&eng), 1);
    assert_eq!(
        eng.drain(Duration::from_secs(60)),
        0,
        "the drain uploads it"
    );
    for (ino, data) in &files {
        assert_eq!(&read_file(&eng, *ino), data);
    }
    stop(eng);
}
