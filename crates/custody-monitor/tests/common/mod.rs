//! Shared helpers for the monitor's test binaries: crafted custody entries, in-memory logs on
//! loopback, and running the `custody-monitor` binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, dead_code, unreachable_pub)]

use std::path::Path;
use std::process::Output;
use std::sync::{Arc, RwLock};

use custody_core::{
    AccessEvent, Action, Decision, FieldOutcome, LogEntry, PolicySetEvent, PrincipalEvent, PseudonymId,
};
use custody_monitor::memlog::{MemLog, SharedLog, serve};
use custody_tlog::Ed25519Signer;
use time::OffsetDateTime;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_custody-monitor");

/// A log signer named like a custody log.
pub fn signer(seed: u8) -> Ed25519Signer {
    Ed25519Signer::from_seed("custody.test/log", &[seed; 32]).unwrap()
}

/// A time `secs` after a fixed start.
pub fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_790_000_000 + secs).unwrap()
}

/// An access event as custody logs it.
#[derive(Clone)]
pub struct Access {
    pub time: OffsetDateTime,
    pub principal: String,
    pub kind: String,
    pub action: Action,
    pub released: Vec<String>,
    pub withheld: Vec<(String, String, String)>,
    pub purpose: Option<String>,
    pub justification: Option<String>,
    pub location: Option<String>,
    pub records: usize,
    pub subject: Option<String>,
    pub decision: Decision,
    pub jurisdictions: Vec<String>,
    pub approvals: Vec<String>,
}

impl Access {
    /// A permitted read of `released` fields of one profile by `principal` in `location`.
    pub fn read(secs: i64, principal: &str, location: &str, released: &[&str]) -> Access {
        Access {
            time: at(secs),
            principal: principal.into(),
            kind: "engineer".into(),
            action: Action::Read,
            released: released.iter().map(|s| s.to_string()).collect(),
            withheld: Vec::new(),
            purpose: Some("support".into()),
            justification: Some("TICKET-1".into()),
            location: Some(location.into()),
            records: 1,
            subject: Some("00112233445566778899aabbccddeeff".into()),
            decision: Decision::Permit,
            jurisdictions: Vec::new(),
            approvals: Vec::new(),
        }
    }

    /// A denied read of protected fields.
    pub fn denied(secs: i64, principal: &str, location: &str) -> Access {
        Access {
            released: Vec::new(),
            withheld: vec![("email".into(), "protected".into(), "default-deny".into())],
            decision: Decision::Deny,
            ..Access::read(secs, principal, location, &[])
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let e = AccessEvent {
            v: AccessEvent::VERSION,
            kind: "access".into(),
            time: self.time,
            principal: self.principal.parse().unwrap(),
            principal_kind: self.kind.clone(),
            action: self.action,
            collection: "profiles".parse().unwrap(),
            records: (0..self.records).map(|i| PseudonymId(format!("{i:032x}"))).collect(),
            subjects: self.subject.iter().map(|s| PseudonymId(s.clone())).collect(),
            released: self.released.iter().map(|f| f.parse().unwrap()).collect(),
            withheld: self
                .withheld
                .iter()
                .map(|(f, c, r)| FieldOutcome {
                    field: f.parse().unwrap(),
                    class: c.parse().unwrap(),
                    reason: r.clone(),
                })
                .collect(),
            purpose: self.purpose.clone(),
            justification: self.justification.clone(),
            location: self.location.clone(),
            policy_set: "0".repeat(64),
            decision: self.decision,
            jurisdictions: self.jurisdictions.clone(),
            approvals: self.approvals.clone(),
        };
        serde_json::to_vec(&LogEntry::Access(e)).unwrap()
    }
}

/// A `principal` entry.
pub fn principal(secs: i64, id: &str, kind: &str, location: &str, employer: &str, roles: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&LogEntry::Principal(PrincipalEvent {
        v: 1,
        kind: "principal".into(),
        time: at(secs),
        change: "added".into(),
        principal: id.parse().unwrap(),
        principal_kind: kind.into(),
        location: location.into(),
        employer: employer.into(),
        roles: roles.iter().map(|s| s.to_string()).collect(),
        tags: Default::default(),
        subject: None,
    }))
    .unwrap()
}

/// The sample deployment's policy files, with `edit` applied to each text.
pub fn sample_policies(edit: impl Fn(&str, String) -> Option<String>) -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/sample/policies");
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read_to_string(e.path()).unwrap())
        })
        .filter_map(|(n, t)| edit(&n, t).map(|t| (n, t)))
        .collect();
    files.sort();
    files
}

/// A `policy-set` entry for `files`.
pub fn policy_set(secs: i64, cause: &str, files: Vec<(String, String)>) -> Vec<u8> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for (n, t) in &files {
        h.update(n.as_bytes());
        h.update(t.as_bytes());
    }
    serde_json::to_vec(&LogEntry::PolicySet(PolicySetEvent {
        v: 1,
        kind: "policy-set".into(),
        time: at(secs),
        cause: cause.into(),
        policy_set: hex::encode(h.finalize()),
        policies: Vec::new(),
        files,
    }))
    .unwrap()
}

/// A log holding `entries`, published and served on loopback.
pub async fn served(signer: Ed25519Signer, entries: &[Vec<u8>]) -> (SharedLog, String, String) {
    let mut log = MemLog::new(signer);
    for e in entries {
        log.append(e.clone()).unwrap();
    }
    log.publish(&[]).unwrap();
    let vkey = log.verifier_key();
    let shared = Arc::new(RwLock::new(log));
    let (url, _) = serve(shared.clone()).await.unwrap();
    (shared, url, vkey)
}

/// Runs the monitor binary.
pub async fn monitor(args: &[&str]) -> Output {
    tokio::process::Command::new(BIN).args(args).env("CUSTODY_MONITOR_LOG", "warn").output().await.unwrap()
}

/// `follow --once` against `url` with state in `state`, plus `extra` flags.
pub async fn follow_once(url: &str, vkey: &str, state: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["follow", "--once", "--log", url, "--key", vkey, "--state", state.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = monitor(&args).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), format!("{stdout}{stderr}"))
}
