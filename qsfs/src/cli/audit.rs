//! `qsfs audit [--full] [--store URI] [--json]`: runs one audit now, prints what each store showed, the detection
//! guarantee and the verdict, and fails (exit status 1) when anything failed verification, awaits repair or is
//! lost.

use anyhow::{Result, bail};
use qsfs::Volume;
use qsfs::audit::AuditOptions;
use qsfs::repair::admin::find_store;
use qsfs_por::{AuditMode, AuditReport, LostSegment, report::percent};

use super::format::human_bytes;
use super::progress::CountBar;

/// `qsfs audit --path P`: is each file under P still retrievable?
pub fn run_path(vol: &Volume, path: &str, full: bool, json: bool) -> Result<()> {
    let mut opts = AuditOptions::new(&vol.config().audit);
    opts.full = full;
    opts.throttle = super::output::admin_throttle();
    let r = vol.audit_path(path, &opts)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_path_report(&r)?;
    }
    if r.clean {
        return Ok(());
    }
    let bad: Vec<&str> = r
        .files
        .iter()
        .filter(|f| f.verdict != "retrievable")
        .map(|f| f.path.as_str())
        .collect();
    let unreadable = r.files.iter().any(|f| f.verdict == "unreadable");
    bail!(
        "audit of {path}: {} of {} files {} ({}); failed shards are queued for repair (run `qsfs repair`)",
        bad.len(),
        r.files.len(),
        if unreadable {
            "not retrievable now or degraded"
        } else {
            "degraded"
        },
        bad.join(", ")
    )
}

fn print_path_report(r: &qsfs::audit::PathAuditReport) -> Result<()> {
    let mode = if r.full {
        "full: every shard of every file, every byte".to_string()
    } else {
        format!(
            "sampled: a loss of δ = {} of a file's shards is caught with probability ≥ {}",
            percent(r.delta),
            percent(r.confidence)
        )
    };
    outln!(
        "audit      {} ({mode}); nonce {}…",
        r.path,
        &r.nonce[..16.min(r.nonce.len())]
    );
    outln!(
        "{:>12} {:>8} {:>7} {:>8} {:>7} {:>7} {:>7} {:>7} {:>9}  {:<12} file",
        "size",
        "segments",
        "shards",
        "checked",
        "passed",
        "missing",
        "corrupt",
        "unreach",
        "detection",
        "verdict"
    );
    for f in &r.files {
        outln!(
            "{:>12} {:>8} {:>7} {:>8} {:>7} {:>7} {:>7} {:>7} {:>9}  {:<12} {}",
            human_bytes(f.size),
            f.segments,
            f.shards,
            f.checked,
            f.passed,
            f.missing,
            f.corrupt,
            f.unreachable,
            percent(f.detection_probability),
            f.verdict,
            super::quote::quote_name(f.path.as_bytes(), super::output::stdout_is_terminal())
        );
    }
    let proven = r
        .files
        .iter()
        .filter(|f| f.verdict == "retrievable")
        .count();
    let degraded = r.files.iter().filter(|f| f.verdict == "degraded").count();
    outln!(
        "result     {proven} of {} files retrievable with every shard proven, {degraded} degraded (readable, repair \
         queued), {} unreadable now",
        r.files.len(),
        r.files.len() - proven - degraded
    );
    Ok(())
}

pub fn run(vol: &Volume, full: bool, store: Option<&str>, json: bool) -> Result<()> {
    let mut opts = AuditOptions::new(&vol.config().audit);
    opts.full = full;
    opts.throttle = super::output::admin_throttle();
    opts.store = store.map(|s| find_store(&vol.config(), s)).transpose()?;
    let pb = CountBar::new("audit", "segments");
    let report = vol.audit(&opts, &|done, total| {
        pb.set_length(total);
        pb.set_position(done);
    })?;
    pb.finish_and_clear();
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report)?;
    }
    if report.is_clean() {
        return Ok(());
    }
    let t = &report.totals;
    let mut msg = format!(
        "audit {}: {} shards failed verification ({} missing, {} corrupt, {} unreachable, {} already known bad)",
        report.verdict.label(),
        report.failures(),
        t.missing,
        t.corrupt,
        t.unreachable,
        t.known_bad
    );
    if report.queued_for_repair > 0 {
        msg.push_str(&format!(
            "; {} queued for repair (run `qsfs repair`)",
            report.queued_for_repair
        ));
    }
    let lost = LostSegment::files_with_data_loss(&report.lost);
    if !lost.is_empty() {
        msg.push_str(&format!("; DATA LOST in: {}", lost.join(", ")));
    }
    bail!(msg)
}

fn print_report(r: &AuditReport) -> Result<()> {
    let mode = match r.mode {
        AuditMode::Sampled => "sampled",
        AuditMode::Full => "full (every shard, every byte)",
    };
    let resumed = if r.resumed {
        ", resumed from its checkpoint"
    } else {
        ""
    };
    outln!(
        "audit      {mode}{resumed}; nonce {}…; {:.2} s",
        &r.nonce[..16.min(r.nonce.len())],
        r.duration_secs
    );
    let g = &r.guarantee;
    outln!(
        "guarantee  δ = {}, P = {} → c = {} shards per store",
        percent(g.delta),
        percent(g.confidence),
        g.samples_per_store
    );
    outln!("           {}", g.statement);
    outln!(
        "{:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>11} {:>9}  store",
        "id",
        "shards",
        "checked",
        "passed",
        "missing",
        "corrupt",
        "unreach",
        "known-bad",
        "read",
        "median"
    );
    for s in &r.stores {
        let median = s
            .median_latency_ms
            .map_or_else(|| "-".to_string(), |m| format!("{m:.2} ms"));
        outln!(
            "{:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>11} {:>9}  {}{}",
            s.store_id,
            s.shards,
            s.sampled,
            s.passed,
            s.missing,
            s.corrupt,
            s.unreachable,
            s.known_bad,
            human_bytes(s.bytes_read),
            median,
            s.uri,
            if s.escalated {
                "  (damage found: every shard probed)"
            } else {
                ""
            }
        );
        if let Some(e) = &s.error {
            outln!("{:>7}unreachable: {e}", "");
        }
        if r.mode == AuditMode::Sampled && s.sampled > s.unreachable {
            outln!(
                "{:>7}detection probability for a {} loss: {}",
                "",
                percent(g.delta),
                percent(s.detection_probability)
            );
        }
    }
    for l in &r.lost {
        let what = if l.is_data_loss() {
            "DATA LOST"
        } else {
            "unavailable"
        };
        outln!(
            "{what:<10} segment {} has {} of the {} shards it needs ({} more on unreachable stores): {}",
            l.segment,
            l.healthy_shards,
            l.needed,
            l.unreachable_shards,
            l.files.join(", ")
        );
    }
    if r.queued_for_repair > 0 {
        outln!(
            "repair     {} shards queued (run `qsfs repair`)",
            r.queued_for_repair
        );
    }
    outln!("result     {}", r.verdict.label().to_uppercase());
    Ok(())
}
