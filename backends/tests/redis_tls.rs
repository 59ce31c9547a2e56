//! RedisStore over TLS (`rediss://`) against a real redis-server with a TLS port and a test CA.

use std::time::{Duration, Instant};

use qsfs_backends::testing::{RedisServer, conformance};
use qsfs_backends::{Locator, ShardKey, StoreError, StoreUri, open_store};

fn tls_server() -> RedisServer {
    RedisServer::start_tls()
        .unwrap_or_else(|e| panic!("cannot start redis-server with TLS for this test: {e}"))
}

#[tokio::test]
async fn conformance_suite_over_tls() {
    let server = tls_server();
    let uri = StoreUri::parse(&server.tls_uri().unwrap()).unwrap();
    conformance::run(open_store(&uri, false).await.unwrap()).await;
}

/// A certificate no trusted CA signed is refused at once, as an authentication error naming the store — on the
/// write path (the redis crate) and the read path (the bounded reader) alike.
#[tokio::test]
async fn a_server_signed_by_another_ca_is_refused() {
    let server = tls_server();
    let other = tls_server();
    let port = server.tls_uri().unwrap();
    let port = port.split(':').nth(2).unwrap().split('/').next().unwrap();
    let uri = format!(
        "rediss://localhost:{port}/0?ca-file={}",
        other.ca_file().display()
    );
    let store = open_store(&StoreUri::parse(&uri).unwrap(), false)
        .await
        .unwrap();
    let start = Instant::now();
    let read = store
        .get(&Locator::from_key(&ShardKey([3; 32])), 100)
        .await
        .unwrap_err();
    assert!(matches!(read, StoreError::Auth { .. }), "{read}");
    assert!(!read.is_retryable(), "{read}");
    assert!(
        read.to_string().contains(&format!("localhost:{port}")),
        "{read}"
    );
    let write = store.put(&ShardKey([3; 32]), b"x").await.unwrap_err();
    assert!(write.to_string().contains("certificate"), "{write}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

/// The certificate names `localhost` only: the same server reached as 127.0.0.1 is refused.
#[tokio::test]
async fn a_host_the_certificate_does_not_name_is_refused() {
    let server = tls_server();
    let uri = server.tls_uri().unwrap().replace("localhost", "127.0.0.1");
    let store = open_store(&StoreUri::parse(&uri).unwrap(), false)
        .await
        .unwrap();
    let e = store
        .get(&Locator::from_key(&ShardKey([4; 32])), 100)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Auth { .. }), "{e}");
    assert!(e.to_string().contains("certificate"), "{e}");
}

#[tokio::test]
async fn a_missing_or_empty_ca_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = format!(
        "rediss://localhost:1/0?ca-file={}/nope.pem",
        dir.path().display()
    );
    let e = open_store(&StoreUri::parse(&missing).unwrap(), false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("nope.pem"), "{e}");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let uri = format!("rediss://localhost:1/0?ca-file={}", empty.display());
    let e = open_store(&StoreUri::parse(&uri).unwrap(), false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no usable PEM certificate"), "{e}");
}
