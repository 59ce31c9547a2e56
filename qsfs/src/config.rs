//! The volume's config file `qsfs.toml`: one serde struct, unknown keys refused, human-readable sizes, and errors
//! that name the file, the key and what was expected.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{QsfsError, Result};

pub const CONFIG_FORMAT_VERSION: u32 = 1;

/// A byte count written like `4MiB`, `512KiB`, `1GiB` or a plain number of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> std::result::Result<ByteSize, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("invalid size {text:?}: expected a whole number with an optional unit (B, KiB, MiB, GiB, TiB)")
        })?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KiB" | "k" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            "T" | "TiB" => 1 << 40,
            "KB" | "kB" => 1000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(format!(
                    "invalid size {text:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, TiB)"
                ));
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("invalid size {text:?}: too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if n != 0 && n.is_multiple_of(1u64 << shift) {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}")
    }
}

/// `FromStr`, and serde as text (`"4MiB"`, `"30s"`) or a bare integer in the type's base unit (bytes, seconds),
/// for a type with `parse(&str) -> Result<Self, String>` and `Display`.
macro_rules! text_or_integer {
    ($ty:ident, $from_int:expr) => {
        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                $ty::parse(s)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Raw {
                    Int(u64),
                    Text(String),
                }
                match Raw::deserialize(d)? {
                    Raw::Int(n) => Ok($from_int(n)),
                    Raw::Text(t) => $ty::parse(&t).map_err(serde::de::Error::custom),
                }
            }
        }
    };
}

text_or_integer!(ByteSize, ByteSize);

/// How the master key is obtained.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KeySource {
    /// 32 random bytes in the volume's `key` file (mode 0600).
    File,
    /// argon2id over a passphrase read from an environment variable.
    Passphrase,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Argon2Params {
    /// Hex-encoded random salt.
    pub salt: String,
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub source: KeySource,
    /// A keyed hash proving a candidate master key is this volume's, without revealing it.
    pub check: String,
    /// Environment variable holding the passphrase (passphrase source only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argon2: Option<Argon2Params>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Stable slot number; also written into the store's identity marker.
    pub id: u32,
    pub uri: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    pub format_version: u32,
    /// 16 random bytes, hex: bound into every segment's AEAD associated data and every store's marker.
    pub volume_id: String,
    pub data_shards: usize,
    pub parity_shards: usize,
    pub segment_size: ByteSize,
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// Shards that must be durable before a segment is committed (K+1 ..= K+M).
    pub write_quorum: usize,
    pub key: KeyConfig,
    pub stores: Vec<StoreConfig>,
    /// Proof-of-retrievability audits and self-healing. Optional: configs written before it existed load with
    /// the defaults.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Prometheus metrics of a mount. Optional.
    #[serde(default, skip_serializing_if = "MetricsConfig::is_default")]
    pub metrics: MetricsConfig,
    /// Background gc in a mount. Optional.
    #[serde(default)]
    pub gc: GcConfig,
}

/// `[gc]`: the mount's background gc (recorded garbage and orphan shards, as `qsfs gc` does).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    pub enabled: bool,
    /// Mean time between background runs (each wait randomized like the audits'). Every run lists every
    /// store, which costs requests on object stores: hence a day by default.
    pub interval: HumanDuration,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            enabled: true,
            interval: HumanDuration(std::time::Duration::from_secs(24 * 3600)),
        }
    }
}

impl GcConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.interval.0 < std::time::Duration::from_secs(1)
            || self.interval.0 > MAX_AUDIT_INTERVAL
        {
            return Err(format!(
                "key `gc.interval`: expected 1s to {}, found {}",
                HumanDuration(MAX_AUDIT_INTERVAL),
                self.interval
            ));
        }
        Ok(())
    }
}

/// `[metrics]`: where a mount serves Prometheus metrics (`qsfs mount --metrics ADDR` overrides it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `host:port` to serve `/metrics` on, e.g. "127.0.0.1:9464"; unset: no metrics endpoint.
    pub listen: Option<std::net::SocketAddr>,
}

impl MetricsConfig {
    fn is_default(&self) -> bool {
        self == &MetricsConfig::default()
    }
}

