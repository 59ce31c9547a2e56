//! Placements in flight: shards written to stores whose metadata rows are not committed yet. Every path that
//! places shards (sealing a segment, a truncate's boundary segment, a repair) holds a [`Placing`] from before its
//! first write until its rows are committed or it gave up; `gc`, which deletes the shard blobs no metadata row
//! names, waits for the placements begun before it read the metadata — so a mount's upload in flight is never
//! taken for an orphan.

use std::collections::BTreeSet;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Placements {
    state: Mutex<State>,
    ended: Condvar,
}

#[derive(Default)]
struct State {
    next: u64,
    open: BTreeSet<u64>,
}

/// One placement in flight; it ends when dropped.
pub struct Placing<'a> {
    of: &'a Placements,
    ticket: u64,
}

impl Placements {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a placement.
    pub fn begin(&self) -> Placing<'_> {
        let mut s = self.lock();
        let ticket = s.next;
        s.next += 1;
        s.open.insert(ticket);
        Placing { of: self, ticket }
    }

    /// A point in time: placements begun from now on are after it.
    pub fn mark(&self) -> u64 {
        self.lock().next
    }

    /// Waits until every placement begun before `mark` has ended; false if some still run after `timeout`.
    pub fn wait_before(&self, mark: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        while s.open.first().is_some_and(|&t| t < mark) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .ended
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

impl Drop for Placing<'_> {
    fn drop(&mut self) {
        self.of.lock().open.remove(&self.ticket);
        self.of.ended.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn waits_for_placements_begun_before_the_mark_only() {
        let p = Arc::new(Placements::default());
        let early = p.begin();
        let mark = p.mark();
        let _late = p.begin();
        assert!(!p.wait_before(mark, Duration::from_millis(20)));
        let p2 = p.clone();
        let waiter = std::thread::spawn(move || p2.wait_before(mark, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(20));
        drop(early);
        assert!(
            waiter.join().unwrap(),
            "the late placement is not waited for"
        );
    }
}
