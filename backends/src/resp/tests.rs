//! The bounded RESP reader against well-formed, lying and arbitrary input.

use proptest::prelude::*;

use super::*;

fn parse(bytes: &[u8], limits: &Limits) -> Result<Reply> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut r: &[u8] = bytes;
        read_reply(&mut r, limits, "redis://test").await
    })
}

const WIDE: Limits = Limits {
    max_bulk: 1 << 20,
    max_array: 1000,
    max_depth: 4,
    max_elements: 10_000,
};

#[test]
fn well_formed_replies() {
    assert_eq!(
        parse(b"+OK\r\n", &WIDE).unwrap(),
        Reply::Status("OK".into())
    );
    assert_eq!(
        parse(b"-ERR x\r\n", &WIDE).unwrap(),
        Reply::Error("ERR x".into())
    );
    assert_eq!(parse(b":-7\r\n", &WIDE).unwrap(), Reply::Int(-7));
    assert_eq!(parse(b"$-1\r\n", &WIDE).unwrap(), Reply::Nil);
    assert_eq!(parse(b"$0\r\n\r\n", &WIDE).unwrap(), Reply::Bulk(vec![]));
    assert_eq!(
        parse(b"$5\r\na\r\nbc\r\n", &WIDE).unwrap(),
        Reply::Bulk(b"a\r\nbc".to_vec())
    );
    assert_eq!(
        parse(b"*2\r\n$1\r\nx\r\n*2\r\n:1\r\n*0\r\n", &WIDE).unwrap(),
        Reply::Array(vec![
            Reply::Bulk(b"x".to_vec()),
            Reply::Array(vec![Reply::Int(1), Reply::Array(vec![])]),
        ])
    );
}

#[test]
fn lies_about_sizes_are_refused_at_the_header() {
    // Only the header is present: a reader that believed it would wait for (or allocate) 4 GB.
    let e = parse(b"$4000000000\r\n", &Limits::bulk(1000)).unwrap_err();
    assert!(matches!(e, StoreError::Refused { .. }), "{e}");
    assert!(e.to_string().contains("4000000000"), "{e}");
    let e = parse(b"*2147483647\r\n:1\r\n:1\r\n", &WIDE).unwrap_err();
    assert!(matches!(e, StoreError::Refused { .. }), "{e}");
    let e = parse(b"*1\r\n$3\r\nabc\r\n", &Limits::bulk(1000)).unwrap_err();
    assert!(
        matches!(e, StoreError::Refused { .. }),
        "array where a bulk was expected: {e}"
    );
    let deep = "*1\r\n".repeat(10_000);
    let e = parse(deep.as_bytes(), &WIDE).unwrap_err();
    assert!(e.to_string().contains("nested deeper"), "{e}");
    // Many small arrays each within max_array but together past max_elements.
    let mut many = b"*100\r\n".to_vec();
    for _ in 0..100 {
        many.extend_from_slice(b"*100\r\n");
        many.extend_from_slice(&b":1\r\n".repeat(100));
    }
    let narrow = Limits {
        max_array: 100,
        max_depth: 2,
        max_elements: 500,
        ..WIDE
    };
    let e = parse(&many, &narrow).unwrap_err();
    assert!(e.to_string().contains("more than 500 elements"), "{e}");
    assert!(
        parse(
            &many,
            &Limits {
                max_elements: 100 * 101,
                ..narrow
            }
        )
        .is_ok()
    );
    let long = format!("-{}\r\n", "E".repeat(MAX_LINE + 10));
    let e = parse(long.as_bytes(), &WIDE).unwrap_err();
    assert!(matches!(e, StoreError::Refused { .. }), "{e}");
}

#[test]
fn broken_and_malformed_input_is_an_error() {
    for bad in [
        &b""[..],
        b"$5\r\nab",
        b"$2\r\nabXY",
        b"?x\r\n",
        b":x\r\n",
        b"$-2\r\n",
        b"*-5\r\n",
        b"+OK",
        b"*2\r\n:1\r\n",
    ] {
        assert!(parse(bad, &WIDE).is_err(), "{bad:?} accepted");
    }
    // A truncated reply is a broken connection (retryable); nonsense is a protocol error (permanent).
    assert!(parse(b"$5\r\nab", &WIDE).unwrap_err().is_retryable());
    assert!(!parse(b"?x\r\n", &WIDE).unwrap_err().is_retryable());
}

/// Sum of the bytes and elements a reply holds: what it cost to keep.
fn weight(r: &Reply) -> (u64, u64) {
    match r {
        Reply::Bulk(b) => (b.len() as u64, 1),
        // Counted in chars: invalid UTF-8 is shown as U+FFFD, one char (three bytes) per input byte.
        Reply::Status(s) | Reply::Error(s) => (s.chars().count() as u64, 1),
        Reply::Array(items) => items
            .iter()
            .map(weight)
            .fold((0, 1), |a, b| (a.0 + b.0, a.1 + b.1)),
        _ => (0, 1),
    }
}

fn depth(r: &Reply) -> usize {
    match r {
        Reply::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// A valid reply built from parts, to be mutated.
fn reply_strategy() -> impl Strategy<Value = Reply> {
    let leaf = prop_oneof![
        "[ -~]{0,20}".prop_map(Reply::Status),
        "[ -~]{0,20}".prop_map(Reply::Error),
        any::<i64>().prop_map(Reply::Int),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Reply::Bulk),
        Just(Reply::Nil),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        proptest::collection::vec(inner, 0..6).prop_map(Reply::Array)
    })
}

fn write_reply(r: &Reply, out: &mut Vec<u8>) {
    match r {
        Reply::Status(s) => out.extend_from_slice(format!("+{s}\r\n").as_bytes()),
        Reply::Error(s) => out.extend_from_slice(format!("-{s}\r\n").as_bytes()),
        Reply::Int(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
        Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
        Reply::Bulk(b) => {
            out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        }
        Reply::Array(items) => {
            out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
            for i in items {
                write_reply(i, out);
            }
        }
    }
}

/// Whatever a reply parsed from `input` holds stays within the limits (and within the input).
fn check_bounded(input: &[u8], limits: &Limits) {
    if let Ok(r) = parse(input, limits) {
        let (bytes, elements) = weight(&r);
        assert!(bytes <= input.len() as u64);
        assert!(elements <= limits.max_elements + 1);
        assert!(depth(&r) <= limits.max_depth);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300)
    ))]

    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(input in proptest::collection::vec(any::<u8>(), 0..256)) {
        check_bounded(&input, &WIDE);
        check_bounded(&input, &Limits::bulk(16));
    }

    #[test]
    fn valid_replies_round_trip(reply in reply_strategy()) {
        let mut wire = Vec::new();
        write_reply(&reply, &mut wire);
        prop_assert_eq!(parse(&wire, &WIDE).unwrap(), reply);
    }

    #[test]
    fn mutated_replies_never_panic_and_stay_bounded(
        reply in reply_strategy(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..6),
    ) {
        let mut wire = Vec::new();
        write_reply(&reply, &mut wire);
        for (at, byte, how) in edits {
            if wire.is_empty() { break; }
            let i = at.index(wire.len());
            match how {
                0 => wire[i] = byte,
                1 => { wire.remove(i); }
                2 => wire.insert(i, byte),
                // Inflate a length: the lie a hostile server tells.
                _ => wire.splice(i..i, b"99999999999".iter().copied()).for_each(drop),
            }
        }
        check_bounded(&wire, &WIDE);
        check_bounded(&wire, &Limits::bulk(16));
    }
}
