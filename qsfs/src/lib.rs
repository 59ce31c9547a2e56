//! qsfs: a quantum-safe storage filesystem. Files are cut into segments; each segment is compressed, encrypted on
//! the client, erasure-coded into K data + M parity shards and spread over append-only shard stores. Metadata lives
//! in a local SQLite database, replicated to the stores as an encrypted, chained log (`replica`), so the key and one
//! store's URI restore it. A `Volume` is the one object the CLI and the FUSE layer both drive.

pub mod audit;
pub mod codec;
pub mod config;
pub mod durable;
pub mod error;
pub mod fsck;
pub mod fuse;
pub mod keys;
pub mod log_writer;
pub mod meta;
pub mod metrics;
pub mod pace;
pub mod pipeline;
pub mod private;
pub mod read_cache;
pub mod repair;
pub mod replica;
pub mod runtime;
pub mod staging;
pub mod store_set;
pub mod volume;
pub mod workers;

pub use error::{QsfsError, Result};
pub use volume::{GcReport, InitOptions, StoreGc, Volume};
