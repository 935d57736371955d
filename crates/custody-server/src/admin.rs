//! Operator operations: principals, policy reloads and KEK rotation.
//!
//! While a server runs it holds the data dir's databases, so the `custody` CLI reaches these
//! operations through `admin.sock` in the data dir (mode 0600: whoever may read the data dir
//! is the operator). When no server runs, the CLI calls the same functions on the store.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use custody_core::{
    IdError, Jurisdiction, KeyEvent, LogEntry, PrincipalAttrs, PrincipalEvent, PrincipalId, PrincipalKind,
    PrincipalRecord, SubjectId,
};
use custody_vault::{PrincipalStore, VaultError};

use crate::ApiError;
use crate::api::{ApiJson, ApiPath};
use crate::auth::issue_token;
use crate::setup::ServerState;

/// A principal to register.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPrincipal {
    /// Its id.
    pub id: String,
    /// `engineer`, `workload`, `subject` or `monitor`.
    pub kind: String,
    /// Its location (a jurisdiction code).
    pub location: String,
    /// Its employer.
    #[serde(default)]
    pub employer: String,
    /// Its roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// For subject principals: the subject they are.
    #[serde(default)]
    pub subject: Option<String>,
    /// Further attributes, as Cedar tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// Attributes of a principal to change; absent fields keep their value. Its id, kind, subject
/// and token stay: a different identity is a new principal.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePrincipal {
    /// New location (a jurisdiction code).
    #[serde(default)]
    pub location: Option<String>,
    /// New employer.
    #[serde(default)]
    pub employer: Option<String>,
    /// New roles (replacing all of them).
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    /// New further attributes (replacing all of them).
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
}

/// A registered principal and its token, shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issued {
    /// The stored principal (without secrets).
    pub principal: PrincipalView,
    /// The bearer token. Only its hash is stored.
    pub token: String,
}

/// A principal as shown to operators.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrincipalView {
    /// Its id.
    pub id: String,
    /// Its kind.
    pub kind: PrincipalKind,
    /// Its attributes.
    pub attrs: PrincipalAttrs,
    /// Whether it is revoked.
    pub revoked: bool,
}

impl From<&PrincipalRecord> for PrincipalView {
    fn from(p: &PrincipalRecord) -> Self {
        Self { id: p.id.to_string(), kind: p.kind, attrs: p.attrs.clone(), revoked: p.revoked }
    }
}

/// Why an operator operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AdminError {
    /// An argument is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The principal id is taken.
    #[error("principal `{0}` already exists")]
    Exists(String),
    /// No such principal.
    #[error("no principal `{0}`")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] VaultError),
    /// The change could not be recorded in the transparency log. For an addition nothing was
    /// stored; a revocation took effect anyway (revoking must not wait for the log).
    #[error("{0}")]
    Log(String),
    /// The operation is not allowed (an unreviewed commit, a revoked artifact, a signer who
    /// may not review).
    #[error("{0}")]
    Refused(String),
}

impl From<IdError> for AdminError {
    fn from(e: IdError) -> Self {
        AdminError::Invalid(e.to_string())
    }
}

/// Registers a principal and returns it with its one-time token.
///
/// # Errors
/// [`AdminError::Invalid`] for malformed attributes, [`AdminError::Exists`].
pub fn add_principal(store: &dyn PrincipalStore, req: NewPrincipal) -> Result<Issued, AdminError> {
    let (record, token) = new_principal(store, req)?;
    store.put_principal(&record)?;
    Ok(Issued { principal: PrincipalView::from(&record), token })
}

/// Validates `req` and builds its record and one-time token, storing nothing.
fn new_principal(store: &dyn PrincipalStore, req: NewPrincipal) -> Result<(PrincipalRecord, String), AdminError> {
    let id = PrincipalId::new(req.id)?;
    let kind: PrincipalKind = req.kind.parse()?;
    let location = Jurisdiction::new(req.location)?;
    let subject = req.subject.map(SubjectId::new).transpose()?;
    if kind == PrincipalKind::Subject && subject.is_none() {
        return Err(AdminError::Invalid("a subject principal needs `subject`".into()));
    }
    check_tags(&req.tags)?;
    if store.principal(&id)?.is_some() {
        return Err(AdminError::Exists(id.to_string()));
    }
    let (token, hash) = issue_token(&id);
    let record = PrincipalRecord {
        id,
        kind,
        attrs: PrincipalAttrs { location, employer: req.employer, roles: req.roles, subject, tags: req.tags },
        token_sha256: hash,
        revoked: false,
        version: 1,
        expires_at: None,
    };
    Ok((record, token))
}

