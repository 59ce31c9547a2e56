//! Committing repaired segments: this module owns the metadata side of a repair — the transaction that records
//! what one segment's repair established (new shard locations, bad copies to garbage, queue entries done or
//! failed) — and the group commit that folds many segments into one such transaction.
//!
//! Ordering rules it keeps: a segment reaches the committer only after every shard it placed is durable on its
//! store (the store's `put` returned), so a committed location always names a shard that is there; the bad copies
//! it replaced only become garbage rows here, and are deleted after the commit (by the round's `collect_garbage`).
//! Each finished segment carries its [`Placing`] guard until its rows are committed (or the commit failed), so
//! `gc` never takes a shard written but not yet committed for an orphan.
//!
//! Batching: the committer takes every segment finished by the time it is free (up to [`MAX_BATCH`]) and commits
//! them together. While one commit waits for its fsync, the workers finish more segments, so the number of
//! commits adapts to how slow fsync is: on an idle disk nearly one per segment, on a busy one many segments share
//! one. A batch is all or nothing: interrupted (kill -9) before its commit, its shards are unreferenced copies
//! that the next round writes again under the same names (or `gc` removes), and its queue entries are still there.

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;

use rusqlite::Connection;

use super::segment::SegmentOutcome;
use super::{Counters, RepairFailure, RepairProgress};
use crate::error::{QsfsError, Result};
use crate::meta::{self, SegmentRecord, ShardState};
use crate::volume::Volume;
use crate::volume::placements::Placing;

/// Segments committed in one transaction at most: keeps a transaction (and its metadata-log record) bounded.
pub(super) const MAX_BATCH: usize = 128;

/// A written shard awaiting its metadata commit.
pub(super) struct Placed {
    pub index: usize,
    pub store: u32,
    pub locator: Vec<u8>,
}

/// What a segment's repair established, to be committed.
#[derive(Default)]
pub(super) struct Checked {
    pub placed: Vec<Placed>,
    /// Shards found bad (missing or corrupt) while fetching.
    pub newly_bad: Vec<(usize, ShardState)>,
    /// Queued shards recorded good that verified: off the queue.
    pub confirmed_ok: Vec<usize>,
    /// Shards recorded bad that verified in place: good again, off the queue.
    pub restored: Vec<usize>,
    /// Queued shards left for later, with why.
    pub waiting: Vec<(usize, String)>,
}

/// One segment's repair, its shards durably placed, waiting for its commit.
pub(super) struct Finished<'v> {
    pub rec: SegmentRecord,
    pub checked: Checked,
    pub out: SegmentOutcome,
    /// Queue entries this segment accounted for (for progress).
    pub items: u64,
    /// Keeps `gc` off the shards placed until their rows are committed; dropped after the commit.
    pub placing: Placing<'v>,
}

/// What the committer shares with the workers and reports to the caller.
pub(super) struct CommitContext<'a> {
    pub counters: &'a Counters,
    pub failed: &'a Mutex<Option<QsfsError>>,
    pub progress: &'a (dyn Fn(RepairProgress) + Sync),
    pub total: u64,
}

/// Commits finished segments as they arrive until every worker has hung up, batching whatever is waiting; returns
/// the outcomes of the committed segments. After a failed commit it commits nothing more (the error is in
/// `ctx.failed`, which stops the workers): the segments not committed are redone by a later round.
pub(super) fn run_committer(
    vol: &Volume,
    rx: &Receiver<Finished<'_>>,
    ctx: &CommitContext<'_>,
) -> Vec<SegmentOutcome> {
    let mut outcomes = Vec::new();
    let mut broken = false;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        if broken {
            continue;
        }
        let started = std::time::Instant::now();
        if let Err(e) = commit_batch(vol, &batch) {
            broken = true;
            ctx.failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(e);
            continue;
        }
        tracing::debug!(segments = batch.len(), elapsed = ?started.elapsed(), "repair: batch committed");
        for done in batch {
            outcomes.push(settle(done, ctx));
        }
    }
    outcomes
}

/// After its commit: counts a segment's re-checked shards, turns its waiting shards into failures for the report
/// and reports progress; the segment's placement guard ends here.
fn settle(done: Finished<'_>, ctx: &CommitContext<'_>) -> SegmentOutcome {
    let Finished {
        rec,
        checked,
        mut out,
        items,
        placing,
    } = done;
    drop(placing);
    let c = ctx.counters;
    c.verified_ok.fetch_add(
        (checked.confirmed_ok.len() + checked.restored.len()) as u64,
        Ordering::Relaxed,
    );
    for (index, reason) in checked.waiting {
        out.failures.push(RepairFailure {
            segment: rec.id,
            index,
            reason,
        });
    }
    let done = c.done.fetch_add(items, Ordering::Relaxed) + items;
    (ctx.progress)(RepairProgress {
        done,
        total: ctx.total,
        bytes_written: c.bytes_written.load(Ordering::Relaxed),
    });
    out
}

/// One transaction for the whole batch: each segment's rows exactly as if it were committed alone.
fn commit_batch(vol: &Volume, batch: &[Finished<'_>]) -> Result<()> {
    vol.meta().write(|c| {
        for f in batch {
            commit_segment(c, &f.rec, &f.checked, &f.out.failures)?;
        }
        Ok(())
    })
}

/// One segment's rows: new bad findings, the new locations (old copies to garbage), re-checked shards off the
/// queue, and failures noted on their queue entries.
fn commit_segment(
    c: &Connection,
    rec: &SegmentRecord,
    done: &Checked,
    failures: &[RepairFailure],
) -> Result<()> {
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
}
