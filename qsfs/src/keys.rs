//! The volume's master key and everything derived from it. The master key is 32 random bytes in the volume's `key`
//! file (mode 0600) or argon2id over a passphrase; every working key is a BLAKE3 `derive_key` subkey with its own
//! context string, so no two purposes ever share key material. The config keeps only a key check value.
//!
//! Key material is wiped when it is dropped (`zeroize`): the master key, the subkeys, the key file's text and the
//! passphrase buffers (`Passphrase`), so a core dump or swapped-out page taken later holds less of it. The
//! ciphers built from subkeys (`chacha20poly1305`) wipe their own copies.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::config::Argon2Params;
use crate::durable;
use crate::error::{QsfsError, Result};

const CTX_SEGMENT: &str = "qsfs 2026 segment encryption";
const CTX_NAMING: &str = "qsfs 2026 shard naming";
const CTX_METADATA: &str = "qsfs 2026 metadata backup";
const CTX_CHECK: &str = "qsfs 2026 key check";
const KEY_FILE_MAGIC: &str = "qsfs-key v1";

/// A volume's 256-bit master key. Never logged: Debug prints nothing secret.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for MasterKey {}

/// A passphrase held in memory: wiped on drop, never printed.
pub type Passphrase = Zeroizing<String>;

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// The working subkeys of a volume.
#[derive(Clone)]
pub struct Subkeys {
    pub segment_encryption: [u8; 32],
    pub shard_naming: [u8; 32],
    pub metadata: [u8; 32],
}

impl Drop for Subkeys {
    fn drop(&mut self) {
        self.segment_encryption.zeroize();
        self.shard_naming.zeroize();
        self.metadata.zeroize();
    }
}

impl ZeroizeOnDrop for Subkeys {}

impl MasterKey {
    pub fn random() -> MasterKey {
        let mut k = [0u8; 32];
        rand::fill(&mut k);
        MasterKey(k)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> MasterKey {
        MasterKey(bytes)
    }

    /// argon2id(passphrase, salt) with the volume's recorded parameters.
    pub fn from_passphrase(passphrase: &[u8], params: &Argon2Params) -> Result<MasterKey> {
        let salt = hex::decode(&params.salt)
            .map_err(|_| QsfsError::Invalid("config key `key.argon2.salt`: expected hex".into()))?;
        let p = argon2::Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(32))
            .map_err(|e| QsfsError::Invalid(format!("config key `key.argon2`: {e}")))?;
        // The work area is reserved fallibly: memory that cannot be had is an error, not an abort.
        let mut memory: Vec<argon2::Block> = Vec::new();
        memory.try_reserve_exact(p.block_count()).map_err(|_| {
            QsfsError::Invalid(format!(
                "config key `key.argon2.m_cost_kib`: cannot allocate {} KiB for key derivation",
                params.m_cost_kib
            ))
        })?;
        memory.resize(p.block_count(), argon2::Block::default());
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
        let mut out = [0u8; 32];
        let hashed = a.hash_password_into_with_memory(passphrase, &salt, &mut out, &mut memory);
        // The work area holds intermediate state of the derivation.
        for block in memory.iter_mut() {
            block.zeroize();
        }
        hashed.map_err(|e| QsfsError::Invalid(format!("passphrase: {e}")))?;
        let key = MasterKey(out);
        out.zeroize();
        Ok(key)
    }

    pub fn subkeys(&self) -> Subkeys {
        Subkeys {
            segment_encryption: blake3::derive_key(CTX_SEGMENT, &self.0),
            shard_naming: blake3::derive_key(CTX_NAMING, &self.0),
            metadata: blake3::derive_key(CTX_METADATA, &self.0),
        }
    }

    /// A keyed hash of the volume id: stored in the config so a wrong key is caught before anything is touched.
    pub fn check_value(&self, volume_id: &[u8; 16]) -> String {
        let check_key = Zeroizing::new(blake3::derive_key(CTX_CHECK, &self.0));
        blake3::keyed_hash(&check_key, volume_id)
            .to_hex()
            .to_string()
    }

