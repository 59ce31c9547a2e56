//! Recording a placed segment snapshot in metadata, in three steps shared by a lone segment's commit (`seal`) and
//! a pack's (`pack`): what the file's state says about the job before the transaction (`CommitView::of`), the
//! rows inside it (`CommitView::apply`), and the file's state after it (`Engine::after_commit`).
//!
//! The caller holds the cell's commit lock from `of` through `after_commit`, so segment versions of one file land
//! in order.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rusqlite::Connection;

use super::engine::{Cell, Engine, Job};
use crate::error::Result;
use crate::meta::{self, SegmentRecord};

/// What the cell said about a job just before its commit.
pub(super) struct CommitView {
    /// Cancelled by a truncate or unlink, or a newer version of its segment already committed.
    stale: bool,
    db_size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    /// Queue rows of older snapshots of the same segment, deleted with this commit.
    older: Vec<i64>,
}

/// What the transaction did with one job.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct CommitOutcome {
    /// The segment row was written (the job was live).
    pub applied: bool,
    /// Its queue row kept its plaintext inline.
    pub inline: bool,
}

impl CommitView {
    pub fn of(cell: &Cell, job: &Job, seg: u64) -> CommitView {
        let st = cell.lock();
        let stale = job.is_cancelled()
            || st
                .committed
                .get(&job.idx)
                .is_some_and(|v| *v >= job.version);
        let end = job.idx * seg + job.plain_len;
        CommitView {
            stale,
            db_size: st.db_size.max(end),
            mtime_ns: st.mtime_ns,
            ctime_ns: st.ctime_ns,
            older: st.older_rows(job.idx, job.version),
        }
    }

    /// Inside the commit's transaction: dequeues the job's row and, if the job is live, records `rec` as its
    /// segment (with the file's size and times). A dead job's shards are the caller's to turn into garbage.
    pub fn apply(
        &self,
        c: &Connection,
        ino: u64,
        job: &Job,
        rec: &SegmentRecord,
    ) -> Result<CommitOutcome> {
        let mut outcome = CommitOutcome::default();
        let live = match job.queue_id() {
            Some(q) => {
                outcome.inline = meta::is_inline(c, q)?;
                meta::dequeue(c, q)? && !self.stale
            }
            None => !self.stale,
        };
        if !live {
            return Ok(outcome);
        }
        meta::put_segment(c, ino, rec)?;
        for q in &self.older {
            meta::dequeue(c, *q)?;
        }
        meta::set_size_times(c, ino, self.db_size, self.mtime_ns, self.ctime_ns)?;
        outcome.applied = true;
        Ok(outcome)
    }
}

impl Engine {
    /// After the commit's transaction: the cell learns what committed, the job's local copy goes, and the job
    /// finishes.
    pub(super) fn after_commit(
        &self,
        cell: &Cell,
        job: &Arc<Job>,
        view: &CommitView,
        outcome: CommitOutcome,
    ) {
        if outcome.applied {
            let mut st = cell.lock();
            st.mark_committed(job.idx, job.version);
            st.db_size = st.db_size.max(view.db_size);
            st.unsynced = true;
            // `times_dirty` stays set even when the row got the cell's current times: a setattr may have
            // committed newer times between this job's read of the cell and its commit, and only the flush's
            // own commit of the cell's times puts them back.
        }
        if job.queue_id().is_some() {
            job.data.remove();
        }
        if outcome.inline {
            self.vol.meta().note_inline_uploaded();
        }
        self.garbage_pending.store(true, Ordering::Release);
        self.finish_job(cell, job, None, false);
    }
}
