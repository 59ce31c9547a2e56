//! The on-store formats of the metadata log: log records, the head hint and the volume descriptor, their names on a
//! store, and their sealing.
//!
//! Names. Log records and the head hint have keys derived from the metadata subkey (a keyed BLAKE3 hash of
//! `"log" ‖ seq` or `"head"`), so only the key's holder can find them and a store sees nothing but one more opaque
//! 32-byte name. The descriptor's key is a constant: it is what a new machine with only a store URI reads first.
//!
//! Sealing. Records and the head are XChaCha20-Poly1305 under a key derived from the metadata subkey, with a fresh
//! random nonce, and with associated data binding the volume id, the object's kind and (for records) its sequence
//! number: a record replayed under another number, moved from another volume, or with one flipped byte fails to
//! open. Each record also carries the hash of its predecessor (the chain) and the writer's epoch, inside the
//! sealed part, so a store that drops, reorders or forges records is caught by a reader walking the chain.
//!
//! Layouts (all integers little-endian; each object starts with an 8-byte magic naming its format version):
//! - record: `QSFSLOG1` ‖ seq u64 ‖ nonce[24] ‖ sealed(epoch u64 ‖ prev[32] ‖ time_ns i64 ‖ kind u8 ‖ body)
//! - head:   `QSFSHED1` ‖ nonce[24] ‖ sealed(snapshot_seq u64 ‖ seq u64 ‖ epoch u64 ‖ time_ns i64)
//! - descriptor: `QSFSVOL1` ‖ u32 length ‖ public JSON ‖ nonce[24] ‖ sealed(volume config TOML)

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use qsfs_backends::ShardKey;

use crate::error::{QsfsError, Result};

const RECORD_MAGIC: &[u8; 8] = b"QSFSLOG1";
const HEAD_MAGIC: &[u8; 8] = b"QSFSHED1";
pub(super) const DESCRIPTOR_MAGIC: &[u8; 8] = b"QSFSVOL1";
const NONCE: usize = 24;
/// A record body larger than this is refused before it is decrypted: bounds what a lying store can make us buffer.
pub const MAX_RECORD: usize = 64 << 20;

/// What a log record carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// zstd-compressed, length-prefixed SQLite changesets, applied in order.
    Changes = 1,
    /// A snapshot manifest: the whole database as of this record, in erasure-coded segments.
    Snapshot = 2,
}

/// A log record, opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub epoch: u64,
    pub prev: [u8; 32],
    pub time_ns: i64,
    pub kind: RecordKind,
    pub body: Vec<u8>,
}

/// The head hint: where a restore starts looking. Only a hint: the chain decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub snapshot_seq: u64,
    pub seq: u64,
    pub epoch: u64,
    pub time_ns: i64,
}

/// The keys of the metadata log, derived from the volume's metadata subkey.
#[derive(Clone)]
pub struct LogKeys {
    naming: [u8; 32],
    cipher: XChaCha20Poly1305,
    volume_id: [u8; 16],
}

impl LogKeys {
    pub fn new(metadata_subkey: &[u8; 32], volume_id: [u8; 16]) -> LogKeys {
        let naming = blake3::derive_key("qsfs 2026 metadata log naming", metadata_subkey);
        let sealing = blake3::derive_key("qsfs 2026 metadata log sealing", metadata_subkey);
        LogKeys {
            naming,
            cipher: XChaCha20Poly1305::new((&sealing).into()),
            volume_id,
        }
    }

    pub fn record_key(&self, seq: u64) -> ShardKey {
        let mut h = blake3::Hasher::new_keyed(&self.naming);
        h.update(b"log");
        h.update(&seq.to_le_bytes());
        ShardKey(*h.finalize().as_bytes())
    }

    pub fn head_key(&self) -> ShardKey {
        ShardKey(*blake3::keyed_hash(&self.naming, b"head").as_bytes())
    }

    fn ad(&self, kind: &[u8], seq: u64) -> Vec<u8> {
        let mut ad = Vec::with_capacity(64);
        ad.extend_from_slice(b"qsfs metadata ");
        ad.extend_from_slice(kind);
        ad.extend_from_slice(&self.volume_id);
        ad.extend_from_slice(&seq.to_le_bytes());
        ad
    }

