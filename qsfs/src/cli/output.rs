//! Where a command's output goes. Normally the process's stdout; for a command that a mount runs on behalf of a
//! client of its control socket (see `control`), that client: command output, progress and the result travel
//! back as frames, and the client's terminal decides how they are shown.
//!
//! The choice is per thread (a control connection runs its command on a thread of its own); progress bars
//! capture the destination when they are made, so callbacks from other threads report to the right place.

use std::cell::RefCell;
use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// One message from a mount to a control client.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Frame {
    /// Command output (stdout), whole lines.
    Out(String),
    /// A progress bar's state.
    Progress {
        label: String,
        unit: String,
        done: u64,
        total: u64,
    },
    /// The command ended: exit status and, for a failure, its one-line message.
    Exit { code: u8, error: Option<String> },
}

/// The client side of one control connection, as the command running for it sees it.
#[derive(Clone)]
pub struct Remote {
    frames: Arc<Mutex<Box<dyn Write + Send>>>,
    /// Whether the client's stdout is a terminal (decides quoting and progress bars there).
    tty: bool,
    /// Set when the client went away (Ctrl-C): the command stops at its next check.
    cancelled: Arc<AtomicBool>,
}

impl Remote {
    pub fn new(sink: Box<dyn Write + Send>, tty: bool, cancelled: Arc<AtomicBool>) -> Remote {
        Remote {
            frames: Arc::new(Mutex::new(sink)),
            tty,
            cancelled,
        }
    }

    /// Sends one frame; a client that is gone marks the command cancelled.
    pub fn send(&self, frame: &Frame) -> io::Result<()> {
        let mut line = serde_json::to_vec(frame).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut sink = self.frames.lock().unwrap_or_else(|p| p.into_inner());
        let sent = sink.write_all(&line).and_then(|()| sink.flush());
        if sent.is_err() {
            self.cancelled.store(true, Ordering::Relaxed);
        }
        sent
    }
}

/// The pace of an audit or repair an admin asked for: unthrottled, and for a control client, stopped when the
/// client goes away (Ctrl-C stops the operation, not the mount).
pub fn admin_throttle() -> Arc<qsfs::audit::Throttle> {
    Arc::new(match remote() {
        Some(r) => qsfs::audit::Throttle::stoppable(r.cancelled.clone()),
        None => qsfs::audit::Throttle::unlimited(),
    })
}

thread_local! {
    static REMOTE: RefCell<Option<Remote>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's command output going to `remote`.
pub fn with_remote<T>(remote: Remote, f: impl FnOnce() -> T) -> T {
    REMOTE.with(|r| *r.borrow_mut() = Some(remote));
    let out = f();
    REMOTE.with(|r| *r.borrow_mut() = None);
    out
}

/// The client this thread's command runs for, if any.
pub fn remote() -> Option<Remote> {
    REMOTE.with(|r| r.borrow().clone())
}

/// Writes one line of command output (what `outln!` calls).
pub fn write_line(args: std::fmt::Arguments<'_>) -> io::Result<()> {
    match remote() {
        Some(r) => r.send(&Frame::Out(format!("{args}\n"))),
        None => writeln!(io::stdout(), "{args}"),
    }
}

/// Whether command output ends up on a terminal (the client's, for a remote command).
pub fn stdout_is_terminal() -> bool {
    match remote() {
        Some(r) => r.tty,
        None => io::stdout().is_terminal(),
    }
}
