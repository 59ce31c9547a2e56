//! S3 stores lost: six buckets on a real Garage server, each behind its own loopback forwarder. A store "killed"
//! is its forwarder closed (connection refused, every connection cut) and later reopened on its data; a store
//! "emptied" is its bucket emptied of every object, identity marker included, behind qsfs's back.

use super::mounted::{Expect, lost_during_mount};
use super::packs::packs_with_stores_lost;
use super::{Cluster, Loss, lost_before_open};
use crate::fuse::fuse_available;
use crate::helpers::Vol;
use crate::helpers::s3::S3Buckets;

struct Buckets {
    b: S3Buckets,
}

impl Buckets {
    fn new() -> Buckets {
        Buckets {
            b: S3Buckets::start(6),
        }
    }
}

impl Cluster for Buckets {
    fn init_args(&self) -> Vec<String> {
        self.b.store_args(0..6)
    }

    fn lose(&mut self, _v: &Vol, i: usize, how: Loss) {
        match how {
            Loss::Gone => self.b.cut(i),
            Loss::Emptied => self.b.empty(i),
            Loss::Foreign => panic!("S3 stores are not lost as Foreign here"),
        }
    }

    fn back(&mut self, _v: &Vol, i: usize) {
        self.b.reconnect(i);
    }
}

#[test]
fn loss_s3_cut_then_emptied_then_cut_before_open() {
    lost_before_open(&mut Buckets::new(), [Loss::Gone, Loss::Emptied, Loss::Gone]);
}

#[test]
fn loss_s3_emptied_then_cut_then_emptied_before_open() {
    lost_before_open(
        &mut Buckets::new(),
        [Loss::Emptied, Loss::Gone, Loss::Emptied],
    );
}

/// Two S3 stores cut off in the middle of a mount's writes, back on their data while it runs.
#[test]
fn loss_s3_cut_during_mount_writes() {
    if !fuse_available("loss_s3_cut_during_mount_writes") {
        return;
    }
    lost_during_mount(&mut Buckets::new(), Loss::Gone, Expect::Fail);
}

/// A bucket emptied mid-write, then a second store cut off.
#[test]
fn loss_s3_emptied_during_mount_writes() {
    if !fuse_available("loss_s3_emptied_during_mount_writes") {
        return;
    }
    lost_during_mount(&mut Buckets::new(), Loss::Emptied, Expect::Any);
}

/// A 4+2 volume on two dir, two redis and two S3 stores, in the slot order `kinds` gives; lost stores are a
/// directory moved away, a redis-server killed, a bucket cut off (and emptied: files removed, server restarted
/// empty, bucket emptied).
struct Mixed {
    dirs: tempfile::TempDir,
    redis: crate::helpers::Redis,
    s3: S3Buckets,
    /// Which kind each slot is, and which server/bucket/directory of that kind.
    slots: Vec<(Kind, usize)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    Redis,
    S3,
}

impl Mixed {
    fn new(kinds: [Kind; 6]) -> Mixed {
        let mut seen = [0usize; 3];
        let slots = kinds
            .iter()
            .map(|&k| {
                let n = &mut seen[k as usize];
                *n += 1;
                (k, *n - 1)
            })
            .collect();
        Mixed {
            dirs: tempfile::tempdir().unwrap(),
            redis: crate::helpers::Redis::start(2),
            s3: S3Buckets::start(2),
            slots,
        }
    }

    fn dir(&self, n: usize) -> std::path::PathBuf {
        self.dirs.path().join(format!("d{n}"))
    }

    fn away(&self, n: usize) -> std::path::PathBuf {
        self.dirs.path().join(format!("away{n}"))
    }
}

impl Cluster for Mixed {
    fn init_args(&self) -> Vec<String> {
        self.slots
            .iter()
            .flat_map(|&(k, n)| {
                let uri = match k {
                    Kind::Dir => format!("dir:{}", self.dir(n).display()),
                    Kind::Redis => self.redis.servers[n].uri(),
                    Kind::S3 => self.s3.uri(n),
                };
                ["--store".to_string(), uri]
            })
            .collect()
    }

    fn lose(&mut self, _v: &Vol, i: usize, how: Loss) {
        let (kind, n) = self.slots[i];
        match (kind, how) {
            (Kind::Dir, Loss::Gone) => std::fs::rename(self.dir(n), self.away(n)).unwrap(),
            (Kind::Dir, Loss::Emptied) => {
                std::fs::remove_dir_all(self.dir(n)).unwrap();
                std::fs::create_dir(self.dir(n)).unwrap();
            }
            (Kind::Redis, Loss::Gone) => self.redis.kill(n),
            (Kind::Redis, Loss::Emptied) => {
                let srv = &mut self.redis.servers[n];
                srv.kill();
                for e in std::fs::read_dir(srv.data_dir()).unwrap() {
                    let p = e.unwrap().path();
                    if p.is_dir() {
                        std::fs::remove_dir_all(&p).unwrap();
                    } else if p.file_name().is_some_and(|f| f != "redis.log") {
                        std::fs::remove_file(&p).unwrap();
                    }
                }
                srv.restart().unwrap();
            }
            (Kind::S3, Loss::Gone) => self.s3.cut(n),
            (Kind::S3, Loss::Emptied) => self.s3.empty(n),
            (_, Loss::Foreign) => panic!("mixed stores are not lost as Foreign here"),
        }
    }

