//! Progress bars for long transfers: bytes and MB/s, drawn only when stdout is a terminal.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

pub fn bar(total: u64, what: &str) -> ProgressBar {
    if !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// A phase-and-count display for operations that are not byte transfers (restore); `step` shows a phase, with a
/// bar when it has a count.
pub struct Steps(ProgressBar);

impl Steps {
    pub fn new() -> Steps {
        Steps(if std::io::stdout().is_terminal() {
            ProgressBar::new(0)
        } else {
            ProgressBar::hidden()
        })
    }

    pub fn step(&self, phase: &str, done: u64, total: u64) {
        let template = if total == 0 {
            "{msg} {elapsed}"
        } else {
            "{msg} [{bar:30}] {pos}/{len} {elapsed}"
        };
        self.0.set_style(
            ProgressStyle::with_template(template)
                .expect("valid template")
                .progress_chars("=> "),
        );
        self.0.set_message(phase.to_string());
        self.0.set_length(total);
        self.0.set_position(done);
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}
