//! Mounting and unmounting. `mount` cleans a stale mount left by a crashed process, recovers the volume (orphan
//! inodes, the upload queue), mounts, and serves until the filesystem is unmounted (`qsfs umount`, `umount`,
//! `fusermount3 -u`) or the process gets SIGINT/SIGTERM/SIGHUP, which drain pending uploads and then unmount.
//! After the session ends, it drains again, so the process exits only when everything closed is on the stores
//! or, after a bounded wait, left in the local upload queue for the next mount.
//!
//! The mount's source is `qsfs:VOLUME`, so `qsfs umount` finds the volume, and through its lock file the pid of
//! the process serving it, whose exit it waits for.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};
use nix::sys::signal::{SigSet, Signal};

use super::QsfsFs;
use super::engine::Engine;
use super::mounts::clean_stale;
use crate::error::{QsfsError, Result};
use crate::meta;
use crate::pipeline::default_workers;
use crate::volume::Volume;

pub const DEFAULT_CACHE_SIZE: u64 = 256 << 20;
/// How long the final drain waits for queued uploads before leaving them for the next mount.
const QUEUE_DRAIN: Duration = Duration::from_secs(120);

/// When a read writes the access time (the mount options of the same names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AtimeMode {
    /// When the access time is older than the last modification or change, or a day old (Linux's default).
    #[default]
    Relatime,
    /// Never.
    Noatime,
    /// At each open file's first read.
    Strictatime,
}

impl std::fmt::Display for AtimeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AtimeMode::Relatime => "relatime",
            AtimeMode::Noatime => "noatime",
            AtimeMode::Strictatime => "strictatime",
        })
    }
}

#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Let users other than the one mounting use the mount (`allow_other`; needs `user_allow_other` in
    /// /etc/fuse.conf for non-root mounts).
    pub allow_other: bool,
    /// Bytes of decoded segments kept in memory.
    pub cache_size: u64,
    /// Most bytes written and not yet on the stores kept in staging (`--staging-limit`; None: the default of
    /// `space::default_limit`).
    pub staging_limit: Option<u64>,
    /// Every close is an fsync (data and metadata on the stores), instead of local-first close.
    pub sync_close: bool,
    /// `--upload-lag`: how long closed small files wait for others to share their pack (see `fuse::pack`).
    pub upload_lag: Option<Duration>,
    /// FUSE worker threads.
    pub threads: usize,
    /// Mounted read-only (`--read-only`): the kernel refuses writes with EROFS, and the volume (already made
    /// read-only by the caller) changes nothing on the stores or in the metadata.
    pub read_only: bool,
    /// When reads write the access time.
    pub atime: AtimeMode,
    /// Serve Prometheus metrics on this address (`--metrics`).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The metrics the volume's stores were wrapped to count into (see `crate::metrics::store`).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: false,
            cache_size: DEFAULT_CACHE_SIZE,
            staging_limit: None,
            sync_close: false,
            upload_lag: None,
            threads: 8,
            read_only: false,
            atime: AtimeMode::Relatime,
            metrics_addr: None,
            metrics: None,
        }
    }
}

/// What mounting found and did, for the caller to report.
#[derive(Clone, Debug, Default)]
pub struct MountReport {
    pub stale_cleaned: bool,
    pub orphans_deleted: usize,
    pub uploads_resumed: usize,
    /// Where the metrics are served, when they are.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// The live mount, for the caller's control channel: its volume and what only a mount knows.
#[derive(Clone)]
pub struct MountHandle {
    eng: Arc<Engine>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// The mount's background workers.
    workers: Arc<crate::workers::Workers>,
    /// Cleared when the session ends (unmounted): the process then only drains and exits.
    serving: Arc<std::sync::atomic::AtomicBool>,
}

impl MountHandle {
    pub fn volume(&self) -> &Arc<Volume> {
        &self.eng.vol
    }

    /// Whether the mount still serves (false once unmounted, while it drains its uploads before exiting).
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }

    /// The mount's metrics in the Prometheus text format, gauges refreshed (`None` if it keeps none).
    pub fn metrics_text(&self) -> Option<String> {
        self.metrics.as_ref().map(|m| m.render())
    }

