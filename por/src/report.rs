//! What an audit found, in a form that serializes to the documented `qsfs audit --json` schema and is stored as
//! audit history: per store how many shards were sampled and how each check ended, the bytes read and the median
//! latency; the detection guarantee (δ, P, c); segments that can no longer be read, with their files; and the
//! verdict. Also the small accumulators an auditor fills while it runs (latency reservoir, per-store tallies).
//!
//! The verdict scale: **healthy** — every check passed and every segment has all its shards; **degraded** —
//! something failed or redundancy is reduced, but every segment can still lose at least one more shard;
//! **at risk** — some segment is one failure away from data loss, or has already lost data (listed in `lost`).

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::sampling::samples_needed;

/// Version of the report document; bumped when a field changes meaning (fields are only ever added otherwise).
pub const REPORT_VERSION: u32 = 1;

/// Latencies kept per store for the median; a uniform reservoir beyond this.
const RESERVOIR: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditMode {
    /// c random (shard, leaf) pairs per store, each proven by range reads.
    Sampled,
    /// Every shard fetched whole and its Merkle tree recomputed (a scrub).
    Full,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Healthy,
    Degraded,
    AtRisk,
}

impl Verdict {
    /// The word shown to people.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Healthy => "healthy",
            Verdict::Degraded => "degraded",
            Verdict::AtRisk => "at risk",
        }
    }

    /// Rates a volume from its weakest segment and what the audit saw. `min_margin` is the smallest number of
    /// healthy shards beyond the `k` a segment needs, over all segments (`None` with no segments); `parity` is M;
    /// `trouble` is true when any check failed or shards await repair.
    pub fn assess(min_margin: Option<i64>, parity: u64, trouble: bool) -> Verdict {
        match min_margin {
            Some(margin) if margin <= 0 => Verdict::AtRisk,
            Some(margin) if margin < parity as i64 => Verdict::Degraded,
            _ if trouble => Verdict::Degraded,
            _ => Verdict::Healthy,
        }
    }
}

/// The detection guarantee of a sampled audit: if a store has lost or damaged a fraction `delta` of its shards,
/// one audit catches it with probability at least `confidence`, by checking `samples_per_store` of them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Guarantee {
    pub delta: f64,
    pub confidence: f64,
    /// c = ⌈ln(1 − P) / ln(1 − δ)⌉.
    pub samples_per_store: u64,
    pub statement: String,
}

impl Guarantee {
    pub fn new(delta: f64, confidence: f64) -> Result<Guarantee> {
        let c = samples_needed(delta, confidence, usize::MAX)? as u64;
        let statement = format!(
            "a store that has lost or damaged at least {} of its shards is caught with probability at least {} \
             ({c} random Merkle leaves proven per store, each in a different shard; a store holding fewer than \
             {c} shards has all of them checked, its {c} probes spread over their leaves)",
            percent(delta),
            percent(confidence)
        );
        Ok(Guarantee {
            delta,
            confidence,
            samples_per_store: c,
            statement,
        })
    }
}

/// `0.01` → `1%`, `0.999` → `99.9%`.
pub fn percent(fraction: f64) -> String {
    let p = fraction * 100.0;
    let text = format!("{p:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

/// Probability that checking `sampled` distinct shards out of `population` finds a loss of a fraction `delta`:
/// 1 when all were checked, otherwise at least `1 − (1 − δ)^sampled`.
pub fn detection_probability(delta: f64, sampled: u64, population: u64) -> f64 {
    if population == 0 || sampled >= population {
        1.0
    } else {
        1.0 - (1.0 - delta).powf(sampled as f64)
    }
}

/// One store's part of an audit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreAudit {
    pub store_id: u32,
    pub uri: String,
    /// Whether the store answered during the audit.
    pub reachable: bool,
    /// Why it did not, when it did not.
    pub error: Option<String>,
    /// Shards metadata records on this store in good state (the population sampled from).
    pub shards: u64,
    /// Shards checked.
    pub sampled: u64,
    pub passed: u64,
    /// Checked and absent from the store.
    pub missing: u64,
    /// Checked and wrong: bad bytes, a bad proof, truncated, or unreadable.
    pub corrupt: u64,
    /// Could not be checked because the store did not answer.
    pub unreachable: u64,
    /// Shards already recorded bad before this audit (awaiting repair); not checked again.
    pub known_bad: u64,
    /// A sampled check failed, so every other shard of the store was probed too (one leaf each).
    pub escalated: bool,
    pub bytes_read: u64,
    /// Median time of one check (all of its reads), in milliseconds.
    pub median_latency_ms: Option<f64>,
    /// Probability this audit would have caught a loss of δ of this store's shards.
    pub detection_probability: f64,
}

impl StoreAudit {
    /// Checks that did not pass.
    pub fn failed(&self) -> u64 {
        self.missing + self.corrupt + self.unreachable
    }
}

/// A segment with fewer healthy shards than it needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostSegment {
    pub segment: u64,
    /// The files it belongs to (every name of the inode), or a note when it has none.
    pub files: Vec<String>,
    pub healthy_shards: u64,
    /// Shards recorded good on stores that are unreachable now: if enough come back, the data does too.
    pub unreachable_shards: u64,
    /// K: shards needed to read the segment.
    pub needed: u64,
}

impl LostSegment {
    /// True when the data is gone for good (not merely on stores that are down).
    pub fn is_data_loss(&self) -> bool {
        self.healthy_shards + self.unreachable_shards < self.needed
    }

    /// The files of the segments in `lost` whose data is gone for good, for messages.
    pub fn files_with_data_loss(lost: &[LostSegment]) -> Vec<&str> {
        lost.iter()
            .filter(|l| l.is_data_loss())
            .flat_map(|l| l.files.iter().map(String::as_str))
            .collect()
    }
}

