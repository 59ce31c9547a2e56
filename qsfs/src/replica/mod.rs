//! The metadata lives on the stores too. This module owns the remote half of the metadata log: shipping committed
//! changes to the stores as encrypted, chained records (group commit), compacting the log into snapshots, the
//! volume descriptor, and `restore`, which rebuilds a volume directory on a new machine from one store's URI and
//! the key.
//!
//! The log. Every metadata transaction leaves its changeset in `meta_log_pending` (see `meta::journal`). A
//! durability point (`Volume::replicate_metadata`: fsync, a durable close, the end of `put`/`rm`) ships everything
//! pending as one record `seq + 1` to every store that can find objects by name, and returns once the write quorum
//! of stores holds it: concurrent callers share that one store write (group commit). Records are replicated whole,
//! not erasure-coded: they are small and frequent, and with every store holding every record a reader can compare
//! the stores' chains record by record (see `chain`).
//!
//! Snapshots. When the log since the last snapshot grows past `SNAPSHOT_RECORDS` records or `SNAPSHOT_BYTES` bytes
//! (and once at the start), the database is copied (`VACUUM INTO`, under the writer lock), local-only tables are
//! emptied, and the image is zstd-compressed, sealed, cut into chunks and erasure-coded like data (`snapshot`): K
//! data and n − K parity pieces per chunk over the n stores that hold the log, one piece per store, so a snapshot
//! costs n/K × its compressed size instead of n ×, and any K of those stores restore it. With fewer than K + M such
//! stores the chunks are stored whole on each instead. Snapshots need no entry in the metadata they describe: a
//! `Snapshot` record carries their manifest (layout and every piece's hash), sealed, chained and replicated like
//! any record. Only once that record and the head hint pointing at it are on the write quorum are the records
//! before it and the previous snapshot's pieces deleted.
//!
//! Invariants this module keeps: a record is never acknowledged before the write quorum holds it; a snapshot image
//! contains exactly the changes up to the pending id it was cut at, and those pending entries are dropped in the
//! same transaction that records the snapshot, so no change is both in a snapshot and in a later record.

pub mod chain;
pub mod descriptor;
pub mod lease;
pub mod record;
pub mod restore;
pub mod snapshot;

use std::sync::Mutex;

use crate::error::{QsfsError, Result};
use crate::meta;
use crate::meta::journal::{self, LogState};
use crate::volume::Volume;
use record::{Head, LogKeys, Record, RecordKind};
pub use snapshot::SnapshotManifest;

/// A snapshot is due after this many records since the last one...
const SNAPSHOT_RECORDS: u64 = 2000;
/// ...or this many bytes of records.
const SNAPSHOT_BYTES: u64 = 32 << 20;
/// Changesets shipped in one record at most (bytes before compression).
const RECORD_BATCH: usize = 16 << 20;

/// The writer's side of the log: its keys and the lock that makes shipping one caller at a time.
pub struct MetaReplica {
    keys: LogKeys,
    /// Whether this copy is the volume's writer.
    pub(crate) lease: lease::LeaseState,
    /// Held while a record is being built and shipped: callers queue on it, and the first one through ships
    /// what everyone queued committed (group commit).
    ship: Mutex<()>,
}

impl MetaReplica {
    pub fn new(keys: LogKeys) -> MetaReplica {
        MetaReplica {
            keys,
            lease: lease::LeaseState::default(),
            ship: Mutex::new(()),
        }
    }

    pub fn keys(&self) -> &LogKeys {
        &self.keys
    }
}

impl Volume {
    /// Stores that take part in the metadata log, and how many must hold a record before it counts.
    fn log_quorum(&self) -> usize {
        let named = self.stores().named_slots().len();
        self.config().write_quorum.min(named)
    }

