//! Keyed hashes: blind indexes for equality search and pseudonyms for events.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

use custody_core::PseudonymId;

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so construction cannot fail for a 32-byte key.
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return [0u8; 32];
    };
    for p in parts {
        mac.update(&(p.len() as u32).to_be_bytes());
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// A blind-index term: what is stored and looked up instead of a searchable plaintext.
pub type BlindIndexTerm = [u8; 32];

/// The provider's key for blind indexes. One per deployment, so a search finds matches
/// across subjects; it never leaves the provider and is stored wrapped by the KEK.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct BlindIndexKey([u8; 32]);

impl BlindIndexKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The term for `value` of `collection.field`. Values are compared as given
    /// (callers normalise, e.g. lowercase emails, before indexing and searching alike).
    pub fn term(&self, collection: &str, field: &str, value: &[u8]) -> BlindIndexTerm {
        hmac(&self.0, &[b"custody/blind-index/v1", collection.as_bytes(), field.as_bytes(), value])
    }
}

/// The key for pseudonyms of subjects and records in events and the log.
///
/// A subject who is told their pseudonym (or an auditor holding this key) can find their own
/// history; nobody else can link log entries to people.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PseudonymKey([u8; 32]);

impl PseudonymKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The pseudonym of a subject.
    pub fn subject(&self, subject: &str) -> PseudonymId {
        self.pseudonym(b"subject", subject.as_bytes())
    }

    /// The pseudonym of a record (collection and id).
    pub fn record(&self, collection: &str, record: &str) -> PseudonymId {
        let full = [collection.as_bytes(), b"/", record.as_bytes()].concat();
        self.pseudonym(b"record", &full)
    }

    fn pseudonym(&self, kind: &[u8], value: &[u8]) -> PseudonymId {
        let h = hmac(&self.0, &[b"custody/pseudonym/v1", kind, value]);
        let mut s = String::with_capacity(32);
        for b in h.iter().take(16) {
            s.push_str(&format!("{b:02x}"));
        }
        PseudonymId(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_are_keyed_and_scoped() {
        let a = BlindIndexKey::from_bytes([1; 32]);
        let b = BlindIndexKey::from_bytes([2; 32]);
        assert_eq!(a.term("p", "email", b"x"), a.term("p", "email", b"x"));
        assert_ne!(a.term("p", "email", b"x"), b.term("p", "email", b"x"));
        assert_ne!(a.term("p", "email", b"x"), a.term("p", "phone", b"x"));
    }

    #[test]
    fn pseudonyms_are_stable_and_distinct() {
        let k = PseudonymKey::from_bytes([3; 32]);
        assert_eq!(k.subject("alice"), k.subject("alice"));
        assert_ne!(k.subject("alice"), k.subject("bob"));
        assert_ne!(k.subject("alice").0, k.record("x", "alice").0);
        assert_eq!(k.subject("alice").0.len(), 32);
    }
}
