//! Self-healing: this module owns draining the persistent repair queue (SQLite table `repair_queue`), deciding
//! when an unreachable store counts as lost, and the admin operations that move shards between stores
//! (`store add`, `store drain`, `store readmit`, in [`admin`]).
//!
//! Shards enter the queue when a write could not place them, a read or an audit found them missing or corrupt
//! (schema triggers, in the transaction that records the finding), when their store has been unreachable for
//! longer than the grace period (`audit.lost_store_grace`), or when their store is being drained. A repair round:
//!
//! 1. probes every store and notes which answer; stores down longer than the grace period are *lost* and all
//!    their shards are queued;
//! 2. orders the queued segments most endangered first (fewest healthy shards) and runs them through
//!    [`pipeline`]: `workers` threads (8 by default) each take the next segment and repair it up to its commit
//!    ([`segment`]): re-check queued shards that metadata still calls good (a store that came back), fetch K good
//!    shards, rebuild the bad ones with reed-solomon ([`crate::codec::SegmentCodec::rebuild_from`], which checks
//!    each rebuilt root against metadata — so sources are only shape-checked, and proven one by one only when a
//!    rebuilt root does not match), and write each to its own store if that store is healthy, otherwise to a
//!    healthy store holding no shard of the segment. Segments are independent, so one segment's hashing and
//!    erasure coding overlap another's reads, writes and fsyncs, on every core;
//! 3. the committer ([`commit`], on the calling thread) records finished segments — each only once all the shards
//!    it placed are durable on their stores — many per SQLite transaction: whatever finished while the previous
//!    commit was syncing goes into the next (group commit), so a slow fsync costs one wait per batch, not one
//!    per segment;
//! 4. deletes the bad copies it replaced, where their stores answer (as garbage, after the commits).
//!
//! Interrupted (kill -9) at any point, nothing acknowledged is lost: a committed location names a shard already
//! durable, an old copy is garbage only in the commit that replaced it, and a segment not committed keeps its
//! queue entries — the next round rebuilds it again, writing the same content-named shards (the copies written
//! before the kill are overwritten in place or, on another store, left for `gc`).
//!
//! A segment with fewer than K good shards cannot be rebuilt: it is reported as lost with its files' names, and
//! its queue entries stay (with the error) for a later round, in case a store comes back.
//!
//! `QSFS_LOG=qsfs::repair=debug` logs timing spans: the round's phases, the time the workers spent fetching,
//! rebuilding and placing, and each batch commit's size and duration.

pub mod admin;
mod commit;
mod pipeline;
mod segment;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qsfs_por::LostSegment;
use serde::Serialize;

use crate::config::AuditConfig;
use crate::error::Result;
use crate::meta::{self, RepairItem, RepairReason, ShardState};
use crate::pace::Throttle;
use crate::store_set::StoreState;
use crate::volume::Volume;

/// How long a store may take to answer the probe at the start of a repair round.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a repair round runs.
#[derive(Clone, Debug)]
pub struct RepairOptions {
    /// Stores unreachable for longer than this are lost: their shards are rebuilt elsewhere.
    pub grace: Duration,
    /// Move every shard off this store (retiring it).
    pub drain: Option<u32>,
    /// Segments repaired in parallel.
    pub workers: usize,
    pub throttle: Arc<Throttle>,
}

impl RepairOptions {
    /// The volume's grace period, eight workers, unthrottled. Eight, on any number of cores: a segment spends
    /// much of its time waiting for its store (a dir store fsyncs each shard twice), so twice as many segments in
    /// flight as the cores of a small server keeps them busy; each holds about K + 2 shards of memory.
    pub fn new(cfg: &AuditConfig) -> RepairOptions {
        RepairOptions {
            grace: cfg.lost_store_grace.0,
            drain: None,
            workers: 8,
            throttle: Arc::new(Throttle::unlimited()),
        }
    }
}

/// Progress of a repair round, for a progress bar.
#[derive(Clone, Copy, Debug, Default)]
pub struct RepairProgress {
    /// Queued shards dealt with (repaired, found intact, or failed).
    pub done: u64,
    pub total: u64,
    pub bytes_written: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RepairFailure {
    pub segment: u64,
    pub index: usize,
    pub reason: String,
}

/// A store whose shards are left where they are for now: unreachable but inside its grace period, or answering
/// again after this session stopped using it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WaitingStore {
    pub store_id: u32,
    pub uri: String,
    pub unreachable_secs: f64,
    pub lost_after_secs: f64,
    pub reason: String,
}

/// What the survey at the start of a round learned about one store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    /// In use and answering.
    Up,
    /// Marked down earlier in this session, but answers again as itself.
    BackButMarkedDown,
    Down,
}

