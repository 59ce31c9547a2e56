//! What `qsfs init` asks for, and the checks it makes before anything is created.

use crate::config::ByteSize;
use crate::error::{QsfsError, Result};

#[derive(Clone, Debug)]
pub struct InitOptions {
    pub data_shards: usize,
    pub parity_shards: usize,
    pub segment_size: ByteSize,
    pub zstd_level: i32,
    /// Defaults to `config::default_write_quorum` (K+M-1, at least K+1).
    pub write_quorum: Option<usize>,
    /// Store URIs; empty means K+M `dir:` stores inside the volume.
    pub stores: Vec<String>,
    /// Derive the key from the passphrase in this environment variable instead of a random key file.
    pub passphrase_env: Option<String>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            data_shards: 4,
            parity_shards: 2,
            segment_size: ByteSize(4 << 20),
            zstd_level: 1,
            write_quorum: None,
            stores: Vec::new(),
            passphrase_env: None,
        }
    }
}

impl InitOptions {
    /// Checks the options before anything is created, naming the option (as `qsfs init` spells it) at fault —
    /// the config file they would go into does not exist yet.
    pub fn validate(&self) -> Result<()> {
        let bad = |option, reason: String| Err(QsfsError::InitOption { option, reason });
        let (k, m) = (self.data_shards, self.parity_shards);
        if k == 0 {
            return bad("data-shards", "expected at least 1, found 0".into());
        }
        if m == 0 {
            return bad("parity-shards", "expected at least 1, found 0".into());
        }
        if k.saturating_add(m) > 255 {
            return bad(
                "parity-shards",
                format!("data + parity shards must be at most 255 in all, found {k} + {m}"),
            );
        }
        if let Some(q) = self.write_quorum
            && !(k + 1..=k + m).contains(&q)
        {
            return bad(
                "write-quorum",
                format!(
                    "expected {} ..= {} (more than the data shards, at most all shards), found {q}",
                    k + 1,
                    k + m
                ),
            );
        }
        let seg = self.segment_size.0;
        if !(crate::config::MIN_SEGMENT_SIZE..=crate::config::MAX_SEGMENT_SIZE).contains(&seg) {
            return bad(
                "segment-size",
                format!(
                    "expected {} ..= {}, found {}",
                    ByteSize(crate::config::MIN_SEGMENT_SIZE),
                    ByteSize(crate::config::MAX_SEGMENT_SIZE),
                    self.segment_size
                ),
            );
        }
        if !(-7..=22).contains(&self.zstd_level) {
            return bad(
                "zstd-level",
                format!("expected -7 ..= 22, found {}", self.zstd_level),
            );
        }
        if !self.stores.is_empty() && self.stores.len() < k + m {
            return bad(
                "store",
                format!(
                    "{} shards per segment need at least {} stores so that no two shards of a segment share one; {} given",
                    k + m,
                    k + m,
                    self.stores.len()
                ),
            );
        }
        for uri in &self.stores {
            qsfs_backends::StoreUri::parse(uri)?;
        }
        Ok(())
    }
}