    /// What only the mount knows: upload queue, unsealed data, read cache, workers.
    pub fn status(&self) -> Result<super::live::MountStatus> {
        super::live::mount_status(&self.eng, &self.workers.list())
    }
}

/// Makes every rendering of the metrics (a scrape, `qsfs stats`) refresh its gauges from the live mount first.
fn refresh_from_mount(m: &Arc<crate::metrics::Metrics>, eng: &Arc<Engine>) {
    let live = eng.clone();
    m.set_refresh(Box::new(move |m| {
        for slot in live.vol.stores().slots() {
            let labels = crate::metrics::StoreLabels {
                store: slot.id.to_string(),
            };
            m.store_up
                .get_or_create(&labels)
                .set(i64::from(slot.is_up()));
        }
        if let Ok(n) = live.vol.meta().read(meta::queue_len) {
            m.upload_queue.set(n as i64);
        }
        m.upload_retrying.set(live.retrying_uploads() as i64);
        refresh_health(m, &live);
    }));
}

/// The health gauges: segment states, repair queue, audit results, read cache, gc.
fn refresh_health(m: &crate::metrics::Metrics, eng: &Engine) {
    use crate::metrics::health::{StateLabels, advance};
    let h = &m.health;
    let vol = &eng.vol;
    let cfg = vol.config();
    let up = vol.stores().up_ids();
    let read = vol.meta().read(|c| {
        let health =
            meta::segment_health(c, &up, cfg.data_shards, cfg.data_shards + cfg.parity_shards)?;
        Ok((
            health,
            meta::repair_queue_len(c)?,
            meta::store_scores(c)?,
            meta::last_audit(c)?,
        ))
    });
    match read {
        Ok((health, queue, scores, last)) => {
            for (state, n) in [
                ("healthy", health.healthy),
                ("degraded", health.degraded),
                ("unreadable", health.unreadable),
            ] {
                h.segments
                    .get_or_create(&StateLabels {
                        state: state.into(),
                    })
                    .set(n as i64);
            }
            h.repair_queue.set(queue as i64);
            for (id, score) in scores {
                let labels = crate::metrics::StoreLabels {
                    store: id.to_string(),
                };
                h.audit_score.get_or_create(&labels).set(score);
            }
            if let Some(a) = last {
                h.audit_last_failures.set(a.failures as i64);
                h.audit_last_timestamp.set(a.finished_unix as i64);
            }
        }
        Err(e) => tracing::debug!(error = %e, "health metrics not refreshed"),
    }
    let (bytes, _, hits, misses) = eng.cache.usage();
    h.cache_bytes.set(bytes as i64);
    advance(&h.cache_hits, hits);
    advance(&h.cache_misses, misses);
    advance(&h.gc_reclaimed, vol.shards_reclaimed());
}

/// The signals that end a mount. Call `block_signals` on the main thread before anything starts threads (the
/// volume's runtime does), so every thread inherits the mask and only the waiter thread receives them.
fn stop_signals() -> SigSet {
    let mut s = SigSet::empty();
    s.add(Signal::SIGINT);
    s.add(Signal::SIGTERM);
    s.add(Signal::SIGHUP);
    s
}

pub fn block_signals() -> Result<()> {
    stop_signals()
        .thread_block()
        .map_err(|e| QsfsError::io("blocking signals", e.into()))
}

