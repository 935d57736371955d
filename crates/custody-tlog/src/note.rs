//! Signed notes ([c2sp.org/signed-note](https://c2sp.org/signed-note)), their Ed25519 keys,
//! and timestamped witness cosignatures ([c2sp.org/tlog-cosignature](https://c2sp.org/tlog-cosignature)).
//!
//! A note is UTF-8 text ending in a newline, a blank line, then one or more lines
//! `— <key name> <base64(key ID ‖ signature)>` (em dash U+2014, space). A reader trusts the
//! text only if a signature from a key it already knows verifies; signatures from unknown keys
//! are ignored (that is how logs rotate keys and witnesses add cosignatures), and a known key's
//! failed signature rejects the whole note.
//!
//! Keys are identified by name and a 4-byte key ID,
//! `SHA-256(name ‖ 0x0A ‖ signature type ‖ public key)[:4]`, and written as *vkeys*
//! `<name>+<hex key ID>+<base64(type ‖ public key)>`. Two signature types are implemented:
//!
//! - `0x01`, Ed25519 over the note text ([`Ed25519Signer`], [`Ed25519Verifier`]): the log's key.
//! - `0x04`, `cosignature/v1` ([`CosignatureSigner`], [`CosignatureVerifier`]): a witness's
//!   Ed25519 signature over `cosignature/v1\ntime <t>\n` followed by the checkpoint, carried
//!   as `timestamp (u64 big-endian) ‖ signature`.
//!
//! Signer keys use Go's `golang.org/x/mod/sumdb/note` format,
//! `PRIVATE+KEY+<name>+<hex key ID>+<base64(type ‖ 32-byte seed)>`, so keys move between this
//! crate and the Go tooling.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::checkpoint::Checkpoint;
use crate::{Error, ParseError};

/// Signature type of Ed25519 note signatures (c2sp.org/signed-note).
pub const ED25519_SIGNATURE_TYPE: u8 = 0x01;
/// Signature type of timestamped Ed25519 checkpoint cosignatures (c2sp.org/tlog-cosignature).
pub const COSIGNATURE_V1_SIGNATURE_TYPE: u8 = 0x04;
/// Largest note accepted, in bytes.
pub const MAX_NOTE_SIZE: usize = 1 << 20;
/// Most signature lines accepted on one note (the spec requires at least 16).
pub const MAX_SIGNATURES: usize = 100;

const SIGNATURE_PREFIX: &str = "\u{2014} ";
const SIGNER_KEY_PREFIX: &str = "PRIVATE+KEY+";
const ED25519_SIGNATURE_LEN: usize = 64;
const COSIGNATURE_HEADER: &str = "cosignature/v1\n";
/// Cosignature timestamps must not exceed `2^63 - 1` (c2sp.org/tlog-cosignature).
const MAX_TIMESTAMP: u64 = (1 << 63) - 1;

/// A 4-byte key ID; text form is 8 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub u32);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// The recommended key ID: `SHA-256(name ‖ 0x0A ‖ signature_type ‖ public_key)[:4]`.
pub fn key_id(name: &str, signature_type: u8, public_key: &[u8]) -> KeyId {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', signature_type]);
    h.update(public_key);
    let digest: [u8; 32] = h.finalize().into();
    let [a, b, c, d, ..] = digest;
    KeyId(u32::from_be_bytes([a, b, c, d]))
}

/// Whether `name` may name a key: non-empty, no Unicode white space, no `+`.
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

fn check_key_name(name: &str) -> Result<(), ParseError> {
    if is_valid_key_name(name) {
        Ok(())
    } else {
        Err(ParseError::Key("key name must be non-empty, without spaces or `+`"))
    }
}

/// Checks a note text: at most [`MAX_NOTE_SIZE`], ends in a newline, no control characters
/// but newlines.
fn check_text(text: &str) -> Result<(), ParseError> {
    if text.len() > MAX_NOTE_SIZE {
        return Err(ParseError::Note("too large"));
    }
    if !text.ends_with('\n') {
        return Err(ParseError::Note("text does not end in a newline"));
    }
    if text.chars().any(|c| c < ' ' && c != '\n') {
        return Err(ParseError::Note("control character"));
    }
    Ok(())
}

/// One signature line of a note.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NoteSignature {
    /// The key name.
    pub name: String,
    /// The key ID.
    pub key_id: KeyId,
    /// The signature bytes after the key ID, as the signature type defines them.
    pub signature: Vec<u8>,
}

impl fmt::Debug for NoteSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NoteSignature({})", self.to_line())
    }
}

