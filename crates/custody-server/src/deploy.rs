//! Trusted deployment on the server: recording reviews, attesting builds with the
//! provider's build key, issuing short-lived workload credentials for attested artifacts,
//! and revoking them. Every step is in the transparency log before it takes effect, except
//! revocation, which takes effect first (it must not wait for anything) and is then logged.
//!
//! The build key never leaves this process: the CLI builds, then asks the server (over
//! `admin.sock`) to check the review and sign the provenance.

use std::path::Path;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use custody_core::{DeployEvent, LogEntry, PrincipalId};
use custody_deploy::dsse::{self, Envelope, IN_TOTO};
use custody_deploy::registry::{Artifact, Registry, Review};
use custody_deploy::statement::{REVIEW_PREDICATE, SLSA_PROVENANCE, STATEMENT_TYPE, Statement};
use custody_deploy::{DeployError, keys};

use crate::ApiError;
use crate::admin::{AdminError, Issued, NewPrincipal, add_logged_with, list_principals, revoke_logged};
use crate::api::{ApiJson, ApiPath};
use crate::setup::ServerState;

/// The deployment registry and the provider's build key.
#[derive(Debug)]
pub struct Deployer {
    registry: Registry,
    build_key: SigningKey,
    keyid: String,
    /// Whether this open created the build key (so its creation gets logged).
    pub(crate) fresh_key: bool,
}

impl Deployer {
    /// Opens `deploy.redb` in `root` and the build key in `keys` (creating both).
    ///
    /// # Errors
    /// [`DeployError`] naming the file.
    pub fn open(root: &Path, keys_dir: &Path) -> Result<Deployer, DeployError> {
        let key_path = keys_dir.join("build.key");
        let fresh_key = !key_path.exists();
        let build_key = keys::load_or_create(&key_path)?;
        let keyid = build_keyid(&build_key);
        Ok(Deployer { registry: Registry::open(&root.join("deploy.redb"))?, build_key, keyid, fresh_key })
    }

    /// The build key's id and public key, for independent verifiers.
    pub fn build_key(&self) -> BuildKey {
        BuildKey { keyid: self.keyid.clone(), public_key: keys::public_b64(&self.build_key.verifying_key()) }
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// `custody-build:` and the first 16 hex digits of SHA-256 of the public key.
fn build_keyid(key: &SigningKey) -> String {
    let h = Sha256::digest(key.verifying_key().as_bytes());
    format!("custody-build:{}", hex::encode(h.get(..8).unwrap_or_default()))
}

/// The public build key.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuildKey {
    /// The `keyid` in provenance envelopes.
    pub keyid: String,
    /// Standard base64 of the Ed25519 public key.
    pub public_key: String,
}

impl From<DeployError> for AdminError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::Envelope(_) | DeployError::Key(_) => AdminError::Invalid(e.to_string()),
            DeployError::NotFound(m) => AdminError::NotFound(m),
            DeployError::Refused(_) => AdminError::Refused(e.to_string()),
            other => AdminError::Log(other.to_string()),
        }
    }
}

fn statement(env: &Envelope) -> Result<Statement, AdminError> {
    if env.payload_type != IN_TOTO {
        return Err(AdminError::Invalid(format!("payloadType must be `{IN_TOTO}`")));
    }
    let payload = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &env.payload)
        .map_err(|_| AdminError::Invalid("payload is not base64".into()))?;
    let st: Statement = serde_json::from_slice(&payload)
        .map_err(|e| AdminError::Invalid(format!("payload is not an in-toto statement: {e}")))?;
    if st.type_ != STATEMENT_TYPE {
        return Err(AdminError::Invalid(format!("statement `_type` must be `{STATEMENT_TYPE}`")));
    }
    Ok(st)
}

async fn log_deploy(s: &ServerState, e: DeployEvent) -> Result<u64, AdminError> {
    let receipt = s.guard.log(&LogEntry::Deploy(e)).await.map_err(|e| AdminError::Log(e.to_string()))?;
    Ok(receipt.index)
}

