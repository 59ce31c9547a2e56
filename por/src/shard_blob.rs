//! The on-store layout of one shard, identical on every kind of store, and the byte-range arithmetic audits use.
//!
//! ```text
//! offset 0   magic "QSFSSHRD"                      8 bytes
//!        8   format version (u16 LE) = 1           2
//!       10   reserved (u16, must be 0)             2
//!       12   leaf size (u32 LE) = LEAF_SIZE        4
//!       16   data length (u64 LE)                  8
//!       24   leaf count (u64 LE)                   8
//!       32   Merkle root                          32
//!       64   shard data                            data length bytes
//!            Merkle nodes, level order            32 bytes each
//! ```
//!
//! The node section holds every level of the [`ShardTree`]: all leaf hashes first, then each parent level, ending
//! with the root. A promoted odd node appears again at the next level, so level `l` always has
//! `ceil(n / 2^l)` nodes and the offset of any node follows from the data length alone. That is what lets an audit
//! fetch one leaf and its sibling path with a handful of range reads, knowing only the shard's length and root
//! (both in metadata) — see [`ShardLayout`] and [`ShardBlob::verify_leaf_from_parts`].
//!
//! Opening a blob trusts nothing in it: the header must match what the caller expects, the root is recomputed from
//! the data and compared with the caller's root (never the header's), and the stored node section must equal the
//! recomputed tree, so a flipped byte *anywhere* in the blob is an error. A blob whose data is intact but whose
//! node section is damaged would still serve reads, but it would fail audits; refusing it on read as well means the
//! read path reports it and repair rewrites it, instead of audits finding it later.

use std::ops::Range;

use crate::error::{PorError, Result};
use crate::merkle::{
    Hash, LEAF_SIZE, ShardTree, leaf_count_for, leaf_hash, level_sizes, root_from_path,
};

/// First eight bytes of every shard blob.
pub const SHARD_BLOB_MAGIC: [u8; 8] = *b"QSFSSHRD";
/// The blob format this build writes and reads.
pub const SHARD_BLOB_VERSION: u16 = 1;
/// Bytes of the fixed header in front of the data.
pub const HEADER_LEN: u64 = 64;
/// Bytes per stored Merkle node.
pub const NODE_LEN: u64 = 32;

/// The decoded fixed header of a shard blob. Informational: [`ShardBlob::open`] checks it against the caller's
/// expectations; nothing here is trusted on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    pub version: u16,
    pub leaf_size: u32,
    pub data_len: u64,
    pub leaf_count: u64,
    pub root: Hash,
}

impl ShardHeader {
    /// Parses the header of `blob`. Checks only magic, version and the reserved field.
    pub fn parse(blob: &[u8]) -> Result<Self> {
        let needed = HEADER_LEN as usize;
        if blob.len() < needed {
            return Err(PorError::BlobTooShort {
                len: blob.len(),
                needed,
            });
        }
        if blob[0..8] != SHARD_BLOB_MAGIC {
            return Err(PorError::BadMagic);
        }
        let version = u16::from_le_bytes([blob[8], blob[9]]);
        if version != SHARD_BLOB_VERSION {
            return Err(PorError::UnsupportedVersion {
                found: version,
                supported: SHARD_BLOB_VERSION,
            });
        }
        let reserved = u16::from_le_bytes([blob[10], blob[11]]);
        if reserved != 0 {
            return Err(PorError::HeaderMismatch {
                field: "reserved",
                found: reserved.into(),
                expected: 0,
            });
        }
        let word = |range: Range<usize>| {
            let mut bytes = [0u8; 8];
            bytes[..range.len()].copy_from_slice(&blob[range]);
            u64::from_le_bytes(bytes)
        };
        let mut root = [0u8; 32];
        root.copy_from_slice(&blob[32..64]);
        Ok(ShardHeader {
            version,
            leaf_size: word(12..16) as u32,
            data_len: word(16..24),
            leaf_count: word(24..32),
            root,
        })
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&SHARD_BLOB_MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.leaf_size.to_le_bytes());
        out.extend_from_slice(&self.data_len.to_le_bytes());
        out.extend_from_slice(&self.leaf_count.to_le_bytes());
        out.extend_from_slice(&self.root);
    }
}

