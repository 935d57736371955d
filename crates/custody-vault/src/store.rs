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

/// A page of records as their stored bytes, for bulk readers that decode each record
/// borrowed ([`RecordView`]) on their own threads instead of into owned maps on the thread
/// that reads. One buffer holds every id and body, and a scan refills the same page, so
/// paging allocates nothing once the buffers have grown.
#[derive(Debug, Default)]
pub struct RawPage {
    buf: Vec<u8>,
    /// Per record: where its id ends and where its body ends in `buf` (each record starts
    /// where the previous one ended).
    ends: Vec<(usize, usize)>,
}

impl RawPage {
    /// Empties the page, keeping its buffers.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
    }

    /// Appends a record: its id and its stored bytes.
    pub fn push(&mut self, id: &str, body: &[u8]) {
        self.buf.extend_from_slice(id.as_bytes());
        let id_end = self.buf.len();
        self.buf.extend_from_slice(body);
        self.ends.push((id_end, self.buf.len()));
    }

    /// Records in the page.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the page holds no record.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The records, in scan order, as (id, stored bytes).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        let starts = std::iter::once(0).chain(self.ends.iter().map(|&(_, end)| end));
        starts.zip(&self.ends).map(|(start, &(id_end, end))| {
            // Ids went in as `&str`; the bounds are ours, so neither lookup can fail.
            let id = self.buf.get(start..id_end).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or_default();
            (id, self.buf.get(id_end..end).unwrap_or_default())
        })
    }

    /// The last record's id: where the next page starts after.
    pub fn last_id(&self) -> Option<&str> {
        self.iter().last().map(|(id, _)| id)
    }
}

/// A stored value borrowed from a [`RawPage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ValueView<'a> {
    /// JSON bytes of a value whose class is stored in the clear.
    Plain(&'a [u8]),
    /// A ciphertext from [`custody_crypto::seal_field`].
    Sealed(&'a [u8]),
}

impl StoredValue {
    /// This value borrowed, as a [`ValueView`].
    pub fn view(&self) -> ValueView<'_> {
        match self {
            StoredValue::Plain(b) => ValueView::Plain(b),
            StoredValue::Sealed(b) => ValueView::Sealed(b),
        }
    }
}

/// A [`StoredRecord`] decoded borrowed from its stored bytes: strings and values point into
/// the page, the blind-index terms are not decoded at all. The bulk export path opens these,
/// so a row costs one small allocation (the field list) instead of a map of owned strings.
///
/// The encoding is postcard's for [`StoredRecord`]: a byte vector and a byte string share
/// one wire form there (a varint length, then the bytes), and a map is a length followed by
/// its pairs, so the same bytes decode either way (a unit test holds both to that).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RecordView<'a> {
    /// The end user the record is about, not yet validated as a [`SubjectId`].
    pub subject: &'a str,
    /// The jurisdiction the record belongs to, as stored.
    pub jurisdiction: &'a str,
    /// The DEK version its sealed fields use.
    pub key_version: u32,
    /// Field values by name, in name order.
    #[serde(borrow)]
    pub fields: FieldViews<'a>,
}

impl<'a> RecordView<'a> {
    /// Decodes a record's stored bytes; fields after `fields` (the terms) are left unread.
    ///
    /// # Errors
    /// [`VaultError::Corrupt`] naming `what` if the bytes are not a stored record.
    pub fn decode(what: impl FnOnce() -> String, bytes: &'a [u8]) -> Result<Self, VaultError> {
        postcard::from_bytes(bytes).map_err(|_| VaultError::Corrupt(what()))
    }

    /// The stored value of field `name`.
    pub fn field(&self, name: &str) -> Option<ValueView<'a>> {
        self.fields.0.iter().find(|(n, _)| *n == name).map(|&(_, v)| v)
    }
}

/// The fields of a [`RecordView`], in the order stored (by name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldViews<'a>(pub Vec<(&'a str, ValueView<'a>)>);

