//! Repairing one segment: sort its queued shards into those to re-check, copy, rebuild or leave for later; fetch
//! and verify enough good shards; rebuild; place each shard on its own store if healthy, else on a healthy store
//! holding no shard of the segment; and commit every new location in one transaction.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::Ordering;

use qsfs_backends::{ReadFault, ShardKey};
use qsfs_por::LostSegment;

use super::{Counters, RepairFailure, StoreView};
use crate::error::Result;
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
    /// Verified: the shard's data bytes and the blob as stored.
    Good(Vec<u8>, Vec<u8>),
    Bad(ShardState, String),
    Unreachable(String),
}

/// A shard ready to be written: its index, name and blob, and whether it was rebuilt (or copied intact).
struct Ready {
    index: usize,
    key: ShardKey,
    blob: Vec<u8>,
    rebuilt: bool,
}

/// A written shard awaiting its metadata commit.
struct Placed {
    index: usize,
    store: u32,
    locator: Vec<u8>,
}

async fn fetch_one(vol: &Volume, rec: &SegmentRecord, row: &ShardRow) -> Fetched {
    let (Some(store), Some(loc)) = (row.store_id, &row.locator) else {
        return Fetched::Bad(ShardState::Missing, "never placed".into());
    };
    match vol.stores().fetch(store, loc, row.blob_len).await {
        Ok(blob) => match vol
            .codec()
            .verify_shard(rec.id, &rec.info, row.index, &blob)
        {
            Ok(data) => Fetched::Good(data, blob),
            Err(e) => Fetched::Bad(ShardState::Corrupt, e.to_string()),
        },
        Err(e) => match e.read_fault() {
            ReadFault::Missing => Fetched::Bad(ShardState::Missing, "absent from its store".into()),
            ReadFault::Damaged => Fetched::Bad(ShardState::Corrupt, e.to_string()),
            ReadFault::Unreachable => Fetched::Unreachable(e.to_string()),
        },
    }
}

