//! Packing at upload: queued small segments — the bodies of small files and the tails of larger ones, closed
//! close together — are sealed together as one pack segment (`volume::packs`): one set of K+M shard writes and
//! one metadata commit for many files, instead of one of each per file.
//!
//! A seal worker that takes a packable job from the shared channel also takes the packable jobs queued behind it
//! and those arriving while it gathers — until a segment's worth of bytes, a pause of [`PACK_GAP`] or
//! [`PACK_LINGER`] in all. With `--upload-lag` set, pauses do not end the gathering: it lasts until a segment's
//! worth, the lag, an fsync waiting for one of its files, a job that is not packable (a large segment), or the
//! unmount's drain. Jobs that do not go into the pack (not packable, or no room left) are the worker's
//! next ones: sealed alone, or the start of the next pack. A pack that fails to upload or
//! commit sends each of its jobs to the usual retry (they are packed again when they come back).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::commit::{CommitOutcome, CommitView};
use super::engine::{Cell, Engine, Job, SealRequest};
use crate::codec::SegmentInfo;
use crate::error::Result;
use crate::meta::{self, PackSlice, SegmentRecord};

/// A pack smaller than a segment is sealed once no packable job arrived for this long (the writer paused, or
/// waits in fsync for this very upload)...
const PACK_GAP: Duration = Duration::from_millis(20);
/// ...or once it has been gathering this long: the most a close's upload waits for neighbours.
const PACK_LINGER: Duration = Duration::from_millis(500);
/// Jobs in one pack at most (bounds the pack's metadata transaction).
const PACK_MAX_JOBS: usize = 2048;

impl Engine {
    /// Whether `job` may go into a pack: a queued (closed, durable locally) segment of at most a quarter segment.
    /// Larger ones gain little from sharing and would make reading a packed neighbour fetch too much.
    pub(super) fn packable(&self, job: &Job) -> bool {
        job.queue_id().is_some() && job.plain_len <= self.seg / 4 && !job.is_cancelled()
    }

    /// Takes the packable jobs queued behind `first` from `rx`: returns the pack's jobs and the other jobs
    /// received meanwhile.
    pub(super) fn gather_pack(
        &self,
        first: SealRequest,
        rx: &mpsc::Receiver<SealRequest>,
    ) -> (Vec<SealRequest>, Vec<SealRequest>) {
        let mut bytes = first.1.plain_len;
        let (mut pack, mut others) = (vec![first], Vec::new());
        let lag = self.upload_lag();
        let deadline = Instant::now() + lag.unwrap_or(PACK_LINGER);
        while bytes < self.seg && pack.len() < PACK_MAX_JOBS {
            if lag.is_some() && self.pack_wanted_now(&pack) {
                break;
            }
            let next = match rx.try_recv() {
                Ok(r) => r,
                Err(mpsc::TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match rx.recv_timeout(left.min(PACK_GAP)) {
                        Ok(r) => r,
                        // With a lag, a pause only means looking again (for an fsync or the drain).
                        Err(mpsc::RecvTimeoutError::Timeout) if lag.is_some() => continue,
                        Err(_) => break,
                    }
                }
                Err(mpsc::TryRecvError::Disconnected) => break,
            };
            if self.packable(&next.1) && bytes + next.1.plain_len <= self.seg {
                bytes += next.1.plain_len;
                pack.push(next);
            } else {
                others.push(next);
                // A job that does not fit waits for its turn after this pack rather than start one of its own.
                // Under a lag, any other job ends the gathering too: this worker holds the channel, and a large
                // segment's seal (or an fsync behind it) must not wait for the lag.
                if lag.is_some() || self.packable(&others[others.len() - 1].1) {
                    break;
                }
            }
        }
        (pack, others)
    }