/// Where everything sits inside the blob of a shard with `data_len` data bytes. All ranges are byte offsets into
/// the blob, ready for a store's range read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardLayout {
    data_len: u64,
    level_sizes: Vec<u64>,
    /// Index (in nodes, from the start of the node section) of the first node of each level.
    level_starts: Vec<u64>,
    blob_len: u64,
}

impl ShardLayout {
    pub fn new(data_len: u64) -> Result<Self> {
        let level_sizes = level_sizes(leaf_count_for(data_len));
        let mut level_starts = Vec::with_capacity(level_sizes.len());
        let mut node_count = 0u64;
        for size in &level_sizes {
            level_starts.push(node_count);
            node_count += size;
        }
        // The node count is below 2 * data_len / LEAF_SIZE + 64, so only the byte total can overflow.
        let blob_len = node_count
            .checked_mul(NODE_LEN)
            .and_then(|nodes| nodes.checked_add(HEADER_LEN))
            .and_then(|fixed| fixed.checked_add(data_len))
            .filter(|&len| usize::try_from(len).is_ok())
            .ok_or(PorError::TooLarge { data_len })?;
        Ok(ShardLayout {
            data_len,
            level_sizes,
            level_starts,
            blob_len,
        })
    }

    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    pub fn leaf_count(&self) -> u64 {
        self.level_sizes[0]
    }

    pub fn node_count(&self) -> u64 {
        self.level_sizes.iter().sum()
    }

    /// Total blob size in bytes.
    pub fn blob_len(&self) -> u64 {
        self.blob_len
    }

    pub fn header_range() -> Range<u64> {
        0..HEADER_LEN
    }

    pub fn data_range(&self) -> Range<u64> {
        HEADER_LEN..HEADER_LEN + self.data_len
    }

    pub fn nodes_range(&self) -> Range<u64> {
        HEADER_LEN + self.data_len..self.blob_len
    }

    /// The bytes of leaf `index` (the last leaf may be short; the empty shard's one leaf is an empty range).
    pub fn leaf_range(&self, index: u64) -> Result<Range<u64>> {
        self.check_leaf(index)?;
        let start = HEADER_LEN + index * LEAF_SIZE as u64;
        let end = (start + LEAF_SIZE as u64).min(HEADER_LEN + self.data_len);
        Ok(start..end)
    }

    /// The stored node at `position` of `level` (level 0 = leaf hashes).
    pub fn node_range(&self, level: usize, position: u64) -> Option<Range<u64>> {
        let size = *self.level_sizes.get(level)?;
        if position >= size {
            return None;
        }
        let start = self.nodes_range().start + (self.level_starts[level] + position) * NODE_LEN;
        Some(start..start + NODE_LEN)
    }

    /// The stored sibling nodes on the path from leaf `index` to the root, bottom first, in the order
    /// [`ShardBlob::verify_leaf_from_parts`] expects them. Levels where the path node is promoted have no entry.
    pub fn sibling_node_ranges(&self, index: u64) -> Result<Vec<Range<u64>>> {
        self.check_leaf(index)?;
        let mut ranges = Vec::with_capacity(self.level_sizes.len());
        let mut position = index;
        for level in 0..self.level_sizes.len() - 1 {
            if let Some(range) = self.node_range(level, position ^ 1) {
                ranges.push(range);
            }
            position /= 2;
        }
        Ok(ranges)
    }

    fn check_leaf(&self, index: u64) -> Result<()> {
        let leaf_count = self.leaf_count();
        if index >= leaf_count {
            return Err(PorError::LeafOutOfRange { index, leaf_count });
        }
        Ok(())
    }
}

/// Encoding, opening and partial verification of shard blobs.
pub struct ShardBlob;

impl ShardBlob {
    /// Lays out `data` as a shard blob. Returns the blob and the shard's Merkle root.
    ///
    /// Panics only if `data` is so large that the blob length overflows `usize`, which an in-memory slice cannot
    /// reach on a 64-bit platform.
    pub fn encode(data: &[u8]) -> (Vec<u8>, Hash) {
        let layout =
            ShardLayout::new(data.len() as u64).expect("an in-memory shard always has a layout");
        let tree = ShardTree::build(data);
        let root = tree.root();
        let mut blob = Vec::with_capacity(layout.blob_len() as usize);
        ShardHeader {
            version: SHARD_BLOB_VERSION,
            leaf_size: LEAF_SIZE as u32,
            data_len: layout.data_len(),
            leaf_count: layout.leaf_count(),
            root,
        }
        .write(&mut blob);
        blob.extend_from_slice(data);
        for node in tree.levels().iter().flatten() {
            blob.extend_from_slice(node);
        }
        debug_assert_eq!(blob.len() as u64, layout.blob_len());
        (blob, root)
    }

