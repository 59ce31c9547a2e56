//! Truncating an open file: dirty data and jobs past the new end dropped, the boundary segment cut, one commit.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::engine::{Cell, Engine, Job};
use crate::error::Result;
use crate::meta;

impl Engine {
    /// Changes the size of `cell`'s file. Growing only records the size (committed segments hold nothing past
    /// the old size, so the new range reads as zeros); shrinking drops whole segments past the end and cuts the
    /// boundary segment, re-encoding it if a committed version holds bytes past the new end.
    pub fn truncate(&self, cell: &Arc<Cell>, new_size: u64) -> Result<()> {
        let seg = self.seg;
        let _commit = cell.lock_commit();
        let now = meta::now_ns();
        let keep = new_size / seg;
        let cut = new_size % seg;
        let first_gone = new_size.div_ceil(seg);
        let mut cancelled = Vec::new();
        {
            let mut st = cell.lock();
            st.mtime_ns = now;
            st.ctime_ns = now;
            st.times_dirty = true;
            if new_size >= st.size {
                st.size = new_size;
            } else {
                let boundary_job = (cut > 0 && !st.dirty.contains_key(&keep))
                    .then(|| st.newest_job(keep).cloned())
                    .flatten();
                st.dirty.retain(|idx, _| *idx < first_gone);
                for j in &st.jobs {
                    if j.idx * seg + j.plain_len > new_size && !j.is_cancelled() {
                        j.cancelled.store(true, Ordering::Release);
                        cancelled.push(j.clone());
                    }
                }
                if cut > 0 {
                    if let Some(d) = st.dirty.get(&keep) {
                        if d.len() > cut {
                            d.truncate(cut)?;
                        }
                    } else if let Some(j) = boundary_job.filter(|j| j.is_cancelled()) {
                        // The newest bytes of the boundary were in a snapshot that is now void: keep its head.
                        let head = j.data.read_prefix(cut.min(j.plain_len))?;
                        let staged = Arc::new(self.staging.create(&head)?);
                        st.dirty.insert(keep, staged);
                    }
                }
                st.size = new_size;
            }
        }
        // The committed boundary segment may hold bytes past the new end: replace it by a cut version (placed
        // before its row commits below: gc waits for it meanwhile).
        let _placing = self.vol.placements().begin();
        let mut boundary: Option<(meta::SegmentRecord, Option<Arc<Job>>)> = None;
        if cut > 0
            && let Some(old) = self
                .vol
                .meta()
                .read(|c| meta::segment_at(c, cell.ino, keep))?
                .filter(|r| r.info.plain_len > cut)
        {
            let job = {
                let mut st = cell.lock();
                st.dirty.remove(&keep).map(|d| {
                    let j = self.new_job(keep, d, None);
                    st.jobs.push(j.clone());
                    j
                })
            };
            let bytes = match &job {
                Some(j) => j.data.read_prefix(j.plain_len),
                None => self
                    .cache
                    .get(&self.vol, &old, &format!("inode {}", cell.ino))
                    .map(|d| d[..(cut as usize).min(d.len())].to_vec()),
            };
            match bytes.and_then(|b| self.vol.encode_and_place(cell.ino, keep, &b)) {
                Ok(rec) => boundary = Some((rec, job)),
                Err(e) => {
                    if let Some(j) = job {
                        let mut st = cell.lock();
                        st.jobs.retain(|x| !Arc::ptr_eq(x, &j));
                        st.dirty.entry(keep).or_insert_with(|| j.data.clone());
                    }
                    return Err(e);
                }
            }
        }
        let (size, mtime, ctime, boundary_older) = {
            let st = cell.lock();
            // A boundary cut from the committed segment is older than any snapshot still in flight, which will
            // replace it; only a cut of the newest bytes (the dirty ones) supersedes queued rows.
            let older = match &boundary {
                Some((_, Some(j))) => st.older_rows(keep, j.version),
                _ => Vec::new(),
            };
            (st.size, st.mtime_ns, st.ctime_ns, older)
        };
        let committed = self.vol.meta().write_fast(|c| {
            meta::drop_segments_from(c, cell.ino, size.div_ceil(seg))?;
            if let Some((rec, _)) = &boundary {
                meta::put_segment(c, cell.ino, rec)?;
                for q in &boundary_older {
                    meta::dequeue(c, *q)?;
                }
            }
            for j in &cancelled {
                if let Some(q) = j.queue_id() {
                    meta::dequeue(c, q)?;
                }
            }
            meta::set_size_times(c, cell.ino, size, mtime, ctime)
        });
        let mut st = cell.lock();
        if let Err(e) = committed {
            if let Some((rec, job)) = boundary {
                if let Err(g) = self.vol.meta().write(|c| meta::add_garbage(c, &rec.shards)) {
                    // Not recorded: the shards stay on their stores as orphans, which gc finds by listing.
                    tracing::warn!(ino = cell.ino, error = %g, "unused boundary shards left for gc's orphan sweep");
                }
                if let Some(j) = job {
                    st.jobs.retain(|x| !Arc::ptr_eq(x, &j));
                    st.dirty.entry(keep).or_insert_with(|| j.data.clone());
                }
            }
            return Err(e);
        }
        st.db_size = size;
        st.unsynced = true;
        if st.mtime_ns == mtime {
            st.times_dirty = false;
        }
        if let Some((_, Some(j))) = boundary {
            st.mark_committed(keep, j.version);
            st.jobs.retain(|x| !Arc::ptr_eq(x, &j));
        }
        drop(st);
        cell.changed.notify_all();
        self.garbage_pending.store(true, Ordering::Release);
        Ok(())
    }
}