impl<'de: 'a, 'a> Deserialize<'de> for FieldViews<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Fields<'a> {
            type Value = FieldViews<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of field names to stored values")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                // The hint comes from the stored bytes: cap it so a corrupt length cannot
                // reserve a huge buffer before the entries run out.
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some((k, v)) = map.next_entry::<&'de str, ValueView<'de>>()? {
                    out.push((k, v));
                }
                Ok(FieldViews(out))
            }
        }
        d.deserialize_map(Fields(std::marker::PhantomData))
    }
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

    /// [`RecordStore::scan`] into `page` as stored bytes, for [`RecordView`] decoding: up to
    /// `limit` records of `collection` with ids after `after`, in id order. The page is
    /// cleared first. Stores override it to copy their bytes without decoding; this default
    /// re-encodes what [`RecordStore::scan`] returns.
    ///
    /// # Errors
    /// [`VaultError::Storage`] or [`VaultError::Corrupt`] (also for an invalid `after`).
    fn scan_raw(
        &self,
        collection: &CollectionName,
        after: Option<&str>,
        limit: usize,
        page: &mut RawPage,
    ) -> Result<(), VaultError> {
        let after = after.map(RecordId::new).transpose().map_err(|e| VaultError::Corrupt(e.to_string()))?;
        page.clear();
        for (id, record) in self.scan(collection, after.as_ref(), limit)? {
            let body = postcard::to_stdvec(&record).map_err(|e| VaultError::Storage(format!("encode: {e}")))?;
            page.push(id.as_str(), &body);
        }
        Ok(())
    }

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    fn record(fields: Vec<(String, bool, Vec<u8>)>, terms: Vec<(String, [u8; 32])>) -> StoredRecord {
        StoredRecord {
            subject: SubjectId::new("s-1@x").unwrap(),
            jurisdiction: Jurisdiction::new("US").unwrap(),
            key_version: 7,
            fields: fields
                .into_iter()
                .map(|(n, sealed, b)| (n, if sealed { StoredValue::Sealed(b) } else { StoredValue::Plain(b) }))
                .collect(),
            terms: terms.into_iter().collect(),
        }
    }

    proptest! {
        /// The borrowed view decodes exactly what the owned record holds, from the same bytes.
        #[test]
        fn a_view_decodes_the_stored_record_it_was_encoded_from(
            fields in proptest::collection::vec(("[a-z][a-z0-9_]{0,12}", any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..12),
            terms in proptest::collection::vec(("[a-z]{1,8}", any::<[u8; 32]>()), 0..4),
        ) {
            let r = record(fields, terms);
            let bytes = postcard::to_stdvec(&r).unwrap();
            let view = RecordView::decode(|| "r".into(), &bytes).unwrap();
            prop_assert_eq!(view.subject, r.subject.as_str());
            prop_assert_eq!(view.jurisdiction, r.jurisdiction.as_str());
            prop_assert_eq!(view.key_version, r.key_version);
            let owned: Vec<_> = r.fields.iter().map(|(n, v)| (n.as_str(), v.view())).collect();
            prop_assert_eq!(&view.fields.0, &owned);
            for (n, v) in &r.fields {
                prop_assert_eq!(view.field(n), Some(v.view()));
            }
        }

        /// Truncated or garbled bytes are a named corruption, never a panic.
        #[test]
        fn damaged_bytes_are_corrupt_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            match RecordView::decode(|| "profiles/r1".into(), &bytes) {
                Ok(_) => {}
                Err(VaultError::Corrupt(what)) => prop_assert_eq!(what, "profiles/r1"),
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
    }

    #[test]
    fn a_raw_page_gives_back_its_records_in_order_and_is_reused() {
        let mut page = RawPage::default();
        assert!(page.is_empty());
        assert_eq!(page.last_id(), None);
        page.push("a", b"one");
        page.push("bb", b"");
        page.push("c", b"three");
        assert_eq!(page.len(), 3);
        let got: Vec<_> = page.iter().collect();
        assert_eq!(got, vec![("a", b"one".as_slice()), ("bb", b"".as_slice()), ("c", b"three".as_slice())]);
        assert_eq!(page.last_id(), Some("c"));
        page.clear();
        assert!(page.is_empty());
        page.push("z", b"z");
        assert_eq!(page.iter().collect::<Vec<_>>(), vec![("z", b"z".as_slice())]);
    }
}