    /// Makes every metadata change committed so far durable on the stores: returns once the records holding them
    /// are on the write quorum. A no-op when nothing is pending.
    pub fn replicate_metadata(&self) -> Result<()> {
        let target = self.meta().read(journal::last_pending)?;
        if target == 0 || self.log_quorum() == 0 {
            return Ok(());
        }
        self.check_writer()?;
        // What the stores' log holds must never be ahead of what this machine keeps through a power loss: the
        // pending changes may come from unsynced (local-first) commits.
        self.meta().sync()?;
        let _ship = self
            .replica()
            .ship
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        loop {
            let batch = self
                .meta()
                .read(|c| journal::pending_batch(c, RECORD_BATCH))?;
            // Another caller shipped ours while we waited.
            let Some(&(first, _)) = batch.first() else {
                break;
            };
            if first > target {
                break;
            }
            let last = batch.last().map(|b| b.0).unwrap_or(first);
            let changes: Vec<Vec<u8>> = batch.into_iter().map(|(_, c)| c).collect();
            let body = record::pack_changes(&changes)?;
            self.ship_record(RecordKind::Changes, body, last, None, None)?;
            if last >= target {
                break;
            }
        }
        let st = self.meta().read(journal::log_state)?;
        if st.since_records >= SNAPSHOT_RECORDS || st.since_bytes >= SNAPSHOT_BYTES {
            self.snapshot_locked(None)?;
        }
        Ok(())
    }

    /// Takes a snapshot now (the log's first, or a compaction), shipping what is pending with it.
    pub fn snapshot_metadata(&self) -> Result<()> {
        if self.log_quorum() == 0 {
            tracing::warn!(
                "no store can hold the metadata log (0-db seq mode only): metadata is not replicated"
            );
            return Ok(());
        }
        let _ship = self
            .replica()
            .ship
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.snapshot_locked(None)
    }

    /// Starts epoch `epoch` with a snapshot (after a take-over), under the ship lock.
    pub(crate) fn snapshot_in_epoch(&self, epoch: u64) -> Result<()> {
        let _ship = self
            .replica()
            .ship
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.snapshot_locked(Some(epoch))
    }

    /// Whether this volume's log has a snapshot yet (volumes made before the log existed have none).
    pub fn has_metadata_snapshot(&self) -> Result<bool> {
        Ok(self.meta().read(journal::log_state)?.snapshot_seq != 0)
    }

    /// Seals record `seq + 1` of `kind` and ships it; on success drops pending entries up to `pending_through`
    /// and advances the local head in one transaction. `snapshot`: the manifest, for a snapshot record;
    /// `new_epoch`: the epoch a take-over starts (with a snapshot), else the chain's own.
    fn ship_record(
        &self,
        kind: RecordKind,
        body: Vec<u8>,
        pending_through: i64,
        snapshot: Option<Vec<u8>>,
        new_epoch: Option<u64>,
    ) -> Result<LogState> {
        self.check_writer()?;
        let before = self.meta().read(journal::log_state)?;
        let rec = Record {
            seq: before.seq + 1,
            epoch: new_epoch.unwrap_or(before.epoch),
            prev: before.hash,
            time_ns: meta::now_ns(),
            kind,
            body,
        };
        let blob = self.replica().keys.seal_record(&rec);
        let key = self.replica().keys.record_key(rec.epoch, rec.seq);
        self.io()
            .block_on(self.stores().replicate(&key, &blob, self.log_quorum()))?;
        let mut after = LogState {
            seq: rec.seq,
            hash: record::record_hash(&blob),
            since_bytes: before.since_bytes + blob.len() as u64,
            since_records: before.since_records + 1,
            epoch: rec.epoch,
            ..before.clone()
        };
        if let Some(manifest) = snapshot {
            after.snapshot_seq = rec.seq;
            after.snapshot = Some(manifest);
            after.since_bytes = 0;
            after.since_records = 0;
        }
        self.meta().write(|c| {
            journal::drop_pending_through(c, pending_through)?;
            journal::set_log_state(c, &after)
        })?;
        Ok(before)
    }

