//! Proof-of-retrievability audits of a volume's stores: this module owns choosing what to check, checking it,
//! recording what failed (which queues it for repair), judging the volume and keeping the audit history.
//!
//! - Sampled (the default): per store, c = ⌈ln(1 − P) / ln(1 − δ)⌉ distinct shards drawn from a fresh nonce
//!   (all of them when the store holds fewer), one random Merkle leaf of each proven by range reads against the
//!   root in metadata ([`qsfs_por::LeafProbe`]); stores without range reads (0-db) send the whole blob and its
//!   root is recomputed. When a sample finds a missing or corrupt shard the audit *escalates* on that store and
//!   probes one leaf of every other shard it holds, so a store that lost everything has every shard queued for
//!   repair, not only the c it happened to sample. (Sampling then bounds the cost of an audit of a healthy store,
//!   which is the common case, by c probes per store whatever the volume's size.)
//! - Full (`--full`, a scrub): every shard fetched whole and its tree recomputed. Progress is checkpointed after
//!   each batch of segments, so an interrupted full audit resumes where it stopped.
//!
//! Findings go into metadata with the row's location as a guard (a shard moved by a repair since is not blamed),
//! and the schema's triggers put them in the repair queue in the same transaction. Each audit ends with a verdict
//! from the weakest segment's margin ([`qsfs_por::Verdict::assess`]), the segments that can no longer be read
//! (named by file) and a row in the audit history.
//!
//! [`background::BackgroundAuditor`] runs audits and repairs periodically inside the mount.

pub mod background;
mod check;
mod file;
mod full;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use qsfs_backends::ShardStore;
use qsfs_por::merkle::leaf_count_for;
use qsfs_por::{
    AuditMode, AuditReport, ChallengeStream, Guarantee, LostSegment, Nonce, REPORT_VERSION,
    StoreAudit, Verdict, detection_probability,
};
use tokio::task::JoinSet;

pub use crate::pace::{ForegroundActivity, Throttle};
pub use background::BackgroundAuditor;
pub use check::Tally;
use check::{Finding, Method, check_many};
pub use file::{FileAudit, PathAuditReport};

use crate::config::AuditConfig;
use crate::error::{QsfsError, Result};
use crate::meta::{self, ShardTarget};
use crate::store_set::{StoreSlot, StoreState};
use crate::volume::Volume;

/// Leaf probes in flight per store (each a few small reads).
const SAMPLE_CONCURRENCY: usize = 8;
/// Whole-shard fetches in flight per store during a full audit.
const FULL_CONCURRENCY: usize = 4;

/// What to audit and how hard.
#[derive(Clone, Debug)]
pub struct AuditOptions {
    /// Verify every shard whole instead of sampling.
    pub full: bool,
    /// Only this store (by id).
    pub store: Option<u32>,
    pub delta: f64,
    pub confidence: f64,
    /// Probe every shard of a store whose sample found a missing or corrupt one.
    pub escalate: bool,
    pub throttle: Arc<Throttle>,
}

impl AuditOptions {
    /// A sampled audit of every store with the volume's δ and P, unthrottled.
    pub fn new(cfg: &AuditConfig) -> AuditOptions {
        AuditOptions {
            full: false,
            store: None,
            delta: cfg.delta,
            confidence: cfg.confidence,
            escalate: true,
            throttle: Arc::new(Throttle::unlimited()),
        }
    }
}

/// Called with (segments done, segments in all) as a full audit advances.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// One store's work for a round of checks.
type StoreWork = (u32, Arc<dyn ShardStore>, Vec<(ShardTarget, Method)>, Tally);

