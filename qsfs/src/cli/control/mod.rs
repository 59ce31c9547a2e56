//! The control channel: a mounted volume serves a Unix socket in its directory (`control.sock`, owner-only), and
//! every admin command run against the volume while it is mounted goes through it — `status`, `audit`, `repair`,
//! `gc`, `fsck`, `store` — with the same output, `--json` and exit status as against an unmounted volume, because
//! the mount runs the very same command code against its open volume.
//!
//! Protocol (version 1), newline-delimited JSON: the client sends one [`Request`] (its arguments and whether its
//! stdout is a terminal); the mount answers with [`Frame`]s — output lines, progress, and a final exit frame.
//! The client's Ctrl-C closes the connection, which stops the command (not the mount) at its next check.
//!
//! Only the volume's owner (the uid the mount runs as) and root may connect: the socket file is 0600 inside the
//! 0700 volume directory, and the server checks each peer's credentials (`SO_PEERCRED`) as well.

mod client;
mod server;

pub use client::{forward_if_mounted, query};
pub use server::ControlServer;

use serde::{Deserialize, Serialize};

pub use super::output::Frame;

/// The socket's name in the volume directory.
pub const SOCKET_FILE: &str = "control.sock";
/// Protocol version; a request of another version is refused with a message naming both.
pub const VERSION: u32 = 1;
/// Longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;

/// What a client asks: run `args` (as typed after `qsfs`) against the mounted volume.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    pub args: Vec<String>,
    /// Whether the client's stdout is a terminal.
    pub tty: bool,
}
