//! clips' HTTP JSON API.
//!
//! End-user authentication is out of scope for the reference app: clips trusts the user ids
//! in paths and bodies as an auth gateway in front of it would. Errors are
//! `{"error": ..., "detail": ...}` with the matching status.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::json;

use crate::ClipsError;
use crate::feed::{self, Trending};
use crate::store::{MAX_VIDEO_BYTES, NewUser, ProfileEdit, Store};

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The custody-backed store.
    pub store: Store,
    /// The cache of the feed's non-personal inputs (trending shards, creators' videos).
    pub trending: Trending,
}

/// Shared state.
pub type Shared = Arc<AppState>;

/// How long trending shards and creators' video lists (the feed's shared inputs) are cached.
pub const TRENDING_TTL: Duration = Duration::from_secs(2);

/// An error answered as JSON.
#[derive(Debug)]
pub struct ApiError(ClipsError);

impl From<ClipsError> for ApiError {
    fn from(e: ClipsError) -> Self {
        Self(e)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        Self(ClipsError::BadInput(e.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        Self(ClipsError::BadInput(e.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let kind = match status.as_u16() {
            400 => "bad-input",
            403 => "denied-by-custody",
            404 => "not-found",
            409 => "conflict",
            410 => "gone",
            502 => "custody-unavailable",
            _ => "internal",
        };
        if status.is_server_error() {
            tracing::warn!(error = %self.0, "request failed");
        }
        (status, Json(json!({ "error": kind, "detail": self.0.to_string() }))).into_response()
    }
}

type Answer<T> = Result<T, ApiError>;

/// clips' router.
pub fn router(store: Store) -> Router {
    let state = Arc::new(AppState { store, trending: Trending::new(TRENDING_TTL) });
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/users", post(create_user))
        .route("/v1/users/{id}", get(profile).patch(edit_profile))
        .route("/v1/users/{id}/follows", post(follow))
        .route("/v1/users/{id}/feed", get(feed))
        .route("/v1/videos", post(post_video))
        .route("/v1/videos/{id}", get(video))
        .route("/v1/videos/{id}/content", get(content))
        .route("/v1/videos/{id}/views", post(view))
        .route("/v1/videos/{id}/likes", post(like))
        .route("/v1/videos/{id}/comments", post(comment).get(comments))
        .layer(DefaultBodyLimit::max(MAX_VIDEO_BYTES / 3 * 4 + 64 * 1024))
        .with_state(state)
}

/// Serves clips on `listener` until `shutdown` resolves.
///
/// # Errors
/// The listener failed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Store,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    // Answers go out as soon as they are written, not after the client's delayed ACK (see
    // custody's `setup::serve`).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
        }
    });
    axum::serve(listener, router(store)).with_graceful_shutdown(shutdown).await
}

async fn create_user(
    State(s): State<Shared>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Answer<(StatusCode, Json<serde_json::Value>)> {
    let Json(raw) = body?;
    // The body is the profile plus the user's `id`.
    let mut rest = raw;
    let id = rest.as_object_mut().and_then(|o| o.remove("id"));
    let id = id.as_ref().and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let user: NewUser = serde_json::from_value(rest).map_err(|e| ClipsError::BadInput(e.to_string()))?;
    if id.is_empty() {
        return Err(ClipsError::BadInput("`id` is required".into()).into());
    }
    s.store.create_user(&id, &user).await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))))
}

async fn profile(State(s): State<Shared>, Path(id): Path<String>) -> Answer<Json<serde_json::Value>> {
    Ok(Json(serde_json::to_value(s.store.profile(&id).await?).unwrap_or_default()))
}

