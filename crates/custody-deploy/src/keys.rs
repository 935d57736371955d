//! Ed25519 signing keys as files: the provider's build key and reviewers' keys.

use std::io::Write;
use std::path::Path;
use zeroize::Zeroizing;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::DeployError;

/// Reads the key at `path` (base64 of the 32-byte seed), or creates it with mode 0600.
///
/// # Errors
/// [`DeployError::Key`] for an unreadable or malformed file, or one others may read.
pub fn load_or_create(path: &Path) -> Result<SigningKey, DeployError> {
    let err = |m: String| DeployError::Key(format!("`{}`: {m}", path.display()));
    match std::fs::read_to_string(path) {
        Ok(text) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(path).map_err(|e| err(e.to_string()))?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(err(format!("mode {:o} lets others read the key; chmod 600 it", mode & 0o777)));
                }
            }
            let text = Zeroizing::new(text);
            let seed = Zeroizing::new(STANDARD.decode(text.trim()).map_err(|_| err("not base64".into()))?);
            let seed: Zeroizing<[u8; 32]> =
                Zeroizing::new(seed.as_slice().try_into().map_err(|_| err("not a 32-byte Ed25519 seed".into()))?);
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            }
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(path).map_err(|e| err(e.to_string()))?;
            let encoded = Zeroizing::new(format!("{}\n", STANDARD.encode(Zeroizing::new(key.to_bytes()).as_slice())));
            f.write_all(encoded.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| err(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// A public key as standard base64, the form a reviewer registers (`--attr review_key=…`).
pub fn public_b64(key: &VerifyingKey) -> String {
    STANDARD.encode(key.as_bytes())
}

/// Parses a base64 public key.
///
/// # Errors
/// [`DeployError::Key`] if it is not 32 bytes of base64 or not a valid point.
pub fn parse_public(b64: &str) -> Result<VerifyingKey, DeployError> {
    let bytes = STANDARD.decode(b64.trim()).map_err(|_| DeployError::Key("public key is not base64".into()))?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| DeployError::Key("public key is not 32 bytes".into()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| DeployError::Key("not an Ed25519 public key".into()))
}
