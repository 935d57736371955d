//! The embedded backend: two redb databases under the data dir.
//!
//! `records.redb` holds records, blind-index entries and principals; `keys.redb` holds
//! wrapped keys. Keeping them in separate files is what lets an operator (or a test) show
//! that a copy of record storage alone decrypts nothing, and lets erasure be checked against
//! a pre-erasure copy of record storage.

use std::path::Path;
use std::sync::{Mutex, PoisonError, RwLock};

use redb::{Database, ReadableTable, ReadableTableMetadata, Table, TableDefinition, WriteTransaction};

use custody_core::{CollectionName, PrincipalId, PrincipalRecord, RecordId, SubjectId};
use custody_crypto::BlindIndexTerm;

use crate::delta::{self, DeltaChanges, IndexDelta, MERGE_AT};
use crate::group::GroupCommit;
use crate::{
    KeyState, KeyStore, PrincipalStore, RawPage, RecordStore, Rewrap, RotationState, StoredRecord, VaultError,
    WrappedKey,
};

const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
const INDEX: TableDefinition<&[u8], ()> = TableDefinition::new("blind_index");
/// Blind-index entries not yet merged into [`INDEX`]: rows of up to 256 entries, packed,
/// written by the transactions that added them, by sequence number (see [`crate::delta`]).
const INDEX_DELTA: TableDefinition<u64, &[u8]> = TableDefinition::new("blind_index_delta");
const PRINCIPALS: TableDefinition<&str, &[u8]> = TableDefinition::new("principals");
const SUBJECT_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("subject_keys");
const SYSTEM_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("system_keys");
/// `subject NUL collection NUL id`: the records about each subject, for export and erasure.
const SUBJECT_INDEX: TableDefinition<&[u8], ()> = TableDefinition::new("subject_index");
/// Record keys of erased records: reads of them answer "erased", not "not found".
const TOMBSTONES: TableDefinition<&[u8], ()> = TableDefinition::new("tombstones");
/// Markers and progress records (`subject-index-v1`, `kek-rotation`).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SUBJECT_INDEX_BUILT: &str = "subject-index-v1";
const KEK_ROTATION: &str = "kek-rotation";

/// redb's page cache for `records.redb`. redb's default (1 GiB) let a full scan of a million
/// records grow the process by the size of the table; past this the OS page cache serves
/// re-reads, so memory stays flat in the number of records (`custody bench egress`).
const RECORDS_CACHE: usize = 64 << 20;
/// redb's page cache for `keys.redb`: wrapped keys are small, and a bulk read of them is one
/// lookup per subject.
const KEYS_CACHE: usize = 32 << 20;

/// Records, index, principals and keys in two redb files.
#[derive(Debug)]
pub struct RedbStore {
    records: Database,
    keys: Database,
    /// Record writes (single puts and bulk creates), committed in groups (see [`crate::group`]).
    record_writes: GroupCommit<Vec<Row>, Result<(), VaultError>>,
    /// Bulk inserts of subject keys, committed in groups.
    new_keys: GroupCommit<NewKeys, Result<Vec<KeyState>, VaultError>>,
    /// Held by the one transaction at a time that changes the blind index or its delta.
    index_writer: Mutex<()>,
    /// The committed blind-index delta, mirrored in memory for searches and writers.
    delta: RwLock<IndexDelta>,
}

/// Subject keys one bulk create inserts.
type NewKeys = Vec<(SubjectId, WrappedKey)>;

/// One record write, encoded before the write transaction so the transaction (the serial
/// part) only inserts.
#[derive(Debug)]
struct Row {
    /// `collection/id`, for errors.
    name: String,
    key: Vec<u8>,
    bytes: Vec<u8>,
    /// A create: refused if the id is taken or erased.
    must_be_new: bool,
    subject_key: Vec<u8>,
    index_remove: Vec<Vec<u8>>,
    index_add: Vec<Vec<u8>>,
}

fn index_keys(collection: &CollectionName, id: &RecordId, terms: &[(String, BlindIndexTerm)]) -> Vec<Vec<u8>> {
    terms
        .iter()
        .map(|(field, term)| [index_prefix(collection, field, term), id.as_str().as_bytes().to_vec()].concat())
        .collect()
}

/// The answer for every job of a group whose transaction failed as a whole.
fn group_failed(e: &VaultError) -> VaultError {
    VaultError::Storage(format!("bulk write failed: {e}"))
}

fn lost() -> VaultError {
    VaultError::Storage("bulk write was not committed".into())
}

fn record_key(collection: &CollectionName, id: &RecordId) -> Vec<u8> {
    // Ids and names never contain NUL (they are validated), so NUL separates unambiguously.
    [collection.as_str().as_bytes(), b"\0", id.as_str().as_bytes()].concat()
}

