//! Audits and repairs on real redis-servers: keys deleted, values overwritten or cut short (with `redis-cli`);
//! a server taken away for good (its shards rebuilt on an added server once the grace period is over, then the
//! dead server drained out of the config); a server brought back empty (never re-adopted until an admin runs
//! `qsfs store readmit`).

use std::process::Command;
use std::time::Duration;

use super::{assert_clean_full_audit, assert_detected, assert_healed, audit, num, repair, status};
use crate::helpers::tree::standard_tree;
use crate::helpers::{Redis, Vol, s, strs};

const KIB: u64 = 1024;

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli runs (it comes with redis-server)");
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The keys of a server's shards (not the metadata log's objects, kept under the same prefix).
fn shard_keys(port: u16) -> Vec<String> {
    let mut keys: Vec<String> = redis_cli(port, &["--scan", "--pattern", "qsfs:s:*"])
        .lines()
        .map(str::to_string)
        .filter(|k| !k.is_empty())
        .filter(|k| {
            let head = redis_cli(port, &["GETRANGE", k, "0", "7"]);
            !crate::helpers::stores::is_metadata_object(head.trim_end().as_bytes())
        })
        .collect();
    keys.sort();
    keys
}

fn dbsize(port: u16) -> u64 {
    redis_cli(port, &["DBSIZE"]).trim().parse().unwrap()
}

/// A 4+2 volume over the first six of `r`'s servers with the standard tree at /data.
fn volume(v: &Vol, r: &Redis) -> std::path::PathBuf {
    let stores: Vec<String> = r.servers[..6]
        .iter()
        .flat_map(|x| ["--store".to_string(), x.uri()])
        .collect();
    let mut args = vec!["--segment-size", "64KiB"];
    args.extend(strs(&stores));
    v.init(&args);
    let src = v.scratch("src").join("tree");
    standard_tree(&src, 64 * KIB, 0, 31);
    v.ok(&["put", s(&src), "/data"]);
    src
}

/// Sets `lost_store_grace` in the volume's qsfs.toml.
fn set_grace(v: &Vol, grace: &str) {
    let path = v.path.join("qsfs.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("lost_store_grace = \"15m\""), "{text}");
    std::fs::write(
        &path,
        text.replace(
            "lost_store_grace = \"15m\"",
            &format!("lost_store_grace = \"{grace}\""),
        ),
    )
    .unwrap();
}

