//! Running a round's segments: this module owns the threads of a repair round — `workers` threads that each take
//! the next segment (most endangered first) and repair it up to its commit ([`super::segment`]: fetch, verify,
//! rebuild, place), and the committer ([`super::commit`]) on the calling thread, which commits what they finish
//! in batches.
//!
//! Segments are independent, so the workers overlap one segment's hashing and erasure coding with another's
//! store reads and writes (and their fsyncs), across all cores. The channel to the committer is unbounded but
//! carries only metadata (a segment's shard buffers are freed before it is sent), so a slow commit never holds
//! up the workers.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::mpsc::{self, Sender};

use super::commit::{self, CommitContext, Finished};
use super::segment::{self, SegmentOutcome};
use super::{Counters, RepairOptions, RepairProgress, StoreView};
use crate::error::{QsfsError, Result};
use crate::meta::{RepairItem, SegmentRecord};
use crate::volume::Volume;

/// A queued segment: its inode, its record as loaded, its queue entries.
pub(super) type Job = (u64, SegmentRecord, Vec<RepairItem>);

/// What every worker reads.
struct Shared<'a> {
    vol: &'a Volume,
    view: &'a StoreView,
    opts: &'a RepairOptions,
    counters: &'a Counters,
    work: Mutex<VecDeque<Job>>,
    failed: Mutex<Option<QsfsError>>,
}

impl Shared<'_> {
    fn has_failed(&self) -> bool {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

/// Repairs and commits every queued segment; returns the committed segments' outcomes, or the first error (a
/// segment that could not be worked on, a failed commit, or the round being stopped). What was committed before
/// an error stays committed.
pub(super) fn run(
    vol: &Volume,
    view: &StoreView,
    queue: VecDeque<Job>,
    opts: &RepairOptions,
    counters: &Counters,
    progress: &(dyn Fn(RepairProgress) + Sync),
    total: u64,
) -> Result<Vec<SegmentOutcome>> {
    let shared = Shared {
        vol,
        view,
        opts,
        counters,
        work: Mutex::new(queue),
        failed: Mutex::new(None),
    };
    let (tx, rx) = mpsc::channel();
    let outcomes = std::thread::scope(|scope| {
        for _ in 0..opts.workers.max(1) {
            let tx = tx.clone();
            let shared = &shared;
            scope.spawn(move || work(shared, tx));
        }
        // The committer's loop ends when the last worker hangs up.
        drop(tx);
        let ctx = CommitContext {
            counters,
            failed: &shared.failed,
            progress,
            total,
        };
        commit::run_committer(vol, &rx, &ctx)
    });
    match shared
        .failed
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
    {
        Some(e) => Err(e),
        None => Ok(outcomes),
    }
}

/// One worker: repairs segments off the shared queue and hands each to the committer, until the queue is empty,
/// the round is stopped, or something failed.
fn work<'v>(shared: &Shared<'v>, tx: Sender<Finished<'v>>) {
    let throttle = &shared.opts.throttle;
    loop {
        if throttle.stopped() || shared.has_failed() {
            return;
        }
        let next = shared
            .work
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        let Some((ino, rec, items)) = next else {
            return;
        };
        let repaired = segment::repair_segment(
            shared.vol,
            shared.view,
            ino,
            rec,
            &items,
            throttle,
            shared.counters,
        );
        match repaired {
            Ok(done) => {
                if tx.send(done).is_err() {
                    return;
                }
            }
            Err(e) => {
                shared
                    .failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(e);
                return;
            }
        }
    }
}
