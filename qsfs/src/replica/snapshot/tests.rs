//! Piece encoding, verification and decoding of metadata snapshots, and reading format-1 manifests and chunks.

use super::*;

const AT: ChunkAt = ChunkAt {
    epoch: 2,
    seq: 9,
    chunk: 1,
    chunks: 3,
};

fn chunk(len: usize) -> Vec<u8> {
    (0..len as u32).map(|i| (i * 31 + 7) as u8).collect()
}

fn hashes(objects: &[Vec<u8>]) -> Vec<[u8; 32]> {
    objects
        .iter()
        .map(|o| *blake3::hash(o).as_bytes())
        .collect()
}

/// Opens every object that verifies against hashes `h`; `pieces[i]` the payload of piece i.
fn open_all(layout: Layout, h: &[[u8; 32]], objects: &[Vec<u8>]) -> (usize, Vec<Option<Vec<u8>>>) {
    let mut pieces = vec![None; layout.pieces()];
    let mut chunk_len = 0;
    for o in objects {
        if let Ok((i, len, payload)) = open_piece(AT, layout, h, o) {
            chunk_len = len;
            pieces[i] = Some(payload.to_vec());
        }
    }
    (chunk_len, pieces)
}

#[test]
fn layout_codes_only_with_enough_parity() {
    assert_eq!(Layout::choose(4, 2, 6), Layout::Erasure { k: 4, m: 2 });
    assert_eq!(Layout::choose(4, 2, 9), Layout::Erasure { k: 4, m: 5 });
    assert_eq!(Layout::choose(4, 2, 5), Layout::Replicated);
    assert_eq!(Layout::choose(4, 2, 1), Layout::Replicated);
    assert_eq!(Layout::choose(1, 1, 2), Layout::Erasure { k: 1, m: 1 });
}

#[test]
fn pieces_decode_from_any_k_and_each_holds_a_kth() {
    let layout = Layout::Erasure { k: 4, m: 2 };
    for len in [1, 2, 7, 1000, 4097] {
        let data = chunk(len);
        let objects = encode_chunk(AT, layout, &data).unwrap();
        assert_eq!(objects.len(), 6);
        for o in &objects {
            assert_eq!(o.len(), PIECE_HEADER + layout.piece_len(len));
            assert!(o.len() <= PIECE_HEADER + len.div_ceil(4) + 1);
        }
        let (chunk_len, all) = open_all(layout, &hashes(&objects), &objects);
        assert_eq!(chunk_len, len);
        for lost_a in 0..6 {
            for lost_b in lost_a + 1..6 {
                let mut pieces = all.clone();
                pieces[lost_a] = None;
                pieces[lost_b] = None;
                assert_eq!(decode_chunk(AT, layout, len, pieces).unwrap(), data);
            }
        }
    }
}

#[test]
fn other_shapes_decode_with_m_pieces_lost() {
    for (k, m) in [(1u32, 1u32), (3, 5), (10, 2)] {
        let layout = Layout::Erasure { k, m };
        let data = chunk(10_001);
        let objects = encode_chunk(AT, layout, &data).unwrap();
        let (len, mut pieces) = open_all(layout, &hashes(&objects), &objects);
        // The data pieces first: decoding must then rebuild them from parity.
        for p in pieces.iter_mut().take(m as usize) {
            *p = None;
        }
        assert_eq!(
            decode_chunk(AT, layout, len, pieces).unwrap(),
            data,
            "{k}+{m}"
        );
    }
}