    /// `--upload-lag`: closed small files wait up to `lag` for others to fill their pack.
    pub fn set_upload_lag(&self, lag: Duration) {
        self.upload_lag_ms
            .store(lag.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    /// The `--upload-lag` in force (None: the default gathering).
    pub fn upload_lag(&self) -> Option<Duration> {
        match self.upload_lag_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Whether a pack being gathered must upload now: an fsync waits for one of its jobs, or the mount drains.
    fn pack_wanted_now(&self, pack: &[SealRequest]) -> bool {
        self.draining.load(Ordering::Acquire)
            || pack.iter().any(|(_, j)| j.wanted.load(Ordering::Acquire))
    }

    /// Seals `jobs` as one pack (also a lone one: every small queued segment is stored the same way, and a pack of
    /// one costs no more than a segment of its own).
    pub(super) fn run_pack(&self, jobs: Vec<SealRequest>) {
        let live: Vec<SealRequest> = jobs
            .into_iter()
            .filter(|(cell, job)| !self.drop_if_cancelled(cell, job))
            .collect();
        if live.is_empty() {
            return;
        }
        let mut data = Vec::new();
        let mut offsets = Vec::with_capacity(live.len());
        for (_, job) in &live {
            match job.data.read_prefix(job.plain_len) {
                Ok(bytes) => {
                    offsets.push(data.len() as u64);
                    data.extend_from_slice(&bytes);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a queued segment's local copy is unreadable; sealing alone");
                    for (cell, job) in &live {
                        self.run_job(cell, job);
                    }
                    return;
                }
            }
        }
        // Until the rows commit, gc must not take the placed shards for orphans.
        let placing = self.vol.placements().begin();
        let committed = self
            .vol
            .encode_and_place_pack(&data)
            .and_then(|rec| self.commit_pack(&live, &offsets, rec));
        drop(placing);
        match committed {
            Ok(()) => {
                for (cell, _) in &live {
                    self.maybe_evict(cell.ino);
                }
            }
            Err(e) => {
                for (cell, job) in &live {
                    self.seal_failed(cell, job, &e);
                }
            }
        }
    }

    /// Records the pack and, in the same transaction, each live job's segment as a slice of it. A pack none of
    /// whose jobs is live any more is dropped in that transaction (its shards become garbage).
    fn commit_pack(
        &self,
        jobs: &[SealRequest],
        offsets: &[u64],
        pack: SegmentRecord,
    ) -> Result<()> {
        // Every file's commit lock, in inode order (the engine's lock order; a file may have several jobs here).
        let mut cells: Vec<&Arc<Cell>> = jobs.iter().map(|(c, _)| c).collect();
        cells.sort_by_key(|c| c.ino);
        cells.dedup_by_key(|c| c.ino);
        let _commits: Vec<_> = cells.iter().map(|c| c.lock_commit()).collect();
        let views: Vec<CommitView> = jobs
            .iter()
            .map(|(cell, job)| CommitView::of(cell, job, self.seg))
            .collect();
        let outcomes = self.vol.meta().write_fast(|c| {
            meta::put_pack(c, &pack)?;
            let mut outcomes = Vec::with_capacity(jobs.len());
            for (((cell, job), view), off) in jobs.iter().zip(&views).zip(offsets) {
                let member = member_record(&pack, cell.ino, job, *off);
                outcomes.push(view.apply(c, cell.ino, job, &member)?);
            }
            if !outcomes.iter().any(|o: &CommitOutcome| o.applied) {
                meta::drop_packs_if_dead(c, &[pack.id])?;
            }
            Ok(outcomes)
        })?;
        for (((cell, job), view), outcome) in jobs.iter().zip(&views).zip(outcomes) {
            self.after_commit(cell, job, view, outcome);
        }
        Ok(())
    }
}

/// The segment row of `job`'s bytes at `offset` of `pack`.
fn member_record(pack: &SegmentRecord, ino: u64, job: &Job, offset: u64) -> SegmentRecord {
    SegmentRecord {
        id: meta::new_segment_id(),
        ino,
        index: job.idx,
        info: SegmentInfo {
            plain_len: job.plain_len,
            stored_len: 0,
            shard_len: 0,
            nonce: [0; 24],
            flags: 0,
            roots: Vec::new(),
        },
        shards: Vec::new(),
        pack: Some(PackSlice {
            offset,
            record: Box::new(pack.clone()),
        }),
    }
}
