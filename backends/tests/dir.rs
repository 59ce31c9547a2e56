//! DirStore: the conformance suite, plus the guarantees that protect an unmounted disk and the identity.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use qsfs_backends::testing::conformance;
use qsfs_backends::{
    DirStore, Locator, ShardKey, ShardStore, StoreError, StoreIdentity, StoreUri, open_store,
    verify_identity,
};

#[tokio::test]
async fn conformance_suite() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::open(tmp.path().join("store"), true)
        .await
        .unwrap();
    conformance::run(Arc::new(store)).await;
}

#[tokio::test]
async fn open_without_create_refuses_missing_dir_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("not-mounted");
    let uri = StoreUri::parse(&format!("dir:{}", root.display())).unwrap();
    let err = open_store(&uri, false).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(
        err.to_string().contains(&root.display().to_string()),
        "error names the path: {err}"
    );
    assert!(!root.exists(), "open(create=false) created the directory");

    // An existing but empty directory (an empty mount point) is refused the same way.
    std::fs::create_dir(&root).unwrap();
    let err = open_store(&uri, false).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        0,
        "nothing may be created in an empty mount point"
    );

    // create=true makes it a store; then create=false opens it.
    open_store(&uri, true).await.unwrap();
    open_store(&uri, false).await.unwrap();
}

#[tokio::test]
async fn vanished_disk_is_unavailable_not_writes_on_root() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("disk");
    let store = DirStore::open(&root, true).await.unwrap();
    let key = ShardKey([7; 32]);
    store.put(&key, b"before").await.unwrap();
    // Simulate an unmount: the mount point is there again, empty.
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::create_dir(&root).unwrap();
    let err = store.put(&ShardKey([8; 32]), b"after").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(matches!(
        store.get(&Locator::from_key(&key), 1 << 24).await,
        Err(StoreError::Unavailable { .. })
    ));
    assert!(matches!(
        store.exists(&Locator::from_key(&key)).await,
        Err(StoreError::Unavailable { .. })
    ));
    assert!(matches!(
        store.delete(&Locator::from_key(&key)).await,
        Err(StoreError::Unavailable { .. })
    ));
    assert!(matches!(
        store.list().await,
        Err(StoreError::Unavailable { .. })
    ));
    assert!(matches!(
        store.probe().await,
        Err(StoreError::Unavailable { .. })
    ));
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        0,
        "the store wrote into the bare mount point"
    );
}

#[tokio::test]
async fn puts_recreate_a_removed_fanout_dir_but_never_a_vanished_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("disk");
    let store = DirStore::open(&root, true).await.unwrap();
    let first = ShardKey([7; 32]);
    store.put(&first, b"one").await.unwrap();
    // The store now believes shards/07/07/ exists; someone removes it.
    let fanout = store.shard_path(&Locator::from_key(&first)).unwrap();
    let top = fanout.parent().unwrap().parent().unwrap().to_path_buf();
    std::fs::remove_dir_all(&top).unwrap();
    let mut second = [7; 32];
    second[31] = 8;
    let second = ShardKey(second);
    store.put(&second, b"two").await.unwrap();
    assert_eq!(
        store
            .get(&Locator::from_key(&second), 1 << 24)
            .await
            .unwrap(),
        b"two"
    );
    // Same fan-out directory, but the whole disk is gone: unavailable, nothing written on the bare mount point.
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::create_dir(&root).unwrap();
    let mut third = [7; 32];
    third[31] = 9;
    let err = store.put(&ShardKey(third), b"three").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
}

#[tokio::test]
async fn identity_mismatch_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::open(tmp.path(), true).await.unwrap();
    let mine = StoreIdentity {
        volume_id: "vol-a".into(),
        store_id: 1,
    };
    let other = StoreIdentity {
        volume_id: "vol-b".into(),
        store_id: 1,
    };
    assert!(matches!(
        verify_identity(&store, &mine).await,
        Err(StoreError::IdentityMissing { .. })
    ));
    store.write_identity(&mine).await.unwrap();
    assert!(matches!(
        store.write_identity(&other).await,
        Err(StoreError::IdentityExists { .. })
    ));
    let err = verify_identity(&store, &other).await.unwrap_err();
    assert!(matches!(err, StoreError::IdentityMismatch { .. }), "{err}");
    assert!(!err.is_retryable());
    // The marker is the documented text file.
    let text = std::fs::read_to_string(tmp.path().join("qsfs-store.id")).unwrap();
    assert_eq!(text.as_bytes(), mine.encode());
    // A reopened store sees the same marker.
    let again = DirStore::open(tmp.path(), false).await.unwrap();
    verify_identity(&again, &mine).await.unwrap();
}

#[tokio::test]
async fn temp_files_are_not_listed_and_stale_ones_are_cleaned() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::open(tmp.path(), true).await.unwrap();
    let key = ShardKey([0xab; 32]);
    let loc = store.put(&key, b"data").await.unwrap();
    let path = store.shard_path(&loc).unwrap();
    assert!(
        path.ends_with(format!("shards/ab/ab/{}", key.to_hex())),
        "{}",
        path.display()
    );
    let dir = path.parent().unwrap();
    // A fresh temp file (a put in flight) and a stale one (left by a crash an hour+ ago).
    let fresh = dir.join(format!(".tmp-{}-0000000000000001", key.to_hex()));
    let stale = dir.join(format!(".tmp-{}-0000000000000002", key.to_hex()));
    std::fs::write(&fresh, b"partial").unwrap();
    std::fs::write(&stale, b"partial").unwrap();
    let old = SystemTime::now() - Duration::from_secs(2 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(old)
        .unwrap();
    // Also a stray file with a bad name.
    std::fs::write(dir.join("not-a-shard"), b"x").unwrap();

    assert_eq!(store.list().await.unwrap(), vec![loc.clone()]);
    assert!(fresh.exists(), "an in-flight temp file must not be removed");
    assert!(!stale.exists(), "a stale temp file should be cleaned");
    assert_eq!(store.get(&loc, 1 << 24).await.unwrap(), b"data");
}

#[tokio::test]
async fn put_replaces_whole_file_and_ranges_read_positioned() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::open(tmp.path(), true).await.unwrap();
    let key = ShardKey([1; 32]);
    let loc = store.put(&key, b"0123456789").await.unwrap();
    // Damage the stored file; a second put of the same key heals it (atomic replace, not in-place write).
    let path = store.shard_path(&loc).unwrap();
    std::fs::write(&path, b"garbage").unwrap();
    store.put(&key, b"0123456789").await.unwrap();
    assert_eq!(store.get_range(&loc, 3, 4).await.unwrap(), b"3456");
    assert!(matches!(
        store.get_range(&loc, 8, 3).await,
        Err(StoreError::RangeOutOfBounds { size: 10, .. })
    ));
    // Locators this store never issues are simply absent.
    let odd = Locator(vec![1, 2, 3]);
    assert!(matches!(
        store.get(&odd, 1 << 24).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(!store.exists(&odd).await.unwrap());
    store.delete(&odd).await.unwrap();
}

#[tokio::test]
async fn probe_reports_free_space() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::open(tmp.path(), true).await.unwrap();
    let health = store.probe().await.unwrap();
    assert!(health.free_bytes.is_some_and(|f| f > 0), "{health:?}");
}

#[tokio::test]
async fn relative_root_is_refused() {
    let err = DirStore::open("relative/dir", true).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidUri { .. }), "{err}");
    assert!(!std::path::Path::new("relative").exists());
}