impl NoteSignature {
    /// Parses one signature line, without its final newline: `— <name> <base64>`.
    ///
    /// # Errors
    ///
    /// [`ParseError::Note`] if the line is not of that form, the name is invalid, or the
    /// base64 is not canonical or holds fewer than 5 bytes.
    pub fn parse_line(line: &str) -> Result<NoteSignature, ParseError> {
        let rest =
            line.strip_prefix(SIGNATURE_PREFIX).ok_or(ParseError::Note("signature line does not start with `— `"))?;
        let (name, b64) = rest.split_once(' ').ok_or(ParseError::Note("signature line has no signature"))?;
        if !is_valid_key_name(name) {
            return Err(ParseError::Note("invalid key name in signature line"));
        }
        let bytes = STANDARD.decode(b64).map_err(|_| ParseError::Note("invalid base64 in signature line"))?;
        match bytes.split_first_chunk::<4>() {
            Some((id, signature)) if !signature.is_empty() => Ok(NoteSignature {
                name: name.to_owned(),
                key_id: KeyId(u32::from_be_bytes(*id)),
                signature: signature.to_vec(),
            }),
            _ => Err(ParseError::Note("signature too short")),
        }
    }

    /// The signature line, without its final newline.
    pub fn to_line(&self) -> String {
        let mut bytes = Vec::with_capacity(4 + self.signature.len());
        bytes.extend_from_slice(&self.key_id.0.to_be_bytes());
        bytes.extend_from_slice(&self.signature);
        format!("{SIGNATURE_PREFIX}{} {}", self.name, STANDARD.encode(bytes))
    }
}

/// Serialized as its signature line (without the newline), so it can be pasted under a text.
impl serde::Serialize for NoteSignature {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_line())
    }
}

impl<'de> serde::Deserialize<'de> for NoteSignature {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let line = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        NoteSignature::parse_line(&line).map_err(serde::de::Error::custom)
    }
}

/// Something that signs note texts: a key of one signature type.
pub trait NoteSigner {
    /// The key name.
    fn name(&self) -> &str;
    /// The key ID.
    fn key_id(&self) -> KeyId;
    /// The signature over `text`, without the key ID.
    ///
    /// # Errors
    ///
    /// If the key cannot sign this text (its type restricts the text, or a key store failed).
    fn sign(&self, text: &str) -> Result<Vec<u8>, Error>;
}

/// Something that checks note signatures: a known key of one signature type.
pub trait NoteVerifier {
    /// The key name.
    fn name(&self) -> &str;
    /// The key ID.
    fn key_id(&self) -> KeyId;
    /// Whether `signature` (without the key ID) is this key's signature over `text`.
    fn verify(&self, text: &str, signature: &[u8]) -> bool;
}

/// A note: text and signatures, verified or not. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    text: String,
    signatures: Vec<NoteSignature>,
}

/// A note's text with the signatures that verified against known keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedNote {
    /// The note text, trusted.
    pub text: String,
    /// Signatures from known keys, all verified (one per key).
    pub verified: Vec<NoteSignature>,
    /// Signatures from unknown keys, not checked.
    pub unverified: Vec<NoteSignature>,
}

impl Note {
    /// An unsigned note with `text`.
    ///
    /// # Errors
    ///
    /// [`ParseError::Note`] unless the text ends in a newline, has no control characters but
    /// newlines and is at most [`MAX_NOTE_SIZE`].
    pub fn new(text: impl Into<String>) -> Result<Note, ParseError> {
        let text = text.into();
        check_text(&text)?;
        Ok(Note { text, signatures: Vec::new() })
    }

    /// Parses a signed note strictly.
    ///
    /// # Errors
    ///
    /// [`ParseError::Note`] if it is not UTF-8, is too large, has control characters, has no
    /// blank line before the signatures, any signature line is malformed, or it has more than
    /// [`MAX_SIGNATURES`] signatures.
    pub fn parse(msg: &[u8]) -> Result<Note, ParseError> {
        if msg.len() > MAX_NOTE_SIZE {
            return Err(ParseError::Note("too large"));
        }
        let msg = std::str::from_utf8(msg).map_err(|_| ParseError::Note("not UTF-8"))?;
        if msg.chars().any(|c| c < ' ' && c != '\n') {
            return Err(ParseError::Note("control character"));
        }
        // The text ends at the last blank line; it keeps its final newline.
        let split = msg.rfind("\n\n").ok_or(ParseError::Note("no blank line before the signatures"))?;
        let (text, block) = msg.split_at(split + 1);
        let block = block.strip_prefix('\n').unwrap_or(block);
        let lines = block.strip_suffix('\n').ok_or(ParseError::Note("signatures do not end in a newline"))?;
        if lines.is_empty() {
            return Err(ParseError::Note("no signatures"));
        }
        let mut signatures = Vec::new();
        for line in lines.split('\n') {
            if signatures.len() == MAX_SIGNATURES {
                return Err(ParseError::Note("too many signatures"));
            }
            signatures.push(NoteSignature::parse_line(line)?);
        }
        Ok(Note { text: text.to_owned(), signatures })
    }

    /// Parses a note and verifies it: [`Note::parse`] then [`Note::verify`].
    ///
    /// # Errors
    ///
    /// As those two.
    pub fn open(msg: &[u8], verifiers: &[&dyn NoteVerifier]) -> Result<VerifiedNote, Error> {
        Note::parse(msg)?.verify(verifiers)
    }

