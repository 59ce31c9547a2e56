//! `qsfs gc [--dry-run] [--json]`: deletes recorded garbage and orphan shards, and reports per store what was (or,
//! with `--dry-run`, would be) reclaimed.

use anyhow::Result;
use qsfs::{GcReport, Volume};

use super::format::human_bytes;

pub fn run(vol: &Volume, dry_run: bool, json: bool) -> Result<()> {
    let report = vol.gc(dry_run)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report)?;
    }
    Ok(())
}

fn print_report(r: &GcReport) -> Result<()> {
    let p = &r.packs;
    if p.packs > 0 {
        outln!(
            "packs: {} holding {} of small files' data, {} of it live; {} compacted ({} moved), {} dropped",
            p.packs,
            human_bytes(p.pack_bytes),
            human_bytes(p.live_bytes),
            p.compacted,
            human_bytes(p.moved_bytes),
            p.dropped
        );
    }
    for s in &r.stores {
        let line = if r.dry_run {
            format!(
                "{} garbage shards recorded; {} orphan shards ({})",
                s.garbage_pending,
                s.orphans,
                human_bytes(s.orphan_bytes)
            )
        } else {
            format!(
                "{} garbage shards deleted ({} left); {} of {} orphan shards ({}) deleted",
                s.garbage_deleted,
                s.garbage_pending,
                s.orphans_deleted,
                s.orphans,
                human_bytes(s.orphan_bytes)
            )
        };
        outln!("store {} {}: {line}", s.store_id, s.uri);
        if let Some(note) = &s.note {
            outln!("  {note}");
        }
    }
    if r.dry_run {
        outln!("dry run: nothing deleted");
    }
    Ok(())
}
