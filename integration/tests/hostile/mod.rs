//! Hostile stores end to end, one store kind at a time, through the real binary: one store of a 4+2 volume answers
//! shard reads with oversized, stalled, swapped and escape-laden replies. `qsfs get` must serve the right bytes
//! within a bounded time (hedged reads around the stall, bounded reads refusing the rest) and print no raw
//! control character, and reading the tree through a FUSE mount must too; where the damage is in the store's data, `qsfs audit` names that store and `qsfs repair`
//! fixes it.
//!
//! - dir: shard files replaced by 15 TB sparse files and by FIFOs.
//! - redis and 0-db: the store sits behind a `LyingProxy` that lies on reads (stall, `$4000000000`, endless
//!   arrays, escape sequences, another shard's bytes); the audit blames the store while it lies; for the
//!   repair part the damage is made real on the server (redis: values swapped, values grown past their length;
//!   0-db: bit rot).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qsfs_backends::testing::{Lie, LyingProxy, RedisServer, ZdbServerConfig, ZdbTestServer};

use crate::audit::{assert_clean_full_audit, audit, num, repair};
use crate::helpers::stores::shard_files;
use crate::helpers::tree::{assert_same_tree, standard_tree};
use crate::helpers::{Vol, s, strs};
use crate::restore::{back_up_key, restore};

const KIB: u64 = 1024;
/// How long one `qsfs get` of the test tree may take with one store lying (a debug build on a busy 2-core
/// machine; each stalled shard read costs one hedge delay, not the 30 s response timeout x 4 attempts).
const GET_BOUND: Duration = Duration::from_secs(40);

/// A 4+2 volume of 64 KiB segments over `stores` (none: the embedded dir stores) with a standard tree at /data.
fn volume(v: &Vol, stores: &[String]) -> PathBuf {
    let mut args = vec!["--segment-size", "64KiB"];
    let store_args: Vec<String> = stores
        .iter()
        .flat_map(|u| ["--store".to_string(), u.clone()])
        .collect();
    args.extend(strs(&store_args));
    v.init(&args);
    let src = v.scratch("src").join("tree");
    standard_tree(&src, 64 * KIB, 0, 17);
    v.ok(&["put", s(&src), "/data"]);
    src
}

/// `qsfs get /data` into a fresh directory: right bytes, within `GET_BOUND`, no raw control character printed.
/// Returns how long it took.
#[track_caller]
fn get_right_bytes(v: &Vol, src: &Path, what: &str) -> Duration {
    let out = v.fresh_path(&format!("out-{}", rand::random::<u32>()));
    let start = Instant::now();
    let run = v.run(&["get", "/data", s(&out)]);
    let took = start.elapsed();
    let d = run.describe();
    let printed = format!("{}{}", run.stdout, run.stderr);
    run.ok();
    assert_same_tree(src, &out);
    assert!(took < GET_BOUND, "{what}: get took {took:?}\n{d}");
    assert!(
        !printed.chars().any(|c| c.is_control() && c != '\n'),
        "{what}: raw control characters printed:\n{d}"
    );
    eprintln!("hostile: get with {what}: {took:?}");
    took
}

/// The same tree read through a FUSE mount of the volume (fresh, so nothing is cached): right bytes within
/// `GET_BOUND`.
#[track_caller]
fn mount_reads_right_bytes(v: &Vol, src: &Path, what: &str) {
    if !crate::fuse::fuse_available("hostile mount reads") {
        return;
    }
    let mp = v.scratch("mnt");
    let m = crate::fuse::mount::Mount::start(v, &mp, &[]);
    let start = Instant::now();
    assert_same_tree(src, &m.path("data"));
    let took = start.elapsed();
    m.umount();
    assert!(
        took < GET_BOUND,
        "{what}: reading through the mount took {took:?}"
    );
    eprintln!("hostile: mount read with {what}: {took:?}");
}