    /// The text, including its final newline. Untrusted until verified.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The signatures, in order.
    pub fn signatures(&self) -> &[NoteSignature] {
        &self.signatures
    }

    /// Signs the note, replacing any signature by the same key (name and ID).
    ///
    /// # Errors
    ///
    /// [`ParseError::Key`] if the signer's name is invalid; the signer's own errors.
    pub fn sign(&mut self, signer: &dyn NoteSigner) -> Result<(), Error> {
        check_key_name(signer.name())?;
        let signature = signer.sign(&self.text)?;
        self.add_signature(NoteSignature { name: signer.name().to_owned(), key_id: signer.key_id(), signature })?;
        Ok(())
    }

    /// Adds a signature made elsewhere (e.g. a witness cosignature), replacing any signature
    /// by the same key. It is not verified here.
    ///
    /// # Errors
    ///
    /// [`ParseError::Note`] if the name is invalid, the signature empty, or the note would
    /// have more than [`MAX_SIGNATURES`].
    pub fn add_signature(&mut self, signature: NoteSignature) -> Result<(), ParseError> {
        if !is_valid_key_name(&signature.name) || signature.signature.is_empty() {
            return Err(ParseError::Note("invalid signature"));
        }
        self.signatures.retain(|s| !(s.name == signature.name && s.key_id == signature.key_id));
        if self.signatures.len() == MAX_SIGNATURES {
            return Err(ParseError::Note("too many signatures"));
        }
        self.signatures.push(signature);
        Ok(())
    }

    /// Checks the signatures against known keys.
    ///
    /// Signatures from unknown keys (no verifier with the same name *and* ID) are ignored and
    /// returned as unverified; only the first signature of each known key counts.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSignature`] if a known key's signature fails (the whole note is
    /// rejected); [`Error::AmbiguousKey`] if two verifiers share a name and ID;
    /// [`Error::UnverifiedNote`] if no known key signed.
    pub fn verify(&self, verifiers: &[&dyn NoteVerifier]) -> Result<VerifiedNote, Error> {
        let mut verified: Vec<NoteSignature> = Vec::new();
        let mut unverified: Vec<NoteSignature> = Vec::new();
        for sig in &self.signatures {
            let mut known = verifiers.iter().filter(|v| v.name() == sig.name && v.key_id() == sig.key_id);
            let Some(verifier) = known.next() else {
                if !unverified.contains(sig) {
                    unverified.push(sig.clone());
                }
                continue;
            };
            if known.next().is_some() {
                return Err(Error::AmbiguousKey { name: sig.name.clone(), key_id: sig.key_id });
            }
            if verified.iter().any(|v| v.name == sig.name && v.key_id == sig.key_id) {
                continue;
            }
            if !verifier.verify(&self.text, &sig.signature) {
                return Err(Error::InvalidSignature { name: sig.name.clone(), key_id: sig.key_id });
            }
            verified.push(sig.clone());
        }
        if verified.is_empty() {
            return Err(Error::UnverifiedNote);
        }
        Ok(VerifiedNote { text: self.text.clone(), verified, unverified })
    }
}

/// The signed note: text, blank line, signature lines.
impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)?;
        f.write_str("\n")?;
        for sig in &self.signatures {
            f.write_str(&sig.to_line())?;
            f.write_str("\n")?;
        }
        Ok(())
    }
}

/// A parsed vkey: name, key ID, signature type and key material.
struct KeyParts<'a> {
    name: &'a str,
    key_id: KeyId,
    signature_type: u8,
    material: Zeroizing<Vec<u8>>,
}

/// Splits `<name>+<hex key ID>+<base64(type ‖ material)>`, checking the name, the hex, the
/// base64 and the key ID. The key ID is checked against `id_type`/the material by the caller
/// when the key material is a seed.
fn parse_key_parts(key: &str) -> Result<KeyParts<'_>, ParseError> {
    let (name, rest) = key.split_once('+').ok_or(ParseError::Key("expected name+id+key"))?;
    let (id_hex, b64) = rest.split_once('+').ok_or(ParseError::Key("expected name+id+key"))?;
    check_key_name(name)?;
    if id_hex.len() != 8 || !id_hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(ParseError::Key("key ID is not 8 lowercase hex digits"));
    }
    let id = u32::from_str_radix(id_hex, 16).map_err(|_| ParseError::Key("invalid key ID"))?;
    let bytes = Zeroizing::new(STANDARD.decode(b64).map_err(|_| ParseError::Key("invalid base64"))?);
    let (&signature_type, material) = bytes.split_first().ok_or(ParseError::Key("empty key"))?;
    Ok(KeyParts { name, key_id: KeyId(id), signature_type, material: Zeroizing::new(material.to_vec()) })
}

