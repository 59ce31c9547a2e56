//! Benchmarks live in `benches/benches/` (criterion) and `benches/scripts/` (end to end).

use std::path::PathBuf;

/// A fresh directory under `BENCH_DIR` (default: the system temp directory) for a bench's files: it should be on
/// the disk being judged.
pub fn bench_dir() -> tempfile::TempDir {
    let parent = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::tempdir_in(parent).expect("a temporary directory under BENCH_DIR")
}
