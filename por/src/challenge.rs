//! Audit challenges: which (shard, leaf) pairs to check, derived from a fresh random nonce, and the range reads
//! that fetch one leaf with its proof and check it against nothing but the shard's root.
//!
//! Drawing. A [`Nonce`] (32 random bytes) seeds one deterministic stream per store: BLAKE3 in key-derivation mode
//! over the nonce and the store's id, read as an extendable output. From it [`ChallengeStream::shards`] picks
//! distinct positions in the store's list of shards (Robert Floyd's algorithm, so every subset of the requested
//! size is equally likely) and [`ChallengeStream::leaf`] picks a leaf in each. Nothing depends on the `rand`
//! crate's generators, so a recorded nonce reproduces its challenge exactly in any later build, and a store cannot
//! predict the next challenge because the nonce is fresh from the OS random source each time.
//!
//! Sampling shards without replacement: the bound `(1 − δ)^c` of [`crate::samples_needed`] holds for sampling
//! with replacement and sampling without replacement only misses less, so the guarantee stays conservative.
//!
//! Proving a leaf. A [`LeafProbe`] lists the byte ranges an auditor reads from the shard blob — the 64-byte
//! header, the leaf, its sibling nodes and the stored root (the last 32 bytes) — coalesced where they lie close
//! together, because one round trip costs more than a few kilobytes read for nothing. [`LeafProbe::verify`]
//! checks the header against the expected root and length, the stored root node, and the leaf's Merkle path. The
//! stored root sits at the very end of the blob, so any truncation fails the probe whichever leaf was drawn.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;

use crate::error::{PorError, Result};
use crate::merkle::{Hash, LEAF_SIZE};
use crate::shard_blob::{NODE_LEN, ShardBlob, ShardHeader, ShardLayout};

/// Bytes in an audit nonce.
pub const NONCE_LEN: usize = 32;

/// BLAKE3 key-derivation context of challenge streams. Part of the audit format: changing it changes every
/// challenge a recorded nonce stands for.
const CHALLENGE_CONTEXT: &str = "qsfs 2026 audit challenge v1";

/// Two ranges closer than this are read as one: a round trip to a store costs more than this many extra bytes.
const COALESCE_GAP: u64 = 2048;

/// The random value a challenge is drawn from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Nonce(pub [u8; NONCE_LEN]);

impl Nonce {
    /// A fresh nonce from the OS-seeded CSPRNG.
    pub fn random() -> Nonce {
        let mut bytes = [0u8; NONCE_LEN];
        rand::fill(&mut bytes);
        Nonce(bytes)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Result<Nonce> {
        let mut bytes = [0u8; NONCE_LEN];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| PorError::BadNonce {
            found: text.chars().take(80).collect(),
        })?;
        Ok(Nonce(bytes))
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce({})", self.to_hex())
    }
}

/// The deterministic choices of one challenge for one store.
pub struct ChallengeStream {
    reader: blake3::OutputReader,
}

impl ChallengeStream {
    /// The stream of store `stream` (its id) under `nonce`.
    pub fn new(nonce: &Nonce, stream: u64) -> ChallengeStream {
        let mut hasher = blake3::Hasher::new_derive_key(CHALLENGE_CONTEXT);
        hasher.update(&nonce.0);
        hasher.update(&stream.to_le_bytes());
        ChallengeStream {
            reader: hasher.finalize_xof(),
        }
    }