fn check_tags(tags: &BTreeMap<String, String>) -> Result<(), AdminError> {
    for k in tags.keys() {
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(AdminError::Invalid(format!("attribute name `{k}` must be letters, digits, `_` or `-`")));
        }
    }
    Ok(())
}

/// Changes a principal's attributes the way a running server does: the `changed` entry, with
/// the attributes as they will be, is durable in the log before the change takes effect, so
/// no widened access goes unrecorded. If the log cannot take it, nothing changes.
///
/// # Errors
/// [`AdminError::NotFound`]; [`AdminError::Invalid`] for malformed attributes, an empty change
/// or a revoked principal; [`AdminError::Log`] (nothing changed then).
pub async fn change_logged(s: &ServerState, id: &str, change: ChangePrincipal) -> Result<PrincipalView, AdminError> {
    let store = s.auth.store();
    let id = PrincipalId::new(id)?;
    let mut p = store.principal(&id)?.ok_or_else(|| AdminError::NotFound(id.to_string()))?;
    if p.revoked {
        return Err(AdminError::Invalid(format!("principal `{id}` is revoked; register a new one")));
    }
    let ChangePrincipal { location, employer, roles, tags } = change;
    if location.is_none() && employer.is_none() && roles.is_none() && tags.is_none() {
        return Err(AdminError::Invalid("nothing to change: give location, employer, roles or tags".into()));
    }
    if let Some(l) = location {
        p.attrs.location = Jurisdiction::new(l)?;
    }
    if let Some(e) = employer {
        p.attrs.employer = e;
    }
    if let Some(r) = roles {
        p.attrs.roles = r;
    }
    if let Some(t) = tags {
        check_tags(&t)?;
        p.attrs.tags = t;
    }
    p.version += 1;
    let view = PrincipalView::from(&p);
    s.guard
        .log(&principal_event(s, "changed", &view)?)
        .await
        .map_err(|e| AdminError::Log(format!("principal not changed: {e}")))?;
    store.put_principal(&p)?;
    s.auth.invalidate(&id);
    tracing::info!(principal = %view.id, version = p.version, "principal changed");
    Ok(view)
}

/// Registers a principal the way a running server does: the `added` entry is durable in the
/// transparency log before the principal is stored, so no principal can act unrecorded.
///
/// # Errors
/// As [`add_principal`]; [`AdminError::Log`] if the entry could not be made durable (nothing
/// is stored then).
pub async fn add_logged(s: &ServerState, req: NewPrincipal) -> Result<Issued, AdminError> {
    add_logged_with(s, req, None).await
}

/// [`add_logged`] with a credential that stops working at `expires_at` (Unix seconds).
///
/// # Errors
/// As [`add_logged`].
pub async fn add_logged_with(
    s: &ServerState,
    req: NewPrincipal,
    expires_at: Option<i64>,
) -> Result<Issued, AdminError> {
    let (mut record, token) = new_principal(s.auth.store().as_ref(), req)?;
    record.expires_at = expires_at;
    let view = PrincipalView::from(&record);
    s.guard
        .log(&principal_event(s, "added", &view)?)
        .await
        .map_err(|e| AdminError::Log(format!("principal not added: {e}")))?;
    s.auth.store().put_principal(&record)?;
    tracing::info!(principal = %view.id, kind = %view.kind, "principal added");
    Ok(Issued { principal: view, token })
}

/// Revokes a principal the way a running server does: at once (revocation must not wait for
/// anything), then records the `revoked` entry.
///
/// # Errors
/// As [`revoke_principal`]; [`AdminError::Log`] if the entry could not be made durable (the
/// revocation stands).
pub async fn revoke_logged(s: &ServerState, id: &str) -> Result<PrincipalView, AdminError> {
    let view = revoke_principal(s.auth.store().as_ref(), id)?;
    if let Ok(pid) = PrincipalId::new(&view.id) {
        s.auth.invalidate(&pid);
    }
    s.guard
        .log(&principal_event(s, "revoked", &view)?)
        .await
        .map_err(|e| AdminError::Log(format!("principal revoked, but the revocation was not logged: {e}")))?;
    tracing::info!(principal = %view.id, "principal revoked");
    Ok(view)
}

