//! Property tests of store-URI parsing: whatever a config file or a command line holds, `StoreUri::parse` returns
//! a value or an `InvalidUri` error that names the problem — it never panics — and no password, whatever
//! characters it holds, ever shows in a parsed URI's `Display`/`Debug` or in an error message.

use proptest::prelude::*;
use qsfs_backends::{StoreError, StoreUri};

/// URIs of every scheme with and without their optional parts, from which mutations start.
fn valid_uri() -> impl Strategy<Value = String> {
    let host = prop_oneof![
        Just("localhost".to_string()),
        Just("127.0.0.1".to_string()),
        Just("[::1]".to_string()),
        "[a-z][a-z0-9.-]{0,20}",
    ];
    let port = prop_oneof![
        Just(String::new()),
        (1u16..=65535).prop_map(|p| format!(":{p}"))
    ];
    let redis =
        (host.clone(), port.clone(), 0u8..16, 0u8..4, 0u8..3).prop_map(|(h, p, db, pw, tls)| {
            let mut q = match pw {
                1 => vec!["password-file=/etc/qsfs/pw"],
                2 => vec!["password-env=REDIS_PW"],
                _ => vec![],
            };
            if tls == 2 {
                q.push("ca-file=/etc/qsfs/ca.pem");
            }
            let q = if q.is_empty() {
                String::new()
            } else {
                format!("?{}", q.join("&"))
            };
            let auth = if pw == 3 { ":secret@" } else { "" };
            let scheme = if tls > 0 { "rediss" } else { "redis" };
            format!("{scheme}://{auth}{h}{p}/{db}{q}")
        });
    let zdb = (host, port, "[a-z0-9_-]{1,20}", any::<bool>()).prop_map(|(h, p, ns, seq)| {
        let mode = if seq { "seq" } else { "user" };
        format!("zdb://{h}{p}/{ns}?mode={mode}&password-file=/run/pw")
    });
    let dir = "(/[a-zA-Z0-9 ._-]{1,12}){1,4}".prop_map(|p| format!("dir:{p}"));
    let s3 = (
        "[a-z0-9][a-z0-9.-]{1,20}[a-z0-9]",
        "(/[a-zA-Z0-9_-]{1,8}){0,3}",
        prop_oneof![
            Just(String::new()),
            "https?://[a-z][a-z0-9.-]{0,12}(:[1-9][0-9]{0,3})?"
                .prop_map(|e| format!("endpoint={e}&"))
        ],
        0u8..3,
        any::<bool>(),
    )
        .prop_map(|(bucket, prefix, endpoint, style, creds)| {
            let style = ["", "&style=path", "&style=virtual"][style as usize];
            let creds = if creds {
                "&credentials-file=/etc/qsfs/s3&profile=b"
            } else {
                ""
            };
            format!("s3://{bucket}{prefix}?{endpoint}region=eu-1{style}{creds}")
        });
    prop_oneof![redis, zdb, dir, s3]
}

/// One edit of a string: insert, delete or replace a character at some position.
fn mutate(s: &str, edits: &[(usize, u8, char)]) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    for &(pos, op, c) in edits {
        let i = if chars.is_empty() {
            0
        } else {
            pos % (chars.len() + 1)
        };
        match op % 3 {
            0 => chars.insert(i, c),
            1 if i < chars.len() => {
                chars.remove(i);
            }
            _ if i < chars.len() => chars[i] = c,
            _ => chars.push(c),
        }
    }
    chars.into_iter().collect()
}

/// Parses `text`, checking the contract: an error is `InvalidUri` with a reason; a parsed URI prints.
fn check(text: &str) -> Result<StoreUri, String> {
    match StoreUri::parse(text) {
        Ok(u) => {
            let _ = format!("{u} {u:?}");
            Ok(u)
        }
        Err(StoreError::InvalidUri { reason, .. }) if !reason.trim().is_empty() => Err(reason),
        Err(e) => panic!("{text:?}: not an InvalidUri error with a reason: {e:?}"),
    }
}

fn interesting_char() -> impl Strategy<Value = char> {
    prop_oneof![
        Just('@'),
        Just('/'),
        Just(':'),
        Just('?'),
        Just('&'),
        Just('='),
        Just('%'),
        Just('#'),
        Just('['),
        Just(']'),
        Just(' '),
        any::<char>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("QSFS_PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(2000)
    ))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let _ = check(&text);
    }

    #[test]
    fn mutated_uris_never_panic(
        uri in valid_uri(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), interesting_char()), 1..6),
    ) {
        let text = mutate(&uri, &edits);
        let _ = check(&text);
    }

    #[test]
    fn valid_uris_parse_and_print_back(uri in valid_uri()) {
        let parsed = check(&uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
        if !parsed.has_inline_password() {
            prop_assert_eq!(StoreUri::parse(&parsed.to_string()).unwrap(), parsed);
        }
    }

    /// A password of any characters, in a URI that may also be broken elsewhere, never shows.
    #[test]
    fn passwords_never_show(
        scheme in prop::sample::select(vec!["redis://", "zdb://", "redis:/", "rediss://", "s3://", ""]),
        user in "[a-z]{0,5}",
        password in "[^\u{0}-\u{1f}]{0,12}",
        tail in prop::sample::select(vec!["h:1/0", "h/ns", "h:bad/0", "h:1/x", "[::1]/0?x=1", "", "h?password-env=V"]),
    ) {
        // A marker makes the password distinctive, so finding it means it leaked rather than that it happens to
        // spell a piece of the rest of the URI.
        let password = format!("Pw7{password}");
        let text = format!("{scheme}{user}:{password}@{tail}");
        let shown = match check(&text) {
            Ok(u) => format!("{u} {u:?}"),
            Err(_) => StoreUri::parse(&text).unwrap_err().to_string(),
        };
        prop_assert!(!shown.contains(&password), "{text:?} shows its password: {shown}");
        let query = format!("redis://h:1/0?password={password}");
        let shown = StoreUri::parse(&query).map(|u| u.to_string()).unwrap_or_else(|e| e.to_string());
        prop_assert!(!shown.contains(&password), "{query:?} shows its password: {shown}");
    }
}
