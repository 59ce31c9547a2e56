//! Durable local writes: write a temp file, fsync it, rename it over the target, fsync the directory. A crash leaves
//! either the old file or the new one, never half of one.

use std::io::Write;
use std::path::Path;

use crate::error::{QsfsError, Result};

/// fsyncs a directory so a rename or create inside it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| QsfsError::io(format!("syncing directory {}", dir.display()), e))
}

/// Atomically replaces `path` with `bytes`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let ctx = || format!("writing {}", path.display());
    // Private (0600): everything written here lives in a volume directory (see `crate::private`).
    let mut f = crate::private::file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| QsfsError::io(ctx(), e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| QsfsError::io(ctx(), e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| QsfsError::io(ctx(), e))?;
    sync_dir(dir)
}
