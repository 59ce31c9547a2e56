//! Repairing one segment: sort its queued shards into those to re-check, copy, rebuild or leave for later; fetch
//! enough good shards; rebuild; and place each shard on its own store if healthy, else on a healthy store holding
//! no shard of the segment. Every shard it places is durable on its store when it returns; what it established
//! goes to the committer ([`super::commit`]), which records it in metadata.
//!
//! Which fetched shards are proven (hashed whole against their recorded Merkle roots) and which are only checked
//! for shape: queued shards being re-checked and shards recorded bad that are tried again are proven, because
//! metadata is updated from the result, and so is every shard copied as it is. Sources of a rebuild that metadata
//! records good are not hashed first: each rebuilt shard's root is compared with its recorded root, which no bad
//! source can pass (see [`crate::codec::Rebuilt`]), and only when that fails are the sources proven one by one,
//! the bad ones marked and replaced. That saves hashing K shards per rebuilt segment — most of a repair's CPU.
//! The price: a source whose data is intact but whose stored Merkle nodes are damaged is not noticed here (the
//! rebuild does not read them); audits find it.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::Ordering;

use qsfs_backends::{ReadFault, ShardKey};
use qsfs_por::LostSegment;

use super::commit::{Checked, Finished, Placed};
use super::{Counters, RepairFailure, StoreView};
use crate::codec::Rebuilt;
use crate::error::{QsfsError, Result};
use crate::meta::{self, RepairItem, SegmentRecord, ShardRow, ShardState};
use crate::pace::Throttle;
use crate::volume::Volume;

/// What one segment's repair produced beyond the shared counters.
#[derive(Default)]
pub(super) struct SegmentOutcome {
    pub failures: Vec<RepairFailure>,
    pub lost: Vec<LostSegment>,
}

/// What a fetch of one shard showed.
enum Fetched {
    /// The blob as stored: proven, or (when only its shape was asked for) shaped right.
    Good(Vec<u8>),
    Bad(ShardState, String),
    Unreachable(String),
}

/// A fetched shard blob, and whether it was proven against its root or only checked for shape.
struct Held {
    blob: Vec<u8>,
    proven: bool,
}

/// A shard ready to be written: its index, name and blob, and whether it was rebuilt (or copied intact).
struct Ready {
    index: usize,
    key: ShardKey,
    blob: Vec<u8>,
    rebuilt: bool,
}

async fn fetch_one(vol: &Volume, rec: &SegmentRecord, row: &ShardRow, prove: bool) -> Fetched {
    let (Some(store), Some(loc)) = (row.store_id, &row.locator) else {
        return Fetched::Bad(ShardState::Missing, "never placed".into());
    };
    match vol.stores().fetch(store, loc, row.blob_len).await {
        Ok(blob) => match vol
            .codec()
            .shard_data(rec.id, &rec.info, row.index, &blob, prove)
        {
            Ok(_) => Fetched::Good(blob),
            Err(e) => Fetched::Bad(ShardState::Corrupt, e.to_string()),
        },
        Err(e) => match e.read_fault() {
            ReadFault::Missing => Fetched::Bad(ShardState::Missing, "absent from its store".into()),
            ReadFault::Damaged => Fetched::Bad(ShardState::Corrupt, e.to_string()),
            ReadFault::Unreachable => Fetched::Unreachable(e.to_string()),
        },
    }
}

/// One segment's repair in progress.
struct Repair<'a> {
    vol: &'a Volume,
    view: &'a StoreView,
    rec: &'a SegmentRecord,
    throttle: &'a Throttle,
    counters: &'a Counters,
    /// Queued shard indexes.
    queued: BTreeSet<usize>,
    /// Shards to write: rebuilt, or copied when they are in `held` and proven.
    wanted: BTreeSet<usize>,
    /// Fetched shards, one slot per index.
    held: Vec<Option<Held>>,
    checked: Checked,
    /// Sources are proven as fetched (after a rebuild did not match).
    eager: bool,
}

