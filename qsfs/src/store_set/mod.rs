//! The volume's stores as one set: their identities checked at open, their up/down state, shard placement on
//! distinct stores with retries and spares, and reads with retry. Knows shards only as opaque blobs.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qsfs_backends::{
    Locator, ShardStore, StoreError, StoreIdentity, StoreUri, open_store, open_store_or_lazy,
    stack, verify_identity,
};
use tokio::task::JoinSet;

use crate::codec::EncodedShard;
use crate::config::StoreConfig;
use crate::error::{QsfsError, Result};
use crate::meta::{ShardRow, ShardState};

/// How long an identity check may take before a store counts as unreachable for this session.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a store marked down is checked again, so a restarted server rejoins a long-running mount.
pub const REVIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long one read of a well-known object (lease, head, log record, snapshot chunk) may take.
const NAMED_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a quorum read waits, once it has enough answers, for stores just behind them.
const NAMED_READ_GRACE: Duration = Duration::from_millis(150);
/// A revival check is on the write/read path: it must give up quickly on a store that does not answer.
const REVIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How many bytes past a shard's recorded length a read accepts: a slightly extended blob still reaches
/// verification (and is reported corrupt there); anything longer is refused by the store before it is buffered.
pub const READ_SLACK: u64 = 4096;
/// The largest well-known object (a metadata log record; snapshot chunks and the descriptor are smaller) plus
/// slack: a named read never buffers more, whatever a store claims.
pub const NAMED_MAX: u64 = crate::replica::record::MAX_RECORD as u64 + 64 * 1024;
/// Wraps each store as it is opened (store id, store) -> store: the fault-injection hook of tests.
pub type StoreWrapper<'a> = dyn Fn(u32, Arc<dyn ShardStore>) -> Arc<dyn ShardStore> + Sync + 'a;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreState {
    Up,
    Down(String),
}

pub struct StoreSlot {
    pub id: u32,
    /// Redacted URI, safe to show.
    pub uri: String,
    pub store: Arc<dyn ShardStore>,
    state: Mutex<StoreState>,
    /// When the state was last set or checked: revival checks are rate-limited by it.
    checked: Mutex<Instant>,
    identity: StoreIdentity,
    /// Recent shard-read latencies: when a read takes much longer, the reader hedges with another shard.
    latency: Mutex<Latency>,
    /// Down because it reported itself full (a write short of stores then fails with ENOSPC, not EIO).
    full: std::sync::atomic::AtomicBool,
}

/// The last few successful shard-read times of one store.
#[derive(Default)]
struct Latency {
    samples: [u32; LATENCY_SAMPLES],
    seen: usize,
}

const LATENCY_SAMPLES: usize = 16;
/// No hedge sooner than this: below it a second read costs more than the wait it saves.
pub const HEDGE_FLOOR: Duration = Duration::from_millis(50);
/// Before a store has answered any read: long enough for a first connection to a remote server.
const HEDGE_COLD: Duration = Duration::from_millis(250);

impl Latency {
    fn record(&mut self, took: Duration) {
        let us = took.as_micros().min(u32::MAX as u128) as u32;
        self.samples[self.seen % LATENCY_SAMPLES] = us;
        self.seen += 1;
    }

    /// How long a read may take before it counts as slow: 3× the median of recent reads, at least `HEDGE_FLOOR`.
    fn hedge_after(&self) -> Duration {
        let n = self.seen.min(LATENCY_SAMPLES);
        if n == 0 {
            return HEDGE_COLD;
        }
        let mut recent = self.samples[..n].to_vec();
        recent.sort_unstable();
        let median = Duration::from_micros(recent[n / 2] as u64);
        (median * 3).max(HEDGE_FLOOR)
    }
}