/// Revokes a principal; its next request is refused.
///
/// # Errors
/// [`AdminError::NotFound`].
pub fn revoke_principal(store: &dyn PrincipalStore, id: &str) -> Result<PrincipalView, AdminError> {
    let id = PrincipalId::new(id)?;
    let mut p = store.principal(&id)?.ok_or_else(|| AdminError::NotFound(id.to_string()))?;
    p.revoked = true;
    p.version += 1;
    store.put_principal(&p)?;
    Ok(PrincipalView::from(&p))
}

/// Every principal.
///
/// # Errors
/// Store failures.
pub fn list_principals(store: &dyn PrincipalStore) -> Result<Vec<PrincipalView>, AdminError> {
    Ok(store.principals()?.iter().map(PrincipalView::from).collect())
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Invalid(_) => ApiError::bad_request(e.to_string()),
            AdminError::Exists(_) => ApiError::new(StatusCode::CONFLICT, "conflict", "Conflict", e.to_string()),
            AdminError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not-found", "Not found", e.to_string()),
            AdminError::Store(cause) => ApiError::internal(cause),
            AdminError::Refused(_) => ApiError::new(StatusCode::FORBIDDEN, "refused", "Refused", e.to_string()),
            AdminError::Log(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "audit-unavailable", "Audit unavailable", e.to_string())
            }
        }
    }
}

/// The result of a policy reload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reloaded {
    /// The hash of the set now in force.
    pub policy_set: String,
    /// Its policy ids.
    pub policies: Vec<String>,
}

/// The operator router served on `admin.sock`.
pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/admin/principals", get(list).post(add))
        .route("/admin/principals/{id}/revoke", post(revoke))
        .route("/admin/principals/{id}", axum::routing::patch(change))
        .route("/admin/policy/reload", post(reload))
        .merge(crate::deploy::router())
        .route("/admin/keys/kek", get(kek_status))
        .route("/admin/keys/kek/rotate", post(kek_begin))
        .route("/admin/keys/kek/rotate/step", post(kek_step))
        .route("/admin/keys/kek/rotate/finish", post(kek_finish))
        .route("/admin/keys/log", get(log_keys))
        .route("/admin/keys/log/rotate", post(log_key_rotate))
        .with_state(state)
}

/// The log entry recording a principal change.
pub fn principal_event(s: &ServerState, change: &str, p: &PrincipalView) -> Result<LogEntry, AdminError> {
    Ok(LogEntry::Principal(PrincipalEvent {
        v: 1,
        kind: "principal".into(),
        time: time::OffsetDateTime::now_utc(),
        change: change.into(),
        principal: PrincipalId::new(&p.id)?,
        principal_kind: p.kind.to_string(),
        location: p.attrs.location.to_string(),
        employer: p.attrs.employer.clone(),
        roles: p.attrs.roles.clone(),
        tags: p.attrs.tags.clone(),
        subject: p.attrs.subject.as_ref().map(|sub| s.guard.vault().pseudonyms().subject(sub.as_str())),
    }))
}

async fn add(
    State(s): State<Arc<ServerState>>,
    ApiJson(req): ApiJson<NewPrincipal>,
) -> Result<(StatusCode, Json<Issued>), ApiError> {
    Ok((StatusCode::CREATED, Json(add_logged(&s, req).await?)))
}

async fn revoke(
    State(s): State<Arc<ServerState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<PrincipalView>, ApiError> {
    Ok(Json(revoke_logged(&s, &id).await?))
}

async fn change(
    State(s): State<Arc<ServerState>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ChangePrincipal>,
) -> Result<Json<PrincipalView>, ApiError> {
    Ok(Json(change_logged(&s, &id, req).await?))
}

async fn list(State(s): State<Arc<ServerState>>) -> Result<Json<Vec<PrincipalView>>, ApiError> {
    Ok(Json(list_principals(s.auth.store().as_ref())?))
}

async fn reload(State(s): State<Arc<ServerState>>) -> Result<Json<Reloaded>, ApiError> {
    match s.reload_and_log().await {
        Ok(set) => Ok(Json(Reloaded { policy_set: set.hash().to_string(), policies: set.ids().to_vec() })),
        Err(e) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "policy-invalid", "Policy set refused", e)),
    }
}

