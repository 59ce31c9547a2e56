//! Where shards go — the one placement policy. A new segment's shards go to distinct stores that are up and not
//! being drained, rotated by segment id so load spreads when there are more stores than shards; the stores left
//! over are spares for shards whose store fails the write. A repaired shard goes back to its own store when that
//! store is fit, else to the fit store holding the fewest good shards among those holding none of its segment.

use std::collections::HashMap;
use std::sync::Arc;

use super::{StoreSet, StoreSlot};

impl StoreSet {
    /// The stores a new segment of `shards` shards goes to, in shard order, and the spares (last to be tried
    /// first at the end), for segment `segment_id`. Fewer targets than shards when fewer stores are up.
    pub(super) fn targets_for_segment(
        &self,
        segment_id: u64,
        shards: usize,
    ) -> (Vec<Arc<StoreSlot>>, Vec<Arc<StoreSlot>>) {
        let mut up: Vec<Arc<StoreSlot>> = self
            .slots
            .iter()
            .filter(|s| s.is_up() && !self.draining.contains(&s.id))
            .cloned()
            .collect();
        if up.is_empty() {
            return (up, Vec::new());
        }
        let start = (segment_id % up.len() as u64) as usize;
        up.rotate_left(start);
        let spares = up
            .split_off(shards.min(up.len()))
            .into_iter()
            .rev()
            .collect();
        (up, spares)
    }

    /// The store a repaired shard goes to: `own` when given (its own store, which the caller found fit and has
    /// not tried yet), else the store `allowed` accepts that holds the fewest good shards (`usage`), lowest id
    /// first among equals.
    pub fn repair_target(
        &self,
        own: Option<u32>,
        allowed: impl Fn(u32) -> bool,
        usage: &HashMap<u32, u64>,
    ) -> Option<u32> {
        if own.is_some() {
            return own;
        }
        self.slots
            .iter()
            .map(|s| s.id)
            .filter(|&s| allowed(s) && !self.draining.contains(&s))
            .min_by_key(|s| (usage.get(s).copied().unwrap_or(0), *s))
    }
}