/// Repairs one segment up to its commit: returns what to commit, every shard it placed already durable.
pub(super) fn repair_segment<'v>(
    vol: &'v Volume,
    view: &StoreView,
    ino: u64,
    rec: SegmentRecord,
    items: &[RepairItem],
    throttle: &Throttle,
    counters: &Counters,
) -> Result<Finished<'v>> {
    // Shards written here are not in metadata until the segment's rows commit: gc must wait for them. The guard
    // travels with the result to the committer.
    let placing = vol.placements().begin();
    let n = rec.shards.len();
    let mut r = Repair {
        vol,
        view,
        rec: &rec,
        throttle,
        counters,
        queued: items.iter().map(|i| i.index).filter(|&i| i < n).collect(),
        wanted: BTreeSet::new(),
        held: (0..n).map(|_| None).collect(),
        checked: Checked::default(),
        eager: false,
    };
    let mut out = SegmentOutcome::default();
    let recheck = r.classify();
    r.recheck(recheck)?;
    let mut ready = Vec::new();
    if r.rebuild_list().is_empty() {
        ready = r.copies();
    } else {
        for attempt in 0.. {
            r.gather_sources()?;
            match r.rebuild(ino, &mut out)? {
                Some(Rebuilt::Mismatch(index)) if attempt == 0 && r.prove_sources(index) => {
                    // A bad source was found and dropped: fetch others, proving them this time.
                    r.eager = true;
                }
                Some(Rebuilt::Mismatch(index)) => {
                    return Err(QsfsError::CorruptSegment {
                        segment: rec.id,
                        reason: format!(
                            "rebuilt shard {index} does not match its recorded Merkle root"
                        ),
                    });
                }
                Some(Rebuilt::Shards(shards)) => {
                    ready = r.copies();
                    ready.extend(shards.into_iter().map(|s| Ready {
                        index: s.index,
                        key: s.key,
                        blob: s.blob,
                        rebuilt: true,
                    }));
                    break;
                }
                None => {
                    ready = r.copies();
                    break;
                }
            }
        }
    }
    let Repair { mut checked, .. } = r;
    checked.placed = {
        let _span = counters.place_ns.span();
        place(vol, view, &rec, ready, throttle, counters, &mut out)?
    };
    Ok(Finished {
        rec,
        checked,
        out,
        items: items.len() as u64,
        placing,
    })
}

