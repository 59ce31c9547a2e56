//! Admin operations on the store set: adding capacity (`qsfs store add`), re-admitting a store that came back
//! without its identity marker (`qsfs store readmit`), and moving every shard off a store to retire it
//! (`qsfs store drain`).
//!
//! A store without this volume's marker is never used silently: `StoreSet::open` keeps it down, and only
//! `readmit` — an explicit decision by the admin that the empty thing at that address is the old store, wiped —
//! writes a new marker, after which every shard metadata records there is rebuilt onto it by `qsfs repair`.
//!
//! Config changes rewrite `qsfs.toml` atomically (temp file, fsync, rename, fsync of the directory). The marker
//! of an added store is written before the config names it, so the config never lists a store without one.

use std::sync::Arc;
use std::time::Duration;

use qsfs_backends::{ShardStore, StoreError, StoreIdentity, StoreUri, open_store};
use serde::Serialize;

use super::{RepairOptions, RepairProgress, RepairReport};
use crate::config::{StoreConfig, VolumeConfig};
use crate::durable;
use crate::error::{QsfsError, Result};
use crate::meta;
use crate::volume::{CONFIG_FILE, Volume, absolutize};

const MARKER_TIMEOUT: Duration = Duration::from_secs(10);

/// The store named by `spec`: its id, its URI as configured, or its URI as shown (without password).
pub fn find_store(config: &VolumeConfig, spec: &str) -> Result<u32> {
    if let Ok(id) = spec.parse::<u32>()
        && config.stores.iter().any(|s| s.id == id)
    {
        return Ok(id);
    }
    let wanted = absolutize(spec);
    if let Some(s) = config.stores.iter().find(|s| s.uri == wanted) {
        return Ok(s.id);
    }
    let shown = StoreUri::parse(&wanted).map(|u| u.to_string()).ok();
    config
        .stores
        .iter()
        .find(|s| shown.is_some() && StoreUri::parse(&s.uri).map(|u| u.to_string()).ok() == shown)
        .map(|s| s.id)
        .ok_or_else(|| {
            QsfsError::Invalid(format!(
                "{spec}: not one of this volume's stores (see `qsfs status`)"
            ))
        })
}

fn write_config(vol: &Volume, config: &VolumeConfig) -> Result<()> {
    let path = vol.root().join(CONFIG_FILE);
    config.validate().map_err(|reason| QsfsError::Config {
        path: path.clone(),
        reason,
    })?;
    durable::write_atomic(&path, config.to_toml().as_bytes())
}

async fn read_marker(store: &dyn ShardStore) -> Result<Option<StoreIdentity>> {
    tokio::time::timeout(MARKER_TIMEOUT, store.read_identity())
        .await
        .map_err(|_| StoreError::Unavailable {
            uri: store.uri().to_string(),
            reason: format!("no answer within {MARKER_TIMEOUT:?}"),
        })?
        .map_err(QsfsError::from)
}

#[derive(Clone, Debug, Serialize)]
pub struct AddedStore {
    pub id: u32,
    pub uri: String,
}

/// Adds the store at `uri` as a new slot: checks it answers and carries no other volume's marker, writes this
/// volume's marker, then appends it to `qsfs.toml`. A marker of this volume left by an interrupted `add` is
/// taken over.
pub fn add_store(vol: &Volume, uri: &str) -> Result<AddedStore> {
    let text = absolutize(uri);
    let parsed = StoreUri::parse(&text)?;
    let shown = parsed.to_string();
    let config = vol.config();
    if config.stores.iter().any(|s| {
        s.uri == text
            || StoreUri::parse(&s.uri)
                .map(|u| u.to_string())
                .ok()
                .as_deref()
                == Some(&shown)
    }) {
        return Err(QsfsError::Exists(format!("store {shown}")));
    }
    let known = vol.meta().read(meta::known_store_ids)?;
    let mut id = config
        .stores
        .iter()
        .map(|s| s.id)
        .chain(known)
        .max()
        .map_or(0, |m| m + 1);
    let volume_id = config.volume_id.clone();
    let store = vol.io().block_on(async {
        let store: Arc<dyn ShardStore> =
            qsfs_backends::stack::standard(open_store(&parsed, true).await?);
        match read_marker(store.as_ref()).await? {
            None => {}
            Some(found)
                if found.volume_id == volume_id
                    && !config.stores.iter().any(|s| s.id == found.store_id) =>
            {
                id = found.store_id;
                return Ok(store);
            }
            Some(found) => {
                return Err(QsfsError::Store(StoreError::IdentityExists {
                    uri: shown.clone(),
                    volume: found.volume_id,
                    store: found.store_id,
                }));
            }
        }
        store
            .write_identity(&StoreIdentity {
                volume_id: volume_id.clone(),
                store_id: id,
            })
            .await
            .map_err(QsfsError::from)?;
        Ok(store)
    })?;
    let mut next = (*config).clone();
    next.stores.push(StoreConfig { id, uri: text });
    write_config(vol, &next)?;
    vol.meta().write(|c| meta::sync_store(c, id, &shown))?;
    // An open volume (a mount) places shards on the new store from now on.
    let stores = vol
        .stores()
        .with_added(id, shown.clone(), store, &volume_id);
    vol.reconfigure(next, stores);
    Ok(AddedStore { id, uri: shown })
}

