//! Subject rights: export everything held and logged about a subject, and erase a subject.
//!
//! Both are decided by Cedar subject-wide first (resource `Data{collection: "*", class: "*",
//! subject}`, actions `export` / `erase`), and both are logged durably before anything is
//! released or destroyed. An export then opens each record field by field with the `export`
//! action, so the boundary's per-class rules (protected data stays in the jurisdiction) hold
//! for exports too.
//!
//! The log part of an export scans the whole log for entries naming the subject's
//! pseudonym: O(log size) work per export, fine for millions of entries, not for billions
//! (a per-pseudonym index is the next step; see ARCHITECTURE.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use custody_core::{Action, Decision, KeyEvent, LogEntry, PseudonymId, SubjectEvent, SubjectId};
use custody_log::Log;
use custody_policy::{ClassDecision, LoadedPolicies, RequestContext, ResourceRef};
use custody_tlog::tile::{TILE_WIDTH, decode_entry_bundle, entry_bundles_for_size};
use custody_tlog::{Checkpoint, Note};

use crate::guard::{Caller, GuardError, Memo};
use crate::setup::ServerState;
use crate::wire::{
    ErasureResponse, ExportLog, ExportedRecord, LoggedEntry, MAX_EXPORT_ENTRIES, MAX_EXPORT_RECORDS, Receipt,
    SubjectExport,
};

/// How long an erasure waits for a checkpoint covering its entry before answering without
/// an inclusion proof (the receipt alone still proves the entry is logged).
const CHECKPOINT_WAIT: Duration = Duration::from_secs(10);

fn subject_event(
    s: &ServerState,
    policies: &LoadedPolicies,
    caller: &Caller,
    request: Action,
    subject: &SubjectId,
    decision: &ClassDecision,
    ctx: &RequestContext,
) -> LogEntry {
    let (decision, reasons) = match decision {
        ClassDecision::Permit(ids) => (Decision::Permit, ids.clone()),
        ClassDecision::Deny(reason) => (Decision::Deny, vec![reason.to_string()]),
    };
    LogEntry::Subject(SubjectEvent {
        v: SubjectEvent::VERSION,
        kind: "subject".into(),
        time: time::OffsetDateTime::now_utc(),
        request,
        principal: caller.record.id.clone(),
        principal_kind: caller.record.kind.to_string(),
        subject: s.guard.vault().pseudonyms().subject(subject.as_str()),
        decision,
        reasons,
        purpose: ctx.purpose.clone(),
        justification: ctx.justification.clone(),
        location: Some(caller.prepared.location().to_string()),
        policy_set: policies.hash().to_string(),
    })
}

/// Decides a subject-wide request (resource `Data{collection: "*", class: "*", subject}`).
fn decide(
    s: &ServerState,
    caller: &Caller,
    action: Action,
    subject: &SubjectId,
    ctx: &RequestContext,
) -> (Arc<LoadedPolicies>, ClassDecision) {
    let policy = s.guard.policy();
    let policies = policy.current();
    let resource = ResourceRef {
        collection: "*",
        class: "*",
        jurisdiction: policy.boundary().as_str(),
        subject: Some(subject.as_str()),
    };
    let d = policy.decide(&policies, &caller.prepared, action, &resource, ctx);
    s.guard.metrics().decision(action, d.is_permit());
    (policies, d)
}

/// Logs a denial and returns the 403 to answer with (or the audit error).
#[allow(clippy::too_many_arguments)]
async fn refuse(
    s: &ServerState,
    policies: &LoadedPolicies,
    caller: &Caller,
    action: Action,
    subject: &SubjectId,
    d: &ClassDecision,
    ctx: &RequestContext,
) -> GuardError {
    match s.guard.log(&subject_event(s, policies, caller, action, subject, d, ctx)).await {
        Ok(receipt) => GuardError::Forbidden { withheld: Vec::new(), receipt },
        Err(e) => e,
    }
}

/// Logs a subject-wide decision durably; a denial comes back as the 403 to answer with.
#[allow(clippy::too_many_arguments)]
async fn log_decision(
    s: &ServerState,
    policies: &LoadedPolicies,
    caller: &Caller,
    action: Action,
    subject: &SubjectId,
    d: &ClassDecision,
    ctx: &RequestContext,
) -> Result<Receipt, GuardError> {
    let receipt = s.guard.log(&subject_event(s, policies, caller, action, subject, d, ctx)).await?;
    if !d.is_permit() {
        return Err(GuardError::Forbidden { withheld: Vec::new(), receipt });
    }
    Ok(receipt)
}

