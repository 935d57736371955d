//! Bearer-token authentication.
//!
//! A token is `cst1_<principal id>:<secret>`; only SHA-256 of the secret is stored. The
//! principal id lets us fetch one record and compare hashes in constant time, instead of
//! looking a secret up in an index (which would time differently per prefix).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

use custody_core::{PrincipalId, PrincipalRecord};
use custody_policy::PolicyEngine;
use custody_vault::PrincipalStore;

use crate::guard::Caller;

const PREFIX: &str = "cst1_";

/// Why a request was not authenticated. Every variant answers 401.
#[derive(Debug, Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// The token is not a custody token, names no principal, has the wrong secret, or the
    /// principal is revoked or its credential expired. Callers are not told which.
    #[error("invalid or revoked token")]
    Invalid,
    /// The principal store failed (answers 503, fail closed).
    #[error("principal store unavailable: {0}")]
    Store(String),
}

/// A fresh token for `id`, and the hash to store.
pub fn issue_token(id: &PrincipalId) -> (String, [u8; 32]) {
    let mut secret = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(secret.as_mut_slice());
    let secret = zeroize::Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret.as_slice()));
    let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    (format!("{PREFIX}{id}:{}", secret.as_str()), hash)
}

fn parse(token: &str) -> Option<(PrincipalId, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.rsplit_once(':')?;
    Some((PrincipalId::new(id).ok()?, secret))
}

/// Checks tokens against the principal store, caching prepared principals.
pub struct Authenticator {
    store: Arc<dyn PrincipalStore>,
    policy: Arc<PolicyEngine>,
    cache: RwLock<HashMap<PrincipalId, (Arc<Caller>, Instant)>>,
}

/// How long a cached principal is trusted before the store is read again. Changes made on this
/// node invalidate at once; this bounds how late a revocation made on another node of a
/// PostgreSQL cluster takes effect here.
pub const PRINCIPAL_CACHE_TTL: Duration = Duration::from_secs(2);

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator")
    }
}

/// Whether a principal's credential works now: not revoked and not expired.
fn usable(record: &PrincipalRecord) -> bool {
    !record.revoked && record.expires_at.is_none_or(|t| time::OffsetDateTime::now_utc().unix_timestamp() < t)
}

impl Authenticator {
    /// Builds an authenticator over a principal store.
    pub fn new(store: Arc<dyn PrincipalStore>, policy: Arc<PolicyEngine>) -> Self {
        Self { store, policy, cache: RwLock::new(HashMap::new()) }
    }

    /// Authenticates an `Authorization` header value.
    ///
    /// # Errors
    /// [`AuthError`]; all but `Store` answer 401.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Arc<Caller>, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let token = header.strip_prefix("Bearer ").ok_or(AuthError::Missing)?.trim();
        let (id, secret) = parse(token).ok_or(AuthError::Invalid)?;
        let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let caller = self.caller(&id)?;
        let matches: bool = caller.record.token_sha256.ct_eq(&presented).into();
        if !matches || !usable(&caller.record) {
            return Err(AuthError::Invalid);
        }
        Ok(caller)
    }

    /// Authenticates a principal whose identity a verified TLS client certificate proved:
    /// it must exist, be unrevoked and unexpired; no token is needed.
    ///
    /// # Errors
    /// [`AuthError`]; all but `Store` answer 401.
    pub fn authenticate_certified(&self, id: &PrincipalId) -> Result<Arc<Caller>, AuthError> {
        let caller = self.caller(id)?;
        if !usable(&caller.record) {
            return Err(AuthError::Invalid);
        }
        Ok(caller)
    }

    /// The principal from the cache, or from the store (then cached).
    fn caller(&self, id: &PrincipalId) -> Result<Arc<Caller>, AuthError> {
        if let Some((c, at)) = self.cache.read().ok().and_then(|c| c.get(id).cloned())
            && at.elapsed() < PRINCIPAL_CACHE_TTL
        {
            return Ok(c);
        }
        let record =
            self.store.principal(id).map_err(|e| AuthError::Store(e.to_string()))?.ok_or(AuthError::Invalid)?;
        let prepared = self.policy.prepare_principal(&record).map_err(|e| AuthError::Store(e.to_string()))?;
        let caller = Arc::new(Caller { record: Arc::new(record), prepared });
        if let Ok(mut c) = self.cache.write() {
            c.insert(id.clone(), (caller.clone(), Instant::now()));
        }
        Ok(caller)
    }

    /// Drops a principal from the cache; its next request reads the store again.
    pub fn invalidate(&self, id: &PrincipalId) {
        if let Ok(mut c) = self.cache.write() {
            c.remove(id);
        }
    }

    /// Drops every cached principal (after a policy reload, entities are rebuilt).
    pub fn invalidate_all(&self) {
        if let Ok(mut c) = self.cache.write() {
            c.clear();
        }
    }

    /// The principal store.
    pub fn store(&self) -> &Arc<dyn PrincipalStore> {
        &self.store
    }
}

/// A record with a token hash, for tests and tools that build principals by hand.
pub fn with_token(mut record: PrincipalRecord) -> (PrincipalRecord, String) {
    let (token, hash) = issue_token(&record.id);
    record.token_sha256 = hash;
    (record, token)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tokens_parse_back_to_their_principal() {
        let id = PrincipalId::new("eng:alice@x").unwrap();
        let (t, h) = issue_token(&id);
        let (pid, secret) = parse(&t).unwrap();
        assert_eq!(pid, id);
        assert_eq!(<[u8; 32]>::from(Sha256::digest(secret.as_bytes())), h);
        assert!(parse("Bearer nope").is_none());
        assert!(parse("cst1_bad id:xyz").is_none());
    }
}
