//! Redis stores lost: six real redis-servers on free loopback ports (append-only, fsync always). A server
//! SIGKILLed (connection refused; restarted later on its own data), or restarted empty (killed, its data files
//! removed, started again: it answers, without the volume's identity marker). The same over TLS (`rediss://`,
//! each server with its own test CA).

use std::fs;

use super::mounted::{Expect, lost_during_mount};
use super::packs::packs_with_stores_lost;
use super::{Cluster, Loss, lost_before_open};
use crate::fuse::fuse_available;
use crate::helpers::{Redis, Vol};

struct Servers {
    r: Redis,
}

impl Servers {
    fn new() -> Servers {
        Servers { r: Redis::start(6) }
    }

    fn tls() -> Servers {
        Servers {
            r: Redis::start_tls(6),
        }
    }
}

impl Cluster for Servers {
    fn init_args(&self) -> Vec<String> {
        self.r.store_args(0)
    }

    fn lose(&mut self, _v: &Vol, i: usize, how: Loss) {
        let srv = &mut self.r.servers[i];
        srv.kill();
        match how {
            Loss::Gone => {}
            Loss::Emptied => {
                // Everything but the log and the TLS files: the append-only directory (and any snapshot) goes.
                for e in fs::read_dir(srv.data_dir()).unwrap() {
                    let p = e.unwrap().path();
                    let keep = p.file_name().is_some_and(|n| n == "redis.log")
                        || p.extension().is_some_and(|x| {
                            ["crt", "key", "ext"].contains(&x.to_str().unwrap_or(""))
                        });
                    if keep {
                        continue;
                    }
                    if p.is_dir() {
                        fs::remove_dir_all(&p).unwrap();
                    } else {
                        fs::remove_file(&p).unwrap();
                    }
                }
                srv.restart().expect("restart redis-server empty");
            }
            Loss::Foreign => panic!("redis stores are not lost as Foreign here"),
        }
    }

    fn back(&mut self, _v: &Vol, i: usize) {
        self.r.servers[i]
            .restart()
            .expect("restart redis-server on its data");
    }
}

#[test]
fn loss_redis_killed_then_flushed_then_killed_before_open() {
    lost_before_open(&mut Servers::new(), [Loss::Gone, Loss::Emptied, Loss::Gone]);
}

#[test]
fn loss_rediss_killed_then_flushed_then_killed_before_open() {
    lost_before_open(&mut Servers::tls(), [Loss::Gone, Loss::Emptied, Loss::Gone]);
}

#[test]
fn loss_redis_flushed_then_killed_then_flushed_before_open() {
    lost_before_open(
        &mut Servers::new(),
        [Loss::Emptied, Loss::Gone, Loss::Emptied],
    );
}

/// Two redis-servers SIGKILLed in the middle of a mount's writes, restarted on their data while it runs.
#[test]
fn loss_redis_killed_during_mount_writes() {
    if !fuse_available("loss_redis_killed_during_mount_writes") {
        return;
    }
    lost_during_mount(&mut Servers::new(), Loss::Gone, Expect::Fail);
}

/// A redis-server restarted empty mid-write (the mount may reconnect and go on writing to it), then a second one
/// killed.
#[test]
fn loss_redis_flushed_during_mount_writes() {
    if !fuse_available("loss_redis_flushed_during_mount_writes") {
        return;
    }
    lost_during_mount(&mut Servers::new(), Loss::Emptied, Expect::Any);
}

/// Packs with one redis-server killed before the mount opens, then a second one restarted empty.
#[test]
fn loss_redis_packs_killed_then_flushed() {
    if !fuse_available("loss_redis_packs_killed_then_flushed") {
        return;
    }
    packs_with_stores_lost(&mut Servers::new(), [Loss::Gone, Loss::Emptied]);
}
