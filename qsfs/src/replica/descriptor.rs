//! The volume descriptor: the object beside every store's identity marker that lets a new machine with only the key
//! (or passphrase) and one store's URI find everything else.
//!
//! Its public part says which volume it is and how to get the key: the volume id, the key source and, for
//! passphrase volumes, the argon2 salt and costs (without them a passphrase cannot become a key). Everything else is
//! sealed under the metadata key: the volume's whole config (K, M, segment size, zstd level, write quorum, the key
//! check value, audit settings) with every store's id and URI, passwords removed.

use serde::{Deserialize, Serialize};

use super::record::{DESCRIPTOR_MAGIC, LogKeys};
use crate::config::{Argon2Params, KeySource, VolumeConfig};
use crate::error::{QsfsError, Result};

/// The descriptor's fixed name on every store.
pub fn descriptor_key() -> qsfs_backends::ShardKey {
    qsfs_backends::ShardKey(*blake3::hash(b"qsfs volume descriptor v1").as_bytes())
}

/// What anyone holding a store can read.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicPart {
    pub format: u32,
    pub volume_id: String,
    pub key_source: KeySource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argon2: Option<Argon2Params>,
}

/// The descriptor of `config`, sealed with `keys`.
pub fn seal(config: &VolumeConfig, keys: &LogKeys) -> Vec<u8> {
    let public = PublicPart {
        format: 1,
        volume_id: config.volume_id.clone(),
        key_source: config.key.source.clone(),
        argon2: config.key.argon2.clone(),
    };
    let public = serde_json::to_vec(&public).expect("the public part serialises");
    let mut shown = config.clone();
    for s in &mut shown.stores {
        s.uri = redact(&s.uri);
    }
    let mut out = DESCRIPTOR_MAGIC.to_vec();
    out.extend_from_slice(&(public.len() as u32).to_le_bytes());
    out.extend_from_slice(&public);
    out.extend_from_slice(&keys.seal(b"descriptor", 0, shown.to_toml().as_bytes()));
    out
}

/// A store URI without its password (a `password-file=` path stays: it names a file, not a secret).
fn redact(uri: &str) -> String {
    match qsfs_backends::StoreUri::parse(uri) {
        Ok(parsed) => parsed.to_string(),
        Err(_) => uri.to_string(),
    }
}

/// Splits a descriptor into its public part and the sealed rest.
pub fn read_public(bytes: &[u8]) -> Result<(PublicPart, &[u8])> {
    let bad = |why: &str| QsfsError::MetaLog(format!("volume descriptor: {why}"));
    if bytes.len() > 1 << 20 || bytes.len() < 12 || &bytes[..8] != DESCRIPTOR_MAGIC {
        return Err(bad("not a qsfs volume descriptor"));
    }
    let n = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    let public = bytes.get(12..12 + n).ok_or_else(|| bad("truncated"))?;
    let public: PublicPart =
        serde_json::from_slice(public).map_err(|e| bad(&format!("public part: {e}")))?;
    if public.format != 1 {
        return Err(bad(&format!("format {} is not supported", public.format)));
    }
    Ok((public, &bytes[12 + n..]))
}

/// Opens the sealed part: the volume's config. Fails when `keys` is not this volume's.
pub fn open_config(sealed: &[u8], keys: &LogKeys) -> Result<VolumeConfig> {
    let plain = keys
        .open(b"descriptor", 0, sealed, "volume descriptor")
        .map_err(|_| {
            QsfsError::MetaLog(
                "the volume descriptor does not open with this key: wrong key or passphrase (or a forged descriptor)"
                    .into(),
            )
        })?;
    let text = String::from_utf8(plain)
        .map_err(|_| QsfsError::MetaLog("volume descriptor: config is not UTF-8".into()))?;
    let config: VolumeConfig = toml::from_str(&text)
        .map_err(|e| QsfsError::MetaLog(format!("volume descriptor: config: {e}")))?;
    config
        .validate()
        .map_err(|e| QsfsError::MetaLog(format!("volume descriptor: config: {e}")))?;
    Ok(config)
}
