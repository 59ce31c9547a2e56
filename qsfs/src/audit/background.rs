//! Audits and repairs in the background of a mount: [`AuditWorker`] (a [`Worker`]) that, every
//! `audit.interval` on average (each wait drawn uniformly from half to one and a half times it, the first from a
//! tenth to once), runs an audit and then a repair round, paced by `audit.bandwidth` and yielding to foreground
//! reads and writes (see [`crate::pace`]).
//!
//! Which audit: an interrupted full audit (checkpoint in metadata) is resumed first; otherwise a store whose
//! sampled audit found damage gets a full audit (a scrub of that store: a sampled probe checks one leaf, the
//! scrub every byte); otherwise a sampled audit of every store. A mount runs it among its workers;
//! [`BackgroundAuditor`] runs it alone. Stopping it takes about a second; an interrupted full audit keeps its
//! checkpoint.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qsfs_por::AuditReport;

use super::{AuditOptions, Throttle, pending_full_audit};
use crate::config::AuditConfig;
use crate::error::{QsfsError, Result};
use crate::repair::{RepairOptions, RepairReport};
use crate::volume::Volume;
use crate::workers::{Next, Worker, Workers};

/// What the background thread has done so far (for logs, status and tests).
#[derive(Clone, Debug, Default)]
pub struct BackgroundState {
    /// Completed cycles (audit + repair).
    pub cycles: u64,
    pub last_audit: Option<AuditReport>,
    pub last_repair: Option<RepairReport>,
    pub last_error: Option<String>,
}

/// Handle of a background auditor run as a worker of its own; stops it when dropped.
pub struct BackgroundAuditor {
    workers: Workers,
    state: Arc<Mutex<BackgroundState>>,
    kick: Arc<AtomicBool>,
    running: bool,
}

impl BackgroundAuditor {
    /// Starts periodic audits and repairs of `vol` as `cfg` says. With `cfg.enabled` false nothing runs and the
    /// handle is inert.
    pub fn start(vol: Arc<Volume>, cfg: AuditConfig) -> Result<BackgroundAuditor> {
        let workers = Workers::new();
        let worker = AuditWorker::new(vol, cfg.clone());
        let (state, kick) = (worker.state.clone(), worker.kick.clone());
        if cfg.enabled {
            workers.start(worker)?;
        }
        Ok(BackgroundAuditor {
            workers,
            state,
            kick,
            running: cfg.enabled,
        })
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Starts the next cycle now instead of at its scheduled time.
    pub fn run_now(&self) {
        self.kick.store(true, Ordering::Release);
        self.workers.wake(AUDIT_WORKER);
    }

    pub fn state(&self) -> BackgroundState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops the worker and waits for it (an audit in progress stops at its next check).
    pub fn stop(self) {
        self.workers.stop();
    }
}

/// The worker's name in `status`.
pub const AUDIT_WORKER: &str = "audit/repair";

/// Audits and repairs as a [`Worker`]: each unit either checks whether a down store came back (and repairs what
/// waited for it) or, when a cycle is due, runs an audit and a repair round.
pub struct AuditWorker {
    vol: Arc<Volume>,
    cfg: AuditConfig,
    scrub: VecDeque<u32>,
    next_cycle: Instant,
    revivals: u64,
    /// Set to run the next cycle now (`run_now`).
    kick: Arc<AtomicBool>,
    state: Arc<Mutex<BackgroundState>>,
}

impl AuditWorker {
    pub fn new(vol: Arc<Volume>, cfg: AuditConfig) -> AuditWorker {
        let revivals = vol.stores().revivals();
        AuditWorker {
            next_cycle: Instant::now() + jitter(cfg.interval.0, 0.1, 1.0),
            vol,
            cfg,
            scrub: VecDeque::new(),
            revivals,
            kick: Arc::new(AtomicBool::new(false)),
            state: Arc::new(Mutex::new(BackgroundState::default())),
        }
    }
}

impl Worker for AuditWorker {
    fn name(&self) -> &'static str {
        AUDIT_WORKER
    }

