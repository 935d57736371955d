//! Checks custody-tlog against vectors from RFC 6962 reference trees, transparency-dev/merkle's
//! proof probes, a real Certificate Transparency log, C2SP and Go's signed notes, the C2SP tile
//! examples and an independent Python implementation of custody's own formats.

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use custody_tlog::note::{CosignatureVerifier, NoteVerifier as _};
use custody_tlog::tile::tiles_for_size;
use custody_tlog::*;
use serde_json::Value;

fn load(name: &str) -> Value {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "../../testdata/tlog", name].iter().collect();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn hex_hash(v: &Value) -> Hash {
    let bytes: Vec<u8> =
        (0..32).map(|i| u8::from_str_radix(&v.as_str().unwrap()[2 * i..2 * i + 2], 16).unwrap()).collect();
    Hash::from_slice(&bytes).unwrap()
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap()).collect()
}

fn b64(v: &Value) -> Vec<u8> {
    STANDARD.decode(v.as_str().unwrap()).unwrap()
}

fn b64_hash(v: &Value) -> Hash {
    Hash::from_base64(v.as_str().unwrap()).unwrap()
}

fn hashes(v: &Value) -> Vec<Hash> {
    v.as_array().unwrap().iter().map(b64_hash).collect()
}

#[test]
fn rfc6962_reference_tree() {
    let v = load("rfc6962-reference.json");
    let leaves: Vec<Hash> =
        v["leaf_inputs"].as_array().unwrap().iter().map(|l| leaf_hash(&hex_bytes(l.as_str().unwrap()))).collect();
    let mut storage: Vec<Hash> = Vec::new();
    let mut frontier = Frontier::new();
    for (n, root) in v["root_hashes"].as_array().unwrap().iter().enumerate() {
        let root = hex_hash(root);
        assert_eq!(tree_hash(n as u64, &storage).unwrap(), root, "size {n}");
        assert_eq!(frontier.root(), root, "frontier size {n}");
        let compact: Vec<Hash> = v["compact_trees"][n]
            .as_array()
            .unwrap()
            .iter()
            .map(|ln| hex_hash(&v["node_hashes"][ln[0].as_u64().unwrap() as usize][ln[1].as_u64().unwrap() as usize]))
            .collect();
        assert_eq!(frontier.nodes(), compact.as_slice(), "compact tree {n}");
        if let Some(leaf) = leaves.get(n) {
            storage.extend(stored_hashes(n as u64, *leaf, &storage).unwrap());
            frontier.extend(&[*leaf]).unwrap();
        }
    }
    for (level, row) in v["node_hashes"].as_array().unwrap().iter().enumerate() {
        for (n, h) in row.as_array().unwrap().iter().enumerate() {
            let index = stored_hash_index(level as u8, n as u64).unwrap();
            assert_eq!(storage[index.0 as usize], hex_hash(h), "node ({level}, {n})");
        }
    }
    assert_eq!(hex_hash(&v["root_hashes"][0]), Hash::EMPTY_ROOT);
}

/// A probe's leaf hash or proof node: Go byte strings, which must be 32 bytes (Go checks the
/// leaf hash length too); `None` for a mangled length, which the probe must reject.
fn probe_hash(v: &Value) -> Option<Hash> {
    Hash::from_slice(&b64(v)).ok()
}

/// A probe's root. Go compares roots as byte strings, and some probes use placeholders of
/// other lengths ("don't care"); those map to a domain-separated SHA-256 of themselves, which
/// keeps equal values equal and makes a mangled root a wrong hash (never, say, the empty root).
fn probe_root(v: &Value) -> Option<Hash> {
    let bytes = b64(v);
    Some(Hash::from_slice(&bytes).unwrap_or_else(|_| {
        use sha2::Digest as _;
        Hash(sha2::Sha256::new_with_prefix(b"not a hash").chain_update(&bytes).finalize().into())
    }))
}

fn probe_proof(v: &Value) -> Option<Vec<Hash>> {
    match v {
        Value::Null => Some(Vec::new()),
        v => v.as_array()?.iter().map(probe_hash).collect(),
    }
}

