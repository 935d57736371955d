//! The vault: sealing on write, selective opening on read, crypto-shredding.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value;

use custody_core::{CollectionName, DataClass, FieldName, Jurisdiction, RecordId, Schema, SubjectId, ValidatedFields};
use custody_crypto::{
    BlindIndexKey, BlindIndexTerm, DataKey, FieldContext, KeyProvider, KeyVersion, PseudonymKey, open_field, seal_field,
};

use crate::{KeyState, KeyStore, RecordStore, StoredRecord, StoredValue, VaultError, WrappedKey};

/// Whether a write creates a record or updates an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// The id must be new.
    Create,
    /// The record must exist; the given fields replace their old values.
    Update,
}

/// Index terms an update removes and adds, by field.
type IndexChanges = (Vec<(String, BlindIndexTerm)>, Vec<(String, BlindIndexTerm)>);

/// One record to create with [`Vault::create_many`].
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// The new record's id.
    pub id: RecordId,
    /// The end user it is about.
    pub subject: SubjectId,
    /// The jurisdiction it belongs to.
    pub jurisdiction: Jurisdiction,
    /// Validated field values.
    pub fields: ValidatedFields,
}

/// The fields of a record that were opened, and nothing else.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenedRecord {
    /// Released values, by field.
    pub fields: BTreeMap<FieldName, Value>,
}

/// Encrypted records over a record store and a key store.
pub struct Vault {
    records: Arc<dyn RecordStore>,
    keys: Arc<dyn KeyStore>,
    provider: Arc<dyn KeyProvider>,
    index_key: BlindIndexKey,
    pseudonyms: PseudonymKey,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("provider", &self.provider.name()).finish_non_exhaustive()
    }
}

fn dek_context(subject: &SubjectId, version: u32) -> Vec<u8> {
    [b"dek\0".as_slice(), subject.as_str().as_bytes(), b"\0", &version.to_be_bytes()].concat()
}

fn system_key(keys: &dyn KeyStore, provider: &dyn KeyProvider, name: &str) -> Result<[u8; 32], VaultError> {
    let ctx = [b"system\0".as_slice(), name.as_bytes()].concat();
    let wrapped = match keys.system_key(name)? {
        Some(w) => w,
        None => keys.insert_system_key(name, &provider.wrap(&ctx, &DataKey::generate())?)?,
    };
    let key = provider.unwrap(&ctx, &wrapped).map_err(|_| VaultError::Integrity(format!("system key `{name}`")))?;
    Ok(*key.as_bytes())
}

impl Vault {
    /// Builds a vault, creating the deployment's blind-index and pseudonym keys on first use.
    ///
    /// # Errors
    /// Storage failures, or [`VaultError::Integrity`] if a stored system key does not unwrap
    /// (the wrong KEK file, for instance).
    pub fn new(
        records: Arc<dyn RecordStore>,
        keys: Arc<dyn KeyStore>,
        provider: Arc<dyn KeyProvider>,
    ) -> Result<Self, VaultError> {
        let index_key = BlindIndexKey::from_bytes(system_key(keys.as_ref(), provider.as_ref(), "blind-index")?);
        let pseudonyms = PseudonymKey::from_bytes(system_key(keys.as_ref(), provider.as_ref(), "pseudonym")?);
        Ok(Self { records, keys, provider, index_key, pseudonyms })
    }

    /// The key that turns ids into the pseudonyms events carry.
    pub fn pseudonyms(&self) -> &PseudonymKey {
        &self.pseudonyms
    }

    /// The blind-index term for a value of `collection.field`.
    pub fn index_term(&self, collection: &CollectionName, field: &str, value: &Value) -> BlindIndexTerm {
        let canonical = match value {
            Value::String(s) => s.as_bytes().to_vec(),
            other => other.to_string().into_bytes(),
        };
        self.index_key.term(collection.as_str(), field, &canonical)
    }

    /// The subject's DEK; with `create`, makes one if the subject has none. The flag says
    /// whether this call created it (a key event for the log).
    fn subject_dek(&self, subject: &SubjectId, create: bool) -> Result<(u32, DataKey, bool), VaultError> {
        let mut created = false;
        let state = match self.keys.subject_key(subject)? {
            Some(s) => s,
            None if create => {
                let version = 1;
                let wrapped = self.provider.wrap(&dek_context(subject, version), &DataKey::generate())?;
                let key = WrappedKey { version, wrapped };
                let state = self.keys.insert_subject_key(subject, &key)?;
                created = state == KeyState::Active(key);
                state
            }
            None => return Err(VaultError::Integrity(format!("missing key of subject `{subject}`"))),
        };
        match state {
            KeyState::Active(k) => {
                let dek = self
                    .provider
                    .unwrap(&dek_context(subject, k.version), &k.wrapped)
                    .map_err(|_| VaultError::Integrity(format!("key of subject `{subject}`")))?;
                Ok((k.version, dek, created))
            }
            KeyState::Destroyed { .. } => Err(VaultError::Erased(subject.to_string())),
        }
    }

