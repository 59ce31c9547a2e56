//! `qsfs gc`: reclaiming store space. Two kinds of dead shards exist:
//! - **garbage**: shards of replaced or removed segments, recorded in the `garbage` table by the transaction that
//!   dropped them and deleted once that transaction is on the stores' metadata log (`collect_garbage`);
//! - **orphans**: shard blobs on a store that no metadata row names at all — left by a put, write or repair that
//!   failed after placing some shards and could not delete them again (the store went away), or by a crash
//!   between placing and committing. They are found by listing each store against the metadata.
//!
//! Only objects whose first bytes are a shard blob's magic are orphans: the metadata log's objects, identity
//! markers and anything foreign are never touched. A shard the listing finds unnamed may belong to an upload in
//! flight (gc run on a mounted volume, through its control socket): it counts as an orphan only if it is still
//! unnamed after every placement begun before the metadata was read has committed or given up (see
//! `placements`). Only the volume's writer deletes (the lease is re-read first).

use std::collections::HashSet;

use qsfs_backends::{Locator, StoreError};
use qsfs_por::shard_blob::{HEADER_LEN, SHARD_BLOB_MAGIC, ShardHeader, ShardLayout};
use serde::Serialize;

use super::Volume;

/// How long gc waits for uploads in flight before it leaves orphan candidates for a later run.
const PLACEMENT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
use crate::error::{QsfsError, Result};
use crate::meta;
use crate::store_set::{StoreSlot, StoreState};

/// What `gc` did (or, with `--dry-run`, would do) on one store.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StoreGc {
    pub store_id: u32,
    pub uri: String,
    /// Recorded garbage shards deleted from this store.
    pub garbage_deleted: u64,
    /// Recorded garbage shards still waiting (the store is down, or a dry run).
    pub garbage_pending: u64,
    /// Shard blobs no metadata names.
    pub orphans: u64,
    /// Their bytes, from their headers.
    pub orphan_bytes: u64,
    /// Orphans deleted (0 in a dry run).
    pub orphans_deleted: u64,
    /// Why the store was skipped, or what deleting means there.
    pub note: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Pack segments: their live share, and what compaction did (nothing in a dry run).
    pub packs: super::PackCompaction,
    pub stores: Vec<StoreGc>,
}

impl GcReport {
    pub fn orphans(&self) -> u64 {
        self.stores.iter().map(|s| s.orphans).sum()
    }
}

impl Volume {
    /// Deletes recorded garbage, then finds (and unless `dry_run` deletes) orphan shards on every store that
    /// answers.
    pub fn gc(&self, dry_run: bool) -> Result<GcReport> {
        if !dry_run {
            self.check_writer()?;
        }
        // Packs first: what compaction leaves dead is garbage this run deletes.
        let packs = if dry_run {
            self.pack_census()?
        } else {
            self.compact_packs()?
        };
        let before = self.garbage_per_store()?;
        if !dry_run {
            self.collect_garbage()?;
        }
        let after = self.garbage_per_store()?;
        let mut report = GcReport {
            dry_run,
            packs,
            stores: Vec::new(),
        };
        for slot in self.stores().slots() {
            let pending = after.get(&slot.id).copied().unwrap_or(0);
            let mut row = StoreGc {
                store_id: slot.id,
                uri: slot.uri.clone(),
                garbage_deleted: before
                    .get(&slot.id)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(pending),
                garbage_pending: pending,
                ..StoreGc::default()
            };
            if let StoreState::Down(why) = slot.state() {
                row.note = Some(format!("down, skipped: {why}"));
            } else if let Err(e) = self.sweep_orphans(slot, dry_run, &mut row) {
                row.note = Some(format!("listing failed, skipped: {e}"));
            }
            report.stores.push(row);
        }
        Ok(report)
    }

    fn garbage_per_store(&self) -> Result<std::collections::HashMap<u32, u64>> {
        let mut out = std::collections::HashMap::new();
        for slot in self.stores().slots() {
            out.insert(
                slot.id,
                self.meta().read(|c| meta::garbage_on_store(c, slot.id))?,
            );
        }
        Ok(out)
    }

