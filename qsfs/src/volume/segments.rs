//! Moving one segment between plaintext and the stores: encode + place (write), fetch + verify + decode (read),
//! and deleting garbage shards after the transaction that dropped them has committed.

use std::sync::Arc;

use qsfs_backends::StoreError;
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
        // A read-only copy writes no shard (it could not commit one anyway).
        self.check_writer()?;
        let _busy = self.foreground.enter();
        let id = meta::new_segment_id();
        let encoded = self
            .codec
            .encode_at(id, Some(SegmentPlace { ino, index }), data)?;
        let info = encoded.info.clone();
        let shards = self.rt.block_on(self.stores.place(
            id,
            encoded.shards,
            self.config.write_quorum,
        ))?;
        Ok(SegmentRecord {
            id,
            ino,
            index,
            info,
            shards,
        })
    }

    /// Reads one segment back: data shards first, a parity shard for each one that is missing, unreachable or
    /// corrupt; every shard verified against its Merkle root before use. Bad shards are recorded in metadata so
    /// status shows them and repair can find them (recording a shard bad queues it for repair, by trigger, in
    /// the same transaction). `name` names the file in errors.
    pub fn read_segment(&self, rec: &SegmentRecord, name: &str) -> Result<Vec<u8>> {
        let _busy = self.foreground.enter();
        let k = self.config.data_shards;
        let (shards, bad) = self
            .rt
            .block_on(fetch_verified(&self.stores, &self.codec, rec, k));
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
                    let stores = self.stores.clone();
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
            self.meta.write(|c| meta::garbage_done(c, &done))?;
        }
    }
}

/// Fetches shards until `k` have verified, starting with the data shards; returns the verified shard data (by
/// index) and the shards found missing or corrupt.
async fn fetch_verified(
    stores: &Arc<StoreSet>,
    codec: &Arc<SegmentCodec>,
    rec: &SegmentRecord,
    k: usize,
) -> (Vec<Option<Vec<u8>>>, Vec<(usize, ShardState)>) {
    stores.revive_due().await;
    let total = rec.shards.len();
    let mut candidates: Vec<&ShardRow> = rec
        .shards
        .iter()
        .filter(|s| s.state == ShardState::Ok && s.store_id.is_some() && s.locator.is_some())
        .filter(|s| {
            stores
                .slot(s.store_id.unwrap_or(u32::MAX))
                .is_some_and(|slot| slot.is_up())
        })
        .collect();
    // Data shards first (no decoding needed when they all arrive), then parity.
    candidates.sort_by_key(|s| s.index);
    let mut queue = candidates.into_iter();
    let mut verified: Vec<Option<Vec<u8>>> = vec![None; total];
    let mut bad = Vec::new();
    let mut in_flight = JoinSet::new();
    let spawn = |set: &mut JoinSet<(usize, Result<Vec<u8>, StoreError>)>, row: &ShardRow| {
        let stores = stores.clone();
        let (store_id, loc) = (
            row.store_id.expect("filtered"),
            row.locator.clone().expect("filtered"),
        );
        let index = row.index;
        set.spawn(async move { (index, stores.fetch(store_id, &loc).await) });
    };
    for row in queue.by_ref().take(k) {
        spawn(&mut in_flight, row);
    }
    let mut good = 0;
    while let Some(joined) = in_flight.join_next().await {
        let Ok((index, res)) = joined else { continue };
        let ok = match res {
            Ok(blob) => match codec.verify_shard(rec.id, &rec.info, index, &blob) {
                Ok(data) => {
                    verified[index] = Some(data);
                    true
                }
                Err(e) => {
                    tracing::warn!(segment = rec.id, shard = index, error = %e, "corrupt shard ignored");
                    bad.push((index, ShardState::Corrupt));
                    false
                }
            },
            Err(StoreError::NotFound { uri }) => {
                tracing::warn!(segment = rec.id, shard = index, store = %uri, "shard missing from its store");
                bad.push((index, ShardState::Missing));
                false
            }
            Err(e) => {
                // Unreachable stores are not the shard's fault: nothing is recorded against the shard.
                tracing::warn!(segment = rec.id, shard = index, error = %e, "shard unreadable");
                false
            }
        };
        if ok {
            good += 1;
            if good == k {
                in_flight.abort_all();
                break;
            }
        } else if let Some(next) = queue.next() {
            spawn(&mut in_flight, next);
        }
    }
    (verified, bad)
}
