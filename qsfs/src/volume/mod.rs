//! A `Volume`: the one object the CLI and the FUSE layer drive. It owns the config, the master key's subkeys (inside
//! the codec and the metadata log's keys), the metadata database, the store set, the metadata log's writer side
//! (`crate::replica`: shipping, snapshots, the descriptor, the writer lease) and the I/O runtime, and it holds the
//! volume lock.
//!
//! On disk a volume is a directory: `qsfs.toml`, `key` (mode 0600, file-key volumes), `meta.db`, `cache/`, `lock`,
//! and for the embedded default `stores/0..N`. `qsfs.toml` is written last at init, so its presence means the
//! volume is complete.

mod files;
mod gc;
mod init_options;
mod lock;
mod packs;
pub mod placements;
mod segments;
mod status;
mod undo;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::codec::{CodecParams, SegmentCodec, SegmentKeys};
use crate::config::{
    CONFIG_FORMAT_VERSION, KeyConfig, KeySource, StoreConfig, VolumeConfig, default_write_quorum,
};
use crate::durable;
use crate::error::{QsfsError, Result};
use crate::keys::{self, MasterKey, Passphrase};
use crate::meta::{self, MetaStore};
use crate::pace::ForegroundActivity;
use crate::replica::MetaReplica;
use crate::replica::record::LogKeys;
use crate::runtime::IoRuntime;
use crate::store_set::StoreSet;
pub use init_options::InitOptions;

pub use files::PutOptions;
pub use gc::{GcReport, StoreGc};
pub use lock::VolumeLock;
pub use packs::{COMPACT_BELOW, PackCompaction};
pub use status::{StoreStatus, VolumeStatus};
pub(crate) use undo::remove_partial_volume;

/// How `Volume::open_inner` opens a volume.
#[derive(Default)]
struct OpenHow<'a> {
    /// Read-only for good, with the reason every refusal gives.
    read_only: Option<&'a str>,
    /// A passphrase the caller holds (else a passphrase volume's is read from the environment).
    passphrase: Option<Passphrase>,
}

pub const CONFIG_FILE: &str = "qsfs.toml";
pub const KEY_FILE: &str = "key";
pub const META_FILE: &str = "meta.db";
/// The environment variable read for a passphrase when the config names none.
pub const DEFAULT_PASSPHRASE_ENV: &str = "QSFS_PASSPHRASE";

pub struct Volume {
    root: PathBuf,
    /// The config and the stores: swapped whole when an admin adds, drains or re-admits a store while the volume
    /// is open (a mount); readers take the current one.
    config: RwLock<Arc<VolumeConfig>>,
    meta: MetaStore,
    codec: Arc<SegmentCodec>,
    stores: RwLock<Arc<StoreSet>>,
    rt: IoRuntime,
    /// File reads and writes in flight, so background audits and repairs can yield to them.
    foreground: Arc<ForegroundActivity>,
    /// Shards placed and not yet committed (see `placements`).
    placements: placements::Placements,
    /// Recently read packs' plaintext (see `packs`).
    packs: packs::PackCache,
    /// Dead shards (garbage, orphans) this process deleted from the stores.
    reclaimed: std::sync::atomic::AtomicU64,
    /// The metadata log's writer side (see `crate::replica`).
    replica: MetaReplica,
    _lock: VolumeLock,
}

