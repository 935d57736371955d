//! The guarded data path, without HTTP.
//!
//! Order is the invariant: decide every touched class, open only permitted fields, make the
//! access event durable, and only then hand anything back. A failure at any step returns an
//! error and releases nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value};
use thiserror::Error;

use custody_audit::{AuditError, AuditSink};
use custody_core::{
    AccessEvent, Action, CollectionName, CollectionSchema, DataClass, Decision, FieldName, FieldOutcome, IdError,
    Jurisdiction, KeyEvent, LogEntry, PrincipalRecord, RecordId, Schema, SchemaError, SubjectId,
};
use custody_policy::{ClassDecision, LoadedPolicies, PolicyEngine, PreparedPrincipal, RequestContext, ResourceRef};
use custody_vault::{NewRecord, OpenKeys, StoredRecord, Vault, VaultError, WriteMode};

use crate::metrics::Metrics;
use crate::wire::{
    BatchWriteResponse, CreateRecord, ListResponse, MAX_BATCH, MAX_BATCH_CREATE, MAX_SEARCH_RESULTS, MAX_SEARCH_VALUES,
    ReadResponse, Receipt, RecordView, Search, SearchAny, UpdateRecord, Withheld, WriteResponse,
};

/// An authenticated principal, ready for decisions.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The stored principal.
    pub record: Arc<PrincipalRecord>,
    /// Its Cedar entity.
    pub prepared: PreparedPrincipal,
}

/// Why a guarded operation did not succeed. Authorization outcomes are exhaustive.
#[derive(Debug, Error)]
pub enum GuardError {
    /// The collection is not declared.
    #[error("unknown collection `{0}`")]
    UnknownCollection(String),
    /// The record does not exist.
    #[error("no record `{0}`")]
    NotFound(String),
    /// The body does not match the schema.
    #[error("{0}")]
    Invalid(#[from] SchemaError),
    /// An id or parameter is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// Nothing the request asked for was permitted; the deny is logged.
    #[error("access denied")]
    Forbidden {
        /// What was withheld and why.
        withheld: Vec<Withheld>,
        /// Receipt of the logged deny.
        receipt: Receipt,
    },
    /// The id is taken, or the update would move the record.
    #[error("{0}")]
    Conflict(String),
    /// The subject's data was erased.
    #[error("the subject of `{0}` was erased")]
    Erased(String),
    /// The audit sink could not make the event durable; nothing was released.
    #[error("audit unavailable: {0}")]
    AuditUnavailable(#[from] AuditError),
    /// Stored data failed an integrity check.
    #[error("integrity failure: {0}")]
    Integrity(String),
    /// Storage failed.
    #[error("storage failure: {0}")]
    Storage(String),
}

impl From<IdError> for GuardError {
    fn from(e: IdError) -> Self {
        GuardError::BadRequest(e.to_string())
    }
}

impl From<VaultError> for GuardError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::NotFound(s) => GuardError::NotFound(s),
            VaultError::AlreadyExists(s) => GuardError::Conflict(format!("record `{s}` already exists")),
            VaultError::OwnerMismatch(s) => GuardError::Conflict(format!("record `{s}` belongs to another subject")),
            VaultError::Erased(s) => GuardError::Erased(s),
            VaultError::Integrity(s) | VaultError::Corrupt(s) => GuardError::Integrity(s),
            other => GuardError::Storage(other.to_string()),
        }
    }
}

/// Decisions already made in one request, keyed by (class, jurisdiction, subject).
pub(crate) type Memo = HashMap<(DataClass, Jurisdiction, Option<SubjectId>), ClassDecision>;

/// The guarded path over a schema, vault, policy engine and audit sink.
pub struct Guard {
    schema: Arc<Schema>,
    vault: Arc<Vault>,
    policy: Arc<PolicyEngine>,
    audit: Arc<dyn AuditSink>,
    metrics: Arc<Metrics>,
}

pub(crate) struct Outcome {
    pub(crate) view: RecordView,
    pub(crate) released: BTreeSet<FieldName>,
    pub(crate) withheld: BTreeSet<FieldOutcome>,
}

impl Guard {
    /// Builds the guard.
    pub fn new(
        schema: Arc<Schema>,
        vault: Arc<Vault>,
        policy: Arc<PolicyEngine>,
        audit: Arc<dyn AuditSink>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self { schema, vault, policy, audit, metrics }
    }