    /// Compares in constant time (blake3::Hash equality is constant time).
    pub fn matches(&self, volume_id: &[u8; 16], check_hex: &str) -> bool {
        let check_key = Zeroizing::new(blake3::derive_key(CTX_CHECK, &self.0));
        match blake3::Hash::from_hex(check_hex) {
            Ok(expected) => blake3::keyed_hash(&check_key, volume_id) == expected,
            Err(_) => false,
        }
    }

    /// Writes the key file with mode 0600, refusing to replace an existing one.
    pub fn write_file(&self, path: &Path) -> Result<()> {
        let ctx = || format!("writing key file {}", path.display());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| QsfsError::io(ctx(), e))?;
        let text = Zeroizing::new(format!("{KEY_FILE_MAGIC}\n{}\n", hex::encode(self.0)));
        f.write_all(text.as_bytes())
            .map_err(|e| QsfsError::io(ctx(), e))?;
        f.sync_all().map_err(|e| QsfsError::io(ctx(), e))?;
        if let Some(dir) = path.parent() {
            durable::sync_dir(dir)?;
        }
        Ok(())
    }

    /// Reads the key file, refusing one that group or others can read.
    pub fn read_file(path: &Path) -> Result<MasterKey> {
        let bad = |reason: String| QsfsError::KeyFile {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(why) = qsfs_backends::secret::exposure(path).map_err(|e| bad(e.to_string()))? {
            return Err(bad(why));
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?);
        let mut lines = text.lines();
        if lines.next() != Some(KEY_FILE_MAGIC) {
            return Err(bad(format!(
                "not a qsfs key file (expected first line `{KEY_FILE_MAGIC}`)"
            )));
        }
        let mut key = MasterKey([0u8; 32]);
        hex::decode_to_slice(lines.next().unwrap_or("").trim(), &mut key.0)
            .map_err(|_| bad("expected 64 hex digits on the second line".into()))?;
        Ok(key)
    }
}

/// Fresh argon2id parameters for a new passphrase volume (64 MiB, 3 passes: OWASP's recommended minimum class).
pub fn new_argon2_params() -> Argon2Params {
    let mut salt = [0u8; 16];
    rand::fill(&mut salt);
    Argon2Params {
        salt: hex::encode(salt),
        m_cost_kib: 64 * 1024,
        t_cost: 3,
        p_cost: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn subkeys_are_distinct_and_deterministic() {
        let k = MasterKey::from_bytes([7u8; 32]);
        let a = k.subkeys();
        let b = k.subkeys();
        assert_eq!(a.segment_encryption, b.segment_encryption);
        assert_ne!(a.segment_encryption, a.shard_naming);
        assert_ne!(a.shard_naming, a.metadata);
        assert_ne!(a.segment_encryption, [7u8; 32]);
    }

    #[test]
    fn check_value_accepts_only_the_right_key() {
        let vid = [1u8; 16];
        let k = MasterKey::random();
        let check = k.check_value(&vid);
        assert!(k.matches(&vid, &check));
        assert!(!MasterKey::random().matches(&vid, &check));
        assert!(!k.matches(&[2u8; 16], &check));
        assert!(!k.matches(&vid, "not hex"));
    }

    #[test]
    fn key_file_round_trip_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let k = MasterKey::random();
        k.write_file(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(MasterKey::read_file(&path).unwrap().0, k.0);
        assert!(k.write_file(&path).is_err(), "never overwrites a key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = MasterKey::read_file(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn passphrase_derivation_is_salted() {
        let mut p = new_argon2_params();
        p.m_cost_kib = 256; // keep the test fast
        p.t_cost = 1;
        let a = MasterKey::from_passphrase(b"correct horse", &p).unwrap();
        let b = MasterKey::from_passphrase(b"correct horse", &p).unwrap();
        assert_eq!(a.0, b.0);
        let mut p2 = p.clone();
        p2.salt = hex::encode([9u8; 16]);
        assert_ne!(
            a.0,
            MasterKey::from_passphrase(b"correct horse", &p2).unwrap().0
        );
        assert_ne!(a.0, MasterKey::from_passphrase(b"wrong", &p).unwrap().0);
    }
}