/// The write quorum a new volume gets: all shards but one (at least K+1), so writes go on with any one store down
/// while an acknowledged segment still survives the loss of M-1 more stores. With M = 1 that is K+1 = K+M: such a
/// volume cannot write with a store down, since a quorum of K would leave an acknowledged write with no redundancy.
pub fn default_write_quorum(data_shards: usize, parity_shards: usize) -> usize {
    (data_shards + parity_shards - 1).max(data_shards + 1)
}

fn default_zstd_level() -> i32 {
    1
}

/// A span of time written like `15m`, `6h`, `30s`, `1d`, `500ms` or a plain number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub std::time::Duration);

impl HumanDuration {
    pub fn parse(text: &str) -> std::result::Result<HumanDuration, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!(
                "invalid duration {text:?}: expected a whole number with a unit (ms, s, m, h, d)"
            )
        })?;
        let millis: u64 = match unit.trim() {
            "ms" => 1,
            "" | "s" => 1000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            other => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit {other:?} (use ms, s, m, h, d)"
                ));
            }
        };
        n.checked_mul(millis)
            .map(|ms| HumanDuration(std::time::Duration::from_millis(ms)))
            .ok_or_else(|| format!("invalid duration {text:?}: too large"))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
        ] {
            if ms != 0 && ms.is_multiple_of(size) {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

text_or_integer!(HumanDuration, |n| HumanDuration(
    std::time::Duration::from_secs(n)
));

/// The `[audit]` section: how often the mount audits in the background, how hard it may push the stores, the
/// detection target (δ, P) and when an unreachable store counts as lost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Background audits (and the repairs they trigger) while the volume is mounted.
    pub enabled: bool,
    /// Mean time between background audits; each wait is drawn uniformly from half to one and a half times it,
    /// so audits do not fall into a rhythm a store could anticipate.
    pub interval: HumanDuration,
    /// Bytes per second background audits and repairs may read and write (0 = no cap).
    pub bandwidth: ByteSize,
    /// δ: the fraction of a store's shards whose loss an audit must catch.
    pub delta: f64,
    /// P: the probability with which one audit must catch it.
    pub confidence: f64,
    /// A store unreachable for longer than this is treated as lost and its shards are rebuilt elsewhere.
    pub lost_store_grace: HumanDuration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            interval: HumanDuration(std::time::Duration::from_secs(6 * 3600)),
            bandwidth: ByteSize(16 << 20),
            delta: 0.01,
            confidence: 0.99,
            lost_store_grace: HumanDuration(std::time::Duration::from_secs(15 * 60)),
        }
    }
}

impl AuditConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (key, value) in [
            ("audit.delta", self.delta),
            ("audit.confidence", self.confidence),
        ] {
            // `!(0 < v < 1)` so NaN is refused too.
            if !(value > 0.0 && value < 1.0) {
                return Err(format!(
                    "key `{key}`: expected a fraction strictly between 0 and 1, found {value}"
                ));
            }
        }
        if self.interval.0 < std::time::Duration::from_secs(1) {
            return Err(format!(
                "key `audit.interval`: expected at least 1s, found {}",
                self.interval
            ));
        }
        // The audit thread draws each wait as up to 1.5 × interval and adds it to a clock: the bound keeps that
        // arithmetic far from overflow, and an interval of years audits nothing anyway.
        if self.interval.0 > MAX_AUDIT_INTERVAL {
            return Err(format!(
                "key `audit.interval`: expected at most {}, found {}",
                HumanDuration(MAX_AUDIT_INTERVAL),
                self.interval
            ));
        }
        if self.lost_store_grace.0 > MAX_AUDIT_INTERVAL {
            return Err(format!(
                "key `audit.lost_store_grace`: expected at most {}, found {}",
                HumanDuration(MAX_AUDIT_INTERVAL),
                self.lost_store_grace
            ));
        }
        Ok(())
    }
}

/// The longest `audit.interval` (and `audit.lost_store_grace`): one year.
pub const MAX_AUDIT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

/// Bounds on a passphrase volume's argon2id costs. Memory is allocated in one piece before hashing, so the bound
/// turns a mistyped `m_cost_kib` into a config error instead of an allocation abort; the time and lane bounds
/// keep a mount from hanging for hours in key derivation.
pub const MAX_ARGON2_M_COST_KIB: u32 = 4 << 20;
pub const MAX_ARGON2_T_COST: u32 = 64;
pub const MAX_ARGON2_P_COST: u32 = 64;

