//! RedisStore against a real redis-server (started per test by `testing::RedisServer`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use qsfs_backends::testing::{RedisServer, conformance};
use qsfs_backends::{Locator, ShardKey, ShardStore, StoreError, StoreUri, open_store};

fn server() -> RedisServer {
    RedisServer::start().unwrap_or_else(|e| panic!("cannot start redis-server for this test: {e}"))
}

async fn store_for(uri: &str) -> Arc<dyn ShardStore> {
    open_store(&StoreUri::parse(uri).unwrap(), false)
        .await
        .unwrap()
}

/// Runs a raw command through a plain redis connection (test setup only).
async fn admin(server: &RedisServer, args: &[&str]) -> redis::Value {
    let client = redis::Client::open(server.uri()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut conn).await.unwrap()
}

#[tokio::test]
async fn conformance_suite() {
    let server = server();
    conformance::run(store_for(&server.uri()).await).await;
}

#[tokio::test]
async fn conformance_suite_on_another_db() {
    let server = server();
    conformance::run(store_for(&format!("redis://127.0.0.1:{}/5", server.port())).await).await;
}

#[tokio::test]
async fn key_layout_is_documented_one() {
    let server = server();
    let store = store_for(&server.uri()).await;
    let key = ShardKey([0x11; 32]);
    store.put(&key, b"v").await.unwrap();
    let v = admin(&server, &["GET", &format!("qsfs:s:{}", key.to_hex())]).await;
    assert_eq!(v, redis::Value::BulkString(b"v".to_vec()));
}

#[tokio::test]
async fn opening_does_no_io_and_a_dead_server_is_unavailable() {
    // Nothing listens on this port (we bind and drop it).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = store_for(&format!("redis://127.0.0.1:{port}/0")).await;
    let start = Instant::now();
    let err = store
        .get(&Locator::from_key(&ShardKey([1; 32])), 1 << 24)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn killed_server_is_unavailable_then_recovers_with_data() {
    let mut server = server();
    let store = store_for(&server.uri()).await;
    let key = ShardKey([2; 32]);
    let loc = store.put(&key, b"durable").await.unwrap();

    server.kill();
    let start = Instant::now();
    let err = store.get(&loc, 1 << 24).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(err.is_retryable());
    let err = store.put(&ShardKey([3; 32]), b"x").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "a dead server must not hang callers: {:?}",
        start.elapsed()
    );

    // Same port and data dir: the append-only file (fsync always) brings the acknowledged put back.
    server.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match store.get(&loc, 1 << 24).await {
            Ok(v) => {
                assert_eq!(v, b"durable");
                break;
            }
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("store did not recover after restart: {e}"),
        }
    }
}

#[tokio::test]
async fn out_of_memory_is_full() {
    let server = server();
    let store = store_for(&server.uri()).await;
    admin(
        &server,
        &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
    )
    .await;
    admin(&server, &["CONFIG", "SET", "maxmemory", "3mb"]).await;
    let health = store.probe().await.unwrap();
    assert!(
        health.free_bytes.is_some() && health.used_bytes.is_some(),
        "{health:?}"
    );
    let mut full = None;
    for i in 0..16u8 {
        match store.put(&ShardKey([i; 32]), &vec![i; 1 << 20]).await {
            Ok(_) => {}
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    let err = full.expect("redis never refused a write over maxmemory");
    assert!(matches!(err, StoreError::Full { .. }), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn wrong_or_missing_password_is_auth() {
    let server = server();
    admin(&server, &["CONFIG", "SET", "requirepass", "s3cret"]).await;
    let wrong = store_for(&format!("redis://:nope@127.0.0.1:{}/0", server.port())).await;
    let err = wrong.probe().await.unwrap_err();
    assert!(matches!(err, StoreError::Auth { .. }), "{err}");
    assert!(!err.to_string().contains("nope"), "password leaked: {err}");
    let none = store_for(&server.uri()).await;
    let err = none.probe().await.unwrap_err();
    assert!(matches!(err, StoreError::Auth { .. }), "{err}");
    let right = store_for(&format!("redis://:s3cret@127.0.0.1:{}/0", server.port())).await;
    right.put(&ShardKey([4; 32]), b"ok").await.unwrap();
    assert_eq!(
        right.uri(),
        format!("redis://:***@127.0.0.1:{}/0", server.port())
    );
}

#[test]
fn redis_server_helper_works_from_sync_code() {
    let mut server = server();
    assert!(server.data_dir().is_dir());
    assert_eq!(
        server.uri(),
        format!("redis://127.0.0.1:{}/0", server.port())
    );
    assert!(server.is_running());
    server.kill();
    assert!(!server.is_running());
    assert!(std::net::TcpStream::connect(("127.0.0.1", server.port())).is_err());
}
