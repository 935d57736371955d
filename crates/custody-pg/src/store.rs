//! Records, blind index and principals in `custody_records`; keys in `custody_keys`.

use custody_core::{CollectionName, PrincipalId, PrincipalRecord, RecordId, SubjectId};
use custody_crypto::BlindIndexTerm;
use custody_vault::{
    KeyState, KeyStore, PrincipalStore, RawPage, RecordStore, Rewrap, RotationState, StoredRecord, VaultError,
    WrappedKey,
};

use crate::db::{self, Db, RtHandle};
use crate::{PgConfig, PgError, PgLogStorage};

/// The vault's storage traits on PostgreSQL. Every write is one transaction, committed
/// (durably, with the server's default `synchronous_commit = on`) before it returns.
#[derive(Debug, Clone)]
pub struct PgStore {
    records: Db,
    keys: Db,
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, PgError> {
    postcard::from_bytes(bytes).map_err(|_| PgError::Corrupt(what.to_string()))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, PgError> {
    postcard::to_stdvec(value).map_err(|e| PgError::Query(format!("cannot encode: {e}")))
}

type Terms = Vec<(String, Vec<u8>)>;

fn terms(list: &[(String, BlindIndexTerm)]) -> Terms {
    list.iter().map(|(f, t)| (f.clone(), t.as_slice().to_vec())).collect()
}

impl PgStore {
    /// Connects to the database(s) of `cfg` and applies pending migrations.
    ///
    /// # Errors
    /// [`PgError::Url`], [`PgError::Connect`] naming what failed, [`PgError::Migration`].
    pub fn connect(cfg: &PgConfig) -> Result<PgStore, PgError> {
        let rt = db::runtime()?;
        Self::connect_on(&rt, cfg)
    }

    fn connect_on(rt: &RtHandle, cfg: &PgConfig) -> Result<PgStore, PgError> {
        let records = Db::connect(rt, &cfg.url, cfg.pool_size, db::RECORDS)?;
        let keys = Db::connect(rt, cfg.keys_url.as_deref().unwrap_or(&cfg.url), cfg.pool_size, db::KEYS)?;
        Ok(PgStore { records, keys })
    }

    /// The transparency log's storage in the records database (schema `custody_log`),
    /// sharing this store's pool.
    ///
    /// # Errors
    /// [`PgError::Migration`] or a connection failure.
    pub fn log_storage(&self) -> Result<PgLogStorage, PgError> {
        PgLogStorage::on(self.records.clone())
    }

    /// Epsilon the egress gateway has spent on `destination` so far (0 if never).
    ///
    /// # Errors
    /// [`PgError::Connect`] or [`PgError::Query`].
    pub fn egress_spent(&self, destination: &str) -> Result<f64, PgError> {
        let d = destination.to_string();
        self.records.run(move |pool| async move {
            let client = pool.get().await?;
            let row = client
                .query_opt("SELECT spent FROM custody_records.egress_budget WHERE destination = $1", &[&d])
                .await?;
            Ok(row.map_or(0.0, |r| r.get::<_, f64>(0)))
        })
    }

    /// Adds `epsilon` to `destination`'s spend if the total stays within `limit` (plus
    /// `slack`), in one transaction that locks the destination's row, so nodes charging at once
    /// cannot overspend. `Ok(Ok(total))` when charged (durably), `Ok(Err(spent))` when refused.
    ///
    /// # Errors
    /// [`PgError::Connect`] or [`PgError::Query`]: nothing was charged.
    pub fn egress_charge(
        &self,
        destination: &str,
        epsilon: f64,
        limit: f64,
        slack: f64,
    ) -> Result<Result<f64, f64>, PgError> {
        let d = destination.to_string();
        self.records.run(move |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            tx.execute(
                "INSERT INTO custody_records.egress_budget (destination, spent) VALUES ($1, 0)
                 ON CONFLICT (destination) DO NOTHING",
                &[&d],
            )
            .await?;
            let spent: f64 = tx
                .query_one("SELECT spent FROM custody_records.egress_budget WHERE destination = $1 FOR UPDATE", &[&d])
                .await?
                .get(0);
            let total = spent + epsilon;
            if !spent.is_finite() || total > limit + slack {
                return Ok(Err(spent));
            }
            tx.execute("UPDATE custody_records.egress_budget SET spent = $2 WHERE destination = $1", &[&d, &total])
                .await?;
            tx.commit().await?;
            Ok(Ok(total))
        })
    }

    /// The name of the database holding records, for messages.
    pub fn database(&self) -> &str {
        &self.records.name
    }
}

impl PgStore {
    /// Up to `limit` (id, stored bytes) rows of `collection` after `after`, in id order.
    fn scan_rows(
        &self,
        collection: &CollectionName,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, VaultError> {
        let c = collection.to_string();
        let after = after.unwrap_or_default().to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self.records.run(move |pool| async move {
            let client = pool.get().await?;
            let st = client
                .prepare_cached(
                    "SELECT id, body FROM custody_records.records WHERE collection = $1 AND id > $2
                     ORDER BY id LIMIT $3",
                )
                .await?;
            Ok(client
                .query(&st, &[&c, &after, &limit])
                .await?
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1)))
                .collect::<Vec<_>>())
        })?)
    }
}

