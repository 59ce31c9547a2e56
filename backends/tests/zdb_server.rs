//! The 0-db test server speaks the protocol as /work/shared/zdb-protocol.md describes it: exact replies over a
//! raw socket, from synchronous code (as the integration tests use it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use qsfs_backends::testing::zdb_server::secure_hash;
use qsfs_backends::testing::{NamespaceOptions, ZdbServerConfig, ZdbServerMode, ZdbTestServer};

/// A reply as raw RESP text (bulk payloads inline), so assertions read like the protocol document.
struct Client {
    rd: BufReader<TcpStream>,
    wr: TcpStream,
}

impl Client {
    fn connect(srv: &ZdbTestServer) -> Client {
        let s = TcpStream::connect(srv.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            rd: BufReader::new(s.try_clone().unwrap()),
            wr: s,
        }
    }

    fn send(&mut self, args: &[&[u8]]) {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.wr.write_all(&out).unwrap();
    }

    fn reply(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        self.rd.read_until(b'\n', &mut line).unwrap();
        let mut out = line.clone();
        let n = || {
            std::str::from_utf8(&line[1..line.len() - 2])
                .unwrap()
                .parse::<i64>()
                .unwrap()
        };
        match line.first() {
            Some(b'$') if n() >= 0 => {
                let mut body = vec![0; n() as usize + 2];
                self.rd.read_exact(&mut body).unwrap();
                out.extend_from_slice(&body);
            }
            Some(b'*') => {
                for _ in 0..n() {
                    out.extend(self.reply());
                }
            }
            _ => {}
        }
        out
    }

    fn cmd(&mut self, args: &[&[u8]]) -> Vec<u8> {
        self.send(args);
        self.reply()
    }

    fn cmd_str(&mut self, args: &[&str]) -> String {
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        String::from_utf8_lossy(&self.cmd(&a)).into_owned()
    }
}

