//! Metadata snapshots on the stores. This module owns the snapshot manifest (the body of a `Snapshot` record), the
//! on-store layout of a snapshot's chunks, writing them, reading them back verified, and deleting them.
//!
//! The sealed image (`record::LogKeys::seal_snapshot`) is cut into chunks of `SNAPSHOT_CHUNK` bytes. Format 2 (this
//! release) erasure-codes each chunk like a segment (`codec::erasure`, reed-solomon-simd): k data pieces (k = the
//! volume's K) and m = n − k parity pieces, n being the number of stores that hold the log; piece i goes to the i-th
//! of them. A store so holds about 1/k of the image instead of all of it, and any k stores restore it. With too few
//! log stores for m ≥ the volume's M, the chunk is instead stored whole on every log store ("replicated"), as
//! format 1 always did, because coding it then would protect it less than a copy on each store does.
//!
//! The manifest lives inside the `Snapshot` record, which is sealed, chained and replicated, and holds the BLAKE3
//! hash of every piece object of every chunk: a reader checks each piece against it before using it, so a store
//! that serves a damaged, forged or swapped piece is refused and named, and decoding uses only verified pieces.
//!
//! Objects (integers little-endian):
//! - format 2 piece: `QSFSSNP2` ‖ epoch u64 ‖ seq u64 ‖ chunk u32 ‖ chunks u32 ‖ piece u32 ‖ k u32 ‖ m u32 ‖
//!   chunk_len u32 ‖ payload; payload = shard `piece` of the chunk (`shard_len_for(chunk_len, k)` bytes, the last
//!   data shard zero-padded), or for the replicated layout (piece 0, k = 1, m = 0) the whole chunk. All pieces of
//!   a chunk share one name (`LogKeys::snapshot_piece_key`): each store holds its own under it.
//! - format 1 chunk (read only): `QSFSSNP1` ‖ epoch u64 ‖ seq u64 ‖ index u32 ‖ count u32 ‖ the chunk, whole on
//!   every log store, under `LogKeys::snapshot_chunk_key`; it is authenticated only with the reassembled image.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::record::LogKeys;
use crate::codec::erasure;
use crate::error::{QsfsError, Result};
use crate::store_set::StoreSet;

/// Bytes of sealed image per snapshot chunk: within every store's value limit (0-db: 8 MiB).
pub const SNAPSHOT_CHUNK: usize = 4 << 20;
/// The manifest format this release writes.
const FORMAT: u32 = 2;
const PIECE_MAGIC: &[u8; 8] = b"QSFSSNP2";
/// Bytes of a format-2 piece header.
const PIECE_HEADER: usize = 48;
const V1_MAGIC: &[u8; 8] = b"QSFSSNP1";
/// Bytes of a format-1 chunk header: magic, epoch, seq, index, count.
const V1_HEADER: usize = 32;

/// How a format-2 snapshot's chunks are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Layout {
    /// Piece i of every chunk on the i-th log store: k data pieces, then m parity pieces.
    Erasure { k: u32, m: u32 },
    /// Every chunk whole on every log store.
    Replicated,
}

impl Layout {
    /// The layout for a volume of `k` data and `min_parity` parity shards whose log is on `stores` stores: coded
    /// when the stores beyond k give at least the volume's own parity, else replicated.
    pub fn choose(k: usize, min_parity: usize, stores: usize) -> Layout {
        let m = stores.saturating_sub(k);
        if k >= 1 && m >= min_parity.max(1) && erasure::supports(k, m) {
            Layout::Erasure {
                k: k as u32,
                m: m as u32,
            }
        } else {
            Layout::Replicated
        }
    }

    /// (k, m): pieces needed to decode a chunk, and parity pieces.
    fn shape(self) -> (usize, usize) {
        match self {
            Layout::Erasure { k, m } => (k as usize, m as usize),
            Layout::Replicated => (1, 0),
        }
    }

    /// Distinct pieces per chunk.
    fn pieces(self) -> usize {
        let (k, m) = self.shape();
        k + m
    }

    /// Payload bytes of each piece of a chunk of `chunk_len` bytes.
    fn piece_len(self, chunk_len: usize) -> usize {
        match self {
            Layout::Erasure { k, .. } => {
                erasure::shard_len_for(chunk_len as u64, k as usize) as usize
            }
            Layout::Replicated => chunk_len,
        }
    }
}