impl Volume {
    /// Runs one audit now and records it in the history. Failing shards are recorded (and so queued for repair);
    /// the report says what was found. An `Err` means the audit itself could not run (or was stopped).
    pub fn audit(&self, opts: &AuditOptions, progress: Progress<'_>) -> Result<AuditReport> {
        let guarantee = Guarantee::new(opts.delta, opts.confidence)
            .map_err(|e| QsfsError::Invalid(format!("audit parameters: {e}")))?;
        let slots = selected_slots(self, opts.store)?;
        let started = SystemTime::now();
        let clock = Instant::now();
        let started_ns = unix_ns(started);
        if opts.full {
            let run = full::run(self, opts, &slots, started_ns, progress)?;
            let ctx = Finish {
                mode: AuditMode::Full,
                nonce: run.nonce,
                started_ns: run.started_ns,
                clock,
                resumed: run.resumed,
                guarantee,
                clear_checkpoint: true,
            };
            finish(self, &slots, run.tallies, Vec::new(), ctx)
        } else {
            let nonce = Nonce::random();
            let (tallies, findings) =
                sampled(self, opts, &slots, &nonce, guarantee.samples_per_store)?;
            let ctx = Finish {
                mode: AuditMode::Sampled,
                nonce,
                started_ns,
                clock,
                resumed: false,
                guarantee,
                clear_checkpoint: false,
            };
            finish(self, &slots, tallies, findings, ctx)
        }
    }
}

/// The scope of an interrupted full audit waiting to be resumed: `Some(None)` for all stores, `Some(Some(id))`
/// for one store, `None` when there is none.
pub fn pending_full_audit(vol: &Volume) -> Result<Option<Option<u32>>> {
    let cp = vol.meta().read(meta::load_checkpoint)?;
    Ok(cp.map(|cp| cp.scope.parse::<u32>().ok()))
}

fn selected_slots(vol: &Volume, store: Option<u32>) -> Result<Vec<Arc<StoreSlot>>> {
    match store {
        None => Ok(vol.stores().slots().to_vec()),
        Some(id) => vol
            .stores()
            .slot(id)
            .map(|s| vec![s.clone()])
            .ok_or_else(|| {
                QsfsError::Invalid(format!("store {id}: not one of this volume's stores"))
            }),
    }
}