impl RecordStore for PgStore {
    fn get(&self, collection: &CollectionName, id: &RecordId) -> Result<Option<StoredRecord>, VaultError> {
        let (c, i) = (collection.to_string(), id.to_string());
        let row = self.records.run(move |pool| async move {
            let client = pool.get().await?;
            let st = client
                .prepare_cached("SELECT body FROM custody_records.records WHERE collection = $1 AND id = $2")
                .await?;
            if let Some(r) = client.query_opt(&st, &[&c, &i]).await? {
                return Ok(Some(Some(r.get::<_, Vec<u8>>(0))));
            }
            let tomb = client
                .prepare_cached("SELECT 1 FROM custody_records.tombstones WHERE collection = $1 AND id = $2")
                .await?;
            Ok(if client.query_opt(&tomb, &[&c, &i]).await?.is_some() { Some(None) } else { None })
        })?;
        match row {
            Some(Some(b)) => Ok(Some(decode(&format!("{collection}/{id}"), &b)?)),
            Some(None) => Err(VaultError::Erased(format!("{collection}/{id}"))),
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
        let (c, i, subject) = (collection.to_string(), id.to_string(), record.subject.to_string());
        let body = encode(record)?;
        let (remove, add) = (terms(index_remove), terms(index_add));
        let stored = self.records.run(move |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            if must_be_new {
                let tomb = tx
                    .prepare_cached("SELECT 1 FROM custody_records.tombstones WHERE collection = $1 AND id = $2")
                    .await?;
                if tx.query_opt(&tomb, &[&c, &i]).await?.is_some() {
                    return Ok(None);
                }
            }
            let sql = if must_be_new {
                "INSERT INTO custody_records.records (collection, id, subject, body) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING"
            } else {
                "INSERT INTO custody_records.records (collection, id, subject, body) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (collection, id) DO UPDATE SET subject = excluded.subject, body = excluded.body"
            };
            let st = tx.prepare_cached(sql).await?;
            if tx.execute(&st, &[&c, &i, &subject, &body]).await? == 0 {
                return Ok(Some(false));
            }
            let del = tx
                .prepare_cached(
                    "DELETE FROM custody_records.blind_index WHERE collection = $1 AND field = $2 AND term = $3 AND id = $4",
                )
                .await?;
            for (f, t) in &remove {
                tx.execute(&del, &[&c, f, t, &i]).await?;
            }
            let ins = tx
                .prepare_cached(
                    "INSERT INTO custody_records.blind_index (collection, field, term, id) VALUES ($1, $2, $3, $4)
                     ON CONFLICT DO NOTHING",
                )
                .await?;
            for (f, t) in &add {
                tx.execute(&ins, &[&c, f, t, &i]).await?;
            }
            tx.commit().await?;
            Ok(Some(true))
        })?;
        match stored {
            Some(true) => Ok(()),
            Some(false) => Err(VaultError::AlreadyExists(format!("{collection}/{id}"))),
            None => Err(VaultError::Erased(format!("{collection}/{id}"))),
        }
    }