/// What a `Snapshot` record's body says: how big the image is, how it is stored, and (format 2) the hash of every
/// stored piece.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotManifest {
    /// 1: chunks replicated whole, unhashed (the previous release); 2: `layout` and `pieces`.
    pub format: u32,
    /// Bytes of the SQLite image.
    pub db_len: u64,
    /// Bytes of the sealed, compressed image the chunks add up to.
    pub sealed_len: u64,
    pub chunks: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
    /// BLAKE3 of every piece object (header included), hex, by chunk and then piece index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pieces: Vec<Vec<String>>,
}

/// Which chunk of which snapshot, as a piece header states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ChunkAt {
    epoch: u64,
    seq: u64,
    chunk: u32,
    chunks: u32,
}

impl ChunkAt {
    fn what(&self) -> String {
        format!(
            "snapshot {} of epoch {}, chunk {}",
            self.seq, self.epoch, self.chunk
        )
    }
}

/// The piece objects of one chunk, in piece order, headers included.
fn encode_chunk(at: ChunkAt, layout: Layout, chunk: &[u8]) -> Result<Vec<Vec<u8>>> {
    let (k, m) = layout.shape();
    let len = layout.piece_len(chunk.len());
    let mut padded = chunk.to_vec();
    padded.resize(len * k, 0);
    let data: Vec<&[u8]> = padded.chunks(len).collect();
    let parity = if m > 0 {
        erasure::parity(k, m, len, &data)?
    } else {
        Vec::new()
    };
    let payloads = data.into_iter().chain(parity.iter().map(Vec::as_slice));
    Ok(payloads
        .enumerate()
        .map(|(piece, payload)| {
            let mut out = Vec::with_capacity(PIECE_HEADER + payload.len());
            out.extend_from_slice(PIECE_MAGIC);
            out.extend_from_slice(&at.epoch.to_le_bytes());
            out.extend_from_slice(&at.seq.to_le_bytes());
            for word in [at.chunk, at.chunks, piece as u32, k as u32, m as u32] {
                out.extend_from_slice(&word.to_le_bytes());
            }
            out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            out.extend_from_slice(payload);
            out
        })
        .collect())
}

/// Checks a piece object a store served against the manifest's hashes of this chunk's pieces (`hashes[piece]`)
/// and its own header; returns its piece index, the chunk's length and the payload.
fn open_piece<'a>(
    at: ChunkAt,
    layout: Layout,
    hashes: &[[u8; 32]],
    bytes: &'a [u8],
) -> Result<(usize, usize, &'a [u8])> {
    let what = at.what();
    if bytes.len() < PIECE_HEADER || &bytes[..8] != PIECE_MAGIC {
        return Err(QsfsError::MetaLog(format!(
            "{what}: not a qsfs snapshot piece"
        )));
    }
    let half = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    let piece = half(32) as usize;
    let hash = hashes.get(piece).ok_or_else(|| {
        QsfsError::MetaLog(format!(
            "{what}: piece {piece} is not one of the snapshot's"
        ))
    })?;
    if blake3::hash(bytes).as_bytes() != hash {
        return Err(QsfsError::MetaLog(format!(
            "{what}: piece {piece} does not match the manifest's hash (damaged or forged)"
        )));
    }
    // The hash pins the bytes the writer stored; the header must also describe this chunk in this layout.
    let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    let (k, m) = layout.shape();
    let chunk_len = half(44) as usize;
    let stated = ChunkAt {
        epoch: word(8),
        seq: word(16),
        chunk: half(24),
        chunks: half(28),
    };
    let payload = &bytes[PIECE_HEADER..];
    if stated != at
        || (half(36) as usize, half(40) as usize) != (k, m)
        || payload.len() != layout.piece_len(chunk_len)
    {
        return Err(QsfsError::MetaLog(format!(
            "{what}: piece {piece}'s header does not describe it"
        )));
    }
    Ok((piece, chunk_len, payload))
}

