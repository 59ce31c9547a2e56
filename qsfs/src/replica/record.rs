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
//! - record: `QSFSLOG1` ‖ epoch u64 ‖ seq u64 ‖ nonce[24] ‖ sealed(prev[32] ‖ time_ns i64 ‖ kind u8 ‖ body)
//! - head:   `QSFSHED1` ‖ nonce[24] ‖ sealed(snapshot_seq u64 ‖ seq u64 ‖ epoch u64 ‖ time_ns i64)
//! - lease:  `QSFSLSE1` ‖ nonce[24] ‖ sealed(epoch u64 ‖ holder[32] ‖ taken_ns i64 ‖ description)
//! - snapshot image: nonce[24] ‖ sealed(zstd(SQLite image)), cut into chunks and stored as `snapshot` describes
//!   (`QSFSSNP2` pieces; `QSFSSNP1` whole chunks in volumes written before snapshots were erasure-coded)
//!
//! Epochs. Each writer that takes the volume over (see `lease`) starts a new epoch; records are named and sealed
//! by (epoch, seq), so a stale writer that has not yet noticed can only add records to its own, abandoned epoch,
//! never overwrite or extend the current one.
//! - descriptor: `QSFSVOL1` ‖ u32 length ‖ public JSON ‖ nonce[24] ‖ sealed(volume config TOML)

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use qsfs_backends::ShardKey;

use crate::error::{QsfsError, Result};

const RECORD_MAGIC: &[u8; 8] = b"QSFSLOG1";
const HEAD_MAGIC: &[u8; 8] = b"QSFSHED1";
const LEASE_MAGIC: &[u8; 8] = b"QSFSLSE1";
pub(super) const DESCRIPTOR_MAGIC: &[u8; 8] = b"QSFSVOL1";
const NONCE: usize = 24;
/// A record body larger than this is refused before it is decrypted: bounds what a lying store can make us buffer.
pub const MAX_RECORD: usize = 64 << 20;

/// What a log record carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// zstd-compressed, length-prefixed SQLite changesets, applied in order.
    Changes = 1,
    /// A snapshot manifest: the whole database as of this record, in chunks on the stores (see `snapshot`).
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

/// The writer lease: which copy of the volume may write, since which epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub epoch: u64,
    /// The holder's fingerprint (machine, volume directory).
    pub holder: [u8; 32],
    pub taken_ns: i64,
    /// Where the holder is, for messages: host and volume path.
    pub description: String,
}

/// The keys of the metadata log, derived from the volume's metadata subkey.
#[derive(Clone)]
pub struct LogKeys {
    naming: [u8; 32],
    cipher: XChaCha20Poly1305,
    volume_id: [u8; 16],
}

impl Drop for LogKeys {
    fn drop(&mut self) {
        // The cipher wipes its own key.
        zeroize::Zeroize::zeroize(&mut self.naming);
    }
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

    pub fn record_key(&self, epoch: u64, seq: u64) -> ShardKey {
        let mut h = blake3::Hasher::new_keyed(&self.naming);
        h.update(b"log");
        h.update(&epoch.to_le_bytes());
        h.update(&seq.to_le_bytes());
        ShardKey(*h.finalize().as_bytes())
    }

    pub fn head_key(&self) -> ShardKey {
        ShardKey(*blake3::keyed_hash(&self.naming, b"head").as_bytes())
    }

    /// Where every store keeps chunk `index` of a format-1 snapshot whole (read and deleted, no longer written).
    pub fn snapshot_chunk_key(&self, epoch: u64, seq: u64, index: u32) -> ShardKey {
        let mut h = blake3::Hasher::new_keyed(&self.naming);
        h.update(b"snapshot");
        h.update(&epoch.to_le_bytes());
        h.update(&seq.to_le_bytes());
        h.update(&index.to_le_bytes());
        ShardKey(*h.finalize().as_bytes())
    }

    /// Where every store keeps its piece of chunk `index` of a format-2 snapshot (see `snapshot`): one name for all
    /// pieces of a chunk, each store holding its own piece under it, so deleting the name everywhere deletes them
    /// all.
    pub fn snapshot_piece_key(&self, epoch: u64, seq: u64, index: u32) -> ShardKey {
        let mut h = blake3::Hasher::new_keyed(&self.naming);
        h.update(b"snapshot piece");
        h.update(&epoch.to_le_bytes());
        h.update(&seq.to_le_bytes());
        h.update(&index.to_le_bytes());
        ShardKey(*h.finalize().as_bytes())
    }

    /// The sealed snapshot image of record (`epoch`, `seq`): `nonce ‖ sealed(compressed)`.
    pub fn seal_snapshot(&self, epoch: u64, seq: u64, compressed: &[u8]) -> Vec<u8> {
        self.seal_at(b"snapshot", epoch, seq, compressed)
    }