impl Argon2Params {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.salt.len() < 16 || self.salt.len() > 128 || hex::decode(&self.salt).is_err() {
            return Err("key `key.argon2.salt`: expected 16 to 128 hex digits".into());
        }
        // argon2 needs at least 8 KiB per lane; p_cost is clamped here only to compute that bound without overflow
        // (it is checked first).
        for (key, value, min, max) in [
            ("p_cost", self.p_cost, 1, MAX_ARGON2_P_COST),
            (
                "m_cost_kib",
                self.m_cost_kib,
                8 * self.p_cost.clamp(1, MAX_ARGON2_P_COST),
                MAX_ARGON2_M_COST_KIB,
            ),
            ("t_cost", self.t_cost, 1, MAX_ARGON2_T_COST),
        ] {
            if !(min..=max).contains(&value) {
                return Err(format!(
                    "key `key.argon2.{key}`: expected {min} ..= {max}, found {value}"
                ));
            }
        }
        Ok(())
    }
}

pub const MIN_SEGMENT_SIZE: u64 = 4 << 10;
pub const MAX_SEGMENT_SIZE: u64 = 1 << 30;

impl VolumeConfig {
    /// Reads and validates `path`. Every error is one line naming the file and, where there is one, the key.
    pub fn load(path: &Path) -> Result<VolumeConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| QsfsError::io(format!("reading {}", path.display()), e))?;
        Self::parse(path, &text)
    }

    /// Parses and validates config `text`, read from `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<VolumeConfig> {
        let cfg: VolumeConfig = toml::from_str(text).map_err(|e| config_error(path, text, &e))?;
        cfg.validate().map_err(|reason| QsfsError::Config {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> String {
        let body = toml::to_string_pretty(self).expect("config serializes");
        format!(
            "# qsfs volume config. Edit store URIs if a server moves; never change ids, shards or volume_id.\n{body}"
        )
    }

    pub fn volume_id_bytes(&self) -> [u8; 16] {
        let mut id = [0u8; 16];
        // validate() guarantees 32 hex digits.
        hex::decode_to_slice(&self.volume_id, &mut id).expect("validated volume id");
        id
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.format_version != CONFIG_FORMAT_VERSION {
            return Err(format!(
                "key `format_version`: expected {CONFIG_FORMAT_VERSION}, found {}",
                self.format_version
            ));
        }
        if self.volume_id.len() != 32 || hex::decode(&self.volume_id).is_err() {
            return Err("key `volume_id`: expected 32 hex digits".into());
        }
        if self.data_shards == 0 {
            return Err("key `data_shards`: expected at least 1".into());
        }
        if self.parity_shards == 0 {
            return Err("key `parity_shards`: expected at least 1".into());
        }
        // Saturating: the counts come straight from the file and may be anything up to usize::MAX.
        if self.data_shards.saturating_add(self.parity_shards) > 255 {
            return Err(
                "keys `data_shards` + `parity_shards`: expected at most 255 shards in all".into(),
            );
        }
        let total = self.data_shards + self.parity_shards;
        if self.write_quorum <= self.data_shards || self.write_quorum > total {
            return Err(format!(
                "key `write_quorum`: expected {} ..= {total} (more than data_shards, at most data + parity), found {}",
                self.data_shards + 1,
                self.write_quorum
            ));
        }
        let seg = self.segment_size.0;
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&seg) {
            return Err(format!(
                "key `segment_size`: expected {} ..= {}, found {}",
                ByteSize(MIN_SEGMENT_SIZE),
                ByteSize(MAX_SEGMENT_SIZE),
                self.segment_size
            ));
        }
        if !(-7..=22).contains(&self.zstd_level) {
            return Err(format!(
                "key `zstd_level`: expected -7 ..= 22, found {}",
                self.zstd_level
            ));
        }
        if self.stores.len() < total {
            return Err(format!(
                "key `stores`: {total} shards per segment need at least {total} stores so that no two shards of a segment share one; found {}",
                self.stores.len()
            ));
        }
        let mut ids: Vec<u32> = self.stores.iter().map(|s| s.id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err("key `stores`: two stores share an id".into());
        }
        let mut uris: Vec<&str> = self.stores.iter().map(|s| s.uri.as_str()).collect();
        uris.sort_unstable();
        if uris.windows(2).any(|w| w[0] == w[1]) {
            return Err("key `stores`: the same store URI is listed twice".into());
        }
        for s in &self.stores {
            qsfs_backends::StoreUri::parse(&s.uri)
                .map_err(|e| format!("key `stores` (id {}): {e}", s.id))?;
        }
        self.audit.validate()?;
        self.gc.validate()?;
        match self.key.source {
            KeySource::File => {}
            KeySource::Passphrase if self.key.argon2.is_none() => {
                return Err(
                    "key `key.argon2`: expected salt and cost parameters for a passphrase volume"
                        .into(),
                );
            }
            KeySource::Passphrase => {}
        }
        if let Some(a) = &self.key.argon2 {
            a.validate()?;
        }
        Ok(())
    }
}

