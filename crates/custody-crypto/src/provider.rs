//! Key providers: who holds the key-encryption key.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use crate::aead::{open_raw, seal_raw};
use crate::{CryptoError, DataKey};

/// Holds the provider's key-encryption keys (KEKs) and wraps data keys with them.
///
/// The KEKs never leave the provider: callers see only wrapped bytes. `context` is bound as
/// associated data (for a DEK: the subject id and key version), so a wrapped key cannot be
/// swapped onto another subject. A provider holds one or more KEK *versions*: new wraps use
/// the current (highest) one, and wrapped bytes name the version that wrapped them, so while
/// a rotation rewraps every DEK both the old and the new version unwrap.
pub trait KeyProvider: Send + Sync {
    /// A short name for logs and events (e.g. `file`, `pkcs11`).
    fn name(&self) -> &str;

    /// Wraps `key` for `context` under the current KEK.
    ///
    /// # Errors
    /// Provider-specific failures (an HSM being unreachable, for instance).
    fn wrap(&self, context: &[u8], key: &DataKey) -> Result<Vec<u8>, CryptoError>;

    /// Unwraps a key wrapped for `context`, under whichever KEK version wrapped it.
    ///
    /// # Errors
    /// [`CryptoError::Integrity`] if the bytes were altered or wrapped for another context;
    /// [`CryptoError::UnknownKek`] if the KEK that wrapped them was destroyed.
    fn unwrap(&self, context: &[u8], wrapped: &[u8]) -> Result<DataKey, CryptoError>;

    /// The version of the KEK new wraps use.
    fn current_kek(&self) -> u32;

    /// Every KEK version the provider still holds, ascending.
    fn kek_versions(&self) -> Vec<u32>;

    /// The KEK version that wrapped `wrapped` (read from its header; nothing is decrypted).
    ///
    /// # Errors
    /// [`CryptoError::Malformed`] if the bytes are not a wrapped key.
    fn kek_of(&self, wrapped: &[u8]) -> Result<u32, CryptoError>;

    /// Creates a new KEK version and makes it current; older versions still unwrap.
    ///
    /// # Errors
    /// The new key could not be made durable.
    fn new_kek(&self) -> Result<u32, CryptoError>;

    /// Destroys an old KEK version for good: whatever it wrapped, wherever a copy lies
    /// (backups, free pages of the key store), no longer unwraps.
    ///
    /// # Errors
    /// [`CryptoError::KekInUse`] for the current version, [`CryptoError::UnknownKek`].
    fn destroy_kek(&self, version: u32) -> Result<(), CryptoError>;

    /// Unwraps and wraps again under the current KEK (a rotation step).
    ///
    /// # Errors
    /// As [`KeyProvider::unwrap`] and [`KeyProvider::wrap`].
    fn rewrap(&self, context: &[u8], wrapped: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let key = self.unwrap(context, wrapped)?;
        self.wrap(context, &key)
    }
}

/// Format byte of a wrap under KEK version 1: exactly the original, unversioned format.
const WRAP_V1: u8 = 1;
/// Format byte of a wrap naming its KEK version: `2 ‖ version (u32 BE) ‖ sealed`.
const WRAP_VERSIONED: u8 = 2;

/// The embedded default: 32-byte KEKs in files of mode 0600, outside record storage.
///
/// Version 1 lives at the configured path (`keys/kek`); version `n` ≥ 2 beside it at
/// `keys/kek.n`. A rotation adds a file; retiring a version overwrites and removes its file.
pub struct FileKeyProvider {
    keks: RwLock<BTreeMap<u32, DataKey>>,
    path: PathBuf,
}

impl std::fmt::Debug for FileKeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileKeyProvider").field("path", &self.path).finish_non_exhaustive()
    }
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
}

impl FileKeyProvider {
    /// Opens the key files at `path` (and its later versions), creating version 1 with a
    /// fresh key if no version exists.
    ///
    /// # Errors
    /// A file cannot be read or created, is not 32 bytes, or is readable by group/others.
    pub fn open_or_create(path: &Path) -> Result<Self, CryptoError> {
        if Self::exists(path) { Self::open(path) } else { Self::create(path) }
    }

