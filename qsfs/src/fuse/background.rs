//! A mount's own workers (see `crate::workers`): housekeeping (sealing idle data, collecting recorded garbage,
//! following remounts), the background gc (`[gc]`: recorded garbage and orphan shards, like `qsfs gc`), and two
//! steps on a timer (`Periodic`): the local committer, which bounds what a power loss takes from closed files, and
//! the metadata checkpointer.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::engine::Engine;
use super::mounts::find_mount;
use crate::config::GcConfig;
use crate::workers::{Next, Worker};

/// Housekeeping period.
const HOUSEKEEPING: Duration = Duration::from_millis(500);
/// The longest a local-first close stays unsynced (the loss window of a power cut; `kill -9` loses nothing).
pub const LOCAL_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// How often the metadata's write-ahead log is checkpointed in the background.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// A step the mount repeats on a timer.
pub(crate) struct Step {
    name: &'static str,
    /// What the step is for, then what it counts (`status`).
    does: &'static str,
    counts: &'static str,
    every: Duration,
    /// The step itself: true when it had something to do.
    run: fn(&Engine) -> crate::error::Result<bool>,
}

/// Syncs the metadata journal when local-first closes committed without a sync, at least every
/// `LOCAL_COMMIT_INTERVAL`: the bound on what a power loss can take from closed files. (Every half interval: a
/// close just after a sync is synced within the interval.)
pub(crate) const LOCAL_COMMITTER: Step = Step {
    name: "local committer",
    does: "syncs closed files' journal within a second",
    counts: "syncs",
    every: LOCAL_COMMIT_INTERVAL
        .checked_div(2)
        .expect("nonzero divisor"),
    run: Engine::commit_local,
};

/// Checkpoints the metadata's write-ahead log in the background (`MetaStore::checkpoint`), so that no commit of a
/// FUSE request pays for one, as SQLite's automatic checkpoint would make it.
pub(crate) const META_CHECKPOINTER: Step = Step {
    name: "metadata checkpointer",
    does: "copies the metadata's log into its database",
    counts: "checkpoints",
    every: CHECKPOINT_INTERVAL,
    run: |eng| eng.vol.meta().checkpoint(),
};

/// A `Step` run as a worker, counting the runs that did something.
pub(crate) struct Periodic {
    eng: Arc<Engine>,
    step: &'static Step,
    done: u64,
    last_error: Option<String>,
}

impl Periodic {
    pub(crate) fn new(eng: Arc<Engine>, step: &'static Step) -> Periodic {
        Periodic {
            eng,
            step,
            done: 0,
            last_error: None,
        }
    }
}

impl Worker for Periodic {
    fn name(&self) -> &'static str {
        self.step.name
    }

    fn work(&mut self, _stop: &Arc<AtomicBool>) -> Next {
        match (self.step.run)(&self.eng) {
            Ok(did) => {
                self.done += u64::from(did);
                self.last_error = None;
            }
            Err(e) => {
                // Once per run of failures: the step is retried every few hundred milliseconds.
                if self.last_error.is_none() {
                    tracing::warn!(worker = self.step.name, error = %e, "failed; will retry");
                }
                self.last_error = Some(e.to_string());
            }
        }
        Next::Idle(self.step.every)
    }

    fn status(&self) -> String {
        let done = format!("{}: {} {}", self.step.does, self.done, self.step.counts);
        match &self.last_error {
            Some(e) => format!("{done}; the last one failed: {e}"),
            None => done,
        }
    }
}

impl Engine {
    /// Syncs the metadata journal if a local-first close left it unsynced; true if it did.
    pub fn commit_local(&self) -> crate::error::Result<bool> {
        if !self
            .local_unsynced
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            return Ok(false);
        }
        self.vol.meta().sync().map(|()| true).inspect_err(|_| {
            self.local_unsynced
                .store(true, std::sync::atomic::Ordering::Release)
        })
    }
}

