//! Audits and repairs in the background of a mount: [`BackgroundAuditor`] owns one thread that, every
//! `audit.interval` on average (each wait drawn uniformly from half to one and a half times it, the first from a
//! tenth to once), runs an audit and then a repair round, paced by `audit.bandwidth` and yielding to foreground
//! reads and writes (see [`super::throttle`]).
//!
//! Which audit: an interrupted full audit (checkpoint in metadata) is resumed first; otherwise a store whose
//! sampled audit found damage gets a full audit (a scrub of that store: a sampled probe checks one leaf, the
//! scrub every byte); otherwise a sampled audit of every store. Dropping the handle (or [`BackgroundAuditor::stop`])
//! stops the thread within about a second; an interrupted full audit keeps its checkpoint.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use qsfs_por::AuditReport;

use super::{AuditOptions, Throttle, pending_full_audit};
use crate::config::AuditConfig;
use crate::error::QsfsError;
use crate::repair::{RepairOptions, RepairReport};
use crate::volume::Volume;

/// What the background thread has done so far (for logs, status and tests).
#[derive(Clone, Debug, Default)]
pub struct BackgroundState {
    /// Completed cycles (audit + repair).
    pub cycles: u64,
    pub last_audit: Option<AuditReport>,
    pub last_repair: Option<RepairReport>,
    pub last_error: Option<String>,
}

struct Shared {
    stop: Arc<AtomicBool>,
    /// Set by `run_now`; the condvar wakes the sleeping thread for it and for stop.
    kick: Mutex<bool>,
    wake: Condvar,
    state: Mutex<BackgroundState>,
}

/// Handle of the background audit thread; stops it when dropped.
pub struct BackgroundAuditor {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl BackgroundAuditor {
    /// Starts periodic audits and repairs of `vol` as `cfg` says. With `cfg.enabled` false nothing runs and the
    /// handle is inert.
    pub fn start(vol: Arc<Volume>, cfg: AuditConfig) -> BackgroundAuditor {
        let shared = Arc::new(Shared {
            stop: Arc::new(AtomicBool::new(false)),
            kick: Mutex::new(false),
            wake: Condvar::new(),
            state: Mutex::new(BackgroundState::default()),
        });
        let thread = cfg.enabled.then(|| {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("qsfs-audit".into())
                .spawn(move || run(vol, cfg, shared))
                .expect("spawning the audit thread")
        });
        BackgroundAuditor { shared, thread }
    }

    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Starts the next cycle now instead of at its scheduled time.
    pub fn run_now(&self) {
        *self.shared.kick.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.shared.wake.notify_all();
    }

    pub fn state(&self) -> BackgroundState {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A view of the thread's state that does not keep it alive (for a mount's `status`).
    pub fn watch(&self) -> AuditorWatch {
        AuditorWatch {
            shared: self.shared.clone(),
            running: self.is_running(),
        }
    }

    /// Stops the thread and waits for it (an audit in progress stops at its next check).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for BackgroundAuditor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What `BackgroundAuditor::watch` gives: the background auditor's state, read at any time.
#[derive(Clone)]
pub struct AuditorWatch {
    shared: Arc<Shared>,
    running: bool,
}

impl AuditorWatch {
    /// Whether the auditor was started (`[audit] enabled`).
    pub fn enabled(&self) -> bool {
        self.running
    }

