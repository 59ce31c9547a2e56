//! Audits and self-healing at the library level, with `FaultyStore` between the volume and real dir stores:
//! stores that lie on range reads, corrupt reads, refuse writes or vanish; shards deleted behind the volume's
//! back; more than M shards of a segment gone; an interrupted full audit; the background auditor.
//!
//! Every scenario ends the same way: the damage is detected, repair restores full redundancy, files read back
//! byte-identical, and a full audit is clean.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qsfs::audit::{AuditOptions, BackgroundAuditor, Throttle};
use qsfs::config::{ByteSize, HumanDuration};
use qsfs::meta::{self, ROOT_INO};
use qsfs::repair::{RepairOptions, RepairReport};
use qsfs::volume::PutOptions;
use qsfs::{InitOptions, QsfsError, Volume};
use qsfs_backends::{Fault, FaultPlan, FaultyStore, Locator, Op, ShardStore, Trigger};
use qsfs_por::{AuditReport, Verdict};
use rand::{RngCore, SeedableRng};

const KIB: u64 = 1024;

type Faults = Arc<Mutex<HashMap<u32, Arc<FaultyStore>>>>;

struct Fixture {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
    files: Vec<(String, Vec<u8>)>,
}

impl Fixture {
    /// A volume over `stores` dir stores (k data + m parity, `seg`-byte segments) holding `files` random files.
    fn new(
        stores: usize,
        k: usize,
        m: usize,
        seg: u64,
        quorum: Option<usize>,
        sizes: &[u64],
    ) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_path_buf();
        let uris = (0..stores)
            .map(|i| format!("dir:{}", base.join(format!("s{i}")).display()))
            .collect();
        let opts = InitOptions {
            data_shards: k,
            parity_shards: m,
            segment_size: ByteSize(seg),
            write_quorum: quorum,
            stores: uris,
            ..InitOptions::default()
        };
        let root = Volume::init(&base.join("vol"), &opts).unwrap();
        let mut fx = Fixture {
            _tmp: tmp,
            base,
            root,
            files: Vec::new(),
        };
        let vol = Volume::open(&fx.root).unwrap();
        for (i, &size) in sizes.iter().enumerate() {
            let name = format!("file-{i}.bin");
            let data = random(size, i as u64 + 7);
            put(&vol, &name, &data);
            fx.files.push((name, data));
        }
        fx
    }

    /// Opens the volume with every store wrapped in a `FaultyStore` whose starting plan is `plan(id)`.
    fn open(&self, plan: impl Fn(u32) -> FaultPlan + Sync) -> (Volume, Faults) {
        let faults: Faults = Arc::default();
        let f2 = faults.clone();
        let wrap = move |id: u32, store: Arc<dyn ShardStore>| -> Arc<dyn ShardStore> {
            let faulty = Arc::new(FaultyStore::new(store, plan(id)));
            f2.lock().unwrap().insert(id, faulty.clone());
            faulty
        };
        (
            Volume::open_with_store_wrapper(&self.root, &wrap).unwrap(),
            faults,
        )
    }

    fn store_dir(&self, id: u32) -> PathBuf {
        self.base.join(format!("s{id}"))
    }

    /// Every file reads back byte-identical.
    fn assert_files_intact(&self, vol: &Volume) {
        for (name, data) in &self.files {
            assert_eq!(&get(vol, name), data, "{name} differs");
        }
    }
}

