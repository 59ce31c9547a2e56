//! Well-known objects on the stores that find objects by name (the metadata log's records, head, lease and
//! snapshot pieces, the descriptor): writing them to every such store, reading them back from all or enough of
//! them, deleting them.

use std::sync::Arc;

use qsfs_backends::{ShardKey, StoreError};
use tokio::task::JoinSet;

use super::*;

impl StoreSet {
    /// Writes one well-known object (a metadata log record, the head, the descriptor) to every up store that can
    /// find it again by name (see `ShardStore::locate`), concurrently, overwriting an older copy. Succeeds when at
    /// least `quorum` stores hold it; stores that fail are marked down. Returns how many hold it.
    pub async fn replicate(&self, key: &ShardKey, blob: &[u8], quorum: usize) -> Result<usize> {
        let blob: Arc<[u8]> = blob.into();
        self.put_named(key, |_| Some(blob.clone()), quorum).await
    }

    /// Like `replicate`, but each store gets its own object under the one name: `blob_for(i)` for the i-th of
    /// `named_slots()` (`None`: nothing for it). A metadata snapshot's erasure-coded pieces go out this way.
    pub async fn put_named(
        &self,
        key: &ShardKey,
        blob_for: impl Fn(usize) -> Option<Arc<[u8]>>,
        quorum: usize,
    ) -> Result<usize> {
        self.revive_due().await;
        let mut tasks = JoinSet::new();
        for (i, slot) in self.named_slots().into_iter().enumerate() {
            let Some(blob) = blob_for(i).filter(|_| slot.is_up()) else {
                continue;
            };
            let key = *key;
            tasks.spawn(async move {
                let res = slot.store.put(&key, &blob).await;
                (slot, res)
            });
        }
        let mut held = 0;
        while let Some(joined) = tasks.join_next().await {
            let Ok((slot, res)) = joined else { continue };
            match res {
                Ok(_) => held += 1,
                Err(e) => slot.mark_down(e.to_string()),
            }
        }
        if held < quorum {
            return Err(QsfsError::NotEnoughStores {
                needed: quorum,
                available: held,
                detail: self.down_summary(),
            });
        }
        Ok(held)
    }

    /// The stores that can hold well-known objects: those where a name alone finds a blob (not 0-db seq mode).
    pub fn named_slots(&self) -> Vec<Arc<StoreSlot>> {
        let probe = ShardKey([0; 32]);
        self.slots
            .iter()
            .filter(|s| s.store.locate(&probe).is_some())
            .cloned()
            .collect()
    }

    /// Reads a well-known object from one store (bounded by `NAMED_READ_TIMEOUT`): `None` when it holds none.
    pub async fn read_named(
        &self,
        slot: &StoreSlot,
        key: &ShardKey,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        read_named(slot, key).await
    }

    /// Reads one well-known object from every up store that can hold it, concurrently, each read bounded by
    /// `NAMED_READ_TIMEOUT` (a stalled store must not hold up a lease check or a restore). Returns (store id,
    /// redacted URI, what it served), in store order.
    pub async fn read_named_everywhere(
        &self,
        key: &ShardKey,
    ) -> Vec<(u32, String, Result<Option<Vec<u8>>, StoreError>)> {
        self.read_named_from(key, usize::MAX).await
    }

    /// Like `read_named_everywhere`, but returns once `enough` stores have answered (plus `NAMED_READ_GRACE` for
    /// the ones just behind them): for an object written to a quorum of q of n stores, any n − q + 1 answers
    /// include one that holds its newest version, so a stalled store need not be waited for.
    pub async fn read_named_from(
        &self,
        key: &ShardKey,
        enough: usize,
    ) -> Vec<(u32, String, Result<Option<Vec<u8>>, StoreError>)> {
        let mut tasks = JoinSet::new();
        for slot in self.named_slots().into_iter().filter(|s| s.is_up()) {
            let key = *key;
            tasks.spawn(async move {
                let res = read_named(&slot, &key).await;
                (slot.id, slot.uri.clone(), res)
            });
        }
        let mut out = Vec::new();
        let mut answered = 0;
        let mut grace_until: Option<tokio::time::Instant> = None;
        loop {
            let next = match grace_until {
                Some(t) => match tokio::time::timeout_at(t, tasks.join_next()).await {
                    Ok(n) => n,
                    // The grace is over: the stores still reading are left behind (the set aborts them).
                    Err(_) => break,
                },
                None => tasks.join_next().await,
            };
            let Some(joined) = next else { break };
            if let Ok(r) = joined {
                answered += usize::from(r.2.is_ok());
                out.push(r);
            }
            if answered >= enough && grace_until.is_none() {
                grace_until = Some(tokio::time::Instant::now() + NAMED_READ_GRACE);
            }
        }
        out.sort_by_key(|r| r.0);
        out
    }

    /// Deletes a well-known object from every up store that holds it (best effort: a store that is down keeps an
    /// object no one will ask for again, which costs only its space).
    pub async fn delete_named(&self, key: &ShardKey) {
        let mut tasks = JoinSet::new();
        for slot in self.named_slots().into_iter().filter(|s| s.is_up()) {
            let key = *key;
            tasks.spawn(async move {
                if let Some(loc) = slot.store.locate(&key)
                    && let Err(e) = slot.store.delete(&loc).await
                {
                    tracing::debug!(store = %slot.uri, error = %e, "old metadata object not deleted");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// A well-known object from one store, within `NAMED_READ_TIMEOUT`: `None` when the store does not hold it. A
/// store that does not answer in time (or stays unreachable through the retries) is marked down, as a shard read
/// would mark it: a restore or a snapshot read asks the stores for many objects in a row, and must pay for a
/// stalled one once, not once per object.
async fn read_named(slot: &StoreSlot, key: &ShardKey) -> Result<Option<Vec<u8>>, StoreError> {
    let Some(loc) = slot.store.locate(key) else {
        return Ok(None);
    };
    let read = slot.store.get(&loc, NAMED_MAX);
    let res = match tokio::time::timeout(NAMED_READ_TIMEOUT, read).await {
        Ok(Ok(blob)) => Ok(Some(blob)),
        Ok(Err(StoreError::NotFound { .. })) => Ok(None),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(StoreError::Unavailable {
            uri: slot.uri.clone(),
            reason: format!("no answer within {NAMED_READ_TIMEOUT:?}"),
        }),
    };
    if let Err(e) = &res
        && e.is_retryable()
    {
        slot.mark_down(e.to_string());
    }
    res
}