impl Volume {
    /// Creates a new volume at `root`. Refuses if one exists; never overwrites a key. On failure, removes what it
    /// created locally.
    pub fn init(root: &Path, opts: &InitOptions) -> Result<PathBuf> {
        opts.validate()?;
        if root.join(CONFIG_FILE).exists() || root.join(KEY_FILE).exists() {
            return Err(QsfsError::VolumeExists {
                path: root.to_path_buf(),
            });
        }
        // A passphrase that is missing or too weak is refused before anything is created.
        if let Some(var) = &opts.passphrase_env {
            check_passphrase_strength(var, &read_passphrase(var)?)?;
        }
        let existed = root.exists();
        crate::private::prepare_volume_dir(root)?;
        let root = root
            .canonicalize()
            .map_err(|e| QsfsError::io(format!("resolving {}", root.display()), e))?;
        let lock = VolumeLock::acquire(&root)?;
        let mut volume_id = [0u8; 16];
        rand::fill(&mut volume_id);
        let stores = planned_stores(&root, opts);
        let result = Self::init_inner(&root, opts, volume_id, &stores).and_then(|()| {
            drop(lock);
            // The stores get the volume's descriptor and the metadata log its first snapshot: from now on one
            // store's URI and the key are enough to restore the volume.
            Volume::open(&root)?.ensure_replicated()
        });
        if result.is_err() {
            // Markers this init wrote would make a retry fail with "store belongs to another volume".
            if let Ok(rt) = IoRuntime::new() {
                rt.block_on(undo::take_back_markers(&stores, &hex::encode(volume_id)));
            }
            remove_partial_volume(&root, existed, &["stores"]);
        }
        result.map(|_| root)
    }

    fn init_inner(
        root: &Path,
        opts: &InitOptions,
        volume_id: [u8; 16],
        stores: &[StoreConfig],
    ) -> Result<()> {
        let stores = stores.to_vec();
        let (master, key) = match &opts.passphrase_env {
            None => {
                let master = MasterKey::random();
                let check = master.check_value(&volume_id);
                (
                    master,
                    KeyConfig {
                        source: KeySource::File,
                        check,
                        passphrase_env: None,
                        argon2: None,
                    },
                )
            }
            Some(var) => {
                let pass = read_passphrase(var)?;
                let params = keys::new_argon2_params();
                let master = MasterKey::from_passphrase(pass.as_bytes(), &params)?;
                let check = master.check_value(&volume_id);
                let cfg = KeyConfig {
                    source: KeySource::Passphrase,
                    check,
                    passphrase_env: Some(var.clone()),
                    argon2: Some(params),
                };
                (master, cfg)
            }
        };
        let config = VolumeConfig {
            format_version: CONFIG_FORMAT_VERSION,
            volume_id: hex::encode(volume_id),
            data_shards: opts.data_shards,
            parity_shards: opts.parity_shards,
            segment_size: opts.segment_size,
            zstd_level: opts.zstd_level,
            write_quorum: opts
                .write_quorum
                .unwrap_or_else(|| default_write_quorum(opts.data_shards, opts.parity_shards)),
            key,
            stores,
            audit: crate::config::AuditConfig::default(),
            metrics: Default::default(),
            gc: Default::default(),
        };
        let config_path = root.join(CONFIG_FILE);
        config.validate().map_err(|reason| QsfsError::Config {
            path: config_path.clone(),
            reason,
        })?;
        let codec = build_codec(&config, &master)?;
        let rt = IoRuntime::new()?;
        check_store_value_limits(&config, &codec, &rt)?;
        if config.key.source == KeySource::File {
            master.write_file(&root.join(KEY_FILE))?;
        }
        crate::private::create_dir_all(&root.join("cache"))?;
        if opts.stores.is_empty() {
            crate::private::create_dir_all(&root.join("stores"))?;
        }

        rt.block_on(StoreSet::initialise(&config.stores, &config.volume_id))?;
        let meta = MetaStore::open(&root.join(META_FILE), true)?;
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        meta.write(|c| {
            meta::ensure_root(c, uid, gid)?;
            for s in &config.stores {
                meta::sync_store(c, s.id, &s.uri)?;
            }
            Ok(())
        })?;
        durable::write_atomic(&config_path, config.to_toml().as_bytes())
    }

    /// Opens an existing volume: lock, config, key check, metadata, stores. A wrong key fails before anything else
    /// is read or written.
    pub fn open(root: &Path) -> Result<Volume> {
        Self::open_with_store_wrapper(root, &|_, store| store)
    }

    /// Like `open`, with every store passed through `wrap(store id, store)` before use: the hook fault-injection
    /// tests use to put a `qsfs_backends::FaultyStore` in front of real stores.
    pub fn open_with_store_wrapper(
        root: &Path,
        wrap: &crate::store_set::StoreWrapper<'_>,
    ) -> Result<Volume> {
        Self::open_inner(root, wrap, OpenHow::default())
    }