/// Records a reviewer-signed review. The reviewer must be an unrevoked principal with the
/// `reviewer` role and a `review_key` attribute (base64 Ed25519 public key), and the envelope
/// must carry their signature under their principal id as `keyid`.
///
/// # Errors
/// [`AdminError::Invalid`] for a malformed or badly signed envelope;
/// [`AdminError::Refused`] when the signer may not review; [`AdminError::Log`].
pub async fn record_review(s: &ServerState, env: Envelope) -> Result<Review, AdminError> {
    let st = statement(&env)?;
    if st.predicate_type != REVIEW_PREDICATE {
        return Err(AdminError::Invalid(format!("a review's predicateType must be `{REVIEW_PREDICATE}`")));
    }
    let reviewer = st.predicate.get("reviewer").and_then(|r| r.as_str()).unwrap_or_default().to_owned();
    let pid = PrincipalId::new(&reviewer)?;
    let p = s.auth.store().principal(&pid)?.ok_or_else(|| AdminError::Refused(format!("no reviewer `{reviewer}`")))?;
    if p.revoked || !p.attrs.roles.iter().any(|r| r == "reviewer") {
        return Err(AdminError::Refused(format!("`{reviewer}` is not an active principal with the reviewer role")));
    }
    let key = p
        .attrs
        .tags
        .get("review_key")
        .ok_or_else(|| AdminError::Refused(format!("`{reviewer}` has no review_key attribute")))?;
    env.verify(&reviewer, &keys::parse_public(key)?)?;
    let subject = st.subject.first().ok_or_else(|| AdminError::Invalid("review names no commit".into()))?;
    let commit = subject.digest.get("gitCommit").cloned().unwrap_or_default();
    let tree = subject.digest.get("gitTree").cloned().unwrap_or_default();
    if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AdminError::Invalid("review's gitCommit must be a full 40-hex commit hash".into()));
    }
    let log_index = log_deploy(
        s,
        DeployEvent {
            v: 1,
            kind: "review".into(),
            time: time::OffsetDateTime::now_utc(),
            commit: commit.clone(),
            artifacts: Vec::new(),
            by: reviewer.clone(),
            envelope: serde_json::to_value(&env).ok(),
        },
    )
    .await?;
    let review = Review { repo: subject.name.clone(), commit, tree, reviewer, envelope: env, log_index };
    s.deploy.registry().add_review(&review)?;
    tracing::info!(commit = %review.commit, reviewer = %review.reviewer, "review recorded");
    Ok(review)
}

/// Signs a build's provenance with the provider's build key, logs it and admits its
/// artifacts, if an approved review covers the commit it was built from.
///
/// # Errors
/// [`AdminError::Invalid`] for a statement that is not SLSA provenance;
/// [`AdminError::Refused`] for an unreviewed commit; [`AdminError::Log`].
pub async fn attest(s: &ServerState, st: Statement) -> Result<Envelope, AdminError> {
    if st.type_ != STATEMENT_TYPE || st.predicate_type != SLSA_PROVENANCE {
        return Err(AdminError::Invalid(format!(
            "expected an in-toto statement with predicateType `{SLSA_PROVENANCE}`"
        )));
    }
    let commit = st.commit().ok_or_else(|| AdminError::Invalid("provenance names no source commit".into()))?.to_owned();
    if s.deploy.registry().review(&commit)?.is_none() {
        return Err(AdminError::Refused(format!("commit {commit} has no approved review; nothing was attested")));
    }
    let artifacts: Vec<(String, String)> =
        st.subject.iter().filter_map(|d| Some((d.name.clone(), d.digest.get("sha256")?.clone()))).collect();
    if artifacts.is_empty() || artifacts.iter().any(|(_, h)| h.len() != 64) {
        return Err(AdminError::Invalid("every subject needs a sha256 digest".into()));
    }
    let payload = serde_json::to_vec(&st).map_err(|e| AdminError::Invalid(e.to_string()))?;
    let d = &s.deploy;
    let env = dsse::sign(&d.build_key, &d.keyid, IN_TOTO, &payload);
    let log_index = log_deploy(
        s,
        DeployEvent {
            v: 1,
            kind: "attestation".into(),
            time: time::OffsetDateTime::now_utc(),
            commit: commit.clone(),
            artifacts: artifacts.clone(),
            by: d.keyid.clone(),
            envelope: serde_json::to_value(&env).ok(),
        },
    )
    .await?;
    for (name, sha256) in artifacts {
        let artifact =
            Artifact { sha256, name, commit: commit.clone(), envelope: env.clone(), log_index, revoked: false };
        d.registry().add_artifact(&artifact)?;
    }
    Ok(env)
}

/// A request for a workload credential.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialRequest {
    /// The measured artifact's lowercase hex SHA-256.
    pub sha256: String,
    /// Roles for the workload (default `app-backend`).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Lifetime in seconds (default 900, at most 86400).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// Issues a short-lived workload credential for an attested, unrevoked artifact. Policies see