impl StoreSlot {
    /// A slot for store `id` of volume `volume_id`, up until something says otherwise.
    fn new(id: u32, uri: String, store: Arc<dyn ShardStore>, volume_id: &str) -> StoreSlot {
        StoreSlot {
            id,
            uri,
            store,
            state: Mutex::new(StoreState::Up),
            checked: Mutex::new(Instant::now()),
            identity: StoreIdentity {
                volume_id: volume_id.to_string(),
                store_id: id,
            },
            latency: Mutex::new(Latency::default()),
            full: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// How long a shard read from this store may take before the reader asks another store too.
    pub fn hedge_after(&self) -> Duration {
        self.latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .hedge_after()
    }

    pub fn state(&self) -> StoreState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn is_up(&self) -> bool {
        self.state() == StoreState::Up
    }

    /// Up, or down only because a write found it full: its shards can still be read (and its garbage deleted,
    /// which is what gives it room again).
    pub fn is_readable(&self) -> bool {
        self.is_up() || self.full.load(Ordering::Acquire)
    }

    fn mark_down(&self, reason: String) {
        tracing::warn!(store = %self.uri, %reason, "store marked down");
        self.set_down(reason);
    }

    /// A write to this store failed with `e`: down, and whether because it is full.
    fn mark_write_failed(&self, e: &qsfs_backends::StoreError) {
        let full = matches!(e, qsfs_backends::StoreError::Full { .. });
        self.full.store(full, Ordering::Release);
        self.mark_down(e.to_string());
    }

    /// Marks the store down quietly: at open, `status` reports it and writes check their quorum up front.
    fn set_down(&self, reason: String) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = StoreState::Down(reason);
        *self.checked.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// For a down store whose last check is older than `REVIVE_INTERVAL`: checks its identity again and brings it
    /// back up if it answers as itself. A store that came back empty (no marker) stays down.
    /// Returns whether it came back.
    async fn revive_if_due(&self, interval: Duration) -> bool {
        if self.is_up() {
            return false;
        }
        {
            let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
            if checked.elapsed() < interval {
                return false;
            }
            *checked = Instant::now();
        }
        // The store retries (see `qsfs_backends::stack`): a redis connection that failed once reconnects in the
        // background and fails the first command after the server is back; the next attempt goes through.
        match tokio::time::timeout(
            REVIVE_TIMEOUT,
            verify_identity(self.store.as_ref(), &self.identity),
        )
        .await
        {
            Ok(Ok(())) => {
                tracing::info!(store = %self.uri, "store is back up");
                self.full.store(false, Ordering::Release);
                *self.state.lock().unwrap_or_else(|p| p.into_inner()) = StoreState::Up;
                return true;
            }
            Ok(Err(e)) => self.set_down(e.to_string()),
            Err(_) => self.set_down(format!("{}: no answer within {REVIVE_TIMEOUT:?}", self.uri)),
        }
        false
    }
}

pub struct StoreSet {
    slots: Vec<Arc<StoreSlot>>,
    revive_interval: Duration,
    /// How many times a down store has come back: the background worker compares it to know when shards queued
    /// for a store that was away can be placed.
    revivals: AtomicU64,
    /// Stores being drained: new shards are not placed on them.
    draining: HashSet<u32>,
}

impl StoreSet {
    /// Opens every configured store and checks its identity marker; a store that cannot be opened (a directory
    /// that is gone), reached, or proves to belong elsewhere is kept, marked down, with the reason (reads and writes
    /// then avoid it, and revival checks bring it back once it answers as itself). Only a malformed URI fails.
    pub async fn open(configs: &[StoreConfig], volume_id: &str) -> Result<StoreSet> {
        Self::open_wrapped(configs, volume_id, &|_, store| store).await
    }

    /// Like `open`, but every store passes through `wrap(id, store)` first: the hook fault-injection tests use to
    /// put a `FaultyStore` between the volume and a real store.
    pub async fn open_wrapped(
        configs: &[StoreConfig],
        volume_id: &str,
        wrap: &StoreWrapper<'_>,
    ) -> Result<StoreSet> {
        let mut slots = Vec::new();
        for c in configs {
            let uri = StoreUri::parse(&c.uri)?;
            // Every store through the standard stack (timeouts, retries); what `wrap` adds (metrics, faults)
            // sees each attempt.
            let store = stack::standard(wrap(c.id, open_store_or_lazy(&uri).await?));
            slots.push(Arc::new(StoreSlot::new(
                c.id,
                uri.to_string(),
                store,
                volume_id,
            )));
        }
        let mut checks = JoinSet::new();
        for slot in &slots {
            let slot = slot.clone();
            checks.spawn(async move {
                let res = tokio::time::timeout(
                    PROBE_TIMEOUT,
                    verify_identity(slot.store.as_ref(), &slot.identity),
                )
                .await;
                match res {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => slot.set_down(e.to_string()),
                    Err(_) => {
                        slot.set_down(format!("{}: no answer within {PROBE_TIMEOUT:?}", slot.uri))
                    }
                }
            });
        }
        while checks.join_next().await.is_some() {}
        Ok(StoreSet {
            slots,
            revive_interval: REVIVE_INTERVAL,
            revivals: AtomicU64::new(0),
            draining: HashSet::new(),
        })
    }

    /// Creates (dir) or connects to each store of a new volume and writes its identity marker. Every store is
    /// checked first — reachable and holding no marker — so a failed init leaves no marker behind to block a retry.
    pub async fn initialise(configs: &[StoreConfig], volume_id: &str) -> Result<()> {
        let mut opened = Vec::new();
        for c in configs {
            let uri = StoreUri::parse(&c.uri)?;
            let store = open_store(&uri, true).await?;
            let found = tokio::time::timeout(PROBE_TIMEOUT, store.read_identity())
                .await
                .map_err(|_| StoreError::Unavailable {
                    uri: uri.to_string(),
                    reason: format!("no answer within {PROBE_TIMEOUT:?}"),
                })??;
            if let Some(id) = found {
                return Err(StoreError::IdentityExists {
                    uri: uri.to_string(),
                    volume: id.volume_id,
                    store: id.store_id,
                }
                .into());
            }
            opened.push((c.id, store));
        }
        for (id, store) in opened {
            let identity = StoreIdentity {
                volume_id: volume_id.to_string(),
                store_id: id,
            };
            store.write_identity(&identity).await?;
        }
        Ok(())
    }

    /// Fails unless at least `quorum` stores are up: checked before a write starts, so a put that cannot reach
    /// its quorum changes nothing at all.
    pub fn check_writable(&self, quorum: usize) -> Result<()> {
        let up = self.slots.iter().filter(|s| s.is_up()).count();
        if up < quorum {
            return Err(QsfsError::NotEnoughStores {
                needed: quorum,
                available: up,
                detail: self.down_summary(),
            });
        }
        Ok(())
    }

    /// Re-checks the stores that are down and due for a check (see `REVIVE_INTERVAL`), concurrently.
    pub async fn revive_due(&self) {
        self.revive_checked_before(self.revive_interval).await;
    }

    /// Re-checks the down stores not checked within `interval`: an fsync waiting for its data asks sooner than the
    /// background schedule.
    pub async fn revive_checked_before(&self, interval: Duration) {
        let mut checks = JoinSet::new();
        for slot in self.slots.iter().filter(|s| !s.is_up()) {
            let slot = slot.clone();
            checks.spawn(async move { slot.revive_if_due(interval).await });
        }
        while let Some(back) = checks.join_next().await {
            if back.unwrap_or(false) {
                self.revivals.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// How many times a down store has come back up so far.
    pub fn revivals(&self) -> u64 {
        self.revivals.load(Ordering::Relaxed)
    }

    /// Changes how often down stores are re-checked (tests use a short interval).
    pub fn set_revive_interval(&mut self, interval: Duration) {
        self.revive_interval = interval;
    }

    pub fn slots(&self) -> &[Arc<StoreSlot>] {
        &self.slots
    }

    pub fn slot(&self, id: u32) -> Option<&Arc<StoreSlot>> {
        self.slots.iter().find(|s| s.id == id)
    }

    pub fn up_ids(&self) -> HashSet<u32> {
        self.slots
            .iter()
            .filter(|s| s.is_up())
            .map(|s| s.id)
            .collect()
    }

    fn down_summary(&self) -> String {
        let down: Vec<String> = self
            .slots
            .iter()
            .filter_map(|s| match s.state() {
                StoreState::Down(r) => Some(r),
                StoreState::Up => None,
            })
            .collect();
        if down.is_empty() {
            "no store reported an error".into()
        } else {
            down.join("; ")
        }
    }

    /// Places one segment's shards on distinct up stores, concurrently. Stores are rotated by segment id so load
    /// spreads when there are more stores than shards; a shard whose store fails goes to a spare store if any.
    /// Succeeds when at least `quorum` shards are durable; the rest are returned as `Missing` for repair.
    /// On failure the shards that did land are deleted again (best effort) and nothing is recorded.
    pub async fn place(
        &self,
        segment_id: u64,
        shards: Vec<EncodedShard>,
        quorum: usize,
    ) -> Result<Vec<ShardRow>> {
        self.revive_due().await;
        let (up, mut spares) = self.targets_for_segment(segment_id, shards.len());
        let available = up.len() + spares.len();
        if available < quorum {
            return Err(self.short_of_stores(quorum, available));
        }

        let mut rows: Vec<ShardRow> = shards
            .iter()
            .map(|s| ShardRow {
                index: s.index,
                store_id: None,
                locator: None,
                blob_len: s.blob.len() as u64,
                root: s.root,
                state: ShardState::Missing,
            })
            .collect();
        let blobs: Vec<Arc<EncodedShard>> = shards.into_iter().map(Arc::new).collect();
        let mut tasks = JoinSet::new();
        for (shard, slot) in blobs.iter().zip(up) {
            spawn_put(&mut tasks, shard.clone(), slot);
        }
        while let Some(joined) = tasks.join_next().await {
            let (index, slot, result) =
                joined.map_err(|e| QsfsError::Invalid(format!("store task failed: {e}")))?;
            match result {
                Ok(loc) => {
                    let row = &mut rows[index];
                    row.store_id = Some(slot.id);
                    row.locator = Some(loc.0);
                    row.state = ShardState::Ok;
                }
                Err(e) => {
                    slot.mark_write_failed(&e);
                    if let Some(spare) = spares.pop() {
                        spawn_put(&mut tasks, blobs[index].clone(), spare);
                    }
                }
            }
        }
        let placed = rows.iter().filter(|r| r.state == ShardState::Ok).count();
        if placed < quorum {
            for r in &rows {
                if let (Some(id), Some(loc)) = (r.store_id, &r.locator)
                    && let Some(slot) = self.slot(id)
                    && let Err(e) = slot.store.delete(&Locator(loc.clone())).await
                {
                    // Nothing names the shard: it is an orphan, which gc's listing finds and deletes.
                    tracing::warn!(store = %slot.uri, error = %e, "shard of a failed write left for gc");
                }
            }
            return Err(self.short_of_stores(quorum, placed));
        }
        Ok(rows)
    }

    /// A write that reached only `available` of the `needed` stores: ENOSPC (`NoSpace`) when the stores that are
    /// down for being full would have made up the difference, else `NotEnoughStores` (EIO).
    fn short_of_stores(&self, needed: usize, available: usize) -> QsfsError {
        let full = self
            .slots
            .iter()
            .filter(|s| !s.is_up() && s.full.load(Ordering::Acquire))
            .count();
        if full > 0 && available + full >= needed {
            return QsfsError::NoSpace(format!(
                "only {available} of the {needed} stores needed for a write have room: {}",
                self.down_summary()
            ));
        }
        QsfsError::NotEnoughStores {
            needed,
            available,
            detail: self.down_summary(),
        }
    }

    /// The slot of a store that is configured and readable (up, or only full: see `StoreSlot::is_readable`).
    fn readable_slot(&self, store_id: u32) -> Result<&Arc<StoreSlot>, StoreError> {
        let slot = self.slot(store_id).ok_or_else(|| StoreError::Unavailable {
            uri: format!("store {store_id}"),
            reason: "not in this volume's config".into(),
        })?;
        match slot.state() {
            StoreState::Up => Ok(slot),
            StoreState::Down(_) if slot.is_readable() => Ok(slot),
            StoreState::Down(reason) => Err(StoreError::Unavailable {
                uri: slot.uri.clone(),
                reason,
            }),
        }
    }

    /// Reads one shard blob of `blob_len` bytes (as metadata records it; the store refuses more than
    /// `READ_SLACK` beyond), retrying transient failures. A store that stays unreachable is marked down; the time
    /// a successful read took feeds the store's latency estimate.
    pub async fn fetch(
        &self,
        store_id: u32,
        locator: &[u8],
        blob_len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let slot = self.readable_slot(store_id)?;
        let loc = Locator(locator.to_vec());
        let max_len = blob_len.saturating_add(READ_SLACK);
        let start = Instant::now();
        let res = slot.store.get(&loc, max_len).await;
        if res.is_ok() {
            slot.latency
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(start.elapsed());
        }
        if let Err(e) = &res
            && e.is_retryable()
        {
            slot.mark_down(e.to_string());
        }
        res
    }

    /// Deletes a shard that metadata no longer references.
    pub async fn delete(&self, store_id: u32, locator: &[u8]) -> Result<(), StoreError> {
        let slot = self.readable_slot(store_id)?;
        let loc = Locator(locator.to_vec());
        slot.store.delete(&loc).await
    }
}

type PutOutcome = (usize, Arc<StoreSlot>, Result<Locator, StoreError>);

fn spawn_put(tasks: &mut JoinSet<PutOutcome>, shard: Arc<EncodedShard>, slot: Arc<StoreSlot>) {
    tasks.spawn(async move {
        let res = slot.store.put(&shard.key, &shard.blob).await;
        (shard.index, slot, res)
    });
}

mod change;
mod named;
mod placement;
mod probe;

#[cfg(test)]
mod tests {
    use super::*;
    use qsfs_backends::{FaultPlan, FaultyStore};

    /// A store that fails and then answers again rejoins the set; one that lost its marker does not.
    #[test]
    fn down_stores_rejoin_once_they_answer_as_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let configs: Vec<StoreConfig> = (0..2)
            .map(|i| StoreConfig {
                id: i,
                uri: format!("dir:{}", dir.path().join(i.to_string()).display()),
            })
            .collect();
        rt.block_on(StoreSet::initialise(&configs, "vol")).unwrap();
        let faulty: Mutex<Vec<Arc<FaultyStore>>> = Mutex::new(Vec::new());
        let wrap = |_id: u32, store: Arc<dyn ShardStore>| -> Arc<dyn ShardStore> {
            let f = Arc::new(FaultyStore::wrap(store));
            faulty.lock().unwrap().push(f.clone());
            f
        };
        let mut set = rt
            .block_on(StoreSet::open_wrapped(&configs, "vol", &wrap))
            .unwrap();
        set.set_revive_interval(Duration::from_millis(10));
        let faults = faulty.lock().unwrap().clone();
        faults[0].set_plan(FaultPlan::down());
        faults[1].set_plan(FaultPlan::down());
        set.slots()[0].mark_down("test".into());
        set.slots()[1].mark_down("test".into());
        std::thread::sleep(Duration::from_millis(20));
        rt.block_on(set.revive_due());
        assert!(set.up_ids().is_empty(), "still failing: stays down");

        faults[0].set_plan(FaultPlan::none());
        faults[1].set_plan(FaultPlan::none());
        std::fs::remove_file(dir.path().join("1").join("qsfs-store.id")).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        rt.block_on(set.revive_due());
        assert_eq!(
            set.up_ids(),
            HashSet::from([0]),
            "store 0 is back; store 1 lost its marker"
        );
    }
}
