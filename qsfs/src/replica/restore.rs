//! `qsfs restore`: a volume directory rebuilt on a new machine from the key (or passphrase) and one store's URI.
//!
//! 1. The given store's descriptor says which volume it is and how to derive the key; the key opens the rest of it:
//!    the volume's config with every store.
//! 2. Every store is opened (up to M may be unreachable); URIs given on the command line replace the descriptor's
//!    for the stores they prove (by identity marker) to be, which is how passwords the descriptor never holds are
//!    supplied.
//! 3. The newest verifying chain of the metadata log (`chain`) gives a snapshot and the records after it: the
//!    snapshot's pieces are read from every reachable store, verified and decoded (`snapshot`), the records'
//!    changesets applied in order.
//! 4. `meta.db`, the key file (for key-file volumes) and last `qsfs.toml` are written durably, and the volume is
//!    opened and checked with fsck.
//!
//! The target directory must not hold a volume; a failed restore removes what it wrote.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::session::{Changegroup, ConflictAction, ConflictType};
use serde::Serialize;

use super::SnapshotManifest;
use super::chain::{Chain, newest_chain};
use super::descriptor;
use super::lease::Writer;
use super::record::{LogKeys, RecordKind, unpack_changes};
use super::snapshot;
use crate::config::{KeySource, VolumeConfig};
use crate::durable;
use crate::error::{QsfsError, Result};
use crate::keys::MasterKey;
use crate::meta::{self, journal};
use crate::runtime::IoRuntime;
use crate::store_set::{StoreSet, StoreState};
use crate::volume::{self, CONFIG_FILE, KEY_FILE, META_FILE, Volume};

/// Where the key comes from.
#[derive(Clone, Debug)]
pub enum KeyInput {
    File(PathBuf),
    /// The environment variable holding the passphrase.
    Passphrase(String),
}

#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// At least one; the first that holds a descriptor is used to find the rest.
    pub stores: Vec<String>,
    pub key: KeyInput,
    pub volume: PathBuf,
    /// Make the restored copy the writer even if another copy holds the volume.
    pub take_over: bool,
}

/// What a restore did (`qsfs restore --json`).
#[derive(Clone, Debug, Serialize)]
pub struct RestoreReport {
    pub volume: String,
    pub volume_id: String,
    pub files: u64,
    pub directories: u64,
    pub bytes: u64,
    pub snapshot_seq: u64,
    pub records_applied: u64,
    pub last_seq: u64,
    /// When the newest record was written (ns since the epoch).
    pub newest_record_ns: i64,
    pub stores_down: Vec<String>,
    /// Stores that served an older, shorter or broken chain, or nothing.
    pub disagreements: Vec<String>,
    /// Metadata problems fsck left after its repair (0 for a consistent log).
    pub fsck_problems: usize,
    /// Shards the metadata names that their stores lack: recorded for `qsfs repair`.
    pub shards_missing: usize,
    /// Everything fsck found, repaired or not (shards missing from their stores are recorded for repair).
    pub fsck_findings: Vec<String>,
    /// The copy that held the volume when the restore found it (its host and path), if not this one.
    pub held_by: Option<String>,
    /// Whether this restore took the volume over from it.
    pub took_over: bool,
}

/// What a restore is doing, for a progress display: a phase and, where it counts, done/total.
pub type RestoreProgress<'a> = dyn Fn(&str, u64, u64) + Sync + 'a;

/// Restores the volume that `opts.stores` belongs to into `opts.volume`, telling `progress` what it is doing.
pub fn restore(opts: &RestoreOptions, progress: &RestoreProgress<'_>) -> Result<RestoreReport> {
    let root = &opts.volume;
    if root.join(CONFIG_FILE).exists() || root.join(META_FILE).exists() {
        return Err(QsfsError::VolumeExists { path: root.clone() });
    }
    let existed = root.exists();
    crate::private::prepare_volume_dir(root)?;
    let root = root
        .canonicalize()
        .map_err(|e| QsfsError::io(format!("resolving {}", root.display()), e))?;
    let result = restore_into(&root, opts, progress);
    if result.is_err() {
        volume::remove_partial_volume(&root, existed, &[]);
    }
    result
}