pub(crate) struct Housekeeping {
    pub eng: Arc<Engine>,
    pub mountpoint: PathBuf,
    /// A read-write mount follows `mount -o remount,ro|rw`; a `--read-only` one stays read-only.
    pub read_write: bool,
    pub remounted_ro: bool,
    pub rounds: u64,
}

impl Worker for Housekeeping {
    fn name(&self) -> &'static str {
        "housekeeping"
    }

    fn work(&mut self, _stop: &Arc<AtomicBool>) -> Next {
        // `mount -o remount,ro|rw` changes only the kernel's flag: follow it, so a read-only mount writes nothing
        // of its own either (uploads, access times, the metadata log).
        if self.read_write
            && let Some(m) = find_mount(&self.mountpoint)
            && m.read_only != self.remounted_ro
        {
            self.remounted_ro = m.read_only;
            self.eng.vol.follow_remount(self.remounted_ro);
        }
        self.eng.housekeeping(false);
        self.rounds += 1;
        Next::Idle(HOUSEKEEPING)
    }

    fn status(&self) -> String {
        format!(
            "seals idle data, collects recorded garbage, follows remounts: {} rounds{}",
            self.rounds,
            if self.remounted_ro {
                "; remounted read-only"
            } else {
                ""
            }
        )
    }
}

pub(crate) struct BackgroundGc {
    pub eng: Arc<Engine>,
    pub cfg: GcConfig,
    pub next: Instant,
    pub last: String,
}

impl BackgroundGc {
    pub fn new(eng: Arc<Engine>, cfg: GcConfig) -> BackgroundGc {
        BackgroundGc {
            next: Instant::now() + cfg.interval.0.mul_f64(rand::random_range(0.1..1.0)),
            eng,
            cfg,
            last: "not run yet".into(),
        }
    }
}

impl Worker for BackgroundGc {
    fn name(&self) -> &'static str {
        "gc"
    }

    fn work(&mut self, _stop: &Arc<AtomicBool>) -> Next {
        let left = self.next.saturating_duration_since(Instant::now());
        if !left.is_zero() {
            return Next::Idle(left);
        }
        self.next = Instant::now() + self.cfg.interval.0.mul_f64(rand::random_range(0.5..1.5));
        // A read-only copy deletes nothing: its gc waits for the next round.
        if self.eng.vol.check_writer().is_err() {
            self.last = "skipped: the volume is read-only here".into();
            return Next::Idle(self.cfg.interval.0);
        }
        self.last = match self.eng.vol.gc(false) {
            Ok(r) => format!(
                "last run: {} garbage and {} orphan shards deleted",
                r.stores.iter().map(|s| s.garbage_deleted).sum::<u64>(),
                r.stores.iter().map(|s| s.orphans_deleted).sum::<u64>()
            ),
            Err(e) => {
                tracing::warn!(error = %e, "background gc failed");
                format!("last run failed: {e}")
            }
        };
        Next::Idle(self.next.saturating_duration_since(Instant::now()))
    }

    fn status(&self) -> String {
        let next = self.next.saturating_duration_since(Instant::now());
        format!("{}; next in {} min", self.last, next.as_secs().div_ceil(60))
    }
}

/// How often the reviver checks the stores that are down.
const REVIVE_POLL: Duration = Duration::from_secs(5);

/// Brings stores that were marked down back as soon as they answer as themselves (each down store is asked at
/// most every `store_set::REVIVE_INTERVAL`; reads, writes and fsync ask sooner on their own paths).
pub(crate) struct Reviver {
    pub vol: Arc<crate::volume::Volume>,
}

impl Worker for Reviver {
    fn name(&self) -> &'static str {
        "store reviver"
    }

    fn work(&mut self, _stop: &Arc<AtomicBool>) -> Next {
        self.vol.io().block_on(self.vol.stores().revive_due());
        Next::Idle(REVIVE_POLL)
    }

    fn status(&self) -> String {
        let stores = self.vol.stores();
        let down = stores.slots().len() - stores.up_ids().len();
        format!("{down} stores down; {} returns so far", stores.revivals())
    }
}
