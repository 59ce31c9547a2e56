//! Moving one segment between plaintext and the stores: encode + place (write), fetch + verify + decode (read),
//! and deleting garbage shards after the transaction that dropped them has committed.

use std::sync::Arc;
use std::time::Instant;

use qsfs_backends::{ReadFault, StoreError};
use tokio::task::JoinSet;

use super::Volume;
use crate::codec::{SegmentCodec, SegmentPlace};
use crate::error::{QsfsError, Result};
use crate::meta::{self, SegmentRecord, ShardRow, ShardState};
use crate::store_set::StoreSet;

/// How many garbage shards one `collect_garbage` round deletes at most.
const GC_BATCH: usize = 512;

impl Volume {
    /// Encodes `data` as segment `index` of some file and places its shards. Nothing is committed: the caller
    /// records the returned `SegmentRecord` in its own metadata transaction (invariant 1: metadata only ever points
    /// at shards that were durable when it committed).
    pub fn encode_and_place(&self, ino: u64, index: u64, data: &[u8]) -> Result<SegmentRecord> {
        self.encode_and_place_as(meta::new_segment_id(), ino, index, data)
    }

    /// `encode_and_place` under a chosen segment id (a pack's index is its id).
    pub(super) fn encode_and_place_as(
        &self,
        id: u64,
        ino: u64,
        index: u64,
        data: &[u8],
    ) -> Result<SegmentRecord> {
        // A read-only copy writes no shard (it could not commit one anyway).
        self.check_writer()?;
        let _busy = self.foreground.enter();
        let encoded = self
            .codec
            .encode_at(id, Some(SegmentPlace { ino, index }), data)?;
        let info = encoded.info.clone();
        let shards = self.rt.block_on(self.stores().place(
            id,
            encoded.shards,
            self.config().write_quorum,
        ))?;
        Ok(SegmentRecord {
            id,
            ino,
            index,
            info,
            shards,
            pack: None,
        })
    }

    /// Reads one segment back: data shards first, a parity shard for each one that is missing, unreachable or
    /// corrupt; every shard verified against its Merkle root before use. Bad shards are recorded in metadata so
    /// status shows them and repair can find them (recording a shard bad queues it for repair, by trigger, in
    /// the same transaction). `name` names the file in errors.
    ///
    /// The first attempt skips hashing each shard against its Merkle root: the AEAD tag over the whole segment
    /// authenticates whatever shards the decode used, so a bad shard can only make it fail, never pass. Only then
    /// is the segment read again with every shard hashed, which finds and records the bad one and decodes
    /// around it. (Hashing was a sixth of a cold read's CPU time.)
    pub fn read_segment(&self, rec: &SegmentRecord, name: &str) -> Result<Vec<u8>> {
        if let Some(slice) = &rec.pack {
            return self.read_packed(rec, slice, name);
        }
        let _busy = self.foreground.enter();
        match self.read_segment_once(rec, name, false) {
            Ok(plain) => Ok(plain),
            Err(e @ QsfsError::Unreadable { .. }) => Err(e),
            Err(e) => {
                tracing::debug!(segment = rec.id, error = %e, "a segment did not decode; reading it again, hashing every shard");
                self.read_segment_once(rec, name, true)
            }
        }
    }

