use super::*;

fn ok(s: &str) -> StoreUri {
    StoreUri::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn err(s: &str) -> String {
    match StoreUri::parse(s) {
        Ok(u) => panic!("{s} parsed as {u}"),
        Err(e) => {
            assert!(matches!(e, StoreError::InvalidUri { .. }), "{e}");
            e.to_string()
        }
    }
}

#[test]
fn dir_uris() {
    assert_eq!(
        ok("dir:/srv/qsfs/a"),
        StoreUri::Dir {
            path: "/srv/qsfs/a".into()
        }
    );
    assert_eq!(
        ok("dir:///srv/x"),
        StoreUri::Dir {
            path: "/srv/x".into()
        }
    );
    assert_eq!(ok("dir:/srv/x").to_string(), "dir:/srv/x");
    assert!(err("dir:relative/path").contains("absolute"));
    assert!(err("dir:./x").contains("absolute"));
    assert!(err("dir:").contains("missing"));
}

#[test]
fn redis_uris() {
    assert_eq!(
        ok("redis://127.0.0.1:7000/3"),
        StoreUri::Redis {
            host: "127.0.0.1".into(),
            port: 7000,
            db: 3,
            username: None,
            password: None,
            tls: None
        }
    );
    assert_eq!(
        ok("redis://localhost"),
        StoreUri::Redis {
            host: "localhost".into(),
            port: 6379,
            db: 0,
            username: None,
            password: None,
            tls: None
        }
    );
    let u = ok("redis://:s3cr%40t@h:1/2");
    assert_eq!(
        u,
        StoreUri::Redis {
            host: "h".into(),
            port: 1,
            db: 2,
            username: None,
            password: Some(Password::Inline("s3cr@t".into())),
            tls: None
        }
    );
    assert_eq!(u.to_string(), "redis://:***@h:1/2");
    assert!(!format!("{u:?}").contains("s3cr"));
    let u = ok("redis://alice:pw@[::1]:6380/");
    assert_eq!(u.to_string(), "redis://alice:***@[::1]:6380/0");
    assert_eq!(ok("redis://h:1").to_string(), "redis://h:1/0");
    assert!(err("redis://h:0/0").contains("port"));
    assert!(err("redis://h:99999/0").contains("port"));
    assert!(err("redis://h:1/x").contains("database"));
    assert!(err("redis://h:1/-1").contains("database"));
    assert!(err("redis://:1/0").contains("host"));
    assert!(err("redis://h/0?x=1").contains("unknown query parameter"));
    // The error message of an unparsable URI must not leak its password either.
    let e = err("redis://:hunter2@h:bad/0");
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn redis_passwords_from_files_and_variables() {
    let u = ok("redis://h:1/2?password-file=/etc/qsfs/redis%20pw");
    assert_eq!(
        u,
        StoreUri::Redis {
            host: "h".into(),
            port: 1,
            db: 2,
            username: None,
            password: Some(Password::File("/etc/qsfs/redis pw".into())),
            tls: None
        }
    );
    assert!(!u.has_inline_password());
    assert_eq!(
        u.to_string(),
        "redis://h:1/2?password-file=/etc/qsfs/redis pw"
    );
    let u = ok("redis://alice@h?password-env=REDIS_PW");
    assert_eq!(
        u.to_string(),
        "redis://alice@h:6379/0?password-env=REDIS_PW"
    );
    assert_eq!(ok(&u.to_string()), u, "Display output parses back");
    assert!(ok("redis://:pw@h").has_inline_password());
    assert!(err("redis://h?password-file=rel").contains("absolute"));
    assert!(err("redis://h?password-env=1X").contains("password-env"));
    assert!(err("redis://:pw@h?password-env=X").contains("one way"));
    assert!(err("redis://h?password-env=X&password-file=/p").contains("one way"));
    let e = err("redis://h?password=hunter2");
    assert!(e.contains("password-file") && !e.contains("hunter2"), "{e}");
}

#[test]
fn rediss_uris() {
    let u = ok("rediss://h:6380/1?ca-file=/etc/qsfs/ca.pem&password-file=/etc/qsfs/pw");
    assert_eq!(
        u,
        StoreUri::Redis {
            host: "h".into(),
            port: 6380,
            db: 1,
            username: None,
            password: Some(Password::File("/etc/qsfs/pw".into())),
            tls: Some(TlsSettings {
                ca_file: Some("/etc/qsfs/ca.pem".into())
            }),
        }
    );
    assert_eq!(
        u.to_string(),
        "rediss://h:6380/1?password-file=/etc/qsfs/pw&ca-file=/etc/qsfs/ca.pem"
    );
    assert_eq!(ok(&u.to_string()), u, "Display output parses back");
    assert_eq!(ok("rediss://h").to_string(), "rediss://h:6379/0");
    assert!(matches!(
        ok("rediss://h"),
        StoreUri::Redis {
            tls: Some(TlsSettings { ca_file: None }),
            ..
        }
    ));
    assert!(err("redis://h?ca-file=/ca.pem").contains("rediss://"));
    assert!(err("rediss://h?ca-file=ca.pem").contains("absolute"));
    assert!(err("rediss://h?ca-file=/a&ca-file=/b").contains("twice"));
}

#[test]
fn passwords_with_any_character_never_show() {
    for pw in ["p/w", "a?b", "x#y", "p:q", "pa@ss", "s p", "%2F", "a/b@c/d"] {
        let text = format!("redis://:{pw}@h:1/0");
        match StoreUri::parse(&text) {
            Ok(u) => {
                assert!(!u.to_string().contains(pw), "{pw}: {u}");
                assert!(!format!("{u:?}").contains(pw), "{pw}: {u:?}");
            }
            Err(e) => assert!(!e.to_string().contains(pw), "{pw}: {e}"),
        }
        let bad = format!("redis://:{pw}@h:bad/0");
        let e = err(&bad);
        assert!(!e.contains(pw), "{pw}: {e}");
        // A mistyped scheme, and a password holding "://" (found by the million-case fuzz run).
        let typo = format!("redis:/:{pw}://@h:1/0");
        let e = err(&typo);
        assert!(!e.contains(&format!("{pw}:")), "{pw}: {e}");
    }
    assert_eq!(
        StoreUri::parse("redis://:pa/ss@h:1/0").unwrap(),
        StoreUri::Redis {
            host: "h".into(),
            port: 1,
            db: 0,
            username: None,
            password: Some(Password::Inline("pa/ss".into())),
            tls: None
        }
    );
}

#[test]
fn zdb_uris() {
    assert_eq!(
        ok("zdb://10.0.0.5/ns1"),
        StoreUri::Zdb {
            host: "10.0.0.5".into(),
            port: 9900,
            namespace: "ns1".into(),
            password_file: None,
            mode: ZdbMode::User
        }
    );
    let u = ok("zdb://h:9901/ns?password-file=/etc/qsfs/pw&mode=seq");
    assert_eq!(
        u,
        StoreUri::Zdb {
            host: "h".into(),
            port: 9901,
            namespace: "ns".into(),
            password_file: Some("/etc/qsfs/pw".into()),
            mode: ZdbMode::Seq
        }
    );
    assert_eq!(
        u.to_string(),
        "zdb://h:9901/ns?mode=seq&password-file=/etc/qsfs/pw"
    );
    assert_eq!(ok(&u.to_string()), u, "Display output parses back");
    assert_eq!(
        ok("zdb://[::1]/n?mode=user").to_string(),
        "zdb://[::1]:9900/n?mode=user"
    );
    assert!(err("zdb://h:9900").contains("namespace"));
    assert!(err("zdb://h:9900/").contains("namespace"));
    assert!(err("zdb://h/ns?mode=fast").contains("mode"));
    assert!(err("zdb://h/ns?foo=1").contains("unknown"));
    assert!(err("zdb://h/ns?password-file=rel/pw").contains("absolute"));
    let e = err("zdb://:pw@h/ns");
    assert!(e.contains("password-file") && !e.contains(":pw@"), "{e}");
    assert!(err("zdb://h/ns?password=x").contains("password-file"));
}

#[test]
fn unknown_scheme() {
    assert!(err("gs://bucket").contains("scheme"));
    assert!(err("/abs/path").contains("scheme"));
}

#[test]
fn s3_uris() {
    let u = ok("s3://my-bucket/vol/a?endpoint=http://127.0.0.1:3900&region=garage");
    assert_eq!(
        u,
        StoreUri::S3(S3Uri {
            bucket: "my-bucket".into(),
            prefix: "vol/a".into(),
            endpoint: Some("http://127.0.0.1:3900".into()),
            region: "garage".into(),
            style: S3Style::Path,
            credentials_file: None,
            profile: None,
            ca_file: None,
        })
    );
    assert_eq!(
        u.to_string(),
        "s3://my-bucket/vol/a?endpoint=http://127.0.0.1:3900&region=garage&style=path"
    );
    assert_eq!(ok(&u.to_string()), u);
    // AWS: the region alone, virtual-host style.
    let aws = ok("s3://b12/?region=eu-west-3&credentials-file=/etc/qsfs/s3&profile=backup");
    let StoreUri::S3(s) = &aws else { panic!() };
    assert_eq!(
        (s.style, s.endpoint.as_deref(), s.prefix.as_str()),
        (S3Style::Virtual, None, "")
    );
    assert_eq!(ok(&aws.to_string()), aws);
    let StoreUri::S3(s) = ok("s3://bkt?endpoint=https://s3.eu-central-1.amazonaws.com") else {
        panic!()
    };
    assert_eq!(
        (s.style, s.region.as_str()),
        (S3Style::Virtual, DEFAULT_REGION)
    );
    let StoreUri::S3(s) =
        ok("s3://bkt?endpoint=https://minio.lan:9000/&style=virtual&ca-file=/etc/ca.pem")
    else {
        panic!()
    };
    assert_eq!(
        (s.style, s.endpoint.as_deref()),
        (S3Style::Virtual, Some("https://minio.lan:9000"))
    );
    assert_eq!(
        ok("s3://bkt?endpoint=http%3A%2F%2Fh%3A1").to_string(),
        "s3://bkt?endpoint=http://h:1&region=us-east-1&style=path"
    );
    assert_eq!(aws.scheme(), "s3");
}

#[test]
fn s3_uris_refused() {
    assert!(err("s3://ab?region=x").contains("bucket"));
    assert!(err("s3://Upper?region=x").contains("bucket"));
    assert!(err("s3://bkt").contains("endpoint"));
    assert!(err("s3://bkt/../x?region=r").contains("prefix"));
    assert!(err("s3://bkt/a//b?region=r").contains("prefix"));
    assert!(err("s3://bkt?endpoint=ftp://h").contains("http"));
    assert!(err("s3://bkt?endpoint=h:9000").contains("http"));
    assert!(err("s3://bkt?region=r&style=sideways").contains("style"));
    assert!(err("s3://bkt?region=r&region=s").contains("twice"));
    assert!(err("s3://bkt?region=r&profile=p").contains("credentials-file"));
    assert!(err("s3://bkt?region=r&credentials-file=rel/path").contains("absolute"));
    assert!(err("s3://bkt?endpoint=http://h&ca-file=/ca.pem").contains("https"));
    assert!(err("s3://bkt?region=r&bogus=1").contains("unknown"));
    // Secrets are refused without being repeated.
    for text in [
        "s3://bkt?region=r&secret_access_key=SuperSecret1",
        "s3://bkt?region=r&aws_access_key_id=SuperSecret1",
        "s3://AKIA:SuperSecret1@bkt?region=r",
        "s3://bkt?endpoint=http://AKIA:SuperSecret1@h&region=r",
    ] {
        let e = err(text);
        assert!(!e.contains("SuperSecret1"), "{e}");
    }
}