/// Turns a toml error into one line: file, line number, the key on that line and the message — never the line's
/// value, which may be a store URI with a password in it.
fn config_error(path: &Path, text: &str, err: &toml::de::Error) -> QsfsError {
    let message = redact_message(&err.message().replace('\n', " "));
    let reason = match err.span() {
        Some(span) => {
            let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
            match text.lines().nth(line_no - 1).and_then(line_key) {
                Some(key) => format!("line {line_no} (key `{key}`): {message}"),
                None => format!("line {line_no}: {message}"),
            }
        }
        None => message,
    };
    QsfsError::Config {
        path: path.to_path_buf(),
        reason,
    }
}

/// The key a `key = value` line assigns, if it looks like one (bare or dotted key characters only).
fn line_key(line: &str) -> Option<&str> {
    let key = line.split_once('=')?.0.trim();
    let ok = !key.is_empty()
        && key.len() <= 64
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    ok.then_some(key)
}

/// A toml message may quote the offending value (`invalid type: string "…"`): a quoted value that could hold a
/// URI's password (it has an `@`, or it is cut short) is elided, and any URI userinfo left is redacted.
fn redact_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut parts = message.split('"');
    out.push_str(parts.next().unwrap_or(""));
    let rest: Vec<&str> = parts.collect();
    let mut i = 0;
    while i < rest.len() {
        // rest[i] is inside quotes when it has a closing partner at rest[i + 1].
        if i + 1 < rest.len() {
            let quoted = rest[i];
            out.push('"');
            out.push_str(if quoted.contains(['@', ':']) {
                "…"
            } else {
                quoted
            });
            out.push('"');
            out.push_str(rest[i + 1]);
            i += 2;
        } else {
            out.push_str("\"…");
            i += 1;
        }
    }
    if out.contains('@') {
        return qsfs_backends::secret::redact_raw(&out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(ByteSize::parse("4MiB").unwrap(), ByteSize(4 << 20));
        assert_eq!(ByteSize::parse("512KiB").unwrap(), ByteSize(512 << 10));
        assert_eq!(ByteSize::parse("4096").unwrap(), ByteSize(4096));
        assert_eq!(ByteSize::parse("1 GiB").unwrap(), ByteSize(1 << 30));
        assert!(ByteSize::parse("4XB").is_err());
        assert!(ByteSize::parse("MiB").is_err());
        assert_eq!(ByteSize(4 << 20).to_string(), "4MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000");
    }

    #[test]
    fn durations_parse_and_print() {
        use std::time::Duration;
        assert_eq!(
            HumanDuration::parse("15m").unwrap().0,
            Duration::from_secs(900)
        );
        assert_eq!(
            HumanDuration::parse("90").unwrap().0,
            Duration::from_secs(90)
        );
        assert_eq!(
            HumanDuration::parse("500ms").unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!(HumanDuration::parse("0s").unwrap().0, Duration::ZERO);
        assert!(HumanDuration::parse("5 fortnights").is_err());
        assert_eq!(
            HumanDuration(Duration::from_secs(6 * 3600)).to_string(),
            "6h"
        );
        assert_eq!(HumanDuration(Duration::from_secs(90)).to_string(), "90s");
        assert_eq!(HumanDuration(Duration::ZERO).to_string(), "0ms");
    }

    #[test]
    fn audit_section_is_optional_and_checked() {
        let mut cfg = AuditConfig::default();
        assert!(cfg.validate().is_ok());
        let parsed: AuditConfig = toml::from_str("lost_store_grace = \"1s\"").unwrap();
        assert_eq!(parsed.lost_store_grace.0, std::time::Duration::from_secs(1));
        assert_eq!(parsed.delta, 0.01);
        assert!(toml::from_str::<AuditConfig>("bogus = 1").is_err());
        cfg.confidence = 1.0;
        assert!(cfg.validate().is_err());
    }
}
