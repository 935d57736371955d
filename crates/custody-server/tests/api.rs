#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! The HTTP API through the in-process router (`api::app` and `oneshot`, no socket).
//!
//! Every bad input must come back as a specific 4xx `application/problem+json` document with a
//! stable `urn:custody:problem:*` type, and never as a panic, a 5xx or axum's plain-text
//! default. The health, metrics and OpenAPI endpoints are checked here too.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt;

use custody_server::admin::{NewPrincipal, add_principal};
use custody_server::api::{JUSTIFICATION_HEADER, PURPOSE_HEADER};
use custody_server::wire::{MAX_BATCH, MAX_CONTEXT_LEN};
use custody_server::{ServerConfig, ServerState};

const RECORDS: &str = "/v1/collections/profiles/records";
const BATCH: &str = "/v1/collections/profiles/batch-get";
const SEARCH: &str = "/v1/collections/profiles/search";

/// A fresh data dir with the sample schema and policies, and an `app-backend` workload (which
/// the sample policies let read, write, search and delete profiles).
struct Fixture {
    _dir: tempfile::TempDir,
    state: Arc<ServerState>,
    token: String,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts a problem document of `status` and type `urn:custody:problem:<name>`; returns
    /// its `detail`.
    #[track_caller]
    fn problem(&self, status: StatusCode, name: &str) -> String {
        let text = String::from_utf8_lossy(&self.body);
        assert_eq!(self.status, status, "{text}");
        assert_eq!(
            self.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{text}"
        );
        let p = self.json();
        assert_eq!(p["type"], format!("urn:custody:problem:{name}"), "{text}");
        assert_eq!(p["status"], status.as_u16(), "{text}");
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{text}");
        let detail = p["detail"].as_str().unwrap_or_else(|| panic!("no detail: {text}")).to_string();
        assert!(!detail.is_empty(), "{text}");
        detail
    }
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = ServerState::open(ServerConfig::for_data_dir(dir.path())).unwrap();
        let token = Self::principal(&state, "svc:clips", "workload", &["app-backend"]);
        Self { _dir: dir, state, token }
    }

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

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    async fn send(&self, req: Request<Body>) -> Answer {
        let resp = custody_server::api::app(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
        Answer { status, headers, body }
    }

    /// An authenticated request with a JSON body.
    async fn call(&self, method: Method, uri: &str, body: impl Into<Body>) -> Answer {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, self.bearer())
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.into())
            .unwrap();
        self.send(req).await
    }

    async fn post_json(&self, uri: &str, body: &Value) -> Answer {
        self.call(Method::POST, uri, body.to_string()).await
    }

    async fn get(&self, uri: &str) -> Answer {
        let req = Request::get(uri).header(header::AUTHORIZATION, self.bearer()).body(Body::empty()).unwrap();
        self.send(req).await
    }

    async fn create(&self, id: &str) {
        let a = self
            .post_json(RECORDS, &json!({"id": id, "subject": "u-1", "fields": {"handle": "h1", "email": "a@example.com", "watch_minutes": 5}}))
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&a.body));
    }
}

// ---- health, metrics, OpenAPI ----

#[tokio::test]
async fn healthz_answers_200_without_a_token() {
    let f = Fixture::new();
    let a = f.send(Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, b"ok\n");
}

#[tokio::test]
async fn openapi_document_is_json_with_the_record_paths() {
    let f = Fixture::new();
    let a = f.send(Request::get("/openapi.json").body(Body::empty()).unwrap()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers.get(header::CONTENT_TYPE).unwrap(), "application/json");
    let doc = a.json();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/collections/{collection}/records",
        "/v1/collections/{collection}/records/{id}",
        "/v1/collections/{collection}/batch-get",
        "/v1/collections/{collection}/search",
        "/v1/collections/{collection}/search-any",
        "/healthz",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "`{p}` missing from {:?}", paths.keys().collect::<Vec<_>>());
    }
    let item = &paths["/v1/collections/{collection}/records/{id}"];
    for m in ["get", "patch", "delete"] {
        assert!(item.get(m).is_some(), "no `{m}` on the record path");
    }
    assert!(doc["components"]["schemas"]["Problem"].is_object());
}