/// The chunk, from at least k verified pieces (`pieces[i]`: payload of piece i, if at hand).
fn decode_chunk(
    at: ChunkAt,
    layout: Layout,
    chunk_len: usize,
    mut pieces: Vec<Option<Vec<u8>>>,
) -> Result<Vec<u8>> {
    let (k, m) = layout.shape();
    let have = pieces.iter().filter(|p| p.is_some()).count();
    if have < k {
        return Err(QsfsError::MetaLog(format!(
            "{}: only {have} of the {k} pieces needed to rebuild it verify",
            at.what()
        )));
    }
    if let Layout::Erasure { .. } = layout {
        let len = layout.piece_len(chunk_len);
        erasure::restore_data_shards(u64::from(at.chunk), k, m, len, &mut pieces).map_err(|e| {
            match e {
                QsfsError::CorruptSegment { reason, .. } => {
                    QsfsError::MetaLog(format!("{}: {reason}", at.what()))
                }
                e => e,
            }
        })?;
    }
    let mut chunk = Vec::with_capacity(chunk_len + k);
    for piece in pieces.into_iter().take(k) {
        chunk.extend_from_slice(&piece.expect("every data piece is present or restored"));
    }
    chunk.truncate(chunk_len);
    Ok(chunk)
}

/// Stores sealed image `sealed` of snapshot record (`epoch`, `seq`) in `layout`, chunk by chunk; each chunk counts
/// once `quorum` log stores hold their piece of it (stores that are down get none). Returns the manifest, without
/// the image's length.
pub(super) async fn store(
    stores: &StoreSet,
    keys: &LogKeys,
    (epoch, seq): (u64, u64),
    sealed: &[u8],
    layout: Layout,
    quorum: usize,
) -> Result<SnapshotManifest> {
    let chunks = sealed.len().div_ceil(SNAPSHOT_CHUNK).max(1) as u32;
    let mut pieces = Vec::with_capacity(chunks as usize);
    for (i, chunk) in sealed.chunks(SNAPSHOT_CHUNK).enumerate() {
        let at = ChunkAt {
            epoch,
            seq,
            chunk: i as u32,
            chunks,
        };
        let objects: Vec<Arc<[u8]>> = encode_chunk(at, layout, chunk)?
            .into_iter()
            .map(Arc::from)
            .collect();
        pieces.push(
            objects
                .iter()
                .map(|o| blake3::hash(o).to_hex().to_string())
                .collect(),
        );
        // Replicated: the one object to every store; coded: piece i to the i-th store.
        let whole = layout == Layout::Replicated;
        let key = keys.snapshot_piece_key(epoch, seq, i as u32);
        stores
            .put_named(
                &key,
                |s| objects.get(if whole { 0 } else { s }).cloned(),
                quorum,
            )
            .await?;
    }
    Ok(SnapshotManifest {
        format: FORMAT,
        db_len: 0,
        sealed_len: sealed.len() as u64,
        chunks,
        layout: Some(layout),
        pieces,
    })
}

/// Reads a snapshot back: the opened, still compressed image. `progress(done, total)` per chunk; stores that
/// lacked their piece or served a wrong one are added to `notes`.
pub(super) async fn read(
    stores: &StoreSet,
    keys: &LogKeys,
    (epoch, seq): (u64, u64),
    manifest: &SnapshotManifest,
    progress: &(dyn Fn(u64, u64) + Sync),
    notes: &mut Vec<String>,
) -> Result<Vec<u8>> {
    let mut sealed = Vec::with_capacity(manifest.sealed_len.min(1 << 30) as usize);
    let layout = check(seq, manifest)?;
    for chunk in 0..manifest.chunks {
        progress(chunk as u64, manifest.chunks as u64);
        let at = ChunkAt {
            epoch,
            seq,
            chunk,
            chunks: manifest.chunks,
        };
        let bytes = match layout {
            None => read_v1_chunk(stores, keys, at).await?,
            Some(layout) => {
                let hashes = &manifest.pieces[chunk as usize];
                read_chunk(stores, keys, at, layout, hashes, notes).await?
            }
        };
        sealed.extend_from_slice(&bytes);
    }
    keys.open_snapshot(epoch, seq, &sealed)
}

/// The layout of a manifest this release can read (`None`: format 1), checking it is complete.
fn check(seq: u64, manifest: &SnapshotManifest) -> Result<Option<Layout>> {
    let bad = |why: &str| QsfsError::MetaLog(format!("snapshot {seq}: manifest {why}"));
    match (manifest.format, manifest.layout) {
        (1, _) => Ok(None),
        (2, Some(layout)) => {
            if manifest.pieces.len() != manifest.chunks as usize
                || manifest.pieces.iter().any(|p| p.len() != layout.pieces())
            {
                return Err(bad("does not hash every piece"));
            }
            Ok(Some(layout))
        }
        (2, None) => Err(bad("has no layout")),
        (f, _) => Err(bad(&format!(
            "is format {f}, newer than this qsfs reads (upgrade qsfs)"
        ))),
    }
}