fn restore_into(
    root: &Path,
    opts: &RestoreOptions,
    progress: &RestoreProgress<'_>,
) -> Result<RestoreReport> {
    let rt = IoRuntime::new()?;
    progress("reading the volume descriptor", 0, 0);
    let (mut config, master, given) = rt.block_on(read_descriptor(opts))?;
    for (id, uri) in given {
        if let Some(s) = config.stores.iter_mut().find(|s| s.id == id) {
            s.uri = uri;
        }
    }
    if let KeyInput::Passphrase(var) = &opts.key {
        config.key.passphrase_env = Some(var.clone());
    }
    let keys = LogKeys::new(&master.subkeys().metadata, config.volume_id_bytes());
    let stores = Arc::new(rt.block_on(StoreSet::open(&config.stores, &config.volume_id))?);
    let stores_down: Vec<String> = stores
        .slots()
        .iter()
        .filter_map(|s| match s.state() {
            StoreState::Down(reason) => Some(format!("store {}: {reason}", s.id)),
            StoreState::Up => None,
        })
        .collect();
    progress("reading the metadata log from every store", 0, 0);
    let chain = rt.block_on(newest_chain(&stores, &keys)).ok_or_else(|| {
        QsfsError::MetaLog(format!(
            "no reachable store holds a metadata snapshot that verifies{}",
            if stores_down.is_empty() {
                String::new()
            } else {
                format!(" ({})", stores_down.join("; "))
            }
        ))
    })?;
    let tmp = root.join("meta.db.restore.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut disagreements = chain.disagreements.clone();
    let built = rt.block_on(build_database(
        &tmp,
        &chain,
        &stores,
        &keys,
        &config,
        progress,
        &mut disagreements,
    ));
    let (applied, manifest) = match built {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, root.join(META_FILE))
        .map_err(|e| QsfsError::io("installing the restored metadata", e))?;
    durable::sync_dir(root)?;
    crate::private::create_dir_all(&root.join("cache"))?;
    if config.key.source == KeySource::File {
        master.write_file(&root.join(KEY_FILE))?;
    }
    durable::write_atomic(&root.join(CONFIG_FILE), config.to_toml().as_bytes())?;
    drop(stores);

    let vol = Volume::open(root)?;
    let first = &chain.records[0];
    let last = chain.records.last().expect("a chain has its snapshot");
    vol.meta().write(|c| {
        journal::set_log_state(
            c,
            &journal::LogState {
                seq: last.record.seq,
                hash: last.hash,
                snapshot_seq: first.record.seq,
                snapshot: Some(manifest.clone()),
                since_bytes: chain.records[1..].iter().map(|v| v.len).sum(),
                since_records: applied,
                epoch: first.record.epoch,
            },
        )
    })?;
    let held_by = match vol.writer() {
        Writer::ReadOnly(_) => vol.lease_holder(),
        _ => None,
    };
    let took_over = opts.take_over && held_by.is_some();
    if took_over {
        vol.take_over()?;
    }
    // With repair: shards the metadata names but their stores lack (a store that lost data or was rolled back)
    // are recorded missing, so `qsfs repair` (or a mount's background repair) rebuilds them.
    // (A read-only copy cannot record them: it only reports.)
    progress("checking the restored volume (fsck)", 0, 0);
    let fsck = crate::fsck::fsck(&vol, vol.check_writer().is_ok())?;
    if let Err(e) = vol.replicate_metadata() {
        tracing::warn!(error = %e, "fsck's findings are not yet on the stores");
    }
    let st = vol.status()?;
    Ok(RestoreReport {
        volume: root.display().to_string(),
        volume_id: config.volume_id.clone(),
        files: st.files,
        directories: st.directories,
        bytes: st.logical_bytes,
        snapshot_seq: first.record.seq,
        records_applied: applied,
        last_seq: last.record.seq,
        newest_record_ns: last.record.time_ns,
        stores_down,
        disagreements,
        fsck_problems: fsck.metadata_problems(),
        shards_missing: fsck.problems.iter().filter(|p| p.missing_shard).count(),
        fsck_findings: fsck.problems.iter().map(|p| p.what.clone()).collect(),
        held_by,
        took_over,
    })
}

/// Reads the descriptor from the first given store that holds one, derives the key, opens the config. Also
/// returns, for each given store that proves to be one of the volume's, its id and the URI as given.
async fn read_descriptor(
    opts: &RestoreOptions,
) -> Result<(VolumeConfig, MasterKey, Vec<(u32, String)>)> {
    let mut found = None;
    let mut tried = Vec::new();
    let mut given = Vec::new();
    for uri in &opts.stores {
        let parsed = qsfs_backends::StoreUri::parse(uri)?;
        let store = match qsfs_backends::open_store(&parsed, false).await {
            Ok(s) => s,
            Err(e) => {
                tried.push(e.to_string());
                continue;
            }
        };
        if let Ok(Some(id)) = store.read_identity().await {
            given.push((id, uri.clone()));
        }
        if found.is_some() {
            continue;
        }
        let key = descriptor::descriptor_key();
        let Some(loc) = store.locate(&key) else {
            tried.push(format!(
                "{parsed}: 0-db seq-mode namespaces cannot hold the volume descriptor"
            ));
            continue;
        };
        match store.get(&loc, crate::store_set::NAMED_MAX).await {
            Ok(blob) => found = Some(blob),
            Err(qsfs_backends::StoreError::NotFound { .. }) => {
                tried.push(format!("{parsed}: holds no qsfs volume descriptor"))
            }
            Err(e) => tried.push(e.to_string()),
        }
    }
    let blob = found.ok_or_else(|| {
        QsfsError::MetaLog(format!("no volume descriptor found: {}", tried.join("; ")))
    })?;
    let (public, sealed) = descriptor::read_public(&blob)?;
    let master = match (&opts.key, &public.key_source) {
        (KeyInput::File(path), KeySource::File) => MasterKey::read_file(path)?,
        (KeyInput::Passphrase(var), KeySource::Passphrase) => {
            let params = public.argon2.as_ref().ok_or_else(|| {
                QsfsError::MetaLog(
                    "volume descriptor: passphrase volume without argon2 parameters".into(),
                )
            })?;
            MasterKey::from_passphrase(volume::read_passphrase(var)?.as_bytes(), params)?
        }
        (KeyInput::File(_), KeySource::Passphrase) => {
            return Err(QsfsError::Invalid(
                "this volume's key comes from a passphrase: use --passphrase-env VAR instead of --key-file".into(),
            ));
        }
        (KeyInput::Passphrase(_), KeySource::File) => {
            return Err(QsfsError::Invalid(
                "this volume has a random key file: use --key-file FILE instead of --passphrase-env".into(),
            ));
        }
    };
    let volume_id: [u8; 16] = hex::decode(&public.volume_id)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| QsfsError::MetaLog("volume descriptor: bad volume id".into()))?;
    let keys = LogKeys::new(&master.subkeys().metadata, volume_id);
    let config = descriptor::open_config(sealed, &keys)?;
    if config.volume_id != public.volume_id || !master.matches(&volume_id, &config.key.check) {
        return Err(QsfsError::WrongKey {
            path: PathBuf::from(&opts.stores[0]),
        });
    }
    let given = given
        .into_iter()
        .filter(|(id, _)| id.volume_id == config.volume_id)
        .map(|(id, uri)| (id.store_id, volume::absolutize(&uri)))
        .collect();
    Ok((config, master, given))
}