#[tokio::test]
async fn metrics_count_decisions_after_a_read() {
    let f = Fixture::new();
    f.create("r1").await;
    let a = f.get(&format!("{RECORDS}/r1")).await;
    assert_eq!(a.status, StatusCode::OK);
    let m = f.send(Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(m.status, StatusCode::OK);
    let text = String::from_utf8(m.body).unwrap();
    assert!(text.contains("custody_decisions_total"), "{text}");
    assert!(text.contains("action=\"read\""), "{text}");
    assert!(text.contains("outcome=\"permit\""), "{text}");
    assert!(text.contains("custody_http_requests_total"), "{text}");
}

// ---- bodies ----

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let f = Fixture::new();
    let limit = f.state.config.max_body_bytes;
    let filler = "a".repeat(limit);
    let body = json!({"subject": "u-1", "fields": {"handle": "h", "bio": filler}}).to_string();
    assert!(body.len() > limit);
    let a = f.call(Method::POST, RECORDS, body.clone()).await;
    a.problem(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large");
    // The same with a declared length, and on the other body-carrying routes.
    let req = Request::post(RECORDS)
        .header(header::AUTHORIZATION, f.bearer())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body.clone()))
        .unwrap();
    f.send(req).await.problem(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large");
    f.create("r1").await;
    f.call(Method::PATCH, &format!("{RECORDS}/r1"), body.clone())
        .await
        .problem(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large");
    f.call(Method::POST, BATCH, body.clone()).await.problem(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large");
    f.call(Method::POST, SEARCH, body).await.problem(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large");
}

#[tokio::test]
async fn malformed_json_is_400_invalid_json() {
    let f = Fixture::new();
    for body in [
        "",
        "{",
        "hello",
        "{\"subject\": \"u-1\", \"fields\": {",
        "{\"fields\": {}} trailing",
        "[1,2,3]",
        "null",
        "\u{feff}{}",
    ] {
        let detail = f.call(Method::POST, RECORDS, body).await.problem(StatusCode::BAD_REQUEST, "invalid-json");
        assert!(!detail.contains('\n'), "{detail}");
    }
    f.call(Method::POST, BATCH, "{\"ids\": [").await.problem(StatusCode::BAD_REQUEST, "invalid-json");
    f.call(Method::POST, SEARCH, "{\"field\": ").await.problem(StatusCode::BAD_REQUEST, "invalid-json");
    // Invalid UTF-8 inside a string.
    f.call(Method::POST, RECORDS, &b"{\"subject\": \"\xff\xfe\", \"fields\": {}}"[..])
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid-json");
}

#[tokio::test]
async fn body_without_json_content_type_is_415() {
    let f = Fixture::new();
    let req = Request::post(RECORDS)
        .header(header::AUTHORIZATION, f.bearer())
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(json!({"subject": "u-1", "fields": {"handle": "h"}}).to_string()))
        .unwrap();
    let detail = f.send(req).await.problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type");
    assert!(detail.contains("application/json"), "{detail}");
}

#[tokio::test]
async fn unknown_json_keys_are_refused_by_name() {
    let f = Fixture::new();
    let d = f
        .post_json(RECORDS, &json!({"subject": "u-1", "fields": {"handle": "h"}, "sneaky": 1}))
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid-json");
    assert!(d.contains("sneaky"), "{d}");
    f.create("r1").await;
    let d = f
        .call(Method::PATCH, &format!("{RECORDS}/r1"), json!({"fields": {}, "subject": "u-2"}).to_string())
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid-json");
    assert!(d.contains("subject"), "{d}");
    let d =
        f.post_json(BATCH, &json!({"ids": ["r1"], "limit": 3})).await.problem(StatusCode::BAD_REQUEST, "invalid-json");
    assert!(d.contains("limit"), "{d}");
    let d = f
        .post_json(SEARCH, &json!({"field": "email", "value": "a", "fuzzy": true}))
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid-json");
    assert!(d.contains("fuzzy"), "{d}");
}

#[tokio::test]
async fn wrong_types_name_the_field() {
    let f = Fixture::new();
    // Wrong shapes of the body itself.
    for (body, name) in [
        (json!({"subject": 5, "fields": {}}), "subject"),
        (json!({"subject": "u-1", "fields": []}), "fields"),
        (json!({"subject": "u-1", "id": ["x"], "fields": {}}), "id"),
        (json!({"subject": "u-1", "jurisdiction": true, "fields": {}}), "jurisdiction"),
        (json!({"subject": "u-1"}), "fields"),
    ] {
        let d = f.post_json(RECORDS, &body).await.problem(StatusCode::BAD_REQUEST, "invalid-json");
        assert!(d.contains(name), "`{name}` not named in {d}");
    }
    let d = f.post_json(BATCH, &json!({"ids": "r1"})).await.problem(StatusCode::BAD_REQUEST, "invalid-json");
    assert!(d.contains("ids"), "{d}");
    let d = f.post_json(BATCH, &json!({"ids": ["r1", 7]})).await.problem(StatusCode::BAD_REQUEST, "invalid-json");
    assert!(d.contains("ids"), "{d}");
    for limit in [json!(-1), json!("ten"), json!(1.5), json!(1e30)] {
        let d = f
            .post_json(SEARCH, &json!({"field": "email", "value": "a", "limit": limit}))
            .await
            .problem(StatusCode::BAD_REQUEST, "invalid-json");
        assert!(d.contains("limit"), "{d}");
    }
    // Values that do not match the schema's field types.
    for (fields, name) in [
        (json!({"handle": 5}), "handle"),
        (json!({"handle": "h", "email": null}), "email"),
        (json!({"handle": "h", "watch_minutes": "lots"}), "watch_minutes"),
        (json!({"handle": "h", "watch_minutes": 1.5}), "watch_minutes"),
        (json!({"handle": "h", "watch_minutes": 18446744073709551615_u64}), "watch_minutes"),
        (json!({"handle": "h", "birthdate": "2001-13-40"}), "birthdate"),
        (json!({"handle": "h", "birthdate": 20010203}), "birthdate"),
        (json!({"handle": {"nested": true}}), "handle"),
        (json!({"handle": ["a"]}), "handle"),
    ] {
        let d = f
            .post_json(RECORDS, &json!({"subject": "u-1", "fields": fields}))
            .await
            .problem(StatusCode::BAD_REQUEST, "invalid-record");
        assert!(d.contains(&format!("`{name}`")), "`{name}` not named in {d}");
    }
    f.create("r1").await;
    let d = f
        .call(Method::PATCH, &format!("{RECORDS}/r1"), json!({"fields": {"watch_minutes": true}}).to_string())
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid-record");
    assert!(d.contains("`watch_minutes`"), "{d}");
}

#[tokio::test]
async fn oversized_field_value_is_refused_by_name() {
    let f = Fixture::new();
    let big = "b".repeat(64 * 1024 + 1);
    let d = f
        .post_json(RECORDS, &json!({"subject": "u-1", "fields": {"handle": "h", "bio": big}}))
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid-record");
    assert!(d.contains("`bio`"), "{d}");
}

#[tokio::test]
async fn unknown_field_is_named() {
    let f = Fixture::new();
    let d = f
        .post_json(RECORDS, &json!({"subject": "u-1", "fields": {"handle": "h", "ssn": "078-05-1120"}}))
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid-record");
    assert!(d.contains("`ssn`"), "{d}");
    assert!(!d.contains("078-05-1120"), "the value must not be echoed: {d}");
    f.create("r1").await;
    let d = f
        .call(Method::PATCH, &format!("{RECORDS}/r1"), json!({"fields": {"favourite_colour": "red"}}).to_string())
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid-record");
    assert!(d.contains("`favourite_colour`"), "{d}");
    let d = f
        .post_json(SEARCH, &json!({"field": "ssn", "value": "x"}))
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid-record");
    assert!(d.contains("`ssn`"), "{d}");
    // A huge unknown field name is named, but not echoed whole.
    let long = "z".repeat(5000);
    let mut fields = serde_json::Map::new();
    fields.insert("handle".into(), json!("h"));
    fields.insert(long, json!(1));
    let d = f
        .post_json(RECORDS, &json!({"subject": "u-1", "fields": fields}))
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid-record");
    assert!(d.len() < 300, "{} bytes of detail", d.len());
}

#[tokio::test]
async fn missing_subject_and_required_field_are_400() {
    let f = Fixture::new();
    let d = f
        .post_json(RECORDS, &json!({"fields": {"handle": "h"}}))
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid-record");
    assert!(d.contains("`subject`"), "{d}");
    let d = f
        .post_json(RECORDS, &json!({"subject": null, "fields": {"handle": "h"}}))
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid-record");
    assert!(d.contains("`subject`"), "{d}");
    let d = f
        .post_json(RECORDS, &json!({"subject": "", "fields": {"handle": "h"}}))
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid-record");
    assert!(d.contains("subject"), "{d}");
    let d = f
        .post_json(RECORDS, &json!({"subject": "u-1", "fields": {"email": "a@example.com"}}))
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid-record");
    assert!(d.contains("`handle`"), "{d}");
    let d = f
        .post_json(RECORDS, &json!({"subject": "u-1", "jurisdiction": "us", "fields": {"handle": "h"}}))
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid-record");
    assert!(d.contains("jurisdiction"), "{d}");
    let d = f
        .post_json(RECORDS, &json!({"subject": "u 1", "fields": {"handle": "h"}}))
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid-record");
    assert!(d.contains("subject id"), "{d}");
}

#[tokio::test]
async fn unknown_collection_is_404() {
    let f = Fixture::new();
    f.get("/v1/collections/nope/records/r1").await.problem(StatusCode::NOT_FOUND, "unknown-collection");
    f.post_json("/v1/collections/nope/records", &json!({"subject": "u-1", "fields": {}}))
        .await
        .problem(StatusCode::NOT_FOUND, "unknown-collection");
    f.post_json("/v1/collections/nope/batch-get", &json!({"ids": ["r1"]}))
        .await
        .problem(StatusCode::NOT_FOUND, "unknown-collection");
    f.post_json("/v1/collections/nope/search", &json!({"field": "email", "value": "x"}))
        .await
        .problem(StatusCode::NOT_FOUND, "unknown-collection");
    f.call(Method::PATCH, "/v1/collections/nope/records/r1", json!({"fields": {}}).to_string())
        .await
        .problem(StatusCode::NOT_FOUND, "unknown-collection");
    f.call(Method::DELETE, "/v1/collections/nope/records/r1", Body::empty())
        .await
        .problem(StatusCode::NOT_FOUND, "unknown-collection");
    // An absurd collection name is not echoed whole.
    let long = "c".repeat(1000);
    let d =
        f.get(&format!("/v1/collections/{long}/records/r1")).await.problem(StatusCode::NOT_FOUND, "unknown-collection");
    assert!(d.len() < 200, "{d}");
    for junk in ["%2F..%2F..", "%00", "%FF%FE", "PROFILES"] {
        let a = f.get(&format!("/v1/collections/{junk}/records/r1")).await;
        assert!(a.status.is_client_error(), "{junk}: {}", a.status);
        assert_eq!(a.headers.get(header::CONTENT_TYPE).unwrap(), "application/problem+json", "{junk}");
    }
}

#[tokio::test]
async fn absurd_record_ids_are_400() {
    let f = Fixture::new();
    f.create("r1").await;
    let long = "x".repeat(1000);
    let ids = [
        long.as_str(),
        "a%2Fb",
        "..%2F..%2Fkeys%2Fkek",
        "%2F",
        "%00",
        "a%0Ab",
        "a%0Db",
        "%1B%5B31m",
        "%7F",
        "a%20b",
        "%25",
        "%FF%FE",
        "%C0%AF",
        "%E2%80%AEevil",
        "%F0%9F%92%A9",
        "%",
        "%zz",
        "a%",
    ];
    for id in ids {
        let uri = format!("{RECORDS}/{id}");
        let d = f.get(&uri).await.problem(StatusCode::BAD_REQUEST, "bad-request");
        assert!(d.len() < 300, "{id}: {} bytes of detail", d.len());
        f.call(Method::PATCH, &uri, json!({"fields": {"bio": "x"}}).to_string())
            .await
            .problem(StatusCode::BAD_REQUEST, "bad-request");
        f.call(Method::DELETE, &uri, Body::empty()).await.problem(StatusCode::BAD_REQUEST, "bad-request");
    }
    // The same ids in bodies.
    for id in [long.as_str(), "a/b", "\0", "a\nb", "\u{202e}evil", ""] {
        f.post_json(BATCH, &json!({"ids": ["r1", id]})).await.problem(StatusCode::BAD_REQUEST, "bad-request");
        f.post_json(RECORDS, &json!({"id": id, "subject": "u-1", "fields": {"handle": "h"}}))
            .await
            .problem(StatusCode::BAD_REQUEST, "invalid-record");
        f.post_json(RECORDS, &json!({"id": "ok", "subject": id, "fields": {"handle": "h"}}))
            .await
            .problem(StatusCode::BAD_REQUEST, "invalid-record");
    }
    // Nothing was written by any of that.
    let a = f.post_json(BATCH, &json!({"ids": ["r1", "ok"]})).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["missing"], json!(["ok"]));
}

#[tokio::test]
async fn batch_get_of_more_than_the_limit_is_400() {
    let f = Fixture::new();
    let ids: Vec<String> = (0..=MAX_BATCH).map(|i| format!("r{i}")).collect();
    let d = f.post_json(BATCH, &json!({"ids": ids})).await.problem(StatusCode::BAD_REQUEST, "bad-request");
    assert!(d.contains(&MAX_BATCH.to_string()), "{d}");
    // Exactly the limit is fine, even when every id is missing.
    let a = f.post_json(BATCH, &json!({"ids": &ids[..MAX_BATCH]})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["missing"].as_array().unwrap().len(), MAX_BATCH);
    // A huge batch is refused without a per-id error for each.
    let many: Vec<String> = (0..10_000).map(|i| format!("r{i}")).collect();
    f.post_json(BATCH, &json!({"ids": many})).await.problem(StatusCode::BAD_REQUEST, "bad-request");
}

#[tokio::test]
async fn search_on_a_field_that_is_not_searchable_is_400() {
    let f = Fixture::new();
    let d = f
        .post_json(SEARCH, &json!({"field": "bio", "value": "x"}))
        .await
        .problem(StatusCode::BAD_REQUEST, "bad-request");
    assert!(d.contains("`bio`") && d.contains("searchable"), "{d}");
    let d = f
        .post_json(SEARCH, &json!({"field": "watch_minutes", "value": 5}))
        .await
        .problem(StatusCode::BAD_REQUEST, "bad-request");
    assert!(d.contains("`watch_minutes`"), "{d}");
    // A searchable one works, and limit 0 is clamped rather than refused.
    f.create("r1").await;
    let a = f.post_json(SEARCH, &json!({"field": "email", "value": "a@example.com", "limit": 0})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["records"][0]["id"], "r1");
}

#[tokio::test]
async fn search_any_reads_every_value_under_one_logged_event() {
    let f = Fixture::new();
    const ANY: &str = "/v1/collections/profiles/search-any";
    let d = f
        .post_json(ANY, &json!({"field": "email", "values": []}))
        .await
        .problem(StatusCode::BAD_REQUEST, "bad-request");
    assert!(d.contains("`values`"), "{d}");
    let many: Vec<String> = (0..=custody_server::wire::MAX_SEARCH_VALUES).map(|i| format!("{i}@x")).collect();
    f.post_json(ANY, &json!({"field": "email", "values": many})).await.problem(StatusCode::BAD_REQUEST, "bad-request");
    f.post_json(ANY, &json!({"field": "bio", "values": ["x"]})).await.problem(StatusCode::BAD_REQUEST, "bad-request");
    for (id, email) in [("r1", "a@example.com"), ("r2", "b@example.com"), ("r3", "c@example.com")] {
        let a =
            f.post_json(RECORDS, &json!({"id": id, "subject": "u-1", "fields": {"handle": id, "email": email}})).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&a.body));
    }
    let before = f.state.log().unwrap().size();
    // A value given twice still reads its record once; a value matching nothing adds nothing.
    let a = f
        .post_json(
            ANY,
            &json!({"field": "email", "values": ["a@example.com", "c@example.com", "a@example.com", "z@example.com"]}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", String::from_utf8_lossy(&a.body));
    let body = a.json();
    let mut ids: Vec<&str> = body["records"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["r1", "r3"]);
    assert_eq!(f.state.log().unwrap().size(), before + 1, "one access event for the whole search");
    let entry: Value = serde_json::from_str(body["receipt"]["detail"]["entry"].as_str().unwrap()).unwrap();
    assert_eq!(entry["action"], "search");
    assert_eq!(entry["records"].as_array().unwrap().len(), 2, "{entry}");
}

// ---- authentication ----

#[tokio::test]
async fn missing_garbage_and_revoked_tokens_are_401() {
    let f = Fixture::new();
    f.create("r1").await;
    let uri = format!("{RECORDS}/r1");
    let with = |auth: Option<HeaderValue>| {
        let mut b = Request::get(&uri);
        if let Some(v) = auth {
            b = b.header(header::AUTHORIZATION, v);
        }
        b.body(Body::empty()).unwrap()
    };
    let d = f.send(with(None)).await.problem(StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(d.contains("missing"), "{d}");
    let (id_part, _) = f.token.rsplit_once(':').unwrap();
    let wrong_secret = format!("Bearer {id_part}:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let garbage = [
        HeaderValue::from_static("Bearer"),
        HeaderValue::from_static("Bearer "),
        HeaderValue::from_static("Bearer garbage"),
        HeaderValue::from_static("bearer cst1_svc:clips:x"),
        HeaderValue::from_static("Basic dXNlcjpwYXNz"),
        HeaderValue::from_static("Bearer cst1_"),
        HeaderValue::from_static("Bearer cst1_:"),
        HeaderValue::from_static("Bearer cst1_nobody:secret"),
        HeaderValue::from_static("Bearer cst1_bad id:secret"),
        HeaderValue::from_str(&wrong_secret).unwrap(),
        HeaderValue::from_str(&format!("Bearer {}", "x".repeat(8000))).unwrap(),
        HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
    ];
    for v in garbage {
        f.send(with(Some(v.clone()))).await.problem(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // Revocation through the operator API takes effect even for a principal already cached.
    let token = Fixture::principal(&f.state, "svc:other", "workload", &["app-backend"]);
    let ok = f.send(with(Some(HeaderValue::from_str(&format!("Bearer {token}")).unwrap()))).await;
    assert_eq!(ok.status, StatusCode::OK);
    let admin = custody_server::admin::router(f.state.clone());
    let resp =
        admin.oneshot(Request::post("/admin/principals/svc:other/revoke").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let d = f
        .send(with(Some(HeaderValue::from_str(&format!("Bearer {token}")).unwrap())))
        .await
        .problem(StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(!d.contains("svc:other"), "the detail must not tell which check failed: {d}");
    // Auth comes before anything else: a bad token with a bad body is still 401.
    let req = Request::post(RECORDS)
        .header(header::AUTHORIZATION, "Bearer garbage")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{"))
        .unwrap();
    f.send(req).await.problem(StatusCode::UNAUTHORIZED, "unauthorized");
}

// ---- request context headers ----

#[tokio::test]
async fn context_headers_over_the_limit_are_400() {
    let f = Fixture::new();
    f.create("r1").await;
    let uri = format!("{RECORDS}/r1");
    let req = |name: &str, value: HeaderValue| {
        Request::get(&uri).header(header::AUTHORIZATION, f.bearer()).header(name, value).body(Body::empty()).unwrap()
    };
    let at_limit = HeaderValue::from_str(&"p".repeat(MAX_CONTEXT_LEN)).unwrap();
    assert_eq!(f.send(req(PURPOSE_HEADER, at_limit)).await.status, StatusCode::OK);
    let over = HeaderValue::from_str(&"p".repeat(MAX_CONTEXT_LEN + 1)).unwrap();
    let d = f.send(req(PURPOSE_HEADER, over.clone())).await.problem(StatusCode::BAD_REQUEST, "bad-request");
    assert!(d.contains(PURPOSE_HEADER) && d.contains(&MAX_CONTEXT_LEN.to_string()), "{d}");
    let d = f.send(req(JUSTIFICATION_HEADER, over)).await.problem(StatusCode::BAD_REQUEST, "bad-request");
    assert!(d.contains(JUSTIFICATION_HEADER), "{d}");
    let huge = HeaderValue::from_str(&"p".repeat(64 * 1024)).unwrap();
    f.send(req(PURPOSE_HEADER, huge)).await.problem(StatusCode::BAD_REQUEST, "bad-request");
    let not_ascii = HeaderValue::from_bytes(b"support \xff").unwrap();
    let d = f.send(req(PURPOSE_HEADER, not_ascii)).await.problem(StatusCode::BAD_REQUEST, "bad-request");
    assert!(d.contains(PURPOSE_HEADER), "{d}");
}

// ---- routes ----

#[tokio::test]
async fn unknown_route_is_a_404_problem() {
    let f = Fixture::new();
    let d = f.get("/v1/nope").await.problem(StatusCode::NOT_FOUND, "no-route");
    assert!(d.contains("/openapi.json"), "{d}");
    f.get("/v1/collections/profiles/records/r1/extra").await.problem(StatusCode::NOT_FOUND, "no-route");
}

// ---- arbitrary input never panics or fails the server ----

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::from),
        prop::sample::select(vec!["handle", "email", "watch_minutes", "birthdate", "u-1", "r1", "US", "2001-02-03"])
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(vec![
                        "id",
                        "subject",
                        "jurisdiction",
                        "fields",
                        "ids",
                        "field",
                        "value",
                        "limit",
                        "handle",
                        "email",
                        "watch_minutes",
                        "birthdate",
                        "bio"
                    ])
                    .prop_map(String::from),
                    "\\PC{0,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum Junk {
    Bytes(Vec<u8>),
    Json(Value),
}

#[test]
fn arbitrary_bodies_and_ids_answer_4xx_problems_or_success_never_5xx() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let f = Fixture::new();
    rt.block_on(f.create("r1"));
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Junk::Bytes),
        arbitrary_json().prop_map(Junk::Json),
    ];
    let route = prop::sample::select(vec![
        (Method::POST, RECORDS.to_string()),
        (Method::PATCH, format!("{RECORDS}/r1")),
        (Method::POST, BATCH.into()),
        (Method::POST, SEARCH.into()),
    ]);
    let id = prop::collection::vec(any::<u8>(), 0..40);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&(body, route, id), |(body, (method, uri), id)| {
            let bytes = match body {
                Junk::Bytes(b) => b,
                Junk::Json(v) => v.to_string().into_bytes(),
            };
            let a = rt.block_on(f.call(method, &uri, bytes));
            prop_assert!(
                a.status.is_success() || a.status.is_client_error(),
                "{} {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            );
            if !a.status.is_success() {
                prop_assert_eq!(
                    a.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
                    Some("application/problem+json")
                );
            }
            // Every byte percent-encoded, so any id reaches the extractor.
            let encoded: String = id.iter().map(|b| format!("%{b:02X}")).collect();
            let a = rt.block_on(f.get(&format!("{RECORDS}/{encoded}x")));
            prop_assert!(
                matches!(a.status, StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND),
                "{} {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            );
            prop_assert_eq!(
                a.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
                Some("application/problem+json")
            );
            Ok(())
        })
        .unwrap();
}

async fn metrics_text(f: &Fixture) -> String {
    let m = f.send(Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(m.status, StatusCode::OK);
    String::from_utf8(m.body).unwrap()
}

#[tokio::test]
async fn metrics_labels_do_not_grow_with_request_paths() {
    let f = Fixture::new();
    for uri in
        ["/zzz-unique-path", "/v1/collections/qqq-coll/records/yyy-id", "/v1/collections/profiles/records/yyy-id/x"]
    {
        let a = f.get(uri).await;
        assert!(a.status.is_client_error());
    }
    let text = metrics_text(&f).await;
    for junk in ["zzz-unique-path", "qqq-coll", "yyy-id"] {
        assert!(!text.contains(junk), "`{junk}` became a label: {text}");
    }
    assert!(text.contains("route=\"unmatched\""), "{text}");
}

#[tokio::test]
async fn wrong_method_is_a_405_problem() {
    let f = Fixture::new();
    for (method, uri) in [
        (Method::PUT, format!("{RECORDS}/r1")),
        (Method::GET, RECORDS.to_string()),
        (Method::DELETE, "/healthz".into()),
    ] {
        let a = f.call(method, &uri, Body::empty()).await;
        a.problem(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed");
        assert!(a.headers.get(header::ALLOW).is_some());
    }
}

#[tokio::test]
async fn extension_methods_do_not_mint_metric_series() {
    let f = Fixture::new();
    for i in 0..5 {
        let m = Method::from_bytes(format!("ZZZ{i}").as_bytes()).unwrap();
        let a = f.send(Request::builder().method(m).uri("/healthz").body(Body::empty()).unwrap()).await;
        assert!(a.status.is_client_error());
    }
    let text = metrics_text(&f).await;
    assert!(!text.contains("ZZZ"), "extension methods became labels: {text}");
}
