//! What the provider has admitted: reviews by commit, attestations by artifact digest, and
//! revocations. Kept in `deploy.redb` beside the vault; the log holds the same facts for
//! monitors, this file answers "may this digest run?" without scanning the log.

use std::path::Path;

use redb::{Database, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::DeployError;
use crate::dsse::Envelope;

const REVIEWS: TableDefinition<&str, &[u8]> = TableDefinition::new("reviews");
const ARTIFACTS: TableDefinition<&str, &[u8]> = TableDefinition::new("artifacts");

/// An approved review of a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    /// The repository as the reviewer named it.
    pub repo: String,
    /// The full commit hash.
    pub commit: String,
    /// Its tree hash.
    pub tree: String,
    /// The reviewer's principal id.
    pub reviewer: String,
    /// The reviewer-signed DSSE envelope.
    pub envelope: Envelope,
    /// Its index in the transparency log.
    pub log_index: u64,
}

/// An artifact built from a reviewed commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Lowercase hex SHA-256.
    pub sha256: String,
    /// Its name in the build.
    pub name: String,
    /// The source commit.
    pub commit: String,
    /// The builder-signed provenance envelope.
    pub envelope: Envelope,
    /// The attestation's index in the log.
    pub log_index: u64,
    /// Revoked artifacts get no credential and lose the ones they had.
    pub revoked: bool,
}

/// The registry file.
#[derive(Debug)]
pub struct Registry {
    db: Database,
}

fn store_err(e: impl std::fmt::Display) -> DeployError {
    DeployError::Store(e.to_string())
}

impl Registry {
    /// Opens (creating) `path`.
    ///
    /// # Errors
    /// [`DeployError::Store`].
    pub fn open(path: &Path) -> Result<Registry, DeployError> {
        let db = Database::create(path).map_err(|e| DeployError::Store(format!("`{}`: {e}", path.display())))?;
        let tx = db.begin_write().map_err(store_err)?;
        tx.open_table(REVIEWS).map_err(store_err)?;
        tx.open_table(ARTIFACTS).map_err(store_err)?;
        tx.commit().map_err(store_err)?;
        Ok(Registry { db })
    }

    fn put<T: Serialize>(&self, table: TableDefinition<&str, &[u8]>, key: &str, value: &T) -> Result<(), DeployError> {
        let bytes = serde_json::to_vec(value).map_err(store_err)?;
        let tx = self.db.begin_write().map_err(store_err)?;
        tx.open_table(table).map_err(store_err)?.insert(key, bytes.as_slice()).map_err(store_err)?;
        tx.commit().map_err(store_err)
    }

    fn get<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, DeployError> {
        let tx = self.db.begin_read().map_err(store_err)?;
        let t = tx.open_table(table).map_err(store_err)?;
        match t.get(key).map_err(store_err)? {
            Some(v) => serde_json::from_slice(v.value()).map(Some).map_err(store_err),
            None => Ok(None),
        }
    }

    /// Records an approved review (durably).
    ///
    /// # Errors
    /// [`DeployError::Store`].
    pub fn add_review(&self, review: &Review) -> Result<(), DeployError> {
        self.put(REVIEWS, &review.commit, review)
    }

    /// The review of `commit`, if approved.
    ///
    /// # Errors
    /// [`DeployError::Store`].
    pub fn review(&self, commit: &str) -> Result<Option<Review>, DeployError> {
        self.get(REVIEWS, commit)
    }

    /// Records an attested artifact (durably).
    ///
    /// # Errors
    /// [`DeployError::Store`].
    pub fn add_artifact(&self, artifact: &Artifact) -> Result<(), DeployError> {
        self.put(ARTIFACTS, &artifact.sha256, artifact)
    }

    /// The artifact with this digest, if attested.
    ///
    /// # Errors
    /// [`DeployError::Store`].
    pub fn artifact(&self, sha256: &str) -> Result<Option<Artifact>, DeployError> {
        self.get(ARTIFACTS, sha256)
    }

    /// Marks an artifact revoked.
    ///
    /// # Errors
    /// [`DeployError::NotFound`] for an unknown digest; [`DeployError::Store`].
    pub fn revoke(&self, sha256: &str) -> Result<Artifact, DeployError> {
        let mut a = self.artifact(sha256)?.ok_or_else(|| DeployError::NotFound(format!("artifact {sha256}")))?;
        a.revoked = true;
        self.add_artifact(&a)?;
        Ok(a)
    }
}