pub(super) fn repair_segment(
    vol: &Volume,
    view: &StoreView,
    ino: u64,
    rec: SegmentRecord,
    items: &[RepairItem],
    throttle: &Throttle,
    counters: &Counters,
) -> Result<SegmentOutcome> {
    // Shards written here are not in metadata until the segment's rows commit: gc must wait for them.
    let _placing = vol.placements().begin();
    let k = vol.config().data_shards;
    let n = rec.shards.len();
    let mut out = SegmentOutcome::default();
    let queued: BTreeSet<usize> = items.iter().map(|i| i.index).filter(|&i| i < n).collect();
    let reachable = |row: &ShardRow| row.store_id.is_some_and(|s| view.reachable.contains(&s));

    // Which queued shards need what. `recheck`: recorded good on a reachable store — verify before touching it.
    let mut recheck = Vec::new();
    let mut wanted: BTreeSet<usize> = BTreeSet::new();
    let mut waiting: Vec<(usize, String)> = Vec::new();
    for &i in &queued {
        let row = &rec.shards[i];
        let store = row.store_id;
        if row.state == ShardState::Ok && reachable(row) {
            recheck.push(i);
        } else if row.state == ShardState::Ok && store.is_some_and(|s| !view.lost.contains(&s)) {
            // Good as far as we know, on a store that is down but not yet lost: wait for it.
            waiting.push((
                i,
                "its store is unreachable; it will be rebuilt elsewhere once the grace period ends"
                    .into(),
            ));
        } else {
            wanted.insert(i);
        }
    }

    let mut verified: Vec<Option<Vec<u8>>> = vec![None; n];
    let mut blobs: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
    let mut newly_bad: Vec<(usize, ShardState)> = Vec::new();
    let mut confirmed_ok: Vec<usize> = Vec::new();

    let rec_ref = &rec;
    let fetch_all = |indexes: Vec<usize>| -> Result<Vec<(usize, Fetched)>> {
        let bytes: u64 = indexes.iter().map(|&i| rec_ref.shards[i].blob_len).sum();
        vol.io().block_on(throttle.admit(bytes))?;
        Ok(vol.io().block_on(async {
            let mut set = Vec::new();
            for i in indexes {
                set.push(async move { (i, fetch_one(vol, rec_ref, &rec_ref.shards[i]).await) });
            }
            futures_join_all(set).await
        }))
    };

    // Re-check: intact ones leave the queue (or, on a drained store, get copied); bad ones are rebuilt.
    for (i, got) in fetch_all(recheck)? {
        match got {
            Fetched::Good(data, blob) => {
                counters
                    .bytes_read
                    .fetch_add(blob.len() as u64, Ordering::Relaxed);
                verified[i] = Some(data);
                if rec.shards[i].store_id.is_some_and(|s| view.fit(s)) {
                    confirmed_ok.push(i);
                } else {
                    blobs.insert(i, blob);
                    wanted.insert(i);
                }
            }
            Fetched::Bad(state, reason) => {
                tracing::warn!(segment = rec.id, shard = i, %reason, "repair: queued shard is bad");
                newly_bad.push((i, state));
                wanted.insert(i);
            }
            Fetched::Unreachable(reason) => waiting.push((i, reason)),
        }
    }

    // Sources for a rebuild: good shards not themselves being repaired, data shards first, until K verify. When
    // those run out, shards recorded bad are tried too: a mark can be stale (a store that lied on one read, a
    // shard restored behind our back), and what counts is that K shards verify now.
    let mut restored: Vec<usize> = Vec::new();
    let need_rebuild = wanted.iter().any(|i| !blobs.contains_key(i));
    if need_rebuild {
        let tried: HashSet<usize> = queued
            .iter()
            .copied()
            .filter(|i| verified[*i].is_some())
            .collect();
        let mut candidates: Vec<usize> = rec
            .shards
            .iter()
            .filter(|r| {
                r.state == ShardState::Ok
                    && !queued.contains(&r.index)
                    && verified[r.index].is_none()
                    && reachable(r)
            })
            .map(|r| r.index)
            .collect();
        candidates.reverse();
        let mut fallback: Vec<usize> = wanted
            .iter()
            .copied()
            .filter(|i| {
                !blobs.contains_key(i)
                    && !tried.contains(i)
                    && !newly_bad.iter().any(|(b, _)| b == i)
                    && reachable(&rec.shards[*i])
            })
            .rev()
            .collect();
        loop {
            let have = verified.iter().filter(|v| v.is_some()).count();
            if have >= k {
                break;
            }
            if candidates.is_empty() {
                if fallback.is_empty() {
                    break;
                }
                candidates = std::mem::take(&mut fallback);
            }
            let take = (k - have).min(candidates.len());
            let batch: Vec<usize> = (0..take).filter_map(|_| candidates.pop()).collect();
            for (i, got) in fetch_all(batch)? {
                match got {
                    Fetched::Good(data, blob) => {
                        counters
                            .bytes_read
                            .fetch_add(blob.len() as u64, Ordering::Relaxed);
                        verified[i] = Some(data);
                        if wanted.contains(&i) {
                            // A shard recorded bad that verifies now.
                            if rec.shards[i].store_id.is_some_and(|s| view.fit(s)) {
                                wanted.remove(&i);
                                restored.push(i);
                            } else {
                                blobs.insert(i, blob);
                            }
                        }
                    }
                    Fetched::Bad(state, reason) => {
                        tracing::warn!(segment = rec.id, shard = i, %reason, "repair: source shard is bad");
                        newly_bad.push((i, state));
                        wanted.insert(i);
                    }
                    Fetched::Unreachable(_) => {}
                }
            }
        }
    }

    let rebuild: Vec<usize> = wanted
        .iter()
        .copied()
        .filter(|i| !blobs.contains_key(i))
        .collect();
    let mut ready: Vec<Ready> = blobs
        .into_iter()
        .map(|(i, blob)| Ready {
            index: i,
            key: vol.codec().shard_key(rec.id, i, &rec.info.roots[i]),
            blob,
            rebuilt: false,
        })
        .collect();
    if !rebuild.is_empty() {
        let have = verified.iter().filter(|v| v.is_some()).count();
        if have >= k {
            let shards = vol.codec().rebuild_shards(
                rec.id,
                &rec.info,
                std::mem::take(&mut verified),
                &rebuild,
            )?;
            ready.extend(shards.into_iter().map(|s| Ready {
                index: s.index,
                key: s.key,
                blob: s.blob,
                rebuilt: true,
            }));
        } else {
            let good_elsewhere = rec
                .shards
                .iter()
                .filter(|r| {
                    r.state == ShardState::Ok && verified[r.index].is_none() && !reachable(r)
                })
                .count() as u64;
            let files = vol.meta().read(|c| meta::segment_paths(c, rec.id, ino))?;
            let reason = format!(
                "only {have} of the {k} shards needed verified; cannot rebuild (files: {})",
                files.join(", ")
            );
            tracing::error!(segment = rec.id, %reason, "repair: segment cannot be rebuilt");
            for &i in &rebuild {
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
        }
    }

    let placed = place(vol, view, &rec, ready, throttle, counters, &mut out)?;
    let done = Checked {
        placed,
        newly_bad,
        confirmed_ok,
        restored,
        waiting,
    };
    commit(vol, &rec, &done, &out.failures)?;
    counters.verified_ok.fetch_add(
        (done.confirmed_ok.len() + done.restored.len()) as u64,
        Ordering::Relaxed,
    );
    for (i, reason) in done.waiting {
        out.failures.push(RepairFailure {
            segment: rec.id,
            index: i,
            reason,
        });
    }
    Ok(out)
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

/// What a segment's repair established, to be committed.
struct Checked {
    placed: Vec<Placed>,
    /// Shards found bad (missing or corrupt) while fetching.
    newly_bad: Vec<(usize, ShardState)>,
    /// Queued shards recorded good that verified: off the queue.
    confirmed_ok: Vec<usize>,
    /// Shards recorded bad that verified in place: good again, off the queue.
    restored: Vec<usize>,
    /// Queued shards left for later, with why.
    waiting: Vec<(usize, String)>,
}

/// One transaction: new bad findings, the new locations (old copies to garbage), re-checked shards off the
/// queue, and failures noted on their queue entries.
fn commit(
    vol: &Volume,
    rec: &SegmentRecord,
    done: &Checked,
    failures: &[RepairFailure],
) -> Result<()> {
    vol.meta().write(|c| {
        for &(i, state) in &done.newly_bad {
            let row = &rec.shards[i];
            if let (Some(s), Some(loc)) = (row.store_id, &row.locator) {
                meta::mark_shard_at(c, rec.id, i, s, loc, state)?;
            }
        }
        for p in &done.placed {
            let row = &rec.shards[p.index];
            let old = (row.store_id, row.locator.as_deref());
            // The new copy must not be deleted by an older garbage row naming the same place.
            meta::forget_garbage_at(c, p.store, &p.locator)?;
            if meta::replace_shard(c, rec.id, p.index, &row.root, old, p.store, &p.locator)? {
                meta::repair_done(c, rec.id, p.index)?;
                if let (Some(s), Some(loc)) = old
                    && (s != p.store || loc != p.locator.as_slice())
                {
                    meta::add_garbage_at(c, s, loc)?;
                }
            } else {
                // The segment changed under us (overwritten, deleted, or repaired by someone else): the new copy
                // is referenced by nothing.
                meta::add_garbage_at(c, p.store, &p.locator)?;
            }
        }
        for &i in &done.restored {
            let row = &rec.shards[i];
            if let (Some(s), Some(loc)) = (row.store_id, row.locator.as_deref())
                && meta::replace_shard(c, rec.id, i, &row.root, (Some(s), Some(loc)), s, loc)?
            {
                meta::repair_done(c, rec.id, i)?;
            }
        }
        for &i in &done.confirmed_ok {
            meta::repair_done(c, rec.id, i)?;
        }
        for f in failures {
            meta::repair_attempt_failed(c, rec.id, f.index, &f.reason)?;
        }
        for (i, reason) in &done.waiting {
            meta::repair_attempt_failed(c, rec.id, *i, reason)?;
        }
        Ok(())
    })
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
