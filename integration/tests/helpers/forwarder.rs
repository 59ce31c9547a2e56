//! A loopback TCP forwarder in front of a store's server: lets a test make one store vanish (connection refused,
//! every open connection cut, as for a dead server) and come back on the same address, to the same server or
//! another one, while the server itself keeps running for the other stores.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A TCP forwarder from a fixed loopback port to a 0-db server; [`Forwarder::kill`] makes the port refuse
/// connections, [`Forwarder::restart`] listens on it again.
pub struct Forwarder {
    pub port: u16,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    pub fn start(target: SocketAddr) -> Forwarder {
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
    pub fn kill(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Listens on the same port again, forwarding to `target`.
    pub fn restart(&mut self, target: SocketAddr) {
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
