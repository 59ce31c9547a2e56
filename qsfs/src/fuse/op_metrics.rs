//! FUSE request metrics: each `Filesystem` method starts an [`OpTimer`]; when it drops (the reply has been sent)
//! it records the operation, its latency and whether the reply was an error into the mount's metrics. The error
//! flag is per thread: fuser answers one request at a time on each of its threads, and `ops::respond` sets it.

use std::cell::Cell;
use std::time::Instant;

use super::QsfsFs;
use crate::metrics::Metrics;

thread_local! {
    static FAILED: Cell<bool> = const { Cell::new(false) };
}

/// The current request is being answered with an error.
pub(super) fn note_failure() {
    FAILED.with(|f| f.set(true));
}

pub(super) struct OpTimer<'a> {
    metrics: Option<&'a Metrics>,
    op: &'static str,
    start: Instant,
}

impl Drop for OpTimer<'_> {
    fn drop(&mut self) {
        let failed = FAILED.with(|f| f.replace(false));
        if let Some(m) = self.metrics {
            m.fuse_op(self.op, self.start.elapsed(), failed);
        }
    }
}

impl QsfsFs {
    pub(super) fn op_timer(&self, op: &'static str) -> OpTimer<'_> {
        FAILED.with(|f| f.set(false));
        OpTimer {
            metrics: self.metrics.as_deref(),
            op,
            start: Instant::now(),
        }
    }
}
