//! DSSE envelopes ([spec](https://github.com/secure-systems-lab/dsse/blob/master/envelope.md)):
//! a payload, its type, and signatures over the pre-authentication encoding (PAE) of both.
//!
//! Written by hand: the envelope is four fields and PAE is one line of the spec, while the
//! Rust DSSE crates pull in a whole signing framework. Signatures are Ed25519 over
//! `PAE(payloadType, payload)`; payload and signatures are standard base64 with padding.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::DeployError;

/// The payload type of an in-toto statement.
pub const IN_TOTO: &str = "application/vnd.in-toto+json";

/// A DSSE envelope as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Base64 of the payload bytes.
    pub payload: String,
    /// What the payload is, e.g. [`IN_TOTO`].
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// One or more signatures over `PAE(payloadType, payload)`.
    pub signatures: Vec<EnvelopeSignature>,
}

/// One signature in an [`Envelope`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    /// Which key signed; matched against the verifier's key ids.
    pub keyid: String,
    /// Base64 of the Ed25519 signature.
    pub sig: String,
}

/// `PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths in ASCII
/// decimal bytes.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    out.extend_from_slice(format!("DSSEv1 {} {} {} ", payload_type.len(), payload_type, payload.len()).as_bytes());
    out.extend_from_slice(payload);
    out
}

/// Signs `payload` of `payload_type` with `key`, naming it `keyid`.
pub fn sign(key: &SigningKey, keyid: &str, payload_type: &str, payload: &[u8]) -> Envelope {
    let sig = key.sign(&pae(payload_type, payload));
    Envelope {
        payload: STANDARD.encode(payload),
        payload_type: payload_type.to_owned(),
        signatures: vec![EnvelopeSignature { keyid: keyid.to_owned(), sig: STANDARD.encode(sig.to_bytes()) }],
    }
}

impl Envelope {
    /// The payload bytes, if the signature by `keyid` verifies under `key`.
    ///
    /// # Errors
    /// [`DeployError::Envelope`] naming what is wrong: bad base64, no signature by `keyid`,
    /// or a signature that does not verify.
    pub fn verify(&self, keyid: &str, key: &VerifyingKey) -> Result<Vec<u8>, DeployError> {
        let bad = |m: &str| DeployError::Envelope(m.to_owned());
        let payload = STANDARD.decode(&self.payload).map_err(|_| bad("payload is not base64"))?;
        let sig = self
            .signatures
            .iter()
            .find(|s| s.keyid == keyid)
            .ok_or_else(|| DeployError::Envelope(format!("no signature by key `{keyid}`")))?;
        let bytes = STANDARD.decode(&sig.sig).map_err(|_| bad("signature is not base64"))?;
        let sig = Signature::from_slice(&bytes).map_err(|_| bad("signature is not 64 bytes"))?;
        key.verify(&pae(&self.payload_type, &payload), &sig)
            .map_err(|_| DeployError::Envelope(format!("signature by `{keyid}` does not verify")))?;
        Ok(payload)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// The example from the DSSE spec's protocol document.
    #[test]
    fn pae_matches_the_spec_example() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }

    #[test]
    fn sign_verify_and_tamper() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let env = sign(&key, "builder", IN_TOTO, b"{\"a\":1}");
        assert_eq!(env.verify("builder", &key.verifying_key()).unwrap(), b"{\"a\":1}");
        assert!(env.verify("other", &key.verifying_key()).is_err());
        let mut changed = env.clone();
        changed.payload_type = "text/plain".into();
        assert!(changed.verify("builder", &key.verifying_key()).is_err());
        let mut changed = env;
        changed.payload = STANDARD.encode(b"{\"a\":2}");
        assert!(changed.verify("builder", &key.verifying_key()).is_err());
    }
}