/// Writes the snapshot's image to `tmp` and applies every record after it; returns the records applied and the
/// snapshot's manifest (JSON). Stores that lacked or damaged their part of the snapshot are added to `notes`.
async fn build_database(
    tmp: &Path,
    chain: &Chain,
    stores: &Arc<StoreSet>,
    keys: &LogKeys,
    config: &VolumeConfig,
    progress: &RestoreProgress<'_>,
    notes: &mut Vec<String>,
) -> Result<(u64, Vec<u8>)> {
    let snap = &chain.records[0];
    let (epoch, seq) = (snap.record.epoch, snap.record.seq);
    let manifest_json = zstd::bulk::decompress(&snap.record.body, super::record::MAX_RECORD)
        .map_err(|e| QsfsError::MetaLog(format!("snapshot record {seq}: {e}")))?;
    let manifest: SnapshotManifest = serde_json::from_slice(&manifest_json)
        .map_err(|e| QsfsError::MetaLog(format!("snapshot record {seq}: {e}")))?;
    let compressed = snapshot::read(
        stores,
        keys,
        (epoch, seq),
        &manifest,
        &|done, total| progress("reading the snapshot", done, total),
        notes,
    )
    .await?;
    let image = zstd::bulk::decompress(&compressed, manifest.db_len as usize)
        .map_err(|e| QsfsError::MetaLog(format!("snapshot {seq}: {e}")))?;
    let write = |f: &mut std::fs::File| std::io::Write::write_all(f, &image);
    crate::private::file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .and_then(|mut f| write(&mut f))
        .map_err(|e| QsfsError::io("writing the restored metadata", e))?;
    let mut conn = rusqlite::Connection::open(tmp)?;
    // A snapshot written by an older release: its tables gain this release's columns before the log's newer
    // changesets name them.
    meta::migrate_image(&mut conn)?;
    // Changesets already hold every row a cascade changed: cascading again would delete rows the changeset then
    // fails to find.
    // One transaction and no syncs while building: the file is fsynced once, whole, before it is installed.
    conn.execute_batch("PRAGMA foreign_keys = OFF; PRAGMA synchronous = OFF; BEGIN")?;
    for s in &config.stores {
        meta::sync_store(&conn, s.id, &s.uri)?;
    }
    let mut applied = 0;
    let records = chain.records.len() as u64 - 1;
    for v in &chain.records[1..] {
        progress("applying the log's records", applied, records);
        match v.record.kind {
            RecordKind::Changes => {
                // A record's changesets merged into one (in order) and applied at once: one pass per table
                // instead of one per transaction the writer committed.
                let mut group = Changegroup::new()?;
                for cs in unpack_changes(v.record.seq, &v.record.body)? {
                    group.add_stream(&mut &cs[..]).map_err(|e| {
                        QsfsError::MetaLog(format!(
                            "record {}: a changeset does not parse: {e}",
                            v.record.seq
                        ))
                    })?;
                }
                let mut merged = Vec::new();
                group.output_strm(&mut merged)?;
                apply_changeset(&conn, v.record.seq, &merged)?;
            }
            RecordKind::Snapshot => {
                return Err(QsfsError::MetaLog(format!(
                    "record {}: a snapshot inside the chain after snapshot {}",
                    v.record.seq, snap.record.seq
                )));
            }
        }
        applied += 1;
    }
    conn.execute_batch("COMMIT; PRAGMA journal_mode = DELETE")?;
    drop(conn);
    let f =
        std::fs::File::open(tmp).map_err(|e| QsfsError::io("syncing the restored metadata", e))?;
    f.sync_all()
        .map_err(|e| QsfsError::io("syncing the restored metadata", e))?;
    Ok((applied, manifest_json))
}

/// Applies one changeset; any conflict means the log does not describe this database, which is an error.
fn apply_changeset(conn: &rusqlite::Connection, seq: u64, changeset: &[u8]) -> Result<()> {
    let conflicts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = conflicts.clone();
    let mut input: &[u8] = changeset;
    conn.apply_strm(
        &mut input,
        None::<fn(&str) -> bool>,
        move |kind: ConflictType, item| {
            let table = item
                .op()
                .map(|o| format!("{} {:?}", o.table_name(), o.code()))
                .unwrap_or_default();
            tracing::warn!(?kind, %table, "metadata record conflicts with the restored database");
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ConflictAction::SQLITE_CHANGESET_ABORT
        },
    )
    .map_err(|e| QsfsError::MetaLog(format!("record {seq} does not apply: {e}")))?;
    if conflicts.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        return Err(QsfsError::MetaLog(format!(
            "record {seq} conflicts with the database before it"
        )));
    }
    Ok(())
}