/// The size of the published checkpoint `text` and the vkey that signed it: right after a
/// log-key rotation the published checkpoint may still be the previous key's, so every key in
/// the log's history is tried, newest first.
fn checkpoint_size(log: &Log, text: &str) -> Result<(u64, String), GuardError> {
    let mut last_error = String::from("no key");
    for vkey in log.key_history().into_iter().rev().map(|k| k.vkey) {
        let verifier = custody_tlog::note::Ed25519Verifier::from_verifier_key(&vkey)
            .map_err(|e| GuardError::Integrity(format!("the log's key `{vkey}` does not parse: {e}")))?;
        match Note::open(text.as_bytes(), &[&verifier]) {
            Ok(note) => {
                let size = Checkpoint::parse(&note.text)
                    .map(|c| c.size)
                    .map_err(|e| GuardError::Integrity(format!("the log's own checkpoint does not parse: {e}")))?;
                return Ok((size, vkey));
            }
            Err(e) => last_error = e.to_string(),
        }
    }
    Err(GuardError::Integrity(format!("the log's own checkpoint does not verify: {last_error}")))
}

fn inclusion(log: &Log, index: u64, size: u64) -> Result<Value, GuardError> {
    let proof = log.prove_inclusion(index, size).map_err(|e| GuardError::Storage(e.to_string()))?;
    Ok(serde_json::json!({ "index": index, "size": size, "proof": proof }))
}

/// Whether a log entry names `pseudonym` as its subject (or one of its subjects).
fn names(entry: &[u8], pseudonym: &str) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(entry) else { return false };
    if v.get("subject").and_then(Value::as_str) == Some(pseudonym) {
        return true;
    }
    v.get("subjects").and_then(Value::as_array).is_some_and(|a| a.iter().any(|s| s.as_str() == Some(pseudonym)))
}

/// Every entry about `pseudonym` in the tree of the current checkpoint, with proofs.
fn scan_log(log: &Log, pseudonym: &PseudonymId) -> Result<ExportLog, GuardError> {
    let checkpoint = log.checkpoint_text();
    let (size, vkey) = checkpoint_size(log, &checkpoint)?;
    let storage = |e: custody_log::LogError| GuardError::Storage(e.to_string());
    let mut entries = Vec::new();
    let mut truncated = false;
    'bundles: for bundle in entry_bundles_for_size(size) {
        let data = log.read_tile(&bundle.path()).map_err(storage)?.ok_or_else(|| {
            GuardError::Integrity(format!("entry bundle `{}` is missing below the checkpoint", bundle.path()))
        })?;
        let decoded = decode_entry_bundle(&data, bundle.width())
            .map_err(|e| GuardError::Integrity(format!("entry bundle `{}`: {e}", bundle.path())))?;
        let first = bundle.index() * u64::from(TILE_WIDTH);
        for (i, entry) in decoded.into_iter().enumerate() {
            if !names(entry, &pseudonym.0) {
                continue;
            }
            if entries.len() >= MAX_EXPORT_ENTRIES {
                truncated = true;
                break 'bundles;
            }
            let index = first + i as u64;
            entries.push(LoggedEntry {
                index,
                entry: String::from_utf8_lossy(entry).into_owned(),
                inclusion: inclusion(log, index, size)?,
            });
        }
    }
    Ok(ExportLog { origin: log.origin().to_string(), vkey, checkpoint, size, entries, truncated })
}

