//! `qsfs restore --store URI [--key-file FILE | --passphrase-env VAR] [--json]`: rebuilds the volume directory
//! (`--volume`, or the default) from the stores, then prints what it restored.

use std::path::PathBuf;

use anyhow::{Result, bail};
use qsfs::replica::restore::{KeyInput, RestoreOptions, restore};

pub struct Args {
    pub stores: Vec<String>,
    pub key_file: Option<PathBuf>,
    pub passphrase_env: Option<String>,
    pub take_over: bool,
    pub json: bool,
}

pub fn run(volume: PathBuf, args: Args) -> Result<()> {
    let Args {
        stores,
        key_file,
        passphrase_env,
        take_over,
        json,
    } = args;
    let key = match (key_file, passphrase_env) {
        (Some(f), None) => KeyInput::File(f),
        (None, Some(v)) => KeyInput::Passphrase(v),
        (None, None) => {
            bail!("restore needs the volume's key: --key-file FILE or --passphrase-env VAR")
        }
        (Some(_), Some(_)) => bail!("give either --key-file or --passphrase-env, not both"),
    };
    let steps = super::progress::Steps::new();
    let report = restore(
        &RestoreOptions {
            stores,
            key,
            volume,
            take_over,
        },
        &|phase, done, total| steps.step(phase, done, total),
    );
    steps.finish();
    let report = report?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        outln!(
            "restored volume {} (id {})",
            report.volume,
            report.volume_id
        );
        outln!(
            "contents  {} files, {} directories, {}",
            report.files,
            report.directories,
            super::format::human_bytes(report.bytes)
        );
        outln!(
            "metadata  snapshot {} + {} records (newest: record {}, written {})",
            report.snapshot_seq,
            report.records_applied,
            report.last_seq,
            super::format::utc_time(report.newest_record_ns)
        );
        for d in &report.stores_down {
            outln!("  down: {d}");
        }
        for d in &report.disagreements {
            outln!("  disagreed: {d}");
        }
        for f in &report.fsck_findings {
            outln!("  fsck: {f}");
        }
        match (&report.held_by, report.took_over) {
            (Some(other), true) => outln!("writer    this copy (taken over from {other})"),
            (Some(other), false) => outln!(
                "writer    {other} still holds the volume: this copy is read-only until `qsfs take-over` \
                 (or restore with --take-over), which turns that copy read-only"
            ),
            (None, _) => outln!("writer    this copy"),
        }
        if report.shards_missing > 0 {
            outln!(
                "{} shards are missing from their stores: run `qsfs repair` (a mount repairs them in the background)",
                report.shards_missing
            );
        }
    }
    if report.fsck_problems > 0 {
        bail!(
            "the restored metadata has {} fsck problems (run `qsfs fsck` for details)",
            report.fsck_problems
        );
    }
    Ok(())
}