#[test]
fn redis_damage_and_a_lost_server_are_detected_and_healed() {
    let mut r = Redis::start(7);
    let v = Vol::new();
    let src = volume(&v, &r);
    let ports: Vec<u16> = r.servers.iter().map(|x| x.port()).collect();
    let port = |i: usize| ports[i];

    // Keys deleted on one server, values overwritten on another, values cut in half on a third... but never more
    // than two servers per round, so every segment keeps K shards.
    let keys0 = shard_keys(port(0));
    for k in &keys0[..3] {
        redis_cli(port(0), &["DEL", k]);
    }
    for k in &shard_keys(port(1))[..2] {
        redis_cli(port(1), &["SETRANGE", k, "5000", "not what was stored"]);
    }
    assert_detected(&v, 3, 2);
    assert_healed(&v, &src, 5, &[]);
    assert_eq!(
        shard_keys(port(0)),
        keys0,
        "deleted keys were rebuilt under their own names"
    );

    let halve = "local v = redis.call('GET', KEYS[1]); redis.call('SET', KEYS[1], string.sub(v, 1, math.floor(#v / 2))); return 1";
    for k in &shard_keys(port(2))[..3] {
        redis_cli(port(2), &["EVAL", halve, "1", k]);
    }
    assert_detected(&v, 0, 3);
    assert_healed(&v, &src, 3, &[]);

    // Server 2 goes away for good.
    let on_2 = shard_keys(port(2)).len() as u64;
    r.kill(2);
    let (run, j) = audit(&v, &[]);
    let d = run.describe();
    run.failed();
    assert_eq!(j["stores"][2]["reachable"], false, "{d}");
    assert!(num(&j["stores"][2]["unreachable"]) > 0, "{d}");
    assert_eq!(
        num(&j["totals"]["missing"]) + num(&j["totals"]["corrupt"]),
        0,
        "{d}"
    );
    // Inside the grace period (15 minutes by default) repair leaves its shards alone.
    let (run, rep) = repair(&v, &[]);
    let d = run.describe();
    run.ok();
    assert_eq!(num(&rep["rebuilt"]), 0, "{d}");
    assert_eq!(num(&rep["waiting_stores"][0]["store_id"]), 2, "{d}");
    // Add capacity; shorten the grace period in qsfs.toml; once it has passed, the shards move to the new server.
    let added = v.ok(&["store", "add", &r.servers[6].uri()]);
    assert!(added.contains("added store 6"), "{added}");
    assert!(
        dbsize(port(6)) == 1,
        "the new store got its identity marker"
    );
    set_grace(&v, "1s");
    std::thread::sleep(Duration::from_millis(1500));
    let rep = assert_healed(&v, &src, on_2, &[]);
    assert_eq!(rep["lost_stores"], serde_json::json!([2]));
    assert_eq!(num(&rep["moved"]), on_2);
    assert_eq!(shard_keys(port(6)).len() as u64, on_2);
    let st = status(&v);
    assert_eq!(st["segments"]["healthy"], st["segments"]["total"], "{st}");
    assert_eq!(st["stores"][2]["shards"], 0, "{st}");

    // Retire the dead server: nothing left to move, so it just leaves the config.
    let dead = r.servers[2].uri();
    let out = v.ok(&["store", "drain", &dead]);
    assert!(out.contains("removed from qsfs.toml"), "{out}");
    let config = std::fs::read_to_string(v.path.join("qsfs.toml")).unwrap();
    assert!(!config.contains(&dead), "{config}");
    let st = status(&v);
    let ids: Vec<u64> = st["stores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| num(&x["id"]))
        .collect();
    assert_eq!(ids, vec![0, 1, 3, 4, 5, 6], "{st}");
    // Fewer than K+M stores would remain: refused.
    let line = v.run(&["store", "drain", &r.servers[6].uri()]).failed();
    assert!(line.contains("add one first"), "{line}");
    assert_clean_full_audit(&v);
}

#[test]
fn redis_server_back_empty_is_never_readopted_silently() {
    let mut r = Redis::start(6);
    let v = Vol::new();
    let src = volume(&v, &r);
    let port3 = r.servers[3].port();
    let on_3 = shard_keys(port3).len() as u64;
    assert!(on_3 > 0);

    // The server comes back on the same address with nothing: its data directory was lost.
    r.servers[3].kill();
    std::fs::remove_dir_all(r.servers[3].data_dir().join("appendonlydir")).unwrap();
    r.servers[3].restart().unwrap();
    assert_eq!(dbsize(port3), 0);

    let (run, j) = audit(&v, &[]);
    let d = run.describe();
    run.failed();
    assert_eq!(j["stores"][3]["reachable"], false, "{d}");
    let why = j["stores"][3]["error"].as_str().unwrap();
    assert!(why.contains("identity marker"), "{d}");
    let (run, _) = repair(&v, &[]);
    run.ok();
    // Writes go on with five stores (the default write quorum), and none reaches the store without its marker.
    let out = v.fresh_path("more.bin");
    std::fs::write(&out, b"a write with one store refused").unwrap();
    v.run(&["put", s(&out), "/more.bin"]).ok();
    assert_eq!(
        dbsize(port3),
        0,
        "nothing was written to a store without its marker"
    );

    // A store carrying another volume's marker is refused by `store add`.
    let other = Vol::new();
    other.init(&[
        "--store",
        &format!("redis://127.0.0.1:{}/1", r.servers[0].port()),
        "--store",
        &format!("redis://127.0.0.1:{}/1", r.servers[1].port()),
        "--store",
        &format!("redis://127.0.0.1:{}/1", r.servers[2].port()),
        "--data-shards",
        "2",
        "--parity-shards",
        "1",
    ]);
    let line = v
        .run(&[
            "store",
            "add",
            &format!("redis://127.0.0.1:{}/1", r.servers[0].port()),
        ])
        .failed();
    assert!(line.contains("identity marker"), "{line}");

    // The admin decides it is the same store, wiped: readmit, then repair rebuilds everything onto it.
    let out = v.ok(&["store", "readmit", &r.servers[3].uri()]);
    assert!(out.contains(&format!("{on_3} shards queued")), "{out}");
    // The marker, and (the store being up again at once) the metadata log's newest objects: no shard yet.
    assert!(dbsize(port3) >= 1, "the marker");
    assert!(shard_keys(port3).is_empty(), "no shard before the repair");
    let line = v.run(&["store", "readmit", &r.servers[3].uri()]).failed();
    assert!(line.contains("still carries"), "{line}");
    // Its old shards, and the one shard of more.bin that could not be placed while it was refused.
    assert_healed(&v, &src, on_3 + 1, &[]);
    assert_eq!(shard_keys(port3).len() as u64, on_3 + 1);
    let st = status(&v);
    assert_eq!(st["segments"]["healthy"], st["segments"]["total"], "{st}");
}