impl Repair<'_> {
    fn reachable(&self, row: &ShardRow) -> bool {
        row.store_id
            .is_some_and(|s| self.view.reachable.contains(&s))
    }

    fn on_fit_store(&self, index: usize) -> bool {
        self.rec.shards[index]
            .store_id
            .is_some_and(|s| self.view.fit(s))
    }

    fn have(&self) -> usize {
        self.held.iter().filter(|h| h.is_some()).count()
    }

    /// Sorts the queued shards: returns those to re-check (recorded good on a reachable store — verified before
    /// anything is done to them); the rest are wanted, or waiting for their store.
    fn classify(&mut self) -> Vec<usize> {
        let mut recheck = Vec::new();
        for &i in &self.queued {
            let row = &self.rec.shards[i];
            if row.state == ShardState::Ok && self.reachable(row) {
                recheck.push(i);
            } else if row.state == ShardState::Ok
                && row.store_id.is_some_and(|s| !self.view.lost.contains(&s))
            {
                // Good as far as we know, on a store that is down but not yet lost: wait for it.
                self.checked.waiting.push((
                    i,
                    "its store is unreachable; it will be rebuilt elsewhere once the grace period ends"
                        .into(),
                ));
            } else {
                self.wanted.insert(i);
            }
        }
        recheck
    }

    /// Fetches `indexes` together (proving them when `prove`), counting the bytes read.
    fn fetch(&self, indexes: Vec<usize>, prove: bool) -> Result<Vec<(usize, Fetched)>> {
        let (vol, rec) = (self.vol, self.rec);
        let bytes: u64 = indexes.iter().map(|&i| rec.shards[i].blob_len).sum();
        vol.io().block_on(self.throttle.admit(bytes))?;
        let _span = self.counters.fetch_ns.span();
        let got = vol.io().block_on(async {
            let mut set = Vec::new();
            for i in indexes {
                set.push(async move { (i, fetch_one(vol, rec, &rec.shards[i], prove).await) });
            }
            futures_join_all(set).await
        });
        for (_, f) in &got {
            if let Fetched::Good(blob) = f {
                let read = &self.counters.bytes_read;
                read.fetch_add(blob.len() as u64, Ordering::Relaxed);
            }
        }
        Ok(got)
    }

    /// Re-check: intact ones leave the queue (or, on a drained store, get copied); bad ones are rebuilt.
    fn recheck(&mut self, indexes: Vec<usize>) -> Result<()> {
        for (i, got) in self.fetch(indexes, true)? {
            match got {
                Fetched::Good(blob) => {
                    self.held[i] = Some(Held { blob, proven: true });
                    if self.on_fit_store(i) {
                        self.checked.confirmed_ok.push(i);
                    } else {
                        self.wanted.insert(i);
                    }
                }
                Fetched::Bad(state, reason) => {
                    tracing::warn!(segment = self.rec.id, shard = i, %reason, "repair: queued shard is bad");
                    self.checked.newly_bad.push((i, state));
                    self.wanted.insert(i);
                }
                Fetched::Unreachable(reason) => self.checked.waiting.push((i, reason)),
            }
        }
        Ok(())
    }

    /// Wanted shards that must be rebuilt (not held intact to be copied).
    fn rebuild_list(&self) -> Vec<usize> {
        self.wanted
            .iter()
            .copied()
            .filter(|&i| self.held[i].is_none())
            .collect()
    }

    /// The wanted shards held intact (proven), to be copied as they are.
    fn copies(&mut self) -> Vec<Ready> {
        let indexes: Vec<usize> = self
            .wanted
            .iter()
            .copied()
            .filter(|&i| self.held[i].as_ref().is_some_and(|h| h.proven))
            .collect();
        let (codec, rec) = (self.vol.codec(), self.rec);
        indexes
            .into_iter()
            .filter_map(|i| {
                let held = self.held[i].take()?;
                Some(Ready {
                    index: i,
                    key: codec.shard_key(rec.id, i, &rec.info.roots[i]),
                    blob: held.blob,
                    rebuilt: false,
                })
            })
            .collect()
    }

    /// Fetches sources until K shards are held: good shards not themselves being repaired, data shards first
    /// (shape-checked only, unless `eager`). When those run out, shards recorded bad are tried too, proven: a mark
    /// can be stale (a store that lied on one read, a shard restored behind our back), and what counts is that K
    /// shards are good now.
    fn gather_sources(&mut self) -> Result<()> {
        let k = self.vol.config().data_shards;
        let bad: BTreeSet<usize> = self.checked.newly_bad.iter().map(|(i, _)| *i).collect();
        let mut candidates: Vec<usize> = (self.rec.shards.iter())
            .filter(|r| {
                r.state == ShardState::Ok
                    && !self.queued.contains(&r.index)
                    && self.held[r.index].is_none()
                    && !bad.contains(&r.index)
                    && self.reachable(r)
            })
            .map(|r| r.index)
            .rev()
            .collect();
        let mut fallback: Vec<usize> = (self.wanted.iter().copied())
            .filter(|&i| {
                self.held[i].is_none() && !bad.contains(&i) && self.reachable(&self.rec.shards[i])
            })
            .rev()
            .collect();
        let mut prove = self.eager;
        loop {
            let have = self.have();
            if have >= k {
                return Ok(());
            }
            if candidates.is_empty() {
                if fallback.is_empty() {
                    return Ok(());
                }
                candidates = std::mem::take(&mut fallback);
                prove = true;
            }
            let take = (k - have).min(candidates.len());
            let batch: Vec<usize> = (0..take).filter_map(|_| candidates.pop()).collect();
            for (i, got) in self.fetch(batch, prove)? {
                self.took_source(i, got, prove);
            }
        }
    }

    /// Records a fetched source. A wanted shard (recorded bad) that proves good is good again where it is, or,
    /// on a store that may not keep it, copied.
    fn took_source(&mut self, i: usize, got: Fetched, proven: bool) {
        match got {
            Fetched::Good(blob) => {
                self.held[i] = Some(Held { blob, proven });
                if self.wanted.contains(&i) && self.on_fit_store(i) {
                    self.wanted.remove(&i);
                    self.checked.restored.push(i);
                }
            }
            Fetched::Bad(state, reason) => {
                tracing::warn!(segment = self.rec.id, shard = i, %reason, "repair: source shard is bad");
                self.checked.newly_bad.push((i, state));
                self.wanted.insert(i);
            }
            Fetched::Unreachable(_) => {}
        }
    }

    /// Rebuilds the wanted shards not held from the held ones; `None` when fewer than K are held (the segment is
    /// reported lost in `out`).
    fn rebuild(&self, ino: u64, out: &mut SegmentOutcome) -> Result<Option<Rebuilt>> {
        let (k, rec, codec) = (self.vol.config().data_shards, self.rec, self.vol.codec());
        let rebuild = self.rebuild_list();
        let have = self.have();
        if have < k {
            self.report_lost(ino, &rebuild, have, out)?;
            return Ok(None);
        }
        let _span = self.counters.rebuild_ns.span();
        let mut sources = Vec::with_capacity(self.held.len());
        for (i, held) in self.held.iter().enumerate() {
            sources.push(match held {
                Some(h) => Some(codec.shard_data(rec.id, &rec.info, i, &h.blob, false)?),
                None => None,
            });
        }
        codec
            .rebuild_from(rec.id, &rec.info, &sources, &rebuild)
            .map(Some)
    }

    /// After a rebuild did not match: proves every held source not proven yet; drops and marks the bad ones (to
    /// be rebuilt as well). True when one was bad.
    fn prove_sources(&mut self, mismatch: usize) -> bool {
        let (rec, codec) = (self.rec, self.vol.codec());
        let mut found = false;
        for i in 0..self.held.len() {
            let Some(held) = self.held[i].as_mut().filter(|h| !h.proven) else {
                continue;
            };
            match codec.shard_data(rec.id, &rec.info, i, &held.blob, true) {
                Ok(_) => held.proven = true,
                Err(e) => {
                    tracing::warn!(segment = rec.id, shard = i, rebuilt = mismatch, error = %e,
                        "repair: a rebuilt shard did not match its root; this source is bad");
                    self.held[i] = None;
                    self.checked.newly_bad.push((i, ShardState::Corrupt));
                    self.wanted.insert(i);
                    found = true;
                }
            }
        }
        found
    }

    /// Fewer than K shards are good: the wanted ones fail, and the segment is reported lost with its files.
    fn report_lost(
        &self,
        ino: u64,
        rebuild: &[usize],
        have: usize,
        out: &mut SegmentOutcome,
    ) -> Result<()> {
        let (k, rec) = (self.vol.config().data_shards, self.rec);
        let good_elsewhere = (rec.shards.iter())
            .filter(|r| {
                r.state == ShardState::Ok && self.held[r.index].is_none() && !self.reachable(r)
            })
            .count() as u64;
        let files = self
            .vol
            .meta()
            .read(|c| meta::segment_paths(c, rec.id, ino))?;
        let reason = format!(
            "only {have} of the {k} shards needed verified; cannot rebuild (files: {})",
            files.join(", ")
        );
        tracing::error!(segment = rec.id, %reason, "repair: segment cannot be rebuilt");
        for &i in rebuild {
            out.failures.push(RepairFailure {
                segment: rec.id,
                index: i,
                reason: reason.clone(),
            });
        }
        out.lost.push(LostSegment {
            segment: rec.id,
            files,
            healthy_shards: have as u64,
            unreachable_shards: good_elsewhere,
            needed: k as u64,
        });
        Ok(())
    }
}

