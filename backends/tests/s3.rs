//! S3Store against a real Garage server (started per test by `testing::GarageServer`), plus a lying HTTP server
//! for what an honest Garage never does (ignore a Range, stream an endless reply).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qsfs_backends::testing::hostile::rss_bytes;
use qsfs_backends::testing::{GarageServer, conformance};
use qsfs_backends::{
    Locator, ShardKey, ShardStore, StoreError, StoreIdentity, StoreUri, open_store,
};

fn garage() -> GarageServer {
    GarageServer::start().unwrap_or_else(|e| panic!("cannot start garage for this test: {e}"))
}

async fn store_for(uri: &str) -> Arc<dyn ShardStore> {
    open_store(&StoreUri::parse(uri).unwrap(), false)
        .await
        .unwrap_or_else(|e| panic!("open {uri}: {e}"))
}

#[tokio::test]
async fn conformance_suite() {
    let g = garage();
    g.create_bucket("qsfs-conf").unwrap();
    conformance::run(store_for(&g.uri("qsfs-conf")).await).await;
}

#[tokio::test]
async fn conformance_suite_under_a_prefix_next_to_other_data() {
    let g = garage();
    g.create_bucket("qsfs-shared").unwrap();
    // Another tenant of the bucket, and another qsfs store under a sibling prefix: neither is seen.
    let other = store_for(&g.uri("qsfs-shared/volumes/b")).await;
    other.put(&ShardKey([7; 32]), b"not yours").await.unwrap();
    conformance::run(store_for(&g.uri("qsfs-shared/volumes/a")).await).await;
    assert_eq!(other.list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn object_layout_is_the_documented_one() {
    let g = garage();
    g.create_bucket("qsfs-layout").unwrap();
    let store = store_for(&g.uri("qsfs-layout/pre")).await;
    let key = ShardKey([0xab; 32]);
    store.put(&key, b"v").await.unwrap();
    // Read back through a store rooted at the bucket: the object sits at pre/shards/ab/<hex>.
    let root = open_store(&StoreUri::parse(&g.uri("qsfs-layout")).unwrap(), false)
        .await
        .unwrap();
    let listed = root.list().await.unwrap();
    assert!(
        listed.is_empty(),
        "a store rooted elsewhere must not see the shard: {listed:?}"
    );
    let nested = store_for(&g.uri("qsfs-layout/pre")).await;
    assert_eq!(nested.list().await.unwrap(), vec![Locator::from_key(&key)]);
}

/// A put of a shard whose stored copy was damaged replaces it (repair relies on it); a put of the same bytes
/// leaves the object alone.
#[tokio::test]
async fn put_heals_a_damaged_copy() {
    let g = garage();
    g.create_bucket("qsfs-heal").unwrap();
    let store = store_for(&g.uri("qsfs-heal")).await;
    let good = vec![0x42u8; 100_000];
    let key = ShardKey([3; 32]);
    let loc = store.put(&key, &good).await.unwrap();
    // Damage it the way a bad disk or a meddler would: same name, other bytes.
    let meddler =
        qsfs_backends::S3Store::new(match &StoreUri::parse(&g.uri("qsfs-heal")).unwrap() {
            StoreUri::S3(u) => u,
            _ => unreachable!(),
        })
        .unwrap();
    let mut bad = good.clone();
    bad[500] ^= 1;
    meddler.delete(&loc).await.unwrap();
    meddler.put(&key, &bad).await.unwrap();
    assert_eq!(store.get(&loc, 200_000).await.unwrap(), bad);
    store.put(&key, &good).await.unwrap();
    assert_eq!(store.get(&loc, 200_000).await.unwrap(), good);
    store.put(&key, &good).await.unwrap();
    assert_eq!(store.get(&loc, 200_000).await.unwrap(), good);
}

/// An object larger than the read expects is refused from its Content-Range, without its bytes being read.
#[tokio::test]
async fn oversized_object_is_refused_before_buffering() {
    let g = garage();
    g.create_bucket("qsfs-big").unwrap();
    let store = store_for(&g.uri("qsfs-big")).await;
    let loc = store
        .put(&ShardKey([9; 32]), &vec![1u8; 48 << 20])
        .await
        .unwrap();
    let before = rss_bytes();
    let start = Instant::now();
    for _ in 0..5 {
        match store.get(&loc, 4096).await {
            Err(StoreError::Refused { reason, uri }) => {
                assert!(reason.contains(&(48u64 << 20).to_string()), "{reason}");
                assert_eq!(uri, store.uri());
            }
            other => panic!("expected Refused, got {:?}", other.map(|v| v.len())),
        }
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    let grew = rss_bytes().saturating_sub(before);
    assert!(grew < 16 << 20, "refusing grew the process by {grew} bytes");
}

/// A server that answers every request with `head` and then `body_len` bytes (or endlessly).
fn lying_server(head: &'static str, body_len: Option<u64>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut req = [0u8; 8192];
                let _ = conn.read(&mut req);
                if conn.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                let mut sent = 0u64;
                while body_len.is_none_or(|n| sent < n) {
                    if conn.write_all(&chunk).is_err() {
                        return;
                    }
                    sent += chunk.len() as u64;
                }
            });
        }
    });
    port
}

