//! The mount's read cache: decoded segment plaintext, least recently used first out, capped in bytes
//! (`--cache-size`). Keyed by segment id, which is never reused for other bytes (a sealed segment is immutable,
//! invariant 2), so an entry can never be stale. Concurrent readers of one segment share one fetch, and
//! `prefetch` lets sequential readers keep the next segments in flight (readahead) on a few background threads.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};

use crate::error::Result;
use crate::meta::SegmentRecord;
use crate::volume::Volume;

/// Background threads that run readahead fetches.
const PREFETCH_THREADS: usize = 4;

struct Lru {
    entries: HashMap<u64, (Arc<Vec<u8>>, u64)>,
    order: BTreeMap<u64, u64>,
    tick: u64,
    bytes: u64,
    /// Segments being fetched right now; waiters park on `fetched`.
    pending: HashSet<u64>,
}

pub struct ReadCache {
    cap: u64,
    /// Reads served from the cache, and reads that had to fetch (for `status`).
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
    lru: Mutex<Lru>,
    fetched: Condvar,
    prefetch_tx: Mutex<Option<mpsc::Sender<SegmentRecord>>>,
}

impl ReadCache {
    pub fn new(cap: u64) -> Arc<ReadCache> {
        Arc::new(ReadCache {
            cap,
            hits: Default::default(),
            misses: Default::default(),
            lru: Mutex::new(Lru {
                entries: HashMap::new(),
                order: BTreeMap::new(),
                tick: 0,
                bytes: 0,
                pending: HashSet::new(),
            }),
            fetched: Condvar::new(),
            prefetch_tx: Mutex::new(None),
        })
    }

    /// Starts the readahead threads. They hold the volume until `stop_prefetch`.
    pub fn start_prefetch(self: &Arc<Self>, vol: Arc<Volume>) {
        let (tx, rx) = mpsc::channel::<SegmentRecord>();
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for i in 0..PREFETCH_THREADS {
            let (cache, vol, rx) = (self.clone(), vol.clone(), rx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("qsfs-readahead-{i}"))
                .spawn(move || {
                    loop {
                        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok(rec) = next else { break };
                        if let Err(e) = cache.get(&vol, &rec, "readahead") {
                            tracing::debug!(segment = rec.id, error = %e, "readahead failed");
                        }
                    }
                });
            match spawned {
                Ok(_) => started += 1,
                Err(e) => tracing::warn!(error = %e, "a readahead thread did not start"),
            }
        }
        // Without a thread, nothing would read the queue: reads then just fetch on demand.
        if started > 0 {
            *self.prefetch_tx.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        }
    }

    pub fn stop_prefetch(&self) {
        self.prefetch_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn contains(&self, id: u64) -> bool {
        let l = self.lock();
        l.entries.contains_key(&id) || l.pending.contains(&id)
    }

    /// Queues `rec` for a background fetch unless it is cached or already on its way.
    pub fn prefetch(&self, rec: SegmentRecord) {
        if self.contains(rec.id) {
            return;
        }
        if let Some(tx) = self
            .prefetch_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = tx.send(rec);
        }
    }

    /// (bytes held, capacity, hits, misses) so far.
    pub fn usage(&self) -> (u64, u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let bytes = self.lock().bytes;
        (
            bytes,
            self.cap,
            self.hits.load(Relaxed),
            self.misses.load(Relaxed),
        )
    }

    /// The plaintext of segment `rec`, from the cache or fetched (and verified, decoded) from the stores.
    pub fn get(&self, vol: &Volume, rec: &SegmentRecord, name: &str) -> Result<Arc<Vec<u8>>> {
        {
            let mut l = self.lock();
            loop {
                if let Some(data) = touch(&mut l, rec.id) {
                    self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Ok(data);
                }
                if l.pending.insert(rec.id) {
                    self.misses
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    break;
                }
                l = self.fetched.wait(l).unwrap_or_else(|p| p.into_inner());
            }
        }
        let res = vol.read_segment(rec, name).map(Arc::new);
        let mut l = self.lock();
        l.pending.remove(&rec.id);
        if let Ok(data) = &res {
            self.insert(&mut l, rec.id, data.clone());
        }
        drop(l);
        // Waiters of a failed fetch try themselves: the error is theirs to report.
        self.fetched.notify_all();
        res
    }

    fn insert(&self, l: &mut Lru, id: u64, data: Arc<Vec<u8>>) {
        let size = data.len() as u64;
        if size > self.cap {
            return;
        }
        l.tick += 1;
        let tick = l.tick;
        if let Some((old, old_tick)) = l.entries.insert(id, (data, tick)) {
            l.order.remove(&old_tick);
            l.bytes -= old.len() as u64;
        }
        l.order.insert(tick, id);
        l.bytes += size;
        while l.bytes > self.cap {
            let Some((_, victim)) = l.order.pop_first() else {
                break;
            };
            if let Some((d, _)) = l.entries.remove(&victim) {
                l.bytes -= d.len() as u64;
            }
        }
    }
}

fn touch(l: &mut Lru, id: u64) -> Option<Arc<Vec<u8>>> {
    let (data, old_tick) = l.entries.get(&id).map(|(d, t)| (d.clone(), *t))?;
    l.tick += 1;
    let tick = l.tick;
    l.order.remove(&old_tick);
    l.order.insert(tick, id);
    if let Some(e) = l.entries.get_mut(&id) {
        e.1 = tick;
    }
    Some(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_within_the_cap() {
        let cache = ReadCache::new(300);
        let mut l = cache.lock();
        cache.insert(&mut l, 1, Arc::new(vec![0; 100]));
        cache.insert(&mut l, 2, Arc::new(vec![0; 100]));
        cache.insert(&mut l, 3, Arc::new(vec![0; 100]));
        assert!(touch(&mut l, 1).is_some());
        cache.insert(&mut l, 4, Arc::new(vec![0; 100]));
        assert!(l.entries.contains_key(&1));
        assert!(!l.entries.contains_key(&2), "2 was the least recently used");
        assert_eq!(l.bytes, 300);
        cache.insert(&mut l, 5, Arc::new(vec![0; 1000]));
        assert!(
            !l.entries.contains_key(&5),
            "larger than the whole cache: not kept"
        );
    }
}
