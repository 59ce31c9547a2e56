//! Reading the metadata log back from the stores: the newest chain that verifies, from the newest snapshot any store
//! points at to the last record any store holds, and which stores disagreed on the way.
//!
//! Every reachable store is asked for every record, so a store that dropped, truncated, replayed or forged records,
//! or serves an older head, cannot hide the newer chain the others hold; it is named in `disagreements`. A record
//! is taken only if it opens under the volume's key with its own sequence number and its `prev` is the hash of the
//! record chosen before it. When stores hold two versions of one record (a writer that crashed between shipping a
//! record and noting it, then shipped that number again), the version the next record chains from wins.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::record::{Head, LogKeys, Record, RecordKind, record_hash};
use crate::store_set::StoreSet;

/// One verified version of a record and the stores that served it.
#[derive(Clone, Debug)]
pub struct Version {
    pub record: Record,
    pub hash: [u8; 32],
    pub len: u64,
    pub stores: Vec<u32>,
}

/// The chain a restore applies.
#[derive(Debug)]
pub struct Chain {
    /// The snapshot record first, then every record after it, in order.
    pub records: Vec<Version>,
    /// Stores that served something other than the chosen chain, with what.
    pub disagreements: Vec<String>,
}

/// Every store's head hint (those that answer and hold one).
async fn heads(stores: &StoreSet, keys: &LogKeys, notes: &mut Vec<String>) -> Vec<(u32, Head)> {
    let mut out = Vec::new();
    for (id, uri, served) in stores.read_named_everywhere(&keys.head_key()).await {
        match served.map(|b| b.map(|b| keys.open_head(&b))) {
            Ok(Some(Ok(head))) => out.push((id, head)),
            Ok(Some(Err(e))) => notes.push(format!("store {id} ({uri}): {e}")),
            Ok(None) => notes.push(format!("store {id} ({uri}): holds no metadata head")),
            Err(e) => notes.push(format!("store {id} ({uri}): head unreadable: {e}")),
        }
    }
    out
}

/// Every verifying version of record `seq` across the stores.
async fn versions(
    stores: &StoreSet,
    keys: &LogKeys,
    epoch: u64,
    seq: u64,
    notes: &mut Vec<String>,
) -> Vec<Version> {
    let mut out: Vec<Version> = Vec::new();
    for (id, uri, served) in stores
        .read_named_everywhere(&keys.record_key(epoch, seq))
        .await
    {
        let blob = match served {
            Ok(Some(blob)) => blob,
            Ok(None) => continue,
            Err(e) => {
                notes.push(format!("store {id} ({uri}): record {seq} unreadable: {e}"));
                continue;
            }
        };
        match keys.open_record(epoch, seq, &blob) {
            Ok(record) => {
                let hash = record_hash(&blob);
                match out.iter_mut().find(|v| v.hash == hash) {
                    Some(v) => v.stores.push(id),
                    None => out.push(Version {
                        record,
                        hash,
                        len: blob.len() as u64,
                        stores: vec![id],
                    }),
                }
            }
            Err(e) => notes.push(format!("store {id} ({uri}): {e}")),
        }
    }
    out
}

/// The newest chain that verifies. Starts at the newest snapshot a head points at and falls back to older ones
/// (and finally to record 1, the volume's first snapshot) when a snapshot record cannot be read from any store.
pub async fn newest_chain(stores: &Arc<StoreSet>, keys: &LogKeys) -> Option<Chain> {
    let mut notes = Vec::new();
    let heads = heads(stores, keys, &mut notes).await;
    // Where a chain can start: each head's (epoch, snapshot), and the volume's first snapshot.
    let mut starts: BTreeSet<(u64, u64)> = heads
        .iter()
        .map(|(_, h)| (h.epoch, h.snapshot_seq))
        .collect();
    starts.insert((1, 1));
    let newest_start = starts.iter().next_back().copied().unwrap_or((1, 1));
    for (id, h) in &heads {
        if (h.epoch, h.snapshot_seq) < newest_start {
            notes.push(format!(
                "store {id}: its head points at snapshot {} of epoch {}, older than snapshot {} of epoch {}",
                h.snapshot_seq, h.epoch, newest_start.1, newest_start.0
            ));
        }
    }
    for &(epoch, start) in starts.iter().rev() {
        let first = versions(stores, keys, epoch, start, &mut notes).await;
        let Some(snapshot) = first
            .into_iter()
            .filter(|v| v.record.kind == RecordKind::Snapshot)
            .max_by_key(|v| v.stores.len())
        else {
            notes.push(format!(
                "snapshot record {start} of epoch {epoch}: no store holds a version that verifies"
            ));
            continue;
        };
        let mut records = vec![snapshot];
        let mut next = versions(stores, keys, epoch, start + 1, &mut notes).await;
        loop {
            let prev = records.last().expect("starts with the snapshot").hash;
            let (chained, other): (Vec<Version>, Vec<Version>) =
                next.into_iter().partition(|v| v.record.prev == prev);
            for v in &other {
                notes.push(format!(
                    "stores {:?}: record {} does not chain from the record before it",
                    v.stores, v.record.seq
                ));
            }
            if chained.is_empty() {
                break;
            }
            let seq = chained[0].record.seq;
            let after = versions(stores, keys, epoch, seq + 1, &mut notes).await;
            // Prefer the version the next record chains from; else the one most stores hold.
            let chosen = chained
                .iter()
                .find(|v| after.iter().any(|a| a.record.prev == v.hash))
                .or_else(|| chained.iter().max_by_key(|v| v.stores.len()))
                .cloned()
                .expect("not empty");
            records.push(chosen);
            next = after;
        }
        note_stores_behind(stores, &records, &mut notes);
        return Some(Chain {
            records,
            disagreements: notes,
        });
    }
    None
}

/// Names the reachable stores that lack the chain's last record: they were down, lost writes, or roll back.
fn note_stores_behind(stores: &StoreSet, records: &[Version], notes: &mut Vec<String>) {
    let last = records.last().expect("a chain has its snapshot");
    for slot in stores.named_slots().iter().filter(|s| s.is_up()) {
        if !last.stores.contains(&slot.id) {
            notes.push(format!(
                "store {} ({}): lacks record {}, the newest (behind or rolled back)",
                slot.id, slot.uri, last.record.seq
            ));
        }
    }
}
