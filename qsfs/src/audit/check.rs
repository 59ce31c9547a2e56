//! Checking stored shards against their Merkle roots: one leaf by range reads (sampled audits) or the whole blob
//! (full audits, and stores that cannot read ranges), each check timed, its bytes counted and its outcome sorted
//! into passed / missing / corrupt / unreachable. Runs a store's checks with bounded concurrency and stops early
//! when the store has plainly gone away.

use std::sync::Arc;
use std::time::Instant;

use qsfs_backends::{Locator, ReadFault, ShardStore, StoreError};
use qsfs_por::{Latencies, LeafProbe, ShardBlob, ShardLayout};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::error::{QsfsError, Result};
use crate::meta::{ShardState, ShardTarget};
use crate::pace::Throttle;

/// After this many unreachable checks in a row the rest of the store's checks are not attempted.
const GIVE_UP_AFTER: u32 = 6;

/// How to check a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// Prove these leaves with range reads, stopping at the first that fails (falls back to `Whole` on stores
    /// without range reads).
    Leaves(Vec<u64>),
    /// Fetch the whole blob and recompute its tree.
    Whole,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Missing,
    Corrupt(String),
    Unreachable(String),
}

/// A shard that failed its check, to be recorded in metadata (and so queued for repair).
#[derive(Clone, Debug)]
pub struct Finding {
    pub target: ShardTarget,
    pub state: ShardState,
    pub reason: String,
}

/// Running counts of one store's checks; serializable so a full audit's checkpoint can carry them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// Good shards recorded on the store (the population).
    pub shards: u64,
    pub checked: u64,
    pub passed: u64,
    pub missing: u64,
    pub corrupt: u64,
    pub unreachable: u64,
    pub known_bad: u64,
    pub bytes: u64,
    pub latencies: Latencies,
    /// Why the store could not be reached, if it could not.
    pub down: Option<String>,
    pub escalated: bool,
}

impl Tally {
    fn add(&mut self, outcome: &Outcome, bytes: u64, micros: u64) {
        self.checked += 1;
        self.bytes += bytes;
        match outcome {
            Outcome::Passed => self.passed += 1,
            Outcome::Missing => self.missing += 1,
            Outcome::Corrupt(_) => self.corrupt += 1,
            Outcome::Unreachable(_) => self.unreachable += 1,
        }
        if !matches!(outcome, Outcome::Unreachable(_)) {
            self.latencies.record(micros);
        }
    }

    /// Counts `n` checks that could not be attempted because the store is down.
    pub fn add_unreachable(&mut self, n: u64, reason: &str) {
        self.checked += n;
        self.unreachable += n;
        if self.down.is_none() {
            self.down = Some(reason.to_string());
        }
    }

    /// Folds another tally of the same store in (a resumed full audit).
    pub fn merge(&mut self, other: &Tally) {
        self.shards += other.shards;
        self.checked += other.checked;
        self.passed += other.passed;
        self.missing += other.missing;
        self.corrupt += other.corrupt;
        self.unreachable += other.unreachable;
        self.known_bad += other.known_bad;
        self.bytes += other.bytes;
        self.latencies.merge(&other.latencies);
        if self.down.is_none() {
            self.down = other.down.clone();
        }
        self.escalated |= other.escalated;
    }
}

/// Sorts a store error into what it says about the shard (the classification every reader shares).
fn classify(e: &StoreError) -> Outcome {
    match e.read_fault() {
        ReadFault::Missing => Outcome::Missing,
        ReadFault::Damaged => Outcome::Corrupt(e.to_string()),
        ReadFault::Unreachable => Outcome::Unreachable(e.to_string()),
    }
}