    /// Seals and stores fields of a record. Returns the version of the subject's DEK if this
    /// write created it (the subject's first record), so the caller can log the key event.
    ///
    /// # Errors
    /// [`VaultError::AlreadyExists`] / [`VaultError::NotFound`] by mode,
    /// [`VaultError::OwnerMismatch`] if an update names another subject or jurisdiction,
    /// [`VaultError::Erased`] if the subject was erased, storage failures.
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &self,
        schema: &Schema,
        collection: &CollectionName,
        id: &RecordId,
        subject: &SubjectId,
        jurisdiction: &Jurisdiction,
        fields: &ValidatedFields,
        mode: WriteMode,
    ) -> Result<Option<u32>, VaultError> {
        let (_, coll) = schema.collection(collection.as_str()).map_err(|e| VaultError::NotFound(e.to_string()))?;
        let mut record = match mode {
            WriteMode::Create => StoredRecord {
                subject: subject.clone(),
                jurisdiction: jurisdiction.clone(),
                key_version: 0,
                fields: BTreeMap::new(),
                terms: BTreeMap::new(),
            },
            WriteMode::Update => {
                let r = self.load(collection, id)?;
                if &r.subject != subject || &r.jurisdiction != jurisdiction {
                    return Err(VaultError::OwnerMismatch(format!("{collection}/{id}")));
                }
                r
            }
        };
        let (version, dek, created) = self.subject_dek(subject, true)?;
        if record.key_version != 0 && record.key_version != version {
            return Err(VaultError::Integrity(format!("key version of `{collection}/{id}`")));
        }
        record.key_version = version;
        let (remove, add) = self.seal_into(schema, coll, collection, id, version, &dek, fields, &mut record)?;
        self.records.put(collection, id, &record, mode == WriteMode::Create, &remove, &add)?;
        Ok(created.then_some(version))
    }

    /// Seals `fields` into `record` under `dek`; returns the index terms to remove and add.
    #[allow(clippy::too_many_arguments)]
    fn seal_into(
        &self,
        schema: &Schema,
        coll: &custody_core::CollectionSchema,
        collection: &CollectionName,
        id: &RecordId,
        version: u32,
        dek: &DataKey,
        fields: &ValidatedFields,
        record: &mut StoredRecord,
    ) -> Result<IndexChanges, VaultError> {
        let mut remove = Vec::new();
        let mut add = Vec::new();
        for (name, value) in fields {
            let Some(spec) = coll.fields.get(name) else { continue };
            let json = serde_json::to_vec(value).map_err(|e| VaultError::Storage(e.to_string()))?;
            let stored = if schema.is_encrypted(&spec.class) {
                let ctx = FieldContext {
                    collection: collection.as_str(),
                    record: id.as_str(),
                    field: name.as_str(),
                    key_version: KeyVersion(version),
                };
                StoredValue::Sealed(seal_field(dek, &ctx, &json))
            } else {
                StoredValue::Plain(json)
            };
            record.fields.insert(name.to_string(), stored);
            if spec.searchable {
                let term = self.index_term(collection, name.as_str(), value);
                if let Some(old) = record.terms.insert(name.to_string(), term) {
                    remove.push((name.to_string(), old));
                }
                add.push((name.to_string(), term));
            }
        }
        Ok((remove, add))
    }

    /// Creates several records of one collection: DEKs for subjects that have none are made
    /// in one key-store transaction, the records stored in one record-store transaction (all
    /// or none). Returns, per record, the DEK version if that record's write created its
    /// subject's key, so the caller can log the key events.
    ///
    /// # Errors
    /// [`VaultError::AlreadyExists`] if any id is taken (nothing is written),
    /// [`VaultError::Erased`] if a subject was erased, storage failures.
    pub fn create_many(
        &self,
        schema: &Schema,
        collection: &CollectionName,
        records: &[NewRecord],
    ) -> Result<Vec<Option<u32>>, VaultError> {
        let (_, coll) = schema.collection(collection.as_str()).map_err(|e| VaultError::NotFound(e.to_string()))?;
        let mut states: HashMap<&SubjectId, KeyState> = HashMap::new();
        let mut fresh: Vec<(SubjectId, WrappedKey)> = Vec::new();
        for r in records {
            if states.contains_key(&r.subject) || fresh.iter().any(|(s, _)| s == &r.subject) {
                continue;
            }
            match self.keys.subject_key(&r.subject)? {
                Some(state) => {
                    states.insert(&r.subject, state);
                }
                None => {
                    let version = 1;
                    let wrapped = self.provider.wrap(&dek_context(&r.subject, version), &DataKey::generate())?;
                    fresh.push((r.subject.clone(), WrappedKey { version, wrapped }));
                }
            }
        }
        let mut created: HashMap<SubjectId, u32> = HashMap::new();
        let in_force = self.keys.insert_subject_keys(&fresh)?;
        let mut fresh_states = Vec::with_capacity(fresh.len());
        for ((subject, key), state) in fresh.iter().zip(in_force) {
            if state == KeyState::Active(key.clone()) {
                created.insert(subject.clone(), key.version);
            }
            fresh_states.push((subject, state));
        }
        for (subject, state) in fresh_states {
            states.insert(subject, state);
        }
        let mut deks: HashMap<&SubjectId, (u32, DataKey)> = HashMap::new();
        for (subject, state) in &states {
            match state {
                KeyState::Active(k) => {
                    let dek = self
                        .provider
                        .unwrap(&dek_context(subject, k.version), &k.wrapped)
                        .map_err(|_| VaultError::Integrity(format!("key of subject `{subject}`")))?;
                    deks.insert(*subject, (k.version, dek));
                }
                KeyState::Destroyed { .. } => return Err(VaultError::Erased(subject.to_string())),
            }
        }
        let mut out = Vec::with_capacity(records.len());
        let mut stored = Vec::with_capacity(records.len());
        for r in records {
            let (version, dek) =
                deks.get(&r.subject).ok_or_else(|| VaultError::Integrity(format!("missing key of `{}`", r.subject)))?;
            let mut record = StoredRecord {
                subject: r.subject.clone(),
                jurisdiction: r.jurisdiction.clone(),
                key_version: *version,
                fields: BTreeMap::new(),
                terms: BTreeMap::new(),
            };
            let (_, add) = self.seal_into(schema, coll, collection, &r.id, *version, dek, &r.fields, &mut record)?;
            stored.push((r.id.clone(), record, add));
            out.push(created.remove(&r.subject));
        }
        self.records.put_new_many(collection, &stored)?;
        Ok(out)
    }

    /// The key provider's name (`file`, `pkcs11`), for key events.
    pub fn provider_name(&self) -> &str {
        self.provider.name()
    }

    /// The stored (still sealed) record.
    ///
    /// # Errors
    /// [`VaultError::NotFound`], storage failures.
    pub fn load(&self, collection: &CollectionName, id: &RecordId) -> Result<StoredRecord, VaultError> {
        self.records.get(collection, id)?.ok_or_else(|| VaultError::NotFound(format!("{collection}/{id}")))
    }

    /// Opens the fields of `record` whose class `permitted` accepts. No other field is
    /// decrypted, and the subject's key is not even unwrapped unless a sealed field is needed.
    ///
    /// # Errors
    /// [`VaultError::Erased`] if the subject's key was destroyed, [`VaultError::Integrity`]
    /// if a ciphertext was tampered with or moved, [`VaultError::Corrupt`] for undecodable
    /// plaintext fields.
    pub fn open(
        &self,
        schema: &Schema,
        collection: &CollectionName,
        id: &RecordId,
        record: &StoredRecord,
        permitted: impl Fn(&DataClass) -> bool,
    ) -> Result<OpenedRecord, VaultError> {
        let (_, coll) = schema.collection(collection.as_str()).map_err(|e| VaultError::NotFound(e.to_string()))?;
        let mut dek: Option<DataKey> = None;
        let mut fields = BTreeMap::new();
        for (fname, spec) in &coll.fields {
            if !permitted(&spec.class) {
                continue;
            }
            let Some(stored) = record.fields.get(fname.as_str()) else { continue };
            let json = match stored {
                StoredValue::Plain(bytes) => bytes.clone(),
                StoredValue::Sealed(sealed) => {
                    if dek.is_none() {
                        let (version, k, _) = self.subject_dek(&record.subject, false)?;
                        if version != record.key_version {
                            return Err(VaultError::Integrity(format!("key version of `{collection}/{id}`")));
                        }
                        dek = Some(k);
                    }
                    let Some(k) = dek.as_ref() else { continue };
                    let ctx = FieldContext {
                        collection: collection.as_str(),
                        record: id.as_str(),
                        field: fname.as_str(),
                        key_version: KeyVersion(record.key_version),
                    };
                    open_field(k, &ctx, sealed)
                        .map_err(|_| VaultError::Integrity(format!("field `{fname}` of `{collection}/{id}`")))?
                }
            };
            if schema.is_encrypted(&spec.class) && matches!(stored, StoredValue::Plain(_)) {
                // A plaintext value where the schema demands a sealed one was planted.
                return Err(VaultError::Integrity(format!("field `{fname}` of `{collection}/{id}` is not sealed")));
            }
            let value: Value =
                serde_json::from_slice(&json).map_err(|_| VaultError::Corrupt(format!("{collection}/{id}")))?;
            fields.insert(fname.clone(), value);
        }
        Ok(OpenedRecord { fields })
    }

    /// Deletes a record and its index entries; false if it did not exist.
    ///
    /// # Errors
    /// Storage failures.
    pub fn delete(&self, collection: &CollectionName, id: &RecordId) -> Result<bool, VaultError> {
        let Some(r) = self.records.get(collection, id)? else { return Ok(false) };
        let remove: Vec<_> = r.terms.into_iter().collect();
        self.records.delete(collection, id, &remove)
    }

    /// Ids of records whose searchable `field` equals `value`.
    ///
    /// # Errors
    /// Storage failures.
    pub fn search(
        &self,
        collection: &CollectionName,
        field: &FieldName,
        value: &Value,
        limit: usize,
    ) -> Result<Vec<RecordId>, VaultError> {
        let term = self.index_term(collection, field.as_str(), value);
        self.records.search(collection, field.as_str(), &term, limit)
    }

    /// Destroys a subject's DEK: every record sealed under it becomes unreadable
    /// (crypto-shredding). False if the subject had no live key.
    ///
    /// # Errors
    /// Storage failures.
    pub fn destroy_subject_key(&self, subject: &SubjectId) -> Result<bool, VaultError> {
        self.keys.destroy_subject_key(subject)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::RedbStore;
    use custody_crypto::FileKeyProvider;

    const SCHEMA: &str = r#"
[collections.profiles.fields.email]
type = "string"
class = "protected"
searchable = true
[collections.profiles.fields.phone]
type = "string"
class = "protected"
[collections.profiles.fields.handle]
type = "string"
class = "public"
searchable = true
"#;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<RedbStore>,
        vault: Vault,
        schema: Schema,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("keys")).unwrap();
        let store = Arc::new(RedbStore::open(dir.path(), &dir.path().join("keys")).unwrap());
        let provider = Arc::new(FileKeyProvider::create(&dir.path().join("keys/kek")).unwrap());
        let vault = Vault::new(store.clone(), store.clone(), provider).unwrap();
        Fixture { _dir: dir, store, vault, schema: Schema::from_toml(SCHEMA).unwrap() }
    }

    fn ids(c: &str, r: &str) -> (CollectionName, RecordId) {
        (CollectionName::new(c).unwrap(), RecordId::new(r).unwrap())
    }

    fn put(f: &Fixture, id: &str, subject: &str, email: &str) {
        let (c, r) = ids("profiles", id);
        let body = serde_json::json!({"email": email, "phone": "555", "handle": format!("h-{id}")});
        let fields = f.schema.validate_fields(&c, body.as_object().unwrap(), false).unwrap();
        f.vault
            .write(
                &f.schema,
                &c,
                &r,
                &SubjectId::new(subject).unwrap(),
                &Jurisdiction::new("US").unwrap(),
                &fields,
                WriteMode::Create,
            )
            .unwrap();
    }

    fn open_all(f: &Fixture, id: &str) -> Result<OpenedRecord, VaultError> {
        let (c, r) = ids("profiles", id);
        let rec = f.vault.load(&c, &r)?;
        f.vault.open(&f.schema, &c, &r, &rec, |_| true)
    }

    #[test]
    fn selective_open_decrypts_only_permitted_classes() {
        let f = fixture();
        put(&f, "r1", "s1", "a@x");
        let (c, r) = ids("profiles", "r1");
        let rec = f.vault.load(&c, &r).unwrap();
        let public = f.vault.open(&f.schema, &c, &r, &rec, |cl| cl.as_str() == "public").unwrap();
        assert_eq!(public.fields.len(), 1);
        assert_eq!(public.fields[&FieldName::new("handle").unwrap()], "h-r1");
        assert_eq!(open_all(&f, "r1").unwrap().fields.len(), 3);
    }

    #[test]
    fn flipped_bit_and_moved_ciphertext_fail() {
        let f = fixture();
        put(&f, "r1", "s1", "a@x");
        put(&f, "r2", "s1", "b@x");
        let (c, r1) = ids("profiles", "r1");
        let (_, r2) = ids("profiles", "r2");
        let mut rec = f.store.get(&c, &r1).unwrap().unwrap();
        if let Some(StoredValue::Sealed(b)) = rec.fields.get_mut("email") {
            let last = b.len() - 1;
            b[last] ^= 0x01;
        }
        f.store.put(&c, &r1, &rec, false, &[], &[]).unwrap();
        assert!(matches!(open_all(&f, "r1"), Err(VaultError::Integrity(_))));

        let r2rec = f.store.get(&c, &r2).unwrap().unwrap();
        let mut moved = r2rec.clone();
        moved.fields.insert("phone".into(), r2rec.fields["email"].clone());
        f.store.put(&c, &r2, &moved, false, &[], &[]).unwrap();
        assert!(matches!(open_all(&f, "r2"), Err(VaultError::Integrity(_))));

        put(&f, "r3", "s1", "c@x");
        let mut r3 = f.store.get(&c, &ids("profiles", "r3").1).unwrap().unwrap();
        r3.fields.insert("email".into(), r2rec.fields["email"].clone());
        f.store.put(&c, &ids("profiles", "r3").1, &r3, false, &[], &[]).unwrap();
        assert!(matches!(open_all(&f, "r3"), Err(VaultError::Integrity(_))));
    }

    #[test]
    fn crypto_shred_erases_one_subject_only() {
        let f = fixture();
        put(&f, "r1", "s1", "a@x");
        put(&f, "r2", "s1", "b@x");
        put(&f, "r3", "s2", "c@x");
        assert!(f.vault.destroy_subject_key(&SubjectId::new("s1").unwrap()).unwrap());
        assert!(matches!(open_all(&f, "r1"), Err(VaultError::Erased(_))));
        assert!(matches!(open_all(&f, "r2"), Err(VaultError::Erased(_))));
        assert_eq!(open_all(&f, "r3").unwrap().fields.len(), 3);
        let (c, r) = ids("profiles", "r4");
        let fields =
            f.schema.validate_fields(&c, serde_json::json!({"email": "z"}).as_object().unwrap(), true).unwrap();
        let again = f.vault.write(
            &f.schema,
            &c,
            &r,
            &SubjectId::new("s1").unwrap(),
            &Jurisdiction::new("US").unwrap(),
            &fields,
            WriteMode::Create,
        );
        assert!(matches!(again, Err(VaultError::Erased(_))), "an erased subject gets no new key");
    }

    #[test]
    fn blind_index_search_and_update() {
        let f = fixture();
        put(&f, "r1", "s1", "a@x");
        put(&f, "r2", "s2", "a@x");
        let c = CollectionName::new("profiles").unwrap();
        let email = FieldName::new("email").unwrap();
        assert_eq!(f.vault.search(&c, &email, &"a@x".into(), 10).unwrap().len(), 2);
        let fields =
            f.schema.validate_fields(&c, serde_json::json!({"email": "new@x"}).as_object().unwrap(), true).unwrap();
        f.vault
            .write(
                &f.schema,
                &c,
                &RecordId::new("r1").unwrap(),
                &SubjectId::new("s1").unwrap(),
                &Jurisdiction::new("US").unwrap(),
                &fields,
                WriteMode::Update,
            )
            .unwrap();
        assert_eq!(f.vault.search(&c, &email, &"a@x".into(), 10).unwrap(), vec![RecordId::new("r2").unwrap()]);
        assert_eq!(f.vault.search(&c, &email, &"new@x".into(), 10).unwrap(), vec![RecordId::new("r1").unwrap()]);
        assert!(f.vault.delete(&c, &RecordId::new("r2").unwrap()).unwrap());
        assert!(f.vault.search(&c, &email, &"a@x".into(), 10).unwrap().is_empty());
    }

    #[test]
    fn record_storage_holds_no_plaintext() {
        let f = fixture();
        put(&f, "r1", "s1", "canary-9d1f@example.com");
        let raw = std::fs::read(f._dir.path().join("records.redb")).unwrap();
        assert!(!raw.windows(12).any(|w| w == b"canary-9d1f@"));
        assert!(raw.windows(4).any(|w| w == b"h-r1"), "public values are stored in the clear");
    }
}
