#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! `POST /v1/collections/{collection}/batch-create`: every record decided, logged and
//! receipted on its own; stored all or none; refusals and bad batches write nothing.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use custody_server::admin::{NewPrincipal, add_principal};
use custody_server::wire::MAX_BATCH_CREATE;
use custody_server::{ServerConfig, ServerState};

const BATCH: &str = "/v1/collections/profiles/batch-create";

fn principal(state: &ServerState, id: &str, kind: &str, roles: &[&str]) -> String {
    add_principal(
        state.auth.store().as_ref(),
        NewPrincipal {
            id: id.into(),
            kind: kind.into(),
            location: "US".into(),
            employer: "provider".into(),
            roles: roles.iter().map(ToString::to_string).collect(),
            subject: None,
            tags: Default::default(),
        },
    )
    .unwrap()
    .token
}

async fn call(
    state: &Arc<ServerState>,
    token: &str,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let resp = custody_server::api::app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn rec(id: &str, subject: &str) -> Value {
    json!({"id": id, "subject": subject, "fields": {"handle": id, "email": format!("{id}@example.com")}})
}

#[tokio::test]
async fn a_batch_is_receipted_per_record_and_stored_all_or_none() {
    let dir = tempfile::tempdir().unwrap();
    let state = ServerState::open(ServerConfig::for_data_dir(dir.path())).unwrap();
    let app = principal(&state, "svc:app", "workload", &["app-backend"]);
    let eng = principal(&state, "alice", "engineer", &[]);

    let (s, v) = call(
        &state,
        &app,
        "POST",
        BATCH,
        Some(json!({"records": [rec("a", "s-a"), rec("b", "s-b"), rec("c", "s-a")]})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    let mut indexes: Vec<u64> = results.iter().map(|r| r["receipt"]["index"].as_u64().unwrap()).collect();
    indexes.dedup();
    assert_eq!(indexes.len(), 3, "one logged event per record");
    assert_eq!(results[0]["id"], "a");
    let (s, got) = call(&state, &app, "GET", "/v1/collections/profiles/records/c", None).await;
    assert_eq!((s, got["record"]["fields"]["email"].clone()), (StatusCode::OK, json!("c@example.com")));

    // One taken id: 409, and the other record of the batch is not written either.
    let (s, _) = call(&state, &app, "POST", BATCH, Some(json!({"records": [rec("d", "s-d"), rec("a", "s-a")]}))).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = call(&state, &app, "GET", "/v1/collections/profiles/records/d", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A repeated id or too many records: 400.
    let (s, _) = call(&state, &app, "POST", BATCH, Some(json!({"records": [rec("e", "s-e"), rec("e", "s-e")]}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let many: Vec<Value> = (0..=MAX_BATCH_CREATE).map(|i| rec(&format!("m{i}"), "s-m")).collect();
    let (s, _) = call(&state, &app, "POST", BATCH, Some(json!({ "records": many }))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // A principal not allowed to write: 403 with the logged deny's receipt, nothing written.
    let (s, p) = call(&state, &eng, "POST", BATCH, Some(json!({"records": [rec("f", "s-f")]}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{p}");
    assert!(p["receipt"]["index"].as_u64().is_some(), "{p}");
    let (s, _) = call(&state, &app, "GET", "/v1/collections/profiles/records/f", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
