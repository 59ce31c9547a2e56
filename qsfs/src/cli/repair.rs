//! `qsfs repair [--json] [--grace DURATION]`: drains the repair queue now, with a progress bar on a terminal, and
//! fails (exit status 1) when a shard could not be repaired or data is lost.

use super::progress::CountBar;
use anyhow::{Result, bail};
use qsfs::Volume;
use qsfs::config::HumanDuration;
use qsfs::repair::{RepairOptions, RepairProgress, RepairReport};
use qsfs_por::LostSegment;

use super::format::human_bytes;

/// A bar counting `unit`s, drawn only when stdout is a terminal (so `--json` and pipes stay clean).
pub fn run(vol: &Volume, json: bool, grace: Option<HumanDuration>) -> Result<()> {
    let mut opts = RepairOptions::new(&vol.config().audit);
    opts.throttle = super::output::admin_throttle();
    if let Some(g) = grace {
        opts.grace = g.0;
    }
    let report = with_bar(|progress| vol.repair(&opts, progress))?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report)?;
    }
    fail_unless_complete(&report)
}

/// Runs `f` (a repair round) with a progress bar fed from its progress callback: shards done, bytes written.
pub fn with_bar<T>(
    f: impl FnOnce(&(dyn Fn(RepairProgress) + Sync)) -> qsfs::Result<T>,
) -> Result<T> {
    let pb = CountBar::new("repair", "shards");
    let out = f(&|p: RepairProgress| {
        pb.set_length(p.total);
        pb.set_position(p.done);
        pb.set_message(format!("repair ({} written)", human_bytes(p.bytes_written)));
    });
    pb.finish_and_clear();
    Ok(out?)
}

pub fn fail_unless_complete(r: &RepairReport) -> Result<()> {
    if r.is_complete() {
        return Ok(());
    }
    let lost = LostSegment::files_with_data_loss(&r.lost);
    if !lost.is_empty() {
        bail!(
            "repair: DATA LOST: {} segments have fewer good shards than they need, in: {}",
            r.lost.len(),
            lost.join(", ")
        );
    }
    let first = r.failures.first().map(|f| f.reason.as_str()).unwrap_or("");
    bail!(
        "repair: {} shards could not be repaired (first: {first}); {} remain queued",
        r.failures.len(),
        r.remaining
    )
}

pub fn print_report(r: &RepairReport) -> Result<()> {
    outln!(
        "repair     {} queued: {} rebuilt, {} copied ({} to another store), {} found intact",
        r.queued,
        r.rebuilt,
        r.copied,
        r.moved,
        r.verified_ok
    );
    outln!(
        "traffic    read {}, wrote {} in {:.2} s ({:.1} MB/s of repaired shards)",
        human_bytes(r.bytes_read),
        human_bytes(r.bytes_written),
        r.duration_secs,
        r.throughput_mb_s
    );
    if !r.lost_stores.is_empty() {
        let ids: Vec<String> = r.lost_stores.iter().map(u32::to_string).collect();
        outln!(
            "lost       stores {} (unreachable past the grace period): their shards were rebuilt elsewhere",
            ids.join(", ")
        );
    }
    for w in &r.waiting_stores {
        if w.unreachable_secs > 0.0 || w.reason.starts_with("unreachable") {
            outln!(
                "waiting    store {} ({}) unreachable for {:.0} s; its shards are rebuilt elsewhere after {:.0} s \
                 (audit.lost_store_grace, or `qsfs repair --grace`)",
                w.store_id,
                w.uri,
                w.unreachable_secs,
                w.lost_after_secs
            );
        } else {
            outln!("waiting    store {} ({}): {}", w.store_id, w.uri, w.reason);
        }
    }
    for l in &r.lost {
        let what = if l.is_data_loss() {
            "DATA LOST"
        } else {
            "unavailable"
        };
        outln!(
            "{what:<10} segment {}: {} of {} shards verified: {}",
            l.segment,
            l.healthy_shards,
            l.needed,
            l.files.join(", ")
        );
    }
    for f in r.failures.iter().take(20) {
        outln!(
            "failed     segment {} shard {}: {}",
            f.segment,
            f.index,
            f.reason
        );
    }
    if r.failures.len() > 20 {
        outln!("failed     … and {} more", r.failures.len() - 20);
    }
    outln!("remaining  {} shards in the repair queue", r.remaining);
    Ok(())
}