    /// The snapshot itself, in `new_epoch` when a take-over starts one; the caller holds the ship lock.
    fn snapshot_locked(&self, new_epoch: Option<u64>) -> Result<()> {
        let (image, cut_at) = self.database_image()?;
        let compressed = zstd::bulk::compress(&image, 3)
            .map_err(|e| QsfsError::io("compressing the metadata snapshot", e))?;
        let st = self.meta().read(journal::log_state)?;
        let (epoch, seq) = (new_epoch.unwrap_or(st.epoch), st.seq + 1);
        let keys = &self.replica().keys;
        let sealed = keys.seal_snapshot(epoch, seq, &compressed);
        let layout = snapshot::Layout::choose(
            self.config().data_shards,
            self.config().parity_shards,
            self.stores().named_slots().len(),
        );
        let mut manifest = self.io().block_on(snapshot::store(
            &self.stores(),
            keys,
            (epoch, seq),
            &sealed,
            layout,
            self.log_quorum(),
        ))?;
        manifest.db_len = image.len() as u64;
        let manifest = serde_json::to_vec(&manifest).expect("the manifest serialises");
        let body = zstd::bulk::compress(&manifest, 3)
            .map_err(|e| QsfsError::io("compressing the snapshot manifest", e))?;
        let before = self.ship_record(
            RecordKind::Snapshot,
            body,
            cut_at,
            Some(manifest),
            new_epoch,
        )?;
        let now = self.meta().read(journal::log_state)?;
        let head = Head {
            snapshot_seq: now.snapshot_seq,
            seq: now.seq,
            epoch: now.epoch,
            time_ns: meta::now_ns(),
        };
        let keys = &self.replica().keys;
        let head_written = self.io().block_on(self.stores().replicate(
            &keys.head_key(),
            &keys.seal_head(&head),
            self.log_quorum(),
        ));
        if let Err(e) = head_written {
            // The records before this snapshot stay: a restore that finds only an older head still needs them.
            tracing::warn!(error = %e, "metadata head not updated; older log records are kept");
            return Ok(());
        }
        self.forget_superseded(&before)
    }

    /// Deletes what the newest snapshot made unnecessary: the records from the previous snapshot (its own record
    /// included) up to the last one before the new snapshot, and every piece of the previous snapshot.
    fn forget_superseded(&self, before: &LogState) -> Result<()> {
        let keys = &self.replica().keys;
        let first = before.snapshot_seq.max(1);
        for seq in first..=before.seq {
            self.io().block_on(
                self.stores()
                    .delete_named(&keys.record_key(before.epoch, seq)),
            );
        }
        let Some(old) = &before.snapshot else {
            return Ok(());
        };
        let old: SnapshotManifest = serde_json::from_slice(old)
            .map_err(|e| QsfsError::MetaLog(format!("stored snapshot manifest: {e}")))?;
        self.io().block_on(snapshot::delete(
            &self.stores(),
            keys,
            (before.epoch, before.snapshot_seq),
            &old,
        ));
        Ok(())
    }

    /// A consistent SQLite image of the metadata with local-only tables emptied, and the pending id it was cut
    /// at.
    fn database_image(&self) -> Result<(Vec<u8>, i64)> {
        let tmp = self
            .root()
            .join(format!("meta.snapshot.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let result = (|| {
            let cut_at = self.meta().snapshot_into(&tmp)?;
            let conn = rusqlite::Connection::open(&tmp)?;
            for table in journal::LOCAL_TABLES {
                conn.execute(&format!("DELETE FROM {table}"), [])?;
            }
            conn.execute(
                "UPDATE meta_log_state SET seq = 0, hash = zeroblob(32), snapshot_seq = 0, snapshot = NULL,
                 since_bytes = 0, since_records = 0",
                [],
            )?;
            // Rewrites the file without the deleted rows' bytes (the upload queue may have held plaintext).
            conn.execute_batch("VACUUM")?;
            drop(conn);
            let image = std::fs::read(&tmp)
                .map_err(|e| QsfsError::io("reading the metadata snapshot", e))?;
            Ok((image, cut_at))
        })();
        let _ = std::fs::remove_file(&tmp);
        result
    }
}
