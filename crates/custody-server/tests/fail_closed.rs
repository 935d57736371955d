//! If the audit sink cannot make an event durable, nothing is released (503).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use custody_audit::{AuditError, AuditSink, FileAuditSink, FileSinkOptions, Pending};
use custody_core::LogEntry;
use custody_policy::RequestContext;
use custody_server::admin::{NewPrincipal, add_principal};
use custody_server::guard::GuardError;
use custody_server::wire::CreateRecord;
use custody_server::{DataDir, ServerConfig, ServerState};

/// The real file sink, with a switch that makes it fail as a full or broken disk would.
struct Breakable {
    inner: FileAuditSink,
    broken: AtomicBool,
}

impl AuditSink for Breakable {
    fn submit(&self, event: &LogEntry) -> Result<Pending, AuditError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(AuditError::Failed("disk full".into()));
        }
        self.inner.submit(event)
    }
}

fn principal(state: &ServerState, id: &str, kind: &str, roles: &[&str]) -> String {
    add_principal(
        state.auth.store().as_ref(),
        NewPrincipal {
            id: id.into(),
            kind: kind.into(),
            location: "US".into(),
            employer: "provider".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            subject: None,
            tags: Default::default(),
        },
    )
    .unwrap()
    .token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_failure_releases_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ServerConfig::for_data_dir(dir.path());
    let dirs = DataDir::prepare(&cfg).unwrap();
    let sink = Arc::new(Breakable {
        inner: FileAuditSink::open(&dirs.events, FileSinkOptions::default()).unwrap(),
        broken: AtomicBool::new(false),
    });
    let state = ServerState::open_with_sink(cfg, dirs, sink.clone()).unwrap();
    let app = state
        .auth
        .authenticate(Some(&format!("Bearer {}", principal(&state, "app", "workload", &["app-backend"]))))
        .unwrap();
    let eng = state.auth.authenticate(Some(&format!("Bearer {}", principal(&state, "eng", "engineer", &[])))).unwrap();
    let ctx = RequestContext {
        purpose: Some("support".into()),
        justification: Some("T-1".into()),
        approvals: vec![],
        destination: None,
    };
    let body = CreateRecord {
        id: Some("u1".into()),
        subject: Some("s1".into()),
        jurisdiction: None,
        fields: serde_json::json!({"email": "fc-canary@x", "handle": "h"}).as_object().unwrap().clone(),
    };
    state.guard.create(&app, "profiles", body.clone(), &ctx).await.unwrap();
    assert!(state.guard.read(&eng, "profiles", "u1", &ctx).await.is_ok());

    sink.broken.store(true, Ordering::SeqCst);
    let err = state.guard.read(&eng, "profiles", "u1", &ctx).await.unwrap_err();
    assert!(matches!(err, GuardError::AuditUnavailable(_)), "{err:?}");
    let api: custody_server::ApiError = err.into();
    assert_eq!(api.status().as_u16(), 503);
    // A write that cannot be logged is not performed either.
    let body2 = CreateRecord { id: Some("u2".into()), ..body };
    assert!(matches!(state.guard.create(&app, "profiles", body2, &ctx).await, Err(GuardError::AuditUnavailable(_))));
    sink.broken.store(false, Ordering::SeqCst);
    assert!(matches!(state.guard.read(&eng, "profiles", "u2", &ctx).await, Err(GuardError::NotFound(_))));
}