#[test]
fn a_flipped_piece_is_refused_and_the_others_still_decode() {
    let layout = Layout::Erasure { k: 4, m: 2 };
    let data = chunk(5000);
    let mut objects = encode_chunk(AT, layout, &data).unwrap();
    let h = hashes(&objects);
    for at in [3, 20, 33, 45, PIECE_HEADER + 10, objects[1].len() - 1] {
        let mut bad = objects[1].clone();
        bad[at] ^= 1;
        assert!(open_piece(AT, layout, &h, &bad).is_err(), "flip at {at}");
    }
    objects[1][PIECE_HEADER + 3] ^= 0xff;
    let err = open_piece(AT, layout, &h, &objects[1]).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    let (len, pieces) = open_all(layout, &h, &objects);
    assert!(pieces[1].is_none());
    assert_eq!(decode_chunk(AT, layout, len, pieces).unwrap(), data);
    // A piece of another chunk, or one the manifest does not hash, is refused too.
    let other = ChunkAt { chunk: 2, ..AT };
    let foreign = encode_chunk(other, layout, &data).unwrap();
    assert!(open_piece(AT, layout, &h, &foreign[0]).is_err());
    assert!(open_piece(other, layout, &h, &objects[0]).is_err());
    assert!(open_piece(AT, layout, &h, b"QSFSSNP2").is_err());
}

#[test]
fn fewer_than_k_pieces_is_a_clear_error() {
    let layout = Layout::Erasure { k: 4, m: 2 };
    let data = chunk(3000);
    let objects = encode_chunk(AT, layout, &data).unwrap();
    let (len, mut pieces) = open_all(layout, &hashes(&objects), &objects);
    pieces[0] = None;
    pieces[4] = None;
    pieces[5] = None;
    let err = decode_chunk(AT, layout, len, pieces).unwrap_err();
    assert!(err.to_string().contains("only 3 of the 4 pieces"), "{err}");
}

#[test]
fn replicated_chunks_are_one_whole_verified_piece() {
    let data = chunk(777);
    let objects = encode_chunk(AT, Layout::Replicated, &data).unwrap();
    assert_eq!(objects.len(), 1);
    let (len, pieces) = open_all(Layout::Replicated, &hashes(&objects), &objects);
    assert_eq!(
        decode_chunk(AT, Layout::Replicated, len, pieces).unwrap(),
        data
    );
    let mut bad = objects[0].clone();
    bad[PIECE_HEADER] ^= 1;
    assert!(open_piece(AT, Layout::Replicated, &hashes(&objects), &bad).is_err());
}

#[test]
fn format_1_manifests_still_parse_and_their_chunks_open() {
    let m: SnapshotManifest =
        serde_json::from_str(r#"{"format":1,"db_len":10,"sealed_len":50,"chunks":2}"#).unwrap();
    assert_eq!(check(1, &m).unwrap(), None);
    let mut v1 = V1_MAGIC.to_vec();
    for word in [AT.epoch, AT.seq] {
        v1.extend_from_slice(&word.to_le_bytes());
    }
    for half in [AT.chunk, AT.chunks] {
        v1.extend_from_slice(&half.to_le_bytes());
    }
    v1.extend_from_slice(b"payload");
    assert_eq!(v1_chunk(AT, &v1).unwrap(), b"payload");
    assert!(v1_chunk(ChunkAt { chunk: 0, ..AT }, &v1).is_err());
    let v2 = SnapshotManifest {
        format: 2,
        layout: Some(Layout::Erasure { k: 4, m: 2 }),
        pieces: vec![vec![String::new(); 6]; 2],
        ..m.clone()
    };
    let json = serde_json::to_string(&v2).unwrap();
    assert!(
        json.contains(r#""layout":{"kind":"erasure","k":4,"m":2}"#),
        "{json}"
    );
    let back: SnapshotManifest = serde_json::from_str(&json).unwrap();
    assert!(check(1, &back).unwrap().is_some());
    assert!(
        check(
            1,
            &SnapshotManifest {
                pieces: vec![],
                ..v2
            }
        )
        .is_err()
    );
    assert!(check(1, &SnapshotManifest { format: 3, ..m }).is_err());
}

proptest::proptest! {
    /// Whatever a store returns for a piece or a format-1 chunk, the decoders answer without panicking.
    #[test]
    fn decoders_refuse_arbitrary_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
        let h = vec![[0u8; 32]; 6];
        let coded = Layout::Erasure { k: 4, m: 2 };
        proptest::prop_assert!(open_piece(AT, coded, &h, &bytes).is_err());
        let _ = v1_chunk(AT, &bytes);
    }
}