/// A lying server's gigabytes are refused after the bytes a request can be due, whatever it declares.
#[tokio::test]
async fn lying_server_cannot_make_us_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    std::fs::write(&creds, "aws_access_key_id = a\naws_secret_access_key = b\n").unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let lies: [(&'static str, Option<u64>); 4] = [
        // Declares 10 GB for a 4 KB range.
        (
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-4096/4097\r\nContent-Length: 10000000000\r\n\r\n",
            Some(10_000_000_000),
        ),
        // Declares nothing and streams until the connection closes.
        (
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-4096/4097\r\nConnection: close\r\n\r\n",
            None,
        ),
        // An error document that never ends.
        (
            "HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n\r\n",
            None,
        ),
        // A listing page that never ends.
        (
            "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nConnection: close\r\n\r\n",
            None,
        ),
    ];
    for (i, (head, len)) in lies.into_iter().enumerate() {
        let port = lying_server(head, len);
        let uri = format!(
            "s3://liar?endpoint=http://127.0.0.1:{port}&region=x&credentials-file={}",
            creds.display()
        );
        let store = store_for(&uri).await;
        let (before, start) = (rss_bytes(), Instant::now());
        let loc = Locator::from_key(&ShardKey([1; 32]));
        let got = if i == 3 {
            tokio::time::timeout(Duration::from_secs(20), store.list())
                .await
                .expect("list hung")
                .map(|v| v.len())
        } else {
            tokio::time::timeout(Duration::from_secs(20), store.get(&loc, 4096))
                .await
                .expect("get hung")
                .map(|v| v.len())
        };
        let grew = rss_bytes().saturating_sub(before);
        match got {
            Err(e @ StoreError::Refused { .. }) => assert!(e.to_string().contains("liar"), "{e}"),
            other => panic!("lie {i}: expected Refused, got {other:?}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "lie {i} took {:?}",
            start.elapsed()
        );
        assert!(grew < 48 << 20, "lie {i}: the process grew by {grew} bytes");
    }
}

#[tokio::test]
async fn wrong_key_missing_bucket_and_dead_endpoint_are_clear() {
    let g = garage();
    g.create_bucket("qsfs-errs").unwrap();
    // A wrong secret: Auth, naming the store, without the secret.
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong");
    let (id, _) = g.access_key();
    std::fs::write(
        &wrong,
        format!(
            "[default]\naws_access_key_id = {id}\naws_secret_access_key = {}\n",
            "f".repeat(64)
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let uri = format!(
        "s3://qsfs-errs?endpoint={}&region=garage&credentials-file={}",
        g.endpoint(0),
        wrong.display()
    );
    let store = store_for(&uri).await;
    for err in [
        store.probe().await.unwrap_err(),
        store.put(&ShardKey([1; 32]), b"x").await.unwrap_err(),
        store.read_identity().await.unwrap_err(),
    ] {
        assert!(matches!(err, StoreError::Auth { .. }), "{err}");
        assert!(!err.is_retryable());
        let shown = err.to_string();
        assert!(
            shown.starts_with("s3://qsfs-errs?")
                && !shown.contains("ffffffff")
                && !shown.contains('\n'),
            "{shown}"
        );
    }
    // The wrong region: Garage names the one it expects.
    let uri = g
        .uri("qsfs-errs")
        .replace("region=garage", "region=us-east-1");
    let err = store_for(&uri).await.probe().await.unwrap_err();
    assert!(
        matches!(err, StoreError::Auth { .. }) && err.to_string().contains("/garage/"),
        "{err}"
    );
    // A bucket that does not exist.
    let missing = store_for(&g.uri("qsfs-nope")).await;
    for err in [
        missing.probe().await.unwrap_err(),
        missing.read_identity().await.unwrap_err(),
    ] {
        assert!(
            !err.is_retryable() && err.to_string().contains("qsfs-nope does not exist"),
            "{err}"
        );
    }
    // Nothing listening: Unavailable within seconds.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = store_for(&g.uri_via("qsfs-errs", &format!("http://127.0.0.1:{port}"))).await;
    let start = Instant::now();
    let err = dead
        .get(&Locator::from_key(&ShardKey([1; 32])), 10)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Unavailable { .. }) && err.is_retryable(),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn killed_server_is_unavailable_then_recovers_with_data() {
    let mut g = garage();
    g.create_bucket("qsfs-kill").unwrap();
    let store = store_for(&g.uri("qsfs-kill")).await;
    let loc = store.put(&ShardKey([5; 32]), b"durable").await.unwrap();
    g.kill_node(0);
    let err = store.get(&loc, 100).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    g.restart_node(0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match store.get(&loc, 100).await {
            Ok(v) => break assert_eq!(v, b"durable"),
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("no recovery: {e}"),
        }
    }
}

#[tokio::test]
async fn credentials_come_from_a_private_file_or_the_environment_only() {
    let g = garage();
    let path = g.credentials_file();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = open_store(&StoreUri::parse(&g.uri("qsfs-any")).unwrap(), false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Auth { .. }) && err.to_string().contains("chmod 600"),
        "{err}"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Without a file, the standard variables; missing ones are named.
    let bare = format!("s3://qsfs-any?endpoint={}&region=garage", g.endpoint(0));
    // SAFETY-free: this test binary's other tests use credentials files, never these variables.
    let err = open_store(&StoreUri::parse(&bare).unwrap(), false).await;
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        let err = err.unwrap_err();
        assert!(err.to_string().contains("AWS_ACCESS_KEY_ID"), "{err}");
    }
}

#[tokio::test]
async fn identity_marker_is_never_overwritten() {
    let g = garage();
    g.create_bucket("qsfs-id").unwrap();
    let a = store_for(&g.uri("qsfs-id")).await;
    let b = store_for(&g.uri("qsfs-id")).await;
    let mine = StoreIdentity {
        volume_id: "v1".into(),
        store_id: 0,
    };
    let theirs = StoreIdentity {
        volume_id: "v2".into(),
        store_id: 0,
    };
    a.write_identity(&mine).await.unwrap();
    assert!(matches!(
        b.write_identity(&theirs).await,
        Err(StoreError::IdentityExists { .. })
    ));
    b.remove_identity(&theirs).await.unwrap();
    assert_eq!(a.read_identity().await.unwrap(), Some(mine.clone()));
    a.remove_identity(&mine).await.unwrap();
    assert_eq!(b.read_identity().await.unwrap(), None);
}

/// What each store call costs in S3 requests (providers bill per request): a put is one PUT, a get one GET, a
/// listing one LIST per 1,000 objects — counted by the server. Also shows the harness's counter counts.
#[tokio::test]
async fn each_call_is_one_request() {
    let g = garage();
    g.create_bucket("qsfs-cost").unwrap();
    let store = store_for(&g.uri("qsfs-cost")).await;
    let count = |kind: &str| g.s3_requests().unwrap().get(kind).copied().unwrap_or(0);
    let (puts, gets, lists) = (count("PutObject"), count("GetObject"), count("ListObjects"));
    let mut locs = Vec::new();
    for i in 0..3u8 {
        locs.push(
            store
                .put(&ShardKey([i; 32]), &vec![i; 300_000])
                .await
                .unwrap(),
        );
    }
    for l in &locs {
        store.get(l, 300_000).await.unwrap();
    }
    store.get_range(&locs[0], 10, 20).await.unwrap();
    assert_eq!(store.list().await.unwrap().len(), 3);
    assert_eq!(count("PutObject") - puts, 3);
    assert_eq!(count("GetObject") - gets, 4);
    assert_eq!(count("ListObjects") - lists, 1);
    assert_eq!(
        count("HeadObject"),
        0,
        "no hidden HEAD before a read or write"
    );
}

/// An HTTP proxy in front of Garage that, while armed, answers every PUT carrying `If-None-Match: *` with 412
/// Precondition Failed, as a server with conditional writes (AWS, MinIO) does for an object that exists — Garage
/// 2.x ignores the header. Every other request goes to Garage unchanged, one connection per request.
struct ConditionalProxy {
    port: u16,
    armed: Arc<std::sync::atomic::AtomicBool>,
    refused: Arc<std::sync::atomic::AtomicUsize>,
}

impl ConditionalProxy {
    fn start(target: u16) -> ConditionalProxy {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicUsize::new(0));
        let (a, r) = (armed.clone(), refused.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (a, r) = (a.clone(), r.clone());
                std::thread::spawn(move || {
                    let mut client = std::io::BufReader::new(conn);
                    while let Some((head, body)) = read_request(&mut client) {
                        let conditional =
                            head.to_ascii_lowercase().contains("\r\nif-none-match: *");
                        let reply = if head.starts_with("PUT ")
                            && conditional
                            && a.load(Ordering::SeqCst)
                        {
                            r.fetch_add(1, Ordering::SeqCst);
                            let xml = "<Error><Code>PreconditionFailed</Code><Message>exists</Message></Error>";
                            format!("HTTP/1.1 412 Precondition Failed\r\nContent-Length: {}\r\n\r\n{xml}", xml.len()).into_bytes()
                        } else {
                            forward(target, &head, &body)
                        };
                        if client.get_mut().write_all(&reply).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        ConditionalProxy {
            port,
            armed,
            refused,
        }
    }
}

/// One request off a keep-alive connection: its head (through the blank line) and its Content-Length body.
fn read_request(r: &mut impl std::io::BufRead) -> Option<(String, Vec<u8>)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>())
        })
        .and_then(Result::ok)
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((head, body))
}

/// Sends one request to Garage on a fresh connection it is asked to close, and returns the whole reply.
fn forward(port: u16, head: &str, body: &[u8]) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let head = head.replacen("\r\n", "\r\nConnection: close\r\n", 1);
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    reply
}

