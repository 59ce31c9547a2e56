//! Property tests for the decoders a store can reach in this crate: whatever bytes a store serves as a shard blob
//! (arbitrary, or a valid blob mutated), and whatever parts it serves to a leaf audit, the decoders answer with an
//! error — never a panic, never an allocation sized by a field of the input — unless the bytes are the genuine
//! shard. `PROPTEST_CASES` sets the count (CI: a few hundred; benches/scripts/fuzz-decoders.sh: a million).

use proptest::prelude::*;
use qsfs_por::{HEADER_LEN, ShardBlob, ShardHeader, ShardLayout};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn data_of(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// One edit a hostile store might make to a blob.
#[derive(Clone, Debug)]
enum Edit {
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Remove(prop::sample::Index),
    Truncate(prop::sample::Index),
    Extend(Vec<u8>),
    /// Overwrite a header word (leaf size, data length, leaf count) with an arbitrary, often huge, value.
    HeaderWord(u8, u64),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<prop::sample::Index>(), 1..=255u8).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<prop::sample::Index>().prop_map(Edit::Remove),
        any::<prop::sample::Index>().prop_map(Edit::Truncate),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(Edit::Extend),
        (0u8..3, any::<u64>()).prop_map(|(w, v)| Edit::HeaderWord(w, v)),
    ]
}

fn apply(blob: &mut Vec<u8>, e: &Edit) {
    match e {
        Edit::Flip(i, b) if !blob.is_empty() => {
            let at = i.index(blob.len());
            blob[at] ^= b;
        }
        Edit::Insert(i, b) => {
            let at = i.index(blob.len() + 1);
            blob.insert(at, *b)
        }
        Edit::Remove(i) if !blob.is_empty() => {
            blob.remove(i.index(blob.len()));
        }
        Edit::Truncate(i) => blob.truncate(i.index(blob.len() + 1)),
        Edit::Extend(more) => blob.extend_from_slice(more),
        Edit::HeaderWord(w, v) if blob.len() >= HEADER_LEN as usize => {
            let (at, width) = [(12usize, 4usize), (16, 8), (24, 8)][*w as usize];
            blob[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Arbitrary bytes, checked against arbitrary expectations (including lengths near u64::MAX).
    #[test]
    fn arbitrary_bytes_are_refused(
        blob in proptest::collection::vec(any::<u8>(), 0..512),
        root in any::<[u8; 32]>(),
        data_len in prop_oneof![0u64..4096, any::<u64>()],
    ) {
        let _ = ShardHeader::parse(&blob);
        prop_assert!(ShardBlob::open(&blob, &root, data_len).is_err());
    }

    /// A genuine blob after one to four hostile edits: refused unless the edits cancelled out.
    #[test]
    fn mutated_blobs_are_refused(
        len in 0usize..20_000,
        seed in any::<u8>(),
        edits in proptest::collection::vec(edit(), 1..5),
    ) {
        let data = data_of(len, seed);
        let (original, root) = ShardBlob::encode(&data);
        let mut blob = original.clone();
        for e in &edits {
            apply(&mut blob, e);
        }
        let opened = ShardBlob::open(&blob, &root, len as u64);
        if blob == original {
            prop_assert_eq!(opened.unwrap(), &data[..]);
        } else {
            prop_assert!(opened.is_err(), "edits {:?} accepted", edits);
        }
    }

    /// Another shard's genuine blob is never taken for this one.
    #[test]
    fn swapped_blobs_are_refused(len in 1usize..10_000, a in any::<u8>(), shift in 1u8..=255) {
        // Another seed, always: no rejected cases, which proptest caps (a million-case run hit the cap).
        let b = a.wrapping_add(shift);
        let (_, root) = ShardBlob::encode(&data_of(len, a));
        let (other, _) = ShardBlob::encode(&data_of(len, b));
        prop_assert!(ShardBlob::open(&other, &root, len as u64).is_err());
    }

    /// Leaf audits from arbitrary parts: no panic for any index or length; only the genuine parts pass.
    #[test]
    fn leaf_audits_refuse_arbitrary_parts(
        len in 1usize..20_000,
        index in prop_oneof![0u64..8, any::<u64>()],
        data_len in prop_oneof![Just(None), any::<u64>().prop_map(Some)],
        leaf in proptest::collection::vec(any::<u8>(), 0..2048),
        siblings in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..8),
    ) {
        let (_, root) = ShardBlob::encode(&data_of(len, 1));
        let data_len = data_len.unwrap_or(len as u64);
        if let Ok(layout) = ShardLayout::new(data_len) {
            let _ = (layout.blob_len(), layout.leaf_range(index), layout.sibling_node_ranges(index));
        }
        prop_assert!(ShardBlob::verify_leaf_from_parts(&root, data_len, index, &leaf, &siblings).is_err());
    }
}
