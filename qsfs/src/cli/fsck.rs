//! `qsfs fsck [--repair] [--json]`: prints what `qsfs::fsck` found; exits 1 while problems remain.

use anyhow::{Result, bail};
use qsfs::Volume;

pub fn fsck(vol: &Volume, repair: bool, json: bool) -> Result<()> {
    let report = qsfs::fsck::fsck(vol, repair)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        outln!(
            "checked {} inodes, {} segments, {} shards on their stores",
            report.inodes,
            report.segments,
            report.shards_checked
        );
        for p in &report.problems {
            let tag = if p.repaired { "repaired" } else { "problem" };
            outln!("  {tag}: {}", p.what);
        }
        for n in &report.notes {
            outln!("  note: {n}");
        }
    }
    let left = report.unrepaired();
    if left > 0 {
        bail!(
            "{left} problem{} remain{}",
            if left == 1 { "" } else { "s" },
            if repair { "" } else { " (try --repair)" }
        );
    }
    if !json {
        if report.problems.is_empty() {
            outln!("clean");
        } else {
            outln!("all problems repaired");
        }
    }
    Ok(())
}
