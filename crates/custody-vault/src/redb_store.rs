//! The embedded backend: two redb databases under the data dir.
//!
//! `records.redb` holds records, blind-index entries and principals; `keys.redb` holds
//! wrapped keys. Keeping them in separate files is what lets an operator (or a test) show
//! that a copy of record storage alone decrypts nothing, and lets erasure be checked against
//! a pre-erasure copy of record storage.

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};

use custody_core::{CollectionName, PrincipalId, PrincipalRecord, RecordId, SubjectId};
use custody_crypto::BlindIndexTerm;

use crate::{KeyState, KeyStore, PrincipalStore, RecordStore, StoredRecord, VaultError, WrappedKey};

const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
const INDEX: TableDefinition<&[u8], ()> = TableDefinition::new("blind_index");
const PRINCIPALS: TableDefinition<&str, &[u8]> = TableDefinition::new("principals");
const SUBJECT_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("subject_keys");
const SYSTEM_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("system_keys");

/// Records, index, principals and keys in two redb files.
#[derive(Debug)]
pub struct RedbStore {
    records: Database,
    keys: Database,
}

fn record_key(collection: &CollectionName, id: &RecordId) -> Vec<u8> {
    // Ids and names never contain NUL (they are validated), so NUL separates unambiguously.
    [collection.as_str().as_bytes(), b"\0", id.as_str().as_bytes()].concat()
}

fn index_prefix(collection: &CollectionName, field: &str, term: &BlindIndexTerm) -> Vec<u8> {
    [collection.as_str().as_bytes(), b"\0", field.as_bytes(), b"\0", term.as_slice()].concat()
}