    fn delete(
        &self,
        collection: &CollectionName,
        id: &RecordId,
        index_remove: &[(String, BlindIndexTerm)],
    ) -> Result<bool, VaultError> {
        let (c, i) = (collection.to_string(), id.to_string());
        let remove = terms(index_remove);
        Ok(self.records.run(move |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            let st = tx.prepare_cached("DELETE FROM custody_records.records WHERE collection = $1 AND id = $2").await?;
            let existed = tx.execute(&st, &[&c, &i]).await? > 0;
            let del = tx
                .prepare_cached(
                    "DELETE FROM custody_records.blind_index WHERE collection = $1 AND field = $2 AND term = $3 AND id = $4",
                )
                .await?;
            for (f, t) in &remove {
                tx.execute(&del, &[&c, f, t, &i]).await?;
            }
            tx.commit().await?;
            Ok(existed)
        })?)
    }

    fn search(
        &self,
        collection: &CollectionName,
        field: &str,
        term: &BlindIndexTerm,
        limit: usize,
    ) -> Result<Vec<RecordId>, VaultError> {
        let (c, f, t) = (collection.to_string(), field.to_string(), term.as_slice().to_vec());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let ids = self.records.run(move |pool| async move {
            let client = pool.get().await?;
            let st = client
                .prepare_cached(
                    "SELECT id FROM custody_records.blind_index WHERE collection = $1 AND field = $2 AND term = $3
                     ORDER BY id LIMIT $4",
                )
                .await?;
            Ok(client
                .query(&st, &[&c, &f, &t, &limit])
                .await?
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>())
        })?;
        ids.into_iter().map(|s| RecordId::new(s).map_err(|_| VaultError::Corrupt("blind index entry".into()))).collect()
    }

    fn subject_records(
        &self,
        subject: &SubjectId,
        limit: usize,
    ) -> Result<Vec<(CollectionName, RecordId)>, VaultError> {
        let s = subject.to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.records.run(move |pool| async move {
            let client = pool.get().await?;
            let st = client
                .prepare_cached(
                    "SELECT collection, id FROM custody_records.records WHERE subject = $1
                     ORDER BY collection, id LIMIT $2",
                )
                .await?;
            Ok(client
                .query(&st, &[&s, &limit])
                .await?
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
                .collect::<Vec<_>>())
        })?;
        let bad = || VaultError::Corrupt("record key".into());
        rows.into_iter()
            .map(|(c, i)| Ok((CollectionName::new(c).map_err(|_| bad())?, RecordId::new(i).map_err(|_| bad())?)))
            .collect()
    }

    fn scan(
        &self,
        collection: &CollectionName,
        after: Option<&RecordId>,
        limit: usize,
    ) -> Result<Vec<(RecordId, StoredRecord)>, VaultError> {
        self.scan_rows(collection, after.map(RecordId::as_str), limit)?
            .into_iter()
            .map(|(i, b)| {
                let id = RecordId::new(&i).map_err(|_| VaultError::Corrupt("record key".into()))?;
                let record = decode(&format!("{collection}/{id}"), &b)?;
                Ok((id, record))
            })
            .collect()
    }

    fn scan_raw(
        &self,
        collection: &CollectionName,
        after: Option<&str>,
        limit: usize,
        page: &mut RawPage,
    ) -> Result<(), VaultError> {
        page.clear();
        for (id, body) in self.scan_rows(collection, after, limit)? {
            page.push(&id, &body);
        }
        Ok(())
    }

    fn tombstone_subject(&self, subject: &SubjectId) -> Result<u64, VaultError> {
        let s = subject.to_string();
        Ok(self.records.run(move |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            let gone = tx
                .query("DELETE FROM custody_records.records WHERE subject = $1 RETURNING collection, id", &[&s])
                .await?;
            let ins = tx
                .prepare_cached(
                    "INSERT INTO custody_records.tombstones (collection, id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .await?;
            let del =
                tx.prepare_cached("DELETE FROM custody_records.blind_index WHERE collection = $1 AND id = $2").await?;
            for row in &gone {
                let (c, i) = (row.get::<_, String>(0), row.get::<_, String>(1));
                tx.execute(&ins, &[&c, &i]).await?;
                tx.execute(&del, &[&c, &i]).await?;
            }
            tx.commit().await?;
            Ok(gone.len() as u64)
        })?)
    }
}

impl KeyStore for PgStore {
    fn subject_key(&self, subject: &SubjectId) -> Result<Option<KeyState>, VaultError> {
        let s = subject.to_string();
        let row = self.keys.run(move |pool| async move {
            let client = pool.get().await?;
            let st = client.prepare_cached("SELECT state FROM custody_keys.subject_keys WHERE subject = $1").await?;
            Ok(client.query_opt(&st, &[&s]).await?.map(|r| r.get::<_, Vec<u8>>(0)))
        })?;
        match row {
            Some(b) => Ok(Some(decode("subject key", &b)?)),
            None => Ok(None),
        }
    }