/// A collection scan's key prefix and range: from just after `after` (or the first key of
/// the collection) to just past the collection's last possible key.
fn scan_bounds(collection: &CollectionName, after: Option<&str>) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let prefix = [collection.as_str().as_bytes(), b"\0"].concat();
    // After the prefix's last possible key: the collection name followed by 0x01.
    let end = [collection.as_str().as_bytes(), b"\x01"].concat();
    let start = match after {
        // The smallest key greater than the collection's key of `after`.
        Some(id) => [prefix.as_slice(), id.as_bytes(), b"\0"].concat(),
        None => prefix.clone(),
    };
    (prefix, start, end)
}

/// The record id in a key a collection scan returned: only that collection's keys are in
/// range, so the id is what follows the prefix.
fn scanned_id<'k>(collection: &CollectionName, prefix: &[u8], key: &'k [u8]) -> Result<&'k str, VaultError> {
    key.get(prefix.len()..)
        .and_then(|raw| std::str::from_utf8(raw).ok())
        .ok_or_else(|| VaultError::Corrupt(format!("{collection}/record key")))
}

fn subject_key(subject: &SubjectId, collection: &CollectionName, id: &RecordId) -> Vec<u8> {
    [subject.as_str().as_bytes(), b"\0", collection.as_str().as_bytes(), b"\0", id.as_str().as_bytes()].concat()
}

fn subject_prefix(subject: &SubjectId) -> Vec<u8> {
    [subject.as_str().as_bytes(), b"\0"].concat()
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
        let open = |p: &Path, cache: usize| {
            Database::builder()
                .set_cache_size(cache)
                .create(p)
                .map_err(|e| VaultError::Storage(format!("cannot open `{}`: {e}", p.display())))
        };
        let records = open(&records_dir.join("records.redb"), RECORDS_CACHE)?;
        let keys = open(&keys_dir.join("keys.redb"), KEYS_CACHE)?;
        let w = records.begin_write()?;
        w.open_table(RECORDS)?;
        w.open_table(INDEX)?;
        let delta = {
            let t = w.open_table(INDEX_DELTA)?;
            let mut rows = Vec::new();
            for entry in t.iter()? {
                let (seq, row) = entry?;
                let keys = delta::unpack(row.value()).ok_or_else(|| VaultError::Corrupt("blind index delta".into()))?;
                rows.push((seq.value(), keys.into_iter().map(<[u8]>::to_vec).collect()));
            }
            IndexDelta::from_rows(rows, MERGE_AT)
        };
        w.open_table(PRINCIPALS)?;
        w.open_table(TOMBSTONES)?;
        {
            // Data dirs from before the subject index get it built once, here.
            let mut meta = w.open_table(META)?;
            if meta.get(SUBJECT_INDEX_BUILT)?.is_none() {
                let t = w.open_table(RECORDS)?;
                let mut sx = w.open_table(SUBJECT_INDEX)?;
                for entry in t.iter()? {
                    let (k, v) = entry?;
                    let r: StoredRecord = decode("record", v.value())?;
                    let key = [r.subject.as_str().as_bytes(), b"\0", k.value()].concat();
                    sx.insert(key.as_slice(), ())?;
                }
                meta.insert(SUBJECT_INDEX_BUILT, [1u8].as_slice())?;
            }
        }
        w.commit()?;
        let w = keys.begin_write()?;
        w.open_table(SUBJECT_KEYS)?;
        w.open_table(SYSTEM_KEYS)?;
        w.open_table(META)?;
        w.commit()?;
        Ok(Self {
            records,
            keys,
            record_writes: GroupCommit::default(),
            new_keys: GroupCommit::default(),
            index_writer: Mutex::new(()),
            delta: RwLock::new(delta),
        })
    }

    /// Sets how many delta entries trigger a merge into the sorted index (tests use small
    /// numbers to merge often).
    #[doc(hidden)]
    pub fn set_index_merge_at(&self, entries: usize) {
        self.delta.write().unwrap_or_else(PoisonError::into_inner).set_merge_at(entries);
    }

    /// Blind-index entries waiting in the delta, not yet merged into the sorted index.
    #[doc(hidden)]
    pub fn index_delta_len(&self) -> usize {
        self.delta.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Runs `f` as the one index-writing transaction, commits it, then publishes its delta
    /// changes before the next index writer may begin (the first rule in [`crate::delta`]).
    fn index_txn<T>(
        &self,
        f: impl FnOnce(&WriteTransaction, &IndexDelta, &mut DeltaChanges) -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        let _writer = self.index_writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut changes = DeltaChanges::default();
        let out = {
            let delta = self.delta.read().unwrap_or_else(PoisonError::into_inner);
            let w = self.records.begin_write()?;
            let out = f(&w, &delta, &mut changes)?;
            let writes = delta.writes(&mut changes);
            {
                let mut dt = w.open_table(INDEX_DELTA)?;
                for seq in writes.edited {
                    let kept = match dt.get(seq)? {
                        Some(row) => delta::unpack(row.value())
                            .ok_or_else(|| VaultError::Corrupt("blind index delta".into()))?
                            .into_iter()
                            .filter(|k| IndexDelta::keep(&changes, k))
                            .map(<[u8]>::to_vec)
                            .collect::<Vec<_>>(),
                        None => return Err(VaultError::Corrupt(format!("blind index delta row {seq} is missing"))),
                    };
                    if kept.is_empty() {
                        dt.remove(seq)?;
                    } else {
                        dt.insert(seq, delta::pack(kept.iter().map(Vec::as_slice)).as_slice())?;
                    }
                }
                for (seq, row) in writes.rows {
                    dt.insert(seq, row.as_slice())?;
                }
            }
            w.commit()?;
            out
        };
        self.delta.write().unwrap_or_else(PoisonError::into_inner).apply(changes);
        Ok(out)
    }

    /// Runs merge steps until no round is under way and the delta is below the size that
    /// starts one (tests use it to reach a settled index).
    #[doc(hidden)]
    pub fn settle_index_delta(&self) {
        for _ in 0..1_000_000 {
            if !self.delta.read().unwrap_or_else(PoisonError::into_inner).merge_due() {
                return;
            }
            self.merge_index_delta_if_due();
        }
    }

    /// Runs the next step of a blind-index merge round, if one is due (see [`crate::delta`]).
    /// Called after each record write is answered, so steps take turns with group commits. A
    /// failed step changes nothing (acknowledged writes stay searchable through the delta)
    /// and is tried again after a later write.
    fn merge_index_delta_if_due(&self) {
        if !self.delta.read().unwrap_or_else(PoisonError::into_inner).merge_due() {
            return;
        }
        let _writer = self.index_writer.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(step) = self.delta.read().unwrap_or_else(PoisonError::into_inner).next_step() else { return };
        let started = std::time::Instant::now();
        let run = || -> Result<(), VaultError> {
            let w = self.records.begin_write()?;
            {
                let mut ix = w.open_table(INDEX)?;
                for key in &step.keys {
                    ix.insert(key.as_slice(), ())?;
                }
                if let Some(end) = step.drop_rows_before {
                    w.open_table(INDEX_DELTA)?.retain_in(..end, |_, _| false)?;
                }
            }
            w.commit()?;
            Ok(())
        };
        match run() {
            Ok(()) => {
                let (entries, last) = (step.keys.len(), step.drop_rows_before.is_some());
                self.delta.write().unwrap_or_else(PoisonError::into_inner).step_done(step);
                tracing::debug!(entries, last, elapsed = ?started.elapsed(), "merged a step of the blind-index delta");
            }
            Err(e) => {
                tracing::warn!(error = %e, "merging the blind-index delta failed; it stays searchable and is retried")
            }
        }
    }
}