/// Parses a vkey of `signature_type` with a 32-byte Ed25519 public key.
fn parse_ed25519_verifier_key(vkey: &str, signature_type: u8) -> Result<(String, KeyId, VerifyingKey), ParseError> {
    let parts = parse_key_parts(vkey)?;
    if parts.signature_type != signature_type {
        return Err(ParseError::Key("wrong signature type"));
    }
    let bytes =
        <[u8; 32]>::try_from(parts.material.as_slice()).map_err(|_| ParseError::Key("public key is not 32 bytes"))?;
    if key_id(parts.name, signature_type, &bytes) != parts.key_id {
        return Err(ParseError::Key("key ID does not match the key"));
    }
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| ParseError::Key("invalid Ed25519 key"))?;
    Ok((parts.name.to_owned(), parts.key_id, key))
}

/// Parses a signer key `PRIVATE+KEY+name+id+base64(type ‖ seed)` whose type is one of `types`.
fn parse_ed25519_signer_key(skey: &str, types: &[u8]) -> Result<(String, u8, KeyId, SigningKey), ParseError> {
    let rest =
        skey.strip_prefix(SIGNER_KEY_PREFIX).ok_or(ParseError::Key("signer key does not start with `PRIVATE+KEY+`"))?;
    let parts = parse_key_parts(rest)?;
    if !types.contains(&parts.signature_type) {
        return Err(ParseError::Key("wrong signature type"));
    }
    let seed = Zeroizing::new(
        <[u8; 32]>::try_from(parts.material.as_slice()).map_err(|_| ParseError::Key("seed is not 32 bytes"))?,
    );
    let key = SigningKey::from_bytes(&seed);
    let public = key.verifying_key().to_bytes();
    if key_id(parts.name, parts.signature_type, &public) != parts.key_id {
        return Err(ParseError::Key("key ID does not match the key"));
    }
    Ok((parts.name.to_owned(), parts.signature_type, parts.key_id, key))
}

fn format_verifier_key(name: &str, key_id: KeyId, signature_type: u8, key: &VerifyingKey) -> String {
    let mut bytes = Vec::with_capacity(33);
    bytes.push(signature_type);
    bytes.extend_from_slice(key.as_bytes());
    format!("{name}+{key_id}+{}", STANDARD.encode(bytes))
}

fn format_signer_key(name: &str, key_id: KeyId, signature_type: u8, key: &SigningKey) -> Zeroizing<String> {
    let mut bytes = Zeroizing::new(Vec::with_capacity(33));
    bytes.push(signature_type);
    bytes.extend_from_slice(key.as_bytes());
    Zeroizing::new(format!("{SIGNER_KEY_PREFIX}{name}+{key_id}+{}", STANDARD.encode(bytes.as_slice())))
}

fn random_seed<R: rand::CryptoRng + rand::RngCore + ?Sized>(rng: &mut R) -> Zeroizing<[u8; 32]> {
    let mut seed = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(seed.as_mut());
    seed
}

fn verify_ed25519(key: &VerifyingKey, msg: &[u8], signature: &[u8]) -> bool {
    let Ok(bytes) = <[u8; ED25519_SIGNATURE_LEN]>::try_from(signature) else {
        return false;
    };
    let signature = ed25519_dalek::Signature::from_bytes(&bytes);
    // Strict verification: no malleable or small-order edge cases, as in Go's crypto/ed25519.
    key.verify_strict(msg, &signature).is_ok()
}

/// An Ed25519 note signing key (signature type `0x01`), e.g. the log's checkpoint key.
#[derive(Clone)]
pub struct Ed25519Signer {
    name: String,
    key_id: KeyId,
    key: SigningKey,
}

impl fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ed25519Signer({}+{})", self.name, self.key_id)
    }
}

impl Ed25519Signer {
    /// A new random key named `name`.
    ///
    /// # Errors
    ///
    /// [`ParseError::Key`] if the name is invalid.
    pub fn generate<R: rand::CryptoRng + rand::RngCore + ?Sized>(
        name: &str,
        rng: &mut R,
    ) -> Result<Ed25519Signer, ParseError> {
        Ed25519Signer::from_seed(name, &random_seed(rng))
    }

    /// The key with this 32-byte RFC 8032 seed.
    ///
    /// # Errors
    ///
    /// [`ParseError::Key`] if the name is invalid.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Ed25519Signer, ParseError> {
        check_key_name(name)?;
        let key = SigningKey::from_bytes(seed);
        let key_id = key_id(name, ED25519_SIGNATURE_TYPE, key.verifying_key().as_bytes());
        Ok(Ed25519Signer { name: name.to_owned(), key_id, key })
    }

    /// Parses `PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 ‖ seed)>`.
    ///
    /// # Errors
    ///
    /// [`ParseError::Key`] if malformed, of another type, or the key ID does not match.
    pub fn from_signer_key(skey: &str) -> Result<Ed25519Signer, ParseError> {
        let (name, _, key_id, key) = parse_ed25519_signer_key(skey, &[ED25519_SIGNATURE_TYPE])?;
        Ok(Ed25519Signer { name, key_id, key })
    }

    /// The signer key string. Secret: keep it out of logs.
    pub fn signer_key(&self) -> Zeroizing<String> {
        format_signer_key(&self.name, self.key_id, ED25519_SIGNATURE_TYPE, &self.key)
    }

    /// The matching verifier.
    pub fn verifier(&self) -> Ed25519Verifier {
        Ed25519Verifier { name: self.name.clone(), key_id: self.key_id, key: self.key.verifying_key() }
    }

    /// The matching vkey, `<name>+<hex key ID>+<base64(0x01 ‖ public key)>`.
    pub fn verifier_key(&self) -> String {
        self.verifier().verifier_key()
    }
}