/// What a repair round did (the `qsfs repair --json` document).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RepairReport {
    /// Shards in the queue when the round started (after lost or drained stores' shards were added).
    pub queued: u64,
    /// Shards reconstructed from K others.
    pub rebuilt: u64,
    /// Intact shards copied off a drained store.
    pub copied: u64,
    /// Of those, placed on a different store than before.
    pub moved: u64,
    /// Queued shards found intact on re-check and dropped from the queue.
    pub verified_ok: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub duration_secs: f64,
    /// MB (10^6 bytes) of rebuilt and copied shards written per second.
    pub throughput_mb_s: f64,
    /// Shards still queued at the end.
    pub remaining: u64,
    pub lost_stores: Vec<u32>,
    pub waiting_stores: Vec<WaitingStore>,
    pub failures: Vec<RepairFailure>,
    pub lost: Vec<LostSegment>,
}

impl RepairReport {
    /// Everything queued was dealt with and no data is lost.
    pub fn is_complete(&self) -> bool {
        self.failures.is_empty() && self.lost.is_empty()
    }
}

/// Which stores a round may read from and write to.
pub(crate) struct StoreView {
    /// Answered the probe.
    pub reachable: HashSet<u32>,
    /// Unreachable past the grace period.
    pub lost: HashSet<u32>,
    pub draining: Option<u32>,
    /// Stores being drained by someone else (an admin's drain while a mount repairs): read, never written.
    pub not_for_writes: HashSet<u32>,
    /// Good shards per store, kept current as shards are placed (new copies go where there are fewest).
    pub usage: Mutex<HashMap<u32, u64>>,
}

impl StoreView {
    /// Healthy enough to receive shards: reachable and not being drained.
    pub fn fit(&self, id: u32) -> bool {
        self.reachable.contains(&id)
            && self.draining != Some(id)
            && !self.not_for_writes.contains(&id)
    }
}

/// Counters the workers share.
#[derive(Default)]
pub(crate) struct Counters {
    pub done: AtomicU64,
    pub rebuilt: AtomicU64,
    pub copied: AtomicU64,
    pub moved: AtomicU64,
    pub verified_ok: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    /// Wall time the workers spent fetching and verifying, rebuilding, and placing (logged at debug level).
    pub fetch_ns: Nanos,
    pub rebuild_ns: Nanos,
    pub place_ns: Nanos,
}

/// A total of nanoseconds spent, added to by [`Nanos::span`] guards.
#[derive(Default)]
pub(crate) struct Nanos(AtomicU64);

/// Adds the time from its creation to its drop to a [`Nanos`].
pub(crate) struct Span<'a>(&'a Nanos, Instant);

impl Nanos {
    pub fn span(&self) -> Span<'_> {
        Span(self, Instant::now())
    }

    fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

impl Drop for Span<'_> {
    fn drop(&mut self) {
        let ns = u64::try_from(self.1.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.0.0.fetch_add(ns, Ordering::Relaxed);
    }
}

impl Volume {
    /// Drains the repair queue once (see the module docs). An `Err` means the round could not run or was
    /// stopped; what each segment's repair achieved is committed as it goes.
    pub fn repair(
        &self,
        opts: &RepairOptions,
        progress: &(dyn Fn(RepairProgress) + Sync),
    ) -> Result<RepairReport> {
        let clock = Instant::now();
        let mut report = RepairReport::default();
        let view = self.survey_stores(opts, &mut report)?;
        let drain = opts.drain.filter(|id| view.reachable.contains(id));
        self.meta().write(|c| {
            for id in &view.lost {
                meta::queue_store_shards(c, *id, RepairReason::StoreLost)?;
            }
            if let Some(id) = drain {
                meta::queue_store_shards(c, id, RepairReason::Drain)?;
            }
            Ok(())
        })?;
        let items = self.meta().read(meta::repair_items)?;
        report.queued = items.len() as u64;
        let mut by_segment: BTreeMap<u64, Vec<RepairItem>> = BTreeMap::new();
        for item in items {
            by_segment.entry(item.segment_id).or_default().push(item);
        }
        let queue = self.endangered_first(by_segment, &view)?;
        // Timing spans of a round's phases (`QSFS_LOG=qsfs::repair=debug`): where a slow repair spends its time.
        tracing::debug!(elapsed = ?clock.elapsed(), segments = queue.len(), "repair: surveyed and queued");
        let total = report.queued;
        let counters = Counters::default();
        let outcomes = pipeline::run(self, &view, queue, opts, &counters, progress, total)?;
        tracing::debug!(
            elapsed = ?clock.elapsed(),
            fetch = ?counters.fetch_ns.get(),
            rebuild = ?counters.rebuild_ns.get(),
            place = ?counters.place_ns.get(),
            "repair: segments rebuilt and committed (fetch, rebuild, place: summed over workers)"
        );
        opts.throttle.check("repair")?;
        for outcome in outcomes {
            report.failures.extend(outcome.failures);
            report.lost.extend(outcome.lost);
        }
        report.failures.sort_by_key(|f| (f.segment, f.index));
        report.lost.sort_by_key(|l| l.segment);
        // The replaced bad copies: deleted now where their stores answer, later by `gc` otherwise.
        if let Err(e) = self.collect_garbage() {
            tracing::warn!(error = %e, "repair: replaced shards not deleted yet");
        }
        tracing::debug!(elapsed = ?clock.elapsed(), "repair: garbage collected");
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        report.rebuilt = l(&counters.rebuilt);
        report.copied = l(&counters.copied);
        report.moved = l(&counters.moved);
        report.verified_ok = l(&counters.verified_ok);
        report.bytes_read = l(&counters.bytes_read);
        report.bytes_written = l(&counters.bytes_written);
        report.remaining = self.meta().read(meta::repair_queue_len)?;
        report.duration_secs = clock.elapsed().as_secs_f64();
        report.throughput_mb_s = if report.duration_secs > 0.0 {
            report.bytes_written as f64 / 1e6 / report.duration_secs
        } else {
            0.0
        };
        Ok(report)
    }

