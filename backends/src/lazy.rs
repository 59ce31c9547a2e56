//! A store that could not be opened yet: a disk not mounted, a directory that is gone. Opening a volume must not
//! fail because one of its stores is missing, so such a store is held as a `LazyStore`, which answers every call
//! with `Unavailable` (naming why the open failed) and tries to open the real store again on each call, at most
//! once per `REOPEN_INTERVAL`. Once the real store opens, every call goes to it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::error::{Result, StoreError};
use crate::open::open_store;
use crate::store::{Locator, ShardKey, ShardStore, StoreHealth, StoreIdentity};
use crate::uri::StoreUri;

/// How often a call may retry opening the real store: callers (revival checks, probes) already space their
/// checks out, this only keeps a burst of calls from hammering a missing mount point.
const REOPEN_INTERVAL: Duration = Duration::from_millis(200);

/// Opens the store behind `uri`; when that fails for a reason a later attempt may not have (anything but an invalid
/// URI), returns a `LazyStore` that keeps trying instead of an error.
pub async fn open_store_or_lazy(uri: &StoreUri) -> Result<Arc<dyn ShardStore>> {
    match open_store(uri, false).await {
        Ok(store) => Ok(store),
        Err(e @ StoreError::InvalidUri { .. }) => Err(e),
        Err(e) => Ok(Arc::new(LazyStore {
            uri: uri.clone(),
            shown: uri.to_string(),
            state: Mutex::new(Lazy::Failed {
                reason: open_failure(&e),
                at: Instant::now(),
            }),
        })),
    }
}

/// Why an open failed, without the store's URI (the `Unavailable` error built from it names the store).
fn open_failure(e: &StoreError) -> String {
    match e {
        StoreError::Unavailable { reason, .. } => reason.clone(),
        other => format!("could not be opened: {other}"),
    }
}

enum Lazy {
    Failed { reason: String, at: Instant },
    Open(Arc<dyn ShardStore>),
}

pub struct LazyStore {
    uri: StoreUri,
    /// The redacted URI, for `ShardStore::uri`.
    shown: String,
    state: Mutex<Lazy>,
}

impl std::fmt::Debug for LazyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyStore")
            .field("uri", &self.shown)
            .finish()
    }
}

impl LazyStore {
    /// The real store, opening it if the last attempt is old enough; `Unavailable` with the open's error otherwise.
    async fn inner(&self) -> Result<Arc<dyn ShardStore>> {
        {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            match &*state {
                Lazy::Open(store) => return Ok(store.clone()),
                Lazy::Failed { reason, at } if at.elapsed() < REOPEN_INTERVAL => {
                    return Err(self.unavailable(reason));
                }
                Lazy::Failed { .. } => {}
            }
        }
        let result = open_store(&self.uri, false).await;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(store) => {
                *state = Lazy::Open(store.clone());
                Ok(store)
            }
            Err(e) => {
                let reason = open_failure(&e);
                *state = Lazy::Failed {
                    reason: reason.clone(),
                    at: Instant::now(),
                };
                Err(self.unavailable(&reason))
            }
        }
    }

    fn unavailable(&self, reason: &str) -> StoreError {
        StoreError::Unavailable {
            uri: self.shown.clone(),
            reason: reason.to_string(),
        }
    }
}

#[async_trait]
impl ShardStore for LazyStore {
    fn uri(&self) -> &str {
        &self.shown
    }

    fn supports_range(&self) -> bool {
        match &*self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            Lazy::Open(store) => store.supports_range(),
            // Only dir stores fail to open eagerly, and they read ranges.
            Lazy::Failed { .. } => matches!(self.uri, StoreUri::Dir { .. }),
        }
    }

    fn max_value_size(&self) -> Option<u64> {
        match &*self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            Lazy::Open(store) => store.max_value_size(),
            Lazy::Failed { .. } => None,
        }
    }

    fn locate(&self, key: &ShardKey) -> Option<Locator> {
        match &*self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            Lazy::Open(store) => store.locate(key),
            // Only dir stores fail to open eagerly, and they are key-addressed.
            Lazy::Failed { .. } => Some(Locator::from_key(key)),
        }
    }

    async fn put(&self, key: &ShardKey, data: &[u8]) -> Result<Locator> {
        self.inner().await?.put(key, data).await
    }

    async fn get(&self, loc: &Locator, max_len: u64) -> Result<Vec<u8>> {
        self.inner().await?.get(loc, max_len).await
    }

    async fn get_range(&self, loc: &Locator, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.inner().await?.get_range(loc, offset, len).await
    }

    async fn delete(&self, loc: &Locator) -> Result<()> {
        self.inner().await?.delete(loc).await
    }

    async fn exists(&self, loc: &Locator) -> Result<bool> {
        self.inner().await?.exists(loc).await
    }

    async fn probe(&self) -> Result<StoreHealth> {
        self.inner().await?.probe().await
    }

    async fn list(&self) -> Result<Vec<Locator>> {
        self.inner().await?.list().await
    }

    async fn write_identity(&self, identity: &StoreIdentity) -> Result<()> {
        self.inner().await?.write_identity(identity).await
    }

    async fn remove_identity(&self, identity: &StoreIdentity) -> Result<()> {
        self.inner().await?.remove_identity(identity).await
    }

    async fn read_identity(&self) -> Result<Option<StoreIdentity>> {
        self.inner().await?.read_identity().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dir store whose directory is missing at open answers `Unavailable` naming why, then works once the
    /// directory is there.
    #[tokio::test]
    async fn a_missing_dir_store_opens_once_its_directory_appears() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s");
        let uri = StoreUri::Dir { path: path.clone() };
        let store = open_store_or_lazy(&uri).await.unwrap();
        let err = store.read_identity().await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("does not exist"), "{err}");

        let real = open_store(&uri, true).await.unwrap();
        let id = StoreIdentity {
            volume_id: "v".into(),
            store_id: 3,
        };
        real.write_identity(&id).await.unwrap();
        tokio::time::sleep(REOPEN_INTERVAL).await;
        assert_eq!(store.read_identity().await.unwrap(), Some(id));
    }
}