impl NoteSigner for Ed25519Signer {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> KeyId {
        self.key_id
    }

    fn sign(&self, text: &str) -> Result<Vec<u8>, Error> {
        Ok(self.key.sign(text.as_bytes()).to_bytes().to_vec())
    }
}

/// An Ed25519 note verifier (signature type `0x01`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ed25519Verifier {
    name: String,
    key_id: KeyId,
    key: VerifyingKey,
}

impl Ed25519Verifier {
    /// The verifier for `key` under `name`.
    ///
    /// # Errors
    ///
    /// [`ParseError::Key`] if the name is invalid.
    pub fn new(name: &str, key: VerifyingKey) -> Result<Ed25519Verifier, ParseError> {
        check_key_name(name)?;
        Ok(Ed25519Verifier { name: name.to_owned(), key_id: key_id(name, ED25519_SIGNATURE_TYPE, key.as_bytes()), key })
    }

    /// Parses a vkey `<name>+<hex key ID>+<base64(0x01 ‖ public key)>`.
    ///
    /// # Errors
    ///
    /// [`ParseError::Key`] if malformed, of another type, not a valid Ed25519 key, or the key
    /// ID does not match.
    pub fn from_verifier_key(vkey: &str) -> Result<Ed25519Verifier, ParseError> {
        let (name, key_id, key) = parse_ed25519_verifier_key(vkey, ED25519_SIGNATURE_TYPE)?;
        Ok(Ed25519Verifier { name, key_id, key })
    }

    /// The vkey string.
    pub fn verifier_key(&self) -> String {
        format_verifier_key(&self.name, self.key_id, ED25519_SIGNATURE_TYPE, &self.key)
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> &VerifyingKey {
        &self.key
    }
}

impl NoteVerifier for Ed25519Verifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> KeyId {
        self.key_id
    }

    fn verify(&self, text: &str, signature: &[u8]) -> bool {
        verify_ed25519(&self.key, text.as_bytes(), signature)
    }
}

/// The message a `cosignature/v1` signs: header, time line, then the checkpoint note text.
fn cosignature_message(text: &str, timestamp: u64) -> String {
    format!("{COSIGNATURE_HEADER}time {timestamp}\n{text}")
}

/// A witness's Ed25519 cosigning key (signature type `0x04`, c2sp.org/tlog-cosignature).
#[derive(Clone)]
pub struct CosignatureSigner {
    name: String,
    key_id: KeyId,
    key: SigningKey,
}

impl fmt::Debug for CosignatureSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CosignatureSigner({}+{})", self.name, self.key_id)
    }
}

impl CosignatureSigner {
    /// A new random cosigning key named `name`.
    ///
    /// # Errors
    ///
    /// [`ParseError::Key`] if the name is invalid.
    pub fn generate<R: rand::CryptoRng + rand::RngCore + ?Sized>(
        name: &str,
        rng: &mut R,
    ) -> Result<CosignatureSigner, ParseError> {
        CosignatureSigner::from_seed(name, &random_seed(rng))
    }

    /// The cosigning key with this 32-byte RFC 8032 seed.
    ///
    /// # Errors
    ///
    /// [`ParseError::Key`] if the name is invalid.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<CosignatureSigner, ParseError> {
        check_key_name(name)?;
        let key = SigningKey::from_bytes(seed);
        Ok(CosignatureSigner {
            name: name.to_owned(),
            key_id: key_id(name, COSIGNATURE_V1_SIGNATURE_TYPE, key.verifying_key().as_bytes()),
            key,
        })
    }

    /// Parses `PRIVATE+KEY+<name>+<hex key ID>+<base64(type ‖ seed)>`. Type `0x04` is this
    /// crate's own form; type `0x01` keys (as Go's `note.GenerateKey` makes, and witnesses built
    /// on transparency-dev/formats use) are accepted too, with the key ID recomputed for `0x04`.
    ///
    /// # Errors
    ///
    /// [`ParseError::Key`] if malformed, of another type, or the key ID does not match.
    pub fn from_signer_key(skey: &str) -> Result<CosignatureSigner, ParseError> {
        let (name, _, _, key) =
            parse_ed25519_signer_key(skey, &[COSIGNATURE_V1_SIGNATURE_TYPE, ED25519_SIGNATURE_TYPE])?;
        CosignatureSigner::from_seed(&name, key.as_bytes())
    }

    /// The signer key string (type `0x04`). Secret: keep it out of logs.
    pub fn signer_key(&self) -> Zeroizing<String> {
        format_signer_key(&self.name, self.key_id, COSIGNATURE_V1_SIGNATURE_TYPE, &self.key)
    }

    /// The matching verifier.
    pub fn verifier(&self) -> CosignatureVerifier {
        CosignatureVerifier { name: self.name.clone(), key_id: self.key_id, key: self.key.verifying_key() }
    }

    /// The matching vkey, `<name>+<hex key ID>+<base64(0x04 ‖ public key)>`.
    pub fn verifier_key(&self) -> String {
        self.verifier().verifier_key()
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Cosigns the checkpoint note text `text` as of `timestamp` (POSIX seconds). Add the
    /// result to the checkpoint's note with [`Note::add_signature`].
    ///
    /// # Errors
    ///
    /// [`ParseError::Checkpoint`] if `text` is not a checkpoint; [`ParseError::Note`] if the
    /// timestamp exceeds `2^63 - 1`.
    pub fn cosign(&self, text: &str, timestamp: u64) -> Result<NoteSignature, Error> {
        Checkpoint::parse(text)?;
        if timestamp > MAX_TIMESTAMP {
            return Err(ParseError::Note("cosignature timestamp exceeds 2^63 - 1").into());
        }
        let message = cosignature_message(text, timestamp);
        let mut signature = Vec::with_capacity(8 + ED25519_SIGNATURE_LEN);
        signature.extend_from_slice(&timestamp.to_be_bytes());
        signature.extend_from_slice(&self.key.sign(message.as_bytes()).to_bytes());
        Ok(NoteSignature { name: self.name.clone(), key_id: self.key_id, signature })
    }
}

