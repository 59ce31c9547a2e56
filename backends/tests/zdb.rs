//! ZdbStore against the protocol-level 0-db test server (user, seq, mixed, passwords, limits, reconnects) and
//! against a real `zdb` binary when one is on PATH.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qsfs_backends::testing::{
    NamespaceOptions, NsMode, ZdbServerConfig, ZdbServerMode, ZdbTestServer, conformance,
};
use qsfs_backends::{
    Locator, ShardKey, ShardStore, StoreError, StoreIdentity, StoreUri, ZDB_MAX_VALUE, open_store,
};

fn server(mode: ZdbServerMode) -> ZdbTestServer {
    ZdbTestServer::start(ZdbServerConfig {
        mode,
        ..ZdbServerConfig::default()
    })
    .unwrap()
}

async fn store(uri: &str) -> Arc<dyn ShardStore> {
    open_store(&StoreUri::parse(uri).unwrap(), false)
        .await
        .unwrap()
}

fn password_file(dir: &Path, password: &str) -> PathBuf {
    let p = dir.join("zdb.pw");
    std::fs::write(&p, format!("{password}\n")).unwrap();
    // Password files must be private to their owner, like the volume's key.
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    p
}

#[tokio::test]
async fn conformance_user_mode() {
    let srv = server(ZdbServerMode::User);
    srv.create_namespace("qsfs", None).unwrap();
    conformance::run(store(&srv.uri("qsfs", None)).await).await;
}

#[tokio::test]
async fn conformance_seq_mode() {
    let srv = server(ZdbServerMode::Seq);
    srv.create_namespace("qsfs", None).unwrap();
    let uri = srv.uri("qsfs", None);
    assert!(uri.contains("mode=seq"), "{uri}");
    conformance::run(store(&uri).await).await;
}

#[tokio::test]
async fn conformance_mixed_server_seq_namespace_with_password() {
    let srv = server(ZdbServerMode::Mixed);
    let opts = NamespaceOptions {
        password: Some("pw with spaces".into()),
        public: false,
        mode: Some(NsMode::Seq),
        ..Default::default()
    };
    srv.create_namespace_with("secret", &opts).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let pw = password_file(tmp.path(), "pw with spaces");
    conformance::run(store(&srv.uri("secret", Some(&pw))).await).await;
}

#[tokio::test]
async fn conformance_password_namespace_user_mode() {
    let srv = server(ZdbServerMode::Mixed);
    srv.create_namespace("secret", Some("hunter2")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let pw = password_file(tmp.path(), "hunter2");
    let s = store(&srv.uri("secret", Some(&pw))).await;
    assert!(!s.uri().contains("hunter2"));
    conformance::run(s).await;
}

#[tokio::test]
async fn wrong_password_is_a_clear_auth_error() {
    let srv = server(ZdbServerMode::User);
    srv.create_namespace_with(
        "private",
        &NamespaceOptions {
            password: Some("right".into()),
            public: false,
            ..Default::default()
        },
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let wrong = password_file(tmp.path(), "wrong");
    let err = store(&srv.uri("private", Some(&wrong)))
        .await
        .probe()
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Auth { .. }), "{err}");
    assert!(
        err.to_string().contains("wrong namespace password"),
        "{err}"
    );
    assert!(!err.is_retryable());

    // No password at all on a private namespace: say a password is needed.
    let err = store(&srv.uri("private", None))
        .await
        .get(&Locator(vec![0; 32]), 1 << 24)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Auth { .. }), "{err}");
    assert!(err.to_string().contains("password-file"), "{err}");
}

#[tokio::test]
async fn public_protected_namespace_without_password_is_read_only() {
    let srv = server(ZdbServerMode::User);
    srv.create_namespace("pub", Some("pw")).unwrap();
    let s = store(&srv.uri("pub", None)).await;
    assert!(matches!(
        s.get(&Locator(vec![9; 32]), 1 << 24).await,
        Err(StoreError::NotFound { .. })
    ));
    let err = s.put(&ShardKey([1; 32]), b"x").await.unwrap_err();
    assert!(matches!(err, StoreError::Auth { .. }), "{err}");
}

#[tokio::test]
async fn missing_namespace_and_missing_password_file_are_clear() {
    let srv = server(ZdbServerMode::User);
    let err = store(&srv.uri("nope", None))
        .await
        .probe()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    let uri = StoreUri::parse(&format!(
        "zdb://127.0.0.1:{}/x?password-file=/nonexistent/pw",
        srv.port()
    ))
    .unwrap();
    let err = open_store(&uri, false).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Auth { .. }) && err.to_string().contains("/nonexistent/pw"),
        "{err}"
    );
}

