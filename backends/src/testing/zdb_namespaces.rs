//! The 0-db test server's authentication and namespace administration commands (AUTH, SELECT, NSNEW, NSDEL,
//! NSSET, NSINFO), modelled on zdbd/commands_auth.c and zdbd/commands_namespace.c with their reply texts.

use super::zdb_commands::{
    Lock, MAX_NAMESPACE, Namespace, NsMode, Reply, Session, State, ZdbServerMode, err, ok,
    secure_hash, text,
};

impl State {
    pub(super) fn auth(&mut self, s: &mut Session, argv: &[Vec<u8>]) -> Reply {
        match argv.len() {
            2 => match &self.admin_password {
                None => err("Authentication disabled"),
                Some(_) if argv[1].len() > 128 => err("Password too long"),
                Some(pw) if argv[1] == pw.as_bytes() => {
                    s.admin = true;
                    ok()
                }
                Some(_) => err("Access denied"),
            },
            3 => {
                if let Some(e) = Self::validate(argv, 3) {
                    return e;
                }
                if !b"SECURE".starts_with(&argv[1].to_ascii_uppercase()) {
                    return err("Only SECURE extra method supported");
                }
                if b"CHALLENGE".starts_with(&argv[2].to_ascii_uppercase()) {
                    let nonce = hex::encode(rand::random::<[u8; 8]>());
                    s.nonce = Some(nonce.clone());
                    return Reply::Simple(nonce);
                }
                let Some(pw) = &self.admin_password else {
                    return err("Authentication disabled");
                };
                let Some(nonce) = s.nonce.take() else {
                    return err("No CHALLENGE requested, secure authentication not available");
                };
                if argv[2].len() != 40 {
                    s.nonce = Some(nonce);
                    return err("Invalid hash length");
                }
                if argv[2] == secure_hash(&nonce, pw).as_bytes() {
                    s.admin = true;
                    ok()
                } else {
                    err("Access denied")
                }
            }
            _ => err("Unexpected arguments"),
        }
    }

    pub(super) fn select(&mut self, s: &mut Session, argv: &[Vec<u8>]) -> Reply {
        if argv.len() < 2 {
            return err("Invalid argument");
        }
        if argv[1].len() > MAX_NAMESPACE {
            return err("Namespace too long");
        }
        let target = text(&argv[1]);
        let Some(ns) = self.namespaces.get(&target) else {
            return err("Namespace not found");
        };
        let mut writable = true;
        if let Some(password) = &ns.password {
            match argv.len() {
                2 if !ns.public => return err("Namespace protected and private"),
                2 => writable = false,
                3 if argv[2] != password.as_bytes() => return err("Access denied"),
                3 => {}
                4 => {
                    if !b"SECURE".starts_with(&argv[2].to_ascii_uppercase()) {
                        return err("Only SECURE extra method supported");
                    }
                    let Some(nonce) = &s.nonce else {
                        return err("No CHALLENGE requested, secure authentication not available");
                    };
                    if argv[3].len() != 40 {
                        return err("Invalid hash length");
                    }
                    if argv[3] != secure_hash(nonce, password).as_bytes() {
                        return err("Access denied");
                    }
                }
                _ => return err("Too many arguments"),
            }
        }
        s.ns = target;
        s.writable = writable;
        ok()
    }

    pub(super) fn nsnew(&mut self, s: &Session, argv: &[Vec<u8>]) -> Reply {
        if let Some(e) = Self::admin(s).or_else(|| Self::validate(argv, 2)) {
            return e;
        }
        if argv[1].len() > MAX_NAMESPACE {
            return err("Namespace too long");
        }
        let name = text(&argv[1]);
        if name.contains('/') || name.starts_with('.') {
            return err("This name is not allowed");
        }
        if self.namespaces.contains_key(&name) {
            return err("This namespace is not available");
        }
        self.namespaces
            .insert(name, Namespace::new(Self::default_mode(self.mode)));
        ok()
    }

