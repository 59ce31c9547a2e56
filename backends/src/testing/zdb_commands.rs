//! The 0-db test server's namespaces, sessions and command handlers: an in-memory model of 0-db v2.0.7's
//! command semantics (zdbd/commands_*.c), with its exact reply texts.
//!
//! Entries live in an append-only log per namespace (like 0-db's index files); an overwrite or delete retires
//! the old entry, and `SCAN` walks the live entries in log order with an opaque cursor (here the 8-byte log
//! position; the real server uses a 17-byte binary index key). Replies were checked against a real 0-db v2.0.7
//! built from its sources.

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use sha1::{Digest, Sha1};

/// 0-db's `REDIS_MAX_PAYLOAD`: the largest accepted bulk argument.
pub const MAX_PAYLOAD: usize = 8 * 1024 * 1024;
const MAX_KEY: usize = 255;
pub(super) const MAX_NAMESPACE: usize = 128;
/// Entries per SCAN reply (the real server answers what it can walk in 2 ms); small enough that tests page.
const SCAN_BATCH: usize = 100;

/// The server-wide mode (`--mode`), or mixed when none was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ZdbServerMode {
    User,
    Seq,
    #[default]
    Mixed,
}

/// A namespace's own mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsMode {
    User,
    Seq,
}

/// A server reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Reply>),
}

pub(super) fn err(msg: &str) -> Reply {
    Reply::Error(msg.to_string())
}