/// Removes `key` from the blind index: from the delta and the sorted index, as it may be in both.
fn unindex(
    delta: &IndexDelta,
    changes: &mut DeltaChanges,
    ix: &mut Table<'_, &'static [u8], ()>,
    key: &[u8],
) -> Result<(), VaultError> {
    delta.remove(changes, key);
    ix.remove(key)?;
    Ok(())
}

impl RedbStore {
    /// Writes the record writes in `jobs` in one transaction: each job all or none (a create
    /// naming a taken or erased id is refused alone), the transaction committed once.
    fn commit_record_writes(&self, jobs: &[Vec<Row>]) -> Vec<Result<(), VaultError>> {
        let run = |w: &WriteTransaction, delta: &IndexDelta, changes: &mut DeltaChanges| {
            let mut outcomes = Vec::with_capacity(jobs.len());
            {
                let mut t = w.open_table(RECORDS)?;
                let mut ix = w.open_table(INDEX)?;
                let mut sx = w.open_table(SUBJECT_INDEX)?;
                let tombstones = w.open_table(TOMBSTONES)?;
                for rows in jobs {
                    // Check the whole job before inserting any of it: all or none.
                    let mut refused = None;
                    let mut keys = std::collections::HashSet::with_capacity(rows.len());
                    for row in rows.iter().filter(|r| r.must_be_new) {
                        if !keys.insert(row.key.as_slice()) || t.get(row.key.as_slice())?.is_some() {
                            refused = Some(VaultError::AlreadyExists(row.name.clone()));
                        } else if tombstones.get(row.key.as_slice())?.is_some() {
                            refused = Some(VaultError::Erased(row.name.clone()));
                        }
                        if refused.is_some() {
                            break;
                        }
                    }
                    if let Some(e) = refused {
                        outcomes.push(Err(e));
                        continue;
                    }
                    for row in rows {
                        t.insert(row.key.as_slice(), row.bytes.as_slice())?;
                        sx.insert(row.subject_key.as_slice(), ())?;
                        for k in &row.index_remove {
                            unindex(delta, changes, &mut ix, k)?;
                        }
                        for k in &row.index_add {
                            delta.add(changes, k);
                        }
                    }
                    outcomes.push(Ok(()));
                }
            }
            Ok(outcomes)
        };
        match self.index_txn(run) {
            Ok(outcomes) => outcomes,
            // Any failure but a refused job aborts the transaction: nothing of it is written.
            Err(e) => jobs.iter().map(|_| Err(group_failed(&e))).collect(),
        }
    }