    fn read_segment_once(&self, rec: &SegmentRecord, name: &str, hashed: bool) -> Result<Vec<u8>> {
        let k = self.config().data_shards;
        let (shards, bad) =
            self.rt
                .block_on(fetch_verified(&self.stores(), &self.codec, rec, k, hashed));
        if !bad.is_empty() {
            let recorded = self.meta.write(|c| {
                for (index, state) in &bad {
                    // Guarded by the location read from: a repair may have moved the shard since `rec` was
                    // loaded, and the new copy must not be blamed for the old one.
                    let row = rec.shards.iter().find(|r| r.index == *index);
                    if let Some((Some(store), Some(loc))) = row.map(|r| (r.store_id, &r.locator)) {
                        meta::mark_shard_at(c, rec.id, *index, store, loc, *state)?;
                    }
                }
                Ok(())
            });
            match recorded {
                // A read-only copy cannot record what it found; the writer's reads and audits will.
                Ok(()) | Err(QsfsError::ReadOnly(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let available = shards.iter().filter(|s| s.is_some()).count();
        if available < k {
            return Err(QsfsError::Unreadable {
                path: name.to_string(),
                segment: rec.id,
                available,
                needed: k,
            });
        }
        let place = SegmentPlace {
            ino: rec.ino,
            index: rec.index,
        };
        self.codec.decode_at(rec.id, Some(place), &rec.info, shards)
    }

    /// Deletes garbage shards from their stores (those on reachable stores) and forgets them. Returns how many
    /// were deleted. Safe to call at any time: garbage rows exist only for shards no committed row references.
    pub fn collect_garbage(&self) -> Result<usize> {
        // A shard is deleted only once the transaction that dropped it is in the stores' metadata log: a restore
        // must never find metadata pointing at a shard already deleted.
        self.replicate_metadata()?;
        let mut deleted = 0;
        loop {
            let batch = self.meta.read(|c| meta::garbage_batch(c, GC_BATCH))?;
            if batch.is_empty() {
                return Ok(deleted);
            }
            // Only the writer deletes: re-read the lease before each batch (a copy taken over since it last
            // looked must not delete shards the new writer may still reference).
            self.recheck_lease()?;
            let done: Vec<i64> = self.rt.block_on(async {
                let mut tasks = JoinSet::new();
                for g in batch {
                    let stores = self.stores();
                    tasks.spawn(async move { (g.id, stores.delete(g.store_id, &g.locator).await) });
                }
                let mut done = Vec::new();
                while let Some(Ok((id, res))) = tasks.join_next().await {
                    match res {
                        Ok(()) | Err(StoreError::NotFound { .. }) => done.push(id),
                        // A down store keeps its garbage until it is back.
                        Err(e) if e.is_retryable() => {}
                        Err(e) => tracing::warn!(error = %e, "garbage shard not deleted; will retry later"),
                    }
                }
                done
            });
            if done.is_empty() {
                return Ok(deleted);
            }
            deleted += done.len();
            self.count_reclaimed(done.len() as u64);
            self.meta.write(|c| meta::garbage_done(c, &done))?;
        }
    }
}

/// Fetches shards until `k` have verified (`hashed`: against their Merkle roots; otherwise only their headers),
/// starting with the data shards; returns the verified shard data (by index) and the shards found missing or
/// corrupt.
///
/// Hedged: a fetch slower than its store's recent latency allows (`StoreSlot::hedge_after`) does not hold the read
/// up. Another candidate (a parity shard on another store) is fetched alongside, and whichever `k` verified shards
/// arrive first are used; the slow fetches still in flight are then dropped. A stalled store costs one hedge delay
/// (tens of milliseconds), not its timeout times its retries.
async fn fetch_verified(
    stores: &Arc<StoreSet>,
    codec: &Arc<SegmentCodec>,
    rec: &SegmentRecord,
    k: usize,
    hashed: bool,
) -> (Vec<Option<Vec<u8>>>, Vec<(usize, ShardState)>) {
    stores.revive_due().await;
    let mut candidates: Vec<&ShardRow> = rec
        .shards
        .iter()
        .filter(|s| s.state == ShardState::Ok && s.store_id.is_some() && s.locator.is_some())
        .filter(|s| {
            stores
                .slot(s.store_id.unwrap_or(u32::MAX))
                .is_some_and(|slot| slot.is_readable())
        })
        .collect();
    // Data shards first (no decoding needed when they all arrive), then parity.
    candidates.sort_by_key(|s| s.index);
    let mut reads = Reads::new(stores, rec.shards.len(), candidates.into_iter());
    for _ in 0..k {
        reads.spawn_next();
    }
    let mut good = 0;
    while let Some((index, res)) = reads.next_result().await {
        let ok = match res {
            Ok(blob) => match if hashed {
                codec.verify_shard(rec.id, &rec.info, index, &blob)
            } else {
                codec.shard_data_unhashed(rec.id, &rec.info, index, &blob)
            } {
                Ok(data) => {
                    reads.verified[index] = Some(data);
                    true
                }
                Err(e) => {
                    tracing::warn!(segment = rec.id, shard = index, error = %e, "corrupt shard ignored");
                    reads.bad.push((index, ShardState::Corrupt));
                    false
                }
            },
            Err(e) => {
                match e.read_fault() {
                    ReadFault::Missing => reads.bad.push((index, ShardState::Missing)),
                    // Oversized, truncated, unreadable, or no shard at all: the copy on the store is bad.
                    ReadFault::Damaged => reads.bad.push((index, ShardState::Corrupt)),
                    // Unreachable stores are not the shard's fault: nothing is recorded against the shard.
                    ReadFault::Unreachable => {}
                }
                tracing::warn!(segment = rec.id, shard = index, error = %e, "shard unreadable");
                false
            }
        };
        if ok {
            good += 1;
            if good == k {
                break;
            }
        } else {
            reads.spawn_next();
        }
    }
    reads.in_flight.abort_all();
    (reads.verified, reads.bad)
}

type FetchResult = (usize, Result<Vec<u8>, StoreError>);

/// The shard fetches of one segment read: those in flight with the time each may take before it is hedged, and
/// the candidates not yet asked.
struct Reads<'a, I: Iterator<Item = &'a ShardRow>> {
    stores: &'a Arc<StoreSet>,
    queue: I,
    in_flight: JoinSet<FetchResult>,
    /// (shard index, when it counts as slow) of fetches in flight not yet hedged.
    deadlines: Vec<(usize, Instant)>,
    verified: Vec<Option<Vec<u8>>>,
    bad: Vec<(usize, ShardState)>,
}

impl<'a, I: Iterator<Item = &'a ShardRow>> Reads<'a, I> {
    fn new(stores: &'a Arc<StoreSet>, total: usize, queue: I) -> Self {
        Reads {
            stores,
            queue,
            in_flight: JoinSet::new(),
            deadlines: Vec::new(),
            verified: vec![None; total],
            bad: Vec::new(),
        }
    }

    /// Starts fetching the next candidate, if any is left.
    fn spawn_next(&mut self) {
        let Some(row) = self.queue.next() else {
            return;
        };
        let stores = self.stores.clone();
        let (store_id, loc, len) = (
            row.store_id.expect("filtered"),
            row.locator.clone().expect("filtered"),
            row.blob_len,
        );
        let index = row.index;
        let hedge_after = stores
            .slot(store_id)
            .map_or(crate::store_set::HEDGE_FLOOR, |s| s.hedge_after());
        self.deadlines.push((index, Instant::now() + hedge_after));
        self.in_flight
            .spawn(async move { (index, stores.fetch(store_id, &loc, len).await) });
    }

    /// The next finished fetch. While waiting, each fetch that passes its hedge deadline starts one more
    /// candidate. `None` when nothing is in flight.
    async fn next_result(&mut self) -> Option<FetchResult> {
        loop {
            let earliest = self.deadlines.iter().map(|d| d.1).min();
            let hedge = async {
                match earliest {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                joined = self.in_flight.join_next() => {
                    let (index, res) = match joined? {
                        Ok(r) => r,
                        Err(_) => continue,
                    };
                    self.deadlines.retain(|d| d.0 != index);
                    return Some((index, res));
                }
                () = hedge => {
                    let now = Instant::now();
                    let slow = self.deadlines.iter().filter(|d| d.1 <= now).count();
                    self.deadlines.retain(|d| d.1 > now);
                    for _ in 0..slow {
                        tracing::debug!("shard read slower than its store's usual latency: hedging");
                        self.spawn_next();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Mutex;
    use std::time::Duration;

    use qsfs_backends::{
        DirStore, Fault, FaultPlan, FaultyStore, Locator, Op, ShardStore, Trigger,
    };

    use super::*;
    use crate::volume::InitOptions;

    /// A volume whose stores each sit behind a `FaultyStore`, and those wrappers (in store id order).
    fn faulty_volume(dir: &std::path::Path) -> (Volume, Vec<Arc<FaultyStore>>) {
        Volume::init(dir, &InitOptions::default()).unwrap();
        let faulty = Mutex::new(Vec::new());
        let wrap = |_id: u32, store: Arc<dyn ShardStore>| -> Arc<dyn ShardStore> {
            let f = Arc::new(FaultyStore::wrap(store));
            faulty.lock().unwrap().push(f.clone());
            f
        };
        let vol = Volume::open_with_store_wrapper(dir, &wrap).unwrap();
        (vol, faulty.into_inner().unwrap())
    }

    /// Places `data` as the first segment of a new file and commits it, as a write would.
    fn committed_segment(vol: &Volume, data: &[u8]) -> SegmentRecord {
        let ino = vol
            .meta()
            .write(|c| {
                Ok(meta::create_node(c, meta::ROOT_INO, b"f", &meta::NewInode::test_file())?.ino)
            })
            .unwrap();
        let rec = vol.encode_and_place(ino, 0, data).unwrap();
        vol.meta()
            .write(|c| meta::put_segment(c, ino, &rec))
            .unwrap();
        rec
    }

    fn states(vol: &Volume, rec: &SegmentRecord) -> Vec<ShardState> {
        let (_, now) = vol
            .meta()
            .read(|c| meta::segment_by_id(c, rec.id))
            .unwrap()
            .unwrap();
        let mut rows = now.shards;
        rows.sort_by_key(|r| r.index);
        rows.into_iter().map(|r| r.state).collect()
    }

    fn shard_row(rec: &SegmentRecord, index: usize) -> &ShardRow {
        rec.shards.iter().find(|r| r.index == index).unwrap()
    }

    /// The file of shard `index` of `rec` on its embedded dir store under volume `dir`.
    fn shard_file(
        vol: &Volume,
        dir: &std::path::Path,
        rec: &SegmentRecord,
        index: usize,
    ) -> PathBuf {
        let row = shard_row(rec, index);
        let store_dir = dir.join("stores").join(row.store_id.unwrap().to_string());
        let store = vol.rt.block_on(DirStore::open(&store_dir, false)).unwrap();
        store
            .shard_path(&Locator(row.locator.clone().unwrap()))
            .unwrap()
    }

    /// A disk that fails to read a shard file (a permanent I/O error) is the shard's fault, as an audit and a
    /// repair see it: the read records it corrupt (queued for repair), and reads the data from the other shards.
    #[test]
    fn a_permanent_read_error_is_recorded_against_the_shard() {
        let dir = tempfile::tempdir().unwrap();
        let (vol, faults) = faulty_volume(dir.path());
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let rec = committed_segment(&vol, &data);
        let failing = shard_row(&rec, 1).store_id.unwrap() as usize;
        faults[failing].set_plan(FaultPlan::none().with(
            &[Op::Get],
            Fault::Permanent,
            Trigger::Always,
        ));
        assert_eq!(vol.read_segment(&rec, "f").unwrap(), data);
        assert_eq!(states(&vol, &rec)[1], ShardState::Corrupt);
        assert!(vol.meta().read(meta::repair_queue_len).unwrap() >= 1);
    }

    /// A store that stalls on reads costs one hedge delay, not its 30 s stall: the reader asks a parity shard on
    /// another store and decodes from the first k verified shards.
    #[test]
    fn a_stalled_store_is_hedged_around() {
        let dir = tempfile::tempdir().unwrap();
        let (vol, faults) = faulty_volume(dir.path());
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let rec = committed_segment(&vol, &data);
        // Warm every store's latency estimate, as a mount's earlier reads would.
        for _ in 0..3 {
            assert_eq!(vol.read_segment(&rec, "f").unwrap(), data);
        }
        let stalled = shard_row(&rec, 0).store_id.unwrap() as usize;
        faults[stalled].set_plan(FaultPlan::none().with(
            &[Op::Get],
            Fault::Delay(Duration::from_secs(30)),
            Trigger::Always,
        ));
        let start = std::time::Instant::now();
        assert_eq!(vol.read_segment(&rec, "f").unwrap(), data);
        let took = start.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "read with one stalled store took {took:?}"
        );
        // The stall is the store's, not the shard's: nothing is recorded against it.
        let states = states(&vol, &rec);
        assert!(states.iter().all(|s| *s == ShardState::Ok), "{states:?}");
    }

    /// A shard file grown to 15 TB (sparse) or replaced by a FIFO is refused without allocating or blocking,
    /// recorded corrupt, and the right bytes come from the other shards.
    #[test]
    fn oversized_and_special_shard_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (vol, _faults) = faulty_volume(dir.path());
        let data = vec![0x5au8; 100_000];
        let rec = committed_segment(&vol, &data);
        for (index, damage) in [(0usize, "huge"), (1, "fifo")] {
            let path = shard_file(&vol, dir.path(), &rec, index);
            std::fs::remove_file(&path).unwrap();
            if damage == "huge" {
                std::fs::File::create(&path)
                    .unwrap()
                    .set_len(15 << 40)
                    .unwrap();
            } else {
                nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .unwrap();
            }
        }
        let start = std::time::Instant::now();
        assert_eq!(vol.read_segment(&rec, "f").unwrap(), data);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "took {:?}",
            start.elapsed()
        );
        let states = states(&vol, &rec);
        assert_eq!(
            states[..2],
            [ShardState::Corrupt, ShardState::Corrupt],
            "{states:?}"
        );
    }

    /// A flipped byte in a data shard passes the unhashed first read's header checks but not the segment's AEAD
    /// tag: the read falls back to hashing every shard, records the flipped one corrupt and decodes around it.
    #[test]
    fn a_flipped_data_byte_fails_the_tag_and_is_found_by_the_hashed_read() {
        let dir = tempfile::tempdir().unwrap();
        let (vol, _faults) = faulty_volume(dir.path());
        // Incompressible, so the shard's data (where the flip lands) is long.
        let data: Vec<u8> = (0..300_000).map(|_| rand::random::<u8>()).collect();
        let rec = committed_segment(&vol, &data);
        let path = shard_file(&vol, dir.path(), &rec, 1);
        let mut blob = std::fs::read(&path).unwrap();
        let at = qsfs_por::shard_blob::HEADER_LEN as usize + 100;
        blob[at] ^= 0x40;
        std::fs::write(&path, &blob).unwrap();
        assert_eq!(vol.read_segment(&rec, "f").unwrap(), data);
        assert_eq!(states(&vol, &rec)[1], ShardState::Corrupt);
    }
}