pub(super) fn ok() -> Reply {
    Reply::Simple("OK".into())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lock {
    None,
    ReadOnly,
    Frozen,
}

pub(super) struct Entry {
    pub(super) key: Vec<u8>,
    pub(super) value: Vec<u8>,
    pub(super) timestamp: u32,
    pub(super) live: bool,
}

pub(crate) struct Namespace {
    pub(super) password: Option<String>,
    pub(super) public: bool,
    pub(super) worm: bool,
    pub(super) maxsize: u64,
    pub(super) mode: NsMode,
    pub(super) lock: Lock,
    pub(super) log: Vec<Entry>,
    pub(super) index: HashMap<Vec<u8>, usize>,
    pub(super) next_id: u64,
    pub(super) data_size: u64,
}

impl Namespace {
    pub(super) fn new(mode: NsMode) -> Namespace {
        Namespace {
            password: None,
            public: true,
            worm: false,
            maxsize: 0,
            mode,
            lock: Lock::None,
            log: Vec::new(),
            index: HashMap::new(),
            next_id: 0,
            data_size: 0,
        }
    }

    /// An overwritten or deleted entry stops counting in `data_size_bytes` (as observed on 0-db v2.0.7, which
    /// reports live data there even though the bytes stay on disk until compaction).
    fn retire(&mut self, i: usize) {
        self.log[i].live = false;
        self.data_size -= self.log[i].value.len() as u64;
        self.index.remove(&self.log[i].key);
    }

    fn live(&self, key: &[u8]) -> Option<&Entry> {
        self.index.get(key).map(|&i| &self.log[i])
    }

    fn append(&mut self, key: Vec<u8>, value: Vec<u8>, timestamp: u32) {
        if let Some(&old) = self.index.get(&key) {
            self.retire(old);
        }
        self.data_size += value.len() as u64;
        self.index.insert(key.clone(), self.log.len());
        self.log.push(Entry {
            key,
            value,
            timestamp,
            live: true,
        });
    }
}

/// Options for a namespace made by the test harness (not over the wire).
#[derive(Clone, Debug)]
pub struct NamespaceOptions {
    pub password: Option<String>,
    pub public: bool,
    /// `None`: the server's mode (user on a mixed server).
    pub mode: Option<NsMode>,
    pub maxsize: u64,
    pub worm: bool,
}

impl Default for NamespaceOptions {
    fn default() -> Self {
        NamespaceOptions {
            password: None,
            public: true,
            mode: None,
            maxsize: 0,
            worm: false,
        }
    }
}

pub(crate) struct State {
    pub(crate) mode: ZdbServerMode,
    pub(crate) admin_password: Option<String>,
    pub(crate) disk_free: u64,
    pub(crate) namespaces: BTreeMap<String, Namespace>,
}

/// Per-connection state: every connection starts in `default`.
pub(crate) struct Session {
    pub(super) ns: String,
    pub(super) writable: bool,
    pub(super) admin: bool,
    pub(super) nonce: Option<String>,
}

impl Session {
    pub(crate) fn new(state: &State) -> Session {
        Session {
            ns: "default".into(),
            writable: true,
            admin: state.admin_password.is_none(),
            nonce: None,
        }
    }
}

fn now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

pub(super) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// 0-db's password hash for the SECURE challenge: hex(sha1("nonce:password")).
pub fn secure_hash(nonce: &str, password: &str) -> String {
    hex::encode(Sha1::digest(format!("{nonce}:{password}").as_bytes()))
}

// The subset of 0-db's command table we implement, in the real table's order: 0-db matches a sent name against
// each entry as a case-insensitive prefix of the entry, first match wins.
const COMMANDS: &[&str] = &[
    "PING", "TIME", "AUTH", "SET", "GET", "MGET", "DEL", "EXISTS", "CHECK", "SCAN", "LENGTH",
    "INFO", "DBSIZE", "NSNEW", "NSDEL", "NSLIST", "NSSET", "NSINFO", "SELECT",
];

impl State {
    pub(crate) fn new(
        mode: ZdbServerMode,
        admin_password: Option<String>,
        disk_free: u64,
    ) -> State {
        let mut namespaces = BTreeMap::new();
        namespaces.insert(
            "default".to_string(),
            Namespace::new(Self::default_mode(mode)),
        );
        State {
            mode,
            admin_password,
            disk_free,
            namespaces,
        }
    }

    pub(super) fn default_mode(mode: ZdbServerMode) -> NsMode {
        if mode == ZdbServerMode::Seq {
            NsMode::Seq
        } else {
            NsMode::User
        }
    }

    pub(crate) fn create_namespace(
        &mut self,
        name: &str,
        opts: &NamespaceOptions,
    ) -> Result<(), String> {
        if name.is_empty()
            || name.len() > MAX_NAMESPACE
            || name.contains('/')
            || name.starts_with('.')
        {
            return Err(format!("invalid namespace name {name:?}"));
        }
        if self.namespaces.contains_key(name) {
            return Err(format!("namespace {name:?} exists"));
        }
        let mode = match (self.mode, opts.mode) {
            (ZdbServerMode::Mixed, Some(m)) => m,
            (ZdbServerMode::Mixed, None) | (ZdbServerMode::User, None) => NsMode::User,
            (ZdbServerMode::Seq, None) => NsMode::Seq,
            (server, Some(m)) if Self::default_mode(server) == m => m,
            (server, Some(m)) => {
                return Err(format!(
                    "server runs in {server:?} mode; cannot make a {m:?} namespace"
                ));
            }
        };
        let mut ns = Namespace::new(mode);
        ns.password = opts.password.clone();
        ns.public = opts.public;
        ns.maxsize = opts.maxsize;
        ns.worm = opts.worm;
        self.namespaces.insert(name.to_string(), ns);
        Ok(())
    }

    /// Flips one bit in the middle of a stored value (bit rot behind the store's back). False if absent.
    pub(crate) fn corrupt(&mut self, ns: &str, key: &[u8]) -> bool {
        let Some(ns) = self.namespaces.get_mut(ns) else {
            return false;
        };
        let Some(&i) = ns.index.get(key) else {
            return false;
        };
        let v = &mut ns.log[i].value;
        if v.is_empty() {
            return false;
        }
        let mid = v.len() / 2;
        v[mid] ^= 0x01;
        true
    }

    pub(crate) fn namespace_mode(&self, ns: &str) -> Option<NsMode> {
        self.namespaces.get(ns).map(|n| n.mode)
    }

    pub(crate) fn live_count(&self, ns: &str) -> Option<usize> {
        self.namespaces.get(ns).map(|n| n.index.len())
    }

    /// Runs one request; the bool asks the connection to close after the reply.
    pub(crate) fn dispatch(&mut self, s: &mut Session, argv: &[Vec<u8>]) -> (Reply, bool) {
        if !self.namespaces.contains_key(&s.ns) {
            return (
                err("Your active namespace is not available anymore (probably removed)."),
                true,
            );
        }
        let name = &argv[0];
        let Some(cmd) = COMMANDS.iter().find(|c| {
            c.len() >= name.len() && c.as_bytes()[..name.len()].eq_ignore_ascii_case(name)
        }) else {
            return (err("Command not supported"), false);
        };
        let reply = match *cmd {
            "PING" => Reply::Simple("PONG".into()),
            "TIME" => {
                let t = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                Reply::Array(vec![
                    Reply::Bulk(t.as_secs().to_string().into_bytes()),
                    Reply::Bulk(t.subsec_micros().to_string().into_bytes()),
                ])
            }
            "AUTH" => self.auth(s, argv),
            "SET" => self.set(s, argv),
            "GET" => self.read(s, argv, |ns, k| {
                ns.live(k)
                    .map_or(Reply::Nil, |e| Reply::Bulk(e.value.clone()))
            }),
            "MGET" => self.mget(s, argv),
            "DEL" => self.del(s, argv),
            "EXISTS" => self.read(s, argv, |ns, k| Reply::Int(ns.live(k).is_some() as i64)),
            "CHECK" => self.read(s, argv, |ns, k| {
                ns.live(k).map_or(Reply::Nil, |_| Reply::Int(1))
            }),
            "LENGTH" => self.read(s, argv, |ns, k| {
                ns.live(k)
                    .map_or(Reply::Nil, |e| Reply::Int(e.value.len() as i64))
            }),
            "SCAN" => self.scan(s, argv),
            "INFO" => Reply::Bulk(
                b"# server\nserver_name: 0-db (zdb)\nserver_revision: qsfs protocol test server\n"
                    .to_vec(),
            ),
            "DBSIZE" => Reply::Int(self.namespaces[&s.ns].index.len() as i64),
            "NSNEW" => self.nsnew(s, argv),
            "NSDEL" => self.nsdel(s, argv),
            "NSLIST" => Reply::Array(
                self.namespaces
                    .keys()
                    .map(|k| Reply::Bulk(k.clone().into_bytes()))
                    .collect(),
            ),
            "NSSET" => self.nsset(s, argv),
            "NSINFO" => self.nsinfo(argv),
            "SELECT" => self.select(s, argv),
            _ => err("Command not supported"),
        };
        (reply, false)
    }

    /// `command_args_validate`: exact argument count, no empty argument.
    pub(super) fn validate(argv: &[Vec<u8>], n: usize) -> Option<Reply> {
        if argv.len() != n {
            return Some(err("Unexpected arguments"));
        }
        argv.iter()
            .any(|a| a.is_empty())
            .then(|| err("Invalid argument"))
    }

    pub(super) fn admin(s: &Session) -> Option<Reply> {
        (!s.admin).then(|| err("Permission denied"))
    }

    /// GET/EXISTS/CHECK/LENGTH: one key, frozen namespaces refuse.
    fn read(&self, s: &Session, argv: &[Vec<u8>], f: impl Fn(&Namespace, &[u8]) -> Reply) -> Reply {
        if let Some(e) = Self::validate(argv, 2) {
            return e;
        }
        if argv[1].len() > MAX_KEY {
            return err("Invalid key");
        }
        let ns = &self.namespaces[&s.ns];
        if ns.lock == Lock::Frozen {
            return err("Namespace is temporarily frozen (read-write disabled)");
        }
        f(ns, &argv[1])
    }

    fn mget(&self, s: &Session, argv: &[Vec<u8>]) -> Reply {
        if argv.len() < 2 {
            return err("Invalid arguments");
        }
        if argv[1..].iter().any(|k| k.len() > MAX_KEY) {
            return err("Invalid key");
        }
        let ns = &self.namespaces[&s.ns];
        if ns.lock == Lock::Frozen {
            return err("Namespace is temporarily frozen (read-write disabled)");
        }
        Reply::Array(
            argv[1..]
                .iter()
                .map(|k| {
                    ns.live(k)
                        .map_or(Reply::Nil, |e| Reply::Bulk(e.value.clone()))
                })
                .collect(),
        )
    }

    fn write_checks(s: &Session, ns: &Namespace) -> Option<Reply> {
        if !s.writable {
            return Some(err("Namespace is in read-only mode"));
        }
        match ns.lock {
            Lock::Frozen => Some(err("Namespace is temporarily frozen (read-write disabled)")),
            Lock::ReadOnly => Some(err("Namespace is temporarily locked (read-only)")),
            Lock::None => None,
        }
    }

    fn set(&mut self, s: &Session, argv: &[Vec<u8>]) -> Reply {
        if argv.len() == 4 {
            if let Some(e) = Self::admin(s) {
                return e;
            }
        } else if argv.len() != 3 {
            return err("Unexpected arguments");
        }
        let (key, value) = (&argv[1], &argv[2]);
        if key.len() > MAX_KEY {
            return err("Key too large");
        }
        let timestamp = argv
            .get(3)
            .map_or_else(now, |t| text(t).parse().unwrap_or(0));
        let ns = self
            .namespaces
            .get_mut(&s.ns)
            .expect("session namespace exists");
        if let Some(e) = Self::write_checks(s, ns) {
            return e;
        }
        let existing = if key.is_empty() { None } else { ns.live(key) };
        if existing.is_some() && ns.worm {
            return err("Namespace is protected by worm mode");
        }
        let floating = existing.map_or(0, |e| e.value.len() as u64);
        if ns.maxsize > 0 && ns.data_size + value.len() as u64 > ns.maxsize + floating {
            return err("No space left on this namespace");
        }
        let same = existing.is_some_and(|e| &e.value == value);
        match ns.mode {
            NsMode::User => {
                if key.is_empty() {
                    return err("Invalid argument, key needed");
                }
                if same {
                    return Reply::Nil;
                }
                ns.append(key.clone(), value.clone(), timestamp);
                Reply::Bulk(key.clone())
            }
            NsMode::Seq => {
                if !key.is_empty() && existing.is_none() {
                    return err("Invalid key, only update authorized");
                }
                if same {
                    return Reply::Nil;
                }
                // An update keeps its id but, as on the real server, still consumes a fresh internal id.
                let fresh = ns.next_id.to_le_bytes().to_vec();
                ns.next_id += 1;
                let id = if key.is_empty() { fresh } else { key.clone() };
                ns.append(id.clone(), value.clone(), timestamp);
                Reply::Bulk(id)
            }
        }
    }

    fn del(&mut self, s: &Session, argv: &[Vec<u8>]) -> Reply {
        if argv.len() == 3 {
            if let Some(e) = Self::admin(s) {
                return e;
            }
        } else if let Some(e) = Self::validate(argv, 2) {
            return e;
        }
        if argv[1].len() > MAX_KEY {
            return err("Invalid key");
        }
        let ns = self
            .namespaces
            .get_mut(&s.ns)
            .expect("session namespace exists");
        if let Some(e) = Self::write_checks(s, ns) {
            return e;
        }
        let Some(&i) = ns.index.get(&argv[1]) else {
            return err("Key not found");
        };
        if ns.worm {
            return err("Cannot delete a key when namespace is in worm mode");
        }
        ns.retire(i);
        ok()
    }

    fn scan(&self, s: &Session, argv: &[Vec<u8>]) -> Reply {
        let ns = &self.namespaces[&s.ns];
        if ns.lock == Lock::Frozen {
            return err("Namespace is temporarily frozen (read-write disabled)");
        }
        let start = match argv.len() {
            1 => 0,
            _ => match <[u8; 8]>::try_from(argv[1].as_slice()) {
                Ok(c) if (u64::from_le_bytes(c) as usize) < ns.log.len() => {
                    u64::from_le_bytes(c) as usize + 1
                }
                _ => return err("Invalid key format"),
            },
        };
        let batch: Vec<usize> = (start..ns.log.len())
            .filter(|&i| ns.log[i].live)
            .take(SCAN_BATCH)
            .collect();
        let Some(&last) = batch.last() else {
            return err("No more data");
        };
        let entries = batch
            .iter()
            .map(|&i| {
                let e = &ns.log[i];
                Reply::Array(vec![
                    Reply::Bulk(e.key.clone()),
                    Reply::Int(e.value.len() as i64),
                    Reply::Int(e.timestamp as i64),
                ])
            })
            .collect();
        Reply::Array(vec![
            Reply::Bulk((last as u64).to_le_bytes().to_vec()),
            Reply::Array(entries),
        ])
    }
}