/// Checks one shard; returns the outcome, the bytes read and the time it took (µs).
pub async fn check_shard(
    store: &dyn ShardStore,
    t: &ShardTarget,
    method: Method,
    throttle: &Throttle,
) -> Result<(Outcome, u64, u64)> {
    let loc = Locator(t.locator.clone());
    // The recorded blob length must be the one the recorded data length lays out; anything else is a damaged
    // metadata row, which no store read can vindicate.
    match ShardLayout::new(t.data_len) {
        Ok(layout) if layout.blob_len() == t.blob_len => {}
        Ok(layout) => {
            return Ok((
                Outcome::Corrupt(format!(
                    "metadata records a {}-byte blob, its data length lays out {}",
                    t.blob_len,
                    layout.blob_len()
                )),
                0,
                0,
            ));
        }
        Err(e) => return Ok((Outcome::Corrupt(format!("metadata: {e}")), 0, 0)),
    }
    let leaves = match method {
        Method::Leaves(leaves) if store.supports_range() => leaves,
        _ => Vec::new(),
    };
    if !leaves.is_empty() {
        let start = Instant::now();
        let mut bytes = 0;
        for leaf in leaves {
            let probe = match LeafProbe::new(t.data_len, leaf) {
                Ok(p) => p,
                Err(e) => return Ok((Outcome::Corrupt(format!("metadata: {e}")), bytes, 0)),
            };
            throttle.admit(probe.read_bytes()).await?;
            let mut parts = Vec::with_capacity(probe.reads().len());
            for r in probe.reads() {
                // The store times out and retries the read itself (see `qsfs_backends::stack`).
                let got = store.get_range(&loc, r.start, r.end - r.start).await;
                match got {
                    Ok(b) => {
                        bytes += b.len() as u64;
                        parts.push(b);
                    }
                    Err(StoreError::RangeUnsupported { .. }) => {
                        return Box::pin(check_shard(store, t, Method::Whole, throttle)).await;
                    }
                    Err(e) => return Ok((classify(&e), bytes, elapsed_us(start))),
                }
            }
            if let Err(e) = probe.verify(&t.root, &parts) {
                return Ok((
                    Outcome::Corrupt(format!("leaf {leaf}: {e}")),
                    bytes,
                    elapsed_us(start),
                ));
            }
        }
        return Ok((Outcome::Passed, bytes, elapsed_us(start)));
    }
    throttle.admit(t.blob_len).await?;
    let start = Instant::now();
    let max_len = t.blob_len.saturating_add(crate::store_set::READ_SLACK);
    match store.get(&loc, max_len).await {
        Ok(blob) => {
            let outcome = match ShardBlob::open(&blob, &t.root, t.data_len) {
                Ok(_) => Outcome::Passed,
                Err(e) => Outcome::Corrupt(e.to_string()),
            };
            Ok((outcome, blob.len() as u64, elapsed_us(start)))
        }
        Err(e) => Ok((classify(&e), 0, elapsed_us(start))),
    }
}

fn elapsed_us(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

/// Runs `jobs` against `store` with at most `concurrency` checks in flight, adding to `tally` and `findings`.
/// After [`GIVE_UP_AFTER`] unreachable checks in a row the remaining jobs count as unreachable unchecked.
pub async fn check_many(
    store: Arc<dyn ShardStore>,
    jobs: Vec<(ShardTarget, Method)>,
    throttle: Arc<Throttle>,
    concurrency: usize,
    tally: &mut Tally,
    findings: &mut Vec<Finding>,
) -> Result<()> {
    let mut pending = jobs.into_iter();
    let mut running = JoinSet::new();
    let mut unreachable_run = 0u32;
    let mut gave_up: Option<String> = None;
    let mut last_unreachable: Option<String> = None;
    loop {
        while gave_up.is_none() && running.len() < concurrency.max(1) {
            let Some((target, method)) = pending.next() else {
                break;
            };
            throttle.check("audit")?;
            let (store, throttle) = (store.clone(), throttle.clone());
            running.spawn(async move {
                let res = check_shard(store.as_ref(), &target, method, &throttle).await;
                (target, res)
            });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (target, res) =
            joined.map_err(|e| QsfsError::Invalid(format!("audit task failed: {e}")))?;
        let (outcome, bytes, micros) = res?;
        tally.add(&outcome, bytes, micros);
        match &outcome {
            Outcome::Passed => unreachable_run = 0,
            Outcome::Missing => {
                unreachable_run = 0;
                findings.push(Finding {
                    target,
                    state: ShardState::Missing,
                    reason: "absent from its store".into(),
                });
            }
            Outcome::Corrupt(reason) => {
                unreachable_run = 0;
                tracing::warn!(segment = target.segment_id, shard = target.index, store = %store.uri(), %reason, "audit: corrupt shard");
                findings.push(Finding {
                    target,
                    state: ShardState::Corrupt,
                    reason: reason.clone(),
                });
            }
            Outcome::Unreachable(reason) => {
                unreachable_run += 1;
                last_unreachable = Some(reason.clone());
                if unreachable_run >= GIVE_UP_AFTER && gave_up.is_none() {
                    gave_up = Some(reason.clone());
                }
            }
        }
    }
    if let Some(reason) = gave_up {
        let rest = pending.count() as u64;
        tally.add_unreachable(rest, &reason);
    } else if tally.checked > 0 && tally.unreachable == tally.checked {
        // Not one check got through: the store is down, not merely slow on a read or two.
        tally.down = last_unreachable;
    }
    Ok(())
}
