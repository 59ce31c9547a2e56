//! The `qsfs status --json` document: a schema check (every documented key present with the right JSON type)
//! and typed access.

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    pub volume: String,
    pub volume_id: String,
    pub data_shards: u64,
    pub parity_shards: u64,
    pub segment_size: u64,
    pub write_quorum: u64,
    pub files: u64,
    pub directories: u64,
    pub logical_bytes: u64,
    pub segments: Segments,
    pub stores: Vec<StoreStatus>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct Segments {
    pub total: u64,
    pub healthy: u64,
    pub degraded: u64,
    pub unreadable: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StoreStatus {
    pub id: u64,
    pub uri: String,
    pub reachable: bool,
    pub error: Option<String>,
    pub shards: u64,
    pub bytes: u64,
    pub free_bytes: Option<u64>,
}

#[derive(Clone, Copy)]
enum Ty {
    Str,
    Num,
    Bool,
    StrOrNull,
    NumOrNull,
    Obj,
    Arr,
}

fn check(obj: &Value, keys: &[(&str, Ty)], what: &str, doc: &str) {
    let map = obj
        .as_object()
        .unwrap_or_else(|| panic!("{what} is not a JSON object in:\n{doc}"));
    for (k, ty) in keys {
        let v = map
            .get(*k)
            .unwrap_or_else(|| panic!("status --json: {what} lacks key {k:?} in:\n{doc}"));
        let good = match ty {
            Ty::Str => v.is_string(),
            Ty::Num => v.is_u64(),
            Ty::Bool => v.is_boolean(),
            Ty::StrOrNull => v.is_string() || v.is_null(),
            Ty::NumOrNull => v.is_u64() || v.is_null(),
            Ty::Obj => v.is_object(),
            Ty::Arr => v.is_array(),
        };
        assert!(
            good,
            "status --json: {what}.{k} has the wrong type ({v}) in:\n{doc}"
        );
    }
}

impl Status {
    /// Parses `status --json` output, checking the documented schema and internal consistency.
    #[track_caller]
    pub fn parse(out: &str) -> Status {
        let v: Value = serde_json::from_str(out)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}):\n{out}"));
        use Ty::*;
        check(
            &v,
            &[
                ("volume", Str),
                ("volume_id", Str),
                ("data_shards", Num),
                ("parity_shards", Num),
                ("segment_size", Num),
                ("write_quorum", Num),
                ("files", Num),
                ("directories", Num),
                ("logical_bytes", Num),
                ("segments", Obj),
                ("stores", Arr),
            ],
            "the document",
            out,
        );
        check(
            &v["segments"],
            &[
                ("total", Num),
                ("healthy", Num),
                ("degraded", Num),
                ("unreadable", Num),
            ],
            "segments",
            out,
        );
        for st in v["stores"].as_array().unwrap() {
            check(
                st,
                &[
                    ("id", Num),
                    ("uri", Str),
                    ("reachable", Bool),
                    ("error", StrOrNull),
                    ("shards", Num),
                    ("bytes", Num),
                    ("free_bytes", NumOrNull),
                ],
                "a store",
                out,
            );
        }
        let s: Status = serde_json::from_value(v).expect("schema checked");
        s.check_consistent(out);
        s
    }

    fn check_consistent(&self, doc: &str) {
        let seg = self.segments;
        assert_eq!(
            seg.healthy + seg.degraded + seg.unreadable,
            seg.total,
            "healthy + degraded + unreadable != total in:\n{doc}"
        );
        assert!(
            !self.volume_id.is_empty() && self.volume_id.chars().all(|c| c.is_ascii_hexdigit()),
            "volume_id is not hex in:\n{doc}"
        );
        assert!(
            self.volume.starts_with('/'),
            "volume is not an absolute path in:\n{doc}"
        );
        let n = self.data_shards + self.parity_shards;
        assert!(
            self.stores.len() as u64 >= n,
            "fewer stores than K+M = {n} in:\n{doc}"
        );
        assert!(
            self.write_quorum >= self.data_shards && self.write_quorum <= n,
            "write_quorum outside K..=K+M in:\n{doc}"
        );
        for (i, st) in self.stores.iter().enumerate() {
            assert_eq!(
                st.id, i as u64,
                "store ids must be 0..n in order in:\n{doc}"
            );
            assert_eq!(
                st.reachable,
                st.error.is_none(),
                "store {i}: `error` must be null exactly when reachable in:\n{doc}"
            );
        }
        if seg.healthy == seg.total && self.stores.iter().all(|s| s.reachable) {
            let shards: u64 = self.stores.iter().map(|s| s.shards).sum();
            assert_eq!(
                shards,
                seg.total * n,
                "all healthy: want total*(K+M) shards over the stores in:\n{doc}"
            );
            for st in self.stores.iter().filter(|_| self.stores.len() as u64 == n) {
                assert_eq!(
                    st.shards, seg.total,
                    "all healthy: every store holds one shard per segment in:\n{doc}"
                );
            }
        }
    }

    /// Ids of stores reported unreachable.
    pub fn unreachable(&self) -> Vec<u64> {
        self.stores
            .iter()
            .filter(|s| !s.reachable)
            .map(|s| s.id)
            .collect()
    }
}