    pub fn state(&self) -> BackgroundState {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// How a wait ended.
#[derive(PartialEq, Eq)]
enum Woken {
    Stopped,
    Kicked,
    TimedOut,
}

/// Sleeps `delay` or until kicked or stopped.
fn wait(shared: &Shared, delay: Duration) -> Woken {
    let deadline = std::time::Instant::now() + delay;
    let mut kicked = shared.kick.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return Woken::Stopped;
        }
        if *kicked {
            *kicked = false;
            return Woken::Kicked;
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return Woken::TimedOut;
        }
        kicked = shared
            .wake
            .wait_timeout(kicked, deadline - now)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// How often the background thread checks whether a down store has come back.
const REVIVAL_POLL: Duration = Duration::from_secs(5);

fn jitter(interval: Duration, low: f64, high: f64) -> Duration {
    interval.mul_f64(rand::random_range(low..high))
}

/// Waits until the next cycle is due (or kicked); false when stopped. Meanwhile, every `REVIVAL_POLL`, checks the
/// stores that are down and, when one has come back and shards wait in the repair queue, runs a repair round at
/// once: shards a write could not place on a store that was away go there as soon as it answers, not hours later.
fn wait_for_cycle(vol: &Volume, cfg: &AuditConfig, shared: &Shared, delay: Duration) -> bool {
    let deadline = std::time::Instant::now() + delay;
    let mut revivals = vol.stores().revivals();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match wait(shared, left.min(REVIVAL_POLL)) {
            Woken::Stopped => return false,
            Woken::Kicked => return true,
            Woken::TimedOut if left <= REVIVAL_POLL => return true,
            Woken::TimedOut => {}
        }
        vol.io().block_on(vol.stores().revive_due());
        let now = vol.stores().revivals();
        if now == revivals {
            continue;
        }
        revivals = now;
        let queued = vol.meta().read(crate::meta::repair_queue_len).unwrap_or(0);
        if queued > 0 {
            let throttle = background_throttle(vol, cfg, shared);
            let round = repair_round(vol, cfg, throttle);
            // Not a cycle (no audit ran): only the repair's outcome is updated.
            let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            match round {
                RepairRound::Done(report) => state.last_repair = Some(report),
                RepairRound::Failed(e) => state.last_error = Some(e),
                RepairRound::Interrupted => return false,
            }
        }
    }
}

fn background_throttle(vol: &Volume, cfg: &AuditConfig, shared: &Shared) -> Arc<Throttle> {
    Arc::new(Throttle::background(
        cfg.bandwidth.0,
        vol.foreground().clone(),
        shared.stop.clone(),
    ))
}

fn record_cycle(shared: &Shared, mut state: BackgroundState) {
    let mut shared_state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    state.cycles = shared_state.cycles + 1;
    *shared_state = state;
}

/// How a background repair round ended.
enum RepairRound {
    Done(RepairReport),
    Failed(String),
    /// The worker is stopping.
    Interrupted,
}

fn repair_round(vol: &Volume, cfg: &AuditConfig, throttle: Arc<Throttle>) -> RepairRound {
    let mut ropts = RepairOptions::new(cfg);
    ropts.workers = 2;
    ropts.throttle = throttle;
    match vol.repair(&ropts, &|_| {}) {
        Ok(report) => {
            if !report.is_complete() {
                tracing::warn!(
                    failures = report.failures.len(),
                    lost = report.lost.len(),
                    "background repair incomplete"
                );
            }
            RepairRound::Done(report)
        }
        Err(QsfsError::Interrupted(_)) => RepairRound::Interrupted,
        Err(e) => {
            tracing::warn!(error = %e, "background repair failed");
            RepairRound::Failed(e.to_string())
        }
    }
}

fn run(vol: Arc<Volume>, cfg: AuditConfig, shared: Arc<Shared>) {
    let mut scrub: VecDeque<u32> = VecDeque::new();
    let mut delay = jitter(cfg.interval.0, 0.1, 1.0);
    loop {
        if !wait_for_cycle(&vol, &cfg, &shared, delay) {
            return;
        }
        delay = jitter(cfg.interval.0, 0.5, 1.5);
        let throttle = background_throttle(&vol, &cfg, &shared);
        let mut opts = AuditOptions::new(&cfg);
        opts.throttle = throttle.clone();
        match pending_full_audit(&vol) {
            Ok(Some(scope)) => {
                opts.full = true;
                opts.store = scope;
            }
            Ok(None) => {
                if let Some(id) = scrub.pop_front() {
                    opts.full = true;
                    opts.store = Some(id);
                }
            }
            Err(e) => tracing::warn!(error = %e, "background audit: reading the checkpoint failed"),
        }
        let audit = vol.audit(&opts, &|_, _| {});
        let mut state = BackgroundState::default();
        match audit {
            Ok(report) => {
                if report.mode == qsfs_por::AuditMode::Sampled {
                    for s in report.stores.iter().filter(|s| s.missing + s.corrupt > 0) {
                        if !scrub.contains(&s.store_id) {
                            scrub.push_back(s.store_id);
                        }
                    }
                }
                if !report.is_clean() {
                    tracing::warn!(
                        verdict = report.verdict.label(),
                        failures = report.failures(),
                        "background audit found damage"
                    );
                }
                state.last_audit = Some(report);
            }
            Err(QsfsError::Interrupted(_)) => return,
            Err(e) => {
                tracing::warn!(error = %e, "background audit failed");
                state.last_error = Some(e.to_string());
            }
        }
        match repair_round(&vol, &cfg, throttle) {
            RepairRound::Done(report) => state.last_repair = Some(report),
            RepairRound::Failed(e) => state.last_error = Some(e),
            RepairRound::Interrupted => return,
        }
        record_cycle(&shared, state);
    }
}