#[test]
fn transparency_dev_inclusion_probes() {
    let v = load("inclusion-probes.json");
    let probes = v["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 98);
    for p in probes {
        let (file, want_err) = (p["file"].as_str().unwrap(), p["wantErr"].as_bool().unwrap());
        let parsed = (probe_root(&p["root"]), probe_hash(&p["leafHash"]), probe_proof(&p["proof"]));
        let ok = match parsed {
            (Some(root), Some(leaf), Some(proof)) => {
                check_record(&proof, p["treeSize"].as_u64().unwrap(), &root, p["leafIdx"].as_u64().unwrap(), &leaf)
                    .is_ok()
            }
            _ => false,
        };
        assert_eq!(ok, !want_err, "{file}: {}", p["desc"]);
    }
}

#[test]
fn transparency_dev_consistency_probes() {
    let v = load("consistency-probes.json");
    let probes = v["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 98);
    for p in probes {
        let (file, want_err) = (p["file"].as_str().unwrap(), p["wantErr"].as_bool().unwrap());
        let parsed = (probe_root(&p["root1"]), probe_root(&p["root2"]), probe_proof(&p["proof"]));
        let ok = match parsed {
            (Some(root1), Some(root2), Some(proof)) => {
                check_tree(&proof, p["size2"].as_u64().unwrap(), &root2, p["size1"].as_u64().unwrap(), &root1).is_ok()
            }
            _ => false,
        };
        assert_eq!(ok, !want_err, "{file}: {}", p["desc"]);
    }
}

#[test]
fn certificate_transparency_argon2020() {
    let v = load("ct-argon2020.json");
    let size = v["tree_size"].as_u64().unwrap();
    let root = b64_hash(&v["sha256_root_hash"]);
    let leaf = leaf_hash(&b64(&v["leaf_input"]));
    let index = v["leaf_index"].as_u64().unwrap();
    let path = hashes(&v["audit_path"]);
    check_record(&path, size, &root, index, &leaf).unwrap();
    assert!(check_record(&path, size, &root, index + 1, &leaf).is_err());
    assert!(check_record(&path, size / 2, &root, index, &leaf).is_err());

    let old_size = v["old_tree_size"].as_u64().unwrap();
    let old_root = b64_hash(&v["old_root_hash"]);
    let proof = hashes(&v["consistency"]);
    check_tree(&proof, size, &root, old_size, &old_root).unwrap();
    assert!(check_tree(&proof, size, &root, old_size + 1, &old_root).is_err());
    assert!(check_tree(&proof, size, &old_root, old_size, &root).is_err());
}

#[test]
fn signed_notes_from_c2sp_go_and_sumdb() {
    let v = load("notes.json");
    for n in v["notes"].as_array().unwrap() {
        let name = n["name"].as_str().unwrap();
        let vkey = n["vkey"].as_str().unwrap();
        let verifier = Verifier::from_verifier_key(vkey).unwrap();
        assert_eq!(verifier.verifier_key(), vkey, "{name}");
        let msg = n["note"].as_str().unwrap();
        let opened = Note::open(msg.as_bytes(), &[&verifier]).unwrap();
        assert_eq!(opened.text, n["text"].as_str().unwrap(), "{name}");
        assert_eq!(opened.verified.len(), 1);
        assert_eq!(Note::parse(msg.as_bytes()).unwrap().to_string(), msg, "{name}");
        // One flipped character in the text breaks the signature.
        let tampered = msg.replacen('e', "f", 1);
        assert!(Note::open(tampered.as_bytes(), &[&verifier]).is_err(), "{name}");

        if let Some(skey) = n.get("skey").and_then(Value::as_str) {
            let signer = Ed25519Signer::from_signer_key(skey).unwrap();
            assert_eq!(signer.verifier_key(), vkey);
            let mut note = Note::new(n["text"].as_str().unwrap()).unwrap();
            note.sign(&signer).unwrap();
            assert_eq!(note.to_string(), msg, "{name}");
        }
        if let Some(c) = n.get("checkpoint") {
            let origin = c["origin"].as_str().unwrap();
            let (checkpoint, _) = Checkpoint::open(msg.as_bytes(), origin, &[&verifier]).unwrap();
            assert_eq!(checkpoint.size, c["size"].as_u64().unwrap());
            assert_eq!(checkpoint.root_hash, b64_hash(&c["root_hash"]));
        }
    }
    for l in v["leaf_hashes"].as_array().unwrap() {
        assert_eq!(leaf_hash(l["entry"].as_str().unwrap().as_bytes()), b64_hash(&l["hash"]));
    }
}

#[test]
fn c2sp_tile_examples() {
    let v = load("tiles.json");
    for p in v["paths"].as_array().unwrap() {
        let (index, width) = (p["index"].as_u64().unwrap(), p["width"].as_u64().unwrap() as u16);
        let tile = match p["level"].as_u64() {
            Some(level) => Tile::hashes(level as u8, index, width).unwrap(),
            None => Tile::entries(index, width).unwrap(),
        };
        let path = p["path"].as_str().unwrap();
        assert_eq!(tile.path(), path);
        assert_eq!(Tile::parse_path(path).unwrap(), tile);
    }
    for s in v["sizes"].as_array().unwrap() {
        let tiles: Vec<Tile> = tiles_for_size(s["size"].as_u64().unwrap()).collect();
        for (level, want) in s["tiles"].as_object().unwrap() {
            let level: u8 = level.parse().unwrap();
            let at: Vec<&Tile> = tiles.iter().filter(|t| t.level() == Some(level)).collect();
            let full = at.iter().filter(|t| t.is_full()).count() as u64;
            let partial: Vec<u64> = at.iter().filter(|t| !t.is_full()).map(|t| u64::from(t.width())).collect();
            assert_eq!(full, want["full"].as_u64().unwrap());
            let want_partial = want["partial"].as_u64().unwrap();
            assert_eq!(partial, if want_partial == 0 { vec![] } else { vec![want_partial] });
        }
    }
}

#[test]
fn independent_implementation_of_custody_formats() {
    let v = load("independent.json");
    let origin = "custody.example/log";
    let signer = Ed25519Signer::from_signer_key(v["log_skey"].as_str().unwrap()).unwrap();
    assert_eq!(signer.verifier_key(), v["log_vkey"].as_str().unwrap());
    let log = Ed25519Verifier::from_verifier_key(v["log_vkey"].as_str().unwrap()).unwrap();

    let entries: Vec<Vec<u8>> =
        v["entries"].as_array().unwrap().iter().map(|e| e.as_str().unwrap().as_bytes().to_vec()).collect();
    let leaves: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
    let mut storage = Vec::new();
    for (i, leaf) in leaves.iter().enumerate() {
        storage.extend(stored_hashes(i as u64, *leaf, &storage).unwrap());
    }

    // Checkpoints: same bytes when we sign (Ed25519 is deterministic), and they open.
    for size in [3u64, 7] {
        let msg = v[format!("checkpoint_{size}")].as_str().unwrap();
        let (c, _) = Checkpoint::open(msg.as_bytes(), origin, &[&log]).unwrap();
        assert_eq!(c.size, size);
        assert_eq!(c.root_hash, tree_hash(size, &storage).unwrap());
        assert_eq!(c.sign(&signer).unwrap().to_string(), msg);
    }

    // Proofs: ours are the same hashes, and theirs check.
    let inc = &v["inclusion_5_in_7"];
    let proof = hashes(&inc["proof"]);
    assert_eq!(prove_record(7, 5, &storage).unwrap(), proof);
    check_record(&proof, 7, &tree_hash(7, &storage).unwrap(), 5, &leaves[5]).unwrap();
    let cons = &v["consistency_3_to_7"];
    let proof = hashes(&cons["proof"]);
    assert_eq!(prove_tree(7, 3, &storage).unwrap(), proof);
    check_tree(&proof, 7, &tree_hash(7, &storage).unwrap(), 3, &tree_hash(3, &storage).unwrap()).unwrap();

    // Witness cosignature: verifies, carries the timestamp, and we produce the same line.
    let witness = CosignatureVerifier::from_verifier_key(v["witness_vkey"].as_str().unwrap()).unwrap();
    let msg = v["cosigned_checkpoint_7"].as_str().unwrap();
    let opened = Note::open(msg.as_bytes(), &[&log, &witness]).unwrap();
    assert_eq!(opened.verified.len(), 2);
    let cosig = &opened.verified[1];
    assert_eq!(cosig.name, witness.name());
    let ts = v["witness_timestamp"].as_u64().unwrap();
    assert_eq!(witness.verify_timestamp(&opened.text, &cosig.signature), Some(ts));
    let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
    let our_witness = CosignatureSigner::from_seed("witness.example/w1", &seed).unwrap();
    assert_eq!(our_witness.verifier_key(), witness.verifier_key());
    assert_eq!(&our_witness.cosign(&opened.text, ts).unwrap(), cosig);

    // Receipt: theirs verifies, and signing the same batch gives the same receipt.
    let receipt: Receipt = serde_json::from_value(v["receipt"].clone()).unwrap();
    assert_eq!(receipt.statement().unwrap(), v["receipt_statement"].as_str().unwrap());
    receipt.verify(&log, &entries[5]).unwrap();
    assert!(receipt.verify(&log, &entries[4]).is_err());
    let ours = sign_batch(&signer, origin, 3, &leaves[3..7]).unwrap();
    assert_eq!(ours[2], receipt);
}
