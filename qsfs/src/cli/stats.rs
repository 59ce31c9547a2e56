//! `qsfs stats [MOUNTPOINT]`: a live view of a mount — FUSE operations per second and their latency, bytes to and
//! from the stores and their latency, the upload queue and the read cache's hit rate — one row per interval, from
//! the same counters the Prometheus endpoint serves (read through the control socket, so no `--metrics` needed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::control;

/// One reading of the mount's counters: metric name (labels dropped) → the sum over its series.
type Sample = HashMap<String, f64>;

fn parse(text: &str) -> Sample {
    let mut out = Sample::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        if let Ok(v) = value.parse::<f64>() {
            *out.entry(name.to_string()).or_default() += v;
        }
    }
    out
}

/// The volume a mountpoint serves, from the kernel's mount table.
fn volume_of(mountpoint: &Path) -> Result<PathBuf> {
    let entry = qsfs::fuse::find_mount(mountpoint)
        .filter(|m| m.is_qsfs())
        .with_context(|| format!("{} is not a qsfs mount", mountpoint.display()))?;
    entry.volume().with_context(|| {
        format!(
            "the mount at {} does not name its volume: use --volume",
            mountpoint.display()
        )
    })
}

fn snapshot(volume: &Path) -> Result<Sample> {
    match control::query(volume, &["stats", "--raw"])? {
        Some(text) => Ok(parse(&text)),
        None => bail!(
            "volume {} is not mounted: `qsfs stats` watches a running mount",
            volume.display()
        ),
    }
}

pub fn run(
    volume: &Path,
    mountpoint: Option<&Path>,
    interval: f64,
    count: Option<u64>,
) -> Result<()> {
    if !(0.1..=3600.0).contains(&interval) {
        bail!("--interval: expected 0.1 to 3600 seconds, found {interval}");
    }
    let volume = match mountpoint {
        Some(mp) => volume_of(mp)?,
        None => volume.to_path_buf(),
    };
    let mut before = snapshot(&volume)?;
    let mut at = Instant::now();
    outln!(
        "{:>8} {:>9} {:>9} | {:>9} {:>9} {:>9} {:>9} {:>8} | {:>7} {:>6}",
        "fuse",
        "fuse",
        "fuse",
        "store",
        "store in",
        "store out",
        "store",
        "store",
        "upload",
        "cache"
    );
    outln!(
        "{:>8} {:>9} {:>9} | {:>9} {:>9} {:>9} {:>9} {:>8} | {:>7} {:>6}",
        "ops/s",
        "avg ms",
        "errors/s",
        "req/s",
        "MB/s",
        "MB/s",
        "avg ms",
        "errors/s",
        "queue",
        "hits"
    );
    let mut rows = 0;
    while count.is_none_or(|c| rows < c) {
        std::thread::sleep(Duration::from_secs_f64(interval));
        let now = snapshot(&volume)?;
        let dt = at.elapsed().as_secs_f64();
        at = Instant::now();
        print_row(&before, &now, dt)?;
        before = now;
        rows += 1;
    }
    Ok(())
}

fn print_row(a: &Sample, b: &Sample, dt: f64) -> Result<()> {
    let d = |name: &str| (b.get(name).unwrap_or(&0.0) - a.get(name).unwrap_or(&0.0)).max(0.0);
    let avg_ms = |sum: &str, n: &str| {
        let n = d(n);
        if n > 0.0 { 1000.0 * d(sum) / n } else { 0.0 }
    };
    let hits = d("qsfs_read_cache_hits_total");
    let lookups = hits + d("qsfs_read_cache_misses_total");
    let hit_rate = if lookups > 0.0 {
        format!("{:.0}%", 100.0 * hits / lookups)
    } else {
        "-".into()
    };
    outln!(
        "{:>8.0} {:>9.2} {:>9.1} | {:>9.0} {:>9.1} {:>9.1} {:>9.2} {:>8.1} | {:>7} {:>6}",
        d("qsfs_fuse_operations_total") / dt,
        avg_ms(
            "qsfs_fuse_operation_duration_seconds_sum",
            "qsfs_fuse_operation_duration_seconds_count"
        ),
        d("qsfs_fuse_errors_total") / dt,
        d("qsfs_store_requests_total") / dt,
        d("qsfs_store_read_bytes_total") / dt / 1e6,
        d("qsfs_store_written_bytes_total") / dt / 1e6,
        avg_ms(
            "qsfs_store_request_duration_seconds_sum",
            "qsfs_store_request_duration_seconds_count"
        ),
        d("qsfs_store_errors_total") / dt,
        b.get("qsfs_upload_queue_segments").copied().unwrap_or(0.0),
        hit_rate
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_exposition_summing_series() {
        let s = parse(
            "# HELP x\nqsfs_store_requests_total{store=\"0\",op=\"get\"} 3\nqsfs_store_requests_total{store=\"1\",op=\"put\"} 4\nqsfs_upload_queue_segments 2\n# EOF\n",
        );
        assert_eq!(s["qsfs_store_requests_total"], 7.0);
        assert_eq!(s["qsfs_upload_queue_segments"], 2.0);
    }
}