    /// The schema in force.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The vault.
    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    /// The policy engine.
    pub(crate) fn policy(&self) -> &Arc<PolicyEngine> {
        &self.policy
    }

    /// The metrics.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub(crate) fn collection(&self, name: &str) -> Result<(&CollectionName, &CollectionSchema), GuardError> {
        self.schema.collection(name).map_err(|_| GuardError::UnknownCollection(name.chars().take(64).collect()))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn decide(
        &self,
        policies: &LoadedPolicies,
        caller: &Caller,
        action: Action,
        collection: &CollectionName,
        class: &DataClass,
        jurisdiction: &Jurisdiction,
        subject: Option<&SubjectId>,
        ctx: &RequestContext,
        memo: &mut Memo,
    ) -> ClassDecision {
        let key = (class.clone(), jurisdiction.clone(), subject.cloned());
        if let Some(d) = memo.get(&key) {
            return d.clone();
        }
        let resource = ResourceRef {
            collection: collection.as_str(),
            class: class.as_str(),
            jurisdiction: jurisdiction.as_str(),
            subject: subject.map(SubjectId::as_str),
        };
        let d = self.policy.decide(policies, &caller.prepared, action, &resource, ctx);
        self.metrics.decision(action, d.is_permit());
        memo.insert(key, d.clone());
        d
    }