/// Mounts `vol` at `mountpoint` and serves it until unmounted. `ready` runs once the mount is up.
pub fn mount(
    vol: Volume,
    mountpoint: &Path,
    opts: &MountOptions,
    ready: impl FnOnce(&MountReport, &MountHandle),
) -> Result<()> {
    let mut report = MountReport {
        stale_cleaned: clean_stale(mountpoint, vol.root())?,
        ..Default::default()
    };
    if !mountpoint.is_dir() {
        return Err(QsfsError::NotADirectory(mountpoint.display().to_string()));
    }
    let root = vol.root().to_path_buf();
    let vol = Arc::new(vol);
    let eng = Engine::new(vol.clone(), opts.cache_size, opts.sync_close)?;
    if let Some(limit) = opts.staging_limit {
        eng.space.set_limit(limit);
    }
    if let Some(lag) = opts.upload_lag {
        eng.set_upload_lag(lag);
    }
    eng.start_workers(default_workers())?;
    // A read-only mount resumes nothing: the queue and orphans wait for the next read-write mount.
    let (orphans, resumed) = if opts.read_only {
        (0, 0)
    } else {
        eng.recover()?
    };
    report.orphans_deleted = orphans;
    report.uploads_resumed = resumed;
    if let Some(m) = &opts.metrics {
        refresh_from_mount(m, &eng);
        if let Some(addr) = opts.metrics_addr {
            report.metrics_addr = Some(m.serve(addr, eng.vol.io().handle())?);
        }
    }
    let metrics = opts.metrics.clone();

    let notifier = Arc::new(std::sync::OnceLock::new());
    let fs = QsfsFs {
        eng: eng.clone(),
        files: Default::default(),
        dirs: Default::default(),
        next_fh: std::sync::atomic::AtomicU64::new(1),
        statfs_cache: Default::default(),
        metrics,
        notifier: notifier.clone(),
        doomed_dirs: Default::default(),
        atime: opts.atime,
    };
    let mut config = Config::default();
    let root_str = root.display().to_string();
    let fsname = if root_str.contains([',', ' ', '\t', '\n', '\\']) {
        "qsfs".to_string()
    } else {
        format!("qsfs:{root_str}")
    };
    config.mount_options = vec![
        MountOption::FSName(fsname),
        // `fuse.qsfs` in /proc/mounts, mount(8) and df -T. fusermount3 (non-root) takes the subtype as its own
        // option; fuser's direct mount (root) drops that one, so it goes to the kernel as a mount option.
        if nix::unistd::geteuid().is_root() {
            MountOption::CUSTOM("subtype=qsfs".into())
        } else {
            MountOption::Subtype("qsfs".into())
        },
        MountOption::DefaultPermissions,
        if opts.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    let mut session = fuser::Session::new(fs, mountpoint, &config).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied && !nix::unistd::geteuid().is_root() {
            " (as a non-root user, qsfs needs /dev/fuse usable by everyone, mode 0666 as standard distributions \
             set it, and fusermount3 from the fuse3 package; or mount as root)"
        } else {
            ""
        };
        QsfsError::io(format!("mounting {}{hint}", mountpoint.display()), e)
    })?;
    let _ = notifier.set(session.notifier());
    let handle = MountHandle {
        eng: eng.clone(),
        metrics: opts.metrics.clone(),
        workers: Default::default(),
        serving: Arc::new(std::sync::atomic::AtomicBool::new(true)),
    };
    ready(&report, &handle);
    raise_readahead(mountpoint.to_path_buf());

    let mut unmounter = session.unmount_callable();
    let mp = mountpoint.to_path_buf();
    let sig_eng = eng.clone();
    // Without it the blocked SIGTERM/SIGINT/SIGHUP would never reach anyone: no mount without it.
    std::thread::Builder::new()
        .name("qsfs-signals".into())
        .spawn(move || {
            if let Ok(sig) = stop_signals().wait() {
                tracing::info!(signal = ?sig, "draining pending uploads, then unmounting");
                let left = sig_eng.drain(QUEUE_DRAIN);
                if left > 0 {
                    tracing::warn!(left, "queued segments stay queued for the next mount");
                }
                if let Err(e) = unmounter.unmount() {
                    tracing::warn!(error = %e, "unmount refused (busy?); detaching lazily");
                    let _ = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        })
        .map_err(|e| QsfsError::io("starting the signal thread", e))?;
    // The mount's background work, started, listed (`status`) and stopped in one place.
    let workers = &handle.workers;
    workers.start(super::background::Housekeeping {
        eng: eng.clone(),
        mountpoint: mountpoint.to_path_buf(),
        read_write: !opts.read_only,
        remounted_ro: false,
        rounds: 0,
    })?;
    workers.start(super::background::Reviver { vol: vol.clone() })?;
    if !opts.read_only {
        use super::background::{LOCAL_COMMITTER, META_CHECKPOINTER, Periodic};
        workers.start(Periodic::new(eng.clone(), &LOCAL_COMMITTER))?;
        workers.start(Periodic::new(eng.clone(), &META_CHECKPOINTER))?;
    }
    // Proof-of-retrievability audits and self-healing (`[audit]`), and gc (`[gc]`), while the mount is served;
    // stopping keeps an interrupted full audit's checkpoint for next time.
    let cfg = vol.config();
    if cfg.audit.enabled {
        workers.start(crate::audit::background::AuditWorker::new(
            vol.clone(),
            cfg.audit.clone(),
        ))?;
    }
    if cfg.gc.enabled && !opts.read_only {
        workers.start(super::background::BackgroundGc::new(
            eng.clone(),
            cfg.gc.clone(),
        ))?;
    }
    let served = session.run();
    handle.serving.store(false, Ordering::Release);
    workers.stop();
    finish(&eng);
    served.map_err(|e| QsfsError::io("serving the mount", e))
}

/// The mount's kernel readahead window, in KiB.
const READAHEAD_KB: u64 = 1024;

/// Raises the mount's readahead window from the 128 KiB the kernel allows a FUSE filesystem at INIT to
/// `READAHEAD_KB`, through `/sys/class/bdi/MAJOR:MINOR/read_ahead_kb`, as FUSE tuning guides do by hand: a
/// streaming read then arrives as 1 MiB requests instead of 128 KiB ones (measured: 10–20 % faster cold reads,
/// less CPU). Root only; if it cannot be done, reads work as before. Runs on a thread of its own because it must
/// wait for INIT: the stat below blocks until the session has answered it, and INIT would undo an earlier write.
fn raise_readahead(mountpoint: PathBuf) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("qsfs-readahead-setup".into())
        .spawn(move || {
            use std::os::unix::fs::MetadataExt;
            let dev = match std::fs::metadata(&mountpoint) {
                Ok(m) => m.dev(),
                Err(e) => {
                    tracing::debug!(error = %e, "readahead left at the kernel's default");
                    return;
                }
            };
            let knob = PathBuf::from(format!(
                "/sys/class/bdi/{}:{}/read_ahead_kb",
                nix::sys::stat::major(dev),
                nix::sys::stat::minor(dev)
            ));
            match std::fs::write(&knob, READAHEAD_KB.to_string()) {
                Ok(()) => tracing::debug!(knob = %knob.display(), kib = READAHEAD_KB, "readahead raised"),
                Err(e) => tracing::debug!(knob = %knob.display(), error = %e, "readahead left at the kernel's default"),
            }
        });
}

