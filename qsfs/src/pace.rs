//! Keeping background work out of the way: a gauge of foreground activity that the volume's read and write paths
//! bump, a bandwidth cap (a token bucket that may go into debt, so a request larger than a second's budget still
//! passes, followed by a matching pause), and a stop flag that audits and repairs check between steps.
//!
//! Foreground priority: before each background request, [`Throttle::admit`] waits while a file read or write is
//! in flight or finished less than [`QUIET`] ago. It waits at most [`MAX_YIELD`] per request, so an audit under a
//! constant foreground load still crawls forward instead of never finishing.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{QsfsError, Result};

/// Foreground I/O this recent counts as "busy".
pub const QUIET: Duration = Duration::from_millis(200);
/// The longest one background request yields to foreground I/O.
pub const MAX_YIELD: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(25);

/// Counts file reads and writes in flight and remembers when the last one ended.
#[derive(Debug)]
pub struct ForegroundActivity {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Nanoseconds after `epoch` when the last foreground operation ended (0: never).
    last_end_ns: AtomicU64,
}

impl Default for ForegroundActivity {
    fn default() -> Self {
        ForegroundActivity {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_end_ns: AtomicU64::new(0),
        }
    }
}

impl ForegroundActivity {
    /// Marks one foreground operation as running until the guard drops.
    pub fn enter(&self) -> ForegroundGuard<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        ForegroundGuard(self)
    }

    /// Store reads and writes for files running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// True while foreground I/O runs or ended less than `quiet` ago.
    pub fn is_busy(&self, quiet: Duration) -> bool {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return true;
        }
        let last = self.last_end_ns.load(Ordering::Relaxed);
        last != 0
            && (self.epoch.elapsed().as_nanos() as u64).saturating_sub(last)
                < quiet.as_nanos() as u64
    }
}

pub struct ForegroundGuard<'a>(&'a ForegroundActivity);

impl Drop for ForegroundGuard<'_> {
    fn drop(&mut self) {
        let now = (self.0.epoch.elapsed().as_nanos() as u64).max(1);
        self.0.last_end_ns.store(now, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Bucket {
    /// Bytes that may be moved now; negative is debt to be slept off.
    tokens: f64,
    refilled: Instant,
}

/// How fast background work may go, and whether it should stop.
#[derive(Debug)]
pub struct Throttle {
    bytes_per_sec: Option<u64>,
    bucket: Mutex<Bucket>,
    foreground: Option<Arc<ForegroundActivity>>,
    stop: Arc<AtomicBool>,
}

impl Throttle {
    /// No cap, no yielding: an audit or repair an admin asked for now.
    pub fn unlimited() -> Throttle {
        Throttle::new(None, None, Arc::new(AtomicBool::new(false)))
    }

    /// No cap, no yielding, stopping when `stop` is set: an admin's request whose client may go away.
    pub fn stoppable(stop: Arc<AtomicBool>) -> Throttle {
        Throttle::new(None, None, stop)
    }

    /// A cap of `bytes_per_sec` (0 = none), yielding to `foreground`, stopping when `stop` is set.
    pub fn background(
        bytes_per_sec: u64,
        foreground: Arc<ForegroundActivity>,
        stop: Arc<AtomicBool>,
    ) -> Throttle {
        Throttle::new(
            (bytes_per_sec > 0).then_some(bytes_per_sec),
            Some(foreground),
            stop,
        )
    }

    fn new(
        bytes_per_sec: Option<u64>,
        foreground: Option<Arc<ForegroundActivity>>,
        stop: Arc<AtomicBool>,
    ) -> Throttle {
        Throttle {
            bytes_per_sec,
            bucket: Mutex::new(Bucket {
                tokens: bytes_per_sec.unwrap_or(0) as f64,
                refilled: Instant::now(),
            }),
            foreground,
            stop,
        }
    }

    /// The flag that stops the work this throttle paces.
    pub fn stop_flag(&self) -> &Arc<AtomicBool> {
        &self.stop
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Fails with `Interrupted` once stop was requested.
    pub fn check(&self, what: &str) -> Result<()> {
        if self.stopped() {
            Err(QsfsError::Interrupted(what.to_string()))
        } else {
            Ok(())
        }
    }

    /// How long moving `bytes` must wait under the cap (charging them to the bucket).
    fn charge(&self, bytes: u64) -> Duration {
        let Some(rate) = self.bytes_per_sec else {
            return Duration::ZERO;
        };
        let rate = rate as f64;
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.refilled).as_secs_f64() * rate).min(rate);
        b.refilled = now;
        b.tokens -= bytes as f64;
        if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.tokens / rate)
        }
    }

    /// Waits until `bytes` of background I/O may start: behind foreground I/O (up to [`MAX_YIELD`]) and within the
    /// bandwidth cap. Returns early with `Interrupted` when stop is requested.
    pub async fn admit(&self, bytes: u64) -> Result<()> {
        self.check("background work")?;
        if let Some(fg) = &self.foreground {
            let start = Instant::now();
            while fg.is_busy(QUIET) && start.elapsed() < MAX_YIELD {
                tokio::time::sleep(POLL).await;
                self.check("background work")?;
            }
        }
        let mut wait = self.charge(bytes);
        while !wait.is_zero() {
            let step = wait.min(Duration::from_millis(250));
            tokio::time::sleep(step).await;
            self.check("background work")?;
            wait -= step;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_second_then_paces() {
        let t = Throttle::background(
            1000,
            Arc::new(ForegroundActivity::default()),
            Arc::new(AtomicBool::new(false)),
        );
        assert_eq!(t.charge(1000), Duration::ZERO);
        let wait = t.charge(500);
        assert!(
            wait > Duration::from_millis(450) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert_eq!(Throttle::unlimited().charge(u64::MAX), Duration::ZERO);
    }

    #[test]
    fn foreground_gauge() {
        let fg = ForegroundActivity::default();
        assert!(!fg.is_busy(QUIET));
        {
            let _g = fg.enter();
            assert!(fg.is_busy(QUIET));
        }
        assert!(fg.is_busy(QUIET), "just ended");
        assert!(!fg.is_busy(Duration::ZERO));
    }

    #[test]
    fn admit_paces_and_stops() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let t = Throttle::background(
            100_000,
            Arc::new(ForegroundActivity::default()),
            stop.clone(),
        );
        let start = Instant::now();
        rt.block_on(async {
            t.admit(100_000).await.unwrap();
            t.admit(20_000).await.unwrap();
        });
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(180), "{took:?}");
        stop.store(true, Ordering::Relaxed);
        assert!(matches!(
            rt.block_on(t.admit(1)),
            Err(QsfsError::Interrupted(_))
        ));
    }

    #[test]
    fn yields_to_foreground_but_not_forever() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let fg = Arc::new(ForegroundActivity::default());
        let t = Throttle::background(0, fg.clone(), Arc::new(AtomicBool::new(false)));
        let _busy = fg.enter();
        let start = Instant::now();
        rt.block_on(t.admit(1)).unwrap();
        assert!(start.elapsed() >= MAX_YIELD, "waited for the foreground");
    }
}