impl RedbStore {
    /// Opens (creating if needed) `records.redb` in `records_dir` and `keys.redb` in `keys_dir`.
    ///
    /// # Errors
    /// [`VaultError::Storage`] if either file cannot be opened, e.g. because another custody
    /// process holds it.
    pub fn open(records_dir: &Path, keys_dir: &Path) -> Result<Self, VaultError> {
        let open = |p: &Path| {
            Database::create(p).map_err(|e| VaultError::Storage(format!("cannot open `{}`: {e}", p.display())))
        };
        let records = open(&records_dir.join("records.redb"))?;
        let keys = open(&keys_dir.join("keys.redb"))?;
        let w = records.begin_write()?;
        w.open_table(RECORDS)?;
        w.open_table(INDEX)?;
        w.open_table(PRINCIPALS)?;
        w.commit()?;
        let w = keys.begin_write()?;
        w.open_table(SUBJECT_KEYS)?;
        w.open_table(SYSTEM_KEYS)?;
        w.commit()?;
        Ok(Self { records, keys })
    }
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, VaultError> {
    postcard::from_bytes(bytes).map_err(|_| VaultError::Corrupt(what.to_string()))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, VaultError> {
    postcard::to_stdvec(value).map_err(|e| VaultError::Storage(e.to_string()))
}

impl RecordStore for RedbStore {
    fn get(&self, collection: &CollectionName, id: &RecordId) -> Result<Option<StoredRecord>, VaultError> {
        let r = self.records.begin_read()?;
        let t = r.open_table(RECORDS)?;
        match t.get(record_key(collection, id).as_slice())? {
            Some(v) => Ok(Some(decode(&format!("{collection}/{id}"), v.value())?)),
            None => Ok(None),
        }
    }

    fn put(
        &self,
        collection: &CollectionName,
        id: &RecordId,
        record: &StoredRecord,
        must_be_new: bool,
        index_remove: &[(String, BlindIndexTerm)],
        index_add: &[(String, BlindIndexTerm)],
    ) -> Result<(), VaultError> {
        let key = record_key(collection, id);
        let bytes = encode(record)?;
        let w = self.records.begin_write()?;
        {
            let mut t = w.open_table(RECORDS)?;
            if must_be_new && t.get(key.as_slice())?.is_some() {
                return Err(VaultError::AlreadyExists(format!("{collection}/{id}")));
            }
            t.insert(key.as_slice(), bytes.as_slice())?;
            let mut ix = w.open_table(INDEX)?;
            for (field, term) in index_remove {
                let k = [index_prefix(collection, field, term), id.as_str().as_bytes().to_vec()].concat();
                ix.remove(k.as_slice())?;
            }
            for (field, term) in index_add {
                let k = [index_prefix(collection, field, term), id.as_str().as_bytes().to_vec()].concat();
                ix.insert(k.as_slice(), ())?;
            }
        }
        w.commit()?;
        Ok(())
    }

    fn put_new_many(&self, collection: &CollectionName, records: &[crate::NewStoredRecord]) -> Result<(), VaultError> {
        let encoded: Vec<(Vec<u8>, Vec<u8>)> = records
            .iter()
            .map(|(id, r, _)| Ok((record_key(collection, id), encode(r)?)))
            .collect::<Result<_, VaultError>>()?;
        let w = self.records.begin_write()?;
        {
            let mut t = w.open_table(RECORDS)?;
            let mut ix = w.open_table(INDEX)?;
            for ((key, bytes), (id, _, add)) in encoded.iter().zip(records) {
                if t.get(key.as_slice())?.is_some() {
                    return Err(VaultError::AlreadyExists(format!("{collection}/{id}")));
                }
                t.insert(key.as_slice(), bytes.as_slice())?;
                for (field, term) in add {
                    let k = [index_prefix(collection, field, term), id.as_str().as_bytes().to_vec()].concat();
                    ix.insert(k.as_slice(), ())?;
                }
            }
        }
        w.commit()?;
        Ok(())
    }

    fn delete(
        &self,
        collection: &CollectionName,
        id: &RecordId,
        index_remove: &[(String, BlindIndexTerm)],
    ) -> Result<bool, VaultError> {
        let w = self.records.begin_write()?;
        let existed = {
            let mut t = w.open_table(RECORDS)?;
            let existed = t.remove(record_key(collection, id).as_slice())?.is_some();
            let mut ix = w.open_table(INDEX)?;
            for (field, term) in index_remove {
                let k = [index_prefix(collection, field, term), id.as_str().as_bytes().to_vec()].concat();
                ix.remove(k.as_slice())?;
            }
            existed
        };
        w.commit()?;
        Ok(existed)
    }

    fn search(
        &self,
        collection: &CollectionName,
        field: &str,
        term: &BlindIndexTerm,
        limit: usize,
    ) -> Result<Vec<RecordId>, VaultError> {
        let prefix = index_prefix(collection, field, term);
        let mut end = prefix.clone();
        end.push(0xff);
        let r = self.records.begin_read()?;
        let t = r.open_table(INDEX)?;
        let mut out = Vec::new();
        for entry in t.range(prefix.as_slice()..end.as_slice())? {
            let (k, _) = entry?;
            let raw = k.value().get(prefix.len()..).unwrap_or_default();
            let id = std::str::from_utf8(raw)
                .ok()
                .and_then(|s| RecordId::new(s).ok())
                .ok_or_else(|| VaultError::Corrupt("blind index entry".into()))?;
            out.push(id);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}

impl KeyStore for RedbStore {
    fn subject_key(&self, subject: &SubjectId) -> Result<Option<KeyState>, VaultError> {
        let r = self.keys.begin_read()?;
        let t = r.open_table(SUBJECT_KEYS)?;
        match t.get(subject.as_str())? {
            Some(v) => Ok(Some(decode("subject key", v.value())?)),
            None => Ok(None),
        }
    }

    fn insert_subject_key(&self, subject: &SubjectId, key: &WrappedKey) -> Result<KeyState, VaultError> {
        let w = self.keys.begin_write()?;
        let state = {
            let mut t = w.open_table(SUBJECT_KEYS)?;
            let existing = match t.get(subject.as_str())? {
                Some(v) => Some(decode::<KeyState>("subject key", v.value())?),
                None => None,
            };
            match existing {
                Some(s) => s,
                None => {
                    let s = KeyState::Active(key.clone());
                    t.insert(subject.as_str(), encode(&s)?.as_slice())?;
                    s
                }
            }
        };
        w.commit()?;
        Ok(state)
    }

    fn insert_subject_keys(&self, keys: &[(SubjectId, WrappedKey)]) -> Result<Vec<KeyState>, VaultError> {
        let w = self.keys.begin_write()?;
        let mut states = Vec::with_capacity(keys.len());
        {
            let mut t = w.open_table(SUBJECT_KEYS)?;
            for (subject, key) in keys {
                let existing = match t.get(subject.as_str())? {
                    Some(v) => Some(decode::<KeyState>("subject key", v.value())?),
                    None => None,
                };
                states.push(match existing {
                    Some(s) => s,
                    None => {
                        let s = KeyState::Active(key.clone());
                        t.insert(subject.as_str(), encode(&s)?.as_slice())?;
                        s
                    }
                });
            }
        }
        w.commit()?;
        Ok(states)
    }

    fn destroy_subject_key(&self, subject: &SubjectId) -> Result<bool, VaultError> {
        let w = self.keys.begin_write()?;
        let destroyed = {
            let mut t = w.open_table(SUBJECT_KEYS)?;
            let existing = match t.get(subject.as_str())? {
                Some(v) => Some(decode::<KeyState>("subject key", v.value())?),
                None => None,
            };
            match existing {
                Some(KeyState::Active(k)) => {
                    let tomb = KeyState::Destroyed { version: k.version };
                    t.insert(subject.as_str(), encode(&tomb)?.as_slice())?;
                    true
                }
                _ => false,
            }
        };
        w.commit()?;
        Ok(destroyed)
    }

    fn system_key(&self, name: &str) -> Result<Option<Vec<u8>>, VaultError> {
        let r = self.keys.begin_read()?;
        let t = r.open_table(SYSTEM_KEYS)?;
        Ok(t.get(name)?.map(|v| v.value().to_vec()))
    }

    fn insert_system_key(&self, name: &str, wrapped: &[u8]) -> Result<Vec<u8>, VaultError> {
        let w = self.keys.begin_write()?;
        let v = {
            let mut t = w.open_table(SYSTEM_KEYS)?;
            let existing = t.get(name)?.map(|v| v.value().to_vec());
            match existing {
                Some(v) => v,
                None => {
                    t.insert(name, wrapped)?;
                    wrapped.to_vec()
                }
            }
        };
        w.commit()?;
        Ok(v)
    }
}

impl PrincipalStore for RedbStore {
    fn principal(&self, id: &PrincipalId) -> Result<Option<PrincipalRecord>, VaultError> {
        let r = self.records.begin_read()?;
        let t = r.open_table(PRINCIPALS)?;
        match t.get(id.as_str())? {
            Some(v) => {
                Ok(Some(serde_json::from_slice(v.value()).map_err(|_| VaultError::Corrupt(format!("principal {id}")))?))
            }
            None => Ok(None),
        }
    }

    fn put_principal(&self, p: &PrincipalRecord) -> Result<(), VaultError> {
        let bytes = serde_json::to_vec(p).map_err(|e| VaultError::Storage(e.to_string()))?;
        let w = self.records.begin_write()?;
        w.open_table(PRINCIPALS)?.insert(p.id.as_str(), bytes.as_slice())?;
        w.commit()?;
        Ok(())
    }

    fn principals(&self) -> Result<Vec<PrincipalRecord>, VaultError> {
        let r = self.records.begin_read()?;
        let t = r.open_table(PRINCIPALS)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            let (k, v) = entry?;
            out.push(
                serde_json::from_slice(v.value())
                    .map_err(|_| VaultError::Corrupt(format!("principal {}", k.value())))?,
            );
        }
        Ok(out)
    }
}