/// After the session: everything still dirty is sealed or queued, uploads get a bounded wait, inodes unlinked
/// while open (whose release the kernel may not have sent) are deleted, garbage is collected.
fn finish(eng: &Arc<Engine>) {
    let left = eng.drain(QUEUE_DRAIN);
    eng.shutting_down.store(true, Ordering::Release);
    eng.stop_workers();
    eng.cache.stop_prefetch();
    if left > 0 {
        tracing::warn!(left, "queued segments stay queued for the next mount");
    }
    match eng.vol.meta().read(meta::orphan_inodes) {
        Ok(orphans) => {
            for ino in orphans {
                if let Err(e) = eng
                    .vol
                    .meta()
                    .write(|c| meta::delete_inode_if_unreferenced(c, ino))
                {
                    tracing::warn!(ino, error = %e, "orphan inode left for the next mount");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "orphan scan failed"),
    }
    if let Err(e) = eng.vol.meta().sync() {
        tracing::error!(error = %e, "final metadata sync failed");
    }
    if let Err(e) = eng.vol.replicate_metadata() {
        tracing::error!(error = %e, "metadata not on the stores at unmount; the next open ships it");
    }
    if let Err(e) = eng.vol.collect_garbage() {
        tracing::warn!(error = %e, "garbage collection failed; `qsfs gc` or the next mount retries");
    }
}