    /// Opens the volume read-only for good (`why` says so in every refusal): nothing is written to the metadata
    /// or the stores, not even the stores' health bookkeeping or a first writer lease. `passphrase`: one the
    /// caller already holds (see `open_replicated_with`).
    pub fn open_read_only(
        root: &Path,
        wrap: &crate::store_set::StoreWrapper<'_>,
        why: &str,
        passphrase: Option<Passphrase>,
    ) -> Result<Volume> {
        Self::open_inner(
            root,
            wrap,
            OpenHow {
                read_only: Some(why),
                passphrase,
            },
        )
    }

    /// `open_replicated` for a passphrase volume whose passphrase the caller already holds (the background mount
    /// receives it over a pipe, so it never sits in a long-lived process's environment).
    pub fn open_replicated_with_passphrase(root: &Path, passphrase: Passphrase) -> Result<Volume> {
        Self::open_replicated_with(root, &|_, store| store, Some(passphrase))
    }

    /// `open_replicated` with every store passed through `wrap` (the mount's metrics wrapper) and, for a
    /// passphrase volume, the passphrase if the caller holds it (else it is read from the environment).
    pub fn open_replicated_with(
        root: &Path,
        wrap: &crate::store_set::StoreWrapper<'_>,
        passphrase: Option<Passphrase>,
    ) -> Result<Volume> {
        let how = OpenHow {
            read_only: None,
            passphrase,
        };
        let vol = Self::open_inner(root, wrap, how)?;
        if let Err(e) = vol.ensure_replicated() {
            tracing::warn!(error = %e, "metadata not yet replicated to the stores");
        }
        Ok(vol)
    }

    fn open_inner(
        root: &Path,
        wrap: &crate::store_set::StoreWrapper<'_>,
        how: OpenHow<'_>,
    ) -> Result<Volume> {
        let config_path = root.join(CONFIG_FILE);
        if !config_path.exists() {
            return Err(QsfsError::NoVolume {
                path: root.to_path_buf(),
            });
        }
        let root = root
            .canonicalize()
            .map_err(|e| QsfsError::io(format!("resolving {}", root.display()), e))?;
        // Before anything is read: a volume others can read leaks plaintext and secrets, one they can change
        // could be made to write elsewhere.
        crate::private::check(&root)?;
        crate::private::check(&config_path)?;
        let lock = VolumeLock::acquire(&root)?;
        let config = VolumeConfig::load(&config_path)?;
        let master = match config.key.source {
            KeySource::File => MasterKey::read_file(&root.join(KEY_FILE))?,
            KeySource::Passphrase => {
                let pass = match how.passphrase {
                    Some(p) => p,
                    None => read_passphrase(&passphrase_var(&config))?,
                };
                let params = config
                    .key
                    .argon2
                    .as_ref()
                    .expect("validated: passphrase volumes carry argon2 params");
                MasterKey::from_passphrase(pass.as_bytes(), params)?
            }
        };
        if !master.matches(&config.volume_id_bytes(), &config.key.check) {
            return Err(QsfsError::WrongKey { path: root.clone() });
        }
        let codec = Arc::new(build_codec(&config, &master)?);
        let replica = MetaReplica::new(LogKeys::new(
            &master.subkeys().metadata,
            config.volume_id_bytes(),
        ));
        let meta_path = root.join(META_FILE);
        if !meta_path.exists() {
            return Err(QsfsError::Config {
                path: meta_path,
                reason: "metadata database is missing; the volume cannot be opened".into(),
            });
        }
        let meta = MetaStore::open(&meta_path, false)?;
        let rt = IoRuntime::new()?;
        let stores = Arc::new(rt.block_on(StoreSet::open_wrapped(
            &config.stores,
            &config.volume_id,
            wrap,
        ))?);
        let read_only = how.read_only;
        meta.set_read_only(read_only.map(str::to_string));
        // The stores' health bookkeeping (what a read-only open leaves alone).
        let record_states = |c: &rusqlite::Connection| {
            for slot in stores.slots() {
                meta::sync_store(c, slot.id, &slot.uri)?;
                let state = slot.state();
                let err = match &state {
                    crate::store_set::StoreState::Down(r) => Some(r.as_str()),
                    crate::store_set::StoreState::Up => None,
                };
                meta::record_store_state(c, slot.id, err.is_none(), err)?;
                // Starts (or ends) the lost-store grace period.
                meta::note_store_reachability(c, slot.id, err.is_none())?;
            }
            Ok(())
        };
        if read_only.is_none() {
            meta.write(record_states)?;
        }
        let vol = Volume {
            root,
            config: RwLock::new(Arc::new(config)),
            meta,
            codec,
            stores: RwLock::new(stores),
            rt,
            foreground: Arc::new(ForegroundActivity::default()),
            placements: Default::default(),
            packs: Default::default(),
            reclaimed: Default::default(),
            replica,
            _lock: lock,
        };
        // Which copy writes (see `crate::replica::lease`); a copy that cannot tell (too few stores) finds out
        // when its writes fail for lack of stores anyway.
        if let Some(why) = read_only {
            vol.make_read_only(why);
        } else if let Err(e) = vol.claim_lease() {
            tracing::warn!(error = %e, "the writer lease could not be checked");
        }
        Ok(vol)
    }

