//! From a parsed URI to an open store: the one place that knows every store kind.

use std::sync::Arc;

use crate::dir::DirStore;
use crate::error::Result;
use crate::redis::RedisStore;
use crate::store::ShardStore;
use crate::uri::StoreUri;
use crate::zdb::ZdbStore;

/// Opens the store `uri` names. No network I/O happens here: redis, 0-db and S3 stores connect on first use, so a
/// volume whose stores are partly down still opens. `create` lets a dir store create its directory (volume
/// init); without it a missing directory is `Unavailable`, because an unmounted disk must never turn into writes
/// on the root filesystem.
pub async fn open_store(uri: &StoreUri, create: bool) -> Result<Arc<dyn ShardStore>> {
    Ok(match uri {
        StoreUri::Dir { path } => Arc::new(DirStore::open(path, create).await?),
        StoreUri::Redis { .. } => Arc::new(RedisStore::new(uri)?),
        StoreUri::Zdb { .. } => Arc::new(ZdbStore::new(uri)?),
        #[cfg(feature = "s3")]
        StoreUri::S3(s3) => Arc::new(crate::s3::S3Store::new(s3)?),
        #[cfg(not(feature = "s3"))]
        StoreUri::S3(_) => {
            return Err(crate::error::StoreError::InvalidUri {
                uri: uri.to_string(),
                reason: "this qsfs was built without S3 support (cargo feature `s3`)".into(),
            });
        }
    })
}
