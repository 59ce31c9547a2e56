//! The power-loss model of local-first closes. Files closed before the local committer's last sync (A) must
//! survive a power cut whole; files closed after it (B) may be lost, but only whole — absent, empty, or intact,
//! never other bytes — and nothing older may be damaged. A power cut is simulated on the metadata journal: the
//! write-ahead log keeps what was synced, and of the frames written after the sync any prefix, possibly torn
//! mid-frame (the disk wrote some of the page cache, in order, then stopped). The stores refuse every write
//! meanwhile, so all closed data is in the local upload queue.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use qsfs_backends::{Fault, FaultPlan, FaultyStore, Op, ShardStore, Trigger};
use rand::{Rng, SeedableRng};

use super::engine::Engine;
use super::tests::wait_released;
use crate::meta::{self, MetaStore, NewInode, ROOT_INO};
use crate::volume::{InitOptions, META_FILE, Volume};

/// Closes `n` new files named `{prefix}{i}` with random small contents; returns name → bytes.
fn close_files(eng: &Engine, prefix: &str, n: usize, seed: u64) -> BTreeMap<String, Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = BTreeMap::new();
    for i in 0..n {
        let name = format!("{prefix}{i}");
        let ino = eng
            .vol
            .meta()
            .write_fast(|c| {
                Ok(meta::create_node(c, ROOT_INO, name.as_bytes(), &NewInode::test_file())?.ino)
            })
            .unwrap();
        let data: Vec<u8> = (0..rng.random_range(1..=5000usize))
            .map(|_| rng.random())
            .collect();
        let cell = eng.open(ino).unwrap();
        eng.write(&cell, 0, &data, false).unwrap();
        eng.close_flush(&cell).unwrap();
        eng.release(&cell).unwrap();
        out.insert(name, data);
    }
    out
}

/// A file's bytes as the metadata alone holds them (every closed byte is in an upload-queue row here), or None
/// if the name is gone.
fn file_from_meta(m: &MetaStore, name: &str) -> Option<Vec<u8>> {
    let ino = m
        .read(|c| meta::lookup(c, ROOT_INO, name.as_bytes()))
        .unwrap()?;
    let size = m.read(|c| meta::get_inode(c, ino)).unwrap()?.size as usize;
    let mut bytes = vec![0u8; size];
    for q in m.read(meta::queued_segments).unwrap() {
        if q.ino == ino {
            let data = m.read(|c| meta::queued_data(c, q.id)).unwrap().unwrap();
            let end = data.len().min(size);
            bytes[..end].copy_from_slice(&data[..end]);
        }
    }
    Some(bytes)
}

/// Writes the journal as a power cut after `keep` bytes of its log would leave it.
fn cut_power(dir: &Path, db: &[u8], wal: &[u8], keep: usize) {
    std::fs::write(dir.join(META_FILE), db).unwrap();
    std::fs::write(dir.join(format!("{META_FILE}-wal")), &wal[..keep]).unwrap();
    let _ = std::fs::remove_file(dir.join(format!("{META_FILE}-shm")));
}

#[test]
fn a_power_cut_loses_only_closes_after_the_last_local_sync_and_only_whole() {
    let dir = tempfile::tempdir().unwrap();
    Volume::init(dir.path(), &InitOptions::default()).unwrap();
    let wrap = |_id: u32, store: Arc<dyn ShardStore>| -> Arc<dyn ShardStore> {
        let f = FaultyStore::wrap(store);
        f.set_plan(FaultPlan::none().with(&[Op::Put], Fault::Unavailable, Trigger::Always));
        Arc::new(f)
    };
    let vol = Volume::open_with_store_wrapper(dir.path(), &wrap).unwrap();
    let eng = Engine::new(Arc::new(vol), 1 << 20, false).unwrap();
    eng.start_workers(2).unwrap();
    let a = close_files(&eng, "a", 60, 1);
    assert!(
        eng.commit_local().unwrap(),
        "closes left the journal unsynced"
    );
    let wal_path = dir.path().join(format!("{META_FILE}-wal"));
    let synced = std::fs::metadata(&wal_path).unwrap().len() as usize;
    let b = close_files(&eng, "b", 60, 2);
    // The crash: nothing drained, nothing synced after A.
    let db = std::fs::read(dir.path().join(META_FILE)).unwrap();
    let wal = std::fs::read(&wal_path).unwrap();
    assert!(
        wal.len() > synced,
        "B's closes wrote nothing to the journal"
    );
    eng.shutting_down
        .store(true, std::sync::atomic::Ordering::Release);
    eng.stop_workers();
    eng.cache.stop_prefetch();
    let vol = eng.vol.clone();
    drop(eng);
    wait_released(vol);

    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut cuts = vec![synced, wal.len()];
    cuts.extend((0..6).map(|_| rng.random_range(synced..wal.len())));
    for keep in cuts {
        cut_power(dir.path(), &db, &wal, keep);
        let m = MetaStore::open(&dir.path().join(META_FILE), false).unwrap();
        let check: String = m
            .read(|c| Ok(c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(check, "ok", "cut at {keep}");
        for (name, data) in &a {
            assert_eq!(
                file_from_meta(&m, name).as_ref(),
                Some(data),
                "{name}, cut at {keep}"
            );
        }
        for (name, data) in &b {
            match file_from_meta(&m, name) {
                None => {}
                Some(got) => assert!(
                    got.is_empty() || &got == data,
                    "{name}, cut at {keep}: {} bytes of other data",
                    got.len()
                ),
            }
        }
    }
    // The harshest cut (nothing after the sync): the stores are back, the queue uploads, fsck is clean.
    cut_power(dir.path(), &db, &wal, synced);
    let vol = Volume::open(dir.path()).unwrap();
    let eng = Engine::new(Arc::new(vol), 1 << 20, false).unwrap();
    eng.start_workers(2).unwrap();
    eng.recover().unwrap();
    assert_eq!(eng.drain(Duration::from_secs(60)), 0);
    for (name, data) in &a {
        let ino = eng
            .vol
            .meta()
            .read(|c| meta::lookup(c, ROOT_INO, name.as_bytes()))
            .unwrap()
            .unwrap();
        let cell = eng.open(ino).unwrap();
        assert_eq!(&eng.read(&cell, 0, 10_000).unwrap(), data, "{name}");
        eng.release(&cell).unwrap();
    }
    let found = crate::fsck::fsck(&eng.vol, false).unwrap();
    assert_eq!(found.unrepaired(), 0, "{:?}", found.problems);
}