#[derive(Clone, Debug, Serialize)]
pub struct Readmitted {
    pub id: u32,
    pub uri: String,
    /// Shards metadata records on the store, now queued to be rebuilt onto it.
    pub queued: u64,
}

/// Re-admits store `spec` after it came back empty (its marker gone): writes a fresh marker and queues every
/// shard metadata records there for rebuilding. Refuses a store that carries any marker.
pub fn readmit_store(vol: &Volume, spec: &str) -> Result<Readmitted> {
    let id = find_store(&vol.config(), spec)?;
    let slot = vol
        .stores()
        .slot(id)
        .cloned()
        .ok_or_else(|| QsfsError::Invalid(format!("store {id} is not open in this volume")))?;
    let expected = StoreIdentity {
        volume_id: vol.config().volume_id.clone(),
        store_id: id,
    };
    vol.io().block_on(async {
        match read_marker(slot.store.as_ref()).await? {
            None => slot.store.write_identity(&expected).await.map_err(QsfsError::from),
            Some(found) if found == expected => Err(QsfsError::Invalid(format!(
                "store {id} ({}) still carries this volume's marker: nothing to re-admit (`qsfs audit` checks its shards)",
                slot.uri
            ))),
            Some(found) => Err(QsfsError::Store(StoreError::IdentityMismatch {
                uri: slot.uri.clone(),
                found_volume: found.volume_id,
                found_store: found.store_id,
                expected_volume: expected.volume_id.clone(),
                expected_store: id,
            })),
        }
    })?;
    let queued = vol.meta().write(|c| {
        meta::note_store_reachability(c, id, true)?;
        meta::mark_store_shards_missing(c, id)
    })?;
    // An open volume (a mount) takes the store back at once: its identity checks out again.
    vol.io().block_on(
        vol.stores()
            .revive_checked_before(std::time::Duration::ZERO),
    );
    Ok(Readmitted {
        id,
        uri: slot.uri.clone(),
        queued,
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct Drained {
    pub id: u32,
    pub uri: String,
    pub repair: RepairReport,
    /// Shards metadata still records on the store (0 when it was retired).
    pub left: u64,
    /// Removed from `qsfs.toml`.
    pub retired: bool,
}

/// Repair rounds that move shards off store `id` until none is left or a round moves nothing more (a write that
/// chose its stores just before the drain began may land one there meanwhile). Returns the last round's report
/// and how many shards are left.
fn drain_rounds(
    vol: &Volume,
    id: u32,
    opts: &RepairOptions,
    progress: &(dyn Fn(RepairProgress) + Sync),
) -> Result<(RepairReport, u64)> {
    let drain = RepairOptions {
        drain: Some(id),
        ..opts.clone()
    };
    let mut report = vol.repair(&drain, progress)?;
    let mut left = vol.meta().read(|c| meta::shards_on_store(c, id))?;
    for _ in 0..2 {
        if left == 0 || !report.is_complete() {
            break;
        }
        report = vol.repair(&drain, progress)?;
        left = vol.meta().read(|c| meta::shards_on_store(c, id))?;
    }
    Ok((report, left))
}

/// Moves every shard off store `spec` (copying intact ones, rebuilding the rest) and, once none is left, removes
/// it from `qsfs.toml`. Refused when fewer than K+M stores would remain.
pub fn drain_store(
    vol: &Volume,
    spec: &str,
    opts: &RepairOptions,
    progress: &(dyn Fn(RepairProgress) + Sync),
) -> Result<Drained> {
    let id = find_store(&vol.config(), spec)?;
    let config = vol.config();
    let total = config.data_shards + config.parity_shards;
    if config.stores.len() <= total {
        return Err(QsfsError::Invalid(format!(
            "draining store {id} would leave {} stores, fewer than the {total} a segment's shards need; \
             add one first (`qsfs store add URI`)",
            config.stores.len() - 1
        )));
    }
    let uri = vol
        .stores()
        .slot(id)
        .map_or_else(String::new, |s| s.uri.clone());
    // An open volume (a mount) stops placing new shards on the store for the drain; the drain undoes that if it
    // fails, and retires the store from the live set once it holds nothing.
    let before = vol.stores();
    vol.reconfigure((*config).clone(), before.with_draining(id));
    let drained = drain_rounds(vol, id, opts, progress);
    let (repair, left) = match drained {
        Ok(r) => r,
        Err(e) => {
            vol.reconfigure((*config).clone(), vol.stores().not_draining(id));
            return Err(e);
        }
    };
    if left > 0 {
        vol.reconfigure((*config).clone(), vol.stores().not_draining(id));
        return Ok(Drained {
            id,
            uri,
            repair,
            left,
            retired: false,
        });
    }
    // Its replaced copies were deleted if it answered; a retired store's leftovers are no longer ours to track.
    vol.meta().write(|c| meta::forget_garbage_on_store(c, id))?;
    let mut next = (*config).clone();
    next.stores.retain(|s| s.id != id);
    write_config(vol, &next)?;
    vol.reconfigure(next, vol.stores().without(id));
    Ok(Drained {
        id,
        uri,
        repair,
        left: 0,
        retired: true,
    })
}