    fn back(&mut self, _v: &Vol, i: usize) {
        let (kind, n) = self.slots[i];
        match kind {
            Kind::Dir => std::fs::rename(self.away(n), self.dir(n)).unwrap(),
            Kind::Redis => self.redis.servers[n].restart().unwrap(),
            Kind::S3 => self.s3.reconnect(n),
        }
    }
}

/// Slots 1 and 4 go first (then 2): a dir and an S3 store lost together, then a redis one.
#[test]
fn loss_mixed_dir_redis_s3_dir_and_s3_lost() {
    use Kind::*;
    let mut c = Mixed::new([Dir, Dir, Redis, Redis, S3, S3]);
    lost_before_open(&mut c, [Loss::Gone, Loss::Emptied, Loss::Gone]);
}

/// The same volume with other kinds in slots 1 and 4: an S3 and a redis store lost together, then a dir.
#[test]
fn loss_mixed_dir_redis_s3_s3_and_redis_lost() {
    use Kind::*;
    let mut c = Mixed::new([Dir, S3, Dir, Redis, Redis, S3]);
    lost_before_open(&mut c, [Loss::Emptied, Loss::Gone, Loss::Gone]);
}

/// One store on a three-node Garage cluster (replication factor 3), the other five dir stores; a Garage node
/// other than the one the store talks to is killed in the middle of a mount's writes. Garage's quorums carry on
/// with two nodes of three: no write fails, the store never shows as down, and everything reads back.
#[test]
fn s3_garage_node_killed_during_mount_writes() {
    use super::mounted::{Writer, assert_files};
    use crate::fuse::mount::Mount;
    use crate::helpers::{s, strs};
    use qsfs_backends::testing::GarageServer;
    use std::time::Instant;

    if !fuse_available("s3_garage_node_killed_during_mount_writes") {
        return;
    }
    let mut g = GarageServer::start_nodes(3).expect("start a three-node garage cluster");
    g.create_bucket("qsfs-replicated").unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let mut stores: Vec<String> = (0..5)
        .flat_map(|i| {
            [
                "--store".to_string(),
                format!("dir:{}/{i}", dirs.path().display()),
            ]
        })
        .collect();
    stores.extend(["--store".to_string(), g.uri("qsfs-replicated")]);
    let v = Vol::new();
    let mut args = vec!["--segment-size", "32KiB"];
    args.extend(strs(&stores));
    v.init(&args);
    let mp = v.scratch("mnt");
    let m = Mount::start(&v, &mp, &[]);
    let w = Writer::spawn(&m.path("data"));
    let t0 = Instant::now() - std::time::Duration::from_secs(1);
    w.wait("4 files with every node up", 4, t0);
    let before = g.s3_requests_on(0).unwrap();
    g.kill_node(2);
    let t1 = Instant::now();
    w.wait("8 files after a node was killed", 8, t1);
    let writes = w.stop();
    let bad: Vec<_> = writes.iter().filter(|w| w.error.is_some()).collect();
    assert!(
        bad.is_empty(),
        "a Garage node of three died and writes failed: {bad:#?}\nmount output:\n{}\ngarage:\n{}",
        m.log_text(),
        g.log_tail(0)
    );
    let after = g.s3_requests_on(0).unwrap();
    let puts =
        |r: &std::collections::BTreeMap<String, u64>| r.get("PutObject").copied().unwrap_or(0);
    assert!(
        puts(&after) > puts(&before),
        "the S3 store took writes after the node died: {before:?} → {after:?}"
    );
    assert_files(
        &m.path("data"),
        &writes,
        "through the mount after a Garage node died",
    );
    m.umount();
    let st = v.status();
    assert!(st.unreachable().is_empty(), "no store down: {st:#?}");
    assert_eq!(st.segments.healthy, st.segments.total, "{st:#?}");
    let out = v.fresh_path("out");
    v.ok(&["get", "/data", s(&out)]);
    assert_files(&out, &writes, "through `qsfs get` after a Garage node died");
}

/// Packs with one S3 store cut off before the mount opens, then a second one emptied.
#[test]
fn loss_s3_packs_cut_then_emptied() {
    if !fuse_available("loss_s3_packs_cut_then_emptied") {
        return;
    }
    packs_with_stores_lost(&mut Buckets::new(), [Loss::Gone, Loss::Emptied]);
}
