//! Key providers: who holds the key-encryption key.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::aead::{open_raw, seal_raw};
use crate::{CryptoError, DataKey};

/// Holds the provider's key-encryption key (KEK) and wraps data keys with it.
///
/// The KEK never leaves the provider: callers see only wrapped bytes. `context` is bound as
/// associated data (for a DEK: the subject id and key version), so a wrapped key cannot be
/// swapped onto another subject.
pub trait KeyProvider: Send + Sync {
    /// A short name for logs and events (e.g. `file`, `pkcs11`).
    fn name(&self) -> &str;

    /// Wraps `key` for `context`.
    ///
    /// # Errors
    /// Provider-specific failures (an HSM being unreachable, for instance).
    fn wrap(&self, context: &[u8], key: &DataKey) -> Result<Vec<u8>, CryptoError>;

    /// Unwraps a key wrapped for `context`.
    ///
    /// # Errors
    /// [`CryptoError::Integrity`] if the bytes were altered or wrapped for another context.
    fn unwrap(&self, context: &[u8], wrapped: &[u8]) -> Result<DataKey, CryptoError>;
}

/// The embedded default: a 32-byte KEK in a file of mode 0600, outside record storage.
pub struct FileKeyProvider {
    kek: DataKey,
    path: PathBuf,
}

impl std::fmt::Debug for FileKeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileKeyProvider").field("path", &self.path).finish_non_exhaustive()
    }
}

impl FileKeyProvider {
    /// Opens the key file at `path`, creating it with a fresh key if it does not exist.
    ///
    /// # Errors
    /// The file cannot be read or created, is not 32 bytes, or is readable by group/others.
    pub fn open_or_create(path: &Path) -> Result<Self, CryptoError> {
        if path.exists() { Self::open(path) } else { Self::create(path) }
    }

    /// Creates a new key file (mode 0600, fsynced). Refuses to overwrite an existing one.
    ///
    /// # Errors
    /// The file exists or cannot be written.
    pub fn create(path: &Path) -> Result<Self, CryptoError> {
        let io = |source| CryptoError::KeyFile { path: path.display().to_string(), source };
        let kek = DataKey::generate();
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(io)?;
        f.write_all(kek.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        if let Some(dir) = path.parent()
            && let Ok(d) = fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(Self { kek, path: path.to_path_buf() })
    }

    /// Opens an existing key file.
    ///
    /// # Errors
    /// Unreadable, not 32 bytes, or (on Unix) accessible to group or others.
    pub fn open(path: &Path) -> Result<Self, CryptoError> {
        let shown = path.display().to_string();
        let io = |source| CryptoError::KeyFile { path: shown.clone(), source };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(path).map_err(io)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(CryptoError::KeyFileInvalid {
                    path: shown.clone(),
                    reason: format!("mode is {:o}; it must be 600 (chmod 600 the file)", mode & 0o777),
                });
            }
        }
        let bytes = fs::read(path).map_err(io)?;
        let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| CryptoError::KeyFileInvalid {
            path: shown.clone(),
            reason: format!("it holds {} bytes, a key is 32", bytes.len()),
        })?;
        Ok(Self { kek: DataKey::from_bytes(arr), path: path.to_path_buf() })
    }

    fn aad(context: &[u8]) -> Vec<u8> {
        [b"custody/wrap/v1".as_slice(), context].concat()
    }
}

impl KeyProvider for FileKeyProvider {
    fn name(&self) -> &str {
        "file"
    }

    fn wrap(&self, context: &[u8], key: &DataKey) -> Result<Vec<u8>, CryptoError> {
        Ok(seal_raw(&self.kek, &Self::aad(context), key.as_bytes()))
    }

    fn unwrap(&self, context: &[u8], wrapped: &[u8]) -> Result<DataKey, CryptoError> {
        let mut raw = open_raw(&self.kek, &Self::aad(context), wrapped)?;
        let arr: Result<[u8; 32], _> = raw.as_slice().try_into();
        zeroize::Zeroize::zeroize(&mut raw);
        arr.map(DataKey::from_bytes).map_err(|_| CryptoError::Malformed("wrapped key is not 32 bytes"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn key_file_is_private_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kek");
        let a = FileKeyProvider::create(&p).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let dek = DataKey::generate();
        let w = a.wrap(b"subject-1", &dek).unwrap();
        let b = FileKeyProvider::open(&p).unwrap();
        assert_eq!(b.unwrap(b"subject-1", &w).unwrap().as_bytes(), dek.as_bytes());
        assert!(matches!(b.unwrap(b"subject-2", &w), Err(CryptoError::Integrity)));
        assert!(FileKeyProvider::create(&p).is_err(), "never overwrites a KEK");
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_key_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kek");
        FileKeyProvider::create(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(FileKeyProvider::open(&p), Err(CryptoError::KeyFileInvalid { .. })));
    }
}
