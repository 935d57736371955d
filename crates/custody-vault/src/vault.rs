//! The vault: sealing on write, selective opening on read, crypto-shredding.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use serde_json::Value;
use zeroize::Zeroizing;

use custody_core::{CollectionName, DataClass, FieldName, Jurisdiction, RecordId, Schema, SubjectId, ValidatedFields};
use custody_crypto::{
    BlindIndexKey, BlindIndexTerm, DataKey, FieldContext, KeyProvider, KeyVersion, PseudonymKey, open_field_into,
    seal_field,
};

use crate::{
    KeyState, KeyStore, RawPage, RecordStore, RecordView, Rewrap, RotationState, StoredRecord, StoredValue, ValueView,
    VaultError, WrappedKey,
};

/// Whether a write creates a record or updates an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// The id must be new.
    Create,
    /// The record must exist; the given fields replace their old values.
    Update,
}

/// Fewest records worth a sealing thread of their own in [`Vault::create_many`]: below it,
/// starting a thread costs more than it saves.
const MIN_RECORDS_PER_SEALING_THREAD: usize = 64;

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

/// Subjects' DEKs unwrapped while serving one request or one page of a scan (see
/// [`Vault::open_with`], [`Vault::page_keys`]): each subject's key is read and unwrapped at
/// most once. It lives only as long as the request or page, so an erasure is never outlived
/// by a cached key; the keys are zeroized when it is dropped.
#[derive(Default)]
pub struct OpenKeys {
    /// Key states read ahead for a page, ascending by subject, each with its DEK once
    /// unwrapped: found by binary search, so a page's first use of a subject's key costs no
    /// map insert and no copy of its id.
    read: Vec<PageKey>,
    /// DEKs of subjects that were not read ahead, read when first needed.
    deks: HashMap<SubjectId, (u32, DataKey)>,
}

/// One subject's entry in [`OpenKeys::read`].
struct PageKey {
    subject: SubjectId,
    state: Option<KeyState>,
    dek: Option<(u32, DataKey)>,
}

impl std::fmt::Debug for OpenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unwrapped = self.read.iter().filter(|k| k.dek.is_some()).count() + self.deks.len();
        f.debug_struct("OpenKeys").field("read", &self.read.len()).field("unwrapped", &unwrapped).finish()
    }
}

/// What an erasure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Erasure {
    /// The version of the DEK this call destroyed; `None` if the subject had no live key
    /// (never had data, or was already erased).
    pub destroyed_key: Option<u32>,
    /// Records this call tombstoned.
    pub tombstoned: u64,
}

/// Where a KEK rotation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationProgress {
    /// The KEK version keys are moved to.
    pub target: u32,
    /// Subject keys looked at.
    pub scanned: u64,
    /// Subject keys rewrapped.
    pub rewrapped: u64,
    /// Subject keys in the store (live and destroyed).
    pub total: u64,
    /// Every subject key was looked at: the rotation can be finished.
    pub scanned_all: bool,
}

/// Encrypted records over a record store and a key store.
pub struct Vault {
    records: Arc<dyn RecordStore>,
    keys: Arc<dyn KeyStore>,
    provider: Arc<dyn KeyProvider>,
    index_key: BlindIndexKey,
    pseudonyms: PseudonymKey,
    /// Held shared while a new DEK is wrapped and stored, exclusively while a rotation
    /// switches KEKs or checks that no key is left under an old one: no DEK wrapped under
    /// an old KEK can land in the store after that check.
    wrap_gate: RwLock<()>,
    /// One rotation step at a time.
    rotation: Mutex<()>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("provider", &self.provider.name()).finish_non_exhaustive()
    }
}

fn dek_context(subject: &str, version: u32) -> Vec<u8> {
    [b"dek\0".as_slice(), subject.as_bytes(), b"\0", &version.to_be_bytes()].concat()
}

/// The system key egress pseudonyms are derived from.
const EGRESS_KEY: &str = "egress-pseudonym";

fn system_context(name: &str) -> Vec<u8> {
    [b"system\0".as_slice(), name.as_bytes()].concat()
}

