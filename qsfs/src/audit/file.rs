//! Proof of retrievability per file (`qsfs audit --path`): the archive user's question "is *this* file still
//! retrievable?". For each file under the path, its shards are challenged across their stores — a sample large
//! enough that if δ of the file's shards were lost or damaged one would be caught with probability P, or every
//! shard when the file has fewer (with `--full`, every byte of every shard) — and each answer proven against the
//! shard's Merkle root. Failures are recorded (and so queued for repair) like any audit's.

use std::collections::{BTreeMap, HashMap};

use qsfs_por::{ChallengeStream, Guarantee, Nonce, detection_probability};
use serde::Serialize;

use super::check::{Finding, Method, Tally};
use super::{
    AuditOptions, FULL_CONCURRENCY, SAMPLE_CONCURRENCY, leaf_jobs, record_findings, run_stores,
};
use crate::error::{QsfsError, Result};
use crate::meta::{self, FileKind, ShardState, ShardTarget};
use crate::store_set::StoreState;
use crate::volume::Volume;

/// What `audit --path` found, file by file.
#[derive(Clone, Debug, Serialize)]
pub struct PathAuditReport {
    pub version: u32,
    pub path: String,
    pub full: bool,
    pub nonce: String,
    pub delta: f64,
    pub confidence: f64,
    pub files: Vec<FileAudit>,
    /// Every file retrievable, nothing failed.
    pub clean: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FileAudit {
    pub path: String,
    pub size: u64,
    pub segments: u64,
    /// Shards recorded good (the population challenged).
    pub shards: u64,
    pub checked: u64,
    pub passed: u64,
    pub missing: u64,
    pub corrupt: u64,
    pub unreachable: u64,
    /// Shards already recorded missing or damaged (queued for repair), not challenged again.
    pub known_bad: u64,
    /// Probability that a loss of δ of this file's shards would have been caught.
    pub detection_probability: f64,
    /// Segments with fewer than K shards not known bad: their bytes cannot be read now.
    pub unreadable_segments: u64,
    /// `retrievable` (every shard proven), `degraded` (readable, but shards failed or were known bad: they are
    /// queued for repair) or `unreadable` (some segment has fewer than K good shards on reachable stores).
    pub verdict: String,
}

impl Volume {
    /// Audits the file or tree at `path` (see the module docs).
    pub fn audit_path(&self, path: &str, opts: &AuditOptions) -> Result<PathAuditReport> {
        let guarantee = Guarantee::new(opts.delta, opts.confidence)
            .map_err(|e| QsfsError::Invalid(format!("audit parameters: {e}")))?;
        let files = self.files_under(path)?;
        let nonce = Nonce::random();
        let mut out = Vec::new();
        for (i, (name, ino, size)) in files.into_iter().enumerate() {
            let mut rng = ChallengeStream::new(&nonce, i as u64);
            out.push(self.audit_file(name, ino, size, opts, &guarantee, &mut rng)?);
        }
        let clean = out.iter().all(|f| f.verdict == "retrievable");
        Ok(PathAuditReport {
            version: 1,
            path: path.to_string(),
            full: opts.full,
            nonce: nonce.to_hex(),
            delta: opts.delta,
            confidence: opts.confidence,
            files: out,
            clean,
        })
    }

    /// (path, inode, size) of the regular file at `path`, or of every regular file in the tree at `path`.
    fn files_under(&self, path: &str) -> Result<Vec<(String, u64, u64)>> {
        self.meta().read(|c| {
            let ino =
                meta::resolve(c, path)?.ok_or_else(|| QsfsError::NotFound(path.to_string()))?;
            let mut out = Vec::new();
            let mut stack = vec![(path.trim_end_matches('/').to_string(), ino)];
            while let Some((name, ino)) = stack.pop() {
                let Some(inode) = meta::get_inode(c, ino)? else {
                    continue;
                };
                match inode.kind {
                    FileKind::File => out.push((name, ino, inode.size)),
                    FileKind::Dir => {
                        for e in meta::list_dir(c, ino)?.into_iter().rev() {
                            let child = format!("{name}/{}", String::from_utf8_lossy(&e.name));
                            stack.push((child, e.ino));
                        }
                    }
                    _ => {}
                }
            }
            out.sort();
            Ok(out)
        })
    }

