//! The client side: when the volume is mounted, an admin command is sent to the mount and its frames shown here
//! (output to stdout, progress as a bar on a terminal), ending with the command's exit status.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use super::{Frame, Request, SOCKET_FILE, VERSION};
use crate::cli::progress::local_count_bar;
use crate::cli::stdout_error;

/// Connects to the mount serving `volume` and sends it `args`: `None` when nothing serves the volume's control
/// socket (never mounted, a crashed mount's socket file, or a volume path too long for a socket address).
fn send(volume: &Path, args: Vec<String>, tty: bool) -> Result<Option<(UnixStream, PathBuf)>> {
    let path = volume.join(SOCKET_FILE);
    let stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::InvalidInput
            ) =>
        {
            return Ok(None);
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("connecting to the mount at {}", path.display()));
        }
    };
    let request = Request {
        version: VERSION,
        args,
        tty,
    };
    let mut line = serde_json::to_vec(&request)?;
    line.push(b'\n');
    // A mount that refuses the caller answers without reading the request: its answer is still there to read.
    if let Err(e) = (&stream).write_all(&line)
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(e)
            .with_context(|| format!("sending the command to the mount at {}", path.display()));
    }
    Ok(Some((stream, path)))
}

/// Runs this process's command in the mount serving `volume`, if there is one: `Ok(false)` when nothing serves
/// the volume's control socket (the caller then opens the volume itself), `Ok(true)` when the command ran there
/// and succeeded, the command's error when it failed.
pub fn forward_if_mounted(volume: &Path) -> Result<bool> {
    let args = std::env::args().skip(1).collect::<Vec<_>>();
    match send(volume, args, std::io::stdout().is_terminal())? {
        Some((stream, path)) => show_frames(&stream, &path),
        None => Ok(false),
    }
}

/// Runs `args` in the mount serving `volume` and returns its output; `Ok(None)` when no mount serves it.
pub fn query(volume: &Path, args: &[&str]) -> Result<Option<String>> {
    let args = args.iter().map(|a| a.to_string()).collect();
    let Some((stream, path)) = send(volume, args, false)? else {
        return Ok(None);
    };
    let mut out = String::new();
    for line in BufReader::new(&stream).lines() {
        let line = line.with_context(|| format!("reading from the mount at {}", path.display()))?;
        match serde_json::from_str::<Frame>(&line)? {
            Frame::Out(text) => out.push_str(&text),
            Frame::Progress { .. } => {}
            Frame::Exit { code: 0, .. } => return Ok(Some(out)),
            Frame::Exit { error, .. } => {
                return Err(anyhow!(error.unwrap_or_else(|| "the mount refused".into())));
            }
        }
    }
    bail!(
        "the mount at {} closed the connection early",
        path.display()
    )
}

/// Shows the mount's frames until the exit frame; the command's own result.
fn show_frames(stream: &UnixStream, path: &Path) -> Result<bool> {
    let mut bar: Option<indicatif::ProgressBar> = None;
    let tty = std::io::stdout().is_terminal();
    for line in BufReader::new(stream).lines() {
        let line = line.with_context(|| format!("reading from the mount at {}", path.display()))?;
        let frame: Frame = serde_json::from_str(&line)
            .with_context(|| format!("the mount at {} sent an unreadable reply", path.display()))?;
        match frame {
            Frame::Out(text) => {
                if let Some(b) = &bar {
                    b.suspend(|| std::io::stdout().write_all(text.as_bytes()))
                } else {
                    std::io::stdout().write_all(text.as_bytes())
                }
                .map_err(stdout_error)?;
            }
            Frame::Progress {
                label,
                unit,
                done,
                total,
            } if tty => {
                let b = bar.get_or_insert_with(|| local_count_bar(&label, &unit));
                b.set_message(label);
                b.set_length(total);
                b.set_position(done);
            }
            Frame::Progress { .. } => {}
            Frame::Exit { code, error } => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
                std::io::stdout().flush().map_err(stdout_error)?;
                return match (code, error) {
                    (0, _) => Ok(true),
                    (_, Some(e)) => Err(anyhow!(e)),
                    (c, None) => bail!("the command failed in the mount (status {c})"),
                };
            }
        }
    }
    bail!(
        "the mount at {} closed the connection before the command finished (did it stop?)",
        path.display()
    )
}
