//! What only a mount knows, for `qsfs status` run against a mounted volume: the upload queue, data not yet
//! sealed, the read cache, store I/O in flight, and the mount's background workers.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;

use super::engine::Engine;
use crate::error::Result;
use crate::meta;

#[derive(Clone, Debug, Serialize)]
pub struct MountStatus {
    pub upload_queue: UploadQueue,
    /// Open or recently written files with data not yet sealed into segments, and how many segments of it.
    pub dirty_files: u64,
    pub dirty_segments: u64,
    /// Segments being sealed or uploaded now.
    pub seal_jobs: u64,
    pub read_cache: ReadCacheStatus,
    /// File reads and writes waiting on the stores now.
    pub store_io_in_flight: u64,
    pub workers: Vec<WorkerStatus>,
}

#[derive(Clone, Debug, Serialize)]
pub struct UploadQueue {
    pub segments: u64,
    pub bytes: u64,
    /// Age of the oldest queued segment.
    pub oldest_secs: Option<f64>,
    /// Queued segments waiting to retry an upload that failed.
    pub retrying: u64,
    /// `--upload-lag`: the longest a closed small file waits for others to share its pack (None: the default,
    /// until closes pause for 20 ms, at most 500 ms).
    pub upload_lag_secs: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReadCacheStatus {
    pub bytes: u64,
    pub capacity: u64,
    pub hits: u64,
    pub misses: u64,
}

pub use crate::workers::WorkerStatus;

/// Reads the mount's state now.
pub(crate) fn mount_status(eng: &Arc<Engine>, workers: &[WorkerStatus]) -> Result<MountStatus> {
    let (segments, bytes, oldest) = eng.vol.meta().read(meta::queue_summary)?;
    let now = meta::now_ns();
    let (mut dirty_files, mut dirty_segments) = (0, 0);
    for cell in eng.all_cells() {
        let st = cell.lock();
        if !st.dirty.is_empty() {
            dirty_files += 1;
            dirty_segments += st.dirty.len() as u64;
        }
    }
    let (cache_bytes, capacity, hits, misses) = eng.cache.usage();
    let retrying = eng.retrying_uploads() as u64;
    let seal_jobs = eng.jobs_in_flight() as u64;
    let seal_workers = eng.seal_workers.load(Ordering::Acquire);
    // The seal/upload workers share one channel: listed as one line.
    let pool = eng.seal_pool.list();
    let busy = pool.iter().filter(|w| w.state == "busy").count();
    let mut all = vec![WorkerStatus {
        name: "seal/upload".into(),
        state: if busy > 0 { "busy" } else { "idle" }.into(),
        status: format!(
            "{seal_workers} workers ({busy} busy), {seal_jobs} segments in progress, {segments} queued, {retrying} retrying"
        ),
    }];
    all.extend_from_slice(workers);
    Ok(MountStatus {
        upload_queue: UploadQueue {
            segments,
            bytes,
            oldest_secs: oldest.map(|t| (now - t).max(0) as f64 / 1e9),
            retrying,
            upload_lag_secs: eng.upload_lag().map(|lag| lag.as_secs_f64()),
        },
        dirty_files,
        dirty_segments,
        seal_jobs,
        read_cache: ReadCacheStatus {
            bytes: cache_bytes,
            capacity,
            hits,
            misses,
        },
        store_io_in_flight: eng.vol.foreground().in_flight() as u64,
        workers: all,
    })
}