    fn audit_file(
        &self,
        path: String,
        ino: u64,
        size: u64,
        opts: &AuditOptions,
        guarantee: &Guarantee,
        rng: &mut ChallengeStream,
    ) -> Result<FileAudit> {
        let segments = self.meta().read(|c| meta::segments_of(c, ino))?;
        // A packed segment's shards are its pack's (shared with other small files): each pack is proved once.
        let mut seen = std::collections::HashSet::new();
        let stored: Vec<&meta::SegmentRecord> = segments
            .iter()
            .map(|s| s.stored())
            .filter(|s| seen.insert(s.id))
            .collect();
        let keys: Vec<(u64, u32)> = stored
            .iter()
            .flat_map(|s| {
                s.shards
                    .iter()
                    .filter(|r| r.state == ShardState::Ok && r.store_id.is_some())
                    .map(|r| (s.id, r.index as u32))
            })
            .collect();
        let total_shards: usize = stored.iter().map(|s| s.shards.len()).sum();
        let c = guarantee.samples_per_store;
        let picked: Vec<(u64, u32)> = if opts.full || keys.len() as u64 <= c {
            keys.clone()
        } else {
            let picks = rng.shards(keys.len() as u64, c);
            picks.iter().map(|&p| keys[p as usize]).collect()
        };
        let targets = self.meta().read(|c| meta::shard_targets(c, &picked))?;
        let (mut tallies, mut findings) = self.check_targets(targets, opts, rng, c)?;
        if opts.escalate && !findings.is_empty() && picked.len() < keys.len() {
            // Damage found: every other shard of the file on the stores where it was found is probed too, so
            // one audit finds (and queues for repair) all of it, as a volume audit's escalation does.
            let (more_tallies, mut more) = self.escalate(&keys, &picked, &findings, opts, rng)?;
            for (id, t) in more_tallies {
                tallies.entry(id).or_default().merge(&t);
            }
            findings.append(&mut more);
        }
        self.meta().write(|c| record_findings(c, &findings))?;
        let mut f = FileAudit {
            path,
            size,
            segments: segments.len() as u64,
            shards: keys.len() as u64,
            known_bad: (total_shards - keys.len()) as u64,
            detection_probability: detection_probability(
                opts.delta,
                picked.len() as u64,
                keys.len() as u64,
            ),
            ..FileAudit::default()
        };
        for t in tallies.values() {
            f.checked += t.checked;
            f.passed += t.passed;
            f.missing += t.missing;
            f.corrupt += t.corrupt;
            f.unreachable += t.unreachable;
        }
        let k = self.config().data_shards;
        let up = self.stores().up_ids();
        let failed: HashMap<u64, usize> = findings.iter().fold(HashMap::new(), |mut m, x| {
            *m.entry(x.target.segment_id).or_default() += 1;
            m
        });
        for s in &segments {
            let good = s
                .shards
                .iter()
                .filter(|r| {
                    r.state == ShardState::Ok && r.store_id.is_some_and(|id| up.contains(&id))
                })
                .count()
                .saturating_sub(failed.get(&s.id).copied().unwrap_or(0));
            if good < k {
                f.unreadable_segments += 1;
            }
        }
        let failures = f.missing + f.corrupt + f.unreachable + f.known_bad;
        f.verdict = if f.unreadable_segments > 0 {
            "unreadable"
        } else if failures > 0 {
            "degraded"
        } else {
            "retrievable"
        }
        .into();
        Ok(f)
    }

    /// Probes the file's shards not yet picked on the stores where `findings` found damage.
    fn escalate(
        &self,
        keys: &[(u64, u32)],
        picked: &[(u64, u32)],
        findings: &[Finding],
        opts: &AuditOptions,
        rng: &mut ChallengeStream,
    ) -> Result<(BTreeMap<u32, Tally>, Vec<Finding>)> {
        let damaged: std::collections::HashSet<u32> =
            findings.iter().map(|f| f.target.store_id).collect();
        let picked: std::collections::HashSet<&(u64, u32)> = picked.iter().collect();
        let rest: Vec<(u64, u32)> = keys
            .iter()
            .filter(|k| !picked.contains(k))
            .copied()
            .collect();
        let targets: Vec<ShardTarget> = self
            .meta()
            .read(|c| meta::shard_targets(c, &rest))?
            .into_iter()
            .filter(|t| damaged.contains(&t.store_id))
            .collect();
        let n = targets.len() as u64;
        self.check_targets(targets, opts, rng, n)
    }

    /// Checks `targets` on their stores (stores in parallel); stores that are down count their targets as
    /// unreachable.
    fn check_targets(
        &self,
        targets: Vec<ShardTarget>,
        opts: &AuditOptions,
        rng: &mut ChallengeStream,
        budget: u64,
    ) -> Result<(BTreeMap<u32, Tally>, Vec<Finding>)> {
        let total = targets.len().max(1) as u64;
        let mut by_store: BTreeMap<u32, Vec<ShardTarget>> = BTreeMap::new();
        for t in targets {
            by_store.entry(t.store_id).or_default().push(t);
        }
        let stores = self.stores();
        let mut tallies = BTreeMap::new();
        let mut work = Vec::new();
        for (id, targets) in by_store {
            let mut tally = Tally::default();
            let slot = stores.slot(id).filter(|s| s.state() == StoreState::Up);
            let Some(slot) = slot else {
                tally.add_unreachable(targets.len() as u64, "store down");
                tallies.insert(id, tally);
                continue;
            };
            let jobs = if opts.full {
                targets.into_iter().map(|t| (t, Method::Whole)).collect()
            } else {
                // The file's c probes spread over all its shards (a small file gets several leaves per shard); a
                // store's share of the budget is its share of the shards.
                let share = (budget * targets.len() as u64).div_ceil(total);
                leaf_jobs(targets, rng, share)
            };
            work.push((id, slot.store.clone(), jobs, tally));
        }
        let concurrency = if opts.full {
            FULL_CONCURRENCY
        } else {
            SAMPLE_CONCURRENCY
        };
        let results = self
            .io()
            .block_on(run_stores(work, opts.throttle.clone(), concurrency))?;
        let mut findings = Vec::new();
        for (id, tally, mut found) in results {
            findings.append(&mut found);
            tallies.insert(id, tally);
        }
        Ok((tallies, findings))
    }
}
