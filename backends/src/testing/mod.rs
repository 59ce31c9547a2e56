//! Test helpers shared by this crate's tests and the integration tests (crate feature `testing`): a real
//! redis-server launcher, a protocol-level 0-db server, and the conformance suite every store must pass.

pub mod conformance;
pub mod redis_server;
mod zdb_commands;
mod zdb_namespaces;
pub mod zdb_server;

pub use redis_server::RedisServer;
pub use zdb_server::{NamespaceOptions, NsMode, ZdbServerConfig, ZdbServerMode, ZdbTestServer};