/// `admitted`, `artifact_sha256` and `source_commit` on the workload principal.
///
/// # Errors
/// [`AdminError::Refused`] for an unknown or revoked digest; as [`add_logged_with`].
pub async fn issue_credential(s: &ServerState, req: CredentialRequest) -> Result<Issued, AdminError> {
    let digest = req.sha256.to_ascii_lowercase();
    let artifact = s
        .deploy
        .registry()
        .artifact(&digest)?
        .ok_or_else(|| AdminError::Refused(format!("artifact {digest} has no logged attestation")))?;
    if artifact.revoked {
        return Err(AdminError::Refused(format!("artifact {digest} is revoked")));
    }
    let ttl = req.ttl_secs.unwrap_or(900);
    if ttl == 0 || ttl > 86_400 {
        return Err(AdminError::Invalid(format!("ttl_secs {ttl} is outside 1..=86400")));
    }
    let suffix = hex::encode(rand::random::<[u8; 4]>());
    let short = digest.get(..12).unwrap_or_default();
    let tags = [
        ("admitted".to_owned(), "true".to_owned()),
        ("artifact_sha256".to_owned(), digest.clone()),
        ("source_commit".to_owned(), artifact.commit.clone()),
    ]
    .into_iter()
    .collect();
    let req = NewPrincipal {
        id: format!("artifact-{short}-{suffix}"),
        kind: "workload".into(),
        location: s.config.jurisdiction.to_string(),
        employer: "platform".into(),
        roles: if req.roles.is_empty() { vec!["app-backend".into()] } else { req.roles },
        subject: None,
        tags,
    };
    let expires = time::OffsetDateTime::now_utc().unix_timestamp() + i64::try_from(ttl).unwrap_or(900);
    add_logged_with(s, req, Some(expires)).await
}

/// Revokes an artifact: no new credential, and every credential issued for it stops working
/// at once; then logs the revocation.
///
/// # Errors
/// [`AdminError::NotFound`] for an unknown digest; [`AdminError::Log`].
pub async fn revoke_artifact(s: &ServerState, sha256: &str) -> Result<Vec<String>, AdminError> {
    let digest = sha256.to_ascii_lowercase();
    let artifact = s.deploy.registry().revoke(&digest)?;
    let mut revoked = Vec::new();
    for p in list_principals(s.auth.store().as_ref())? {
        if !p.revoked && p.attrs.tags.get("artifact_sha256") == Some(&digest) {
            revoke_logged(s, &p.id).await?;
            revoked.push(p.id);
        }
    }
    log_deploy(
        s,
        DeployEvent {
            v: 1,
            kind: "artifact-revoked".into(),
            time: time::OffsetDateTime::now_utc(),
            commit: artifact.commit,
            artifacts: vec![(artifact.name, digest)],
            by: "operator".into(),
            envelope: None,
        },
    )
    .await?;
    Ok(revoked)
}

/// The deployment routes on `admin.sock`.
pub fn router() -> Router<std::sync::Arc<ServerState>> {
    Router::new()
        .route("/admin/reviews", post(review_h))
        .route("/admin/reviews/{commit}", get(get_review_h))
        .route("/admin/attestations", post(attest_h))
        .route("/admin/credentials", post(credential_h))
        .route("/admin/artifacts/{sha256}/revoke", post(revoke_h))
}

type St = State<std::sync::Arc<ServerState>>;

async fn review_h(State(s): St, ApiJson(env): ApiJson<Envelope>) -> Result<(StatusCode, Json<Review>), ApiError> {
    Ok((StatusCode::CREATED, Json(record_review(&s, env).await?)))
}

async fn get_review_h(State(s): St, ApiPath(commit): ApiPath<String>) -> Result<Json<Review>, ApiError> {
    let r = s.deploy.registry().review(&commit).map_err(AdminError::from)?;
    Ok(Json(r.ok_or_else(|| AdminError::NotFound(format!("approved review of {commit}")))?))
}

async fn attest_h(State(s): St, ApiJson(st): ApiJson<Statement>) -> Result<(StatusCode, Json<Envelope>), ApiError> {
    Ok((StatusCode::CREATED, Json(attest(&s, st).await?)))
}

async fn credential_h(
    State(s): St,
    ApiJson(req): ApiJson<CredentialRequest>,
) -> Result<(StatusCode, Json<Issued>), ApiError> {
    Ok((StatusCode::CREATED, Json(issue_credential(&s, req).await?)))
}

async fn revoke_h(State(s): St, ApiPath(sha256): ApiPath<String>) -> Result<Json<Vec<String>>, ApiError> {
    Ok(Json(revoke_artifact(&s, &sha256).await?))
}