fn system_key(keys: &dyn KeyStore, provider: &dyn KeyProvider, name: &str) -> Result<[u8; 32], VaultError> {
    let ctx = system_context(name);
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
        Ok(Self {
            records,
            keys,
            provider,
            index_key,
            pseudonyms,
            wrap_gate: RwLock::new(()),
            rotation: Mutex::new(()),
        })
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
                let _gate = self.wrap_gate.read().unwrap_or_else(PoisonError::into_inner);
                let version = 1;
                let wrapped = self.provider.wrap(&dek_context(subject.as_str(), version), &DataKey::generate())?;
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
                    .unwrap(&dek_context(subject.as_str(), k.version), &k.wrapped)
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
        let t0 = std::time::Instant::now();
        let (_, coll) = schema.collection(collection.as_str()).map_err(|e| VaultError::NotFound(e.to_string()))?;
        // Each distinct subject once, in first-seen order; their key states in one read.
        let mut seen: HashSet<&SubjectId> = HashSet::with_capacity(records.len());
        let subjects: Vec<&SubjectId> = records.iter().map(|r| &r.subject).filter(|s| seen.insert(*s)).collect();
        let found = self.keys.subject_keys(&subjects)?;
        let t_lookup = t0.elapsed();
        let mut deks: HashMap<&SubjectId, (u32, DataKey)> = HashMap::with_capacity(subjects.len());
        let mut created: HashMap<&SubjectId, u32> = HashMap::new();
        let mut existing: Vec<(&SubjectId, KeyState)> = Vec::new();
        {
            // New DEKs are wrapped and stored under the wrap gate, as in `subject_dek`, so a KEK
            // rotation cannot finish while a key wrapped under the old KEK is not yet stored.
            let _gate = self.wrap_gate.read().unwrap_or_else(PoisonError::into_inner);
            let mut fresh: Vec<(SubjectId, WrappedKey)> = Vec::new();
            let mut fresh_deks: Vec<(&SubjectId, DataKey)> = Vec::new();
            for (subject, state) in subjects.iter().copied().zip(found) {
                match state {
                    Some(state) => existing.push((subject, state)),
                    None => {
                        let version = 1;
                        let dek = DataKey::generate();
                        let wrapped = self.provider.wrap(&dek_context(subject.as_str(), version), &dek)?;
                        fresh.push((subject.clone(), WrappedKey { version, wrapped }));
                        fresh_deks.push((subject, dek));
                    }
                }
            }
            // No write transaction (and no fsync) when every subject already has a key.
            let in_force = if fresh.is_empty() { Vec::new() } else { self.keys.insert_subject_keys(&fresh)? };
            for (((_, key), (subject, dek)), state) in fresh.iter().zip(fresh_deks).zip(in_force) {
                if state == KeyState::Active(key.clone()) {
                    // Our key is the one in force: use the DEK we hold rather than unwrap it again.
                    created.insert(subject, key.version);
                    deks.insert(subject, (key.version, dek));
                } else {
                    // Another writer stored this subject's key first: use theirs.
                    existing.push((subject, state));
                }
            }
        }
        let t_keys = t0.elapsed();
        for (subject, state) in existing {
            match state {
                KeyState::Active(k) => {
                    let dek = self
                        .provider
                        .unwrap(&dek_context(subject.as_str(), k.version), &k.wrapped)
                        .map_err(|_| VaultError::Integrity(format!("key of subject `{subject}`")))?;
                    deks.insert(subject, (k.version, dek));
                }
                KeyState::Destroyed { .. } => return Err(VaultError::Erased(subject.to_string())),
            }
        }
        let stored = self.seal_many(schema, coll, collection, records, &deks)?;
        let out = records.iter().map(|r| created.remove(&r.subject)).collect();
        let t_sealed = t0.elapsed();
        self.records.put_new_many(collection, &stored)?;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        tracing::debug!(
            records = records.len(),
            key_lookup_ms = ms(t_lookup),
            key_insert_ms = ms(t_keys - t_lookup),
            seal_ms = ms(t_sealed - t_keys),
            put_ms = ms(t0.elapsed() - t_sealed),
            "create-many timing"
        );
        Ok(out)
    }

    /// Seals `records` for [`Vault::create_many`], spread over the machine's cores: sealing
    /// (JSON encoding, one AEAD per field, blind-index HMACs) is the CPU-bound part of a bulk
    /// create, and the single write transaction after it is not.
    fn seal_many(
        &self,
        schema: &Schema,
        coll: &custody_core::CollectionSchema,
        collection: &CollectionName,
        records: &[NewRecord],
        deks: &HashMap<&SubjectId, (u32, DataKey)>,
    ) -> Result<Vec<crate::NewStoredRecord>, VaultError> {
        let seal_part = |part: &[NewRecord]| -> Result<Vec<crate::NewStoredRecord>, VaultError> {
            let mut stored = Vec::with_capacity(part.len());
            for r in part {
                let (version, dek) = deks
                    .get(&r.subject)
                    .ok_or_else(|| VaultError::Integrity(format!("missing key of `{}`", r.subject)))?;
                let mut record = StoredRecord {
                    subject: r.subject.clone(),
                    jurisdiction: r.jurisdiction.clone(),
                    key_version: *version,
                    fields: BTreeMap::new(),
                    terms: BTreeMap::new(),
                };
                let (_, add) =
                    self.seal_into(schema, coll, collection, &r.id, *version, dek, &r.fields, &mut record)?;
                stored.push((r.id.clone(), record, add));
            }
            Ok(stored)
        };
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .min(records.len() / MIN_RECORDS_PER_SEALING_THREAD)
            .max(1);
        if threads == 1 {
            return seal_part(records);
        }
        let per = records.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = records.chunks(per).map(|part| scope.spawn(move || seal_part(part))).collect();
            let mut stored = Vec::with_capacity(records.len());
            for h in handles {
                let part = h.join().map_err(|_| VaultError::Storage("a sealing thread failed".into()))??;
                stored.extend(part);
            }
            Ok(stored)
        })
    }

    /// The KEK version new keys are wrapped under.
    pub fn current_kek(&self) -> u32 {
        self.provider.current_kek()
    }

    /// The key provider's name (`file`, `pkcs11`), for key events.
    pub fn provider_name(&self) -> &str {
        self.provider.name()
    }

    /// The first of `ids` that names a live record of `collection`, checked in one read: a
    /// bulk create's conflict check.
    ///
    /// # Errors
    /// Storage failures.
    pub fn first_existing(
        &self,
        collection: &CollectionName,
        ids: &[&RecordId],
    ) -> Result<Option<RecordId>, VaultError> {
        self.records.first_existing(collection, ids)
    }

    /// The stored (still sealed) record.
    ///
    /// # Errors
    /// [`VaultError::NotFound`], storage failures.
    pub fn load(&self, collection: &CollectionName, id: &RecordId) -> Result<StoredRecord, VaultError> {
        self.records.get(collection, id)?.ok_or_else(|| VaultError::NotFound(format!("{collection}/{id}")))
    }

    /// Several stored records in one read, in order; `None` for an id with no record.
    ///
    /// # Errors
    /// [`VaultError::Erased`] if one is a tombstone, storage failures.
    pub fn load_many(
        &self,
        collection: &CollectionName,
        ids: &[RecordId],
    ) -> Result<Vec<Option<StoredRecord>>, VaultError> {
        self.records.get_many(collection, ids)
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
        self.open_with(schema, collection, id, record, permitted, &mut OpenKeys::default())
    }

    /// [`Vault::open`], taking subjects' keys from `keys` and leaving the ones it unwraps
    /// there, so one request reading many records of a subject unwraps its key once.
    ///
    /// # Errors
    /// As [`Vault::open`].
    pub fn open_with(
        &self,
        schema: &Schema,
        collection: &CollectionName,
        id: &RecordId,
        record: &StoredRecord,
        permitted: impl Fn(&DataClass) -> bool,
        keys: &mut OpenKeys,
    ) -> Result<OpenedRecord, VaultError> {
        self.open_fields(
            schema,
            collection,
            id,
            record,
            |_, class| permitted(class),
            || self.dek_in(keys, record.subject.as_str()),
        )
    }

    /// Reads the key states of `subjects` in one key-store call, for opening a page of
    /// records with [`Vault::open_in_page`]: a bulk reader then pays one key lookup per page
    /// and one unwrap per subject, instead of both per record.
    ///
    /// # Errors
    /// Storage failures.
    pub fn page_keys<'a>(&self, subjects: impl IntoIterator<Item = &'a SubjectId>) -> Result<OpenKeys, VaultError> {
        self.page_keys_of(subjects.into_iter().cloned().collect())
    }

    /// [`Vault::page_keys`] for subjects the caller already owns (a raw page's, validated
    /// from their stored strings), so they are moved into the result rather than cloned.
    ///
    /// # Errors
    /// As [`Vault::page_keys`].
    pub fn page_keys_of(&self, mut subjects: Vec<SubjectId>) -> Result<OpenKeys, VaultError> {
        subjects.sort_unstable();
        subjects.dedup();
        let states = self.keys.subject_keys(&subjects.iter().collect::<Vec<_>>())?;
        if states.len() != subjects.len() {
            return Err(VaultError::Storage("key store answered for the wrong number of subjects".into()));
        }
        let read =
            subjects.into_iter().zip(states).map(|(subject, state)| PageKey { subject, state, dek: None }).collect();
        Ok(OpenKeys { read, deks: HashMap::new() })
    }

    /// Opens the fields of `record` that `wanted` accepts (by field name and class), like
    /// [`Vault::open_with`]. No field `wanted` refuses is decrypted, so an export decrypts
    /// only the fields its plan reads.
    ///
    /// # Errors
    /// As [`Vault::open`].
    pub fn open_in_page(
        &self,
        keys: &mut OpenKeys,
        schema: &Schema,
        collection: &CollectionName,
        id: &RecordId,
        record: &StoredRecord,
        wanted: impl Fn(&FieldName, &DataClass) -> bool,
    ) -> Result<OpenedRecord, VaultError> {
        self.open_fields(schema, collection, id, record, wanted, || self.dek_in(keys, record.subject.as_str()))
    }

    /// Opens the fields of a record decoded borrowed from a [`RawPage`] (see
    /// [`Vault::scan_raw`]) that `wanted` accepts, handing each one's plaintext JSON bytes to
    /// `each` instead of building a map: the bulk export path, which transforms values as
    /// they come. The checks are [`Vault::open_in_page`]'s: fields are bound to `collection`,
    /// `id` and the key version, and a plaintext value where the schema demands a sealed one
    /// is an integrity error. `each` may be called for some fields before an error ends the
    /// record, so a caller drops what it collected for a record that fails.
    ///
    /// # Errors
    /// As [`Vault::open`], and whatever `each` returns.
    #[allow(clippy::too_many_arguments)]
    pub fn open_view_in_page(
        &self,
        keys: &mut OpenKeys,
        schema: &Schema,
        collection: &CollectionName,
        id: &str,
        record: &RecordView<'_>,
        wanted: impl Fn(&FieldName, &DataClass) -> bool,
        each: impl FnMut(&FieldName, &[u8]) -> Result<(), VaultError>,
    ) -> Result<(), VaultError> {
        self.open_each(
            schema,
            collection,
            id,
            record.key_version,
            |name| record.field(name),
            wanted,
            || self.dek_in(keys, record.subject),
            each,
        )
    }

    /// `subject`'s DEK from `keys`, unwrapped from the state read ahead or read now, and kept
    /// there for the next record of the subject.
    fn dek_in(&self, keys: &mut OpenKeys, subject: &str) -> Result<(u32, DataKey), VaultError> {
        if let Ok(i) = keys.read.binary_search_by(|k| k.subject.as_str().cmp(subject))
            && let Some(slot) = keys.read.get_mut(i)
        {
            if let Some((version, k)) = &slot.dek {
                return Ok((*version, k.clone()));
            }
            let (version, dek) = match &slot.state {
                Some(KeyState::Active(k)) => {
                    let dek = self
                        .provider
                        .unwrap(&dek_context(subject, k.version), &k.wrapped)
                        .map_err(|_| VaultError::Integrity(format!("key of subject `{subject}`")))?;
                    (k.version, dek)
                }
                Some(KeyState::Destroyed { .. }) => return Err(VaultError::Erased(subject.to_string())),
                None => return Err(VaultError::Integrity(format!("missing key of subject `{subject}`"))),
            };
            slot.dek = Some((version, dek.clone()));
            return Ok((version, dek));
        }
        if let Some((version, k)) = keys.deks.get(subject) {
            return Ok((*version, k.clone()));
        }
        let id = SubjectId::new(subject).map_err(|e| VaultError::Corrupt(format!("stored subject: {e}")))?;
        let (version, dek, _) = self.subject_dek(&id, false)?;
        keys.deks.insert(id, (version, dek.clone()));
        Ok((version, dek))
    }

    /// The `open` family on an owned record: the opened values parsed into a map.
    fn open_fields(
        &self,
        schema: &Schema,
        collection: &CollectionName,
        id: &RecordId,
        record: &StoredRecord,
        wanted: impl Fn(&FieldName, &DataClass) -> bool,
        dek_of: impl FnMut() -> Result<(u32, DataKey), VaultError>,
    ) -> Result<OpenedRecord, VaultError> {
        let mut fields = BTreeMap::new();
        self.open_each(
            schema,
            collection,
            id.as_str(),
            record.key_version,
            |name| record.fields.get(name).map(StoredValue::view),
            wanted,
            dek_of,
            |fname, json| {
                let value: Value =
                    serde_json::from_slice(json).map_err(|_| VaultError::Corrupt(format!("{collection}/{id}")))?;
                fields.insert(fname.clone(), value);
                Ok(())
            },
        )?;
        Ok(OpenedRecord { fields })
    }

    /// The shared body of the `open` family: for each field of `collection` that `wanted`
    /// accepts and the record stores (`stored`), its plaintext JSON bytes go to `each`.
    /// `dek_of` is called at most once, for the first sealed field `wanted` accepts.
    #[allow(clippy::too_many_arguments)]
    fn open_each<'r>(
        &self,
        schema: &Schema,
        collection: &CollectionName,
        id: &str,
        key_version: u32,
        stored: impl Fn(&str) -> Option<ValueView<'r>>,
        wanted: impl Fn(&FieldName, &DataClass) -> bool,
        mut dek_of: impl FnMut() -> Result<(u32, DataKey), VaultError>,
        mut each: impl FnMut(&FieldName, &[u8]) -> Result<(), VaultError>,
    ) -> Result<(), VaultError> {
        let (_, coll) = schema.collection(collection.as_str()).map_err(|e| VaultError::NotFound(e.to_string()))?;
        let mut dek: Option<DataKey> = None;
        // One plaintext buffer for the record's sealed fields, wiped when the record is done.
        let mut plain = Zeroizing::new(Vec::new());
        for (fname, spec) in &coll.fields {
            if !wanted(fname, &spec.class) {
                continue;
            }
            let Some(value) = stored(fname.as_str()) else { continue };
            let json = match value {
                ValueView::Plain(bytes) => {
                    if schema.is_encrypted(&spec.class) {
                        // A plaintext value where the schema demands a sealed one was planted.
                        return Err(VaultError::Integrity(format!(
                            "field `{fname}` of `{collection}/{id}` is not sealed"
                        )));
                    }
                    bytes
                }
                ValueView::Sealed(sealed) => {
                    if dek.is_none() {
                        let (version, k) = dek_of()?;
                        if version != key_version {
                            return Err(VaultError::Integrity(format!("key version of `{collection}/{id}`")));
                        }
                        dek = Some(k);
                    }
                    let Some(k) = dek.as_ref() else { continue };
                    let ctx = FieldContext {
                        collection: collection.as_str(),
                        record: id,
                        field: fname.as_str(),
                        key_version: KeyVersion(key_version),
                    };
                    open_field_into(k, &ctx, sealed, &mut plain)
                        .map_err(|_| VaultError::Integrity(format!("field `{fname}` of `{collection}/{id}`")))?;
                    plain.as_slice()
                }
            };
            each(fname, json)?;
        }
        Ok(())
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

    /// Whether the subject was erased (their key destroyed).
    ///
    /// # Errors
    /// Storage failures.
    pub fn subject_erased(&self, subject: &SubjectId) -> Result<bool, VaultError> {
        Ok(matches!(self.keys.subject_key(subject)?, Some(KeyState::Destroyed { .. })))
    }

    /// The records about `subject`, at most `limit`, for an export.
    ///
    /// # Errors
    /// Storage failures.
    pub fn subject_records(
        &self,
        subject: &SubjectId,
        limit: usize,
    ) -> Result<Vec<(CollectionName, RecordId)>, VaultError> {
        self.records.subject_records(subject, limit)
    }

    /// Up to `limit` stored (still sealed) records of `collection` after `after`, in id order.
    ///
    /// # Errors
    /// Storage failures.
    pub fn scan(
        &self,
        collection: &CollectionName,
        after: Option<&RecordId>,
        limit: usize,
    ) -> Result<Vec<(RecordId, StoredRecord)>, VaultError> {
        self.records.scan(collection, after, limit)
    }

    /// Up to `limit` stored records of `collection` after `after`, in id order, into `page`
    /// as their stored bytes: the bulk reader's scan, decoded with [`RecordView::decode`] and
    /// opened with [`Vault::open_view_in_page`].
    ///
    /// # Errors
    /// Storage failures.
    pub fn scan_raw(
        &self,
        collection: &CollectionName,
        after: Option<&str>,
        limit: usize,
        page: &mut RawPage,
    ) -> Result<(), VaultError> {
        self.records.scan_raw(collection, after, limit, page)
    }

    /// The deployment's egress pseudonym key, created on first use; the flag says whether
    /// this call created it (a key event for the log). Per-destination, per-epoch keys are
    /// derived from it, so pseudonyms in exports are unlinkable to the log's pseudonyms.
    ///
    /// # Errors
    /// Storage failures, or [`VaultError::Integrity`] if it does not unwrap.
    pub fn egress_key(&self) -> Result<([u8; 32], bool), VaultError> {
        let existed = self.keys.system_key(EGRESS_KEY)?.is_some();
        Ok((system_key(self.keys.as_ref(), self.provider.as_ref(), EGRESS_KEY)?, !existed))
    }

    /// Erases a subject: destroys their DEK in the key store (durably; from then on nothing
    /// sealed under it opens, in this record storage or any copy of it), then tombstones
    /// their records and drops their blind-index entries. Idempotent: running it again
    /// after a crash between the two steps finishes the job.
    ///
    /// # Errors
    /// Storage failures; the steps already committed stay done.
    pub fn erase_subject(&self, subject: &SubjectId) -> Result<Erasure, VaultError> {
        let live = match self.keys.subject_key(subject)? {
            Some(KeyState::Active(k)) => Some(k.version),
            _ => None,
        };
        let destroyed = self.keys.destroy_subject_key(subject)?;
        let tombstoned = self.records.tombstone_subject(subject)?;
        Ok(Erasure { destroyed_key: live.filter(|_| destroyed), tombstoned })
    }

    /// The KEK rotation in progress, if any.
    ///
    /// # Errors
    /// Storage failures.
    pub fn kek_rotation(&self) -> Result<Option<RotationProgress>, VaultError> {
        let total = self.keys.subject_key_count()?;
        Ok(self.keys.rotation_state()?.map(|s| progress(&s, total)))
    }

    /// Starts a KEK rotation, or resumes the one in progress: makes a new KEK current (new
    /// DEKs are wrapped under it from now on) and rewraps the system keys. Returns the
    /// target version and whether this call created it.
    ///
    /// # Errors
    /// Provider or storage failures.
    pub fn begin_kek_rotation(&self) -> Result<(u32, bool), VaultError> {
        let _step = self.rotation.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = self.keys.rotation_state()? {
            return Ok((s.target, false));
        }
        let (target, created) = {
            let _gate = self.wrap_gate.write().unwrap_or_else(PoisonError::into_inner);
            if self.provider.kek_versions().len() > 1 {
                // A rotation that crashed before recording its state: resume towards the newest KEK.
                (self.provider.current_kek(), false)
            } else {
                (self.provider.new_kek()?, true)
            }
        };
        self.rewrap_system_keys(target)?;
        let state = RotationState { target, cursor: None, scanned: 0, rewrapped: 0, scanned_all: false };
        self.keys.rewrap_subject_keys(&[], Some(&state))?;
        Ok((target, created))
    }

    fn rewrap_system_keys(&self, target: u32) -> Result<(), VaultError> {
        for (name, wrapped) in self.keys.system_keys()? {
            if self.provider.kek_of(&wrapped)? != target {
                let new = self.provider.rewrap(&system_context(&name), &wrapped)?;
                self.keys.replace_system_key(&name, &wrapped, &new)?;
            }
        }
        Ok(())
    }

    /// Rewraps the next `batch` subject keys under the target KEK, durably with the
    /// rotation's progress, so an interrupted rotation resumes where it stopped.
    ///
    /// # Errors
    /// [`VaultError::Rotation`] if no rotation is in progress; provider or storage failures
    /// (the batch is then not applied and can be retried).
    pub fn rotate_kek_step(&self, batch: usize) -> Result<RotationProgress, VaultError> {
        let _step = self.rotation.lock().unwrap_or_else(PoisonError::into_inner);
        let state = self.keys.rotation_state()?.ok_or_else(no_rotation)?;
        let total = self.keys.subject_key_count()?;
        if state.scanned_all {
            return Ok(progress(&state, total));
        }
        let page = self.keys.subject_keys_after(state.cursor.as_deref(), batch.max(1))?;
        let work = self.rewrap_page(&page, state.target)?;
        let next = RotationState {
            target: state.target,
            cursor: page.last().map(|(s, _)| s.clone()).or(state.cursor),
            scanned: state.scanned + page.len() as u64,
            rewrapped: state.rewrapped,
            scanned_all: page.len() < batch.max(1),
        };
        let replaced = self.keys.rewrap_subject_keys(&work, Some(&next))?;
        Ok(progress(&RotationState { rewrapped: next.rewrapped + replaced, ..next }, total))
    }

    fn rewrap_page(&self, page: &[(String, KeyState)], target: u32) -> Result<Vec<Rewrap>, VaultError> {
        let mut work = Vec::new();
        for (subject, state) in page {
            let KeyState::Active(k) = state else { continue };
            if self.provider.kek_of(&k.wrapped)? == target {
                continue;
            }
            let sid = SubjectId::new(subject).map_err(|_| VaultError::Corrupt(format!("subject key `{subject}`")))?;
            let new = self.provider.rewrap(&dek_context(sid.as_str(), k.version), &k.wrapped)?;
            work.push((subject.clone(), k.wrapped.clone(), new));
        }
        Ok(work)
    }

    /// The KEK versions a finished rotation will destroy (all but the target), so they can
    /// be logged before [`Vault::finish_kek_rotation`] destroys them.
    ///
    /// # Errors
    /// [`VaultError::Rotation`] unless a rotation has scanned every key.
    pub fn kek_versions_to_retire(&self) -> Result<(u32, Vec<u32>), VaultError> {
        let state = self.keys.rotation_state()?.ok_or_else(no_rotation)?;
        if !state.scanned_all {
            return Err(VaultError::Rotation("not every key is rewrapped yet".into()));
        }
        let old = self.provider.kek_versions().into_iter().filter(|v| *v != state.target).collect();
        Ok((state.target, old))
    }

    /// Finishes a rotation: with new DEKs held back, checks every wrapped key (rewrapping any
    /// left under an old KEK), then destroys the old KEK versions and clears the progress.
    /// Returns the versions destroyed.
    ///
    /// # Errors
    /// [`VaultError::Rotation`] unless every key was scanned; provider or storage failures
    /// (no KEK is destroyed then).
    pub fn finish_kek_rotation(&self) -> Result<Vec<u32>, VaultError> {
        let _step = self.rotation.lock().unwrap_or_else(PoisonError::into_inner);
        let (target, old) = self.kek_versions_to_retire()?;
        let _gate = self.wrap_gate.write().unwrap_or_else(PoisonError::into_inner);
        let mut cursor: Option<String> = None;
        loop {
            let page = self.keys.subject_keys_after(cursor.as_deref(), 4096)?;
            let work = self.rewrap_page(&page, target)?;
            if !work.is_empty() {
                let state = self.keys.rotation_state()?;
                self.keys.rewrap_subject_keys(&work, state.as_ref())?;
            }
            if page.len() < 4096 {
                break;
            }
            cursor = page.last().map(|(s, _)| s.clone());
        }
        self.rewrap_system_keys(target)?;
        for v in &old {
            self.provider.destroy_kek(*v)?;
        }
        self.keys.rewrap_subject_keys(&[], None)?;
        Ok(old)
    }
}

