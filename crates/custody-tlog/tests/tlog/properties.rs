//! Property tests: proofs verify and tampered proofs do not, the frontier agrees with full
//! recomputation, tile paths round-trip, and parsers never panic.

use std::sync::OnceLock;

use custody_tlog::tile::{decode_entry_bundle, encode_entry_bundle};
use custody_tlog::*;
use proptest::prelude::*;

const MAX_N: u64 = 2048;

/// Leaf hashes and stored hashes of a 2048-leaf tree. The storage of any smaller tree is a
/// prefix of it (storage is append-only).
fn tree() -> &'static (Vec<Hash>, Vec<Hash>) {
    static TREE: OnceLock<(Vec<Hash>, Vec<Hash>)> = OnceLock::new();
    TREE.get_or_init(|| {
        let mut leaves = Vec::new();
        let mut storage = Vec::new();
        for i in 0..MAX_N {
            let leaf = leaf_hash(format!("entry {i}").as_bytes());
            storage.extend(stored_hashes(i, leaf, &storage).unwrap());
            leaves.push(leaf);
        }
        (leaves, storage)
    })
}

fn storage(t: u64) -> &'static [Hash] {
    &tree().1[..stored_hash_count(t) as usize]
}

/// `t` in `1..=MAX_N` and `n` in `0..t`.
fn size_and_index() -> impl Strategy<Value = (u64, u64)> {
    (1..=MAX_N).prop_flat_map(|t| (Just(t), 0..t))
}

/// `t` in `1..=MAX_N` and `n` in `1..=t`.
fn two_sizes() -> impl Strategy<Value = (u64, u64)> {
    (1..=MAX_N).prop_flat_map(|t| (Just(t), 1..=t))
}

proptest! {
    #[test]
    fn inclusion_proofs_verify_and_tampering_fails(
        (t, n) in size_and_index(),
        pick in any::<prop::sample::Index>(),
        bit in 0..256usize,
        other in any::<prop::sample::Index>(),
    ) {
        let s = storage(t);
        let root = tree_hash(t, s).unwrap();
        let leaf = tree().0[n as usize];
        let proof = prove_record(t, n, s).unwrap();
        check_record(&proof, t, &root, n, &leaf).unwrap();

        if !proof.is_empty() {
            let mut bad = proof.clone();
            let i = pick.index(bad.len());
            bad[i].0[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(check_record(&bad, t, &root, n, &leaf).is_err());
            prop_assert!(check_record(&proof[1..], t, &root, n, &leaf).is_err());
        }
        let mut longer = proof.clone();
        longer.push(root);
        prop_assert!(check_record(&longer, t, &root, n, &leaf).is_err());
        let m = other.index(t as usize) as u64;
        if m != n {
            prop_assert!(check_record(&proof, t, &root, m, &leaf).is_err());
            prop_assert!(check_record(&proof, t, &root, n, &tree().0[m as usize]).is_err());
        }
        // Another tree size (with that size's root) does not accept this path.
        if t < MAX_N {
            let root2 = tree_hash(t + 1, storage(t + 1)).unwrap();
            prop_assert!(check_record(&proof, t + 1, &root2, n, &leaf).is_err());
        }
    }

    #[test]
    fn consistency_proofs_verify_and_tampering_fails(
        (t, n) in two_sizes(),
        pick in any::<prop::sample::Index>(),
        bit in 0..256usize,
    ) {
        let s = storage(t);
        let root = tree_hash(t, s).unwrap();
        let old = tree_hash(n, s).unwrap();
        let proof = prove_tree(t, n, s).unwrap();
        check_tree(&proof, t, &root, n, &old).unwrap();
        if n == t {
            prop_assert!(proof.is_empty());
        } else {
            let mut bad = proof.clone();
            let i = pick.index(bad.len());
            bad[i].0[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(check_tree(&bad, t, &root, n, &old).is_err());
            prop_assert!(check_tree(&proof[..proof.len() - 1], t, &root, n, &old).is_err());
            prop_assert!(check_tree(&proof, t, &root, n, &root).is_err());
            prop_assert!(check_tree(&proof, t, &old, n, &old).is_err());
            if n > 1 {
                let older = tree_hash(n - 1, s).unwrap();
                prop_assert!(check_tree(&proof, t, &root, n - 1, &older).is_err());
            }
        }
    }

    #[test]
    fn frontier_equals_full_recomputation(
        batches in prop::collection::vec(0..300usize, 1..12),
    ) {
        let (leaves, all) = tree();
        let mut frontier = Frontier::new();
        let mut done = 0usize;
        for k in batches {
            let k = k.min(leaves.len() - done);
            let out = frontier.extend(&leaves[done..done + k]).unwrap();
            let before = stored_hash_count(done as u64) as usize;
            done += k;
            let after = stored_hash_count(done as u64) as usize;
            prop_assert_eq!(out.first_index, StoredIndex(before as u64));
            prop_assert_eq!(&out.hashes[..], &all[before..after]);
            prop_assert_eq!(out.root, tree_hash(done as u64, storage(done as u64)).unwrap());
            prop_assert_eq!(frontier.size(), done as u64);
        }
        let restored = Frontier::from_reader(done as u64, storage(done as u64)).unwrap();
        prop_assert_eq!(&restored, &frontier);
        let again = Frontier::from_parts(done as u64, frontier.nodes().to_vec()).unwrap();
        prop_assert_eq!(again.root(), frontier.root());
    }

    #[test]
    fn tile_paths_round_trip(level in 0..=63u8, index in any::<u64>(), width in 1..=256u16) {
        let tile = Tile::hashes(level, index, width).unwrap();
        prop_assert_eq!(Tile::parse_path(&tile.path()).unwrap(), tile);
        let bundle = Tile::entries(index, width).unwrap();
        prop_assert_eq!(Tile::parse_path(&bundle.path()).unwrap(), bundle);
        prop_assert_eq!(tile.path().ends_with(&format!(".p/{width}")), width < 256);
    }

    #[test]
    fn entry_bundles_round_trip(entries in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..600), 1..=256)) {
        let refs: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
        let data = encode_entry_bundle(refs.iter().copied()).unwrap();
        prop_assert_eq!(decode_entry_bundle(&data, refs.len() as u16).unwrap(), refs.clone());
        if !data.is_empty() {
            prop_assert!(decode_entry_bundle(&data[..data.len() - 1], refs.len() as u16).is_err());
        }
    }

    #[test]
    fn parsers_do_not_panic(text in "\\PC{0,120}", bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = Tile::parse_path(&text);
        let _ = Tile::parse_path(&format!("tile/{text}"));
        let _ = Checkpoint::parse(&text);
        let _ = Note::parse(text.as_bytes());
        let _ = Note::parse(&bytes);
        let _ = Note::parse(format!("a\n\n\u{2014} {text}\n").as_bytes());
        let _ = Verifier::from_verifier_key(&text);
        let _ = Ed25519Signer::from_signer_key(&format!("PRIVATE+KEY+{text}"));
        let _ = decode_entry_bundle(&bytes, 3);
        let _ = Hash::from_base64(&text);
        let _ = serde_json::from_str::<Receipt>(&text);
    }

    #[test]
    fn checkpoints_round_trip(
        origin in "[a-z./0-9]{1,30}",
        size in any::<u64>(),
        root in any::<[u8; 32]>(),
        extensions in prop::collection::vec("[ -~]{1,20}", 0..3),
    ) {
        let c = Checkpoint { origin, size, root_hash: Hash(root), extensions };
        let text = c.to_text().unwrap();
        prop_assert_eq!(Checkpoint::parse(&text).unwrap(), c);
    }
}