    pub(super) fn seal(&self, kind: &[u8], seq: u64, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE];
        rand::fill(&mut nonce);
        let ad = self.ad(kind, seq);
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &ad,
                },
            )
            .expect("XChaCha20 seals any metadata object (far below its size limit)");
        let mut out = Vec::with_capacity(NONCE + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    pub(super) fn open(&self, kind: &[u8], seq: u64, bytes: &[u8], what: &str) -> Result<Vec<u8>> {
        if bytes.len() < NONCE + 16 {
            return Err(QsfsError::MetaLog(format!("{what}: truncated")));
        }
        let (nonce, sealed) = bytes.split_at(NONCE);
        let ad = self.ad(kind, seq);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &ad,
                },
            )
            .map_err(|_| {
                QsfsError::MetaLog(format!(
                    "{what}: does not authenticate (corrupt, forged, or from another volume or key)"
                ))
            })
    }

    /// The on-store bytes of `rec`.
    pub fn seal_record(&self, rec: &Record) -> Vec<u8> {
        let mut plain = Vec::with_capacity(57 + rec.body.len());
        plain.extend_from_slice(&rec.epoch.to_le_bytes());
        plain.extend_from_slice(&rec.prev);
        plain.extend_from_slice(&rec.time_ns.to_le_bytes());
        plain.push(rec.kind as u8);
        plain.extend_from_slice(&rec.body);
        let mut out = Vec::with_capacity(16 + NONCE + plain.len() + 16);
        out.extend_from_slice(RECORD_MAGIC);
        out.extend_from_slice(&rec.seq.to_le_bytes());
        out.extend_from_slice(&self.seal(b"record", rec.seq, &plain));
        out
    }

    /// Opens the bytes a store returned for record `seq`: refuses anything else (another number, another volume,
    /// a flipped byte, an oversized blob).
    pub fn open_record(&self, seq: u64, bytes: &[u8]) -> Result<Record> {
        let what = format!("metadata record {seq}");
        if bytes.len() > MAX_RECORD + 128 {
            return Err(QsfsError::MetaLog(format!(
                "{what}: larger than any record"
            )));
        }
        if bytes.len() < 16 || &bytes[..8] != RECORD_MAGIC {
            return Err(QsfsError::MetaLog(format!(
                "{what}: not a qsfs metadata record"
            )));
        }
        let stated = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        if stated != seq {
            return Err(QsfsError::MetaLog(format!(
                "{what}: the store served record {stated}"
            )));
        }
        let plain = self.open(b"record", seq, &bytes[16..], &what)?;
        if plain.len() < 49 {
            return Err(QsfsError::MetaLog(format!("{what}: truncated")));
        }
        let kind = match plain[48] {
            1 => RecordKind::Changes,
            2 => RecordKind::Snapshot,
            k => return Err(QsfsError::MetaLog(format!("{what}: unknown kind {k}"))),
        };
        Ok(Record {
            seq,
            epoch: u64::from_le_bytes(plain[0..8].try_into().expect("8 bytes")),
            prev: plain[8..40].try_into().expect("32 bytes"),
            time_ns: i64::from_le_bytes(plain[40..48].try_into().expect("8 bytes")),
            kind,
            body: plain[49..].to_vec(),
        })
    }

    pub fn seal_head(&self, head: &Head) -> Vec<u8> {
        let mut plain = Vec::with_capacity(32);
        plain.extend_from_slice(&head.snapshot_seq.to_le_bytes());
        plain.extend_from_slice(&head.seq.to_le_bytes());
        plain.extend_from_slice(&head.epoch.to_le_bytes());
        plain.extend_from_slice(&head.time_ns.to_le_bytes());
        let mut out = HEAD_MAGIC.to_vec();
        out.extend_from_slice(&self.seal(b"head", 0, &plain));
        out
    }

    pub fn open_head(&self, bytes: &[u8]) -> Result<Head> {
        if bytes.len() > 4096 || bytes.len() < 8 || &bytes[..8] != HEAD_MAGIC {
            return Err(QsfsError::MetaLog("head: not a qsfs metadata head".into()));
        }
        let plain = self.open(b"head", 0, &bytes[8..], "head")?;
        if plain.len() != 32 {
            return Err(QsfsError::MetaLog("head: wrong length".into()));
        }
        let word =
            |i: usize| u64::from_le_bytes(plain[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        Ok(Head {
            snapshot_seq: word(0),
            seq: word(1),
            epoch: word(2),
            time_ns: word(3) as i64,
        })
    }
}

/// The hash that chains records: over the whole on-store blob, so the next record pins this one exactly.
pub fn record_hash(blob: &[u8]) -> [u8; 32] {
    *blake3::hash(blob).as_bytes()
}

/// A `Changes` body: the changesets, each length-prefixed, compressed together.
pub fn pack_changes(changesets: &[Vec<u8>]) -> Result<Vec<u8>> {
    let mut framed = Vec::with_capacity(changesets.iter().map(|c| c.len() + 4).sum());
    for c in changesets {
        framed.extend_from_slice(&(c.len() as u32).to_le_bytes());
        framed.extend_from_slice(c);
    }
    zstd::bulk::compress(&framed, 3).map_err(|e| QsfsError::io("compressing a metadata record", e))
}

/// The changesets of a `Changes` body.
pub fn unpack_changes(seq: u64, body: &[u8]) -> Result<Vec<Vec<u8>>> {
    let framed = zstd::bulk::decompress(body, MAX_RECORD * 4)
        .map_err(|e| QsfsError::MetaLog(format!("metadata record {seq}: {e}")))?;
    let mut out = Vec::new();
    let mut rest = &framed[..];
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(QsfsError::MetaLog(format!(
                "metadata record {seq}: truncated changeset"
            )));
        }
        let n = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        if rest.len() < 4 + n {
            return Err(QsfsError::MetaLog(format!(
                "metadata record {seq}: truncated changeset"
            )));
        }
        out.push(rest[4..4 + n].to_vec());
        rest = &rest[4 + n..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(vol: u8) -> LogKeys {
        LogKeys::new(&[7; 32], [vol; 16])
    }

    fn record(seq: u64) -> Record {
        Record {
            seq,
            epoch: 3,
            prev: [9; 32],
            time_ns: 12345,
            kind: RecordKind::Changes,
            body: pack_changes(&[b"abc".to_vec(), Vec::new(), b"defg".to_vec()]).unwrap(),
        }
    }

    #[test]
    fn records_round_trip_and_refuse_tampering() {
        let k = keys(1);
        let rec = record(5);
        let blob = k.seal_record(&rec);
        let opened = k.open_record(5, &blob).unwrap();
        assert_eq!(opened, rec);
        assert_eq!(
            unpack_changes(5, &opened.body).unwrap(),
            vec![b"abc".to_vec(), Vec::new(), b"defg".to_vec()]
        );
        // Served under another number, from another volume, with a flipped byte, truncated.
        assert!(k.open_record(6, &blob).is_err());
        assert!(keys(2).open_record(5, &blob).is_err());
        for i in [3, 12, 20, blob.len() - 1] {
            let mut bad = blob.clone();
            bad[i] ^= 1;
            assert!(k.open_record(5, &bad).is_err(), "flip at {i}");
        }
        assert!(k.open_record(5, &blob[..blob.len() - 1]).is_err());
        assert!(k.open_record(5, b"").is_err());
    }

    #[test]
    fn head_round_trips_and_names_differ() {
        let k = keys(1);
        let head = Head {
            snapshot_seq: 4,
            seq: 9,
            epoch: 2,
            time_ns: 77,
        };
        assert_eq!(k.open_head(&k.seal_head(&head)).unwrap(), head);
        assert!(keys(2).open_head(&k.seal_head(&head)).is_err());
        assert_ne!(k.record_key(1), k.record_key(2));
        assert_ne!(k.record_key(0), k.head_key());
    }
}