/// Exports what custody holds and logged about `subject`: every record (opened class by
/// class under the `export` action) and every log entry naming the subject's pseudonym,
/// each with an inclusion proof against a signed checkpoint.
///
/// # Errors
/// [`GuardError::Forbidden`] (logged) when the export is not permitted; audit, storage and
/// integrity errors.
pub async fn export(
    s: &ServerState,
    caller: &Caller,
    subject: &str,
    ctx: &RequestContext,
) -> Result<SubjectExport, GuardError> {
    let subject = SubjectId::new(subject)?;
    let vault = s.guard.vault().clone();
    let (policies, d) = decide(s, caller, Action::Export, &subject, ctx);
    if !d.is_permit() {
        return Err(refuse(s, &policies, caller, Action::Export, &subject, &d, ctx).await);
    }
    let erased = vault.subject_erased(&subject)?;
    let (v2, s2) = (vault.clone(), subject.clone());
    let refs = tokio::task::spawn_blocking(move || v2.subject_records(&s2, MAX_EXPORT_RECORDS + 1))
        .await
        .map_err(|e| GuardError::Storage(e.to_string()))??;
    let truncated_records = refs.len() > MAX_EXPORT_RECORDS;
    let mut memo = Memo::new();
    let mut keys = custody_vault::OpenKeys::default();
    let mut records = Vec::new();
    for (cname, id) in refs.into_iter().take(MAX_EXPORT_RECORDS) {
        let stored = match vault.load(&cname, &id) {
            Ok(r) => r,
            Err(custody_vault::VaultError::NotFound(_) | custody_vault::VaultError::Erased(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let (_, coll) = s.guard.collection(cname.as_str())?;
        let out =
            s.guard.view(&policies, caller, Action::Export, &cname, coll, &id, &stored, ctx, &mut memo, &mut keys)?;
        records.push(ExportedRecord { collection: cname.to_string(), record: out.view });
    }
    // The permit is logged after the records were opened and before any of them leaves.
    let receipt = log_decision(s, &policies, caller, Action::Export, &subject, &d, ctx).await?;
    let pseudonym = vault.pseudonyms().subject(subject.as_str());
    let log = match &s.log() {
        Some(log) => {
            let (log, p) = (log.clone(), pseudonym.clone());
            Some(
                tokio::task::spawn_blocking(move || scan_log(&log, &p))
                    .await
                    .map_err(|e| GuardError::Storage(e.to_string()))??,
            )
        }
        None => None,
    };
    Ok(SubjectExport {
        subject: subject.to_string(),
        pseudonym: pseudonym.0,
        generated: now_text(),
        erased,
        records,
        truncated_records,
        log,
        receipt,
    })
}

fn now_text() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Erases `subject`: logs the erasure durably, destroys the subject's DEK (crypto-shredding),
/// tombstones their records and drops their blind-index entries, logs the key's destruction,
/// and answers with the erasure entry's receipt and inclusion proof. Running it again after
/// an interruption finishes an incomplete erasure.
///
/// # Errors
/// [`GuardError::Forbidden`] (logged) when not permitted; audit and storage errors (nothing
/// is destroyed unless the erasure entry is durable).
pub async fn erase(
    s: &ServerState,
    caller: &Caller,
    subject: &str,
    ctx: &RequestContext,
) -> Result<ErasureResponse, GuardError> {
    let subject = SubjectId::new(subject)?;
    let (policies, d) = decide(s, caller, Action::Erase, &subject, ctx);
    let receipt = log_decision(s, &policies, caller, Action::Erase, &subject, &d, ctx).await?;
    let vault = s.guard.vault().clone();
    let (v2, s2) = (vault.clone(), subject.clone());
    let done = tokio::task::spawn_blocking(move || v2.erase_subject(&s2))
        .await
        .map_err(|e| GuardError::Storage(e.to_string()))??;
    let pseudonym = vault.pseudonyms().subject(subject.as_str());
    tracing::info!(subject = %pseudonym, tombstoned = done.tombstoned, "subject erased");
    let key_receipt = match done.destroyed_key {
        Some(version) => Some(
            s.guard
                .log(&LogEntry::Key(KeyEvent {
                    v: 1,
                    kind: "key".into(),
                    time: time::OffsetDateTime::now_utc(),
                    change: "destroyed".into(),
                    key: "subject-dek".into(),
                    subject: Some(pseudonym.clone()),
                    version: Some(version),
                    provider: vault.provider_name().to_string(),
                    verifier_key: None,
                }))
                .await?,
        ),
        None => None,
    };
    let (checkpoint, inclusion) = match &s.log() {
        Some(log) => proof_when_checkpointed(log, receipt.index).await?,
        None => (None, Value::Null),
    };
    Ok(ErasureResponse {
        subject: subject.to_string(),
        pseudonym: pseudonym.0,
        destroyed_key: done.destroyed_key,
        tombstoned: done.tombstoned,
        receipt,
        key_receipt,
        checkpoint,
        inclusion,
    })
}

/// Waits (bounded) for a signed checkpoint that covers `index`, then proves inclusion in it.
async fn proof_when_checkpointed(log: &Log, index: u64) -> Result<(Option<String>, Value), GuardError> {
    let deadline = Instant::now() + CHECKPOINT_WAIT;
    loop {
        let text = log.checkpoint_text();
        let (size, _) = checkpoint_size(log, &text)?;
        if size > index {
            return Ok((Some(text), inclusion(log, index, size)?));
        }
        if Instant::now() >= deadline {
            tracing::warn!(index, "no checkpoint covers the erasure entry yet; answering without a proof");
            return Ok((None, Value::Null));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