#[tokio::test]
async fn eight_mib_limit_is_checked_before_sending() {
    let srv = server(ZdbServerMode::User);
    srv.create_namespace("ns", None).unwrap();
    let s = store(&srv.uri("ns", None)).await;
    assert_eq!(s.max_value_size(), Some(8 * 1024 * 1024));
    assert!(!s.supports_range());
    let err = s
        .put(&ShardKey([1; 32]), &vec![0; ZDB_MAX_VALUE as usize + 1])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::TooLarge { size, limit, .. } if size == ZDB_MAX_VALUE + 1 && limit == ZDB_MAX_VALUE),
        "{err}"
    );
    // Nothing was sent, so the connection is still good and the exact limit goes through.
    let loc = s
        .put(&ShardKey([2; 32]), &vec![7; ZDB_MAX_VALUE as usize])
        .await
        .unwrap();
    assert_eq!(
        s.get(&loc, 1 << 24).await.unwrap().len(),
        ZDB_MAX_VALUE as usize
    );
    assert!(matches!(
        s.get_range(&loc, 0, 1).await,
        Err(StoreError::RangeUnsupported { .. })
    ));
}

#[tokio::test]
async fn reconnect_authenticates_again() {
    let srv = server(ZdbServerMode::User);
    srv.create_namespace_with(
        "p",
        &NamespaceOptions {
            password: Some("pw".into()),
            public: false,
            ..Default::default()
        },
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let s = store(&srv.uri("p", Some(&password_file(tmp.path(), "pw")))).await;
    let loc = s.put(&ShardKey([5; 32]), b"first").await.unwrap();
    srv.drop_connections();
    // The first call after the drop may see the dead connection; the store must reconnect (in `default`) and
    // re-run the challenge, so a retry reaches our namespace, not `default`.
    let mut got = None;
    for _ in 0..3 {
        match s.get(&loc, 1 << 24).await {
            Ok(v) => {
                got = Some(v);
                break;
            }
            Err(e) => assert!(e.is_retryable(), "{e}"),
        }
    }
    assert_eq!(got.as_deref(), Some(&b"first"[..]));
    s.put(&ShardKey([6; 32]), b"second").await.unwrap();
    assert_eq!(srv.entry_count("p"), Some(2));
    assert_eq!(srv.entry_count("default"), Some(0));
}

#[tokio::test]
async fn down_server_is_unavailable_then_recovers() {
    let srv = server(ZdbServerMode::User);
    srv.create_namespace("ns", None).unwrap();
    let s = store(&srv.uri("ns", None)).await;
    let loc = s.put(&ShardKey([1; 32]), b"kept").await.unwrap();
    srv.set_down(true);
    let start = Instant::now();
    for _ in 0..2 {
        let err = s.get(&loc, 1 << 24).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
        assert!(err.is_retryable());
    }
    assert!(start.elapsed() < Duration::from_secs(10));
    srv.set_down(false);
    assert_eq!(s.get(&loc, 1 << 24).await.unwrap(), b"kept");

    // A stopped server (port closed) is Unavailable too, promptly.
    drop(srv);
    let err = s.probe().await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
}

#[tokio::test]
async fn seq_identity_must_be_first_entry() {
    let srv = server(ZdbServerMode::Seq);
    srv.create_namespace("used", None).unwrap();
    let s = store(&srv.uri("used", None)).await;
    let loc = s.put(&ShardKey([1; 32]), b"a shard").await.unwrap();
    assert_eq!(
        loc,
        Locator(0u64.to_le_bytes().to_vec()),
        "first seq id is 0"
    );
    let err = s
        .write_identity(&StoreIdentity {
            volume_id: "v".into(),
            store_id: 0,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Protocol { .. }), "{err}");
    // A namespace without a marker lists its id-0 shard (nothing may hide a shard from gc).
    assert_eq!(s.list().await.unwrap(), vec![loc.clone()]);

    // Even after the first entry is deleted, ids are not reused: still refused, and no stray entry is left.
    s.delete(&loc).await.unwrap();
    let err = s
        .write_identity(&StoreIdentity {
            volume_id: "v".into(),
            store_id: 0,
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("fresh namespace"), "{err}");
    assert_eq!(srv.entry_count("used"), Some(0));
    assert_eq!(s.read_identity().await.unwrap(), None);
}

#[tokio::test]
async fn seq_puts_of_same_key_get_distinct_ids() {
    let srv = server(ZdbServerMode::Seq);
    srv.create_namespace("ns", None).unwrap();
    let s = store(&srv.uri("ns", None)).await;
    s.write_identity(&StoreIdentity {
        volume_id: "v".into(),
        store_id: 2,
    })
    .await
    .unwrap();
    let a = s.put(&ShardKey([1; 32]), b"x").await.unwrap();
    let b = s.put(&ShardKey([1; 32]), b"x").await.unwrap();
    assert_eq!(a, Locator(1u64.to_le_bytes().to_vec()));
    assert_eq!(b, Locator(2u64.to_le_bytes().to_vec()));
}

#[tokio::test]
async fn list_pages_through_many_scan_batches() {
    let srv = server(ZdbServerMode::User);
    srv.create_namespace("ns", None).unwrap();
    let s = store(&srv.uri("ns", None)).await;
    s.write_identity(&StoreIdentity {
        volume_id: "v".into(),
        store_id: 1,
    })
    .await
    .unwrap();
    let mut expected = Vec::new();
    for i in 0..250u32 {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        expected.push(s.put(&ShardKey(k), &i.to_le_bytes()).await.unwrap());
    }
    // Overwrites and deletes leave retired log entries that SCAN must skip.
    s.delete(&expected.pop().unwrap()).await.unwrap();
    let mut listed = s.list().await.unwrap();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);
}

#[tokio::test]
async fn probe_reports_namespace_limit() {
    let srv = ZdbTestServer::start(ZdbServerConfig {
        disk_free_bytes: 10_000_000,
        ..ZdbServerConfig::default()
    })
    .unwrap();
    srv.create_namespace_with(
        "small",
        &NamespaceOptions {
            maxsize: 1000,
            ..Default::default()
        },
    )
    .unwrap();
    srv.create_namespace("big", None).unwrap();
    let small = store(&srv.uri("small", None)).await;
    small.put(&ShardKey([1; 32]), &[0; 400]).await.unwrap();
    let h = small.probe().await.unwrap();
    assert_eq!((h.free_bytes, h.used_bytes), (Some(600), Some(400)));
    let err = small.put(&ShardKey([2; 32]), &[0; 700]).await.unwrap_err();
    assert!(matches!(err, StoreError::Full { .. }), "{err}");
    let h = store(&srv.uri("big", None)).await.probe().await.unwrap();
    assert_eq!(h.free_bytes, Some(10_000_000));
}

/// A real `zdb` process (0-db), killed on drop.
struct RealZdb {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for RealZdb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RealZdb {
    /// Starts `zdb --mode <mode>` when a zdb binary is on PATH; `None` (after saying so) otherwise.
    async fn start(mode: &str) -> Option<RealZdb> {
        let Some(zdb) = find_on_path("zdb") else {
            println!("skipping: no zdb binary on PATH");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(zdb)
            .args([
                "--listen",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--mode",
                mode,
            ])
            .arg("--data")
            .arg(dir.path().join("data"))
            .arg("--index")
            .arg(dir.path().join("index"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let server = RealZdb {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "zdb did not start listening");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(server)
    }

    /// Runs admin commands (no --admin password: every client is admin) on a bare connection.
    async fn admin(&self, commands: &[&[&str]]) {
        // No CLIENT SETINFO: 0-db does not know it.
        let info = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Tcp(
            "127.0.0.1".into(),
            self.port,
        ))
        .unwrap()
        .set_redis_settings(redis::RedisConnectionInfo::default().set_skip_set_lib_name());
        let client = redis::Client::open(info).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        for args in commands {
            let mut cmd = redis::cmd(args[0]);
            for a in &args[1..] {
                cmd.arg(*a);
            }
            let _: () = cmd
                .query_async(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
    }
}

/// A real 0-db, when installed: the same suite, to keep the test server honest.
#[tokio::test]
async fn real_zdb_user_mode() {
    let Some(zdb) = RealZdb::start("user").await else {
        return;
    };
    zdb.admin(&[&["NSNEW", "qsfs"]]).await;
    let s = store(&format!("zdb://127.0.0.1:{}/qsfs", zdb.port)).await;
    conformance::run(s.clone()).await;
    // Enough entries, overwrites and deletes that SCAN has retired index entries to skip.
    let mut expected = Vec::new();
    for i in 0..400u32 {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        expected.push(s.put(&ShardKey(k), &i.to_le_bytes()).await.unwrap());
    }
    for loc in expected.drain(..100) {
        s.delete(&loc).await.unwrap();
    }
    let mut listed = s.list().await.unwrap();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);
}

#[tokio::test]
async fn real_zdb_seq_mode_with_password() {
    let Some(zdb) = RealZdb::start("seq").await else {
        return;
    };
    zdb.admin(&[
        &["NSNEW", "qsfs"],
        &["NSSET", "qsfs", "password", "s3cret"],
        &["NSSET", "qsfs", "public", "0"],
        &["NSSET", "qsfs", "maxsize", "100000000"],
    ])
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let uri = |pw: &Path| {
        format!(
            "zdb://127.0.0.1:{}/qsfs?mode=seq&password-file={}",
            zdb.port,
            pw.display()
        )
    };
    let wrong = store(&uri(&password_file(tmp.path(), "wrong"))).await;
    let err = wrong.probe().await.unwrap_err();
    assert!(matches!(err, StoreError::Auth { .. }), "{err}");
    let nopw = store(&format!("zdb://127.0.0.1:{}/qsfs?mode=seq", zdb.port)).await;
    assert!(matches!(nopw.probe().await, Err(StoreError::Auth { .. })));
    let s = store(&uri(&password_file(tmp.path(), "s3cret"))).await;
    conformance::run(s.clone()).await;
    let h = s.probe().await.unwrap();
    assert!(h.free_bytes.is_some_and(|f| f <= 100_000_000), "{h:?}");
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}
