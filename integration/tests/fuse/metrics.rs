//! Metrics through a real Prometheus: a mount started with `--metrics` is scraped by a `prometheus` server the
//! test starts on loopback, and Prometheus's HTTP API then answers for the series the mount's known operations
//! must have produced (creates, fsyncs, bytes written to each store, every store up).

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::fuse_available;
use super::mount::{Mount, wait_for};
use crate::helpers::Vol;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A Prometheus server scraping `target` every second; killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Prometheus {
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: qsfs\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("run prometheus (Debian package `prometheus`; the test command installs it)");
        Prometheus { child, port }
    }

    /// The first sample's value of an instant query, if the query returned any.
    fn query(&self, promql: &str) -> Option<f64> {
        let out = Command::new("curl")
            .args(["-s", "-G", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .arg("--data-urlencode")
            .arg(format!("query={promql}"))
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let first = v["data"]["result"].as_array()?.first()?.clone();
        first["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_a_mount() {
    if !fuse_available("prometheus_scrapes_a_mount") {
        return;
    }
    let v = Vol::new();
    v.init_default(&["--segment-size", "64KiB"]);
    let mp = v.scratch("mnt");
    let target = format!("127.0.0.1:{}", free_port());
    // The address from `[metrics]` in qsfs.toml (no --metrics flag).
    let config = v.path.join("qsfs.toml");
    let text = fs::read_to_string(&config).unwrap();
    fs::write(
        &config,
        format!("{text}\n[metrics]\nlisten = \"{target}\"\n"),
    )
    .unwrap();
    let m = Mount::start(&v, &mp, &[]);
    for i in 0..5 {
        let mut f = fs::File::create(m.path(&format!("f{i}"))).unwrap();
        f.write_all(&vec![i as u8; 100_000]).unwrap();
        f.sync_all().unwrap();
    }
    let prom = Prometheus::start(&v.scratch("prometheus"), &target);
    let at_least = |q: &str, want: f64| {
        let mut last = None;
        let ok = wait_for(Duration::from_secs(90), || {
            last = prom.query(q);
            last.is_some_and(|x| x >= want)
        });
        assert!(
            ok,
            "Prometheus answered {last:?} for {q} (want >= {want}); its log:\n{}",
            fs::read_to_string(v.scratch("prometheus").join("prometheus.log")).unwrap_or_default()
        );
    };
    at_least("qsfs_fuse_operations_total{op=\"create\"}", 5.0);
    at_least("qsfs_fuse_operations_total{op=\"fsync\"}", 5.0);
    at_least("count(qsfs_store_up == 1)", 6.0);
    // Every store got shards (the data compresses well, so only "some bytes" is certain).
    at_least("min(qsfs_store_written_bytes_total)", 1.0);
    at_least(
        "sum(qsfs_fuse_operation_duration_seconds_count{op=\"write\"})",
        1.0,
    );
    // Health: every segment healthy, nothing queued, and an audit's results once one ran.
    at_least("qsfs_segments{state=\"healthy\"}", 5.0);
    v.ok(&["audit"]);
    at_least("count(qsfs_audit_score_ratio == 1)", 6.0);
    at_least("qsfs_audit_last_timestamp_seconds", 1.0);
    let f = fs::read(m.path("f1")).unwrap();
    assert_eq!(f.len(), 100_000);
    at_least(
        "qsfs_read_cache_hits_total + qsfs_read_cache_misses_total",
        0.0,
    );
    drop(prom);
    m.umount();
}