/// Writes each ready shard: to its own store when that store is fit, else to the fit store with the fewest shards
/// that holds no shard of this segment; on a failed write, the next such store.
fn place(
    vol: &Volume,
    view: &StoreView,
    rec: &SegmentRecord,
    ready: Vec<Ready>,
    throttle: &Throttle,
    counters: &Counters,
    out: &mut SegmentOutcome,
) -> Result<Vec<Placed>> {
    // Stores holding a shard of this segment that stays there: everything except lost or drained stores.
    let mut held: HashSet<u32> = rec
        .shards
        .iter()
        .filter_map(|r| r.store_id)
        .filter(|s| !view.lost.contains(s) && view.draining != Some(*s))
        .collect();
    let mut placed = Vec::new();
    for shard in ready {
        let own = rec.shards[shard.index].store_id.filter(|&s| view.fit(s));
        let mut tried: HashSet<u32> = HashSet::new();
        let mut last_error = None;
        let target = loop {
            let choice = {
                let usage = view.usage.lock().unwrap_or_else(|p| p.into_inner());
                vol.stores().repair_target(
                    own.filter(|s| !tried.contains(s)),
                    |s| view.fit(s) && !held.contains(&s) && !tried.contains(&s),
                    &usage,
                )
            };
            let Some(store) = choice else { break None };
            tried.insert(store);
            // The set may have changed since the choice (a store retired meanwhile): choose again.
            let Some(slot) = vol.stores().slot(store).cloned() else {
                continue;
            };
            vol.io().block_on(throttle.admit(shard.blob.len() as u64))?;
            match vol.io().block_on(slot.store.put(&shard.key, &shard.blob)) {
                Ok(loc) => break Some((store, loc.0)),
                Err(e) => {
                    tracing::warn!(store = %slot.uri, error = %e, "repair: write failed, trying another store");
                    last_error = Some(e.to_string());
                }
            }
        };
        match target {
            Some((store, locator)) => {
                held.insert(store);
                *view.usage.lock().unwrap_or_else(|p| p.into_inner()).entry(store).or_insert(0) += 1;
                counters.bytes_written.fetch_add(shard.blob.len() as u64, Ordering::Relaxed);
                let counter = if shard.rebuilt { &counters.rebuilt } else { &counters.copied };
                counter.fetch_add(1, Ordering::Relaxed);
                if rec.shards[shard.index].store_id != Some(store) {
                    counters.moved.fetch_add(1, Ordering::Relaxed);
                }
                placed.push(Placed {
                    index: shard.index,
                    store,
                    locator,
                });
            }
            None => out.failures.push(RepairFailure {
                segment: rec.id,
                index: shard.index,
                reason: match last_error {
                    Some(e) => format!("no store accepted the rebuilt shard: {e}"),
                    None => "no healthy store without a shard of this segment: add one (`qsfs store add URI`) \
                             or bring the lost store back"
                        .into(),
                },
            }),
        }
    }
    Ok(placed)
}

/// Awaits every future, in order (the handful of shard fetches of one segment).
async fn futures_join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs = Vec::with_capacity(pinned.len());
    // Poll them together: each fetch is I/O-bound, so they overlap on the runtime.
    let mut done: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (i, f) in pinned.iter_mut().enumerate() {
            if done[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => done[i] = Some(v),
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    for d in done {
        outputs.push(d.expect("every future completed"));
    }
    outputs
}