    /// Inserts the subject keys of `jobs` in one transaction; per job, the state in force
    /// for each of its subjects.
    fn commit_new_keys(&self, jobs: &[NewKeys]) -> Vec<Result<Vec<KeyState>, VaultError>> {
        let run = || -> Result<Vec<Result<Vec<KeyState>, VaultError>>, VaultError> {
            let w = self.keys.begin_write()?;
            let mut outcomes = Vec::with_capacity(jobs.len());
            {
                let mut t = w.open_table(SUBJECT_KEYS)?;
                for keys in jobs {
                    let mut states = Vec::with_capacity(keys.len());
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
                    outcomes.push(Ok(states));
                }
            }
            w.commit()?;
            Ok(outcomes)
        };
        match run() {
            Ok(outcomes) => outcomes,
            Err(e) => jobs.iter().map(|_| Err(group_failed(&e))).collect(),
        }
    }
}

fn parse_record_key(key: &[u8]) -> Result<(CollectionName, RecordId), VaultError> {
    let bad = || VaultError::Corrupt("subject index entry".into());
    let text = std::str::from_utf8(key).map_err(|_| bad())?;
    let (c, i) = text.split_once('\0').ok_or_else(bad)?;
    Ok((CollectionName::new(c).map_err(|_| bad())?, RecordId::new(i).map_err(|_| bad())?))
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
        let key = record_key(collection, id);
        match t.get(key.as_slice())? {
            Some(v) => Ok(Some(decode(&format!("{collection}/{id}"), v.value())?)),
            None if r.open_table(TOMBSTONES)?.get(key.as_slice())?.is_some() => {
                Err(VaultError::Erased(format!("{collection}/{id}")))
            }
            None => Ok(None),
        }
    }

    fn get_many(&self, collection: &CollectionName, ids: &[RecordId]) -> Result<Vec<Option<StoredRecord>>, VaultError> {
        let r = self.records.begin_read()?;
        let t = r.open_table(RECORDS)?;
        let tombstones = r.open_table(TOMBSTONES)?;
        ids.iter()
            .map(|id| {
                let key = record_key(collection, id);
                match t.get(key.as_slice())? {
                    Some(v) => Ok(Some(decode(&format!("{collection}/{id}"), v.value())?)),
                    None if tombstones.get(key.as_slice())?.is_some() => {
                        Err(VaultError::Erased(format!("{collection}/{id}")))
                    }
                    None => Ok(None),
                }
            })
            .collect()
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
        let row = Row {
            name: format!("{collection}/{id}"),
            key: record_key(collection, id),
            bytes: encode(record)?,
            must_be_new,
            subject_key: subject_key(&record.subject, collection, id),
            index_remove: index_keys(collection, id, index_remove),
            index_add: index_keys(collection, id, index_add),
        };
        let written = self.record_writes.submit(vec![row], |jobs| self.commit_record_writes(&jobs), || Err(lost()));
        self.merge_index_delta_if_due();
        written
    }

    fn put_new_many(&self, collection: &CollectionName, records: &[crate::NewStoredRecord]) -> Result<(), VaultError> {
        let rows: Vec<Row> = records
            .iter()
            .map(|(id, r, add)| {
                Ok(Row {
                    name: format!("{collection}/{id}"),
                    key: record_key(collection, id),
                    bytes: encode(r)?,
                    must_be_new: true,
                    subject_key: subject_key(&r.subject, collection, id),
                    index_remove: Vec::new(),
                    index_add: index_keys(collection, id, add),
                })
            })
            .collect::<Result<_, VaultError>>()?;
        let written = self.record_writes.submit(rows, |jobs| self.commit_record_writes(&jobs), || Err(lost()));
        self.merge_index_delta_if_due();
        written
    }

    fn first_existing(&self, collection: &CollectionName, ids: &[&RecordId]) -> Result<Option<RecordId>, VaultError> {
        let r = self.records.begin_read()?;
        let t = r.open_table(RECORDS)?;
        for id in ids {
            if t.get(record_key(collection, id).as_slice())?.is_some() {
                return Ok(Some((*id).clone()));
            }
        }
        Ok(None)
    }

    fn delete(
        &self,
        collection: &CollectionName,
        id: &RecordId,
        index_remove: &[(String, BlindIndexTerm)],
    ) -> Result<bool, VaultError> {
        self.index_txn(|w, delta, changes| {
            let mut t = w.open_table(RECORDS)?;
            let removed = match t.remove(record_key(collection, id).as_slice())? {
                Some(v) => Some(decode::<StoredRecord>(&format!("{collection}/{id}"), v.value())?),
                None => None,
            };
            let existed = removed.is_some();
            if let Some(r) = removed {
                w.open_table(SUBJECT_INDEX)?.remove(subject_key(&r.subject, collection, id).as_slice())?;
            }
            let mut ix = w.open_table(INDEX)?;
            for (field, term) in index_remove {
                let k = [index_prefix(collection, field, term), id.as_str().as_bytes().to_vec()].concat();
                unindex(delta, changes, &mut ix, &k)?;
            }
            Ok(existed)
        })
    }

    fn subject_records(
        &self,
        subject: &SubjectId,
        limit: usize,
    ) -> Result<Vec<(CollectionName, RecordId)>, VaultError> {
        let prefix = subject_prefix(subject);
        let mut end = prefix.clone();
        if let Some(last) = end.last_mut() {
            *last = 1;
        }
        let r = self.records.begin_read()?;
        let t = r.open_table(SUBJECT_INDEX)?;
        let mut out = Vec::new();
        for entry in t.range(prefix.as_slice()..end.as_slice())? {
            let (k, _) = entry?;
            let rest = k.value().get(prefix.len()..).unwrap_or_default();
            out.push(parse_record_key(rest)?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn scan(
        &self,
        collection: &CollectionName,
        after: Option<&RecordId>,
        limit: usize,
    ) -> Result<Vec<(RecordId, StoredRecord)>, VaultError> {
        let r = self.records.begin_read()?;
        let t = r.open_table(RECORDS)?;
        let (prefix, start, end) = scan_bounds(collection, after.map(RecordId::as_str));
        let mut out = Vec::with_capacity(limit.min(4096));
        for entry in t.range(start.as_slice()..end.as_slice())? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = entry?;
            let id = RecordId::new(scanned_id(collection, &prefix, k.value())?)
                .map_err(|_| VaultError::Corrupt(format!("{collection}/record key")))?;
            let record =
                postcard::from_bytes(v.value()).map_err(|_| VaultError::Corrupt(format!("{collection}/{id}")))?;
            out.push((id, record));
        }
        Ok(out)
    }

    fn scan_raw(
        &self,
        collection: &CollectionName,
        after: Option<&str>,
        limit: usize,
        page: &mut RawPage,
    ) -> Result<(), VaultError> {
        page.clear();
        let r = self.records.begin_read()?;
        let t = r.open_table(RECORDS)?;
        let (prefix, start, end) = scan_bounds(collection, after);
        for entry in t.range(start.as_slice()..end.as_slice())? {
            if page.len() >= limit {
                break;
            }
            let (k, v) = entry?;
            page.push(scanned_id(collection, &prefix, k.value())?, v.value());
        }
        Ok(())
    }

    fn tombstone_subject(&self, subject: &SubjectId) -> Result<u64, VaultError> {
        let prefix = subject_prefix(subject);
        let mut end = prefix.clone();
        if let Some(last) = end.last_mut() {
            *last = 1;
        }
        self.index_txn(|w, delta, changes| {
            let mut count = 0;
            let mut sx = w.open_table(SUBJECT_INDEX)?;
            let mut keys = Vec::new();
            for entry in sx.range(prefix.as_slice()..end.as_slice())? {
                keys.push(entry?.0.value().to_vec());
            }
            let mut t = w.open_table(RECORDS)?;
            let mut ix = w.open_table(INDEX)?;
            let mut tombs = w.open_table(TOMBSTONES)?;
            for key in keys {
                sx.remove(key.as_slice())?;
                let rkey = key.get(prefix.len()..).unwrap_or_default();
                let (collection, id) = parse_record_key(rkey)?;
                let Some(stored) = t.remove(rkey)?.map(|v| v.value().to_vec()) else { continue };
                let r: StoredRecord = decode(&format!("{collection}/{id}"), &stored)?;
                for (field, term) in &r.terms {
                    let k = [index_prefix(&collection, field, term), id.as_str().as_bytes().to_vec()].concat();
                    unindex(delta, changes, &mut ix, &k)?;
                }
                tombs.insert(rkey, ())?;
                count += 1;
            }
            Ok(count)
        })
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
        let parse = |key: &[u8]| {
            let raw = key.get(prefix.len()..).unwrap_or_default();
            std::str::from_utf8(raw)
                .ok()
                .and_then(|s| RecordId::new(s).ok())
                .ok_or_else(|| VaultError::Corrupt("blind index entry".into()))
        };
        // The delta first, then the snapshot (the second rule in `crate::delta`).
        let mut out = {
            let delta = self.delta.read().unwrap_or_else(PoisonError::into_inner);
            delta.with_prefix(&prefix).take(limit).map(parse).collect::<Result<Vec<_>, _>>()?
        };
        let from_delta = out.len();
        let r = self.records.begin_read()?;
        let t = r.open_table(INDEX)?;
        for entry in t.range(prefix.as_slice()..end.as_slice())?.take(limit) {
            out.push(parse(entry?.0.value())?);
        }
        if from_delta > 0 {
            out.sort_unstable();
            out.dedup();
            out.truncate(limit);
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

    fn subject_keys(&self, subjects: &[&SubjectId]) -> Result<Vec<Option<KeyState>>, VaultError> {
        let r = self.keys.begin_read()?;
        let t = r.open_table(SUBJECT_KEYS)?;
        let get = |s: &SubjectId| match t.get(s.as_str())? {
            Some(v) => Ok(Some(decode("subject key", v.value())?)),
            None => Ok(None),
        };
        let ascending = subjects.windows(2).all(|w| matches!(w, [a, b] if a < b));
        let (Some(first), Some(last), true) = (subjects.first(), subjects.last(), ascending) else {
            return subjects.iter().map(|s| get(s)).collect();
        };
        // Sorted subjects (a scan's page) are walked as one range: each leaf of the key table
        // is fetched once for all the subjects on it, instead of a root-to-leaf descent (and,
        // past the page cache, a `pread`) per subject. A sparse range, whose walk would pass
        // many keys nobody asked for, falls back to a lookup per remaining subject.
        let budget = subjects.len() * 4 + 64;
        let mut out = Vec::with_capacity(subjects.len());
        let mut walked = 0;
        for entry in t.range::<&str>(first.as_str()..=last.as_str())? {
            let (k, v) = entry?;
            let key = k.value();
            while subjects.get(out.len()).is_some_and(|s| s.as_str() < key) {
                out.push(None);
            }
            if subjects.get(out.len()).is_some_and(|s| s.as_str() == key) {
                out.push(Some(decode("subject key", v.value())?));
            }
            walked += 1;
            if walked > budget || out.len() == subjects.len() {
                break;
            }
        }
        for s in subjects.get(out.len()..).unwrap_or_default() {
            out.push(get(s)?);
        }
        Ok(out)
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
        self.new_keys.submit(keys.to_vec(), |jobs| self.commit_new_keys(&jobs), || Err(lost()))
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

    fn subject_keys_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<(String, KeyState)>, VaultError> {
        let r = self.keys.begin_read()?;
        let t = r.open_table(SUBJECT_KEYS)?;
        let range = match after {
            Some(a) => t.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))?,
            None => t.range::<&str>(..)?,
        };
        let mut out = Vec::new();
        for entry in range.take(limit) {
            let (k, v) = entry?;
            out.push((k.value().to_string(), decode("subject key", v.value())?));
        }
        Ok(out)
    }

    fn subject_key_count(&self) -> Result<u64, VaultError> {
        let r = self.keys.begin_read()?;
        Ok(r.open_table(SUBJECT_KEYS)?.len()?)
    }

    fn rewrap_subject_keys(&self, batch: &[Rewrap], state: Option<&RotationState>) -> Result<u64, VaultError> {
        let w = self.keys.begin_write()?;
        let mut replaced = 0;
        {
            let mut t = w.open_table(SUBJECT_KEYS)?;
            for (subject, old, new) in batch {
                let current = match t.get(subject.as_str())? {
                    Some(v) => Some(decode::<KeyState>("subject key", v.value())?),
                    None => None,
                };
                if let Some(KeyState::Active(k)) = current
                    && &k.wrapped == old
                {
                    let next = KeyState::Active(WrappedKey { version: k.version, wrapped: new.clone() });
                    t.insert(subject.as_str(), encode(&next)?.as_slice())?;
                    replaced += 1;
                }
            }
            let mut meta = w.open_table(META)?;
            match state {
                Some(s) => {
                    let s = RotationState { rewrapped: s.rewrapped + replaced, ..s.clone() };
                    meta.insert(KEK_ROTATION, encode(&s)?.as_slice())?;
                }
                None => {
                    meta.remove(KEK_ROTATION)?;
                }
            }
        }
        w.commit()?;
        Ok(replaced)
    }

    fn rotation_state(&self) -> Result<Option<RotationState>, VaultError> {
        let r = self.keys.begin_read()?;
        let t = r.open_table(META)?;
        match t.get(KEK_ROTATION)? {
            Some(v) => Ok(Some(decode("KEK rotation state", v.value())?)),
            None => Ok(None),
        }
    }

    fn system_keys(&self) -> Result<Vec<(String, Vec<u8>)>, VaultError> {
        let r = self.keys.begin_read()?;
        let t = r.open_table(SYSTEM_KEYS)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            let (k, v) = entry?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn replace_system_key(&self, name: &str, old: &[u8], new: &[u8]) -> Result<bool, VaultError> {
        let w = self.keys.begin_write()?;
        let replaced = {
            let mut t = w.open_table(SYSTEM_KEYS)?;
            let same = t.get(name)?.is_some_and(|v| v.value() == old);
            if same {
                t.insert(name, new)?;
            }
            same
        };
        w.commit()?;
        Ok(replaced)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    /// A store holding keys of every tenth subject of `s00000` .. `s05990`, every seventh of
    /// them destroyed: runs of subjects without a key lie between the keys.
    fn store() -> (tempfile::TempDir, RedbStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path(), dir.path()).unwrap();
        let keys: Vec<_> = (0..6000)
            .step_by(10)
            .map(|i| (subject(i), WrappedKey { version: 1, wrapped: vec![(i % 251) as u8; 60] }))
            .collect();
        store.insert_subject_keys(&keys).unwrap();
        for i in (0..6000).step_by(70) {
            assert!(store.destroy_subject_key(&subject(i)).unwrap());
        }
        (dir, store)
    }

    fn subject(i: u32) -> SubjectId {
        SubjectId::new(format!("s{i:05}")).unwrap()
    }

    /// A record of subject `s{subject}` whose `email` has index term `[term; 32]`.
    fn indexed(subject: u8, term: u8) -> StoredRecord {
        StoredRecord {
            subject: SubjectId::new(format!("s{subject}")).unwrap(),
            jurisdiction: custody_core::Jurisdiction::new("US").unwrap(),
            key_version: 1,
            fields: std::collections::BTreeMap::new(),
            terms: [("email".to_string(), [term; 32])].into_iter().collect(),
        }
    }

    fn rid(i: u8) -> RecordId {
        RecordId::new(format!("r{i:03}")).unwrap()
    }

    /// One step of [`the_index_answers_as_a_map_of_records_would`].
    #[derive(Debug, Clone)]
    enum Step {
        Create(Vec<(u8, u8, u8)>),
        Update(u8, u8),
        Delete(u8),
        Erase(u8),
        Reopen,
    }

    /// Every search answers the records of `model` (id -> (subject, term)) with its term, in
    /// id order, cut at its limit.
    fn check(store: &RedbStore, model: &std::collections::BTreeMap<u8, (u8, u8)>) -> Result<(), TestCaseError> {
        let c = CollectionName::new("users").unwrap();
        for t in 0u8..6 {
            let want: Vec<RecordId> = model.iter().filter(|(_, v)| v.1 == t).map(|(i, _)| rid(*i)).collect();
            prop_assert_eq!(&store.search(&c, "email", &[t; 32], 1000).unwrap(), &want, "term {}", t);
            let firsts: Vec<RecordId> = want.iter().take(2).cloned().collect();
            prop_assert_eq!(store.search(&c, "email", &[t; 32], 2).unwrap(), firsts);
        }
        Ok(())
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => proptest::collection::vec((0u8..40, 0u8..3, 0u8..6), 1..6).prop_map(Step::Create),
            3 => (0u8..40, 0u8..6).prop_map(|(i, t)| Step::Update(i, t)),
            1 => (0u8..40).prop_map(Step::Delete),
            1 => (0u8..3).prop_map(Step::Erase),
            1 => Just(Step::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        /// Through creates, updates, deletes, erasures and reopenings, with the delta merged
        /// every few entries, every search answers exactly the records whose term matches, in
        /// id order, cut at its limit: no entry is lost in a merge or left behind by a removal.
        #[test]
        fn the_index_answers_as_a_map_of_records_would(
            steps in proptest::collection::vec(step(), 1..40),
            merge_at in 1usize..24,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let c = CollectionName::new("users").unwrap();
            let mut store = RedbStore::open(dir.path(), dir.path()).unwrap();
            store.set_index_merge_at(merge_at);
            // id -> (subject, term) of every live record; erased ids stay taken.
            let mut model: std::collections::BTreeMap<u8, (u8, u8)> = std::collections::BTreeMap::new();
            let mut erased = std::collections::BTreeSet::new();
            for step in steps {
                match step {
                    Step::Create(batch) => {
                        let records: Vec<_> = batch
                            .iter()
                            .map(|&(i, s, t)| (rid(i), indexed(s, t), vec![("email".to_string(), [t; 32])]))
                            .collect();
                        let mut ids: Vec<u8> = batch.iter().map(|b| b.0).collect();
                        ids.sort_unstable();
                        ids.dedup();
                        let fresh = ids.len() == batch.len()
                            && ids.iter().all(|i| !model.contains_key(i) && !erased.contains(i));
                        prop_assert_eq!(store.put_new_many(&c, &records).is_ok(), fresh);
                        if fresh {
                            model.extend(batch.iter().map(|&(i, s, t)| (i, (s, t))));
                        }
                    }
                    Step::Update(i, t) => {
                        let Some(&(s, old)) = model.get(&i) else { continue };
                        let (rm, add) = ([("email".to_string(), [old; 32])], [("email".to_string(), [t; 32])]);
                        store.put(&c, &rid(i), &indexed(s, t), false, &rm, &add).unwrap();
                        model.insert(i, (s, t));
                    }
                    Step::Delete(i) => {
                        let rm: Vec<_> = model.get(&i).map(|&(_, t)| ("email".to_string(), [t; 32])).into_iter().collect();
                        prop_assert_eq!(store.delete(&c, &rid(i), &rm).unwrap(), model.remove(&i).is_some());
                    }
                    Step::Erase(s) => {
                        let gone: Vec<u8> = model.iter().filter(|(_, v)| v.0 == s).map(|(i, _)| *i).collect();
                        prop_assert_eq!(store.tombstone_subject(&SubjectId::new(format!("s{s}")).unwrap()).unwrap(), gone.len() as u64);
                        for i in gone {
                            model.remove(&i);
                            erased.insert(i);
                        }
                    }
                    Step::Reopen => {
                        drop(store);
                        store = RedbStore::open(dir.path(), dir.path()).unwrap();
                        store.set_index_merge_at(merge_at);
                    }
                }
                check(&store, &model)?;
            }
            store.settle_index_delta();
            prop_assert!(store.index_delta_len() < merge_at);
            check(&store, &model)?;
        }

        /// Reading several subjects' keys at once answers, in the order asked, what reading
        /// each alone answers: sorted (one range walk, or a sparse one that falls back to
        /// lookups) or not, dense or spread out, with subjects that have no key.
        #[test]
        fn subject_keys_answer_as_one_lookup_each(
            picks in proptest::collection::vec(0u32..6200, 0..300),
            sorted in any::<bool>(),
            stride in prop_oneof![Just(1u32), Just(97u32)],
        ) {
            thread_local! { static STORE: (tempfile::TempDir, RedbStore) = store(); }
            let mut ids: Vec<SubjectId> = picks.iter().map(|&p| subject((p * stride) % 6200)).collect();
            if sorted {
                ids.sort_unstable();
                ids.dedup();
            }
            let asked: Vec<&SubjectId> = ids.iter().collect();
            STORE.with(|(_, s)| -> Result<(), TestCaseError> {
                let one_each: Vec<_> = asked.iter().map(|id| s.subject_key(id).unwrap()).collect();
                prop_assert_eq!(s.subject_keys(&asked).unwrap(), one_each);
                Ok(())
            })?;
        }
    }

    /// Searches running while records are written and the delta merged every 50 entries
    /// always find every record whose write was acknowledged before the search began.
    #[test]
    fn an_acknowledged_write_is_found_by_every_later_search_across_merges() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(dir.path(), dir.path()).unwrap());
        store.set_index_merge_at(50);
        let c = CollectionName::new("users").unwrap();
        let term = |i: usize| -> BlindIndexTerm {
            let mut t = [0u8; 32];
            t[..8].copy_from_slice(&(i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
            t
        };
        let id = |i: usize| RecordId::new(format!("w{i:05}")).unwrap();
        let acked = Arc::new(AtomicUsize::new(0));
        const TOTAL: usize = 1200;
        let searchers: Vec<_> = (0..2)
            .map(|k| {
                let (store, acked, c) = (store.clone(), acked.clone(), c.clone());
                std::thread::spawn(move || {
                    let mut checked = 0;
                    let mut n = 0;
                    while n < TOTAL {
                        n = acked.load(Ordering::SeqCst);
                        // Each of the last few acknowledged writes, and an older one.
                        for i in (n.saturating_sub(4)..n).chain((n > 0).then(|| (n * 7 + k) % n)) {
                            assert_eq!(store.search(&c, "email", &term(i), 10).unwrap(), vec![id(i)], "record {i}");
                            checked += 1;
                        }
                    }
                    checked
                })
            })
            .collect();
        for chunk in (0..TOTAL).collect::<Vec<_>>().chunks(7) {
            let records: Vec<_> =
                chunk.iter().map(|&i| (id(i), indexed(0, 0), vec![("email".to_string(), term(i))])).collect();
            store.put_new_many(&c, &records).unwrap();
            acked.store(chunk.last().unwrap() + 1, Ordering::SeqCst);
        }
        for s in searchers {
            assert!(s.join().unwrap() > 0);
        }
        assert!(store.index_delta_len() < TOTAL, "merge rounds completed");
    }
}