    pub(super) fn nsdel(&mut self, s: &Session, argv: &[Vec<u8>]) -> Reply {
        if let Some(e) = Self::admin(s).or_else(|| Self::validate(argv, 2)) {
            return e;
        }
        let name = text(&argv[1]);
        if name == "default" {
            return err("Cannot remove default namespace");
        }
        if !self.namespaces.contains_key(&name) {
            return err("This namespace doesn't exists");
        }
        if s.ns == name {
            return err("Cannot remove namespace you're currently using.");
        }
        self.namespaces.remove(&name);
        ok()
    }

    pub(super) fn nsset(&mut self, s: &Session, argv: &[Vec<u8>]) -> Reply {
        if let Some(e) = Self::admin(s).or_else(|| Self::validate(argv, 4)) {
            return e;
        }
        let (target, option, value) = (text(&argv[1]), text(&argv[2]), text(&argv[3]));
        let server_mode = self.mode;
        let Some(ns) = self.namespaces.get_mut(&target) else {
            return err("Namespace not found");
        };
        let flag = value.starts_with('1');
        match option.as_str() {
            "mode" => {
                if server_mode != ZdbServerMode::Mixed {
                    return err("This server instance is configured to use a single runtime mode");
                }
                if !ns.log.is_empty() {
                    return err("Cannot change mode of used namespace");
                }
                ns.mode = match value.as_str() {
                    "user" => NsMode::User,
                    "seq" => NsMode::Seq,
                    _ => return err("Invalid property value (expected: user, seq)"),
                };
            }
            "lock" => ns.lock = if flag { Lock::ReadOnly } else { Lock::None },
            "freeze" => ns.lock = if flag { Lock::Frozen } else { Lock::None },
            _ if target == "default" => return err("Cannot update default namespace"),
            "maxsize" => ns.maxsize = value.parse().unwrap_or(0),
            "password" => ns.password = (value != "*").then_some(value),
            "public" => ns.public = flag,
            "worm" => ns.worm = flag,
            _ => return err("Invalid property"),
        }
        ok()
    }

    pub(super) fn nsinfo(&self, argv: &[Vec<u8>]) -> Reply {
        if let Some(e) = Self::validate(argv, 2) {
            return e;
        }
        let name = text(&argv[1]);
        let Some(ns) = self.namespaces.get(&name) else {
            return err("Namespace not found");
        };
        let yn = |b: bool| if b { "yes" } else { "no" };
        let mut t = String::from("# namespace\n");
        t += &format!("name: {name}\nentries: {}\n", ns.index.len());
        t += &format!("public: {}\nworm: {}\n", yn(ns.public), yn(ns.worm));
        t += &format!(
            "locked: {}\npassword: {}\n",
            yn(ns.lock != Lock::None),
            yn(ns.password.is_some())
        );
        t += &format!(
            "data_size_bytes: {}\ndata_size_mb: {:.2}\n",
            ns.data_size,
            ns.data_size as f64 / 1048576.0
        );
        t += &format!("data_limits_bytes: {}\n", ns.maxsize);
        let index_size = ns.log.iter().map(|e| 28 + e.key.len() as u64).sum::<u64>();
        t += &format!(
            "index_size_bytes: {index_size}\nindex_size_kb: {:.2}\n",
            index_size as f64 / 1024.0
        );
        t += &format!("next_internal_id: 0x{:08x}\n", ns.next_id.swap_bytes());
        t += &format!(
            "mode: {}\n",
            if ns.mode == NsMode::User {
                "userkey"
            } else {
                "sequential"
            }
        );
        t += "stats_index_io_errors: 0\nstats_index_io_error_last: 0\nstats_index_faults: 0\n";
        t += "stats_data_io_errors: 0\nstats_data_io_error_last: 0\nstats_data_faults: 0\n";
        if ns.maxsize > 0 {
            t += &format!(
                "space_available: {}\n",
                ns.maxsize.saturating_sub(ns.data_size)
            );
        }
        let free = self.disk_free;
        t += &format!(
            "index_disk_freespace_bytes: {free}\nindex_disk_freespace_mb: {:.2}\n",
            free as f64 / 1048576.0
        );
        t += &format!(
            "data_disk_freespace_bytes: {free}\ndata_disk_freespace_mb: {:.2}\n",
            free as f64 / 1048576.0
        );
        Reply::Bulk(t.into_bytes())
    }
}
