//! Principals: who can ask custody for data, and the attributes policies decide on.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{IdError, Jurisdiction, PrincipalId, SubjectId};

/// The four kinds of principal the trusted-provider model knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKind {
    /// A person working for the provider (or the platform) who may be granted access.
    Engineer,
    /// A service, such as the clips backend, acting on the data.
    Workload,
    /// An end user, reaching data about themselves.
    Subject,
    /// An independent auditor.
    Monitor,
}

impl PrincipalKind {
    /// Every kind, in a stable order.
    pub const ALL: [PrincipalKind; 4] =
        [PrincipalKind::Engineer, PrincipalKind::Workload, PrincipalKind::Subject, PrincipalKind::Monitor];

    /// The wire name (`engineer`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Engineer => "engineer",
            PrincipalKind::Workload => "workload",
            PrincipalKind::Subject => "subject",
            PrincipalKind::Monitor => "monitor",
        }
    }

    /// The Cedar entity type (`Custody::Engineer`, ...).
    pub fn cedar_type(self) -> &'static str {
        match self {
            PrincipalKind::Engineer => "Custody::Engineer",
            PrincipalKind::Workload => "Custody::Workload",
            PrincipalKind::Subject => "Custody::Subject",
            PrincipalKind::Monitor => "Custody::Monitor",
        }
    }
}

impl fmt::Display for PrincipalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PrincipalKind {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        PrincipalKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or(IdError::BadChar {
            kind: "principal kind",
            value: s.chars().take(40).collect(),
            ch: s.chars().next().unwrap_or(' '),
            allowed: "one of engineer, workload, subject, monitor",
        })
    }
}

/// The attributes of a principal that Cedar policies see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalAttrs {
    /// Where the principal is (a jurisdiction code such as `US`).
    pub location: Jurisdiction,
    /// Who employs the principal (`provider`, `platform`, ...); empty if not applicable.
    #[serde(default)]
    pub employer: String,
    /// Roles such as `support` or `feed-ranker`.
    #[serde(default)]
    pub roles: Vec<String>,
    /// For subject principals: the subject they are.
    #[serde(default)]
    pub subject: Option<SubjectId>,
    /// Any further attributes a deployment's policies need, as Cedar entity tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// A registered principal as stored: attributes, the token's hash, and whether it is revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalRecord {
    /// Its id.
    pub id: PrincipalId,
    /// Its kind.
    pub kind: PrincipalKind,
    /// Its attributes.
    pub attrs: PrincipalAttrs,
    /// SHA-256 of its bearer token's secret part; the token itself is never stored.
    pub token_sha256: [u8; 32],
    /// Revoked principals are refused on their next request.
    pub revoked: bool,
    /// Bumped on every change, so caches of the principal can tell they are stale.
    pub version: u64,
    /// When its credential stops working (Unix seconds); short-lived workload credentials
    /// issued at admission have one, registered principals none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}