/// A witness's cosignature verifier (signature type `0x04`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CosignatureVerifier {
    name: String,
    key_id: KeyId,
    key: VerifyingKey,
}

impl CosignatureVerifier {
    /// The verifier for cosigner `key` under `name`.
    ///
    /// # Errors
    ///
    /// [`ParseError::Key`] if the name is invalid.
    pub fn new(name: &str, key: VerifyingKey) -> Result<CosignatureVerifier, ParseError> {
        check_key_name(name)?;
        Ok(CosignatureVerifier {
            name: name.to_owned(),
            key_id: key_id(name, COSIGNATURE_V1_SIGNATURE_TYPE, key.as_bytes()),
            key,
        })
    }

    /// Parses a vkey `<name>+<hex key ID>+<base64(0x04 ‖ public key)>`.
    ///
    /// # Errors
    ///
    /// [`ParseError::Key`] if malformed, of another type, not a valid Ed25519 key, or the key
    /// ID does not match.
    pub fn from_verifier_key(vkey: &str) -> Result<CosignatureVerifier, ParseError> {
        let (name, key_id, key) = parse_ed25519_verifier_key(vkey, COSIGNATURE_V1_SIGNATURE_TYPE)?;
        Ok(CosignatureVerifier { name, key_id, key })
    }

    /// The vkey string.
    pub fn verifier_key(&self) -> String {
        format_verifier_key(&self.name, self.key_id, COSIGNATURE_V1_SIGNATURE_TYPE, &self.key)
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Checks a cosignature (without the key ID) over the note text `text` and returns its
    /// timestamp. Whether the time is acceptable (not in the future, fresh enough) is the
    /// caller's policy.
    pub fn verify_timestamp(&self, text: &str, signature: &[u8]) -> Option<u64> {
        let (timestamp, signature) = signature.split_first_chunk::<8>()?;
        let timestamp = u64::from_be_bytes(*timestamp);
        if timestamp > MAX_TIMESTAMP {
            return None;
        }
        let message = cosignature_message(text, timestamp);
        verify_ed25519(&self.key, message.as_bytes(), signature).then_some(timestamp)
    }
}

impl NoteVerifier for CosignatureVerifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> KeyId {
        self.key_id
    }

    fn verify(&self, text: &str, signature: &[u8]) -> bool {
        self.verify_timestamp(text, signature).is_some()
    }
}

/// A verifier of any supported signature type, chosen by the vkey's type byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verifier {
    /// Signature type `0x01`.
    Ed25519(Ed25519Verifier),
    /// Signature type `0x04`.
    Cosignature(CosignatureVerifier),
}

impl Verifier {
    /// Parses a vkey of type `0x01` or `0x04`.
    ///
    /// # Errors
    ///
    /// [`ParseError::Key`] if malformed, of an unsupported type, or the key ID does not match.
    pub fn from_verifier_key(vkey: &str) -> Result<Verifier, ParseError> {
        let parts = parse_key_parts(vkey)?;
        match parts.signature_type {
            ED25519_SIGNATURE_TYPE => Ed25519Verifier::from_verifier_key(vkey).map(Verifier::Ed25519),
            COSIGNATURE_V1_SIGNATURE_TYPE => CosignatureVerifier::from_verifier_key(vkey).map(Verifier::Cosignature),
            _ => Err(ParseError::Key("unsupported signature type")),
        }
    }

    /// The vkey string.
    pub fn verifier_key(&self) -> String {
        match self {
            Verifier::Ed25519(v) => v.verifier_key(),
            Verifier::Cosignature(v) => v.verifier_key(),
        }
    }