async fn edit_profile(
    State(s): State<Shared>,
    Path(id): Path<String>,
    body: Result<Json<ProfileEdit>, JsonRejection>,
) -> Answer<Json<serde_json::Value>> {
    let Json(edit) = body?;
    let written = s.store.edit_profile(&id, &edit).await?;
    Ok(Json(json!({ "id": id, "updated": written })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FollowBody {
    followee: String,
}

async fn follow(
    State(s): State<Shared>,
    Path(id): Path<String>,
    body: Result<Json<FollowBody>, JsonRejection>,
) -> Answer<(StatusCode, Json<serde_json::Value>)> {
    let Json(b) = body?;
    let new = s.store.follow(&id, &b.followee).await?;
    let status = if new { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!({ "follower": id, "followee": b.followee, "new": new }))))
}

#[derive(Debug, Deserialize)]
struct FeedQuery {
    #[serde(default)]
    limit: Option<usize>,
}

async fn feed(
    State(s): State<Shared>,
    Path(id): Path<String>,
    q: Result<Query<FeedQuery>, QueryRejection>,
) -> Answer<Json<feed::Feed>> {
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(20).clamp(1, 100);
    Ok(Json(feed::for_you(&s.store, &s.trending, &id, limit).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostVideo {
    creator: String,
    #[serde(default)]
    caption: String,
    #[serde(default)]
    tags: String,
    #[serde(default)]
    duration_ms: i64,
    content_base64: String,
}

async fn post_video(
    State(s): State<Shared>,
    body: Result<Json<PostVideo>, JsonRejection>,
) -> Answer<(StatusCode, Json<serde_json::Value>)> {
    let Json(b) = body?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b.content_base64.as_bytes())
        .map_err(|_| ClipsError::BadInput("`content_base64` is not standard base64".into()))?;
    let v = s.store.post_video(&b.creator, &b.caption, &b.tags, b.duration_ms, &bytes).await?;
    Ok((StatusCode::CREATED, Json(serde_json::to_value(v).unwrap_or_default())))
}

async fn video(State(s): State<Shared>, Path(id): Path<String>) -> Answer<Json<serde_json::Value>> {
    Ok(Json(serde_json::to_value(s.store.video(&id).await?).unwrap_or_default()))
}

async fn content(State(s): State<Shared>, Path(id): Path<String>) -> Answer<Response> {
    let v = s.store.video(&id).await?;
    let bytes = s.store.video_bytes(&v).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ViewBody {
    viewer: String,
    #[serde(default)]
    watched_ms: i64,
}

async fn view(
    State(s): State<Shared>,
    Path(id): Path<String>,
    body: Result<Json<ViewBody>, JsonRejection>,
) -> Answer<(StatusCode, Json<serde_json::Value>)> {
    let Json(b) = body?;
    let v = s.store.video(&id).await?;
    s.store.record_watch(&b.viewer, &v, b.watched_ms.max(0)).await?;
    Ok((StatusCode::CREATED, Json(json!({ "video": id, "viewer": b.viewer }))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LikeBody {
    user: String,
}

async fn like(
    State(s): State<Shared>,
    Path(id): Path<String>,
    body: Result<Json<LikeBody>, JsonRejection>,
) -> Answer<(StatusCode, Json<serde_json::Value>)> {
    let Json(b) = body?;
    let v = s.store.video(&id).await?;
    let new = s.store.like(&b.user, &v).await?;
    let status = if new { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!({ "video": id, "user": b.user, "new": new }))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommentBody {
    author: String,
    text: String,
}

async fn comment(
    State(s): State<Shared>,
    Path(id): Path<String>,
    body: Result<Json<CommentBody>, JsonRejection>,
) -> Answer<(StatusCode, Json<serde_json::Value>)> {
    let Json(b) = body?;
    let v = s.store.video(&id).await?;
    let c = s.store.comment(&v, &b.author, &b.text).await?;
    Ok((StatusCode::CREATED, Json(serde_json::to_value(c).unwrap_or_default())))
}

async fn comments(State(s): State<Shared>, Path(id): Path<String>) -> Answer<Json<serde_json::Value>> {
    Ok(Json(json!({ "video": id, "comments": s.store.comments(&id).await? })))
}
