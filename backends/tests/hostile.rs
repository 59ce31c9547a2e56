//! The hostile cases (`testing::hostile`) against the redis and 0-db stores, each through a `LyingProxy`. One test
//! at a time (a lock), so the memory each case measures is its own.

use qsfs_backends::testing::{LyingProxy, RedisServer, ZdbServerConfig, ZdbTestServer, hostile};
use qsfs_backends::{StoreUri, open_store};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn redis_store_survives_a_lying_server() {
    let _one = ONE_AT_A_TIME.lock().await;
    let server = RedisServer::start().expect("redis-server");
    let proxy = LyingProxy::start(server.addr()).unwrap();
    let uri = format!("redis://127.0.0.1:{}/0", proxy.port());
    let store = open_store(&StoreUri::parse(&uri).unwrap(), false)
        .await
        .unwrap();
    hostile::run(store.as_ref(), &proxy).await;
    hostile::run_every_read(store.as_ref(), &proxy).await;
}

#[tokio::test]
async fn zdb_store_survives_a_lying_server() {
    let _one = ONE_AT_A_TIME.lock().await;
    let server = ZdbTestServer::start(ZdbServerConfig::default()).unwrap();
    server.create_namespace("qsfs", Some("pw")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "pw\n").unwrap();
    // Password files must be private (the store refuses one others can read).
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let proxy = LyingProxy::start(server.addr()).unwrap();
    let uri = format!(
        "zdb://127.0.0.1:{}/qsfs?mode=user&password-file={}",
        proxy.port(),
        pw.display()
    );
    let store = open_store(&StoreUri::parse(&uri).unwrap(), false)
        .await
        .unwrap();
    hostile::run(store.as_ref(), &proxy).await;
    hostile::run_every_read(store.as_ref(), &proxy).await;
}
