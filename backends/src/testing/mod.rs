//! Test helpers shared by this crate's tests and the integration tests (crate feature `testing`): a real
//! redis-server launcher, a real Garage (S3) cluster launcher, a protocol-level 0-db server, the conformance suite every store must pass, and a lying
//! RESP proxy with the hostile cases the network stores must survive.

pub mod conformance;
pub mod garage_server;
pub mod hostile;
pub mod lying_proxy;
pub mod redis_server;
mod zdb_commands;
mod zdb_namespaces;
pub mod zdb_server;

pub use garage_server::GarageServer;
pub use lying_proxy::{Lie, LyingProxy};
pub use redis_server::RedisServer;
pub use zdb_server::{NamespaceOptions, NsMode, ZdbServerConfig, ZdbServerMode, ZdbTestServer};