    /// Opens a reassembled sealed snapshot image.
    pub fn open_snapshot(&self, epoch: u64, seq: u64, sealed: &[u8]) -> Result<Vec<u8>> {
        self.open_at(
            b"snapshot",
            epoch,
            seq,
            sealed,
            &format!("snapshot {seq} of epoch {epoch}"),
        )
    }

    pub fn lease_key(&self) -> ShardKey {
        ShardKey(*blake3::keyed_hash(&self.naming, b"lease").as_bytes())
    }

    fn ad(&self, kind: &[u8], epoch: u64, seq: u64) -> Vec<u8> {
        let mut ad = Vec::with_capacity(72);
        ad.extend_from_slice(b"qsfs metadata ");
        ad.extend_from_slice(kind);
        ad.extend_from_slice(&self.volume_id);
        ad.extend_from_slice(&epoch.to_le_bytes());
        ad.extend_from_slice(&seq.to_le_bytes());
        ad
    }

    pub(super) fn seal(&self, kind: &[u8], seq: u64, plain: &[u8]) -> Vec<u8> {
        self.seal_at(kind, 0, seq, plain)
    }

    fn seal_at(&self, kind: &[u8], epoch: u64, seq: u64, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE];
        rand::fill(&mut nonce);
        let ad = self.ad(kind, epoch, seq);
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
        self.open_at(kind, 0, seq, bytes, what)
    }

    fn open_at(
        &self,
        kind: &[u8],
        epoch: u64,
        seq: u64,
        bytes: &[u8],
        what: &str,
    ) -> Result<Vec<u8>> {
        if bytes.len() < NONCE + 16 {
            return Err(QsfsError::MetaLog(format!("{what}: truncated")));
        }
        let (nonce, sealed) = bytes.split_at(NONCE);
        let ad = self.ad(kind, epoch, seq);
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
        let mut plain = Vec::with_capacity(41 + rec.body.len());
        plain.extend_from_slice(&rec.prev);
        plain.extend_from_slice(&rec.time_ns.to_le_bytes());
        plain.push(rec.kind as u8);
        plain.extend_from_slice(&rec.body);
        let mut out = Vec::with_capacity(24 + NONCE + plain.len() + 16);
        out.extend_from_slice(RECORD_MAGIC);
        out.extend_from_slice(&rec.epoch.to_le_bytes());
        out.extend_from_slice(&rec.seq.to_le_bytes());
        out.extend_from_slice(&self.seal_at(b"record", rec.epoch, rec.seq, &plain));
        out
    }

    /// Opens the bytes a store returned for record (`epoch`, `seq`): refuses anything else (another number or
    /// epoch, another volume, a flipped byte, an oversized blob).
    pub fn open_record(&self, epoch: u64, seq: u64, bytes: &[u8]) -> Result<Record> {
        let what = format!("metadata record {seq} of epoch {epoch}");
        if bytes.len() > MAX_RECORD + 128 {
            return Err(QsfsError::MetaLog(format!(
                "{what}: larger than any record"
            )));
        }
        if bytes.len() < 24 || &bytes[..8] != RECORD_MAGIC {
            return Err(QsfsError::MetaLog(format!(
                "{what}: not a qsfs metadata record"
            )));
        }
        let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        if (word(8), word(16)) != (epoch, seq) {
            return Err(QsfsError::MetaLog(format!(
                "{what}: the store served record {} of epoch {}",
                word(16),
                word(8)
            )));
        }
        let plain = self.open_at(b"record", epoch, seq, &bytes[24..], &what)?;
        if plain.len() < 41 {
            return Err(QsfsError::MetaLog(format!("{what}: truncated")));
        }
        let kind = match plain[40] {
            1 => RecordKind::Changes,
            2 => RecordKind::Snapshot,
            k => return Err(QsfsError::MetaLog(format!("{what}: unknown kind {k}"))),
        };
        Ok(Record {
            seq,
            epoch,
            prev: plain[0..32].try_into().expect("32 bytes"),
            time_ns: i64::from_le_bytes(plain[32..40].try_into().expect("8 bytes")),
            kind,
            body: plain[41..].to_vec(),
        })
    }

    pub fn seal_lease(&self, lease: &Lease) -> Vec<u8> {
        let mut plain = Vec::with_capacity(48 + lease.description.len());
        plain.extend_from_slice(&lease.epoch.to_le_bytes());
        plain.extend_from_slice(&lease.holder);
        plain.extend_from_slice(&lease.taken_ns.to_le_bytes());
        plain.extend_from_slice(lease.description.as_bytes());
        let mut out = LEASE_MAGIC.to_vec();
        out.extend_from_slice(&self.seal(b"lease", 0, &plain));
        out
    }

    pub fn open_lease(&self, bytes: &[u8]) -> Result<Lease> {
        if bytes.len() > 8192 || bytes.len() < 8 || &bytes[..8] != LEASE_MAGIC {
            return Err(QsfsError::MetaLog("lease: not a qsfs writer lease".into()));
        }
        let plain = self.open(b"lease", 0, &bytes[8..], "lease")?;
        if plain.len() < 48 {
            return Err(QsfsError::MetaLog("lease: truncated".into()));
        }
        Ok(Lease {
            epoch: u64::from_le_bytes(plain[0..8].try_into().expect("8 bytes")),
            holder: plain[8..40].try_into().expect("32 bytes"),
            taken_ns: i64::from_le_bytes(plain[40..48].try_into().expect("8 bytes")),
            description: String::from_utf8_lossy(&plain[48..]).into_owned(),
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
    use proptest::prelude::*;

    proptest! {
        /// Whatever a store returns, the decoders answer with an error or a value, never a panic, and refuse
        /// anything that was not sealed with this volume's key.
        #[test]
        fn decoders_refuse_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048), seq in 0u64..4) {
            let k = keys(1);
            prop_assert!(k.open_record(1, seq, &bytes).is_err());
            prop_assert!(k.open_head(&bytes).is_err());
            prop_assert!(k.open_lease(&bytes).is_err());
            prop_assert!(k.open_snapshot(1, seq, &bytes).is_err());
            let _ = unpack_changes(seq, &bytes);
            let _ = crate::replica::descriptor::read_public(&bytes);
        }

        /// A sealed record with any one byte changed, or cut anywhere, is refused.
        #[test]
        fn mutated_records_are_refused(body in proptest::collection::vec(any::<u8>(), 0..512), at in any::<usize>(), bit in 0u8..8) {
            let k = keys(1);
            let rec = Record { seq: 2, epoch: 1, prev: [3; 32], time_ns: 4, kind: RecordKind::Changes, body };
            let blob = k.seal_record(&rec);
            let mut bad = blob.clone();
            let i = at % bad.len();
            bad[i] ^= 1 << bit;
            prop_assert!(k.open_record(1, 2, &bad).is_err());
            prop_assert!(k.open_record(1, 2, &blob[..i]).is_err());
            prop_assert_eq!(k.open_record(1, 2, &blob).unwrap(), rec);
        }
    }

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
        let opened = k.open_record(3, 5, &blob).unwrap();
        assert_eq!(opened, rec);
        assert_eq!(
            unpack_changes(5, &opened.body).unwrap(),
            vec![b"abc".to_vec(), Vec::new(), b"defg".to_vec()]
        );
        // Served under another number, from another volume, with a flipped byte, truncated.
        assert!(k.open_record(3, 6, &blob).is_err());
        assert!(k.open_record(4, 5, &blob).is_err());
        assert!(keys(2).open_record(3, 5, &blob).is_err());
        for i in [3, 12, 20, blob.len() - 1] {
            let mut bad = blob.clone();
            bad[i] ^= 1;
            assert!(k.open_record(3, 5, &bad).is_err(), "flip at {i}");
        }
        assert!(k.open_record(3, 5, &blob[..blob.len() - 1]).is_err());
        assert!(k.open_record(3, 5, b"").is_err());
    }

    #[test]
    fn snapshot_images_refuse_another_record_or_volume() {
        let k = keys(1);
        let image: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let sealed = k.seal_snapshot(2, 9, &image);
        assert_eq!(k.open_snapshot(2, 9, &sealed).unwrap(), image);
        assert!(k.open_snapshot(2, 10, &sealed).is_err());
        assert!(k.open_snapshot(3, 9, &sealed).is_err());
        assert!(keys(2).open_snapshot(2, 9, &sealed).is_err());
        assert_ne!(k.snapshot_piece_key(2, 9, 0), k.snapshot_chunk_key(2, 9, 0));
        assert_ne!(k.snapshot_piece_key(2, 9, 0), k.snapshot_piece_key(2, 9, 1));
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
        assert_ne!(k.record_key(1, 1), k.record_key(1, 2));
        assert_ne!(k.record_key(1, 1), k.record_key(2, 1));
        assert_ne!(k.record_key(0, 0), k.head_key());
        let lease = Lease {
            epoch: 4,
            holder: [5; 32],
            taken_ns: 6,
            description: "host:/v".into(),
        };
        assert_eq!(k.open_lease(&k.seal_lease(&lease)).unwrap(), lease);
    }
}