    fn inner(&self) -> &dyn NoteVerifier {
        match self {
            Verifier::Ed25519(v) => v,
            Verifier::Cosignature(v) => v,
        }
    }
}

impl NoteVerifier for Verifier {
    fn name(&self) -> &str {
        self.inner().name()
    }

    fn key_id(&self) -> KeyId {
        self.inner().key_id()
    }

    fn verify(&self, text: &str, signature: &[u8]) -> bool {
        self.inner().verify(text, signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    // Vectors from Go's golang.org/x/mod/sumdb/note tests (note_test.go).
    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const PETER_SKEY: &str = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                        then you don't know what your problem is.\n";
    const PETER_SIG: &str =
        "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    const ENOCH_SIG: &str =
        "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn go_signer_key_signs_like_go() {
        let signer = Ed25519Signer::from_signer_key(PETER_SKEY).unwrap();
        assert_eq!(signer.verifier_key(), PETER_VKEY);
        assert_eq!(signer.signer_key().as_str(), PETER_SKEY);
        let mut note = Note::new(TEXT).unwrap();
        note.sign(&signer).unwrap();
        assert_eq!(note.to_string(), format!("{TEXT}\n{PETER_SIG}"));
        // Re-signing replaces, not duplicates.
        note.sign(&signer).unwrap();
        assert_eq!(note.signatures().len(), 1);
    }

    #[test]
    fn mangled_keys_are_rejected() {
        // As Go's TestNewVerifier/TestNewSigner: every proper substring and every byte bumped.
        for key in [PETER_VKEY, PETER_SKEY] {
            let parse = |k: &str| {
                if key == PETER_VKEY {
                    Ed25519Verifier::from_verifier_key(k).is_ok()
                } else {
                    Ed25519Signer::from_signer_key(k).is_ok()
                }
            };
            assert!(parse(key));
            let b = key.as_bytes();
            for i in 0..=b.len() {
                for j in i + 1..=b.len() {
                    if (i, j) != (0, b.len()) {
                        let s = String::from_utf8_lossy(&b[i..j]);
                        assert!(!parse(&s), "{s}");
                    }
                }
            }
            for i in 0..b.len() {
                let mut m = b.to_vec();
                m[i] = m[i].wrapping_add(1);
                let s = String::from_utf8_lossy(&m);
                assert!(!parse(&s), "{s}");
            }
        }
        // Go's: wrong-length key and unknown algorithm, each with a matching key hash.
        assert!(
            Ed25519Verifier::from_verifier_key(
                "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
            )
            .is_err()
        );
        assert!(
            Verifier::from_verifier_key("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW").is_err()
        );
        // Uppercase hex is not the canonical form.
        assert!(
            Ed25519Verifier::from_verifier_key("PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
                .is_err()
        );
    }

    #[test]
    fn open_follows_go() {
        let peter = Ed25519Verifier::from_verifier_key(PETER_VKEY).unwrap();
        let enoch = Ed25519Verifier::from_verifier_key(ENOCH_VKEY).unwrap();
        let msg = format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}");

        let n = Note::open(msg.as_bytes(), &[&peter]).unwrap();
        assert_eq!(n.text, TEXT);
        assert_eq!(n.verified.len(), 1);
        assert_eq!(n.verified[0].name, "PeterNeumann");
        assert_eq!(n.verified[0].key_id, KeyId(0xc74f20a3));
        assert_eq!(n.unverified.len(), 1);
        assert_eq!(n.unverified[0].key_id, KeyId(0xaf0cfe78));

        let n = Note::open(msg.as_bytes(), &[&peter, &enoch]).unwrap();
        assert_eq!(n.verified.len(), 2);
        assert!(n.unverified.is_empty());

        assert!(matches!(Note::open(msg.as_bytes(), &[]), Err(Error::UnverifiedNote)));
        assert!(matches!(
            Note::open(format!("{TEXT}\n{ENOCH_SIG}").as_bytes(), &[&enoch, &peter, &enoch]),
            Err(Error::AmbiguousKey { .. })
        ));
        Note::open(format!("{TEXT}\n{PETER_SIG}").as_bytes(), &[&enoch, &peter, &enoch]).unwrap();

        // Too many signatures.
        let many = format!("{TEXT}\n{}", PETER_SIG.repeat(MAX_SIGNATURES + 1));
        assert!(matches!(Note::open(many.as_bytes(), &[&peter]), Err(Error::Malformed(ParseError::Note(_)))));
        // A known key's bad signature rejects the note.
        let bad = format!("{TEXT}\n{}ABCD{}", &PETER_SIG[..60], &PETER_SIG[60..]);
        assert!(matches!(Note::open(bad.as_bytes(), &[&peter]), Err(Error::InvalidSignature { .. })));
        // Repeated signatures: verified once, unverified de-duplicated.
        let enoch_bad = format!("{}ABCD{}", &ENOCH_SIG[..60], &ENOCH_SIG[60..]);
        let dup = format!("{TEXT}\n{PETER_SIG}{PETER_SIG}{ENOCH_SIG}{ENOCH_SIG}{enoch_bad}");
        let n = Note::open(dup.as_bytes(), &[&peter]).unwrap();
        assert_eq!(n.verified.len(), 1);
        assert_eq!(n.unverified.len(), 2);

        let bad_msgs = [
            TEXT.to_owned(),
            format!("{TEXT}\n"),
            format!("{TEXT}\n{}", &PETER_SIG[..PETER_SIG.len() - 1]),
            format!("\x01{TEXT}\n{PETER_SIG}"),
            format!(
                "{TEXT}\n— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
            ),
            format!("{TEXT}\n{PETER_SIG}Unexpected line.\n"),
            format!("{TEXT}\n{PETER_SIG}\n"),
            format!(
                "{TEXT}\n- PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
            ),
            format!("{TEXT}\n— PeterNeumann x08go\n"),
            format!(
                "{TEXT}\n— PeterNeumann  x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
            ),
        ];
        for msg in &bad_msgs {
            assert!(
                matches!(Note::open(msg.as_bytes(), &[&peter]), Err(Error::Malformed(ParseError::Note(_)))),
                "{msg:?}"
            );
        }
        let mut invalid_utf8 = b"\xff".to_vec();
        invalid_utf8.extend_from_slice(format!("{TEXT}\n{PETER_SIG}").as_bytes());
        assert!(Note::parse(&invalid_utf8).is_err());
    }

    #[test]
    fn generated_keys_round_trip() {
        let mut rng = rng();
        let signer = Ed25519Signer::generate("example.com/log", &mut rng).unwrap();
        let again = Ed25519Signer::from_signer_key(&signer.signer_key()).unwrap();
        assert_eq!(again.verifier_key(), signer.verifier_key());
        let verifier = Verifier::from_verifier_key(&signer.verifier_key()).unwrap();
        assert_eq!(verifier, Verifier::Ed25519(signer.verifier()));
        let mut note = Note::new("hi\n").unwrap();
        note.sign(&signer).unwrap();
        let opened = Note::open(note.to_string().as_bytes(), &[&verifier]).unwrap();
        assert_eq!(opened.text, "hi\n");
        assert!(!format!("{signer:?}").contains(signer.signer_key().as_str()));
        assert!(Ed25519Signer::generate("bad name", &mut rng).is_err());
        assert!(Ed25519Signer::generate("a+b", &mut rng).is_err());
        assert!(Ed25519Signer::generate("", &mut rng).is_err());
        assert!(Note::new("no newline").is_err());
        assert!(Note::new("tab\there\n").is_err());
    }

    #[test]
    fn cosignatures() {
        let mut rng = rng();
        let log = Ed25519Signer::generate("example.com/log", &mut rng).unwrap();
        let witness = CosignatureSigner::generate("witness.example/w1", &mut rng).unwrap();
        let text = "example.com/log\n5\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        let mut note = Note::new(text).unwrap();
        note.sign(&log).unwrap();
        let cosig = witness.cosign(text, 1_679_315_147).unwrap();
        assert_eq!(cosig.signature.len(), 72);
        assert_eq!(&cosig.signature[..8], &1_679_315_147u64.to_be_bytes());
        note.add_signature(cosig.clone()).unwrap();

        let v = witness.verifier();
        assert_eq!(v.verify_timestamp(text, &cosig.signature), Some(1_679_315_147));
        assert_eq!(
            v.verify_timestamp("other\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n", &cosig.signature),
            None
        );
        let parsed = Verifier::from_verifier_key(&witness.verifier_key()).unwrap();
        assert!(matches!(parsed, Verifier::Cosignature(_)));
        let opened = Note::open(note.to_string().as_bytes(), &[&log.verifier(), &parsed]).unwrap();
        assert_eq!(opened.verified.len(), 2);

        // The same Ed25519 key as a plain note key has a different key ID: no confusion.
        let seed = [9u8; 32];
        let as_log = Ed25519Signer::from_seed("w", &seed).unwrap();
        let as_witness = CosignatureSigner::from_seed("w", &seed).unwrap();
        assert_ne!(NoteSigner::key_id(&as_log), as_witness.key_id());
        // Go-style 0x01 signer keys are accepted for cosigning, with the 0x04 key ID.
        let from_go = CosignatureSigner::from_signer_key(&as_log.signer_key()).unwrap();
        assert_eq!(from_go.verifier_key(), as_witness.verifier_key());
        let round = CosignatureSigner::from_signer_key(&as_witness.signer_key()).unwrap();
        assert_eq!(round.verifier_key(), as_witness.verifier_key());

        assert!(witness.cosign("not a checkpoint\n", 1).is_err());
        assert!(witness.cosign(text, 1 << 63).is_err());
        let mut tampered = cosig.signature.clone();
        tampered[7] ^= 1;
        assert_eq!(v.verify_timestamp(text, &tampered), None);
    }
}