    /// Whether any KEK version exists at `path` (a fresh data dir has none).
    pub fn exists(path: &Path) -> bool {
        path.exists() || Self::later_versions(path).is_ok_and(|v| !v.is_empty())
    }

    /// The file of KEK version `version`.
    pub fn version_path(path: &Path, version: u32) -> PathBuf {
        if version <= 1 {
            path.to_path_buf()
        } else {
            let mut name = path.file_name().unwrap_or_default().to_os_string();
            name.push(format!(".{version}"));
            path.with_file_name(name)
        }
    }

    fn later_versions(path: &Path) -> Result<Vec<u32>, CryptoError> {
        let io = |source| CryptoError::KeyFile { path: path.display().to_string(), source };
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let base = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let mut out = Vec::new();
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(e)),
        };
        for entry in entries {
            let name = entry.map_err(io)?.file_name();
            let Some(v) = name.to_str().and_then(|n| n.strip_prefix(base)).and_then(|n| n.strip_prefix('.')) else {
                continue;
            };
            if let Ok(v) = v.parse::<u32>()
                && v >= 2
            {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Creates a new key file for version 1 (mode 0600, fsynced). Refuses to overwrite.
    ///
    /// # Errors
    /// The file exists or cannot be written.
    pub fn create(path: &Path) -> Result<Self, CryptoError> {
        let kek = write_key_file(path)?;
        Ok(Self { keks: RwLock::new(BTreeMap::from([(1, kek)])), path: path.to_path_buf() })
    }

    /// Opens the existing KEK versions at `path`.
    ///
    /// # Errors
    /// None exists, or one is unreadable, not 32 bytes, or (on Unix) accessible to group or
    /// others.
    pub fn open(path: &Path) -> Result<Self, CryptoError> {
        let mut keks = BTreeMap::new();
        if path.exists() {
            keks.insert(1, read_key_file(path)?);
        }
        for v in Self::later_versions(path)? {
            keks.insert(v, read_key_file(&Self::version_path(path, v))?);
        }
        if keks.is_empty() {
            return Err(CryptoError::KeyFile {
                path: path.display().to_string(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        Ok(Self { keks: RwLock::new(keks), path: path.to_path_buf() })
    }

    fn aad_v1(context: &[u8]) -> Vec<u8> {
        [b"custody/wrap/v1".as_slice(), context].concat()
    }

    fn aad_versioned(version: u32, context: &[u8]) -> Vec<u8> {
        [b"custody/wrap/v2".as_slice(), &version.to_be_bytes(), context].concat()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u32, DataKey>> {
        self.keks.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn write_key_file(path: &Path) -> Result<DataKey, CryptoError> {
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
    sync_dir(path);
    Ok(kek)
}

fn read_key_file(path: &Path) -> Result<DataKey, CryptoError> {
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
    let mut bytes = fs::read(path).map_err(io)?;
    let arr: Result<[u8; 32], _> = bytes.as_slice().try_into();
    let len = bytes.len();
    zeroize::Zeroize::zeroize(&mut bytes);
    let arr = arr.map_err(|_| CryptoError::KeyFileInvalid {
        path: shown.clone(),
        reason: format!("it holds {len} bytes, a key is 32"),
    })?;
    Ok(DataKey::from_bytes(arr))
}

impl KeyProvider for FileKeyProvider {
    fn name(&self) -> &str {
        "file"
    }

    fn wrap(&self, context: &[u8], key: &DataKey) -> Result<Vec<u8>, CryptoError> {
        let keks = self.read();
        let (&version, kek) = keks.last_key_value().ok_or(CryptoError::UnknownKek(0))?;
        if version == 1 {
            return Ok(seal_raw(kek, &Self::aad_v1(context), key.as_bytes()));
        }
        let sealed = seal_raw(kek, &Self::aad_versioned(version, context), key.as_bytes());
        Ok([&[WRAP_VERSIONED][..], &version.to_be_bytes(), &sealed].concat())
    }

    fn unwrap(&self, context: &[u8], wrapped: &[u8]) -> Result<DataKey, CryptoError> {
        let version = self.kek_of(wrapped)?;
        let keks = self.read();
        let kek = keks.get(&version).ok_or(CryptoError::UnknownKek(version))?;
        let mut raw = if version == 1 {
            open_raw(kek, &Self::aad_v1(context), wrapped)?
        } else {
            open_raw(kek, &Self::aad_versioned(version, context), wrapped.get(5..).unwrap_or_default())?
        };
        let arr: Result<[u8; 32], _> = raw.as_slice().try_into();
        zeroize::Zeroize::zeroize(&mut raw);
        arr.map(DataKey::from_bytes).map_err(|_| CryptoError::Malformed("wrapped key is not 32 bytes"))
    }

    fn current_kek(&self) -> u32 {
        self.read().last_key_value().map_or(0, |(v, _)| *v)
    }

    fn kek_versions(&self) -> Vec<u32> {
        self.read().keys().copied().collect()
    }

    fn kek_of(&self, wrapped: &[u8]) -> Result<u32, CryptoError> {
        match wrapped.split_first() {
            Some((&WRAP_V1, _)) => Ok(1),
            Some((&WRAP_VERSIONED, rest)) => {
                let v = rest.first_chunk::<4>().ok_or(CryptoError::Malformed("truncated KEK version"))?;
                Ok(u32::from_be_bytes(*v))
            }
            Some(_) => Err(CryptoError::Malformed("unknown wrapped-key format")),
            None => Err(CryptoError::Malformed("empty")),
        }
    }

    fn new_kek(&self) -> Result<u32, CryptoError> {
        let mut keks = self.keks.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let on_disk = Self::later_versions(&self.path)?.into_iter().max().unwrap_or(1);
        let held = keks.last_key_value().map_or(1, |(v, _)| *v);
        let version = on_disk.max(held) + 1;
        let kek = write_key_file(&Self::version_path(&self.path, version))?;
        keks.insert(version, kek);
        Ok(version)
    }

    fn destroy_kek(&self, version: u32) -> Result<(), CryptoError> {
        let mut keks = self.keks.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if keks.last_key_value().map(|(v, _)| *v) == Some(version) {
            return Err(CryptoError::KekInUse(version));
        }
        if keks.remove(&version).is_none() {
            return Err(CryptoError::UnknownKek(version));
        }
        let path = Self::version_path(&self.path, version);
        let io = |source| CryptoError::KeyFile { path: path.display().to_string(), source };
        // Overwrite before unlinking, so the key is not left in the file's old blocks.
        let mut f = fs::OpenOptions::new().write(true).open(&path).map_err(io)?;
        f.write_all(&[0u8; 32]).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        fs::remove_file(&path).map_err(io)?;
        sync_dir(&path);
        Ok(())
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

    #[test]
    fn rotation_keeps_old_wraps_readable_until_the_old_kek_is_destroyed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kek");
        let a = FileKeyProvider::create(&p).unwrap();
        let dek = DataKey::generate();
        let old = a.wrap(b"s", &dek).unwrap();
        assert_eq!(a.kek_of(&old).unwrap(), 1);
        assert_eq!(a.new_kek().unwrap(), 2);
        let new = a.rewrap(b"s", &old).unwrap();
        assert_eq!(a.kek_of(&new).unwrap(), 2);
        assert!(matches!(a.unwrap(b"t", &new), Err(CryptoError::Integrity)));
        let reopened = FileKeyProvider::open(&p).unwrap();
        assert_eq!(reopened.kek_versions(), vec![1, 2]);
        assert_eq!(reopened.unwrap(b"s", &old).unwrap().as_bytes(), dek.as_bytes());
        assert!(matches!(a.destroy_kek(2), Err(CryptoError::KekInUse(2))));
        a.destroy_kek(1).unwrap();
        assert!(!p.exists());
        assert!(matches!(a.unwrap(b"s", &old), Err(CryptoError::UnknownKek(1))));
        assert_eq!(a.unwrap(b"s", &new).unwrap().as_bytes(), dek.as_bytes());
        let after = FileKeyProvider::open(&p).unwrap();
        assert!(FileKeyProvider::exists(&p));
        assert_eq!(after.kek_versions(), vec![2]);
        assert_eq!(after.new_kek().unwrap(), 3);
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
