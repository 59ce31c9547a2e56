//! The conformance suite: the one set of cases every `ShardStore` must pass, so qsfs can treat stores alike.
//!
//! `run` needs a fresh, empty store (no identity marker, no shards) and panics with the store's URI and the
//! failed case. It writes an identity marker and leaves it (the shards it wrote are deleted at the end).
//!
//! Decisions the suite encodes:
//! - Empty (0-byte) shards are outside the contract and not tested: qsfs never writes one (Reed-Solomon shards
//!   have a non-zero even length), and 0-db's handling of empty values is not something to depend on.
//! - A range is valid when `offset + len <= size`; a zero-length range at the very end is valid and empty;
//!   anything past the end (including overflowing `offset + len`) is `RangeOutOfBounds`. Stores without range
//!   reads answer `RangeUnsupported` for every range.
//! - Putting the same key twice succeeds and both returned locators read back the data; key-addressed stores
//!   return the same locator, 0-db seq namespaces a new one (both then show up in `list`).
//! - `list` returns exactly the locators of live shards (any order), never the identity marker.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::error::StoreError;
use crate::store::{Locator, ShardKey, ShardStore, StoreIdentity, verify_identity};

fn random_key() -> ShardKey {
    ShardKey(rand::random())
}

fn random_data(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::fill(&mut v[..]);
    v
}

macro_rules! check {
    ($store:expr, $cond:expr, $($msg:tt)+) => {
        assert!($cond, "conformance [{}]: {}", $store.uri(), format!($($msg)+))
    };
}

/// Runs every case against `store` (fresh and empty). Panics on the first failure.
pub async fn run(store: Arc<dyn ShardStore>) {
    let s = &*store;
    check!(
        s,
        s.read_identity().await.expect("read_identity").is_none(),
        "a fresh store must have no identity"
    );
    check!(
        s,
        s.list().await.expect("list").is_empty(),
        "a fresh store must be empty"
    );

    let identity = identity_cases(s).await;

    let health = s.probe().await;
    check!(s, health.is_ok(), "probe failed: {:?}", health.err());

    let mut live: Vec<(Locator, Vec<u8>)> = Vec::new();
    round_trips(s, &mut live).await;
    same_key_twice(s, &mut live).await;
    missing(s).await;
    bounded_reads(s, &live).await;
    ranges(s, &live).await;
    delete_cases(s).await;
    list_matches(s, &live, "after puts and deletes").await;
    concurrent_puts(store.clone(), &mut live).await;
    list_matches(s, &live, "after concurrent puts").await;
    size_limit(s).await;

    check!(
        s,
        s.read_identity().await.expect("read_identity") == Some(identity),
        "identity changed during the suite"
    );
    for (loc, _) in &live {
        s.delete(loc)
            .await
            .unwrap_or_else(|e| panic!("conformance [{}]: cleanup delete: {e}", s.uri()));
    }
    check!(
        s,
        s.list().await.expect("list").is_empty(),
        "store not empty after deleting every shard"
    );
    check!(s, s.probe().await.is_ok(), "probe after the suite failed");
}

async fn identity_cases(s: &dyn ShardStore) -> StoreIdentity {
    let a = StoreIdentity {
        volume_id: format!("conformance-{}", hex::encode(rand::random::<[u8; 8]>())),
        store_id: 3,
    };
    let b = StoreIdentity {
        volume_id: "some-other-volume".into(),
        store_id: 3,
    };
    s.write_identity(&a)
        .await
        .unwrap_or_else(|e| panic!("conformance [{}]: write_identity: {e}", s.uri()));
    check!(
        s,
        s.read_identity().await.expect("read_identity") == Some(a.clone()),
        "identity did not read back"
    );
    match s.write_identity(&b).await {
        Err(StoreError::IdentityExists { volume, store, .. }) => {
            check!(
                s,
                volume == a.volume_id && store == a.store_id,
                "IdentityExists names the wrong marker"
            )
        }
        other => panic!(
            "conformance [{}]: second write_identity must be IdentityExists, got {other:?}",
            s.uri()
        ),
    }
    check!(
        s,
        s.read_identity().await.expect("read_identity") == Some(a.clone()),
        "marker was overwritten"
    );
    check!(
        s,
        verify_identity(s, &a).await.is_ok(),
        "verify_identity refused the right identity"
    );
    for wrong in [
        b,
        StoreIdentity {
            volume_id: a.volume_id.clone(),
            store_id: 4,
        },
    ] {
        match verify_identity(s, &wrong).await {
            Err(StoreError::IdentityMismatch {
                found_volume,
                found_store,
                ..
            }) => check!(
                s,
                found_volume == a.volume_id && found_store == a.store_id,
                "IdentityMismatch reports the wrong found identity"
            ),
            other => panic!(
                "conformance [{}]: verify_identity({wrong:?}) must be IdentityMismatch, got {other:?}",
                s.uri()
            ),
        }
    }
    // Taking a marker back (a failed init) is compare-and-delete: another volume's identity leaves it in place.
    let foreign = StoreIdentity {
        volume_id: "another volume".into(),
        store_id: a.store_id,
    };
    s.remove_identity(&foreign)
        .await
        .unwrap_or_else(|e| panic!("conformance [{}]: remove_identity(foreign): {e}", s.uri()));
    check!(
        s,
        s.read_identity().await.expect("read_identity") == Some(a.clone()),
        "remove_identity removed another volume's marker"
    );
    a
}