/// One chunk of a format-2 snapshot: every reachable log store's piece, fetched concurrently and time-bounded,
/// verified against the manifest's `hashes`, decoded from the first k that verify.
async fn read_chunk(
    stores: &StoreSet,
    keys: &LogKeys,
    at: ChunkAt,
    layout: Layout,
    hashes: &[String],
    notes: &mut Vec<String>,
) -> Result<Vec<u8>> {
    let hashes: Vec<[u8; 32]> = hashes
        .iter()
        .map(|h| {
            let bytes = hex::decode(h).ok().and_then(|b| b.try_into().ok());
            bytes.ok_or_else(|| QsfsError::MetaLog(format!("{}: bad piece hash", at.what())))
        })
        .collect::<Result<_>>()?;
    let key = keys.snapshot_piece_key(at.epoch, at.seq, at.chunk);
    let mut pieces: Vec<Option<Vec<u8>>> = vec![None; layout.pieces()];
    let mut chunk_len = 0;
    let first_note = notes.len();
    for (id, uri, served) in stores.read_named_everywhere(&key).await {
        let blob = match served {
            Ok(Some(blob)) => blob,
            Ok(None) => {
                notes.push(format!(
                    "store {id} ({uri}): lacks its piece of {}",
                    at.what()
                ));
                continue;
            }
            Err(e) => {
                notes.push(format!(
                    "store {id} ({uri}): {}: unreadable: {e}",
                    at.what()
                ));
                continue;
            }
        };
        match open_piece(at, layout, &hashes, &blob) {
            Ok((piece, len, payload)) => {
                chunk_len = len;
                pieces[piece].get_or_insert_with(|| payload.to_vec());
            }
            Err(e) => notes.push(format!("store {id} ({uri}): {e}")),
        }
    }
    // A chunk that cannot be rebuilt fails the restore: say which stores let it down.
    decode_chunk(at, layout, chunk_len, pieces).map_err(|e| match e {
        QsfsError::MetaLog(msg) if notes.len() > first_note => {
            QsfsError::MetaLog(format!("{msg} ({})", notes[first_note..].join("; ")))
        }
        e => e,
    })
}

/// Chunk `at` of a format-1 snapshot, from the first store that serves it under its header (the whole image is
/// authenticated once reassembled).
async fn read_v1_chunk(stores: &StoreSet, keys: &LogKeys, at: ChunkAt) -> Result<Vec<u8>> {
    let key = keys.snapshot_chunk_key(at.epoch, at.seq, at.chunk);
    let mut tried = Vec::new();
    for slot in stores.named_slots().iter().filter(|s| s.is_up()) {
        match stores.read_named(slot, &key).await {
            Ok(Some(blob)) => match v1_chunk(at, &blob) {
                Ok(piece) => return Ok(piece.to_vec()),
                Err(e) => tried.push(format!("store {}: {e}", slot.id)),
            },
            Ok(None) => tried.push(format!("store {}: missing", slot.id)),
            Err(e) => tried.push(format!("store {}: {e}", slot.id)),
        }
    }
    Err(QsfsError::MetaLog(format!(
        "{}: no store serves it ({})",
        at.what(),
        tried.join("; ")
    )))
}

/// The bytes a format-1 chunk carries, checking its header names chunk `at`.
fn v1_chunk(at: ChunkAt, bytes: &[u8]) -> Result<&[u8]> {
    if bytes.len() < V1_HEADER || &bytes[..8] != V1_MAGIC {
        return Err(QsfsError::MetaLog(format!(
            "{}: not a qsfs snapshot chunk",
            at.what()
        )));
    }
    let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    let half = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    if (word(8), word(16), half(24), half(28)) != (at.epoch, at.seq, at.chunk, at.chunks) {
        return Err(QsfsError::MetaLog(format!(
            "{}: the store served another chunk",
            at.what()
        )));
    }
    Ok(&bytes[V1_HEADER..])
}

/// Deletes every object of a superseded snapshot from every log store that answers (either format).
pub(super) async fn delete(
    stores: &StoreSet,
    keys: &LogKeys,
    (epoch, seq): (u64, u64),
    manifest: &SnapshotManifest,
) {
    for chunk in 0..manifest.chunks {
        let key = match manifest.format {
            1 => keys.snapshot_chunk_key(epoch, seq, chunk),
            _ => keys.snapshot_piece_key(epoch, seq, chunk),
        };
        stores.delete_named(&key).await;
    }
}

#[cfg(test)]
mod tests;