    /// Checks a whole fetched blob against the root and data length recorded in metadata and returns its data.
    /// Fails on any difference: foreign or unknown-version blob, wrong lengths, data not hashing to
    /// `expected_root`, or a stored node that does not match the data.
    pub fn open<'a>(
        blob: &'a [u8],
        expected_root: &Hash,
        expected_data_len: u64,
    ) -> Result<&'a [u8]> {
        let data = Self::data_unhashed(blob, expected_root, expected_data_len)?;
        let layout = ShardLayout::new(expected_data_len)?;
        let tree = ShardTree::build(data);
        if &tree.root() != expected_root {
            return Err(PorError::RootMismatch);
        }
        let nodes = &blob[layout.nodes_range().start as usize..];
        let computed = tree.levels().iter().flatten();
        if !nodes
            .chunks_exact(NODE_LEN as usize)
            .eq(computed.map(|node| &node[..]))
        {
            return Err(PorError::NodeMismatch);
        }
        Ok(data)
    }

    /// The blob's data after the cheap checks of [`Self::open`] only (header, lengths, the root the header
    /// claims), without hashing: for a reader whose own check of the bytes (an AEAD tag over the whole segment)
    /// follows, and which falls back to `open` when that check fails.
    pub fn data_unhashed<'a>(
        blob: &'a [u8],
        expected_root: &Hash,
        expected_data_len: u64,
    ) -> Result<&'a [u8]> {
        let header = ShardHeader::parse(blob)?;
        let layout = ShardLayout::new(expected_data_len)?;
        let mismatch = |field, found: u64, expected: u64| {
            if found == expected {
                Ok(())
            } else {
                Err(PorError::HeaderMismatch {
                    field,
                    found,
                    expected,
                })
            }
        };
        mismatch("leaf size", header.leaf_size.into(), LEAF_SIZE as u64)?;
        mismatch("data length", header.data_len, expected_data_len)?;
        mismatch("leaf count", header.leaf_count, layout.leaf_count())?;
        if blob.len() as u64 != layout.blob_len() {
            return Err(PorError::BlobLength {
                found: blob.len() as u64,
                expected: layout.blob_len(),
            });
        }
        // Cheap early exit for a blob of some other shard; the decisive check is the recomputed root below.
        if &header.root != expected_root {
            return Err(PorError::HeaderRoot {
                found: hex::encode(header.root),
                expected: hex::encode(expected_root),
            });
        }
        let data_range = layout.data_range();
        Ok(&blob[data_range.start as usize..data_range.end as usize])
    }

    /// Audit check from range reads: `leaf_bytes` are the bytes at `layout.leaf_range(index)` and `sibling_nodes`
    /// the bytes at each of `layout.sibling_node_ranges(index)`, in that order. Succeeds only if they prove leaf
    /// `index` of a shard of `data_len` bytes with root `expected_root`.
    pub fn verify_leaf_from_parts<S: AsRef<[u8]>>(
        expected_root: &Hash,
        data_len: u64,
        index: u64,
        leaf_bytes: &[u8],
        sibling_nodes: &[S],
    ) -> Result<()> {
        let layout = ShardLayout::new(data_len)?;
        let leaf_range = layout.leaf_range(index)?;
        let expected_leaf_len = (leaf_range.end - leaf_range.start) as usize;
        if leaf_bytes.len() != expected_leaf_len {
            return Err(PorError::PartLength {
                part: "leaf",
                found: leaf_bytes.len(),
                expected: expected_leaf_len,
            });
        }
        let mut siblings = Vec::with_capacity(sibling_nodes.len());
        for node in sibling_nodes {
            let bytes = node.as_ref();
            let hash: Hash = bytes.try_into().map_err(|_| PorError::PartLength {
                part: "sibling node",
                found: bytes.len(),
                expected: NODE_LEN as usize,
            })?;
            siblings.push(hash);
        }
        match root_from_path(layout.leaf_count(), index, leaf_hash(leaf_bytes), &siblings) {
            Some(root) if &root == expected_root => Ok(()),
            _ => Err(PorError::RootMismatch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Fibonacci hashing of the offset: no period, so no two leaves are equal (tests rely on distinct leaves).
    fn data_of(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
            .collect()
    }

    fn slice(blob: &[u8], range: Range<u64>) -> &[u8] {
        &blob[range.start as usize..range.end as usize]
    }

    /// An audit the way the scheduler will run it: range reads driven only by data length and root.
    fn audit(blob: &[u8], root: &Hash, data_len: u64, index: u64) -> Result<()> {
        let layout = ShardLayout::new(data_len)?;
        let leaf = slice(blob, layout.leaf_range(index)?);
        let nodes: Vec<&[u8]> = layout
            .sibling_node_ranges(index)?
            .into_iter()
            .map(|r| slice(blob, r))
            .collect();
        ShardBlob::verify_leaf_from_parts(root, data_len, index, leaf, &nodes)
    }

    #[test]
    fn round_trip_and_layout() {
        for len in [
            0,
            1,
            2,
            LEAF_SIZE - 1,
            LEAF_SIZE,
            LEAF_SIZE + 1,
            5 * LEAF_SIZE + 3,
            64 * LEAF_SIZE,
        ] {
            let data = data_of(len);
            let (blob, root) = ShardBlob::encode(&data);
            assert_eq!(root, ShardTree::build(&data).root());
            let layout = ShardLayout::new(len as u64).unwrap();
            assert_eq!(blob.len() as u64, layout.blob_len());
            assert_eq!(
                ShardBlob::open(&blob, &root, len as u64).unwrap(),
                &data[..]
            );
            assert_eq!(slice(&blob, layout.data_range()), &data[..]);
            let header = ShardHeader::parse(&blob).unwrap();
            assert_eq!(
                (header.data_len, header.leaf_count, header.root),
                (len as u64, layout.leaf_count(), root)
            );
            // The last stored node is the root.
            let last = layout.node_range(layout.level_sizes.len() - 1, 0).unwrap();
            assert_eq!(slice(&blob, last), &root[..]);
            for index in 0..layout.leaf_count() {
                audit(&blob, &root, len as u64, index).unwrap();
            }
        }
    }

    #[test]
    fn header_is_64_bytes_with_magic_and_version() {
        let (blob, _) = ShardBlob::encode(b"hello");
        assert_eq!(&blob[..8], b"QSFSSHRD");
        assert_eq!(u16::from_le_bytes([blob[8], blob[9]]), 1);
        assert_eq!(
            &blob[HEADER_LEN as usize..HEADER_LEN as usize + 5],
            b"hello"
        );
    }

    #[test]
    fn truncated_or_extended_blob_fails() {
        let data = data_of(3 * LEAF_SIZE + 10);
        let (blob, root) = ShardBlob::encode(&data);
        for cut in [0, 10, 63, 64, 100, blob.len() - 32, blob.len() - 1] {
            assert!(
                ShardBlob::open(&blob[..cut], &root, data.len() as u64).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = blob.clone();
        longer.push(0);
        assert!(matches!(
            ShardBlob::open(&longer, &root, data.len() as u64),
            Err(PorError::BlobLength { .. })
        ));
    }

    #[test]
    fn wrong_version_magic_or_reserved_fails() {
        let (blob, root) = ShardBlob::encode(&data_of(100));
        let mut other = blob.clone();
        other[8] = 2;
        assert_eq!(
            ShardBlob::open(&other, &root, 100),
            Err(PorError::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        );
        let mut other = blob.clone();
        other[0] = b'X';
        assert_eq!(ShardBlob::open(&other, &root, 100), Err(PorError::BadMagic));
        let mut other = blob.clone();
        other[11] = 1;
        assert!(matches!(
            ShardBlob::open(&other, &root, 100),
            Err(PorError::HeaderMismatch { .. })
        ));
    }

    #[test]
    fn wrong_expectations_fail() {
        let data = data_of(5000);
        let (blob, root) = ShardBlob::encode(&data);
        assert!(ShardBlob::open(&blob, &root, 4999).is_err());
        assert!(ShardBlob::open(&blob, &[0; 32], 5000).is_err());
        // A consistent blob of different data (header root rewritten to the expected one) still fails.
        let (mut forged, _) =
            ShardBlob::encode(&data_of(5000).iter().map(|b| b ^ 1).collect::<Vec<_>>());
        forged[32..64].copy_from_slice(&root);
        assert_eq!(
            ShardBlob::open(&forged, &root, 5000),
            Err(PorError::RootMismatch)
        );
    }

    #[test]
    fn audit_rejects_bad_parts() {
        let data = data_of(7 * LEAF_SIZE + 1);
        let (blob, root) = ShardBlob::encode(&data);
        let len = data.len() as u64;
        let layout = ShardLayout::new(len).unwrap();
        let leaf = slice(&blob, layout.leaf_range(2).unwrap()).to_vec();
        let nodes: Vec<Vec<u8>> = layout
            .sibling_node_ranges(2)
            .unwrap()
            .into_iter()
            .map(|r| slice(&blob, r).to_vec())
            .collect();
        ShardBlob::verify_leaf_from_parts(&root, len, 2, &leaf, &nodes).unwrap();
        assert!(ShardBlob::verify_leaf_from_parts(&root, len, 3, &leaf, &nodes).is_err());
        assert!(ShardBlob::verify_leaf_from_parts(&root, len, 99, &leaf, &nodes).is_err());
        assert!(ShardBlob::verify_leaf_from_parts(&root, len, 2, &leaf[1..], &nodes).is_err());
        assert!(ShardBlob::verify_leaf_from_parts(&root, len, 2, &leaf, &nodes[1..]).is_err());
        let mut short_node = nodes.clone();
        short_node[0].pop();
        assert!(ShardBlob::verify_leaf_from_parts(&root, len, 2, &leaf, &short_node).is_err());
        let mut bad = leaf.clone();
        bad[0] ^= 1;
        assert_eq!(
            ShardBlob::verify_leaf_from_parts(&root, len, 2, &bad, &nodes),
            Err(PorError::RootMismatch)
        );
        // The last leaf is short (1 byte) and 8 leaves make a full tree: 3 siblings.
        assert_eq!(
            layout.leaf_range(7).unwrap().end - layout.leaf_range(7).unwrap().start,
            1
        );
        assert_eq!(layout.sibling_node_ranges(7).unwrap().len(), 3);
    }

    #[test]
    fn promoted_node_path_is_shorter() {
        // 5 leaves: leaf 4 is promoted twice, so its path has a single sibling (the node over leaves 0..4).
        let layout = ShardLayout::new(5 * LEAF_SIZE as u64).unwrap();
        assert_eq!(layout.sibling_node_ranges(4).unwrap().len(), 1);
        assert_eq!(layout.node_count(), 5 + 3 + 2 + 1);
        let data = data_of(5 * LEAF_SIZE);
        let (blob, root) = ShardBlob::encode(&data);
        audit(&blob, &root, data.len() as u64, 4).unwrap();
    }

    #[test]
    fn huge_lengths_are_refused_not_overflowed() {
        assert!(matches!(
            ShardLayout::new(u64::MAX),
            Err(PorError::TooLarge { .. })
        ));
        let (blob, root) = ShardBlob::encode(b"x");
        assert!(ShardBlob::open(&blob, &root, u64::MAX - 10).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn any_flipped_byte_fails_open(len in 0usize..(6 * LEAF_SIZE), at in any::<usize>(), flip in 1..=255u8) {
            let data = data_of(len);
            let (mut blob, root) = ShardBlob::encode(&data);
            let at = at % blob.len();
            blob[at] ^= flip;
            prop_assert!(ShardBlob::open(&blob, &root, len as u64).is_err());
        }

        #[test]
        fn flipped_data_byte_fails_open_and_its_audit(len in 1usize..(6 * LEAF_SIZE), at in any::<usize>(), flip in 1..=255u8) {
            let data = data_of(len);
            let (mut blob, root) = ShardBlob::encode(&data);
            let at = at % len;
            blob[HEADER_LEN as usize + at] ^= flip;
            prop_assert_eq!(ShardBlob::open(&blob, &root, len as u64), Err(PorError::RootMismatch));
            let leaf = (at / LEAF_SIZE) as u64;
            prop_assert!(audit(&blob, &root, len as u64, leaf).is_err());
        }
    }
}