    /// Probes the stores, records who answered, and works out which are lost (down past the grace period).
    ///
    /// A slot this process marked down earlier (the store set never brings one back within a session) is checked
    /// again, identity marker included: if it answers as itself it is not lost — its shards stay where they are
    /// and the next session (a new `qsfs` command, a remount) uses it again — rather than rebuilt elsewhere
    /// because of a blip.
    fn survey_stores(&self, opts: &RepairOptions, report: &mut RepairReport) -> Result<StoreView> {
        let volume_id = self.config().volume_id.clone();
        let probes: Vec<(u32, Probe)> = self.io().block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for slot in self.stores().slots() {
                let slot = slot.clone();
                let expected = qsfs_backends::StoreIdentity {
                    volume_id: volume_id.clone(),
                    store_id: slot.id,
                };
                set.spawn(async move {
                    let probe = match slot.state() {
                        StoreState::Up => {
                            match tokio::time::timeout(PROBE_TIMEOUT, slot.store.probe()).await {
                                Ok(Ok(_)) => Probe::Up,
                                _ => Probe::Down,
                            }
                        }
                        StoreState::Down(_) => {
                            let check =
                                qsfs_backends::verify_identity(slot.store.as_ref(), &expected);
                            match tokio::time::timeout(PROBE_TIMEOUT, check).await {
                                Ok(Ok(())) => Probe::BackButMarkedDown,
                                _ => Probe::Down,
                            }
                        }
                    };
                    (slot.id, probe)
                });
            }
            let mut out = Vec::new();
            while let Some(Ok(r)) = set.join_next().await {
                out.push(r);
            }
            out
        });
        let down_since = self.meta().write(|c| {
            for (id, probe) in &probes {
                meta::note_store_reachability(c, *id, *probe != Probe::Down)?;
            }
            meta::stores_down_since(c)
        })?;
        let reachable: HashSet<u32> = probes
            .iter()
            .filter(|(_, p)| *p == Probe::Up)
            .map(|(id, _)| *id)
            .collect();
        let now = meta::now_ns();
        let mut lost = HashSet::new();
        for (id, probe) in &probes {
            let uri = self
                .stores()
                .slot(*id)
                .map_or_else(String::new, |s| s.uri.clone());
            match probe {
                Probe::Up => {}
                Probe::BackButMarkedDown => report.waiting_stores.push(WaitingStore {
                    store_id: *id,
                    uri,
                    unreachable_secs: 0.0,
                    lost_after_secs: opts.grace.as_secs_f64(),
                    reason: "answers again, but this session stopped using it after a failure; the next session \
                             uses it again"
                        .into(),
                }),
                Probe::Down => {
                    let since = down_since.get(id).copied().unwrap_or(now);
                    let down_for = Duration::from_nanos((now - since).max(0) as u64);
                    // A store being drained while unreachable is retired now: its shards are rebuilt at once.
                    if down_for >= opts.grace || opts.drain == Some(*id) {
                        lost.insert(*id);
                    } else {
                        report.waiting_stores.push(WaitingStore {
                            store_id: *id,
                            uri,
                            unreachable_secs: down_for.as_secs_f64(),
                            lost_after_secs: opts.grace.as_secs_f64(),
                            reason: "unreachable; its shards are rebuilt elsewhere once the grace period ends".into(),
                        });
                    }
                }
            }
        }
        report.lost_stores = lost.iter().copied().collect();
        report.lost_stores.sort_unstable();
        report.waiting_stores.sort_by_key(|w| w.store_id);
        let usage = self.meta().read(meta::good_shards_per_store)?;
        Ok(StoreView {
            reachable,
            lost,
            draining: opts.drain,
            not_for_writes: self.stores().draining_ids(),
            usage: Mutex::new(usage),
        })
    }

    /// Loads the queued segments and orders them by healthy shards, fewest first (then by id, for a stable
    /// order). Queue entries of segments that no longer exist are dropped.
    fn endangered_first(
        &self,
        by_segment: BTreeMap<u64, Vec<RepairItem>>,
        view: &StoreView,
    ) -> Result<VecDeque<pipeline::Job>> {
        let mut ranked = Vec::with_capacity(by_segment.len());
        for (id, items) in by_segment {
            let Some((ino, rec)) = self.meta().read(|c| meta::segment_by_id(c, id))? else {
                continue;
            };
            let queued: HashSet<usize> = items.iter().map(|i| i.index).collect();
            let healthy = rec
                .shards
                .iter()
                .filter(|s| {
                    s.state == ShardState::Ok
                        && !queued.contains(&s.index)
                        && s.store_id.is_some_and(|st| view.fit(st))
                })
                .count();
            ranked.push((healthy, id, ino, rec, items));
        }
        ranked.sort_by_key(|(healthy, id, ..)| (*healthy, *id));
        Ok(ranked
            .into_iter()
            .map(|(_, _, ino, rec, items)| (ino, rec, items))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteSize;
    use crate::meta::ROOT_INO;
    use crate::volume::{InitOptions, PutOptions};

    /// Segments with fewer healthy shards come first: one with two bad shards before one with a single bad one,
    /// whatever their ids.
    #[test]
    fn most_endangered_segments_are_repaired_first() {
        let dir = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            segment_size: ByteSize(4096),
            ..InitOptions::default()
        };
        let root = Volume::init(&dir.path().join("v"), &opts).unwrap();
        let vol = Volume::open(&root).unwrap();
        let data: Vec<u8> = (0..3 * 4096u32).map(|i| (i * 7 % 251) as u8).collect();
        let put = PutOptions {
            mode: 0o644,
            uid: 0,
            gid: 0,
            atime_ns: 0,
            mtime_ns: 0,
        };
        let ino = vol
            .put_file(ROOT_INO, b"f", &mut &data[..], &put, &mut |_| {})
            .unwrap();
        let mut segs = vol.meta().read(|c| meta::segments_of(c, ino)).unwrap();
        segs.sort_by_key(|s| s.id);
        // The lowest id loses one shard, the highest two, the middle three.
        vol.meta()
            .write(|c| {
                meta::mark_shard(c, segs[0].id, 0, ShardState::Missing)?;
                for i in 0..2 {
                    meta::mark_shard(c, segs[2].id, i, ShardState::Corrupt)?;
                }
                for i in 0..3 {
                    meta::mark_shard(c, segs[1].id, i, ShardState::Missing)?;
                }
                Ok(())
            })
            .unwrap();
        let mut report = RepairReport::default();
        let view = vol
            .survey_stores(&RepairOptions::new(&vol.config().audit), &mut report)
            .unwrap();
        let mut by_segment: BTreeMap<u64, Vec<RepairItem>> = BTreeMap::new();
        for item in vol.meta().read(meta::repair_items).unwrap() {
            by_segment.entry(item.segment_id).or_default().push(item);
        }
        let order: Vec<u64> = vol
            .endangered_first(by_segment, &view)
            .unwrap()
            .into_iter()
            .map(|(_, rec, _)| rec.id)
            .collect();
        assert_eq!(order, vec![segs[1].id, segs[2].id, segs[0].id]);
        let rep = vol
            .repair(&RepairOptions::new(&vol.config().audit), &|_| {})
            .unwrap();
        // The marks were metadata only: the middle segment has just 3 good shards on record, so repair re-checks
        // a marked one, finds it intact (restored in place) and rebuilds the rest from it.
        assert!(rep.is_complete() && rep.remaining == 0, "{rep:#?}");
        assert_eq!((rep.rebuilt, rep.verified_ok), (5, 1), "{rep:#?}");
        let mut out = Vec::new();
        vol.get_file(ino, &mut out, "f", &mut |_| {}).unwrap();
        assert_eq!(out, data);
    }
}