    /// Decides and opens one stored record for reading (or exporting: `action`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn view(
        &self,
        policies: &LoadedPolicies,
        caller: &Caller,
        action: Action,
        cname: &CollectionName,
        coll: &CollectionSchema,
        id: &RecordId,
        stored: &StoredRecord,
        ctx: &RequestContext,
        memo: &mut Memo,
        keys: &mut OpenKeys,
    ) -> Result<Outcome, GuardError> {
        let mut permitted = BTreeSet::new();
        let mut withheld = BTreeSet::new();
        for (fname, spec) in &coll.fields {
            if !stored.fields.contains_key(fname.as_str()) {
                continue;
            }
            let d = self.decide(
                policies,
                caller,
                action,
                cname,
                &spec.class,
                &stored.jurisdiction,
                Some(&stored.subject),
                ctx,
                memo,
            );
            match d {
                ClassDecision::Permit(_) => {
                    permitted.insert(spec.class.clone());
                }
                ClassDecision::Deny(reason) => {
                    withheld.insert(FieldOutcome {
                        field: fname.clone(),
                        class: spec.class.clone(),
                        reason: reason.to_string(),
                    });
                }
            }
        }
        let opened = if permitted.is_empty() {
            BTreeMap::new()
        } else {
            self.vault.open_with(&self.schema, cname, id, stored, |c| permitted.contains(c), keys)?.fields
        };
        let released: BTreeSet<FieldName> = opened.keys().cloned().collect();
        let fields: Map<String, Value> = opened.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let view = RecordView {
            id: id.to_string(),
            subject: stored.subject.to_string(),
            jurisdiction: stored.jurisdiction.to_string(),
            fields,
            withheld: withheld.iter().map(withheld_wire).collect(),
        };
        Ok(Outcome { view, released, withheld })
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        policies: &LoadedPolicies,
        caller: &Caller,
        action: Action,
        collection: &CollectionName,
        records: &[(&RecordId, &SubjectId, &Jurisdiction)],
        released: impl IntoIterator<Item = FieldName>,
        withheld: impl IntoIterator<Item = FieldOutcome>,
        ctx: &RequestContext,
    ) -> AccessEvent {
        let p = self.vault.pseudonyms();
        let released: Vec<FieldName> = released.into_iter().collect();
        let withheld: Vec<FieldOutcome> = withheld.into_iter().collect();
        let decision = match (released.is_empty(), withheld.is_empty()) {
            (_, true) => Decision::Permit,
            (false, false) => Decision::Partial,
            (true, false) => Decision::Deny,
        };
        let mut subjects: Vec<_> = records.iter().map(|(_, s, _)| p.subject(s.as_str())).collect();
        subjects.sort();
        subjects.dedup();
        let mut jurisdictions: Vec<String> = records.iter().map(|(_, _, j)| j.to_string()).collect();
        jurisdictions.sort();
        jurisdictions.dedup();
        AccessEvent {
            v: AccessEvent::VERSION,
            kind: "access".into(),
            time: time::OffsetDateTime::now_utc(),
            principal: caller.record.id.clone(),
            principal_kind: caller.record.kind.to_string(),
            action,
            collection: collection.clone(),
            records: records.iter().map(|(r, _, _)| p.record(collection.as_str(), r.as_str())).collect(),
            subjects,
            released,
            withheld,
            purpose: ctx.purpose.clone(),
            justification: ctx.justification.clone(),
            location: Some(caller.prepared.location().to_string()),
            policy_set: policies.hash().to_string(),
            decision,
            jurisdictions,
            approvals: ctx.approvals.clone(),
        }
    }

    async fn record(&self, event: &AccessEvent) -> Result<Receipt, GuardError> {
        self.log(&LogEntry::Access(event.clone())).await
    }

    /// Makes any log entry durable (policy, principal and key changes as well as access
    /// events) and returns its receipt.
    ///
    /// # Errors
    /// [`GuardError::AuditUnavailable`].
    pub async fn log(&self, entry: &LogEntry) -> Result<Receipt, GuardError> {
        let pending = self.audit.submit(entry).inspect_err(|_| self.metrics.audit_failure())?;
        let r = pending.durable().await.inspect_err(|_| self.metrics.audit_failure())?;
        Ok(Receipt { index: r.index, detail: r.detail })
    }

    /// Decides `action` on one record for the class of each field in `fields`; returns the
    /// fields whose class was refused, with the reason.
    #[allow(clippy::too_many_arguments)]
    fn refused<'f>(
        &self,
        policies: &LoadedPolicies,
        caller: &Caller,
        action: Action,
        cname: &CollectionName,
        coll: &CollectionSchema,
        fields: impl IntoIterator<Item = &'f FieldName>,
        jurisdiction: &Jurisdiction,
        subject: &SubjectId,
        ctx: &RequestContext,
    ) -> BTreeSet<FieldOutcome> {
        let mut memo = Memo::new();
        let mut denied = BTreeSet::new();
        for fname in fields {
            let Some(spec) = coll.fields.get(fname) else { continue };
            let d =
                self.decide(policies, caller, action, cname, &spec.class, jurisdiction, Some(subject), ctx, &mut memo);
            if let ClassDecision::Deny(reason) = d {
                denied.insert(FieldOutcome {
                    field: fname.clone(),
                    class: spec.class.clone(),
                    reason: reason.to_string(),
                });
            }
        }
        denied
    }

    /// Records a denial durably and returns the error the caller gets: 403 with the receipt,
    /// or the audit error if even the denial could not be recorded.
    #[allow(clippy::too_many_arguments)]
    async fn forbid(
        &self,
        policies: &LoadedPolicies,
        caller: &Caller,
        action: Action,
        cname: &CollectionName,
        refs: &[(&RecordId, &SubjectId, &Jurisdiction)],
        denied: &BTreeSet<FieldOutcome>,
        ctx: &RequestContext,
    ) -> GuardError {
        let event = self.event(policies, caller, action, cname, refs, [], denied.iter().cloned(), ctx);
        match self.record(&event).await {
            Ok(receipt) => GuardError::Forbidden { withheld: denied.iter().map(withheld_wire).collect(), receipt },
            Err(e) => e,
        }
    }

    /// Reads one record: permitted fields released, the rest listed as withheld.
    ///
    /// # Errors
    /// [`GuardError::Forbidden`] when no class is permitted (after logging the deny), and the
    /// not-found, erased, integrity and audit errors.
    pub async fn read(
        &self,
        caller: &Caller,
        collection: &str,
        id: &str,
        ctx: &RequestContext,
    ) -> Result<ReadResponse, GuardError> {
        let (cname, coll) = self.collection(collection)?;
        let id = RecordId::new(id)?;
        let stored = self.vault.load(cname, &id)?;
        let policies = self.policy.current();
        let mut memo = Memo::new();
        let out = self.view(
            &policies,
            caller,
            Action::Read,
            cname,
            coll,
            &id,
            &stored,
            ctx,
            &mut memo,
            &mut OpenKeys::default(),
        )?;
        let event = self.event(
            &policies,
            caller,
            Action::Read,
            cname,
            &[(&id, &stored.subject, &stored.jurisdiction)],
            out.released.iter().cloned(),
            out.withheld.iter().cloned(),
            ctx,
        );
        let receipt = self.record(&event).await?;
        if out.released.is_empty() && !out.withheld.is_empty() {
            return Err(GuardError::Forbidden { withheld: out.view.withheld, receipt });
        }
        Ok(ReadResponse { record: out.view, receipt })
    }

    /// Reads several records of one collection under one logged event.
    ///
    /// # Errors
    /// As [`Guard::read`]; [`GuardError::BadRequest`] for too many or malformed ids.
    pub async fn batch_get(
        &self,
        caller: &Caller,
        collection: &str,
        ids: &[String],
        ctx: &RequestContext,
    ) -> Result<ListResponse, GuardError> {
        let (cname, coll) = self.collection(collection)?;
        if ids.len() > MAX_BATCH {
            return Err(GuardError::BadRequest(format!("`ids` has {} entries, the limit is {MAX_BATCH}", ids.len())));
        }
        let ids: Vec<RecordId> = ids.iter().map(RecordId::new).collect::<Result<_, _>>()?;
        self.read_many(caller, Action::Read, cname, coll, ids, ctx).await
    }

    async fn read_many(
        &self,
        caller: &Caller,
        action: Action,
        cname: &CollectionName,
        coll: &CollectionSchema,
        ids: Vec<RecordId>,
        ctx: &RequestContext,
    ) -> Result<ListResponse, GuardError> {
        let policies = self.policy.current();
        let mut memo = Memo::new();
        let mut found = Vec::new();
        let mut missing = Vec::new();
        // One read transaction for all of them, not one per record.
        let loaded = self.vault.load_many(cname, &ids)?;
        for (id, stored) in ids.into_iter().zip(loaded) {
            match stored {
                Some(s) => found.push((id, s)),
                None => missing.push(id.to_string()),
            }
        }
        let mut keys = OpenKeys::default();
        let mut released = BTreeSet::new();
        let mut withheld = BTreeSet::new();
        let mut views = Vec::new();
        for (id, stored) in &found {
            let out = self.view(&policies, caller, Action::Read, cname, coll, id, stored, ctx, &mut memo, &mut keys)?;
            released.extend(out.released);
            withheld.extend(out.withheld);
            views.push(out.view);
        }
        let refs: Vec<(&RecordId, &SubjectId, &Jurisdiction)> =
            found.iter().map(|(i, s)| (i, &s.subject, &s.jurisdiction)).collect();
        let event = self.event(
            &policies,
            caller,
            action,
            cname,
            &refs,
            released.iter().cloned(),
            withheld.iter().cloned(),
            ctx,
        );
        let receipt = self.record(&event).await?;
        if released.is_empty() && !withheld.is_empty() {
            return Err(GuardError::Forbidden { withheld: withheld.iter().map(withheld_wire).collect(), receipt });
        }
        Ok(ListResponse { records: views, missing, receipt })
    }

    /// Finds records by a searchable field's value (through the blind index) and reads them.
    ///
    /// # Errors
    /// [`GuardError::BadRequest`] for an unknown or unsearchable field,
    /// [`GuardError::Forbidden`] when searching the field's class is denied.
    pub async fn search(
        &self,
        caller: &Caller,
        collection: &str,
        q: &Search,
        ctx: &RequestContext,
    ) -> Result<ListResponse, GuardError> {
        self.search_values(caller, collection, &q.field, std::slice::from_ref(&q.value), q.limit, ctx).await
    }

    /// Finds records whose searchable field equals any of several values (up to `limit` per
    /// value) and reads them: the field's class decided once, the records read together and
    /// the access logged as one event naming every record released.
    ///
    /// # Errors
    /// As [`Guard::search`]; [`GuardError::BadRequest`] for no values or too many.
    pub async fn search_any(
        &self,
        caller: &Caller,
        collection: &str,
        q: &SearchAny,
        ctx: &RequestContext,
    ) -> Result<ListResponse, GuardError> {
        if q.values.is_empty() || q.values.len() > MAX_SEARCH_VALUES {
            return Err(GuardError::BadRequest(format!(
                "`values` has {} entries; give 1 to {MAX_SEARCH_VALUES}",
                q.values.len()
            )));
        }
        self.search_values(caller, collection, &q.field, &q.values, q.limit, ctx).await
    }

    async fn search_values(
        &self,
        caller: &Caller,
        collection: &str,
        field: &str,
        values: &[Value],
        limit: Option<usize>,
        ctx: &RequestContext,
    ) -> Result<ListResponse, GuardError> {
        let (cname, coll) = self.collection(collection)?;
        let (fname, spec) = coll.fields.iter().find(|(k, _)| k.as_str() == field).ok_or_else(|| {
            SchemaError::UnknownField { collection: cname.to_string(), field: field.chars().take(64).collect() }
        })?;
        if !spec.searchable {
            return Err(GuardError::BadRequest(format!("field `{fname}` is not searchable")));
        }
        let limit = limit.unwrap_or(MAX_SEARCH_RESULTS).clamp(1, MAX_SEARCH_RESULTS);
        let policies = self.policy.current();
        let mut memo = Memo::new();
        let boundary = self.policy.boundary().clone();
        let d = self.decide(&policies, caller, Action::Search, cname, &spec.class, &boundary, None, ctx, &mut memo);
        if let ClassDecision::Deny(reason) = d {
            let w = FieldOutcome { field: fname.clone(), class: spec.class.clone(), reason: reason.to_string() };
            return Err(self.forbid(&policies, caller, Action::Search, cname, &[], &BTreeSet::from([w]), ctx).await);
        }
        let mut ids = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for value in values {
            // A record matching two of the values is read, and named in the event, once.
            ids.extend(self.vault.search(cname, fname, value, limit)?.into_iter().filter(|id| seen.insert(id.clone())));
        }
        self.read_many(caller, Action::Search, cname, coll, ids, ctx).await
    }

    /// Creates a record. Every class written must be permitted, or nothing is written.
    ///
    /// # Errors
    /// [`GuardError::Invalid`] for schema errors, [`GuardError::Forbidden`], [`GuardError::Conflict`].
    pub async fn create(
        &self,
        caller: &Caller,
        collection: &str,
        body: CreateRecord,
        ctx: &RequestContext,
    ) -> Result<WriteResponse, GuardError> {
        let (cname, _) = self.collection(collection)?;
        let subject = SubjectId::new(body.subject.ok_or(SchemaError::MissingSubject)?).map_err(SchemaError::from)?;
        let jurisdiction = match body.jurisdiction {
            Some(j) => Jurisdiction::new(j).map_err(SchemaError::from)?,
            None => self.policy.boundary().clone(),
        };
        let id = match body.id {
            Some(i) => RecordId::new(i).map_err(SchemaError::from)?,
            None => RecordId::new(random_id())?,
        };
        let fields = self.schema.validate_fields(cname, &body.fields, false)?;
        self.write(caller, cname, id, subject, jurisdiction, fields, WriteMode::Create, ctx).await
    }

    /// Creates several records of one collection. Each record is decided on its own and gets
    /// its own logged access event and receipt; if any is refused, the refusals are logged and
    /// nothing is written; the records are stored in one transaction (all or none).
    ///
    /// # Errors
    /// As [`Guard::create`]; [`GuardError::BadRequest`] for too many records or a repeated id.
    pub async fn batch_create(
        &self,
        caller: &Caller,
        collection: &str,
        bodies: Vec<CreateRecord>,
        ctx: &RequestContext,
    ) -> Result<BatchWriteResponse, GuardError> {
        let t0 = std::time::Instant::now();
        let (cname, coll) = self.collection(collection)?;
        if bodies.len() > MAX_BATCH_CREATE {
            return Err(GuardError::BadRequest(format!(
                "`records` has {} entries, the limit is {MAX_BATCH_CREATE}",
                bodies.len()
            )));
        }
        let mut items = Vec::with_capacity(bodies.len());
        let mut seen = std::collections::HashSet::with_capacity(bodies.len());
        for body in bodies {
            let subject =
                SubjectId::new(body.subject.ok_or(SchemaError::MissingSubject)?).map_err(SchemaError::from)?;
            let jurisdiction = match body.jurisdiction {
                Some(j) => Jurisdiction::new(j).map_err(SchemaError::from)?,
                None => self.policy.boundary().clone(),
            };
            let id = match body.id {
                Some(i) => RecordId::new(i).map_err(SchemaError::from)?,
                None => RecordId::new(random_id())?,
            };
            if !seen.insert(id.clone()) {
                return Err(GuardError::BadRequest(format!("record id `{id}` appears twice in the batch")));
            }
            let fields = self.schema.validate_fields(cname, &body.fields, false)?;
            items.push(NewRecord { id, subject, jurisdiction, fields });
        }
        let t_validate = t0.elapsed();
        let policies = self.policy.current();
        for it in &items {
            let denied = self.refused(
                &policies,
                caller,
                Action::Write,
                cname,
                coll,
                it.fields.keys(),
                &it.jurisdiction,
                &it.subject,
                ctx,
            );
            if !denied.is_empty() {
                let refs = [(&it.id, &it.subject, &it.jurisdiction)];
                return Err(self.forbid(&policies, caller, Action::Write, cname, &refs, &denied, ctx).await);
            }
        }
        let t_decide = t0.elapsed();
        // Only a principal allowed to write learns whether an id is taken.
        let ids: Vec<&RecordId> = items.iter().map(|it| &it.id).collect();
        if let Some(id) = self.vault.first_existing(cname, &ids)? {
            return Err(GuardError::Conflict(format!("record `{cname}/{id}` already exists")));
        }
        let t_conflict = t0.elapsed();
        let mut pending = Vec::with_capacity(items.len());
        for it in &items {
            let refs = [(&it.id, &it.subject, &it.jurisdiction)];
            let event = self.event(&policies, caller, Action::Write, cname, &refs, it.fields.keys().cloned(), [], ctx);
            pending.push(self.audit.submit(&LogEntry::Access(event)).inspect_err(|_| self.metrics.audit_failure())?);
        }
        let mut receipts = Vec::with_capacity(pending.len());
        for p in pending {
            let r = p.durable().await.inspect_err(|_| self.metrics.audit_failure())?;
            receipts.push(Receipt { index: r.index, detail: r.detail });
        }
        let t_logged = t0.elapsed();
        let (vault, schema, c2) = (self.vault.clone(), self.schema.clone(), cname.clone());
        let (created, items) = tokio::task::spawn_blocking(move || {
            let created = vault.create_many(&schema, &c2, &items);
            (created, items)
        })
        .await
        .map_err(|e| GuardError::Storage(e.to_string()))?;
        let created = created?;
        let t_stored = t0.elapsed();
        let mut key_events = Vec::new();
        for (it, version) in items.iter().zip(&created) {
            let Some(version) = version else { continue };
            let entry = LogEntry::Key(KeyEvent {
                v: 1,
                kind: "key".into(),
                time: time::OffsetDateTime::now_utc(),
                change: "created".into(),
                key: "subject-dek".into(),
                subject: Some(self.vault.pseudonyms().subject(it.subject.as_str())),
                version: Some(*version),
                provider: self.vault.provider_name().to_string(),
                verifier_key: None,
            });
            key_events.push(self.audit.submit(&entry).inspect_err(|_| self.metrics.audit_failure())?);
        }
        for p in key_events {
            p.durable().await.inspect_err(|_| self.metrics.audit_failure())?;
        }
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        tracing::debug!(
            records = items.len(),
            validate_ms = ms(t_validate),
            decide_ms = ms(t_decide - t_validate),
            conflict_ms = ms(t_conflict - t_decide),
            log_access_ms = ms(t_logged - t_conflict),
            store_ms = ms(t_stored - t_logged),
            log_keys_ms = ms(t0.elapsed() - t_stored),
            "batch-create timing"
        );
        let results = items
            .into_iter()
            .zip(receipts)
            .map(|(it, receipt)| WriteResponse {
                id: it.id.to_string(),
                written: it.fields.keys().map(ToString::to_string).collect(),
                receipt,
            })
            .collect();
        Ok(BatchWriteResponse { results })
    }

    /// Updates fields of an existing record.
    ///
    /// # Errors
    /// As [`Guard::create`], and [`GuardError::NotFound`].
    pub async fn update(
        &self,
        caller: &Caller,
        collection: &str,
        id: &str,
        body: UpdateRecord,
        ctx: &RequestContext,
    ) -> Result<WriteResponse, GuardError> {
        let (cname, _) = self.collection(collection)?;
        let id = RecordId::new(id)?;
        let fields = self.schema.validate_fields(cname, &body.fields, true)?;
        let stored = self.vault.load(cname, &id)?;
        self.write(caller, cname, id, stored.subject, stored.jurisdiction, fields, WriteMode::Update, ctx).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn write(
        &self,
        caller: &Caller,
        cname: &CollectionName,
        id: RecordId,
        subject: SubjectId,
        jurisdiction: Jurisdiction,
        fields: custody_core::ValidatedFields,
        mode: WriteMode,
        ctx: &RequestContext,
    ) -> Result<WriteResponse, GuardError> {
        let (_, coll) = self.collection(cname.as_str())?;
        let policies = self.policy.current();
        let denied =
            self.refused(&policies, caller, Action::Write, cname, coll, fields.keys(), &jurisdiction, &subject, ctx);
        let refs = [(&id, &subject, &jurisdiction)];
        if !denied.is_empty() {
            return Err(self.forbid(&policies, caller, Action::Write, cname, &refs, &denied, ctx).await);
        }
        // Only a principal allowed to write learns whether the id is taken.
        if mode == WriteMode::Create && self.vault.load(cname, &id).is_ok() {
            return Err(GuardError::Conflict(format!("record `{cname}/{id}` already exists")));
        }
        let event = self.event(&policies, caller, Action::Write, cname, &refs, fields.keys().cloned(), [], ctx);
        let receipt = self.record(&event).await?;
        let (vault, schema) = (self.vault.clone(), self.schema.clone());
        let (c2, id2) = (cname.clone(), id.clone());
        let written: Vec<String> = fields.keys().map(ToString::to_string).collect();
        let pseudonym = self.vault.pseudonyms().subject(subject.as_str());
        let created = tokio::task::spawn_blocking(move || {
            vault.write(&schema, &c2, &id2, &subject, &jurisdiction, &fields, mode)
        })
        .await
        .map_err(|e| GuardError::Storage(e.to_string()))??;
        if let Some(version) = created {
            self.log(&LogEntry::Key(KeyEvent {
                v: 1,
                kind: "key".into(),
                time: time::OffsetDateTime::now_utc(),
                change: "created".into(),
                key: "subject-dek".into(),
                subject: Some(pseudonym),
                version: Some(version),
                provider: self.vault.provider_name().to_string(),
                verifier_key: None,
            }))
            .await?;
        }
        Ok(WriteResponse { id: id.to_string(), written, receipt })
    }

    /// Deletes a record; every class it holds must permit `delete`.
    ///
    /// # Errors
    /// [`GuardError::NotFound`], [`GuardError::Forbidden`].
    pub async fn delete(
        &self,
        caller: &Caller,
        collection: &str,
        id: &str,
        ctx: &RequestContext,
    ) -> Result<WriteResponse, GuardError> {
        let (cname, coll) = self.collection(collection)?;
        let id = RecordId::new(id)?;
        let stored = self.vault.load(cname, &id)?;
        let policies = self.policy.current();
        let touched: Vec<FieldName> =
            coll.fields.keys().filter(|f| stored.fields.contains_key(f.as_str())).cloned().collect();
        let denied = self.refused(
            &policies,
            caller,
            Action::Delete,
            cname,
            coll,
            touched.iter(),
            &stored.jurisdiction,
            &stored.subject,
            ctx,
        );
        let refs = [(&id, &stored.subject, &stored.jurisdiction)];
        if !denied.is_empty() {
            return Err(self.forbid(&policies, caller, Action::Delete, cname, &refs, &denied, ctx).await);
        }
        let event = self.event(&policies, caller, Action::Delete, cname, &refs, touched.iter().cloned(), [], ctx);
        let receipt = self.record(&event).await?;
        let vault = self.vault.clone();
        let (c2, id2) = (cname.clone(), id.clone());
        tokio::task::spawn_blocking(move || vault.delete(&c2, &id2))
            .await
            .map_err(|e| GuardError::Storage(e.to_string()))??;
        Ok(WriteResponse { id: id.to_string(), written: touched.iter().map(ToString::to_string).collect(), receipt })
    }
}

pub(crate) fn withheld_wire(w: &FieldOutcome) -> Withheld {
    Withheld { field: w.field.to_string(), class: w.class.to_string(), reason: w.reason.clone() }
}

fn random_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}
