//! The mount's side: accepts connections on the volume's control socket, checks who is asking, and runs each
//! request's command on a thread of its own against the mounted volume, sending its output back as frames.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use qsfs::fuse::MountHandle;

use super::{Frame, MAX_REQUEST, Request, SOCKET_FILE, VERSION};
use crate::cli::output::{Remote, with_remote};
use crate::cli::{StdoutClosed, error_line, run_in_mount};

/// The serving socket; removed (and its accept loop stopped) when dropped.
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl ControlServer {
    /// Listens on `VOLUME/control.sock` (replacing a socket a crashed mount left) and serves `mount`.
    pub fn start(mount: MountHandle) -> Result<ControlServer> {
        let path = mount.volume().root().join(SOCKET_FILE);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("serving the control socket {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making {} private", path.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("qsfs-control".into())
            .spawn(move || accept_loop(&listener, &mount, &flag))
            .context("starting the control socket's thread")?;
        Ok(ControlServer { path, stop })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag.
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: &UnixListener, mount: &MountHandle, stop: &AtomicBool) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let Ok(conn) = conn else { continue };
        let mount = mount.clone();
        let spawned = std::thread::Builder::new()
            .name("qsfs-control-conn".into())
            .spawn(move || serve(conn, &mount));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "control connection dropped: cannot start its thread");
        }
    }
}

/// Whether the peer may control this mount: the uid the mount runs as, or root.
fn peer_allowed(conn: &UnixStream) -> Result<(), String> {
    let creds = getsockopt(conn, PeerCredentials).map_err(|e| format!("peer credentials: {e}"))?;
    let owner = nix::unistd::geteuid().as_raw();
    if creds.uid() == owner || creds.uid() == 0 {
        Ok(())
    } else {
        Err(format!(
            "permission denied: only the volume's owner (uid {owner}) or root may control this mount (you are uid {})",
            creds.uid()
        ))
    }
}

fn serve(conn: UnixStream, mount: &MountHandle) {
    let cancelled = Arc::new(AtomicBool::new(false));
    let Ok(writer) = conn.try_clone() else { return };
    let remote = Remote::new(Box::new(writer), false, cancelled.clone());
    let request = peer_allowed(&conn).and_then(|()| read_request(&conn));
    // Unmounted and draining: the volume is about to be free, but not yet (its lock is still held).
    let request = request.and_then(|r| {
        if mount.is_serving() {
            Ok(r)
        } else {
            Err("the volume was unmounted and its process is finishing its uploads; try again once it has exited"
                .to_string())
        }
    });
    let request = match request {
        Ok(r) => r,
        Err(error) => {
            let _ = remote.send(&Frame::Exit {
                code: 1,
                error: Some(error),
            });
            return;
        }
    };
    // The client sends nothing after its request: end of stream means it went away (Ctrl-C).
    if let Ok(mut watch) = conn.try_clone() {
        let flag = cancelled.clone();
        let _ = std::thread::Builder::new()
            .name("qsfs-control-watch".into())
            .spawn(move || {
                let mut byte = [0u8; 1];
                while matches!(watch.read(&mut byte), Ok(n) if n > 0) {}
                flag.store(true, Ordering::Relaxed);
            });
    }
    let remote = Remote::new(Box::new(conn), request.tty, cancelled);
    let result = with_remote(remote.clone(), || run_in_mount(mount, &request.args));
    let exit = match result {
        Ok(()) => Frame::Exit {
            code: 0,
            error: None,
        },
        Err(e) if e.downcast_ref::<StdoutClosed>().is_some() => return,
        Err(e) => Frame::Exit {
            code: 1,
            error: Some(error_line(&e)),
        },
    };
    let _ = remote.send(&exit);
}

fn read_request(conn: &UnixStream) -> Result<Request, String> {
    let mut line = String::new();
    BufReader::new(conn.take(MAX_REQUEST))
        .read_line(&mut line)
        .map_err(|e| format!("reading the request: {e}"))?;
    let request: Request =
        serde_json::from_str(&line).map_err(|e| format!("unreadable request: {e}"))?;
    if request.version != VERSION {
        return Err(format!(
            "this mount speaks control protocol {VERSION}, the client {}: use the same qsfs binary for both",
            request.version
        ));
    }
    Ok(request)
}
