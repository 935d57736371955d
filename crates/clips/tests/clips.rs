#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! clips end to end: a real custody server (in process, over loopback HTTP, with clips' schema
//! and policies) and clips' real API in front of it. No mocks: every clips operation here is a
//! guarded, logged custody call.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use clips::seed::{self, SeedPlan};
use custody_client::Client;
use custody_server::admin::{NewPrincipal, add_logged};
use custody_server::{ServerConfig, ServerState};

struct Env {
    _dir: tempfile::TempDir,
    custody: String,
    clips: String,
    app: Client,
    /// The clips workload's token.
    token: String,
    /// End user u3's own token (a subject principal).
    u3_token: String,
    http: reqwest::Client,
    _stop: tokio::sync::watch::Sender<bool>,
}

/// custody with clips' deployment (plus `extra` policy files), a clips workload, clips, and
/// `users` seeded users.
async fn env(extra: &[(&str, &str)], users: u64) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let (schema, policies) = clips::deploy::write_to(&dir.path().join("deploy")).unwrap();
    for (name, text) in extra {
        std::fs::write(policies.join(name), text).unwrap();
    }
    let mut cfg = ServerConfig::for_data_dir(dir.path().join("data"));
    cfg.schema = Some(schema);
    cfg.policy_dir = Some(policies);
    let state = ServerState::open(cfg).unwrap();
    let issued = add_logged(
        &state,
        NewPrincipal {
            id: "svc:clips".into(),
            kind: "workload".into(),
            location: "US".into(),
            employer: "platform".into(),
            roles: vec![clips::deploy::ROLE.into()],
            subject: None,
            tags: Default::default(),
        },
    )
    .await
    .unwrap();
    // u3, an end user who may export and erase their own data.
    let u3 = add_logged(
        &state,
        NewPrincipal {
            id: "user-u3".into(),
            kind: "subject".into(),
            location: "US".into(),
            employer: String::new(),
            roles: Vec::new(),
            subject: Some("u3".into()),
            tags: Default::default(),
        },
    )
    .await
    .unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let custody = format!("http://{}", listener.local_addr().unwrap());
    let mut r1 = rx.clone();
    tokio::spawn(custody_server::setup::serve(state, listener, async move {
        let _ = r1.wait_for(|v| *v).await;
    }));
    let app = Client::new(&custody, &issued.token).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let clips = format!("http://{}", listener.local_addr().unwrap());
    let mut r2 = rx.clone();
    tokio::spawn(clips::api::serve(listener, clips::Store::new(app.clone()), async move {
        let _ = r2.wait_for(|v| *v).await;
    }));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    for _ in 0..100 {
        if http.get(format!("{custody}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seed::seed(&app, &SeedPlan::new(users), Arc::new(|_, _, _| {})).await.unwrap();
    Env { _dir: dir, custody, clips, app, token: issued.token, u3_token: u3.token, http, _stop: tx }
}

impl Env {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.clips));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_works_end_to_end_through_custody() {
    use reqwest::Method;
    let e = env(&[], 60).await;

    let (s, feed) = e.call(Method::GET, "/v1/users/u1/feed?limit=10", None).await;
    assert_eq!(s, 200, "{feed}");
    assert_eq!(feed["personalised"], true, "{feed}");
    assert!(!feed["items"].as_array().unwrap().is_empty(), "{feed}");
    assert!(feed["items"].as_array().unwrap().iter().all(|i| i["video"]["creator"] != "u1"), "no own videos");

    let (s, p) = e.call(Method::GET, "/v1/users/u3", None).await;
    assert_eq!(s, 200);
    assert!(p["handle"].as_str().unwrap().ends_with('3'));
    assert!(p.get("email").is_none(), "the public profile has no protected field");

    let (s, _) = e.call(Method::PATCH, "/v1/users/u3", Some(json!({"bio": "new bio"}))).await;
    assert_eq!(s, 200);
    assert_eq!(e.call(Method::GET, "/v1/users/u3", None).await.1["bio"], "new bio");

    // A video larger than one chunk goes in as chunks and comes back byte for byte.
    let bytes: Vec<u8> = (0..(clips::media::CHUNK_SIZE * 2 + 100)).map(|i| (i * 7 % 256) as u8).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let (s, v) =
        e.call(Method::POST, "/v1/videos", Some(json!({"creator": "u4", "caption": "c", "content_base64": b64}))).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["chunks"].as_array().unwrap().len(), 3);
    let id = v["id"].as_str().unwrap().to_string();
    let back = e.http.get(format!("{}/v1/videos/{id}/content", e.clips)).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(back.as_ref(), bytes.as_slice());
    // The chunks are custody records, the content class sealed under the uploader's key.
    let chunk = e.app.get("chunks", v["chunks"][0].as_str().unwrap()).await.unwrap();
    assert_eq!(chunk.record.subject, "u4");

    let (s, r) = e.call(Method::POST, &format!("/v1/videos/{id}/likes"), Some(json!({"user": "u5"}))).await;
    assert_eq!((s, r["new"].clone()), (201, json!(true)));
    let (s, r) = e.call(Method::POST, &format!("/v1/videos/{id}/likes"), Some(json!({"user": "u5"}))).await;
    assert_eq!((s, r["new"].clone()), (200, json!(false)), "a second like is idempotent");
    let (s, _) =
        e.call(Method::POST, &format!("/v1/videos/{id}/comments"), Some(json!({"author": "u5", "text": "nice"}))).await;
    assert_eq!(s, 201);
    let (s, _) = e
        .call(Method::POST, &format!("/v1/videos/{id}/views"), Some(json!({"viewer": "u5", "watched_ms": 4000})))
        .await;
    assert_eq!(s, 201);
    let (_, v) = e.call(Method::GET, &format!("/v1/videos/{id}"), None).await;
    assert_eq!((v["likes"].clone(), v["comments"].clone(), v["views"].clone()), (json!(1), json!(1), json!(1)));
    let (_, c) = e.call(Method::GET, &format!("/v1/videos/{id}/comments"), None).await;
    assert_eq!(c["comments"][0]["text"], "nice");

    let (s, r) = e.call(Method::POST, "/v1/users/u5/follows", Some(json!({"followee": "u4"}))).await;
    assert!(s == 201 || (s == 200 && r["new"] == false), "{s} {r}");
    // The watch is protected data about u5, stored in custody.
    let watched = e.app.search("watches", "viewer", json!("u5")).await.unwrap();
    assert!(watched.records.iter().any(|r| r.fields["video"] == id.as_str()));

    // Bad input is a clear 4xx, never a 5xx.
    assert_eq!(e.call(Method::GET, "/v1/videos/nope", None).await.0, 404);
    assert_eq!(e.call(Method::GET, "/v1/users/nope", None).await.0, 404);
    assert_eq!(e.call(Method::POST, "/v1/users/u5/follows", Some(json!({"followee": "u5"}))).await.0, 400);
    assert_eq!(e.call(Method::POST, "/v1/users/u5/follows", Some(json!({"followee": "nobody"}))).await.0, 404);
    assert_eq!(e.call(Method::POST, "/v1/videos", Some(json!({"creator": "u4"}))).await.0, 400);
    assert_eq!(e.call(Method::POST, "/v1/videos", Some(json!({"creator": "u4", "content_base64": "!!"}))).await.0, 400);
    assert_eq!(e.call(Method::PATCH, "/v1/users/u3", Some(json!({}))).await.0, 400);
    assert_eq!(e.call(Method::POST, "/v1/users", Some(json!({"id": "u1", "handle": "dup"}))).await.0, 409);
    let (s, _) = e.call(Method::POST, "/v1/users", Some(json!({"id": "new-user", "handle": "newbie"}))).await;
    assert_eq!(s, 201);
    let _ = e.custody;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withheld_watch_history_makes_the_feed_non_personal_and_says_so() {
    let e = env(&[("95-no-watch-history.cedar", clips::deploy::NO_WATCH_HISTORY_POLICY)], 40).await;
    let (s, feed) = e.call(reqwest::Method::GET, "/v1/users/u1/feed", None).await;
    assert_eq!(s, 200, "{feed}");
    assert_eq!(feed["personalised"], false, "{feed}");
    let reason = feed["reason"].as_str().unwrap();
    assert!(reason.contains("forbidden-by:clips-no-watch-history"), "{reason}");
    assert!(!feed["items"].as_array().unwrap().is_empty(), "the feed still ranks by follows and engagement");
    assert!(feed["items"].as_array().unwrap().iter().all(|i| !i["why"].to_string().contains("watched")));
    // clips may still record watches; it just cannot read them back.
    let (s, _) =
        e.call(reqwest::Method::POST, "/v1/videos/v0/views", Some(json!({"viewer": "u1", "watched_ms": 1000}))).await;
    assert_eq!(s, 201);
}

#[test]
fn clips_has_no_storage_of_its_own() {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let deps = manifest.split("[dev-dependencies]").next().unwrap();
    for db in ["redb", "sled", "rusqlite", "sqlx", "rocksdb", "diesel", "postgres", "redis", "custody-vault"] {
        assert!(!deps.contains(db), "clips depends on `{db}`: its only storage must be custody");
    }
}

/// A loopback TCP proxy in front of `upstream` whose first connection carries the request to
/// custody but throws custody's answer away and closes: the write was carried out, and the
/// caller never learns it. Later connections pass both ways. Returns the proxy's URL and how
/// many answers it dropped.
async fn answer_dropping_proxy(upstream: &str) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let upstream = upstream.trim_start_matches("http://").to_string();
    let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = dropped.clone();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut client, _)) = listener.accept().await {
            let mut server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
            if !std::mem::take(&mut first) {
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                continue;
            }
            let counter = counter.clone();
            tokio::spawn(async move {
                let (mut from_client, to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
                });
                // Read custody's whole answer (until it pauses) and drop it.
                let mut buf = vec![0u8; 1 << 16];
                let mut got = 0;
                loop {
                    let wait = if got == 0 { Duration::from_secs(30) } else { Duration::from_millis(300) };
                    match tokio::time::timeout(wait, from_server.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => got += n,
                        _ => break,
                    }
                }
                assert!(got > 0, "custody answered nothing");
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                up.abort();
                drop(to_client);
            });
        }
    });
    (url, dropped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_survives_a_lost_answer_without_writing_twice() {
    let e = env(&[], 0).await;
    let (proxy, dropped) = answer_dropping_proxy(&e.custody).await;
    let via_proxy = Client::new(&proxy, &e.token).unwrap();
    let mut plan = SeedPlan::new(50);
    plan.activity = false;
    let report = seed::seed(&via_proxy, &plan, Arc::new(|_, _, _| {})).await.unwrap();
    assert_eq!(dropped.load(std::sync::atomic::Ordering::SeqCst), 1, "the first answer was dropped");
    assert_eq!(report.records(), 50);
    // The batch landed once: every user is there, and a fresh create of one of them conflicts.
    let ids: Vec<String> = (0..50).map(|i| format!("u{i}")).collect();
    let got = e.app.batch_get("users", &ids.iter().map(String::as_str).collect::<Vec<_>>()).await.unwrap();
    assert!(got.missing.is_empty(), "{:?}", got.missing);
    assert_eq!(got.records.len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_users_content_is_gone_not_a_failure() {
    let e = env(&[], 40).await;
    let (s, _) = e.call(reqwest::Method::GET, "/v1/users/u3", None).await;
    assert_eq!(s, 200);
    let u3 = Client::new(&e.custody, &e.u3_token).unwrap();
    u3.erase_subject("u3").await.unwrap();
    let (s, body) = e.call(reqwest::Method::GET, "/v1/users/u3", None).await;
    assert_eq!((s, body["error"].as_str()), (410, Some("gone")), "{body}");
    // Writing about the erased user is refused the same way, not as custody being unavailable.
    let (s, body) = e.call(reqwest::Method::PATCH, "/v1/users/u3", Some(json!({"bio": "back"}))).await;
    assert_eq!(s, 410, "{body}");
    let (s, feed) = e.call(reqwest::Method::GET, "/v1/users/u1/feed", None).await;
    assert_eq!(s, 200, "others' feeds still work: {feed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_comment_does_not_count() {
    // u99 (not seeded) may not comment: custody refuses the comment record.
    const NO_COMMENTS: &str = r#"@id("test-no-comments-by-u99")
forbid (
  principal is Custody::Workload,
  action == Custody::Action::"write",
  resource is Custody::Data
)
when { resource.collection == "comments" && resource has subject && resource.subject == "u99" };
"#;
    let e = env(&[("96-no-comments.cedar", NO_COMMENTS)], 40).await;
    let (s, before) = e.call(reqwest::Method::GET, "/v1/videos/v0", None).await;
    assert_eq!(s, 200, "{before}");
    let (s, body) =
        e.call(reqwest::Method::POST, "/v1/videos/v0/comments", Some(json!({"author": "u99", "text": "hi"}))).await;
    assert_eq!(s, 403, "{body}");
    let (_, after) = e.call(reqwest::Method::GET, "/v1/videos/v0", None).await;
    assert_eq!(
        after["comments"], before["comments"],
        "the counter was bumped together with the comment, then set back"
    );
    // Views still count: the watch record is allowed.
    let (s, _) =
        e.call(reqwest::Method::POST, "/v1/videos/v0/views", Some(json!({"viewer": "u1", "watched_ms": 1000}))).await;
    assert_eq!(s, 201);
    let (_, viewed) = e.call(reqwest::Method::GET, "/v1/videos/v0", None).await;
    assert_eq!(viewed["views"].as_i64(), before["views"].as_i64().map(|v| v + 1));
}