/// Where the server refuses to overwrite (412), a put of the same bytes is done without a second write, a put
/// over a damaged copy replaces it, and an identity marker is never replaced.
#[tokio::test]
async fn conditional_writes_keep_good_copies_and_replace_damaged_ones() {
    use std::sync::atomic::Ordering;
    let g = garage();
    g.create_bucket("qsfs-cond").unwrap();
    let proxy = ConditionalProxy::start(g.s3_port(0));
    let store =
        store_for(&g.uri_via("qsfs-cond", &format!("http://127.0.0.1:{}", proxy.port))).await;
    let direct = store_for(&g.uri("qsfs-cond")).await;
    let puts = || {
        g.s3_requests()
            .unwrap()
            .get("PutObject")
            .copied()
            .unwrap_or(0)
    };
    let key = ShardKey([0x5c; 32]);
    let good = vec![0xa5u8; 200_000];
    let loc = store.put(&key, &good).await.unwrap();
    proxy.armed.store(true, Ordering::SeqCst);

    let before = puts();
    store.put(&key, &good).await.unwrap();
    assert_eq!(proxy.refused.load(Ordering::SeqCst), 1);
    assert_eq!(puts(), before, "an intact shard was written again");

    let mut bad = good.clone();
    bad[1234] ^= 0xff;
    direct.delete(&loc).await.unwrap();
    direct.put(&key, &bad).await.unwrap();
    store.put(&key, &good).await.unwrap();
    assert_eq!(proxy.refused.load(Ordering::SeqCst), 2);
    assert_eq!(
        direct.get(&loc, 200_000).await.unwrap(),
        good,
        "the damaged copy stays"
    );

    let mine = StoreIdentity {
        volume_id: "v1".into(),
        store_id: 1,
    };
    proxy.armed.store(false, Ordering::SeqCst);
    store.write_identity(&mine).await.unwrap();
    proxy.armed.store(true, Ordering::SeqCst);
    let theirs = StoreIdentity {
        volume_id: "v2".into(),
        store_id: 1,
    };
    assert!(matches!(
        store.write_identity(&theirs).await,
        Err(StoreError::IdentityExists { .. })
    ));
    assert_eq!(direct.read_identity().await.unwrap(), Some(mine));
}
