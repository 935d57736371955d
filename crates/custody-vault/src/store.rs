//! The storage traits the vault is written against, and what they store.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use custody_core::{CollectionName, Jurisdiction, PrincipalId, PrincipalRecord, RecordId, SubjectId};
use custody_crypto::BlindIndexTerm;

use crate::VaultError;

/// A field as stored: plaintext JSON for unencrypted classes, sealed bytes otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredValue {
    /// JSON bytes of a value whose class is stored in the clear.
    Plain(Vec<u8>),
    /// A ciphertext from [`custody_crypto::seal_field`].
    Sealed(Vec<u8>),
}

/// A record as stored. Field classes are not stored: they come from the schema in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRecord {
    /// The end user the record is about.
    pub subject: SubjectId,
    /// The jurisdiction the record belongs to.
    pub jurisdiction: Jurisdiction,
    /// The DEK version its sealed fields use.
    pub key_version: u32,
    /// Field values by name.
    pub fields: BTreeMap<String, StoredValue>,
    /// Blind-index terms of searchable fields, kept so an update or delete can remove the
    /// old index entries without decrypting anything.
    pub terms: BTreeMap<String, BlindIndexTerm>,
}

/// A subject's DEK, wrapped by the KEK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// The DEK's version.
    pub version: u32,
    /// The wrapped bytes.
    pub wrapped: Vec<u8>,
}

/// What the key store knows about a subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    /// The subject has a live key.
    Active(WrappedKey),
    /// The subject's key was destroyed (crypto-shredded) at this version.
    Destroyed {
        /// The destroyed key's version.
        version: u32,
    },
}

/// A record to create in bulk: its id, the stored record, and its blind-index entries.
pub type NewStoredRecord = (RecordId, StoredRecord, Vec<(String, BlindIndexTerm)>);

/// Record storage: opaque stored records plus blind-index entries.
pub trait RecordStore: Send + Sync {
    /// One record.
    ///
    /// # Errors
    /// [`VaultError::Storage`] or [`VaultError::Corrupt`].
    fn get(&self, collection: &CollectionName, id: &RecordId) -> Result<Option<StoredRecord>, VaultError>;

    /// Writes a record and adjusts its index entries in one durable transaction.
    /// With `must_be_new`, fails with [`VaultError::AlreadyExists`] if the id is taken.
    ///
    /// # Errors
    /// [`VaultError::Storage`] or [`VaultError::AlreadyExists`].
    fn put(
        &self,
        collection: &CollectionName,
        id: &RecordId,
        record: &StoredRecord,
        must_be_new: bool,
        index_remove: &[(String, BlindIndexTerm)],
        index_add: &[(String, BlindIndexTerm)],
    ) -> Result<(), VaultError>;

    /// Creates several new records of one collection, with their index entries, in one
    /// durable transaction: all or none. Fails with [`VaultError::AlreadyExists`] naming the
    /// first id that is taken. The default writes them one by one (not atomic); stores that
    /// can, override it.
    ///
    /// # Errors
    /// [`VaultError::Storage`] or [`VaultError::AlreadyExists`].
    fn put_new_many(&self, collection: &CollectionName, records: &[NewStoredRecord]) -> Result<(), VaultError> {
        for (id, record, add) in records {
            self.put(collection, id, record, true, &[], add)?;
        }
        Ok(())
    }

    /// Deletes a record and its index entries; false if it did not exist.
    ///
    /// # Errors
    /// [`VaultError::Storage`].
    fn delete(
        &self,
        collection: &CollectionName,
        id: &RecordId,
        index_remove: &[(String, BlindIndexTerm)],
    ) -> Result<bool, VaultError>;

    /// Ids of records whose `field` has index term `term`, at most `limit`.
    ///
    /// # Errors
    /// [`VaultError::Storage`].
    fn search(
        &self,
        collection: &CollectionName,
        field: &str,
        term: &BlindIndexTerm,
        limit: usize,
    ) -> Result<Vec<RecordId>, VaultError>;
}

/// Key storage, kept apart from record storage.
pub trait KeyStore: Send + Sync {
    /// The subject's key state, if any.
    ///
    /// # Errors
    /// [`VaultError::Storage`] or [`VaultError::Corrupt`].
    fn subject_key(&self, subject: &SubjectId) -> Result<Option<KeyState>, VaultError>;

    /// Stores `key` unless the subject already has a state; returns the state in force.
    ///
    /// # Errors
    /// [`VaultError::Storage`].
    fn insert_subject_key(&self, subject: &SubjectId, key: &WrappedKey) -> Result<KeyState, VaultError>;

    /// Stores each key unless its subject already has a state, in one durable transaction where
    /// the store can; returns the state in force for each, in order.
    ///
    /// # Errors
    /// [`VaultError::Storage`].
    fn insert_subject_keys(&self, keys: &[(SubjectId, WrappedKey)]) -> Result<Vec<KeyState>, VaultError> {
        keys.iter().map(|(s, k)| self.insert_subject_key(s, k)).collect()
    }

    /// Destroys the subject's key, leaving a tombstone; false if there was none.
    ///
    /// # Errors
    /// [`VaultError::Storage`].
    fn destroy_subject_key(&self, subject: &SubjectId) -> Result<bool, VaultError>;

    /// A deployment-wide wrapped key by name (blind-index key, pseudonym key).
    ///
    /// # Errors
    /// [`VaultError::Storage`].
    fn system_key(&self, name: &str) -> Result<Option<Vec<u8>>, VaultError>;

    /// Stores a deployment-wide wrapped key unless one exists; returns the one in force.
    ///
    /// # Errors
    /// [`VaultError::Storage`].
    fn insert_system_key(&self, name: &str, wrapped: &[u8]) -> Result<Vec<u8>, VaultError>;
}

/// Registered principals.
pub trait PrincipalStore: Send + Sync {
    /// One principal.
    ///
    /// # Errors
    /// [`VaultError::Storage`] or [`VaultError::Corrupt`].
    fn principal(&self, id: &PrincipalId) -> Result<Option<PrincipalRecord>, VaultError>;

    /// Inserts or replaces a principal.
    ///
    /// # Errors
    /// [`VaultError::Storage`].
    fn put_principal(&self, p: &PrincipalRecord) -> Result<(), VaultError>;

    /// Every principal, ordered by id.
    ///
    /// # Errors
    /// [`VaultError::Storage`] or [`VaultError::Corrupt`].
    fn principals(&self) -> Result<Vec<PrincipalRecord>, VaultError>;
}