    /// Lists `slot`'s store, finds the shard blobs no metadata row names, and deletes them unless `dry_run`.
    fn sweep_orphans(&self, slot: &StoreSlot, dry_run: bool, row: &mut StoreGc) -> Result<()> {
        let store = slot.store.clone();
        let listed = self.io().block_on(store.list())?;
        let known: HashSet<Vec<u8>> = self.meta().read(|c| meta::locators_on_store(c, slot.id))?;
        let mut unnamed: Vec<Locator> = listed
            .into_iter()
            .filter(|l| !known.contains(&l.0))
            .collect();
        if !unnamed.is_empty() {
            // A mount's upload may have placed shards the listing saw and not committed their rows when the
            // metadata was read: wait for every placement begun before now, then ask the metadata again.
            let mark = self.placements().mark();
            if !self.placements().wait_before(mark, PLACEMENT_WAIT) {
                row.note = Some(format!(
                    "uploads kept running for {PLACEMENT_WAIT:?}: orphan candidates kept; run gc again"
                ));
                return Ok(());
            }
            let known: HashSet<Vec<u8>> =
                self.meta().read(|c| meta::locators_on_store(c, slot.id))?;
            unnamed.retain(|l| !known.contains(&l.0));
        }
        let mut orphans = Vec::new();
        for loc in unnamed {
            if let Some(bytes) = self.io().block_on(shard_blob_len(slot, &loc))? {
                row.orphans += 1;
                row.orphan_bytes += bytes;
                orphans.push(loc);
            }
        }
        if slot.uri.starts_with("zdb") && !orphans.is_empty() {
            row.note = Some(
                "0-db is append-only: deleted shards free their space when the server compacts its data files"
                    .into(),
            );
        }
        if dry_run || orphans.is_empty() {
            return Ok(());
        }
        // A copy that lost the volume to a take-over must not delete what the new writer may reference.
        self.recheck_lease()?;
        for loc in orphans {
            match self.io().block_on(store.delete(&loc)) {
                Ok(()) | Err(StoreError::NotFound { .. }) => {
                    row.orphans_deleted += 1;
                    self.count_reclaimed(1);
                }
                Err(e) => tracing::warn!(store = %slot.uri, error = %e, "orphan shard not deleted"),
            }
        }
        Ok(())
    }
}

/// The object's length if it is a shard blob (by its header), `None` if it is anything else (a metadata log
/// object, a marker, something foreign or too short to hold a header) or vanished meanwhile.
async fn shard_blob_len(slot: &StoreSlot, loc: &Locator) -> Result<Option<u64>> {
    let magic_len = SHARD_BLOB_MAGIC.len() as u64;
    let head = if slot.store.supports_range() {
        slot.store.get_range(loc, 0, magic_len).await
    } else {
        // Whole objects (0-db): none is larger than the store's value limit.
        let limit = slot.store.max_value_size().unwrap_or(64 << 20);
        slot.store.get(loc, limit).await
    };
    let head = match head {
        Ok(b) => b,
        // Gone since the listing, or shorter than a magic: not a shard blob.
        Err(e) if !e.is_retryable() => return Ok(None),
        Err(e) => return Err(QsfsError::Store(e)),
    };
    if !head.starts_with(&SHARD_BLOB_MAGIC) {
        return Ok(None);
    }
    let header = if slot.store.supports_range() {
        slot.store.get_range(loc, 0, HEADER_LEN).await.ok()
    } else {
        Some(head)
    };
    // A blob with a damaged header is still a shard of ours by its magic; its size is then unknown.
    let len = header
        .as_deref()
        .and_then(|h| ShardHeader::parse(h).ok())
        .and_then(|h| ShardLayout::new(h.data_len).ok())
        .map_or(0, |l| l.blob_len());
    Ok(Some(len))
}
