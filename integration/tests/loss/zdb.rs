//! 0-db stores lost: six namespaces of the 0-db protocol test server, each reached through its own loopback TCP
//! forwarder on a fixed port, so one store can be "killed" (the forwarder stops listening and drops every
//! connection: connection refused, as for a dead server) and "restarted" on the same address — on its data (the
//! original server again) or empty (a fresh server holding an empty namespace of the same name).

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use qsfs_backends::testing::{ZdbServerConfig, ZdbTestServer};

use super::mounted::{Expect, lost_during_mount};
use super::{Cluster, Loss, lost_before_open};
use crate::fuse::fuse_available;
use crate::helpers::Vol;

/// A TCP forwarder from a fixed loopback port to a 0-db server; [`Forwarder::kill`] makes the port refuse
/// connections, [`Forwarder::restart`] listens on it again.
struct Forwarder {
    port: u16,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    fn start(target: SocketAddr) -> Forwarder {
        // A port below Linux's ephemeral range (32768 and up), so that no outgoing connection or other test's
        // `bind(0)` takes it while the forwarder is down between `kill` and `restart`.
        let listener = (0..200)
            .find_map(|_| TcpListener::bind(("127.0.0.1", rand::random_range(20_000..32_000))).ok())
            .expect("bind a forwarder below the ephemeral port range");
        let port = listener.local_addr().unwrap().port();
        let mut f = Forwarder {
            port,
            stop: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
            thread: None,
        };
        f.serve(listener, target);
        f
    }

    fn serve(&mut self, listener: TcpListener, target: SocketAddr) {
        listener.set_nonblocking(true).unwrap();
        self.stop = Arc::new(AtomicBool::new(false));
        let (stop, conns) = (self.stop.clone(), self.conns.clone());
        self.thread = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = TcpStream::connect(target) else {
                            continue;
                        };
                        let mut c = conns.lock().unwrap();
                        c.push(client.try_clone().unwrap());
                        c.push(server.try_clone().unwrap());
                        drop(c);
                        pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                        pipe(server, client);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            // Dropping the listener closes the port.
        }));
    }

    /// Stops listening and cuts every forwarded connection, as a killed server would.
    fn kill(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Listens on the same port again, forwarding to `target`.
    fn restart(&mut self, target: SocketAddr) {
        self.kill();
        let listener =
            TcpListener::bind(("127.0.0.1", self.port)).expect("bind the forwarder's port again");
        self.serve(listener, target);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Copies `from` to `to` on a thread until either side closes.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}

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