async fn put_get(s: &dyn ShardStore, key: &ShardKey, data: &[u8]) -> Locator {
    let loc = s
        .put(key, data)
        .await
        .unwrap_or_else(|e| panic!("conformance [{}]: put {} bytes: {e}", s.uri(), data.len()));
    let back = s
        .get(&loc, data.len() as u64)
        .await
        .unwrap_or_else(|e| panic!("conformance [{}]: get {loc:?}: {e}", s.uri()));
    check!(
        s,
        back == data,
        "get returned different bytes ({} vs {} bytes)",
        back.len(),
        data.len()
    );
    check!(
        s,
        s.exists(&loc).await.expect("exists"),
        "exists is false right after put"
    );
    loc
}

async fn round_trips(s: &dyn ShardStore, live: &mut Vec<(Locator, Vec<u8>)>) {
    for len in [1usize, 4097, (1 << 20) + 7] {
        let data = random_data(len);
        let loc = put_get(s, &random_key(), &data).await;
        live.push((loc, data));
    }
}

async fn same_key_twice(s: &dyn ShardStore, live: &mut Vec<(Locator, Vec<u8>)>) {
    let key = random_key();
    let data = random_data(10_000);
    let first = put_get(s, &key, &data).await;
    let second = put_get(s, &key, &data).await;
    check!(
        s,
        s.get(&first, data.len() as u64).await.expect("get first") == data,
        "first locator broken by the second put"
    );
    live.push((first.clone(), data.clone()));
    if second != first {
        live.push((second, data));
    }
}

/// A read asking for fewer bytes than the shard holds is refused (and refused before the bytes were buffered, which
/// the hostile-store cases measure); the store answers normally afterwards.
async fn bounded_reads(s: &dyn ShardStore, live: &[(Locator, Vec<u8>)]) {
    for (loc, data) in live {
        let len = data.len() as u64;
        match s.get(loc, len - 1).await {
            Err(StoreError::Refused {
                ref uri,
                ref reason,
            }) => check!(
                s,
                uri == s.uri() && reason.contains(&len.to_string()),
                "Refused must name the store and the size: {uri} {reason}"
            ),
            other => panic!(
                "conformance [{}]: get of a {len}-byte shard with max_len {} must be Refused, got {:?}",
                s.uri(),
                len - 1,
                other.map(|v| v.len())
            ),
        }
        let again = s.get(loc, len).await;
        check!(
            s,
            again.as_ref().is_ok_and(|b| b == data),
            "get after a refused read failed: {:?}",
            again.err()
        );
    }
}

async fn missing(s: &dyn ShardStore) {
    let nowhere = Locator::from_key(&random_key());
    match s.get(&nowhere, 1 << 20).await {
        Err(StoreError::NotFound { .. }) => {}
        other => panic!(
            "conformance [{}]: get of a missing shard must be NotFound, got {:?}",
            s.uri(),
            other.map(|v| v.len())
        ),
    }
    check!(
        s,
        !s.exists(&nowhere).await.expect("exists"),
        "exists is true for a missing shard"
    );
    match s.get_range(&nowhere, 0, 1).await {
        Err(StoreError::NotFound { .. }) if s.supports_range() => {}
        Err(StoreError::RangeUnsupported { .. }) if !s.supports_range() => {}
        other => panic!(
            "conformance [{}]: get_range of a missing shard: {:?}",
            s.uri(),
            other.map(|v| v.len())
        ),
    }
}