/// Totals over all stores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditTotals {
    pub sampled: u64,
    pub passed: u64,
    pub missing: u64,
    pub corrupt: u64,
    pub unreachable: u64,
    pub known_bad: u64,
    pub bytes_read: u64,
}

/// The whole outcome of one audit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditReport {
    pub version: u32,
    pub mode: AuditMode,
    /// Hex nonce the challenge was drawn from (sampled audits; full audits record theirs for the history).
    pub nonce: String,
    /// Start, Unix seconds.
    pub started_unix: u64,
    pub duration_secs: f64,
    /// The audit continued an interrupted full audit from its checkpoint.
    pub resumed: bool,
    pub guarantee: Guarantee,
    pub stores: Vec<StoreAudit>,
    pub totals: AuditTotals,
    /// Shards waiting in the repair queue once the audit had recorded its findings.
    pub queued_for_repair: u64,
    /// Segments that cannot be read now.
    pub lost: Vec<LostSegment>,
    pub verdict: Verdict,
}

impl AuditReport {
    /// Sums the per-store counters into `totals`.
    pub fn total_up(&mut self) {
        let mut t = AuditTotals::default();
        for s in &self.stores {
            t.sampled += s.sampled;
            t.passed += s.passed;
            t.missing += s.missing;
            t.corrupt += s.corrupt;
            t.unreachable += s.unreachable;
            t.known_bad += s.known_bad;
            t.bytes_read += s.bytes_read;
        }
        self.totals = t;
    }

    /// Shards that failed verification in this audit or were already known bad.
    pub fn failures(&self) -> u64 {
        self.stores.iter().map(|s| s.failed() + s.known_bad).sum()
    }

    /// Nothing failed, nothing is lost and nothing awaits repair: the exit status of `qsfs audit` is zero
    /// exactly then.
    pub fn is_clean(&self) -> bool {
        self.failures() == 0 && self.lost.is_empty() && self.queued_for_repair == 0
    }
}

/// Check latencies of one store, for the median: every value up to [`RESERVOIR`], then a uniform sample (Vitter's
/// algorithm R), so memory stays fixed however many shards a full audit checks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latencies {
    seen: u64,
    /// Microseconds.
    kept: Vec<u32>,
}

impl Latencies {
    pub fn record(&mut self, micros: u64) {
        let value = micros.min(u64::from(u32::MAX)) as u32;
        self.seen += 1;
        if self.kept.len() < RESERVOIR {
            self.kept.push(value);
        } else {
            let slot = rand::random_range(0..self.seen);
            if (slot as usize) < RESERVOIR {
                self.kept[slot as usize] = value;
            }
        }
    }

    /// Folds `other` in (a resumed audit joining its checkpoint's latencies).
    pub fn merge(&mut self, other: &Latencies) {
        for &v in &other.kept {
            self.record(u64::from(v));
        }
        // The merged reservoir stands for every check, not only the kept ones.
        self.seen += other.seen.saturating_sub(other.kept.len() as u64);
    }

    pub fn median_ms(&self) -> Option<f64> {
        if self.kept.is_empty() {
            return None;
        }
        let mut v = self.kept.clone();
        v.sort_unstable();
        let mid = v.len() / 2;
        let micros = if v.len().is_multiple_of(2) {
            (f64::from(v[mid - 1]) + f64::from(v[mid])) / 2.0
        } else {
            f64::from(v[mid])
        };
        Some(micros / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_guarantee_is_459() {
        let g = Guarantee::new(0.01, 0.99).unwrap();
        assert_eq!(g.samples_per_store, 459);
        assert!(
            g.statement.contains("1%") && g.statement.contains("99%"),
            "{}",
            g.statement
        );
        assert!(Guarantee::new(0.0, 0.99).is_err());
    }

    #[test]
    fn percent_prints_short() {
        assert_eq!(percent(0.01), "1%");
        assert_eq!(percent(0.999), "99.9%");
        assert_eq!(percent(0.5), "50%");
    }

    #[test]
    fn detection_probability_meets_the_target() {
        assert!(detection_probability(0.01, 459, 1_000_000) >= 0.99);
        assert!(detection_probability(0.01, 458, 1_000_000) < 0.99);
        assert_eq!(detection_probability(0.01, 30, 30), 1.0);
        assert_eq!(detection_probability(0.01, 0, 0), 1.0);
    }

    #[test]
    fn verdicts() {
        assert_eq!(Verdict::assess(Some(2), 2, false), Verdict::Healthy);
        assert_eq!(Verdict::assess(None, 2, false), Verdict::Healthy);
        assert_eq!(Verdict::assess(Some(2), 2, true), Verdict::Degraded);
        assert_eq!(Verdict::assess(Some(1), 2, false), Verdict::Degraded);
        assert_eq!(Verdict::assess(Some(0), 2, false), Verdict::AtRisk);
        assert_eq!(Verdict::assess(Some(-1), 2, true), Verdict::AtRisk);
    }

    #[test]
    fn median_and_reservoir() {
        let mut l = Latencies::default();
        assert_eq!(l.median_ms(), None);
        for v in [3000, 1000, 2000] {
            l.record(v);
        }
        assert_eq!(l.median_ms(), Some(2.0));
        l.record(4000);
        assert_eq!(l.median_ms(), Some(2.5));
        let mut big = Latencies::default();
        for v in 0..100_000u64 {
            big.record(v % 1000);
        }
        assert_eq!(big.kept.len(), RESERVOIR);
        let m = big.median_ms().unwrap();
        assert!((0.4..0.6).contains(&m), "{m}");
        let mut merged = Latencies::default();
        merged.merge(&big);
        assert_eq!(merged.seen, 100_000);
    }
}