    fn work(&mut self, stop: &Arc<AtomicBool>) -> Next {
        let now = Instant::now();
        if now < self.next_cycle && !self.kick.swap(false, Ordering::AcqRel) {
            if !self.repair_if_store_back(stop) {
                return Next::Done;
            }
            let left = self.next_cycle.saturating_duration_since(Instant::now());
            return Next::Idle(left.min(REVIVAL_POLL));
        }
        self.next_cycle = now + jitter(self.cfg.interval.0, 0.5, 1.5);
        match self.cycle(stop) {
            Some(state) => {
                record_cycle(&self.state, state);
                Next::Idle(REVIVAL_POLL)
            }
            None => Next::Done,
        }
    }

    fn status(&self) -> String {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let last = match (&st.last_audit, &st.last_error) {
            (_, Some(e)) => format!("last error: {e}"),
            (Some(r), None) => format!("last audit: {}", r.verdict.label()),
            (None, None) => "no audit yet".into(),
        };
        let next = self.next_cycle.saturating_duration_since(Instant::now());
        format!(
            "{} cycles; {last}; next in {} min",
            st.cycles,
            next.as_secs().div_ceil(60)
        )
    }
}

/// How often the background thread checks whether a down store has come back.
const REVIVAL_POLL: Duration = Duration::from_secs(5);

fn jitter(interval: Duration, low: f64, high: f64) -> Duration {
    interval.mul_f64(rand::random_range(low..high))
}

impl AuditWorker {
    /// Checks the stores that are down and, when one has come back and shards wait in the repair queue, runs a
    /// repair round at once: shards a write could not place on a store that was away go there as soon as it
    /// answers, not hours later. False when stopped.
    fn repair_if_store_back(&mut self, stop: &Arc<AtomicBool>) -> bool {
        let vol = &self.vol;
        vol.io().block_on(vol.stores().revive_due());
        let now = vol.stores().revivals();
        if now == self.revivals {
            return true;
        }
        self.revivals = now;
        let queued = vol.meta().read(crate::meta::repair_queue_len).unwrap_or(0);
        if queued == 0 {
            return true;
        }
        let throttle = background_throttle(vol, &self.cfg, stop);
        let round = repair_round(vol, &self.cfg, throttle);
        // Not a cycle (no audit ran): only the repair's outcome is updated.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match round {
            RepairRound::Done(report) => state.last_repair = Some(report),
            RepairRound::Failed(e) => state.last_error = Some(e),
            RepairRound::Interrupted => return false,
        }
        true
    }

    /// One cycle: an audit (which one: see the module docs), then a repair round. `None` when stopped.
    fn cycle(&mut self, stop: &Arc<AtomicBool>) -> Option<BackgroundState> {
        let vol = &self.vol;
        let throttle = background_throttle(vol, &self.cfg, stop);
        let mut opts = AuditOptions::new(&self.cfg);
        opts.throttle = throttle.clone();
        match pending_full_audit(vol) {
            Ok(Some(scope)) => {
                opts.full = true;
                opts.store = scope;
            }
            Ok(None) => {
                if let Some(id) = self.scrub.pop_front() {
                    opts.full = true;
                    opts.store = Some(id);
                }
            }
            Err(e) => tracing::warn!(error = %e, "background audit: reading the checkpoint failed"),
        }
        let mut state = BackgroundState::default();
        match vol.audit(&opts, &|_, _| {}) {
            Ok(report) => {
                if report.mode == qsfs_por::AuditMode::Sampled {
                    for s in report.stores.iter().filter(|s| s.missing + s.corrupt > 0) {
                        if !self.scrub.contains(&s.store_id) {
                            self.scrub.push_back(s.store_id);
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
            Err(QsfsError::Interrupted(_)) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "background audit failed");
                state.last_error = Some(e.to_string());
            }
        }
        match repair_round(vol, &self.cfg, throttle) {
            RepairRound::Done(report) => state.last_repair = Some(report),
            RepairRound::Failed(e) => state.last_error = Some(e),
            RepairRound::Interrupted => return None,
        }
        Some(state)
    }
}

fn background_throttle(vol: &Volume, cfg: &AuditConfig, stop: &Arc<AtomicBool>) -> Arc<Throttle> {
    Arc::new(Throttle::background(
        cfg.bandwidth.0,
        vol.foreground().clone(),
        stop.clone(),
    ))
}

fn record_cycle(shared: &Mutex<BackgroundState>, mut state: BackgroundState) {
    let mut shared_state = shared.lock().unwrap_or_else(|p| p.into_inner());
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