fn start(mode: ZdbServerMode, admin: Option<&str>) -> ZdbTestServer {
    ZdbTestServer::start(ZdbServerConfig {
        mode,
        admin_password: admin.map(str::to_string),
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn user_mode_replies() {
    let srv = start(ZdbServerMode::User, None);
    let mut c = Client::connect(&srv);
    assert_eq!(c.cmd_str(&["PING"]), "+PONG\r\n");
    assert_eq!(c.cmd_str(&["NSNEW", "ns"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["SELECT", "ns"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["SET", "k", "v"]), "$1\r\nk\r\n");
    assert_eq!(
        c.cmd_str(&["SET", "k", "v"]),
        "$-1\r\n",
        "same value again is nil"
    );
    assert_eq!(
        c.cmd_str(&["SET", "", "v"]),
        "-Invalid argument, key needed\r\n"
    );
    assert_eq!(c.cmd_str(&["GET", "k"]), "$1\r\nv\r\n");
    assert_eq!(c.cmd_str(&["GET", "nope"]), "$-1\r\n");
    assert_eq!(c.cmd_str(&["EXISTS", "k"]), ":1\r\n");
    assert_eq!(c.cmd_str(&["EXISTS", "nope"]), ":0\r\n");
    assert_eq!(c.cmd_str(&["CHECK", "k"]), ":1\r\n");
    assert_eq!(c.cmd_str(&["CHECK", "nope"]), "$-1\r\n");
    assert_eq!(c.cmd_str(&["LENGTH", "k"]), ":1\r\n");
    assert_eq!(c.cmd_str(&["LENGTH", "nope"]), "$-1\r\n");
    assert_eq!(
        c.cmd_str(&["MGET", "k", "nope"]),
        "*2\r\n$1\r\nv\r\n$-1\r\n"
    );
    assert_eq!(c.cmd_str(&["DBSIZE"]), ":1\r\n");
    assert_eq!(
        c.cmd_str(&["GETRANGE", "k", "0", "1"]),
        "-Command not supported\r\n"
    );
    assert_eq!(
        c.cmd_str(&["CLIENT", "SETINFO", "LIB-NAME", "x"]),
        "-Command not supported\r\n"
    );
    assert_eq!(c.cmd_str(&["DEL", "k"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["DEL", "k"]), "-Key not found\r\n");
    assert_eq!(c.cmd_str(&["GET", "k"]), "$-1\r\n");
    assert_eq!(c.cmd_str(&["SCAN"]), "-No more data\r\n");
    // Prefix matching, as 0-db does it.
    assert_eq!(c.cmd_str(&["pin"]), "+PONG\r\n");
    assert_eq!(
        c.cmd_str(&["NSSET", "ns", "mode", "seq"]),
        "-This server instance is configured to use a single runtime mode\r\n"
    );
    let t = c.cmd_str(&["TIME"]);
    assert!(t.starts_with("*2\r\n$"), "{t}");
}

#[test]
fn seq_mode_replies() {
    let srv = start(ZdbServerMode::Seq, None);
    let mut c = Client::connect(&srv);
    assert_eq!(
        c.cmd(&[b"SET", b"", b"first"]),
        b"$8\r\n\x00\x00\x00\x00\x00\x00\x00\x00\r\n"
    );
    assert_eq!(
        c.cmd(&[b"SET", b"", b"second"]),
        b"$8\r\n\x01\x00\x00\x00\x00\x00\x00\x00\r\n"
    );
    assert_eq!(c.cmd(&[b"GET", &0u64.to_le_bytes()]), b"$5\r\nfirst\r\n");
    assert_eq!(
        c.cmd_str(&["SET", "name", "x"]),
        "-Invalid key, only update authorized\r\n"
    );
    assert_eq!(
        c.cmd(&[b"SET", &7u64.to_le_bytes(), b"x"]),
        b"-Invalid key, only update authorized\r\n"
    );
    // Updating id 1 returns id 1 and consumes a fresh internal id: the next new entry is id 3.
    assert_eq!(
        c.cmd(&[b"SET", &1u64.to_le_bytes(), b"two"]),
        b"$8\r\n\x01\x00\x00\x00\x00\x00\x00\x00\r\n"
    );
    assert_eq!(
        c.cmd(&[b"SET", b"", b"third"]),
        b"$8\r\n\x03\x00\x00\x00\x00\x00\x00\x00\r\n"
    );
    assert_eq!(c.cmd(&[b"DEL", &0u64.to_le_bytes()]), b"+OK\r\n");
    assert_eq!(c.cmd(&[b"DEL", &0u64.to_le_bytes()]), b"-Key not found\r\n");
}

#[test]
fn scan_format_and_paging() {
    let srv = start(ZdbServerMode::User, None);
    let mut c = Client::connect(&srv);
    for i in 0..150 {
        c.cmd_str(&["SET", &format!("key{i:03}"), "abc"]);
    }
    // [cursor, [[key, size, timestamp], ...]], then continue from the cursor until -No more data.
    c.send(&[b"SCAN"]);
    let first = c.reply();
    assert!(
        first.starts_with(b"*2\r\n$8\r\n"),
        "{}",
        String::from_utf8_lossy(&first)
    );
    let text = String::from_utf8_lossy(&first);
    assert!(text.contains("*3\r\n$6\r\nkey000\r\n:3\r\n:"), "{text}");
    let cursor = first[8..16].to_vec();
    let mut c2 = Client::connect(&srv);
    let second = c2.cmd(&[b"SCAN", &cursor]);
    assert!(String::from_utf8_lossy(&second).contains("key149"));
    assert!(!String::from_utf8_lossy(&second).contains("key000"));
    assert_eq!(c2.cmd_str(&["SCAN", "bad"]), "-Invalid key format\r\n");
}

#[test]
fn namespaces_and_passwords() {
    let srv = start(ZdbServerMode::Mixed, None);
    let mut c = Client::connect(&srv);
    assert_eq!(c.cmd_str(&["NSNEW", "priv"]), "+OK\r\n");
    assert_eq!(
        c.cmd_str(&["NSNEW", "priv"]),
        "-This namespace is not available\r\n"
    );
    assert_eq!(c.cmd_str(&["NSSET", "priv", "password", "pw"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["NSSET", "priv", "public", "0"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["NSSET", "priv", "mode", "seq"]), "+OK\r\n");
    assert_eq!(
        c.cmd_str(&["NSSET", "priv", "bogus", "1"]),
        "-Invalid property\r\n"
    );
    assert_eq!(
        c.cmd_str(&["NSSET", "default", "password", "x"]),
        "-Cannot update default namespace\r\n"
    );
    assert_eq!(
        c.cmd_str(&["NSLIST"]),
        "*2\r\n$7\r\ndefault\r\n$4\r\npriv\r\n"
    );
    assert_eq!(
        c.cmd_str(&["SELECT", "priv"]),
        "-Namespace protected and private\r\n"
    );
    assert_eq!(
        c.cmd_str(&["SELECT", "priv", "wrong"]),
        "-Access denied\r\n"
    );
    assert_eq!(
        c.cmd_str(&["SELECT", "priv", "SECURE", &"0".repeat(40)]),
        "-No CHALLENGE requested, secure authentication not available\r\n"
    );
    let nonce = c.cmd_str(&["AUTH", "SECURE", "CHALLENGE"]);
    assert!(
        nonce.starts_with('+') && nonce.len() == 1 + 16 + 2,
        "{nonce:?}"
    );
    let nonce = nonce.trim_start_matches('+').trim_end();
    assert_eq!(
        c.cmd_str(&["SELECT", "priv", "SECURE", &secure_hash(nonce, "wrong")]),
        "-Access denied\r\n"
    );
    assert_eq!(
        c.cmd_str(&["SELECT", "priv", "SECURE", &secure_hash(nonce, "pw")]),
        "+OK\r\n"
    );
    let info = c.cmd_str(&["NSINFO", "priv"]);
    for line in [
        "# namespace\n",
        "name: priv\n",
        "password: yes\n",
        "public: no\n",
        "mode: sequential\n",
        "data_limits_bytes: 0\n",
    ] {
        assert!(info.contains(line), "NSINFO lacks {line:?}: {info}");
    }
    assert!(info.contains("data_disk_freespace_bytes: "), "{info}");
    assert_eq!(
        c.cmd_str(&["NSDEL", "priv"]),
        "-Cannot remove namespace you're currently using.\r\n"
    );
    assert_eq!(c.cmd_str(&["AUTH", "pw"]), "-Authentication disabled\r\n");

    // A public namespace with a password is readable without it, but read-only.
    srv.create_namespace("pub", Some("pw")).unwrap();
    let mut d = Client::connect(&srv);
    assert_eq!(d.cmd_str(&["SELECT", "pub"]), "+OK\r\n");
    assert_eq!(
        d.cmd_str(&["SET", "k", "v"]),
        "-Namespace is in read-only mode\r\n"
    );
    assert_eq!(d.cmd_str(&["SELECT", "pub", "pw"]), "+OK\r\n");
    assert_eq!(d.cmd_str(&["SET", "k", "v"]), "$1\r\nk\r\n");

    // Deleting a namespace detaches its other clients: their next command is refused and they are closed.
    assert_eq!(c.cmd_str(&["SELECT", "default"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["NSDEL", "pub"]), "+OK\r\n");
    assert_eq!(
        d.cmd_str(&["GET", "k"]),
        "-Your active namespace is not available anymore (probably removed).\r\n"
    );
}

#[test]
fn admin_password_gates_admin_commands() {
    let srv = start(ZdbServerMode::User, Some("admin-pw"));
    let mut c = Client::connect(&srv);
    assert_eq!(c.cmd_str(&["NSNEW", "x"]), "-Permission denied\r\n");
    assert_eq!(c.cmd_str(&["AUTH", "nope"]), "-Access denied\r\n");
    let nonce = c.cmd_str(&["AUTH", "SECURE", "CHALLENGE"]);
    let nonce = nonce.trim_start_matches('+').trim_end().to_string();
    assert_eq!(
        c.cmd_str(&["AUTH", "SECURE", &secure_hash(&nonce, "admin-pw")]),
        "+OK\r\n"
    );
    assert_eq!(c.cmd_str(&["NSNEW", "x"]), "+OK\r\n");
    let mut d = Client::connect(&srv);
    assert_eq!(d.cmd_str(&["AUTH", "admin-pw"]), "+OK\r\n");
    assert_eq!(d.cmd_str(&["NSSET", "x", "maxsize", "10"]), "+OK\r\n");
    assert_eq!(d.cmd_str(&["SELECT", "x"]), "+OK\r\n");
    assert_eq!(
        d.cmd_str(&["SET", "k", "0123456789A"]),
        "-No space left on this namespace\r\n"
    );
}

#[test]
fn oversized_payload_is_refused_and_connection_closed() {
    let srv = start(ZdbServerMode::User, None);
    let mut c = Client::connect(&srv);
    // Exactly 8 MiB is accepted.
    let max = vec![b'x'; 8 * 1024 * 1024];
    assert_eq!(c.cmd(&[b"SET", b"big", &max]), b"$3\r\nbig\r\n");
    // One byte more: the header alone is enough for the refusal, then the server closes the connection.
    c.wr.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$8388609\r\n")
        .unwrap();
    assert_eq!(c.reply(), b"-Payload too big\r\n");
    let mut rest = Vec::new();
    let n = c.rd.read_to_end(&mut rest).unwrap_or(0);
    assert_eq!(n, 0, "connection should be closed");
}

#[test]
fn malformed_and_unknown_requests() {
    let srv = start(ZdbServerMode::User, None);
    let mut c = Client::connect(&srv);
    assert_eq!(c.cmd_str(&["FLY", "away"]), "-Command not supported\r\n");
    assert_eq!(c.cmd_str(&["GET"]), "-Unexpected arguments\r\n");
    assert_eq!(
        c.cmd_str(&["SELECT", "missing"]),
        "-Namespace not found\r\n"
    );
    c.wr.write_all(b"PING\r\n").unwrap();
    assert_eq!(c.reply(), b"-Malformed request, array expected\r\n");
}

#[test]
fn harness_levers() {
    let srv = start(ZdbServerMode::Mixed, None);
    srv.create_namespace_with(
        "w",
        &NamespaceOptions {
            worm: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut c = Client::connect(&srv);
    c.cmd_str(&["SELECT", "w"]);
    assert_eq!(c.cmd_str(&["SET", "k", "abcd"]), "$1\r\nk\r\n");
    assert_eq!(
        c.cmd_str(&["SET", "k", "abcd"]),
        "-Namespace is protected by worm mode\r\n"
    );
    assert_eq!(
        c.cmd_str(&["DEL", "k"]),
        "-Cannot delete a key when namespace is in worm mode\r\n"
    );
    assert!(srv.corrupt_value("w", b"k"));
    assert_eq!(c.cmd_str(&["GET", "k"]), "$4\r\nabbd\r\n");
    assert_eq!(srv.entry_count("w"), Some(1));
    srv.drop_connections();
    let mut buf = [0u8; 1];
    assert_eq!(
        c.rd.read(&mut buf).unwrap_or(0),
        0,
        "connection should be closed"
    );
}
