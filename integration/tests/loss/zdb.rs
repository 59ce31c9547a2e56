//! 0-db stores lost: six namespaces of the 0-db protocol test server, each reached through its own loopback TCP
//! forwarder on a fixed port, so one store can be "killed" (the forwarder stops listening and drops every
//! connection: connection refused, as for a dead server) and "restarted" on the same address — on its data (the
//! original server again) or empty (a fresh server holding an empty namespace of the same name).

use qsfs_backends::testing::{ZdbServerConfig, ZdbTestServer};

use super::mounted::{Expect, lost_during_mount};
use super::packs::packs_with_stores_lost;
use super::{Cluster, Loss, lost_before_open};
use crate::fuse::fuse_available;
use crate::helpers::Vol;
use crate::helpers::forwarder::Forwarder;

struct Zdb {
    server: ZdbTestServer,
    /// Servers standing in for a store restarted empty (kept alive while in use).
    fresh: Vec<ZdbTestServer>,
    fwd: Vec<Forwarder>,
}

fn ns(i: usize) -> String {
    format!("qsfs-{i}")
}

impl Zdb {
    fn new() -> Zdb {
        let server = ZdbTestServer::start(ZdbServerConfig::default()).expect("start zdb server");
        let fwd = (0..6)
            .map(|i| {
                server.create_namespace(&ns(i), None).unwrap();
                Forwarder::start(server.addr())
            })
            .collect();
        Zdb {
            server,
            fresh: Vec::new(),
            fwd,
        }
    }
}

impl Cluster for Zdb {
    fn init_args(&self) -> Vec<String> {
        (0..6)
            .flat_map(|i| {
                [
                    "--store".to_string(),
                    format!("zdb://127.0.0.1:{}/{}?mode=user", self.fwd[i].port, ns(i)),
                ]
            })
            .collect()
    }

    fn lose(&mut self, _v: &Vol, i: usize, how: Loss) {
        self.fwd[i].kill();
        match how {
            Loss::Gone => {}
            Loss::Emptied => {
                let fresh =
                    ZdbTestServer::start(ZdbServerConfig::default()).expect("start zdb server");
                fresh.create_namespace(&ns(i), None).unwrap();
                self.fwd[i].restart(fresh.addr());
                self.fresh.push(fresh);
            }
            Loss::Foreign => panic!("0-db stores are not lost as Foreign here"),
        }
    }

    fn back(&mut self, _v: &Vol, i: usize) {
        self.fwd[i].restart(self.server.addr());
    }
}

#[test]
fn loss_zdb_killed_then_emptied_then_killed_before_open() {
    lost_before_open(&mut Zdb::new(), [Loss::Gone, Loss::Emptied, Loss::Gone]);
}

#[test]
fn loss_zdb_emptied_then_killed_then_emptied_before_open() {
    lost_before_open(&mut Zdb::new(), [Loss::Emptied, Loss::Gone, Loss::Emptied]);
}

/// Two 0-db stores killed in the middle of a mount's writes, back on their data while it runs.
#[test]
fn loss_zdb_killed_during_mount_writes() {
    if !fuse_available("loss_zdb_killed_during_mount_writes") {
        return;
    }
    lost_during_mount(&mut Zdb::new(), Loss::Gone, Expect::Fail);
}

/// A 0-db store restarted empty mid-write, then a second one killed.
#[test]
fn loss_zdb_emptied_during_mount_writes() {
    if !fuse_available("loss_zdb_emptied_during_mount_writes") {
        return;
    }
    lost_during_mount(&mut Zdb::new(), Loss::Emptied, Expect::Any);
}

/// Packs with one 0-db namespace restarted empty before the mount opens, then a second one killed.
#[test]
fn loss_zdb_packs_emptied_then_killed() {
    if !fuse_available("loss_zdb_packs_emptied_then_killed") {
        return;
    }
    packs_with_stores_lost(&mut Zdb::new(), [Loss::Emptied, Loss::Gone]);
}