fn unix_ns(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Runs each store's checks concurrently (stores in parallel, `concurrency` checks per store).
async fn run_stores(
    work: Vec<StoreWork>,
    throttle: Arc<Throttle>,
    concurrency: usize,
) -> Result<Vec<(u32, Tally, Vec<Finding>)>> {
    let mut set = JoinSet::new();
    for (id, store, jobs, mut tally) in work {
        let throttle = throttle.clone();
        set.spawn(async move {
            let mut findings = Vec::new();
            let res = check_many(
                store,
                jobs,
                throttle,
                concurrency,
                &mut tally,
                &mut findings,
            )
            .await;
            (id, tally, findings, res)
        });
    }
    let mut out = Vec::new();
    let mut first_err = None;
    while let Some(joined) = set.join_next().await {
        let (id, tally, findings, res) =
            joined.map_err(|e| QsfsError::Invalid(format!("audit task failed: {e}")))?;
        match res {
            Ok(()) => out.push((id, tally, findings)),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// The sampled audit: c leaves per store, escalating on stores where a sample failed.
fn sampled(
    vol: &Volume,
    opts: &AuditOptions,
    slots: &[Arc<StoreSlot>],
    nonce: &Nonce,
    c: u64,
) -> Result<(BTreeMap<u32, Tally>, Vec<Finding>)> {
    let mut tallies = BTreeMap::new();
    let mut work = Vec::new();
    // Kept for escalation: each store's population, what was sampled, and its challenge stream.
    let mut rest = BTreeMap::new();
    for slot in slots {
        let population = vol.meta().read(|c| meta::store_population(c, slot.id))?;
        let mut tally = Tally {
            shards: population.len() as u64,
            ..Tally::default()
        };
        let count = c.min(population.len() as u64);
        if let StoreState::Down(reason) = slot.state() {
            tally.add_unreachable(count, &reason);
            tallies.insert(slot.id, tally);
            continue;
        }
        let mut rng = ChallengeStream::new(nonce, u64::from(slot.id));
        let picks = rng.shards(population.len() as u64, count);
        let keys: Vec<(u64, u32)> = picks.iter().map(|&p| population[p as usize]).collect();
        let targets = vol.meta().read(|c| meta::shard_targets(c, &keys))?;
        let jobs = leaf_jobs(targets, &mut rng, c);
        work.push((slot.id, slot.store.clone(), jobs, tally));
        rest.insert(slot.id, (population, picks, rng));
    }
    let results = vol
        .io()
        .block_on(run_stores(work, opts.throttle.clone(), SAMPLE_CONCURRENCY))?;
    let mut findings = Vec::new();
    let mut escalate = Vec::new();
    for (id, tally, mut found) in results {
        // Escalate only where the sample did not already cover the whole store.
        let unsampled = rest
            .get(&id)
            .is_some_and(|(population, picks, _)| population.len() > picks.len());
        if opts.escalate && !found.is_empty() && tally.down.is_none() && unsampled {
            escalate.push(id);
        }
        findings.append(&mut found);
        tallies.insert(id, tally);
    }
    if !escalate.is_empty() {
        let mut work = Vec::new();
        for id in escalate {
            let (population, picks, mut rng) =
                rest.remove(&id).expect("sampled stores have a plan");
            let picked: HashSet<u64> = picks.into_iter().collect();
            let keys: Vec<(u64, u32)> = population
                .iter()
                .enumerate()
                .filter(|(i, _)| !picked.contains(&(*i as u64)))
                .map(|(_, k)| *k)
                .collect();
            let targets = vol.meta().read(|c| meta::shard_targets(c, &keys))?;
            // Escalation wants every remaining shard probed once; the population is at least c here.
            let jobs = leaf_jobs(targets, &mut rng, 0);
            let mut tally = tallies.remove(&id).unwrap_or_default();
            tally.escalated = true;
            // A store retired while the audit ran (drained on a live mount) is left out of the escalation.
            let Some(slot) = vol.stores().slot(id).cloned() else {
                tallies.insert(id, tally);
                continue;
            };
            work.push((id, slot.store.clone(), jobs, tally));
        }
        let results =
            vol.io()
                .block_on(run_stores(work, opts.throttle.clone(), SAMPLE_CONCURRENCY))?;
        for (id, tally, mut found) in results {
            findings.append(&mut found);
            tallies.insert(id, tally);
        }
    }
    Ok((tallies, findings))
}

/// One probe job per shard. `budget` is the store's c: when the store holds fewer than c shards, the probes left
/// over are spread across its shards as extra distinct leaves (every shard at least one), so a small store gets
/// its full c probes instead of one per shard; a shard whose every leaf would be probed is fetched whole instead.
fn leaf_jobs(
    targets: Vec<ShardTarget>,
    rng: &mut ChallengeStream,
    budget: u64,
) -> Vec<(ShardTarget, Method)> {
    let n = targets.len() as u64;
    let (base, extra) = match budget.checked_div(n) {
        Some(per) => (per.max(1), budget % n),
        None => (1, 0),
    };
    targets
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let leaves = leaf_count_for(t.data_len);
            let want = base + u64::from((i as u64) < extra);
            let method = if want >= leaves && want > 1 {
                Method::Whole
            } else if want <= 1 {
                Method::Leaves(vec![rng.leaf(leaves)])
            } else {
                Method::Leaves(rng.shards(leaves, want))
            };
            (t, method)
        })
        .collect()
}

/// Context of an audit being finished.
struct Finish {
    mode: AuditMode,
    nonce: Nonce,
    started_ns: i64,
    clock: Instant,
    resumed: bool,
    guarantee: Guarantee,
    clear_checkpoint: bool,
}

/// Records findings and reachability, judges the volume, writes the history row and builds the report.
fn finish(
    vol: &Volume,
    slots: &[Arc<StoreSlot>],
    mut tallies: BTreeMap<u32, Tally>,
    findings: Vec<Finding>,
    ctx: Finish,
) -> Result<AuditReport> {
    let cfg = vol.config();
    let (k, m) = (cfg.data_shards, cfg.parity_shards);
    if ctx.mode == AuditMode::Sampled {
        // Known before this audit's findings are recorded, so a shard is never counted twice.
        let known = vol.meta().read(meta::known_bad_counts)?;
        for (id, tally) in tallies.iter_mut() {
            tally.known_bad = known.get(id).copied().unwrap_or(0);
        }
    }
    for slot in slots {
        let tally = tallies.entry(slot.id).or_default();
        if let (StoreState::Down(reason), None) = (slot.state(), &tally.down) {
            tally.down = Some(reason);
        }
    }
    vol.meta().write(|c| {
        record_findings(c, &findings)?;
        for (id, tally) in &tallies {
            meta::note_store_reachability(c, *id, tally.down.is_none())?;
        }
        Ok(())
    })?;

    let audited: HashSet<u32> = tallies.keys().copied().collect();
    // An audit of some stores answers for the queue entries of those stores only.
    let scoped = slots.len() < vol.stores().slots().len();
    let scope = scoped.then_some(&audited);
    let usable: HashSet<u32> = vol
        .stores()
        .slots()
        .iter()
        .filter(|s| s.is_up())
        .filter(|s| {
            !audited.contains(&s.id) || tallies.get(&s.id).is_some_and(|t| t.down.is_none())
        })
        .map(|s| s.id)
        .collect();
    let (min_margin, short, queued) = vol.meta().read(|c| {
        let (margin, short) = meta::segment_margins(c, &usable, k)?;
        let mut lost = Vec::with_capacity(short.len());
        for s in short {
            lost.push(LostSegment {
                segment: s.segment_id,
                files: meta::segment_paths(c, s.segment_id, s.ino)?,
                healthy_shards: s.healthy,
                unreachable_shards: s.elsewhere,
                needed: k as u64,
            });
        }
        let queued = match scope {
            Some(ids) => meta::repair_queue_len_on(c, ids)?,
            None => meta::repair_queue_len(c)?,
        };
        Ok((margin, lost, queued))
    })?;

    let stores: Vec<StoreAudit> = tallies
        .iter()
        .map(|(id, t)| {
            let completed = t.checked - t.unreachable;
            StoreAudit {
                store_id: *id,
                uri: vol
                    .stores()
                    .slot(*id)
                    .map_or_else(|| format!("store {id}"), |s| s.uri.clone()),
                reachable: t.down.is_none(),
                error: t.down.clone(),
                shards: t.shards,
                sampled: t.checked,
                passed: t.passed,
                missing: t.missing,
                corrupt: t.corrupt,
                unreachable: t.unreachable,
                known_bad: t.known_bad,
                escalated: t.escalated,
                bytes_read: t.bytes,
                median_latency_ms: t.latencies.median_ms(),
                detection_probability: if t.escalated || ctx.mode == AuditMode::Full {
                    detection_probability(ctx.guarantee.delta, completed, completed)
                } else {
                    detection_probability(ctx.guarantee.delta, completed, t.shards)
                },
            }
        })
        .collect();
    let mut report = AuditReport {
        version: REPORT_VERSION,
        mode: ctx.mode,
        nonce: ctx.nonce.to_hex(),
        started_unix: (ctx.started_ns.max(0) / 1_000_000_000) as u64,
        duration_secs: ctx.clock.elapsed().as_secs_f64(),
        resumed: ctx.resumed,
        guarantee: ctx.guarantee,
        stores,
        totals: Default::default(),
        queued_for_repair: queued,
        lost: short,
        verdict: Verdict::Healthy,
    };
    report.total_up();
    let trouble = report.failures() > 0 || queued > 0;
    report.verdict = Verdict::assess(min_margin, m as u64, trouble);
    let finished_ns = unix_ns(SystemTime::now());
    vol.meta().write(|c| {
        meta::record_audit(c, &report, ctx.started_ns, finished_ns)?;
        if ctx.clear_checkpoint {
            meta::clear_checkpoint(c)?;
        }
        Ok(())
    })?;
    Ok(report)
}

/// Records what an audit found in one transaction: each bad shard is marked (only where it still lives — a
/// repair may have moved it since) and queued for repair with the reason.
fn record_findings(c: &rusqlite::Connection, findings: &[Finding]) -> Result<()> {
    for f in findings {
        let t = &f.target;
        if meta::mark_shard_at(c, t.segment_id, t.index, t.store_id, &t.locator, f.state)? {
            meta::note_repair_reason(c, t.segment_id, t.index, &format!("audit: {}", f.reason))?;
        }
    }
    Ok(())
}
