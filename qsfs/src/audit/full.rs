//! The full audit (scrub): every shard of the chosen stores fetched whole and its Merkle tree recomputed, in
//! batches of segments by id. After each batch its findings and a checkpoint (the last segment done and the
//! per-store counts so far) commit in one transaction, so an interrupted full audit resumes where it stopped and
//! nothing it found is lost.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use qsfs_por::Nonce;

use super::check::{Method, Tally};
use super::{FULL_CONCURRENCY, Progress, StoreWork, record_findings, run_stores};
use crate::audit::AuditOptions;
use crate::error::{QsfsError, Result};
use crate::meta::{self, Checkpoint, ShardState};
use crate::store_set::{StoreSlot, StoreState};
use crate::volume::Volume;

/// Segments per batch (and per checkpoint).
const BATCH_SEGMENTS: usize = 64;

pub(super) struct FullRun {
    pub tallies: BTreeMap<u32, Tally>,
    pub resumed: bool,
    pub started_ns: i64,
    pub nonce: Nonce,
}

/// What the checkpoint's `partial` column holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Partial {
    nonce: String,
    tallies: BTreeMap<u32, Tally>,
}

pub(super) fn run(
    vol: &Volume,
    opts: &AuditOptions,
    slots: &[Arc<StoreSlot>],
    started_ns: i64,
    progress: Progress<'_>,
) -> Result<FullRun> {
    let scope = opts
        .store
        .map_or_else(|| "all".to_string(), |s| s.to_string());
    let checkpoint = vol.meta().read(meta::load_checkpoint)?;
    let resume = checkpoint.filter(|cp| cp.scope == scope).and_then(|cp| {
        let partial: Partial = serde_json::from_str(&cp.partial).ok()?;
        let nonce = Nonce::from_hex(&partial.nonce).ok()?;
        Some((cp, partial.tallies, nonce))
    });
    let (mut after, mut tallies, nonce, started_ns, resumed) = match resume {
        Some((cp, tallies, nonce)) => (cp.done_through, tallies, nonce, cp.started_ns, true),
        None => (0, BTreeMap::new(), Nonce::random(), started_ns, false),
    };
    let by_id: HashMap<u32, &Arc<StoreSlot>> = slots.iter().map(|s| (s.id, s)).collect();
    loop {
        opts.throttle.check("full audit")?;
        let (targets, last) = vol
            .meta()
            .read(|c| meta::shard_targets_after(c, after, BATCH_SEGMENTS, opts.store))?;
        let Some(last) = last else { break };
        let mut batch: BTreeMap<u32, (Tally, Vec<_>)> = BTreeMap::new();
        for t in targets {
            let (tally, jobs) = batch.entry(t.store_id).or_default();
            if t.state != ShardState::Ok {
                tally.known_bad += 1;
                continue;
            }
            tally.shards += 1;
            match by_id.get(&t.store_id).map(|s| s.state()) {
                Some(StoreState::Up) => jobs.push((t, Method::Whole)),
                Some(StoreState::Down(reason)) => tally.add_unreachable(1, &reason),
                None => tally.add_unreachable(1, "not in this volume's config"),
            }
        }
        let mut work: Vec<StoreWork> = Vec::new();
        for (id, (tally, jobs)) in batch {
            match by_id.get(&id) {
                Some(slot) if !jobs.is_empty() => work.push((id, slot.store.clone(), jobs, tally)),
                _ => tallies.entry(id).or_default().merge(&tally),
            }
        }
        // Stopped mid-batch (`Interrupted`): the checkpoint still says where the last complete batch ended, so
        // the resumed audit checks this batch again from its start.
        let results =
            vol.io()
                .block_on(run_stores(work, opts.throttle.clone(), FULL_CONCURRENCY))?;
        let mut findings = Vec::new();
        for (id, tally, mut found) in results {
            tallies.entry(id).or_default().merge(&tally);
            findings.append(&mut found);
        }
        let partial = serde_json::to_string(&Partial {
            nonce: nonce.to_hex(),
            tallies: tallies.clone(),
        })
        .map_err(|e| QsfsError::Invalid(format!("audit checkpoint: {e}")))?;
        vol.meta().write(|c| {
            record_findings(c, &findings)?;
            meta::save_checkpoint(
                c,
                &Checkpoint {
                    scope: scope.clone(),
                    started_ns,
                    done_through: last,
                    partial: partial.clone(),
                },
            )
        })?;
        after = last;
        let (done, total) = vol.meta().read(|c| meta::segment_progress(c, after))?;
        progress(done, total);
    }
    Ok(FullRun {
        tallies,
        resumed,
        started_ns,
        nonce,
    })
}
