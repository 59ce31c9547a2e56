//! The wrapper stack every store is used through, composed in one place ([`standard`]): a [`TimeoutStore`]
//! bounds each call, and a [`RetryStore`] above it retries the calls that failed transiently (a refused or
//! dropped connection, a timeout) with a short backoff. Stores themselves make one attempt per call; callers
//! above make none. Wrappers that observe each attempt (metrics, fault injection) go below the timeout.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Result, StoreError};
use crate::store::{Locator, ShardKey, ShardStore, StoreHealth, StoreIdentity};

/// Backoff between attempts of a retryable operation (three retries, 1.3 s in all).
pub const RETRY_DELAYS: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(250),
    Duration::from_millis(1000),
];
/// Longest a single call may take (a shard, a marker, a probe): a stalled store costs this, then it is
/// unreachable for that call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a listing may take: a store with millions of shards is listed page by page.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(600);

/// `store` as qsfs uses it: each call bounded by a timeout, transient failures retried.
pub fn standard(store: Arc<dyn ShardStore>) -> Arc<dyn ShardStore> {
    Arc::new(RetryStore::new(Arc::new(TimeoutStore::new(store))))
}

/// Fails a call that takes longer than its limit with `Unavailable` (which is retryable).
pub struct TimeoutStore {
    inner: Arc<dyn ShardStore>,
    call: Duration,
    list: Duration,
}

impl TimeoutStore {
    pub fn new(inner: Arc<dyn ShardStore>) -> TimeoutStore {
        TimeoutStore::with_limits(inner, CALL_TIMEOUT, LIST_TIMEOUT)
    }

    pub fn with_limits(inner: Arc<dyn ShardStore>, call: Duration, list: Duration) -> TimeoutStore {
        TimeoutStore { inner, call, list }
    }

    async fn bounded<T>(&self, limit: Duration, op: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(limit, op).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable {
                uri: self.inner.uri().to_string(),
                reason: format!("no answer within {limit:?}"),
            }),
        }
    }
}

/// Retries calls that failed with a retryable error, after the `RETRY_DELAYS` backoff.
pub struct RetryStore {
    inner: Arc<dyn ShardStore>,
    delays: Vec<Duration>,
}

impl RetryStore {
    pub fn new(inner: Arc<dyn ShardStore>) -> RetryStore {
        RetryStore::with_delays(inner, &RETRY_DELAYS)
    }

    pub fn with_delays(inner: Arc<dyn ShardStore>, delays: &[Duration]) -> RetryStore {
        RetryStore {
            inner,
            delays: delays.to_vec(),
        }
    }

    async fn retried<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<T>> + Send,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Err(e) if e.is_retryable() && attempt < self.delays.len() => {
                    tokio::time::sleep(self.delays[attempt]).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// Forwards the trait's plain methods and runs every async one through `$wrap(self, limit-kind, call)`.
macro_rules! forward {
    ($ty:ty, $wrap:ident) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", stringify!($ty), self.inner.uri())
            }
        }

        #[async_trait]
        impl ShardStore for $ty {
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
                $wrap!(self, call, self.inner.put(key, data))
            }
            async fn get(&self, loc: &Locator, max_len: u64) -> Result<Vec<u8>> {
                $wrap!(self, call, self.inner.get(loc, max_len))
            }
            async fn get_range(&self, loc: &Locator, offset: u64, len: u64) -> Result<Vec<u8>> {
                $wrap!(self, call, self.inner.get_range(loc, offset, len))
            }
            async fn delete(&self, loc: &Locator) -> Result<()> {
                $wrap!(self, call, self.inner.delete(loc))
            }
            async fn exists(&self, loc: &Locator) -> Result<bool> {
                $wrap!(self, call, self.inner.exists(loc))
            }
            async fn probe(&self) -> Result<StoreHealth> {
                $wrap!(self, call, self.inner.probe())
            }
            async fn list(&self) -> Result<Vec<Locator>> {
                $wrap!(self, list, self.inner.list())
            }
            async fn write_identity(&self, identity: &StoreIdentity) -> Result<()> {
                $wrap!(self, call, self.inner.write_identity(identity))
            }
            async fn read_identity(&self) -> Result<Option<StoreIdentity>> {
                $wrap!(self, call, self.inner.read_identity())
            }
            async fn remove_identity(&self, identity: &StoreIdentity) -> Result<()> {
                $wrap!(self, call, self.inner.remove_identity(identity))
            }
        }
    };
}

macro_rules! timed {
    ($s:ident, call, $op:expr) => {
        $s.bounded($s.call, $op).await
    };
    ($s:ident, list, $op:expr) => {
        $s.bounded($s.list, $op).await
    };
}

macro_rules! retrying {
    ($s:ident, $kind:ident, $op:expr) => {
        $s.retried(|| $op).await
    };
}

forward!(TimeoutStore, timed);
forward!(RetryStore, retrying);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faulty::{Fault, FaultPlan, FaultyStore, Op, Trigger};

    #[tokio::test(flavor = "multi_thread")]
    async fn transient_failures_are_retried_and_stalls_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ShardStore> =
            Arc::new(crate::dir::DirStore::open(dir.path(), true).await.unwrap());
        let faulty = Arc::new(FaultyStore::wrap(store));
        let stack = RetryStore::with_delays(
            Arc::new(TimeoutStore::with_limits(
                faulty.clone(),
                Duration::from_millis(200),
                Duration::from_secs(5),
            )),
            &[Duration::from_millis(1); 3],
        );
        let key = ShardKey([7; 32]);
        // Two refusals, then the store answers: the caller sees one success.
        faulty.set_plan(FaultPlan::none().with(&[Op::Put], Fault::Unavailable, Trigger::FirstN(2)));
        let loc = stack.put(&key, b"blob").await.unwrap();
        // A stall is cut at the call limit and retried; a store that keeps stalling is unavailable.
        faulty.set_plan(FaultPlan::none().with(
            &[Op::Get],
            Fault::Delay(Duration::from_secs(60)),
            Trigger::FirstN(1),
        ));
        assert_eq!(stack.get(&loc, 100).await.unwrap(), b"blob");
        faulty.set_plan(FaultPlan::none().with(
            &[Op::Get],
            Fault::Delay(Duration::from_secs(60)),
            Trigger::Always,
        ));
        let start = std::time::Instant::now();
        let e = stack.get(&loc, 100).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        // A permanent error is not retried.
        faulty.set_plan(FaultPlan::none().with(
            &[Op::Delete],
            Fault::Permanent,
            Trigger::FirstN(1),
        ));
        assert!(stack.delete(&loc).await.is_err());
        stack.delete(&loc).await.unwrap();
    }
}