    fn subject_keys(&self, subjects: &[&SubjectId]) -> Result<Vec<Option<KeyState>>, VaultError> {
        let wanted: Vec<String> = subjects.iter().map(|s| s.to_string()).collect();
        let rows = self.keys.run(move |pool| async move {
            let client = pool.get().await?;
            let st = client
                .prepare_cached("SELECT subject, state FROM custody_keys.subject_keys WHERE subject = ANY($1)")
                .await?;
            Ok(client
                .query(&st, &[&wanted])
                .await?
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1)))
                .collect::<std::collections::HashMap<_, _>>())
        })?;
        subjects
            .iter()
            .map(|s| match rows.get(s.as_str()) {
                Some(b) => Ok(Some(decode("subject key", b)?)),
                None => Ok(None),
            })
            .collect()
    }

    fn insert_subject_key(&self, subject: &SubjectId, key: &WrappedKey) -> Result<KeyState, VaultError> {
        let s = subject.to_string();
        let state = encode(&KeyState::Active(key.clone()))?;
        let stored = self.keys.run(move |pool| async move {
            let client = pool.get().await?;
            let ins = client
                .prepare_cached(
                    "INSERT INTO custody_keys.subject_keys (subject, state) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .await?;
            let sel = client.prepare_cached("SELECT state FROM custody_keys.subject_keys WHERE subject = $1").await?;
            client.execute(&ins, &[&s, &state]).await?;
            // Autocommit: the select sees our row or the one a racing insert committed first.
            match client.query_opt(&sel, &[&s]).await? {
                Some(r) => Ok(r.get::<_, Vec<u8>>(0)),
                None => Err(PgError::Query("subject key vanished right after insertion".into())),
            }
        })?;
        Ok(decode("subject key", &stored)?)
    }

    fn destroy_subject_key(&self, subject: &SubjectId) -> Result<bool, VaultError> {
        let s = subject.to_string();
        Ok(self.keys.run(move |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            let row = tx
                .query_opt("SELECT state FROM custody_keys.subject_keys WHERE subject = $1 FOR UPDATE", &[&s])
                .await?;
            let Some(row) = row else { return Ok(false) };
            let KeyState::Active(k) = decode::<KeyState>("subject key", &row.get::<_, Vec<u8>>(0))? else {
                return Ok(false);
            };
            let tomb = encode(&KeyState::Destroyed { version: k.version })?;
            tx.execute("UPDATE custody_keys.subject_keys SET state = $2 WHERE subject = $1", &[&s, &tomb]).await?;
            tx.commit().await?;
            Ok(true)
        })?)
    }

    fn subject_keys_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<(String, KeyState)>, VaultError> {
        let a = after.unwrap_or_default().to_string();
        let has_after = after.is_some();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.keys.run(move |pool| async move {
            let client = pool.get().await?;
            let st = client
                .prepare_cached(
                    "SELECT subject, state FROM custody_keys.subject_keys WHERE NOT $1 OR subject > $2
                     ORDER BY subject LIMIT $3",
                )
                .await?;
            Ok(client
                .query(&st, &[&has_after, &a, &limit])
                .await?
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1)))
                .collect::<Vec<_>>())
        })?;
        rows.into_iter().map(|(s, b)| Ok((s, decode("subject key", &b)?))).collect()
    }

    fn subject_key_count(&self) -> Result<u64, VaultError> {
        let n = self.keys.run(move |pool| async move {
            let client = pool.get().await?;
            Ok(client.query_one("SELECT count(*) FROM custody_keys.subject_keys", &[]).await?.get::<_, i64>(0))
        })?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn rewrap_subject_keys(&self, batch: &[Rewrap], state: Option<&RotationState>) -> Result<u64, VaultError> {
        let batch = batch.to_vec();
        let state = state.cloned();
        Ok(self.keys.run(move |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            let mut replaced = 0u64;
            for (subject, old, new) in &batch {
                let row = tx
                    .query_opt("SELECT state FROM custody_keys.subject_keys WHERE subject = $1 FOR UPDATE", &[subject])
                    .await?;
                let Some(row) = row else { continue };
                if let KeyState::Active(k) = decode::<KeyState>("subject key", &row.get::<_, Vec<u8>>(0))?
                    && &k.wrapped == old
                {
                    let next = encode(&KeyState::Active(WrappedKey { version: k.version, wrapped: new.clone() }))?;
                    tx.execute("UPDATE custody_keys.subject_keys SET state = $2 WHERE subject = $1", &[subject, &next])
                        .await?;
                    replaced += 1;
                }
            }
            match state {
                Some(s) => {
                    let s = encode(&RotationState { rewrapped: s.rewrapped + replaced, ..s })?;
                    tx.execute(
                        "INSERT INTO custody_keys.meta (name, body) VALUES ('kek-rotation', $1)
                         ON CONFLICT (name) DO UPDATE SET body = excluded.body",
                        &[&s],
                    )
                    .await?;
                }
                None => {
                    tx.execute("DELETE FROM custody_keys.meta WHERE name = 'kek-rotation'", &[]).await?;
                }
            }
            tx.commit().await?;
            Ok(replaced)
        })?)
    }

    fn rotation_state(&self) -> Result<Option<RotationState>, VaultError> {
        let row = self.keys.run(move |pool| async move {
            let client = pool.get().await?;
            Ok(client
                .query_opt("SELECT body FROM custody_keys.meta WHERE name = 'kek-rotation'", &[])
                .await?
                .map(|r| r.get::<_, Vec<u8>>(0)))
        })?;
        match row {
            Some(b) => Ok(Some(decode("KEK rotation state", &b)?)),
            None => Ok(None),
        }
    }

    fn system_keys(&self) -> Result<Vec<(String, Vec<u8>)>, VaultError> {
        Ok(self.keys.run(move |pool| async move {
            let client = pool.get().await?;
            Ok(client
                .query("SELECT name, wrapped FROM custody_keys.system_keys ORDER BY name", &[])
                .await?
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1)))
                .collect::<Vec<_>>())
        })?)
    }

    fn replace_system_key(&self, name: &str, old: &[u8], new: &[u8]) -> Result<bool, VaultError> {
        let (n, o, w) = (name.to_string(), old.to_vec(), new.to_vec());
        Ok(self.keys.run(move |pool| async move {
            let client = pool.get().await?;
            let changed = client
                .execute(
                    "UPDATE custody_keys.system_keys SET wrapped = $3 WHERE name = $1 AND wrapped = $2",
                    &[&n, &o, &w],
                )
                .await?;
            Ok(changed > 0)
        })?)
    }

    fn system_key(&self, name: &str) -> Result<Option<Vec<u8>>, VaultError> {
        let n = name.to_string();
        Ok(self.keys.run(move |pool| async move {
            let client = pool.get().await?;
            let st = client.prepare_cached("SELECT wrapped FROM custody_keys.system_keys WHERE name = $1").await?;
            Ok(client.query_opt(&st, &[&n]).await?.map(|r| r.get::<_, Vec<u8>>(0)))
        })?)
    }

    fn insert_system_key(&self, name: &str, wrapped: &[u8]) -> Result<Vec<u8>, VaultError> {
        let (n, w) = (name.to_string(), wrapped.to_vec());
        Ok(self.keys.run(move |pool| async move {
            let client = pool.get().await?;
            client
                .execute(
                    "INSERT INTO custody_keys.system_keys (name, wrapped) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&n, &w],
                )
                .await?;
            match client.query_opt("SELECT wrapped FROM custody_keys.system_keys WHERE name = $1", &[&n]).await? {
                Some(r) => Ok(r.get::<_, Vec<u8>>(0)),
                None => Err(PgError::Query("system key vanished right after insertion".into())),
            }
        })?)
    }
}

