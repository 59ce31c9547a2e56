//! Human-readable output: `ls -l` lines and the `status` report.

use qsfs::meta::{FileKind, Inode};
use qsfs::volume::VolumeStatus;

/// One `ls -l` line; `name` is already quoted for the terminal, the symlink target is quoted here.
pub fn long_line(name: &str, inode: &Inode, target: Option<&[u8]>, tty: bool) -> String {
    let kind = match inode.kind {
        FileKind::File => '-',
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::Fifo => 'p',
        FileKind::CharDevice => 'c',
        FileKind::BlockDevice => 'b',
        FileKind::Socket => 's',
    };
    let mut line = format!(
        "{kind}{} {:>3} {:>5} {:>5} {:>12} {} {name}",
        mode_string(inode.mode),
        inode.nlink,
        inode.uid,
        inode.gid,
        inode.size,
        utc_time(inode.mtime_ns)
    );
    if let Some(t) = target {
        line.push_str(" -> ");
        line.push_str(&super::quote::quote_name(t, tty));
    }
    line
}

fn mode_string(mode: u32) -> String {
    let mut s = String::with_capacity(9);
    for (shift, special, lower, upper) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        s.push(match (mode & special != 0, x) {
            (true, true) => lower,
            (true, false) => upper,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

pub use qsfs::meta::utc_time;

pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

pub fn print_status(st: &VolumeStatus) -> anyhow::Result<()> {
    outln!("volume    {} (id {})", st.volume, st.volume_id);
    outln!(
        "layout    {} data + {} parity shards, {} segments, write quorum {}",
        st.data_shards,
        st.parity_shards,
        human_bytes(st.segment_size),
        st.write_quorum
    );
    outln!(
        "contents  {} files, {} directories, {}",
        st.files,
        st.directories,
        human_bytes(st.logical_bytes)
    );
    let s = &st.segments;
    outln!(
        "segments  {} total: {} fully redundant, {} degraded, {} unreadable",
        s.total,
        s.healthy,
        s.degraded,
        s.unreadable
    );
    if st.garbage_shards > 0 {
        outln!("garbage   {} shards awaiting deletion", st.garbage_shards);
    }
    match &st.last_audit {
        Some(a) => outln!(
            "audit     last {} audit {} UTC: {}, {} failures",
            a.mode,
            utc_time(a.finished_unix as i64 * 1_000_000_000),
            a.verdict,
            a.failures
        ),
        None => outln!("audit     never audited (run `qsfs audit`)"),
    }
    if st.repair_queue > 0 {
        outln!(
            "repair    {} shards queued (run `qsfs repair`)",
            st.repair_queue
        );
    }
    let log = &st.metadata_log;
    outln!(
        "metadata  log record {} (epoch {}, snapshot {}) on {} stores, {} changes not yet shipped",
        log.seq,
        log.epoch,
        log.snapshot_seq,
        log.stores,
        log.pending
    );
    if let Some(why) = &log.read_only {
        outln!("          {why}");
    }
    outln!("stores");
    for store in &st.stores {
        let state = if store.reachable { "up  " } else { "DOWN" };
        let free = store
            .free_bytes
            .map(|f| format!(", {} free", human_bytes(f)))
            .unwrap_or_default();
        let score = store
            .score
            .map(|s| format!(", score {:.1}%", s * 100.0))
            .unwrap_or_default();
        outln!(
            "  {:>3}  {state}  {:>8} shards  {:>10}{free}{score}  {}",
            store.id,
            store.shards,
            human_bytes(store.bytes),
            store.uri
        );
        if let Some(e) = &store.error {
            outln!("         {e}");
        }
    }
    Ok(())
}

/// The `mount` part of `status` for a mounted volume.
pub fn print_mount_status(m: &qsfs::fuse::MountStatus) -> anyhow::Result<()> {
    let q = &m.upload_queue;
    let oldest = q
        .oldest_secs
        .map_or_else(String::new, |s| format!(", oldest {s:.1} s"));
    outln!("mount");
    let lag = q
        .upload_lag_secs
        .map_or_else(String::new, |s| format!("; upload lag up to {s:.1} s"));
    outln!(
        "  uploads   {} segments queued ({}){oldest}, {} retrying{lag}",
        q.segments,
        human_bytes(q.bytes),
        q.retrying
    );
    outln!(
        "  unsealed  {} files, {} segments; {} segments sealing or uploading",
        m.dirty_files,
        m.dirty_segments,
        m.seal_jobs
    );
    let c = &m.read_cache;
    let rate = if c.hits + c.misses == 0 {
        "no reads yet".to_string()
    } else {
        format!(
            "{:.0}% hits",
            100.0 * c.hits as f64 / (c.hits + c.misses) as f64
        )
    };
    outln!(
        "  cache     {} of {}, {} hits / {} misses ({rate})",
        human_bytes(c.bytes),
        human_bytes(c.capacity),
        c.hits,
        c.misses
    );
    outln!(
        "  store I/O {} file reads/writes in flight",
        m.store_io_in_flight
    );
    outln!("workers");
    for w in &m.workers {
        outln!("  {:<13} {}", w.name, w.state);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times_and_modes() {
        assert_eq!(utc_time(0), "1970-01-01 00:00");
        assert_eq!(utc_time(1_700_000_000 * 1_000_000_000), "2023-11-14 22:13");
        assert_eq!(mode_string(0o755), "rwxr-xr-x");
        assert_eq!(mode_string(0o4755), "rwsr-xr-x");
        assert_eq!(mode_string(0o1777), "rwxrwxrwt");
    }
}
