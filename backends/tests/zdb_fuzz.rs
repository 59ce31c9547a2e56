//! Property test of the 0-db protocol client: a server that completes the handshake and then answers each command
//! with arbitrary or mutated bytes. Every store call must return (no hang, no panic) within a few seconds, and an
//! error must name the store and show no raw control characters. `PROPTEST_CASES` sets the count.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use qsfs_backends::testing::lying_proxy::read_value;
use qsfs_backends::{Locator, ShardStore, StoreError, StoreUri, open_store};

/// A fake 0-db: `OK` to SELECT, then the current answer to whatever comes next, then it hangs up.
struct FakeServer {
    addr: SocketAddr,
    answer: Arc<Mutex<Vec<u8>>>,
}

impl FakeServer {
    fn start() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(Vec::new()));
        let a = answer.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut rd = BufReader::new(conn.try_clone().unwrap());
                let served = (|| -> std::io::Result<()> {
                    read_value(&mut rd)?;
                    conn.write_all(b"+OK\r\n")?;
                    read_value(&mut rd)?;
                    let bytes = a.lock().unwrap().clone();
                    conn.write_all(&bytes)
                })();
                drop(served);
            }
        });
        FakeServer { addr, answer }
    }
}

/// Replies a 0-db could send (and that the store parses), to be mutated.
fn plausible() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"$5\r\nhello\r\n".to_vec()),
        Just(b"$-1\r\n".to_vec()),
        Just(b"-Key not found\r\n".to_vec()),
        Just(b":1\r\n".to_vec()),
        Just(b"+OK\r\n".to_vec()),
        Just(b"*2\r\n$3\r\nabc\r\n*1\r\n*3\r\n$32\r\n0123456789abcdef0123456789abcdef\r\n:5\r\n:1700000000\r\n".to_vec()),
        Just(b"$40\r\ndata_size_bytes: 10\ndata_limits_bytes: 9\r\n".to_vec()),
    ]
}

fn mutate(mut bytes: Vec<u8>, edits: &[(prop::sample::Index, u8, bool)]) -> Vec<u8> {
    for (i, b, insert) in edits {
        if *insert || bytes.is_empty() {
            let at = i.index(bytes.len() + 1);
            bytes.insert(at, *b);
        } else {
            let at = i.index(bytes.len());
            bytes[at] = *b;
        }
    }
    bytes
}

fn check(store: &dyn ShardStore, what: &str, r: Result<(), StoreError>) {
    if let Err(e) = r {
        let shown = e.to_string();
        assert!(
            shown.contains(store.uri()),
            "{what}: error must name the store: {shown}"
        );
        assert!(
            !shown.chars().any(|c| c.is_control()),
            "{what}: raw control characters: {shown:?}"
        );
    }
}

fn exercise(rt: &tokio::runtime::Runtime, server: &FakeServer, answer: Vec<u8>) {
    *server.answer.lock().unwrap() = answer;
    let uri = format!("zdb://127.0.0.1:{}/ns?mode=user", server.addr.port());
    rt.block_on(async {
        let store = open_store(&StoreUri::parse(&uri).unwrap(), false)
            .await
            .unwrap();
        let s = store.as_ref();
        let loc = Locator(vec![7; 32]);
        let bounded = Duration::from_secs(10);
        let get = tokio::time::timeout(bounded, s.get(&loc, 1000))
            .await
            .expect("get hung");
        if let Ok(v) = &get {
            assert!(
                v.len() <= 1000,
                "get returned {} bytes, 1000 allowed",
                v.len()
            );
        }
        check(s, "get", get.map(drop));
        let list = tokio::time::timeout(bounded, s.list())
            .await
            .expect("list hung");
        check(s, "list", list.map(drop));
        let probe = tokio::time::timeout(bounded, s.probe())
            .await
            .expect("probe hung");
        check(s, "probe", probe.map(drop));
        let exists = tokio::time::timeout(bounded, s.exists(&loc))
            .await
            .expect("exists hung");
        check(s, "exists", exists.map(drop));
    });
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_replies(answer in proptest::collection::vec(any::<u8>(), 0..300)) {
        thread_local! {
            static SETUP: (tokio::runtime::Runtime, FakeServer) =
                (tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(), FakeServer::start());
        }
        SETUP.with(|(rt, server)| exercise(rt, server, answer));
    }

    #[test]
    fn mutated_replies(base in plausible(), edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), any::<bool>()), 0..4)) {
        thread_local! {
            static SETUP: (tokio::runtime::Runtime, FakeServer) =
                (tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(), FakeServer::start());
        }
        SETUP.with(|(rt, server)| exercise(rt, server, mutate(base, &edits)));
    }
}