/// Where a KEK rotation stands, as the operator API reports it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KekRotation {
    /// Whether a rotation is in progress.
    pub in_progress: bool,
    /// The KEK version every key moves to (or the current one when none is in progress).
    pub target: u32,
    /// Subject keys looked at.
    pub scanned: u64,
    /// Subject keys rewrapped.
    pub rewrapped: u64,
    /// Subject keys in the store.
    pub total: u64,
    /// Every key was looked at: finish the rotation next.
    pub scanned_all: bool,
    /// Old KEK versions destroyed when the rotation finished.
    #[serde(default)]
    pub retired: Vec<u32>,
}

/// One rotation step's size.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationStep {
    /// Subject keys to look at in this step.
    pub batch: usize,
}

fn key_event(s: &ServerState, change: &str, version: u32) -> LogEntry {
    LogEntry::Key(KeyEvent {
        v: 1,
        kind: "key".into(),
        time: time::OffsetDateTime::now_utc(),
        change: change.into(),
        key: "kek".into(),
        subject: None,
        version: Some(version),
        provider: s.guard.vault().provider_name().to_string(),
        verifier_key: None,
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, VaultError> + Send + 'static,
) -> Result<T, AdminError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| AdminError::Store(VaultError::Storage(e.to_string())))?.map_err(
        |e| match e {
            VaultError::Rotation(m) => AdminError::Invalid(m),
            other => AdminError::Store(other),
        },
    )
}

/// The KEK rotation's state.
///
/// # Errors
/// Store failures.
pub async fn kek_rotation_status(s: &ServerState) -> Result<KekRotation, AdminError> {
    let vault = s.guard.vault().clone();
    let current = vault.kek_rotation()?;
    Ok(match current {
        Some(p) => KekRotation {
            in_progress: true,
            target: p.target,
            scanned: p.scanned,
            rewrapped: p.rewrapped,
            total: p.total,
            scanned_all: p.scanned_all,
            retired: Vec::new(),
        },
        None => KekRotation { target: vault.current_kek(), ..KekRotation::default() },
    })
}

/// Starts a KEK rotation (a new KEK version becomes current and is logged as `created`), or
/// resumes the one in progress.
///
/// # Errors
/// Store or provider failures; [`AdminError::Log`] if the new KEK could not be logged.
pub async fn kek_rotation_begin(s: &ServerState) -> Result<KekRotation, AdminError> {
    let vault = s.guard.vault().clone();
    let (target, created) = blocking(move || vault.begin_kek_rotation()).await?;
    if created {
        s.guard
            .log(&key_event(s, "created", target))
            .await
            .map_err(|e| AdminError::Log(format!("KEK {target} created, but not logged: {e}")))?;
        tracing::info!(version = target, "KEK rotation started");
    }
    kek_rotation_status(s).await
}

/// Rewraps the next `batch` subject keys under the new KEK.
///
/// # Errors
/// [`AdminError::Invalid`] when no rotation is in progress; store or provider failures.
pub async fn kek_rotation_step(s: &ServerState, batch: usize) -> Result<KekRotation, AdminError> {
    let vault = s.guard.vault().clone();
    blocking(move || vault.rotate_kek_step(batch.clamp(1, 100_000))).await?;
    kek_rotation_status(s).await
}

/// Finishes a rotation whose keys are all rewrapped: logs `rotated` for the new KEK and
/// `destroyed` for each old one (durably, before anything is destroyed), then destroys the
/// old KEKs.
///
/// # Errors
/// [`AdminError::Invalid`] when keys remain to be rewrapped; [`AdminError::Log`] (nothing is
/// destroyed then); store or provider failures.
pub async fn kek_rotation_finish(s: &ServerState) -> Result<KekRotation, AdminError> {
    let vault = s.guard.vault().clone();
    let (target, old) = blocking(move || vault.kek_versions_to_retire()).await?;
    let log =
        |e: crate::GuardError| AdminError::Log(format!("the rotation could not be logged, no KEK was destroyed: {e}"));
    s.guard.log(&key_event(s, "rotated", target)).await.map_err(log)?;
    for v in &old {
        s.guard.log(&key_event(s, "destroyed", *v)).await.map_err(log)?;
    }
    let vault = s.guard.vault().clone();
    let retired = blocking(move || vault.finish_kek_rotation()).await?;
    tracing::info!(version = target, ?retired, "KEK rotation finished");
    Ok(KekRotation { target, retired, ..kek_rotation_status(s).await? })
}

