//! The in-toto Statement v1 documents custody signs: a review of a commit, and the SLSA
//! provenance v1 of a build ([in-toto](https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md),
//! [SLSA](https://slsa.dev/spec/v1.0/provenance)).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `_type` of every in-toto v1 statement.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The SLSA provenance v1 predicate type.
pub const SLSA_PROVENANCE: &str = "https://slsa.dev/provenance/v1";
/// custody's review predicate: who approved which commit and tree, with notes.
pub const REVIEW_PREDICATE: &str = "https://custody.dev/review/v1";
/// The build type custody's builder records.
pub const BUILD_TYPE: &str = "https://custody.dev/build/v1";

/// An in-toto v1 statement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    /// Always [`STATEMENT_TYPE`].
    #[serde(rename = "_type")]
    pub type_: String,
    /// What the statement is about.
    pub subject: Vec<ResourceDescriptor>,
    /// The predicate's type.
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// The predicate.
    pub predicate: serde_json::Value,
}

/// An in-toto resource descriptor: a name and its digests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDescriptor {
    /// The artifact's name (a path inside the build, or a repository).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// A URI for it, where it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Algorithm → lowercase hex digest (`sha256`, `gitCommit`, `gitTree`).
    pub digest: BTreeMap<String, String>,
}

impl ResourceDescriptor {
    /// A named artifact with a SHA-256 digest.
    pub fn sha256(name: impl Into<String>, hex: impl Into<String>) -> Self {
        Self { name: name.into(), uri: None, digest: BTreeMap::from([("sha256".to_owned(), hex.into())]) }
    }
}

/// A review: `reviewer` approved `commit` (with tree `tree`) of `repo`.
pub fn review(repo: &str, commit: &str, tree: &str, reviewer: &str, notes: &str, time: &str) -> Statement {
    Statement {
        type_: STATEMENT_TYPE.into(),
        subject: vec![ResourceDescriptor {
            name: repo.into(),
            uri: None,
            digest: BTreeMap::from([("gitCommit".into(), commit.into()), ("gitTree".into(), tree.into())]),
        }],
        predicate_type: REVIEW_PREDICATE.into(),
        predicate: serde_json::json!({
            "reviewer": reviewer,
            "decision": "approved",
            "notes": notes,
            "time": time,
        }),
    }
}

/// What one build was: its inputs and where and when it ran.
#[derive(Debug, Clone)]
pub struct BuildFacts {
    /// The repository as given.
    pub repo: String,
    /// The commit built.
    pub commit: String,
    /// Its tree hash.
    pub tree: String,
    /// The build command.
    pub command: Vec<String>,
    /// The builder's id (a URI naming the provider's builder).
    pub builder: String,
    /// A unique id of this run.
    pub invocation: String,
    /// RFC 3339 start and end.
    pub started: String,
    /// See `started`.
    pub finished: String,
}

/// The SLSA provenance v1 statement for `outputs` built as `facts` say.
pub fn provenance(facts: &BuildFacts, outputs: Vec<ResourceDescriptor>) -> Statement {
    Statement {
        type_: STATEMENT_TYPE.into(),
        subject: outputs,
        predicate_type: SLSA_PROVENANCE.into(),
        predicate: serde_json::json!({
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "repository": facts.repo,
                    "commit": facts.commit,
                    "command": facts.command,
                },
                "resolvedDependencies": [{
                    "uri": format!("git+file://{}", facts.repo),
                    "digest": { "gitCommit": facts.commit, "gitTree": facts.tree },
                }],
            },
            "runDetails": {
                "builder": { "id": facts.builder },
                "metadata": {
                    "invocationId": facts.invocation,
                    "startedOn": facts.started,
                    "finishedOn": facts.finished,
                },
            },
        }),
    }
}

impl Statement {
    /// The commit this statement is about: the review's subject, or the provenance's
    /// resolved source.
    pub fn commit(&self) -> Option<&str> {
        if self.predicate_type == REVIEW_PREDICATE {
            return self.subject.first().and_then(|s| s.digest.get("gitCommit")).map(String::as_str);
        }
        self.predicate
            .pointer("/buildDefinition/resolvedDependencies/0/digest/gitCommit")
            .and_then(serde_json::Value::as_str)
    }
}