fn random(len: u64, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn put(vol: &Volume, name: &str, data: &[u8]) {
    let opts = PutOptions {
        mode: 0o644,
        uid: 0,
        gid: 0,
        atime_ns: 0,
        mtime_ns: 0,
    };
    vol.put_file(
        ROOT_INO,
        name.as_bytes(),
        &mut &data[..],
        &opts,
        &mut |_| {},
    )
    .unwrap();
}

fn ino_of(vol: &Volume, name: &str) -> u64 {
    vol.meta()
        .read(|c| meta::resolve(c, &format!("/{name}")))
        .unwrap()
        .unwrap()
}

fn try_get(vol: &Volume, name: &str) -> qsfs::Result<Vec<u8>> {
    let mut out = Vec::new();
    vol.get_file(ino_of(vol, name), &mut out, name, &mut |_| {})?;
    Ok(out)
}

fn get(vol: &Volume, name: &str) -> Vec<u8> {
    try_get(vol, name).unwrap()
}

fn audit(vol: &Volume, full: bool) -> AuditReport {
    let mut opts = AuditOptions::new(&vol.config().audit);
    opts.full = full;
    vol.audit(&opts, &|_, _| {}).unwrap()
}

fn repair(vol: &Volume, grace: Duration) -> RepairReport {
    let mut opts = RepairOptions::new(&vol.config().audit);
    opts.grace = grace;
    vol.repair(&opts, &|_| {}).unwrap()
}

fn queue_len(vol: &Volume) -> u64 {
    vol.meta().read(meta::repair_queue_len).unwrap()
}

/// Every segment has K+M good shards on distinct stores, none on `avoid`.
fn assert_fully_redundant(vol: &Volume, avoid: Option<u32>) {
    let n = vol.config().data_shards + vol.config().parity_shards;
    let st = vol.status().unwrap();
    assert!(st.segments.total > 0);
    assert_eq!(st.segments.healthy, st.segments.total, "{:?}", st.segments);
    assert_eq!(st.repair_queue, 0);
    let inos: Vec<u64> = vol
        .meta()
        .read(|c| {
            let mut st = c.prepare("SELECT DISTINCT ino FROM segments").unwrap();
            let rows = st.query_map([], |r| r.get::<_, i64>(0)).unwrap();
            Ok(rows.map(|r| r.unwrap() as u64).collect())
        })
        .unwrap();
    for ino in inos {
        for seg in vol.meta().read(|c| meta::segments_of(c, ino)).unwrap() {
            let stores: HashSet<u32> = seg.shards.iter().filter_map(|s| s.store_id).collect();
            assert_eq!(stores.len(), n, "segment {} shards share a store", seg.id);
            assert!(seg.shards.iter().all(|s| s.state == meta::ShardState::Ok));
            assert!(
                avoid.is_none_or(|a| !stores.contains(&a)),
                "segment {} still on store {avoid:?}",
                seg.id
            );
        }
    }
}

fn assert_clean_full_audit(vol: &Volume) {
    let r = audit(vol, true);
    assert!(r.is_clean(), "full audit not clean: {r:#?}");
    assert_eq!(r.verdict, Verdict::Healthy);
}

/// A store that returns wrong bytes for range reads (but right ones for whole reads) is caught by the sampled
/// audit; so is one that returns short ranges. Reads never see the lie; repair and a full audit clear it. The
/// shards are large enough (64 leaves, 9 per store) that the audit's 459 probes go to range reads, not whole
/// fetches.
#[test]
fn range_read_lies_are_caught() {
    let fx = Fixture::new(6, 4, 2, 1024 * KIB, None, &[9 * 1024 * KIB]);
    for fault in [Fault::Corrupt, Fault::Truncate] {
        let (vol, faults) = fx.open(|_| FaultPlan::none());
        let liar = faults.lock().unwrap()[&1].clone();
        liar.set_plan(FaultPlan::none().with(&[Op::GetRange], fault.clone(), Trigger::Always));
        let r = audit(&vol, false);
        let s1 = &r.stores[1];
        assert!(!r.is_clean(), "{fault:?}: {r:#?}");
        assert_eq!(
            s1.corrupt, s1.shards,
            "{fault:?}: every probe of the liar fails: {s1:#?}"
        );
        assert!(
            r.stores
                .iter()
                .filter(|s| s.store_id != 1)
                .all(|s| s.failed() == 0)
        );
        assert_eq!(r.verdict, Verdict::Degraded);
        assert_eq!(queue_len(&vol), s1.shards);
        // Whole-shard reads are honest, so files are fine; the liar's shards are simply not used while queued.
        fx.assert_files_intact(&vol);
        liar.set_plan(FaultPlan::none());
        let rep = repair(&vol, Duration::from_secs(3600));
        assert!(rep.is_complete(), "{rep:#?}");
        assert_eq!(rep.rebuilt + rep.verified_ok, s1.shards, "{rep:#?}");
        assert_fully_redundant(&vol, None);
        assert_clean_full_audit(&vol);
        assert!(audit(&vol, false).is_clean());
    }
}

/// A store that corrupts whole reads: the reader still gets the right bytes (the shard is verified and replaced
/// by parity), the bad shards are queued by the read itself, and repair rewrites them.
#[test]
fn corrupt_reads_are_never_served_and_get_queued() {
    let fx = Fixture::new(6, 4, 2, 64 * KIB, None, &[1024 * KIB]);
    let (vol, faults) = fx.open(|id| {
        if id == 0 {
            FaultPlan::none().with(&[Op::Get], Fault::Corrupt, Trigger::Always)
        } else {
            FaultPlan::none()
        }
    });
    // Reads fetch data shards first, so every segment whose data shard lives on store 0 meets the liar.
    let segs = vol
        .meta()
        .read(|c| meta::segments_of(c, ino_of(&vol, &fx.files[0].0)))
        .unwrap();
    let met = segs
        .iter()
        .filter(|s| s.shards[..4].iter().any(|r| r.store_id == Some(0)))
        .count() as u64;
    assert!(met > 0);
    fx.assert_files_intact(&vol);
    assert_eq!(
        queue_len(&vol),
        met,
        "each segment queued the bad shard its read met"
    );
    faults.lock().unwrap()[&0].set_plan(FaultPlan::none());
    let rep = repair(&vol, Duration::from_secs(3600));
    assert!(rep.is_complete(), "{rep:#?}");
    assert_fully_redundant(&vol, None);
    assert_clean_full_audit(&vol);
}

/// A write that could place only K+M-1 shards commits (quorum K+M-1) and queues the missing shard; a later
/// repair places it.
#[test]
fn shards_a_write_could_not_place_are_queued_and_repaired() {
    let fx = Fixture::new(6, 4, 2, 64 * KIB, Some(5), &[]);
    let (vol, _) = fx.open(|id| {
        if id == 3 {
            FaultPlan::none().with(&[Op::Put], Fault::Permanent, Trigger::Always)
        } else {
            FaultPlan::none()
        }
    });
    let data = random(200 * KIB, 99);
    put(&vol, "w.bin", &data);
    let queued = queue_len(&vol);
    assert_eq!(queued, 4, "one unplaced shard per segment");
    let r = audit(&vol, false);
    assert!(!r.is_clean() && r.queued_for_repair == 4, "{r:#?}");
    drop(vol);
    // A new session: store 3 takes writes again.
    let (vol, _) = fx.open(|_| FaultPlan::none());
    let rep = repair(&vol, Duration::from_secs(3600));
    assert!(rep.is_complete() && rep.rebuilt == 4, "{rep:#?}");
    assert_eq!(get(&vol, "w.bin"), data);
    assert_fully_redundant(&vol, None);
    assert_clean_full_audit(&vol);
}

/// A store that stays unreachable is waited for during the grace period, then treated as lost: its shards are
/// rebuilt on the spare store (no two shards of a segment together), most endangered segments first.
#[test]
fn unreachable_store_is_rebuilt_elsewhere_after_the_grace_period() {
    let fx = Fixture::new(7, 4, 2, 64 * KIB, None, &[400 * KIB, 130 * KIB]);
    let (vol, _) = fx.open(|id| {
        if id == 2 {
            FaultPlan::down()
        } else {
            FaultPlan::none()
        }
    });
    let on_2 = vol.meta().read(|c| meta::shards_on_store(c, 2)).unwrap();
    assert!(on_2 > 0);
    let r = audit(&vol, false);
    assert!(
        !r.stores[2].reachable && r.stores[2].unreachable > 0,
        "{:#?}",
        r.stores[2]
    );
    assert!(!r.is_clean());
    fx.assert_files_intact(&vol);

    let rep = repair(&vol, Duration::from_secs(3600));
    assert_eq!(
        rep.rebuilt, 0,
        "within the grace period nothing moves: {rep:#?}"
    );
    assert_eq!(rep.waiting_stores.len(), 1);
    assert_eq!(rep.waiting_stores[0].store_id, 2);

    let rep = repair(&vol, Duration::ZERO);
    assert_eq!(rep.lost_stores, vec![2], "{rep:#?}");
    assert!(rep.is_complete(), "{rep:#?}");
    assert_eq!(rep.rebuilt, on_2);
    assert_eq!(rep.moved, on_2);
    assert_fully_redundant(&vol, Some(2));
    fx.assert_files_intact(&vol);
    let full = audit(&vol, true);
    assert!(
        full.is_clean(),
        "the lost store holds nothing any more: {full:#?}"
    );
}

/// Shards deleted behind the volume's back, beyond M for one segment: the audit reports data loss naming the
/// file, repair reports it too and fixes everything else, the other file still reads.
#[test]
fn more_than_m_lost_shards_are_reported_as_data_loss_with_the_file_name() {
    let fx = Fixture::new(6, 4, 2, 64 * KIB, None, &[150 * KIB, 100 * KIB]);
    let (vol, _) = fx.open(|_| FaultPlan::none());
    let victim = &fx.files[1].0;
    let segs = vol
        .meta()
        .read(|c| meta::segments_of(c, ino_of(&vol, victim)))
        .unwrap();
    // Three shards (M + 1) of the victim's first segment, one shard of its second.
    let mut doomed: Vec<_> = segs[0].shards[..3].to_vec();
    doomed.push(segs[1].shards[5].clone());
    for s in &doomed {
        let slot = vol.stores().slot(s.store_id.unwrap()).unwrap().clone();
        vol.io()
            .block_on(slot.store.delete(&Locator(s.locator.clone().unwrap())))
            .unwrap();
    }
    let r = audit(&vol, false);
    assert_eq!(r.totals.missing, 4, "{r:#?}");
    assert_eq!(r.verdict, Verdict::AtRisk);
    assert_eq!(r.lost.len(), 1, "{r:#?}");
    assert!(r.lost[0].is_data_loss());
    assert_eq!(r.lost[0].files, vec![format!("/{victim}")]);
    let rep = repair(&vol, Duration::from_secs(3600));
    assert!(!rep.is_complete());
    assert_eq!(rep.lost.len(), 1);
    assert_eq!(rep.lost[0].files, vec![format!("/{victim}")]);
    assert_eq!(rep.rebuilt, 1, "the second segment is repaired: {rep:#?}");
    let err = try_get(&vol, victim).unwrap_err();
    assert!(matches!(err, QsfsError::Unreadable { .. }), "{err}");
    assert_eq!(get(&vol, &fx.files[0].0), fx.files[0].1);
}

/// A full audit stopped after its first batch keeps a checkpoint; the next full audit resumes from it and still
/// covers every shard once.
#[test]
fn interrupted_full_audit_resumes_from_its_checkpoint() {
    let fx = Fixture::new(6, 4, 2, 4 * KIB, None, &[150 * 4 * KIB]);
    let (vol, _) = fx.open(|_| FaultPlan::none());
    let mut opts = AuditOptions::new(&vol.config().audit);
    opts.full = true;
    let throttle = Arc::new(Throttle::unlimited());
    opts.throttle = throttle.clone();
    let stop = throttle.stop_flag().clone();
    let err = vol
        .audit(&opts, &|done, _| {
            if done > 0 {
                stop.store(true, Ordering::Relaxed);
            }
        })
        .unwrap_err();
    assert!(matches!(err, QsfsError::Interrupted(_)), "{err}");
    assert_eq!(qsfs::audit::pending_full_audit(&vol).unwrap(), Some(None));
    let seen = Mutex::new(Vec::new());
    opts.throttle = Arc::new(Throttle::unlimited());
    let r = vol
        .audit(&opts, &|done, _| seen.lock().unwrap().push(done))
        .unwrap();
    assert!(r.resumed);
    assert_eq!(r.totals.sampled, 150 * 6, "{:#?}", r.totals);
    assert!(r.is_clean());
    assert_eq!(
        seen.lock().unwrap().first(),
        Some(&128),
        "resumed after the first batch of 64"
    );
    assert_eq!(qsfs::audit::pending_full_audit(&vol).unwrap(), None);
}

/// Flips a byte in the data of shard `index` of the first segment of `name`, on disk.
fn corrupt_on_disk(fx: &Fixture, vol: &Volume, name: &str, index: usize) -> (PathBuf, Vec<u8>) {
    let seg = &vol
        .meta()
        .read(|c| meta::segments_of(c, ino_of(vol, name)))
        .unwrap()[0];
    let row = &seg.shards[index];
    let hex = hex::encode(row.locator.as_ref().unwrap());
    let path = fx
        .store_dir(row.store_id.unwrap())
        .join("shards")
        .join(&hex[..2])
        .join(&hex[2..4])
        .join(&hex);
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    bad[64 + 5000] ^= 0x40;
    std::fs::write(&path, &bad).unwrap();
    (path, good)
}

/// Repair does not hash the K sources of a rebuild first: a source damaged behind metadata's back (a flipped byte
/// on disk, no audit yet) makes the rebuilt shard miss its root; repair then proves its sources, marks the bad
/// one, rebuilds from another, and rewrites the bad one too.
#[test]
fn a_silently_damaged_rebuild_source_is_found_and_rewritten() {
    let fx = Fixture::new(6, 4, 2, 64 * KIB, None, &[256 * KIB]);
    let vol = Volume::open(&fx.root).unwrap();
    let name = &fx.files[0].0;
    // Sources are data shards first: shard 4 lost means shards 0..4 rebuild it, damaged shard 1 among them.
    let (path, good) = corrupt_on_disk(&fx, &vol, name, 1);
    let seg = vol
        .meta()
        .read(|c| meta::segments_of(c, ino_of(&vol, name)))
        .unwrap()[0]
        .clone();
    let lost = &seg.shards[4];
    let hex = hex::encode(lost.locator.as_ref().unwrap());
    let lost_path = (fx.store_dir(lost.store_id.unwrap()).join("shards"))
        .join(&hex[..2])
        .join(&hex[2..4])
        .join(&hex);
    std::fs::remove_file(&lost_path).unwrap();
    vol.meta()
        .write(|c| meta::mark_shard(c, seg.id, 4, meta::ShardState::Missing))
        .unwrap();
    let rep = repair(&vol, Duration::from_secs(3600));
    assert!(rep.is_complete() && rep.remaining == 0, "{rep:#?}");
    assert_eq!((rep.rebuilt, rep.verified_ok), (2, 0), "{rep:#?}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        good,
        "the damaged source rewritten"
    );
    assert!(lost_path.exists(), "the lost shard rebuilt in place");
    fx.assert_files_intact(&vol);
    assert_fully_redundant(&vol, None);
    assert_clean_full_audit(&vol);
}

/// The mount's background auditor: kicked, it audits, finds a flipped byte, repairs it, and stops on drop.
#[test]
fn background_auditor_finds_and_heals_damage() {
    let fx = Fixture::new(6, 4, 2, 64 * KIB, None, &[256 * KIB]);
    let vol = Arc::new(Volume::open(&fx.root).unwrap());
    let (path, good) = corrupt_on_disk(&fx, &vol, &fx.files[0].0, 2);
    let mut cfg = vol.config().audit.clone();
    cfg.interval = HumanDuration(Duration::from_secs(3600));
    cfg.bandwidth = ByteSize(0);
    let auditor = BackgroundAuditor::start(vol.clone(), cfg).unwrap();
    assert!(auditor.is_running());
    auditor.run_now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while auditor.state().cycles == 0 {
        assert!(Instant::now() < deadline, "no background cycle within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let state = auditor.state();
    let a = state.last_audit.expect("an audit ran");
    assert_eq!(a.totals.corrupt, 1, "{a:#?}");
    let rep = state.last_repair.expect("a repair ran");
    assert_eq!(rep.rebuilt, 1, "{rep:#?}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        good,
        "the shard file was rewritten"
    );
    let start = Instant::now();
    drop(auditor);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        start.elapsed()
    );
    assert_fully_redundant(&vol, None);
    assert_clean_full_audit(&vol);
    fx.assert_files_intact(&vol);
}

/// 0-db cannot read ranges: the sampled audit fetches whole shards and recomputes their roots. In a sequential
/// namespace a rewritten shard gets a new id, so repair records the new locator and deletes the corrupt entry.
#[test]
fn zdb_stores_are_audited_whole_and_repaired_with_new_locators() {
    use qsfs_backends::testing::{ZdbServerConfig, ZdbServerMode, ZdbTestServer};
    let srv = ZdbTestServer::start(ZdbServerConfig {
        mode: ZdbServerMode::Seq,
        ..ZdbServerConfig::default()
    })
    .unwrap();
    let mut uris = Vec::new();
    for i in 0..6 {
        let ns = format!("qsfs-{i}");
        srv.create_namespace(&ns, None).unwrap();
        uris.push(srv.uri(&ns, None));
    }
    let tmp = tempfile::tempdir().unwrap();
    let opts = InitOptions {
        segment_size: ByteSize(64 * KIB),
        stores: uris,
        ..InitOptions::default()
    };
    let root = Volume::init(&tmp.path().join("vol"), &opts).unwrap();
    let vol = Volume::open(&root).unwrap();
    let data = random(300 * KIB, 5);
    put(&vol, "z.bin", &data);

    let r = audit(&vol, false);
    assert!(r.is_clean(), "{r:#?}");
    let segs = vol
        .meta()
        .read(|c| meta::segments_of(c, ino_of(&vol, "z.bin")))
        .unwrap();
    for s in &r.stores {
        let on_store: u64 = segs
            .iter()
            .flat_map(|g| &g.shards)
            .filter(|x| x.store_id == Some(s.store_id))
            .map(|x| x.blob_len)
            .sum();
        assert_eq!(
            s.bytes_read, on_store,
            "whole blobs read from store {}",
            s.store_id
        );
    }

    let victim = segs[0].shards[1].clone();
    let old_loc = victim.locator.clone().unwrap();
    let ns = format!("qsfs-{}", victim.store_id.unwrap());
    let before = srv.entry_count(&ns).unwrap();
    assert!(srv.corrupt_value(&ns, &old_loc));
    let r = audit(&vol, false);
    assert_eq!((r.totals.corrupt, r.totals.missing), (1, 0), "{r:#?}");
    let rep = repair(&vol, Duration::from_secs(3600));
    assert!(rep.is_complete() && rep.rebuilt == 1, "{rep:#?}");
    let seg = vol
        .meta()
        .read(|c| meta::segments_of(c, ino_of(&vol, "z.bin")))
        .unwrap()[0]
        .clone();
    let now = &seg.shards[1];
    assert_eq!(now.store_id, victim.store_id, "rewritten on its own store");
    assert_ne!(
        now.locator.as_ref(),
        Some(&old_loc),
        "under a new sequential id"
    );
    assert_eq!(
        srv.entry_count(&ns).unwrap(),
        before,
        "the corrupt entry was deleted"
    );
    assert_eq!(get(&vol, "z.bin"), data);
    assert_fully_redundant(&vol, None);
    assert_clean_full_audit(&vol);
}
