//! The volume's health as metrics: segments by redundancy, the repair queue, audit results, the read cache and
//! what gc reclaimed. Gauges are set (and counters advanced) from the live mount before each scrape.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::StoreLabels;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Default)]
pub struct HealthMetrics {
    /// Segments by state: `healthy` (every shard good), `degraded` (readable), `unreadable`.
    pub segments: Family<StateLabels, Gauge>,
    pub repair_queue: Gauge,
    /// Share of each store's audit checks that passed over its last audits.
    pub audit_score: Family<StoreLabels, Gauge<f64, AtomicU64>>,
    pub audit_last_failures: Gauge,
    pub audit_last_timestamp: Gauge,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_bytes: Gauge,
    pub gc_reclaimed: Counter,
}

impl HealthMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "segments",
            "Segments by state: healthy (every shard good), degraded (readable), unreadable",
            self.segments.clone(),
        );
        r.register(
            "repair_queue_shards",
            "Shards waiting to be rebuilt or moved",
            self.repair_queue.clone(),
        );
        r.register(
            "audit_score_ratio",
            "Share of a store's audit checks that passed over its last 10 audits",
            self.audit_score.clone(),
        );
        r.register(
            "audit_last_failed_shards",
            "Shards that failed verification in the last audit",
            self.audit_last_failures.clone(),
        );
        r.register_with_unit(
            "audit_last_timestamp",
            "When the last audit finished (Unix time)",
            Unit::Seconds,
            self.audit_last_timestamp.clone(),
        );
        r.register(
            "read_cache_hits",
            "Segment reads served from the read cache",
            self.cache_hits.clone(),
        );
        r.register(
            "read_cache_misses",
            "Segment reads that fetched from the stores",
            self.cache_misses.clone(),
        );
        r.register_with_unit(
            "read_cache",
            "Decoded segments held in the read cache",
            Unit::Bytes,
            self.cache_bytes.clone(),
        );
        r.register(
            "gc_reclaimed_shards",
            "Dead shards (garbage and orphans) deleted from the stores",
            self.gc_reclaimed.clone(),
        );
    }
}

/// Advances `counter` to `total` (counters only go up; the source is a running total).
pub fn advance(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}
