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

/// One rewrap of a KEK rotation: the subject, its wrapped DEK as read, and the same DEK
/// wrapped under the new KEK.
pub type Rewrap = (String, Vec<u8>, Vec<u8>);

/// Progress of a KEK rotation, stored in the key store so an interrupted rotation resumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationState {
    /// The KEK version every wrapped key is moved to.
    pub target: u32,
    /// The last subject whose key was handled; the scan resumes after it.
    pub cursor: Option<String>,
    /// Subject keys looked at so far.
    pub scanned: u64,
    /// Subject keys rewrapped so far.
    pub rewrapped: u64,
    /// The scan reached the last subject; what remains is verifying and retiring old KEKs.
    pub scanned_all: bool,
}

/// Record storage: opaque stored records plus blind-index entries.
pub trait RecordStore: Send + Sync {
    /// One record.
    ///
    /// # Errors
    /// [`VaultError::Erased`] for a tombstoned record, [`VaultError::Storage`] or
    /// [`VaultError::Corrupt`].
    fn get(&self, collection: &CollectionName, id: &RecordId) -> Result<Option<StoredRecord>, VaultError>;

    /// Several records, in order, in one read where the store can (a search's or batch
    /// read's records); `None` for an id with no record.
    ///
    /// # Errors
    /// As [`RecordStore::get`].
    fn get_many(&self, collection: &CollectionName, ids: &[RecordId]) -> Result<Vec<Option<StoredRecord>>, VaultError> {
        ids.iter().map(|id| self.get(collection, id)).collect()
    }

    /// Writes a record and adjusts its index entries in one durable transaction.
    /// With `must_be_new`, fails with [`VaultError::AlreadyExists`] if the id is taken, or
    /// [`VaultError::Erased`] if it names a tombstone.
    ///
    /// # Errors
    /// [`VaultError::Storage`], [`VaultError::AlreadyExists`] or [`VaultError::Erased`].
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

    /// The first of `ids` that names a live record of `collection` (tombstones do not count):
    /// the conflict check of a bulk create, in one read where the store can.
    ///
    /// # Errors
    /// [`VaultError::Storage`] or [`VaultError::Corrupt`].
    fn first_existing(&self, collection: &CollectionName, ids: &[&RecordId]) -> Result<Option<RecordId>, VaultError> {
        for id in ids {
            match self.get(collection, id) {
                Ok(Some(_)) => return Ok(Some((*id).clone())),
                Ok(None) | Err(VaultError::Erased(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
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

    /// The records about `subject`, as `(collection, id)`, at most `limit`. Tombstoned
    /// records are not listed.
    ///
    /// # Errors
    /// [`VaultError::Storage`] or [`VaultError::Corrupt`].
    fn subject_records(&self, subject: &SubjectId, limit: usize)
    -> Result<Vec<(CollectionName, RecordId)>, VaultError>;

    /// Replaces every record about `subject` by a tombstone (which keeps no field, term or
    /// subject) and removes their blind-index entries, in one durable transaction. Returns
    /// how many records were tombstoned; zero when run again.
    ///
    /// # Errors
    /// [`VaultError::Storage`] or [`VaultError::Corrupt`].
    fn tombstone_subject(&self, subject: &SubjectId) -> Result<u64, VaultError>;

    /// Up to `limit` records of `collection` with ids after `after` (exclusive), in id
    /// order: the scan an export makes, a page at a time so memory stays bounded.
    /// Tombstoned records are not listed.
    ///
    /// # Errors
    /// [`VaultError::Storage`] or [`VaultError::Corrupt`].
    fn scan(
        &self,
        collection: &CollectionName,
        after: Option<&RecordId>,
        limit: usize,
    ) -> Result<Vec<(RecordId, StoredRecord)>, VaultError>;

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

    /// The key states of several subjects, in order: one read where the store can, so a bulk
    /// create or a page of a scan does not pay a transaction per subject.
    ///
    /// # Errors
    /// [`VaultError::Storage`] or [`VaultError::Corrupt`].
    fn subject_keys(&self, subjects: &[&SubjectId]) -> Result<Vec<Option<KeyState>>, VaultError> {
        subjects.iter().map(|s| self.subject_key(s)).collect()
    }

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

    /// Up to `limit` subject key states after the subject `after` (exclusive), in id order:
    /// the scan a KEK rotation makes.
    ///
    /// # Errors
    /// [`VaultError::Storage`] or [`VaultError::Corrupt`].
    fn subject_keys_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<(String, KeyState)>, VaultError>;

    /// How many subjects have a key state (live or destroyed).
    ///
    /// # Errors
    /// [`VaultError::Storage`].
    fn subject_key_count(&self) -> Result<u64, VaultError>;

    /// One durable step of a KEK rotation: each `(subject, old, new)` replaces the subject's
    /// wrapped key only if it still is `old` (a key destroyed or rewrapped meanwhile is left
    /// alone), and `state` is stored with it, its `rewrapped` increased by the number of
    /// keys replaced (`None` clears the progress). Returns how many keys were replaced.
    ///
    /// # Errors
    /// [`VaultError::Storage`] or [`VaultError::Corrupt`].
    fn rewrap_subject_keys(&self, batch: &[Rewrap], state: Option<&RotationState>) -> Result<u64, VaultError>;

    /// The KEK rotation in progress, if any.
    ///
    /// # Errors
    /// [`VaultError::Storage`] or [`VaultError::Corrupt`].
    fn rotation_state(&self) -> Result<Option<RotationState>, VaultError>;

    /// Every deployment-wide wrapped key, by name.
    ///
    /// # Errors
    /// [`VaultError::Storage`].
    fn system_keys(&self) -> Result<Vec<(String, Vec<u8>)>, VaultError>;

    /// Replaces a deployment-wide wrapped key if it still is `old`.
    ///
    /// # Errors
    /// [`VaultError::Storage`].
    fn replace_system_key(&self, name: &str, old: &[u8], new: &[u8]) -> Result<bool, VaultError>;

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