    /// Opens the volume and, for a volume whose metadata log has no snapshot yet (one made before the log
    /// existed), writes the descriptor and the first snapshot. Failing that (too few stores) is not fatal here:
    /// the volume still opens, and the next open tries again.
    pub fn open_replicated(root: &Path) -> Result<Volume> {
        Self::open_replicated_with(root, &|_, store| store, None)
    }

    /// Writes the descriptor and a first snapshot when the log has none.
    pub fn ensure_replicated(&self) -> Result<()> {
        if self.has_metadata_snapshot()? {
            return Ok(());
        }
        self.write_descriptor()?;
        self.snapshot_metadata()
    }

    /// Writes this volume's descriptor to the stores (at init, and whenever the set of stores changes).
    pub fn write_descriptor(&self) -> Result<()> {
        let (config, stores) = (self.config(), self.stores());
        let blob = crate::replica::descriptor::seal(&config, self.replica.keys());
        let quorum = config.write_quorum.min(stores.named_slots().len());
        self.rt.block_on(stores.replicate(
            &crate::replica::descriptor::descriptor_key(),
            &blob,
            quorum,
        ))?;
        Ok(())
    }

    pub fn replica(&self) -> &MetaReplica {
        &self.replica
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The volume's config as it is now (a store added or drained while open changes it).
    pub fn config(&self) -> Arc<VolumeConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn meta(&self) -> &MetaStore {
        &self.meta
    }

    /// The volume's stores as they are now.
    pub fn stores(&self) -> Arc<StoreSet> {
        self.stores
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Swaps in a new config and store set (a store added, drained or re-admitted while the volume is open): the
    /// caller has written `config` to `qsfs.toml` already. Work in flight finishes on the set it started with.
    pub(crate) fn reconfigure(&self, config: VolumeConfig, stores: StoreSet) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        *self.stores.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(stores);
    }

    pub fn segment_size(&self) -> u64 {
        self.config().segment_size.0
    }

    pub fn codec(&self) -> &Arc<SegmentCodec> {
        &self.codec
    }

    /// The store I/O runtime: the single crossing point from plain threads into async store I/O.
    pub fn io(&self) -> &IoRuntime {
        &self.rt
    }

    /// The gauge of foreground file I/O that background audits and repairs yield to.
    /// Dead shards this process has deleted from the stores so far.
    pub fn shards_reclaimed(&self) -> u64 {
        self.reclaimed.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn count_reclaimed(&self, n: u64) {
        self.reclaimed
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Placements in flight: hold `placements().begin()` from before placing shards until their rows commit.
    pub fn placements(&self) -> &placements::Placements {
        &self.placements
    }

    pub fn foreground(&self) -> &Arc<ForegroundActivity> {
        &self.foreground
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }
}

/// The stores of a new volume: the given URIs (dir paths made absolute), or K+M dir stores inside it.
fn planned_stores(root: &Path, opts: &InitOptions) -> Vec<StoreConfig> {
    let total = opts.data_shards + opts.parity_shards;
    if opts.stores.is_empty() {
        (0..total as u32)
            .map(|i| StoreConfig {
                id: i,
                uri: format!("dir:{}", root.join("stores").join(i.to_string()).display()),
            })
            .collect()
    } else {
        opts.stores
            .iter()
            .enumerate()
            .map(|(i, u)| StoreConfig {
                id: i as u32,
                uri: absolutize(u),
            })
            .collect()
    }
}

fn build_codec(config: &VolumeConfig, master: &MasterKey) -> Result<SegmentCodec> {
    let sub = master.subkeys();
    SegmentCodec::new(
        CodecParams {
            data_shards: config.data_shards,
            parity_shards: config.parity_shards,
            zstd_level: config.zstd_level,
        },
        SegmentKeys {
            encryption: sub.segment_encryption,
            shard_naming: sub.shard_naming,
        },
        config.volume_id_bytes(),
    )
}

/// A store with a value limit (0-db: 8 MiB) must fit the largest shard blob a full segment can produce.
fn check_store_value_limits(
    config: &VolumeConfig,
    codec: &SegmentCodec,
    rt: &IoRuntime,
) -> Result<()> {
    let largest = codec.max_shard_blob_len(config.segment_size.0)?;
    for s in &config.stores {
        if s.uri.starts_with("dir:") {
            continue; // no value limit, and opening a dir store that does not exist yet would fail
        }
        let uri = qsfs_backends::StoreUri::parse(&s.uri)?;
        // Network stores connect lazily: opening one here sends nothing.
        let store = rt.block_on(qsfs_backends::open_store(&uri, false))?;
        if let Some(limit) = store.max_value_size()
            && largest > limit
        {
            return Err(QsfsError::CodecParams(format!(
                "store {uri} accepts values up to {limit} bytes, but a {} segment over {} data shards makes \
                 {largest}-byte shards; use a smaller --segment-size or more --data-shards",
                config.segment_size, config.data_shards
            )));
        }
    }
    Ok(())
}

/// The environment variable a passphrase volume's passphrase is read from.
pub fn passphrase_var(config: &VolumeConfig) -> String {
    config
        .key
        .passphrase_env
        .clone()
        .unwrap_or_else(|| DEFAULT_PASSPHRASE_ENV.to_string())
}

/// A new volume's passphrase must resist offline guessing (the stores' descriptor and `qsfs.toml` hold the argon2
/// salt and key check): zxcvbn's estimate, the field's usual one, must be at least "safely unguessable" (score 3,
/// about 10^8 guesses at argon2's cost each). Existing volumes open whatever their passphrase.
fn check_passphrase_strength(var: &str, pass: &str) -> Result<()> {
    let estimate = zxcvbn::zxcvbn(pass, &["qsfs"]);
    if estimate.score() >= zxcvbn::Score::Three {
        return Ok(());
    }
    let hint = estimate
        .feedback()
        .and_then(|f| f.warning())
        .map(|w| format!(" ({w})"))
        .unwrap_or_default();
    Err(QsfsError::InitOption {
        option: "passphrase-env",
        reason: format!(
            "the passphrase in {var} is too easy to guess{hint}; use a longer one, e.g. five random words"
        ),
    })
}

/// The passphrase in environment variable `var`, in a buffer wiped on drop.
pub fn read_passphrase(var: &str) -> Result<Passphrase> {
    match std::env::var(var) {
        Ok(p) if !p.is_empty() => Ok(Passphrase::new(p)),
        _ => Err(QsfsError::KeyFile {
            path: PathBuf::from(format!("${var}")),
            reason: format!(
                "this volume's key comes from a passphrase: set the environment variable {var}"
            ),
        }),
    }
}

/// Makes a `dir:` URI's path absolute relative to the current directory, so the volume works from anywhere.
pub(crate) fn absolutize(uri: &str) -> String {
    match uri.strip_prefix("dir:") {
        Some(p) if !p.starts_with('/') => match std::env::current_dir() {
            Ok(cwd) => format!("dir:{}", cwd.join(p).display()),
            Err(_) => uri.to_string(),
        },
        _ => uri.to_string(),
    }
}
