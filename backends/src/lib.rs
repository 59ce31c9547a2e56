//! Shard stores for qsfs: the `ShardStore` trait and its implementations. This crate depends on no other qsfs
//! crate and knows nothing of segments, keys or metadata.
//!
//! - [`DirStore`] (`dir:/path`): one file per shard on a local or mounted disk; the embedded default.
//! - [`RedisStore`] (`redis://`, `rediss://` over TLS): shards as Redis strings.
//! - [`ZdbStore`] (`zdb://`): shards in a 0-db namespace, user or sequential mode.
//! - [`S3Store`] (`s3://`, feature `s3`): shards as objects in an S3-compatible bucket, through Apache OpenDAL.
//! - [`FaultyStore`]: wraps any store and injects failures on a plan.
//! - [`LazyStore`]: a store that could not be opened yet (a disk not mounted), retried on use.
//! - [`stack`]: the timeout and retry wrappers every store is used through, composed by `stack::standard`.
//! - [`StoreUri`] / [`open_store`]: from a config string to an `Arc<dyn ShardStore>`.
//! - `testing` (feature `testing`): a real redis-server launcher, a protocol-level 0-db server and the
//!   conformance suite every store passes.

pub mod dir;
pub mod error;
mod fanout;
pub mod faulty;
pub mod lazy;
mod open;
pub mod redis;
pub mod resp;
#[cfg(feature = "s3")]
pub mod s3;
pub mod secret;
mod shard_file;
pub mod stack;
pub mod store;
pub mod tls;
pub mod uri;
pub mod zdb;

#[cfg(feature = "testing")]
pub mod testing;

pub use dir::DirStore;
pub use error::{ReadFault, Result, StoreError, sanitize};
pub use faulty::{Fault, FaultCounts, FaultPlan, FaultRule, FaultyStore, Op, Trigger};
pub use lazy::{LazyStore, open_store_or_lazy};
pub use open::open_store;
pub use redis::RedisStore;
#[cfg(feature = "s3")]
pub use s3::S3Store;
pub use secret::Password;
pub use store::{Locator, ShardKey, ShardStore, StoreHealth, StoreIdentity, verify_identity};
pub use uri::{S3Style, S3Uri, StoreUri};
pub use zdb::{ZDB_MAX_VALUE, ZdbMode, ZdbStore};
