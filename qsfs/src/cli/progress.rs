//! Progress bars: bytes and MB/s for transfers, counts for audits and repairs, drawn only when stdout is a
//! terminal. A count bar of a command run for a control client is drawn by the client, from progress frames.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::output::{Frame, Remote, remote, stdout_is_terminal};

/// How often a remote bar sends its state at most.
const REMOTE_EVERY: Duration = Duration::from_millis(100);

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

/// A bar counting items (`what`: segments, shards), here or on a control client's terminal.
pub enum CountBar {
    Local(ProgressBar),
    Remote(RemoteBar),
}

pub struct RemoteBar {
    to: Remote,
    unit: String,
    state: Mutex<RemoteState>,
}

struct RemoteState {
    label: String,
    done: u64,
    total: u64,
    sent: Option<Instant>,
}

impl CountBar {
    pub fn new(what: &str, unit: &str) -> CountBar {
        if let Some(to) = remote() {
            return CountBar::Remote(RemoteBar {
                to,
                unit: unit.to_string(),
                state: Mutex::new(RemoteState {
                    label: what.to_string(),
                    done: 0,
                    total: 0,
                    sent: None,
                }),
            });
        }
        if !stdout_is_terminal() {
            return CountBar::Local(ProgressBar::hidden());
        }
        CountBar::Local(local_count_bar(what, unit))
    }

    pub fn set_length(&self, total: u64) {
        match self {
            CountBar::Local(pb) => pb.set_length(total),
            CountBar::Remote(r) => r.update(|s| s.total = total),
        }
    }

    pub fn set_position(&self, done: u64) {
        match self {
            CountBar::Local(pb) => pb.set_position(done),
            CountBar::Remote(r) => r.update(|s| s.done = done),
        }
    }

    pub fn set_message(&self, msg: String) {
        match self {
            CountBar::Local(pb) => pb.set_message(msg),
            CountBar::Remote(r) => r.update(|s| s.label = msg),
        }
    }

    pub fn finish_and_clear(&self) {
        match self {
            CountBar::Local(pb) => pb.finish_and_clear(),
            CountBar::Remote(r) => r.flush(),
        }
    }
}

impl RemoteBar {
    /// Applies `change` and sends the state, at most every `REMOTE_EVERY`.
    fn update(&self, change: impl FnOnce(&mut RemoteState)) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut s);
        if s.sent.is_some_and(|t| t.elapsed() < REMOTE_EVERY) {
            return;
        }
        s.sent = Some(Instant::now());
        let _ = self.to.send(&frame(&s, &self.unit));
    }

    fn flush(&self) {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.to.send(&frame(&s, &self.unit));
    }
}

fn frame(s: &RemoteState, unit: &str) -> Frame {
    Frame::Progress {
        label: s.label.clone(),
        unit: unit.to_string(),
        done: s.done,
        total: s.total,
    }
}

/// An indicatif bar for counts: "audit [=====>   ] 12/40 segments eta 3s".
pub fn local_count_bar(what: &str, unit: &str) -> ProgressBar {
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} eta {{eta}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}