async fn ranges(s: &dyn ShardStore, live: &[(Locator, Vec<u8>)]) {
    let (loc, data) = live
        .iter()
        .max_by_key(|(_, d)| d.len())
        .expect("shards were put");
    let size = data.len() as u64;
    let valid = [
        (0, 10),
        (size / 2 - 3, 100),
        (size - 10, 10),
        (0, size),
        (size, 0),
        (5, 0),
    ];
    let invalid = [(size - 5, 10), (size + 1, 0), (size, 1), (u64::MAX, 2)];
    if !s.supports_range() {
        for (off, len) in valid.iter().chain(&invalid) {
            match s.get_range(loc, *off, *len).await {
                Err(StoreError::RangeUnsupported { .. }) => {}
                other => panic!(
                    "conformance [{}]: get_range must be RangeUnsupported, got {:?}",
                    s.uri(),
                    other.map(|v| v.len())
                ),
            }
        }
        return;
    }
    for (off, len) in valid {
        let got = s
            .get_range(loc, off, len)
            .await
            .unwrap_or_else(|e| panic!("conformance [{}]: get_range({off}, {len}): {e}", s.uri()));
        check!(
            s,
            got == data[off as usize..(off + len) as usize],
            "get_range({off}, {len}) returned wrong bytes"
        );
    }
    for (off, len) in invalid {
        match s.get_range(loc, off, len).await {
            Err(StoreError::RangeOutOfBounds { size: reported, .. }) => {
                check!(
                    s,
                    reported == size,
                    "RangeOutOfBounds reports size {reported}, shard has {size}"
                )
            }
            other => panic!(
                "conformance [{}]: get_range({off}, {len}) past the end: {:?}",
                s.uri(),
                other.map(|v| v.len())
            ),
        }
    }
}

async fn delete_cases(s: &dyn ShardStore) {
    let data = random_data(2048);
    let loc = put_get(s, &random_key(), &data).await;
    s.delete(&loc)
        .await
        .unwrap_or_else(|e| panic!("conformance [{}]: delete: {e}", s.uri()));
    check!(
        s,
        !s.exists(&loc).await.expect("exists"),
        "exists is true after delete"
    );
    check!(
        s,
        matches!(s.get(&loc, 1 << 20).await, Err(StoreError::NotFound { .. })),
        "get after delete is not NotFound"
    );
    s.delete(&loc).await.unwrap_or_else(|e| {
        panic!(
            "conformance [{}]: deleting a deleted shard must succeed: {e}",
            s.uri()
        )
    });
    let nowhere = Locator::from_key(&random_key());
    s.delete(&nowhere).await.unwrap_or_else(|e| {
        panic!(
            "conformance [{}]: deleting a missing shard must succeed: {e}",
            s.uri()
        )
    });
}

async fn list_matches(s: &dyn ShardStore, live: &[(Locator, Vec<u8>)], when: &str) {
    let listed = s
        .list()
        .await
        .unwrap_or_else(|e| panic!("conformance [{}]: list: {e}", s.uri()));
    let listed_set: BTreeSet<Locator> = listed.iter().cloned().collect();
    check!(
        s,
        listed_set.len() == listed.len(),
        "list {when} returned duplicates"
    );
    let expected: BTreeSet<Locator> = live.iter().map(|(l, _)| l.clone()).collect();
    check!(
        s,
        listed_set == expected,
        "list {when}: missing {:?}, unexpected {:?}",
        expected.difference(&listed_set).collect::<Vec<_>>(),
        listed_set.difference(&expected).collect::<Vec<_>>()
    );
}

async fn concurrent_puts(store: Arc<dyn ShardStore>, live: &mut Vec<(Locator, Vec<u8>)>) {
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let data = random_data(65_536 + i);
                let loc = store.put(&random_key(), &data).await;
                (loc, data)
            })
        })
        .collect();
    let s = &*store;
    let mut seen = BTreeSet::new();
    for t in tasks {
        let (loc, data) = t.await.expect("put task panicked");
        let loc = loc.unwrap_or_else(|e| panic!("conformance [{}]: concurrent put: {e}", s.uri()));
        check!(
            s,
            seen.insert(loc.clone()),
            "two concurrent puts got the same locator {loc:?}"
        );
        check!(
            s,
            s.get(&loc, data.len() as u64)
                .await
                .expect("get after concurrent put")
                == data,
            "concurrent put read back wrong bytes"
        );
        live.push((loc, data));
    }
}

async fn size_limit(s: &dyn ShardStore) {
    let Some(limit) = s.max_value_size() else {
        return;
    };
    let too_big = vec![0x5au8; limit as usize + 1];
    match s.put(&random_key(), &too_big).await {
        Err(StoreError::TooLarge { size, limit: l, .. }) => {
            check!(
                s,
                size == limit + 1 && l == limit,
                "TooLarge reports size {size} limit {l}"
            )
        }
        other => panic!(
            "conformance [{}]: a value over the limit must be TooLarge, got {other:?}",
            s.uri()
        ),
    }
    // Exactly the limit is accepted, and the store still works after the refusal.
    let data = random_data(limit as usize);
    let loc = put_get(s, &random_key(), &data).await;
    s.delete(&loc)
        .await
        .unwrap_or_else(|e| panic!("conformance [{}]: delete: {e}", s.uri()));
}
