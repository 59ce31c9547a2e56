//! `qsfs status`: the volume's shape, each store's reachability, holdings and audit score, how many segments are
//! fully redundant, degraded or unreadable, the last audit and the repair backlog. The serialized form is the documented `status --json` schema.

use serde::Serialize;

use super::Volume;
use crate::error::Result;
use crate::meta::{self, SegmentHealth};

#[derive(Clone, Debug, Serialize)]
pub struct StoreStatus {
    pub id: u32,
    pub uri: String,
    pub reachable: bool,
    pub error: Option<String>,
    /// Shards metadata records on this store in good state.
    pub shards: u64,
    pub bytes: u64,
    pub free_bytes: Option<u64>,
    /// Fraction of this store's audit checks that passed over its last 10 audits; null before its first audit.
    pub score: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct VolumeStatus {
    pub volume: String,
    pub volume_id: String,
    pub data_shards: usize,
    pub parity_shards: usize,
    pub segment_size: u64,
    pub write_quorum: usize,
    pub files: u64,
    pub directories: u64,
    pub logical_bytes: u64,
    pub garbage_shards: u64,
    pub segments: SegmentHealth,
    pub stores: Vec<StoreStatus>,
    /// The most recent audit, null before the first.
    pub last_audit: Option<meta::AuditSummary>,
    /// Shards waiting to be rebuilt or moved.
    pub repair_queue: u64,
    /// The metadata log's replica on the stores.
    pub metadata_log: MetadataLogStatus,
}

/// Where the metadata log stands (see `crate::replica`).
#[derive(Clone, Debug, Serialize)]
pub struct MetadataLogStatus {
    /// The writer epoch and the last record shipped to the stores.
    pub epoch: u64,
    pub seq: u64,
    /// The record of the newest snapshot.
    pub snapshot_seq: u64,
    /// Committed transactions not yet on the stores.
    pub pending: u64,
    /// Stores that hold the log (dir, redis, 0-db user mode).
    pub stores: usize,
    /// Whether this copy is the volume's writer, and if not why (`null` while it is).
    pub read_only: Option<String>,
}

impl Volume {
    /// Probes every store (concurrently) and summarizes the volume.
    pub fn status(&self) -> Result<VolumeStatus> {
        let probes = self.rt.block_on(self.stores().probe_all());
        let reachable = probes
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(id, _)| *id)
            .collect();
        let cfg = &self.config();
        let (files, dirs, logical, usage, health, garbage) = self.meta.read(|c| {
            let (f, d, l) = meta::namespace_totals(c)?;
            let usage = meta::store_usage(c)?;
            let health = meta::segment_health(
                c,
                &reachable,
                cfg.data_shards,
                cfg.data_shards + cfg.parity_shards,
            )?;
            Ok((f, d, l, usage, health, meta::garbage_count(c)?))
        })?;
        let (scores, last_audit, repair_queue) = self.meta.read(|c| {
            Ok((
                meta::store_scores(c)?,
                meta::last_audit(c)?,
                meta::repair_queue_len(c)?,
            ))
        })?;
        let mut stores: Vec<StoreStatus> = self
            .stores()
            .slots()
            .iter()
            .map(|slot| {
                let probe = probes
                    .iter()
                    .find(|(id, _)| *id == slot.id)
                    .map(|(_, r)| r.clone());
                let (shards, bytes) = usage.get(&slot.id).copied().unwrap_or((0, 0));
                let (reachable, error, free_bytes) = match probe {
                    Some(Ok(h)) => (true, None, h.free_bytes),
                    Some(Err(e)) => (false, Some(e), None),
                    None => (false, Some("probe did not finish".into()), None),
                };
                StoreStatus {
                    id: slot.id,
                    uri: slot.uri.clone(),
                    reachable,
                    error,
                    shards,
                    bytes,
                    free_bytes,
                    score: scores.get(&slot.id).map(|s| (s * 1000.0).round() / 1000.0),
                }
            })
            .collect();
        stores.sort_by_key(|s| s.id);
        Ok(VolumeStatus {
            volume: self.root.display().to_string(),
            volume_id: cfg.volume_id.clone(),
            data_shards: cfg.data_shards,
            parity_shards: cfg.parity_shards,
            segment_size: cfg.segment_size.0,
            write_quorum: cfg.write_quorum,
            files,
            directories: dirs,
            logical_bytes: logical,
            garbage_shards: garbage,
            segments: health,
            stores,
            last_audit,
            repair_queue,
            metadata_log: self.metadata_log_status()?,
        })
    }

    fn metadata_log_status(&self) -> Result<MetadataLogStatus> {
        let (st, pending) = self.meta.read(|c| {
            Ok((
                meta::journal::log_state(c)?,
                meta::checks::pending_log_entries(c)?,
            ))
        })?;
        Ok(MetadataLogStatus {
            epoch: st.epoch,
            seq: st.seq,
            snapshot_seq: st.snapshot_seq,
            pending,
            stores: self.stores().named_slots().len(),
            read_only: match self.writer() {
                crate::replica::lease::Writer::ReadOnly(why) => Some(why),
                _ => None,
            },
        })
    }
}
