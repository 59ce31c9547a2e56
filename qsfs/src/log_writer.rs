//! Where log lines go: stderr, which for a background mount is `VOLUME/mount.log` — on the very disk that may be
//! full. A log line must never take the mount down: `eprintln!` (and tracing-subscriber's own report of a failed
//! write, which uses it) panics when stderr cannot be written, and a panicking FUSE thread ends the session
//! ("Transport endpoint is not connected"). This writer drops a line it cannot write, counts it, and says how many
//! were dropped in the first line it can write again.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

/// Lines dropped since the last line that was written.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// A `tracing_subscriber` writer for stderr that never fails and never panics.
#[derive(Clone, Copy, Debug, Default)]
pub struct ResilientStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ResilientStderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter
    }
}

/// One log line's writer (see [`ResilientStderr`]).
pub struct LineWriter;

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_line(&mut io::stderr().lock(), buf, &DROPPED);
        // Claimed written either way: a failed log line is not the caller's failure.
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// Writes `buf` to `out`, preceded by a note of the lines dropped before it; counts it as dropped on failure.
fn write_line(out: &mut dyn Write, buf: &[u8], counter: &AtomicU64) {
    let dropped = counter.swap(0, Ordering::AcqRel);
    if dropped > 0
        && out
            .write_all(
                format!(
                    "qsfs: {dropped} log lines dropped (could not write the log: disk full?)\n"
                )
                .as_bytes(),
            )
            .is_err()
    {
        counter.fetch_add(dropped + 1, Ordering::AcqRel);
        return;
    }
    if out.write_all(buf).is_err() {
        counter.fetch_add(1, Ordering::AcqRel);
    }
}

/// Prints `line` and a newline to stderr like `eprintln!`, but never panics (see the module docs): for the
/// mount process, whose stderr is its log file.
pub fn eprint_line(line: &str) {
    let mut s = String::with_capacity(line.len() + 1);
    s.push_str(line);
    s.push('\n');
    write_line(&mut io::stderr().lock(), s.as_bytes(), &DROPPED);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that fails while `full` is set, like a file on a full disk.
    struct Disk {
        full: bool,
        got: Vec<u8>,
    }

    impl Write for Disk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.full {
                return Err(io::Error::from_raw_os_error(nix::libc::ENOSPC));
            }
            self.got.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_lost_to_a_full_disk_are_counted_in_the_next_line_written() {
        let mut disk = Disk {
            full: true,
            got: Vec::new(),
        };
        let dropped = AtomicU64::new(0);
        write_line(&mut disk, b"one\n", &dropped);
        write_line(&mut disk, b"two\n", &dropped);
        disk.full = false;
        write_line(&mut disk, b"three\n", &dropped);
        let text = String::from_utf8(disk.got).unwrap();
        assert!(
            text.starts_with("qsfs: 2 log lines dropped") && text.ends_with("three\n"),
            "{text}"
        );
    }

    #[test]
    fn tracing_events_go_through_the_writer() {
        // Wired as main.rs wires it (internal error reports off: they would panic on a full disk).
        let sub = tracing_subscriber::fmt()
            .with_writer(ResilientStderr)
            .log_internal_errors(false)
            .finish();
        tracing::subscriber::with_default(sub, || {
            tracing::warn!("written or dropped, never a panic")
        });
    }
}