/// A full audit finds damage on store `bad` only, naming its URI.
#[track_caller]
fn audit_blames_only(v: &Vol, bad: usize, uri: &str) {
    let (run, j) = audit(v, &["--full"]);
    let d = run.describe();
    run.failed();
    for st in j["stores"].as_array().unwrap() {
        // Shards a read already found bad are reported as known_bad, not read again.
        let damaged = num(&st["missing"]) + num(&st["corrupt"]) + num(&st["known_bad"]);
        if num(&st["store_id"]) == bad as u64 {
            assert!(damaged > 0, "audit found nothing on the lying store:\n{d}");
            assert_eq!(st["uri"].as_str(), Some(uri), "{d}");
        } else {
            assert_eq!(damaged, 0, "audit blames an honest store:\n{d}");
        }
    }
}

/// The audit finds damage on store `bad` only, naming its URI; repair fixes it; a full audit is then clean.
#[track_caller]
fn audit_names_and_repair_fixes(v: &Vol, src: &Path, bad: usize, uri: &str) {
    audit_blames_only(v, bad, uri);
    let (run, r) = repair(v, &[]);
    let d = run.describe();
    run.ok();
    assert!(num(&r["rebuilt"]) > 0, "{d}");
    assert_eq!(num(&r["remaining"]), 0, "{d}");
    get_right_bytes(v, src, "the repaired store");
    assert_clean_full_audit(v);
}

#[test]
fn dir_store_with_huge_and_fifo_shards() {
    let v = Vol::new();
    let src = volume(&v, &[]);
    let files = shard_files(&v.store_dir(2));
    assert!(
        files.len() >= 4,
        "too few shards on store 2: {}",
        files.len()
    );
    for (i, f) in files.iter().enumerate() {
        std::fs::remove_file(f).unwrap();
        if i % 2 == 0 {
            std::fs::File::create(f).unwrap().set_len(15 << 40).unwrap();
        } else {
            nix::unistd::mkfifo(f, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        }
    }
    get_right_bytes(&v, &src, "15 TB and FIFO shard files");
    mount_reads_right_bytes(&v, &src, "15 TB and FIFO shard files");
    let uri = format!("dir:{}", v.store_dir(2).display());
    audit_names_and_repair_fixes(&v, &src, 2, &uri);
}

/// The lies a proxy tells during reads, each followed by a `get` that must still be right and quick.
fn lies(proxy: &LyingProxy, v: &Vol, src: &Path, other_shard: Vec<u8>) {
    for lie in [
        Lie::Stall,
        Lie::HugeBulk,
        Lie::HugeArray,
        Lie::DeepArray,
        Lie::Escapes,
        Lie::Swap(other_shard),
    ] {
        proxy.set_lie(lie.clone());
        let told = proxy.lies_told();
        let what = match &lie {
            Lie::Swap(_) => "Swap".to_string(),
            l => format!("{l:?}"),
        };
        get_right_bytes(v, src, &format!("a store answering {what}"));
        mount_reads_right_bytes(v, src, &format!("a store answering {what}"));
        assert!(
            proxy.lies_told() > told,
            "{what}: the proxy was never asked"
        );
    }
    proxy.set_lie(Lie::Honest);
}

#[test]
fn redis_store_that_lies() {
    let servers: Vec<RedisServer> = (0..6).map(|_| RedisServer::start().unwrap()).collect();
    let proxy = LyingProxy::start(servers[0].addr()).unwrap();
    let mut uris: Vec<String> = servers.iter().map(|r| r.uri()).collect();
    uris[0] = format!("redis://127.0.0.1:{}/0", proxy.port());
    let v = Vol::new();
    let src = volume(&v, &uris);
    let keys = redis_shard_keys(servers[0].port());
    assert!(keys.len() >= 4, "too few shards on store 0");
    let other = redis_cli(
        servers[1].port(),
        &["GET", &redis_shard_keys(servers[1].port())[0]],
    );
    lies(&proxy, &v, &src, other.into_bytes());
    restore_while_a_store_stalls(&proxy, &v, &src, &uris[1], &uris[0]);

    // Real damage on the server: values swapped with another shard's, values grown far past their length.
    for (i, k) in keys.iter().enumerate() {
        if i % 2 == 0 {
            redis_cli(servers[0].port(), &["SETRANGE", k, "3000000", "x"]);
        } else {
            let j = (i + 1) % keys.len();
            redis_cli(servers[0].port(), &["COPY", &keys[j], k, "REPLACE"]);
        }
    }
    get_right_bytes(&v, &src, "oversized and swapped values on a redis store");
    audit_names_and_repair_fixes(&v, &src, 0, &uris[0]);
}

#[test]
fn zdb_store_that_lies() {
    let server = ZdbTestServer::start(ZdbServerConfig::default()).unwrap();
    for i in 0..6 {
        server.create_namespace(&format!("ns{i}"), None).unwrap();
    }
    let proxy = LyingProxy::start(server.addr()).unwrap();
    let mut uris: Vec<String> = (0..6)
        .map(|i| server.uri(&format!("ns{i}"), None))
        .collect();
    uris[0] = uris[0].replace(
        &format!(":{}/", server.port()),
        &format!(":{}/", proxy.port()),
    );
    let v = Vol::new();
    let src = volume(&v, &uris);
    lies(&proxy, &v, &src, vec![0x42; 70_000]);

    // While the proxy serves another shard's bytes, a full audit blames the lying store and no other.
    proxy.set_lie(Lie::Swap(vec![0x42; 70_000]));
    audit_blames_only(&v, 0, &uris[0]);
    proxy.set_lie(Lie::Honest);
    let (run, _) = repair(&v, &[]);
    run.ok();
    assert_clean_full_audit(&v);
    // Real damage on the server (bit rot in half the shards): the audit names the store, repair fixes it.
    let locs = zdb_shard_keys(&uris[0]);
    assert!(locs.len() >= 4, "too few shards on store 0");
    for key in locs.iter().step_by(2) {
        assert!(server.corrupt_value("ns0", key), "no entry to corrupt");
    }
    get_right_bytes(&v, &src, "bit rot on a 0-db store");
    audit_names_and_repair_fixes(&v, &src, 0, &uris[0]);
}

/// The keys of the data shards in the 0-db namespace `uri` names (not the metadata log's objects).
fn zdb_shard_keys(uri: &str) -> Vec<Vec<u8>> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = qsfs_backends::open_store(&qsfs_backends::StoreUri::parse(uri).unwrap(), false)
            .await
            .unwrap();
        let mut keys = Vec::new();
        for loc in store.list().await.unwrap() {
            let head = store.get(&loc, 1 << 20).await.unwrap();
            if !crate::helpers::stores::is_metadata_object(&head) {
                keys.push(loc.0);
            }
        }
        keys
    })
}