    fn next_u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        self.reader.fill(&mut bytes);
        u64::from_le_bytes(bytes)
    }

    /// A uniform value in `0..n`; `n` must be positive. Rejection sampling, so there is no modulo bias: values
    /// below `2^64 mod n` are drawn again, which leaves a range whose length is a multiple of `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "cannot draw from an empty range");
        let threshold = n.wrapping_neg() % n;
        loop {
            let x = self.next_u64();
            if x >= threshold {
                return x % n;
            }
        }
    }

    /// `count` distinct positions in `0..population`, ascending; every position when `count >= population`.
    pub fn shards(&mut self, population: u64, count: u64) -> Vec<u64> {
        if count >= population {
            return (0..population).collect();
        }
        // Floyd: for j in population-count .. population, draw t in 0..=j; take t, or j if t is taken already.
        let mut chosen = BTreeSet::new();
        for j in population - count..population {
            let t = self.below(j + 1);
            if !chosen.insert(t) {
                chosen.insert(j);
            }
        }
        chosen.into_iter().collect()
    }

    /// A uniform leaf index of a shard with `leaf_count` leaves (at least 1).
    pub fn leaf(&mut self, leaf_count: u64) -> u64 {
        self.below(leaf_count.max(1))
    }
}

/// One element of a challenge: the shard at `shard` in the store's population list and one of its leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub shard: u64,
    pub leaf: u64,
}

/// A drawn challenge for one store: the nonce it came from and the (shard, leaf) pairs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub nonce: Nonce,
    pub stream: u64,
    pub samples: Vec<Sample>,
}

impl Challenge {
    /// Draws `count` distinct shards out of a population whose leaf counts are `leaf_counts`, one leaf each.
    pub fn draw(nonce: &Nonce, stream: u64, leaf_counts: &[u64], count: usize) -> Challenge {
        let mut rng = ChallengeStream::new(nonce, stream);
        let positions = rng.shards(leaf_counts.len() as u64, count as u64);
        let samples = positions
            .into_iter()
            .map(|shard| Sample {
                shard,
                leaf: rng.leaf(leaf_counts[shard as usize]),
            })
            .collect();
        Challenge {
            nonce: *nonce,
            stream,
            samples,
        }
    }
}

/// The range reads that prove one leaf of one shard, and their verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafProbe {
    data_len: u64,
    index: u64,
    /// What to read from the blob, ascending and disjoint.
    reads: Vec<Range<u64>>,
    leaf: Range<u64>,
    siblings: Vec<Range<u64>>,
    root_node: Range<u64>,
}

impl LeafProbe {
    /// The probe of leaf `index` of a shard with `data_len` data bytes.
    pub fn new(data_len: u64, index: u64) -> Result<LeafProbe> {
        let layout = ShardLayout::new(data_len)?;
        let leaf = layout.leaf_range(index)?;
        let siblings = layout.sibling_node_ranges(index)?;
        let root_node = layout.blob_len() - NODE_LEN..layout.blob_len();
        let mut wanted: Vec<Range<u64>> = vec![ShardLayout::header_range(), root_node.clone()];
        if !leaf.is_empty() {
            wanted.push(leaf.clone());
        }
        wanted.extend(siblings.iter().cloned());
        wanted.sort_by_key(|r| r.start);
        let mut reads: Vec<Range<u64>> = Vec::with_capacity(wanted.len());
        for range in wanted {
            match reads.last_mut() {
                Some(last) if range.start <= last.end.saturating_add(COALESCE_GAP) => {
                    last.end = last.end.max(range.end);
                }
                _ => reads.push(range),
            }
        }
        Ok(LeafProbe {
            data_len,
            index,
            reads,
            leaf,
            siblings,
            root_node,
        })
    }

    pub fn index(&self) -> u64 {
        self.index
    }

    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// The byte ranges to fetch, in order; hand their contents to [`LeafProbe::verify`] in the same order.
    pub fn reads(&self) -> &[Range<u64>] {
        &self.reads
    }

    /// Bytes the reads fetch in all.
    pub fn read_bytes(&self) -> u64 {
        self.reads.iter().map(|r| r.end - r.start).sum()
    }

