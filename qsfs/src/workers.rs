//! Background work as workers: each long-running task of a mount (housekeeping, audit and repair, gc) is a
//! [`Worker`] that does one unit of work per call and says what to do next; a [`Workers`] set starts each on a
//! thread of its own, lists what each is doing, wakes one on demand and stops them all — in one place. A worker
//! that cannot be started is an error for the caller, never a task silently missing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{QsfsError, Result};

/// What a worker wants after a unit of work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// More to do right away.
    Busy,
    /// Nothing to do for this long (or until woken).
    Idle(Duration),
    /// Finished for good.
    Done,
}

/// One kind of background work.
pub trait Worker: Send + 'static {
    fn name(&self) -> &'static str;
    /// Does one unit of work. `stop` is set when the worker must stop: long units check it between steps (the
    /// throttles of audits and repairs carry it).
    fn work(&mut self, stop: &Arc<AtomicBool>) -> Next;
    /// One line for `status`: what it is doing, or did last.
    fn status(&self) -> String;
}

/// A worker as `status` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerStatus {
    pub name: String,
    /// `busy`, `idle` or `done`.
    pub state: String,
    pub status: String,
}

struct Shared {
    stop: Arc<AtomicBool>,
    /// Set by `wake`; the condvar ends an idle wait early for it and for stop.
    woken: Mutex<bool>,
    wake: Condvar,
    state: Mutex<(&'static str, String)>,
}

struct Handle {
    name: &'static str,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A set of running workers; stops them all when dropped.
#[derive(Default)]
pub struct Workers {
    handles: Mutex<Vec<Handle>>,
}

impl Workers {
    pub fn new() -> Workers {
        Workers::default()
    }

    /// Starts `worker` on a thread of its own.
    pub fn start(&self, mut worker: impl Worker) -> Result<()> {
        let name = worker.name();
        let shared = Arc::new(Shared {
            stop: Arc::new(AtomicBool::new(false)),
            woken: Mutex::new(false),
            wake: Condvar::new(),
            state: Mutex::new(("idle", worker.status())),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("qsfs-{name}"))
            .spawn(move || run(&mut worker, &s))
            .map_err(|e| QsfsError::io(format!("starting the {name} worker"), e))?;
        self.lock().push(Handle {
            name,
            shared,
            thread: Some(thread),
        });
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Handle>> {
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every worker, in the order started.
    pub fn list(&self) -> Vec<WorkerStatus> {
        self.lock()
            .iter()
            .map(|h| {
                let (state, status) = h
                    .shared
                    .state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                WorkerStatus {
                    name: h.name.to_string(),
                    state: state.to_string(),
                    status,
                }
            })
            .collect()
    }

    /// Ends the idle wait of the worker called `name` now.
    pub fn wake(&self, name: &str) {
        for h in self.lock().iter().filter(|h| h.name == name) {
            *h.shared.woken.lock().unwrap_or_else(|p| p.into_inner()) = true;
            h.shared.wake.notify_all();
        }
    }

    /// Stops every worker and waits for each to finish its current unit.
    pub fn stop(&self) {
        let mut handles = std::mem::take(&mut *self.lock());
        for h in &handles {
            h.shared.stop.store(true, Ordering::Release);
            h.shared.wake.notify_all();
        }
        for h in &mut handles {
            if let Some(t) = h.thread.take() {
                // The set may be dropped by one of its own workers (the last owner of what holds it went away on
                // that thread): it is finishing anyway, and joining itself would panic.
                if t.thread().id() != std::thread::current().id() {
                    let _ = t.join();
                }
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(worker: &mut impl Worker, shared: &Shared) {
    let set = |state: &'static str, status: String| {
        *shared.state.lock().unwrap_or_else(|p| p.into_inner()) = (state, status);
    };
    while !shared.stop.load(Ordering::Acquire) {
        set("busy", worker.status());
        let next = worker.work(&shared.stop);
        match next {
            Next::Busy => continue,
            Next::Done => {
                set("done", worker.status());
                return;
            }
            Next::Idle(delay) => {
                set("idle", worker.status());
                idle(shared, delay);
            }
        }
    }
}

/// Sleeps `delay`, or until woken or stopped.
fn idle(shared: &Shared, delay: Duration) {
    let deadline = Instant::now() + delay;
    let mut woken = shared.woken.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if shared.stop.load(Ordering::Acquire) || std::mem::take(&mut *woken) {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        woken = shared
            .wake
            .wait_timeout(woken, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    struct Counter(Arc<AtomicU64>);

    impl Worker for Counter {
        fn name(&self) -> &'static str {
            "counter"
        }
        fn work(&mut self, _stop: &Arc<AtomicBool>) -> Next {
            self.0.fetch_add(1, Ordering::Relaxed);
            Next::Idle(Duration::from_secs(3600))
        }
        fn status(&self) -> String {
            format!("{} units", self.0.load(Ordering::Relaxed))
        }
    }

    #[test]
    fn workers_run_list_wake_and_stop() {
        let n = Arc::new(AtomicU64::new(0));
        let w = Workers::new();
        w.start(Counter(n.clone())).unwrap();
        let wait_for = |want: u64| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while n.load(Ordering::Relaxed) < want {
                assert!(Instant::now() < deadline, "worker did not run");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        wait_for(1);
        w.wake("counter");
        wait_for(2);
        let listed = w.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name, "counter");
        let start = Instant::now();
        w.stop();
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "stop waits out an idle hour"
        );
        assert!(w.list().is_empty());
    }
}
