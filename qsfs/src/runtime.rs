//! The one async boundary. Store I/O is async (redis, 0-db, spawn_blocking for dir stores); everything else in qsfs
//! — the CLI, FUSE worker threads, the codec pool — is plain threads. `IoRuntime::block_on` is the only place where
//! synchronous code crosses into the runtime.

use std::future::Future;

use crate::error::{QsfsError, Result};

pub struct IoRuntime {
    rt: tokio::runtime::Runtime,
}

impl IoRuntime {
    pub fn new() -> Result<IoRuntime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(64)
            .thread_name("qsfs-io")
            .enable_all()
            .build()
            .map_err(|e| QsfsError::io("starting the store I/O runtime", e))?;
        Ok(IoRuntime { rt })
    }

    /// Runs store I/O from a plain thread and waits for it. Must not be called from inside the runtime.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.rt.handle()
    }
}