impl PrincipalStore for PgStore {
    fn principal(&self, id: &PrincipalId) -> Result<Option<PrincipalRecord>, VaultError> {
        let i = id.to_string();
        let row = self.records.run(move |pool| async move {
            let client = pool.get().await?;
            let st = client.prepare_cached("SELECT body FROM custody_records.principals WHERE id = $1").await?;
            Ok(client.query_opt(&st, &[&i]).await?.map(|r| r.get::<_, Vec<u8>>(0)))
        })?;
        match row {
            Some(b) => {
                Ok(Some(serde_json::from_slice(&b).map_err(|_| VaultError::Corrupt(format!("principal {id}")))?))
            }
            None => Ok(None),
        }
    }

    fn put_principal(&self, p: &PrincipalRecord) -> Result<(), VaultError> {
        let body = serde_json::to_vec(p).map_err(|e| VaultError::Storage(e.to_string()))?;
        let i = p.id.to_string();
        Ok(self.records.run(move |pool| async move {
            let client = pool.get().await?;
            client
                .execute(
                    "INSERT INTO custody_records.principals (id, body) VALUES ($1, $2)
                     ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                    &[&i, &body],
                )
                .await?;
            Ok(())
        })?)
    }

    fn principals(&self) -> Result<Vec<PrincipalRecord>, VaultError> {
        let rows = self.records.run(move |pool| async move {
            let client = pool.get().await?;
            let rows = client.query("SELECT id, body FROM custody_records.principals ORDER BY id", &[]).await?;
            Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1))).collect::<Vec<_>>())
        })?;
        rows.into_iter()
            .map(|(id, b)| serde_json::from_slice(&b).map_err(|_| VaultError::Corrupt(format!("principal {id}"))))
            .collect()
    }
}