fn no_rotation() -> VaultError {
    VaultError::Rotation("no KEK rotation is in progress".into())
}

fn progress(s: &RotationState, total: u64) -> RotationProgress {
    RotationProgress {
        target: s.target,
        scanned: s.scanned,
        rewrapped: s.rewrapped,
        total: total.max(s.scanned),
        scanned_all: s.scanned_all,
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

    fn new_records(f: &Fixture, from: usize, to: usize, subjects: usize) -> Vec<NewRecord> {
        let c = CollectionName::new("profiles").unwrap();
        (from..to)
            .map(|i| {
                let body = serde_json::json!({"email": format!("e{i}@x"), "phone": "555", "handle": format!("h{i}")});
                NewRecord {
                    id: RecordId::new(format!("b{i}")).unwrap(),
                    subject: SubjectId::new(format!("s{}", i % subjects)).unwrap(),
                    jurisdiction: Jurisdiction::new("US").unwrap(),
                    fields: f.schema.validate_fields(&c, body.as_object().unwrap(), false).unwrap(),
                }
            })
            .collect()
    }

    #[test]
    fn concurrent_bulk_creates_commit_together_and_a_conflicting_one_is_refused_alone() {
        let f = Arc::new(fixture());
        let c = CollectionName::new("profiles").unwrap();
        // Enough records per batch that sealing is spread over threads.
        let batches: Vec<Vec<NewRecord>> = (0..6).map(|b| new_records(&f, b * 300, (b + 1) * 300, 450)).collect();
        let threads: Vec<_> = batches
            .into_iter()
            .map(|batch| {
                let f = f.clone();
                std::thread::spawn(move || {
                    f.vault.create_many(&f.schema, &CollectionName::new("profiles").unwrap(), &batch)
                })
            })
            .collect();
        let mut created = 0;
        for t in threads {
            created += t.join().unwrap().unwrap().iter().flatten().count();
        }
        assert_eq!(created, 450, "each subject's key is created once, by whichever batch came first");
        // One record of this batch exists already: none of it is written.
        let clash = new_records(&f, 1799, 1900, 1000);
        assert!(matches!(f.vault.create_many(&f.schema, &c, &clash), Err(VaultError::AlreadyExists(_))));
        assert!(matches!(f.vault.load(&c, &RecordId::new("b1850").unwrap()), Err(VaultError::NotFound(_))));
        for i in [0, 299, 300, 1799] {
            let opened = open_all(&f, &format!("b{i}")).unwrap();
            assert_eq!(opened.fields[&FieldName::new("email").unwrap()], format!("e{i}@x"));
        }
        let ids: Vec<RecordId> = ["b1", "nope", "b2"].iter().map(|i| RecordId::new(*i).unwrap()).collect();
        let loaded = f.vault.load_many(&c, &ids).unwrap();
        assert!(loaded[0].is_some() && loaded[1].is_none() && loaded[2].is_some());
        let refs: Vec<&RecordId> = ids.iter().collect();
        assert_eq!(f.vault.first_existing(&c, &refs[1..]).unwrap(), Some(ids[2].clone()));
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

    #[test]
    fn erasure_tombstones_records_and_drops_index_entries() {
        let f = fixture();
        put(&f, "r1", "s1", "a@x");
        put(&f, "r2", "s1", "b@x");
        put(&f, "r3", "s2", "a@x");
        let s1 = SubjectId::new("s1").unwrap();
        assert_eq!(f.vault.subject_records(&s1, 10).unwrap().len(), 2);
        let e = f.vault.erase_subject(&s1).unwrap();
        assert_eq!(e, Erasure { destroyed_key: Some(1), tombstoned: 2 });
        assert!(matches!(open_all(&f, "r1"), Err(VaultError::Erased(_))));
        let (c, r1) = ids("profiles", "r1");
        assert!(matches!(f.vault.load(&c, &r1), Err(VaultError::Erased(_))), "a tombstone answers erased");
        let email = FieldName::new("email").unwrap();
        assert_eq!(f.vault.search(&c, &email, &"a@x".into(), 10).unwrap(), vec![RecordId::new("r3").unwrap()]);
        assert!(f.vault.subject_records(&s1, 10).unwrap().is_empty());
        assert_eq!(f.vault.erase_subject(&s1).unwrap(), Erasure { destroyed_key: None, tombstoned: 0 });
        assert_eq!(open_all(&f, "r3").unwrap().fields.len(), 3);
    }

    #[test]
    fn kek_rotation_rewraps_every_key_and_retires_the_old_kek() {
        let f = fixture();
        for i in 0..25 {
            put(&f, &format!("r{i}"), &format!("s{i}"), "a@x");
        }
        f.vault.erase_subject(&SubjectId::new("s3").unwrap()).unwrap();
        let (target, created) = f.vault.begin_kek_rotation().unwrap();
        assert_eq!((target, created), (2, true));
        assert_eq!(f.vault.begin_kek_rotation().unwrap(), (2, false), "a second start resumes");
        put(&f, "late", "s-late", "l@x");
        let mut p = f.vault.rotate_kek_step(10).unwrap();
        while !p.scanned_all {
            p = f.vault.rotate_kek_step(10).unwrap();
        }
        assert_eq!(p.scanned, 26);
        assert_eq!(p.rewrapped, 24);
        assert_eq!(f.vault.finish_kek_rotation().unwrap(), vec![1]);
        assert!(f.vault.kek_rotation().unwrap().is_none());
        for i in (0..25).filter(|i| *i != 3) {
            assert_eq!(open_all(&f, &format!("r{i}")).unwrap().fields.len(), 3);
        }
        assert_eq!(open_all(&f, "late").unwrap().fields.len(), 3);
        let c = CollectionName::new("profiles").unwrap();
        let email = FieldName::new("email").unwrap();
        assert_eq!(f.vault.search(&c, &email, &"a@x".into(), 100).unwrap().len(), 24, "the index key was rewrapped");
    }

    #[test]
    fn an_interrupted_rotation_resumes_after_a_restart() {
        let f = fixture();
        for i in 0..12 {
            put(&f, &format!("r{i}"), &format!("s{i}"), "a@x");
        }
        f.vault.begin_kek_rotation().unwrap();
        let p = f.vault.rotate_kek_step(5).unwrap();
        assert_eq!((p.scanned, p.rewrapped, p.scanned_all), (5, 5, false));
        assert!(f.vault.finish_kek_rotation().is_err(), "not every key is rewrapped yet");
        // A restart: a new provider and vault over the same files.
        let provider = Arc::new(FileKeyProvider::open(&f._dir.path().join("keys/kek")).unwrap());
        assert_eq!(provider.kek_versions(), vec![1, 2]);
        let vault = Vault::new(f.store.clone(), f.store.clone(), provider).unwrap();
        assert_eq!(vault.begin_kek_rotation().unwrap(), (2, false));
        let mut p = vault.rotate_kek_step(5).unwrap();
        assert_eq!(p.scanned, 10, "resumed after the cursor");
        while !p.scanned_all {
            p = vault.rotate_kek_step(5).unwrap();
        }
        assert_eq!(p.rewrapped, 12);
        assert_eq!(vault.finish_kek_rotation().unwrap(), vec![1]);
        let (c, r) = ids("profiles", "r11");
        let rec = vault.load(&c, &r).unwrap();
        assert_eq!(vault.open(&f.schema, &c, &r, &rec, |_| true).unwrap().fields.len(), 3);
    }
}
