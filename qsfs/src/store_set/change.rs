//! Changing a live volume's stores: a `StoreSet` is never changed in place — a mount's readers and writers hold
//! it — but copied with a store added, set draining or removed, and the volume swaps the copy in. Slots are
//! shared between the copies, so what each store's slot knows (up or down, latency) carries over.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use qsfs_backends::ShardStore;

use super::{StoreSet, StoreSlot};

impl StoreSet {
    fn copy_with(
        &self,
        slots: Vec<Arc<StoreSlot>>,
        draining: std::collections::HashSet<u32>,
    ) -> StoreSet {
        StoreSet {
            slots,
            revive_interval: self.revive_interval,
            revivals: AtomicU64::new(self.revivals.load(Ordering::Relaxed)),
            draining,
        }
    }

    /// This set plus store `id` at `uri` (its identity marker already written).
    pub fn with_added(
        &self,
        id: u32,
        uri: String,
        store: Arc<dyn ShardStore>,
        volume_id: &str,
    ) -> StoreSet {
        let mut slots = self.slots.clone();
        slots.push(Arc::new(StoreSlot::new(id, uri, store, volume_id)));
        self.copy_with(slots, self.draining.clone())
    }

    /// This set with no new shard placed on store `id` (it is being drained).
    pub fn with_draining(&self, id: u32) -> StoreSet {
        let mut draining = self.draining.clone();
        draining.insert(id);
        self.copy_with(self.slots.clone(), draining)
    }

    /// The stores no new shard goes to.
    pub fn draining_ids(&self) -> std::collections::HashSet<u32> {
        self.draining.clone()
    }

    /// This set placing shards on store `id` again (a drain that failed or left shards behind).
    pub fn not_draining(&self, id: u32) -> StoreSet {
        let mut draining = self.draining.clone();
        draining.remove(&id);
        self.copy_with(self.slots.clone(), draining)
    }

    /// This set without store `id` (drained and retired).
    pub fn without(&self, id: u32) -> StoreSet {
        let slots = self.slots.iter().filter(|s| s.id != id).cloned().collect();
        let mut draining = self.draining.clone();
        draining.remove(&id);
        self.copy_with(slots, draining)
    }
}