/// A new machine restores the volume from an honest store while another stalls on every read (head, log
/// records, snapshot pieces): the restore finishes within `GET_BOUND`, names the stalled store, and the restored
/// volume serves the tree.
fn restore_while_a_store_stalls(
    proxy: &LyingProxy,
    v: &Vol,
    src: &Path,
    honest_uri: &str,
    stalled_uri: &str,
) {
    // Many log records, so a restore that waited on the stalled store for each would show.
    for i in 0..30 {
        let f = v.scratch("small").join(format!("f{i}"));
        std::fs::write(&f, format!("small file {i}")).unwrap();
        v.ok(&["put", s(&f), &format!("/small-{i}")]);
    }
    let key = back_up_key(v);
    let machine = Vol::new();
    proxy.set_lie(Lie::Stall);
    let start = Instant::now();
    let run = restore(&machine, honest_uri, &key, &[]);
    let took = start.elapsed();
    proxy.set_lie(Lie::Honest);
    let d = run.describe();
    let printed = format!("{}{}", run.stdout, run.stderr);
    run.ok();
    eprintln!("hostile: restore with a stalled store: {took:?}");
    assert!(took < GET_BOUND, "restore took {took:?}\n{d}");
    assert!(
        printed.contains(stalled_uri),
        "the stalled store is not named:\n{d}"
    );
    get_right_bytes(&machine, src, "a volume restored while a store stalled");
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli runs");
    assert!(out.status.success(), "redis-cli {args:?}");
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// The shard keys of a redis server (not the metadata log's objects under the same prefix).
fn redis_shard_keys(port: u16) -> Vec<String> {
    let mut keys: Vec<String> = redis_cli(port, &["--scan", "--pattern", "qsfs:s:*"])
        .lines()
        .filter(|k| !k.is_empty())
        .filter(|k| {
            let head = redis_cli(port, &["GETRANGE", k, "0", "7"]);
            !crate::helpers::stores::is_metadata_object(head.as_bytes())
        })
        .map(str::to_string)
        .collect();
    keys.sort();
    keys
}
