//! `MeteredStore`: a `ShardStore` wrapper that counts every request to the store it wraps — requests, errors and
//! latency by operation, bytes read and written — into the mount's [`Metrics`]. It changes nothing else: results
//! pass through untouched, so it composes with the other wrappers (faults, retry) in the volume's store stack.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use qsfs_backends::{Locator, Result, ShardKey, ShardStore, StoreHealth, StoreIdentity};

use super::{Metrics, StoreLabels, StoreOpLabels};

#[derive(Debug)]
pub struct MeteredStore {
    inner: Arc<dyn ShardStore>,
    /// The store's label: its id in the volume (stable, and no URI or password in a label).
    store: String,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl MeteredStore {
    pub fn wrap(id: u32, inner: Arc<dyn ShardStore>, metrics: Arc<Metrics>) -> MeteredStore {
        MeteredStore {
            inner,
            store: id.to_string(),
            metrics,
        }
    }

    async fn timed<T>(&self, op: &str, call: impl Future<Output = Result<T>>) -> Result<T> {
        let labels = StoreOpLabels {
            store: self.store.clone(),
            op: op.to_string(),
        };
        let start = Instant::now();
        let res = call.await;
        self.metrics.store_requests.get_or_create(&labels).inc();
        if res.is_err() {
            self.metrics.store_errors.get_or_create(&labels).inc();
        }
        self.metrics
            .store_latency
            .get_or_create(&labels)
            .observe(start.elapsed().as_secs_f64());
        res
    }

    fn labels(&self) -> StoreLabels {
        StoreLabels {
            store: self.store.clone(),
        }
    }

    fn count_read(&self, res: &Result<Vec<u8>>) {
        if let Ok(bytes) = res {
            self.metrics
                .store_read_bytes
                .get_or_create(&self.labels())
                .inc_by(bytes.len() as u64);
        }
    }
}

#[async_trait]
impl ShardStore for MeteredStore {
    fn uri(&self) -> &str {
        self.inner.uri()
    }

    fn supports_range(&self) -> bool {
        self.inner.supports_range()
    }

    fn max_value_size(&self) -> Option<u64> {
        self.inner.max_value_size()
    }

    fn locate(&self, key: &ShardKey) -> Option<Locator> {
        self.inner.locate(key)
    }

    async fn put(&self, key: &ShardKey, data: &[u8]) -> Result<Locator> {
        let res = self.timed("put", self.inner.put(key, data)).await;
        if res.is_ok() {
            self.metrics
                .store_written_bytes
                .get_or_create(&self.labels())
                .inc_by(data.len() as u64);
        }
        res
    }

    async fn get(&self, loc: &Locator, max_len: u64) -> Result<Vec<u8>> {
        let res = self.timed("get", self.inner.get(loc, max_len)).await;
        self.count_read(&res);
        res
    }

    async fn get_range(&self, loc: &Locator, offset: u64, len: u64) -> Result<Vec<u8>> {
        let res = self
            .timed("get_range", self.inner.get_range(loc, offset, len))
            .await;
        self.count_read(&res);
        res
    }

    async fn delete(&self, loc: &Locator) -> Result<()> {
        self.timed("delete", self.inner.delete(loc)).await
    }

    async fn exists(&self, loc: &Locator) -> Result<bool> {
        self.timed("exists", self.inner.exists(loc)).await
    }

    async fn probe(&self) -> Result<StoreHealth> {
        self.timed("probe", self.inner.probe()).await
    }

    async fn list(&self) -> Result<Vec<Locator>> {
        self.timed("list", self.inner.list()).await
    }

    async fn write_identity(&self, identity: &StoreIdentity) -> Result<()> {
        self.timed("write_identity", self.inner.write_identity(identity))
            .await
    }

    async fn remove_identity(&self, identity: &StoreIdentity) -> Result<()> {
        self.timed("remove_identity", self.inner.remove_identity(identity))
            .await
    }

    async fn read_identity(&self) -> Result<Option<StoreIdentity>> {
        self.timed("read_identity", self.inner.read_identity())
            .await
    }
}