async fn kek_status(State(s): State<Arc<ServerState>>) -> Result<Json<KekRotation>, ApiError> {
    Ok(Json(kek_rotation_status(&s).await?))
}

async fn kek_begin(State(s): State<Arc<ServerState>>) -> Result<Json<KekRotation>, ApiError> {
    Ok(Json(kek_rotation_begin(&s).await?))
}

async fn kek_step(
    State(s): State<Arc<ServerState>>,
    ApiJson(step): ApiJson<RotationStep>,
) -> Result<Json<KekRotation>, ApiError> {
    Ok(Json(kek_rotation_step(&s, step.batch).await?))
}

async fn kek_finish(State(s): State<Arc<ServerState>>) -> Result<Json<KekRotation>, ApiError> {
    Ok(Json(kek_rotation_finish(&s).await?))
}

/// The log's signing keys after a rotation, or as they stand.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogKeyRotation {
    /// The verifier key now signing checkpoints and receipts.
    pub current: String,
    /// Every key the log has signed with, oldest first.
    pub keys: Vec<String>,
    /// For a rotation: the index of the entry announcing the new key.
    pub announced_at: Option<u64>,
}

fn log_keys_of(log: &custody_log::Log, announced_at: Option<u64>) -> LogKeyRotation {
    LogKeyRotation {
        current: log.verifier_key(),
        keys: log.key_history().into_iter().map(|k| k.vkey).collect(),
        announced_at,
    }
}

fn the_log(s: &ServerState) -> Result<Arc<custody_log::Log>, AdminError> {
    s.log().ok_or_else(|| AdminError::Invalid("this server has no transparency log".into()))
}

/// The log's signing keys.
///
/// # Errors
/// [`AdminError::Invalid`] without a transparency log.
pub fn log_key_status(s: &ServerState) -> Result<LogKeyRotation, AdminError> {
    Ok(log_keys_of(&*the_log(s)?, None))
}

/// Rotates the log's checkpoint signing key: a new key is made, announced in an entry signed
/// by the old key, a handover checkpoint covering it is signed by the old key, and the new
/// key signs from then on. Checkpoints signed before still verify under the old key.
///
/// # Errors
/// [`AdminError::Invalid`] without a transparency log; [`AdminError::Log`] if the announcement
/// could not be logged (the old key then stays current) or the handover failed.
pub async fn log_key_rotation(s: &ServerState) -> Result<LogKeyRotation, AdminError> {
    let log = the_log(s)?.clone();
    let next = log.new_signing_key().map_err(|e| AdminError::Log(format!("cannot make a new log key: {e}")))?;
    let version = u32::try_from(log.key_history().len() + 1).unwrap_or(u32::MAX);
    let entry = LogEntry::Key(KeyEvent {
        v: 1,
        kind: "key".into(),
        time: time::OffsetDateTime::now_utc(),
        change: "rotated".into(),
        key: "log".into(),
        subject: None,
        version: Some(version),
        provider: "file".into(),
        verifier_key: Some(next.verifier_key()),
    });
    let receipt = s
        .guard
        .log(&entry)
        .await
        .map_err(|e| AdminError::Log(format!("the new log key could not be announced: {e}")))?;
    let adopt = log.clone();
    tokio::task::spawn_blocking(move || adopt.adopt_signing_key(next, receipt.index))
        .await
        .map_err(|e| AdminError::Log(e.to_string()))?
        .map_err(|e| AdminError::Log(format!("the new log key was announced but not adopted: {e}")))?;
    tracing::info!(index = receipt.index, vkey = %log.verifier_key(), "log signing key rotated");
    Ok(log_keys_of(&log, Some(receipt.index)))
}

async fn log_keys(State(s): State<Arc<ServerState>>) -> Result<Json<LogKeyRotation>, ApiError> {
    Ok(Json(log_key_status(&s)?))
}

async fn log_key_rotate(State(s): State<Arc<ServerState>>) -> Result<Json<LogKeyRotation>, ApiError> {
    Ok(Json(log_key_rotation(&s).await?))
}