    /// Checks the fetched ranges prove leaf `index` of a shard with root `expected_root`. Fails on a short or long
    /// read, a header that does not describe this shard, a stored root other than `expected_root`, or a leaf and
    /// path that do not hash to it.
    pub fn verify<B: AsRef<[u8]>>(&self, expected_root: &Hash, fetched: &[B]) -> Result<()> {
        if fetched.len() != self.reads.len() {
            return Err(PorError::PartLength {
                part: "probe reads",
                found: fetched.len(),
                expected: self.reads.len(),
            });
        }
        for (range, bytes) in self.reads.iter().zip(fetched) {
            let expected = (range.end - range.start) as usize;
            if bytes.as_ref().len() != expected {
                return Err(PorError::PartLength {
                    part: "range read",
                    found: bytes.as_ref().len(),
                    expected,
                });
            }
        }
        let part = |range: &Range<u64>| -> &[u8] {
            if range.is_empty() {
                return &[];
            }
            // Every wanted range lies inside exactly one coalesced read (construction guarantees it).
            let (read, bytes) = self
                .reads
                .iter()
                .zip(fetched)
                .find(|(read, _)| read.start <= range.start && range.end <= read.end)
                .expect("every probe range is covered by a read");
            let at = (range.start - read.start) as usize;
            &bytes.as_ref()[at..at + (range.end - range.start) as usize]
        };

        let header = ShardHeader::parse(part(&ShardLayout::header_range()))?;
        let layout = ShardLayout::new(self.data_len)?;
        for (field, found, expected) in [
            ("leaf size", u64::from(header.leaf_size), LEAF_SIZE as u64),
            ("data length", header.data_len, self.data_len),
            ("leaf count", header.leaf_count, layout.leaf_count()),
        ] {
            if found != expected {
                return Err(PorError::HeaderMismatch {
                    field,
                    found,
                    expected,
                });
            }
        }
        if &header.root != expected_root {
            return Err(PorError::HeaderRoot {
                found: hex::encode(header.root),
                expected: hex::encode(expected_root),
            });
        }
        if part(&self.root_node) != expected_root {
            return Err(PorError::NodeMismatch);
        }
        let siblings: Vec<&[u8]> = self.siblings.iter().map(part).collect();
        ShardBlob::verify_leaf_from_parts(
            expected_root,
            self.data_len,
            self.index,
            part(&self.leaf),
            &siblings,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::leaf_count_for;
    use crate::shard_blob::HEADER_LEN;

    fn data_of(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
            .collect()
    }

    fn fetch(blob: &[u8], probe: &LeafProbe) -> Vec<Vec<u8>> {
        probe
            .reads()
            .iter()
            .map(|r| {
                let end = (r.end as usize).min(blob.len());
                blob[(r.start as usize).min(end)..end].to_vec()
            })
            .collect()
    }

    #[test]
    fn same_nonce_same_challenge_other_nonce_other() {
        let counts = vec![256u64; 10_000];
        let nonce = Nonce([7; 32]);
        let a = Challenge::draw(&nonce, 3, &counts, 459);
        let b = Challenge::draw(&nonce, 3, &counts, 459);
        assert_eq!(a, b);
        assert_eq!(a.samples.len(), 459);
        let c = Challenge::draw(&nonce, 4, &counts, 459);
        assert_ne!(a.samples, c.samples, "streams differ per store");
        let d = Challenge::draw(&Nonce([8; 32]), 3, &counts, 459);
        assert_ne!(a.samples, d.samples, "nonces differ");
        let mut shards: Vec<u64> = a.samples.iter().map(|s| s.shard).collect();
        shards.dedup();
        assert_eq!(shards.len(), 459, "distinct and ascending");
        assert!(a.samples.iter().all(|s| s.shard < 10_000 && s.leaf < 256));
    }

    #[test]
    fn small_population_is_taken_whole() {
        let mut rng = ChallengeStream::new(&Nonce([1; 32]), 0);
        assert_eq!(rng.shards(5, 459), vec![0, 1, 2, 3, 4]);
        assert_eq!(rng.shards(0, 459), Vec::<u64>::new());
        assert_eq!(rng.shards(5, 5), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn draws_are_roughly_uniform() {
        // 20 000 draws of 10 out of 100: each position should be taken about 2 000 times.
        let mut hits = [0u32; 100];
        for seed in 0..2_000u32 {
            let mut bytes = [0u8; 32];
            bytes[..4].copy_from_slice(&seed.to_le_bytes());
            let mut rng = ChallengeStream::new(&Nonce(bytes), 9);
            for p in rng.shards(100, 10) {
                hits[p as usize] += 1;
            }
        }
        let (min, max) = (hits.iter().min().unwrap(), hits.iter().max().unwrap());
        assert!(*min > 150 && *max < 250, "min {min} max {max}");
        let mut rng = ChallengeStream::new(&Nonce([2; 32]), 0);
        let mut leaves = [0u32; 3];
        for _ in 0..30_000 {
            leaves[rng.leaf(3) as usize] += 1;
        }
        assert!(
            leaves.iter().all(|&n| (9_000..11_000).contains(&n)),
            "{leaves:?}"
        );
    }

    #[test]
    fn nonce_hex_round_trip() {
        let n = Nonce::random();
        assert_eq!(Nonce::from_hex(&n.to_hex()).unwrap(), n);
        assert!(Nonce::from_hex("abc").is_err());
    }

    #[test]
    fn every_leaf_probe_verifies_and_reads_little() {
        for len in [
            0usize,
            1,
            100,
            LEAF_SIZE,
            5 * LEAF_SIZE + 3,
            256 * LEAF_SIZE,
        ] {
            let data = data_of(len);
            let (blob, root) = ShardBlob::encode(&data);
            for index in 0..leaf_count_for(len as u64) {
                let probe = LeafProbe::new(len as u64, index).unwrap();
                probe.verify(&root, &fetch(&blob, &probe)).unwrap();
                assert!(probe.reads().windows(2).all(|w| w[0].end < w[1].start));
            }
        }
        // A 1 MiB shard: a handful of reads, a few KiB, never the whole blob.
        let probe = LeafProbe::new(256 * LEAF_SIZE as u64, 77).unwrap();
        assert!(probe.reads().len() <= 6, "{:?}", probe.reads());
        assert!(
            probe.read_bytes() < 4 * LEAF_SIZE as u64,
            "{}",
            probe.read_bytes()
        );
    }

    #[test]
    fn damage_anywhere_on_the_path_fails() {
        let len = 64 * LEAF_SIZE + 10;
        let data = data_of(len);
        let (blob, root) = ShardBlob::encode(&data);
        let probe = LeafProbe::new(len as u64, 13).unwrap();
        let good = fetch(&blob, &probe);
        for (r, read) in good.iter().enumerate() {
            for at in [0, read.len() / 2, read.len() - 1] {
                let mut bad = good.clone();
                bad[r][at] ^= 0x10;
                // A flipped byte in coalesced filler between wanted ranges is not evidence; only check bytes the
                // proof uses: header, leaf, siblings, root.
                let abs = probe.reads()[r].start + at as u64;
                let used = abs < HEADER_LEN
                    || probe.leaf.contains(&abs)
                    || probe.root_node.contains(&abs)
                    || probe.siblings.iter().any(|s| s.contains(&abs));
                assert_eq!(
                    probe.verify(&root, &bad).is_err(),
                    used,
                    "read {r} byte {at}"
                );
            }
        }
        // Truncated blob: the root node read comes back short.
        let half = &blob[..blob.len() / 2];
        assert!(probe.verify(&root, &fetch(half, &probe)).is_err());
        // Another shard's blob at the same place.
        let (other, _) = ShardBlob::encode(&data_of(len).iter().map(|b| b ^ 3).collect::<Vec<_>>());
        assert!(probe.verify(&root, &fetch(&other, &probe)).is_err());
        // Wrong number of reads.
        assert!(probe.verify(&root, &good[1..]).is_err());
    }
}
