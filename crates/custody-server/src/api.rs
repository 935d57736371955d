//! The HTTP API: routes, extractors and the OpenAPI document.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use utoipa::OpenApi;

use custody_policy::RequestContext;

use crate::ApiError;
use crate::guard::Caller;
use crate::setup::ServerState;
use crate::wire::{
    BatchCreate, BatchGet, BatchWriteResponse, CreateRecord, ErasureResponse, ExportLog, ExportedRecord, ListResponse,
    LoggedEntry, MAX_CONTEXT_LEN, Problem, ReadResponse, Receipt, RecordView, Search, SearchAny, SubjectExport,
    UpdateRecord, Withheld, WriteResponse,
};

/// Shared state of every handler.
pub type AppState = Arc<ServerState>;

/// Header carrying the stated purpose.
pub const PURPOSE_HEADER: &str = "custody-purpose";
/// Header carrying the justification.
pub const JUSTIFICATION_HEADER: &str = "custody-justification";
/// Header carrying comma-separated approvals.
pub const APPROVALS_HEADER: &str = "custody-approvals";

/// JSON body extractor whose rejections are problem documents naming the problem.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    let status = r.status();
    let text = r.body_text();
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(status, "body-too-large", "Body too large", text),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            status,
            "unsupported-media-type",
            "Unsupported media type",
            "send `content-type: application/json`",
        ),
        _ => ApiError::new(StatusCode::BAD_REQUEST, "invalid-json", "Invalid JSON body", text),
    }
}

/// Path extractor with problem-document rejections.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|r: PathRejection| ApiError::bad_request(r.body_text()))
    }
}

/// Query-string extractor with problem-document rejections.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|r| ApiError::bad_request(r.body_text()))
    }
}

/// The authenticated caller.
pub struct Authed(pub Arc<Caller>);

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let cert = parts.extensions.get::<crate::tls::ClientIdentity>().and_then(|c| c.0.as_ref());
        let caller = match (header, cert) {
            (None, Some(id)) => state.auth.authenticate_certified(id)?,
            (Some(_), Some(id)) => {
                let caller = state.auth.authenticate(header)?;
                if &caller.record.id != id {
                    return Err(crate::auth::AuthError::Invalid.into());
                }
                caller
            }
            _ => state.auth.authenticate(header)?,
        };
        if let Err(secs) = state.limits.admit(&caller.record.id) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Rate limited",
                format!("principal `{}` is over its request rate; retry in {secs} s", caller.record.id),
            )
            .retry_after(secs));
        }
        Ok(Authed(caller))
    }
}

/// The request context from `custody-purpose`, `custody-justification`, `custody-approvals`.
pub struct Ctx(pub RequestContext);

fn header_text(headers: &HeaderMap, name: &'static str) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(name) else { return Ok(None) };
    let s = v.to_str().map_err(|_| ApiError::bad_request(format!("header `{name}` must be visible ASCII")))?;
    if s.len() > MAX_CONTEXT_LEN {
        return Err(ApiError::bad_request(format!(
            "header `{name}` is {} bytes, the limit is {MAX_CONTEXT_LEN}",
            s.len()
        )));
    }
    let s = s.trim();
    Ok(if s.is_empty() { None } else { Some(s.to_string()) })
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let purpose = header_text(&parts.headers, PURPOSE_HEADER)?;
        let justification = header_text(&parts.headers, JUSTIFICATION_HEADER)?;
        let approvals = header_text(&parts.headers, APPROVALS_HEADER)?
            .map(|s| s.split(',').map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect())
            .unwrap_or_default();
        Ok(Ctx(RequestContext { purpose, justification, approvals, destination: None }))
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "custody",
        description = "The trusted-provider data boundary: every access decided by Cedar and recorded before release."
    ),
    paths(
        create_record,
        get_record,
        update_record,
        delete_record,
        batch_get,
        batch_create,
        search,
        search_any,
        export_subject,
        erase_subject,
        export_data,
        healthz,
        metrics
    ),
    components(schemas(
        CreateRecord,
        BatchCreate,
        BatchWriteResponse,
        UpdateRecord,
        BatchGet,
        Search,
        SearchAny,
        ReadResponse,
        ListResponse,
        WriteResponse,
        RecordView,
        Withheld,
        Receipt,
        Problem,
        SubjectExport,
        ExportedRecord,
        ExportLog,
        LoggedEntry,
        ErasureResponse
    ))
)]
struct ApiDoc;

/// The OpenAPI document, generated from the handlers and types.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The router over a server state.
pub fn app(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/v1/collections/{collection}/records", post(create_record))
        .route("/v1/collections/{collection}/records/{id}", get(get_record).patch(update_record).delete(delete_record))
        .route("/v1/collections/{collection}/batch-get", post(batch_get))
        .route("/v1/collections/{collection}/batch-create", post(batch_create))
        .route("/v1/collections/{collection}/search", post(search))
        .route("/v1/collections/{collection}/search-any", post(search_any))
        .route("/v1/subjects/{subject}/export", get(export_subject))
        .route("/v1/subjects/{subject}/erase", post(erase_subject))
        .route("/v1/egress/exports", post(export_data))
        .route("/log/checkpoint", get(log_checkpoint))
        .route("/log/key", get(log_key))
        .route("/log/keys", get(log_keys))
        .route("/v1/deploy/build-key", get(build_key))
        // tlog-tiles: entry bundles SHOULD be compressed at the HTTP layer.
        .route("/log/tile/{*path}", get(log_tile).layer(tower_http::compression::CompressionLayer::new()))
        .route("/log/proof/inclusion", get(proof_inclusion))
        .route("/log/proof/consistency", get(proof_consistency))
        .route("/internal/log/append", post(crate::cluster::append))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), crate::cluster::proxy))
        .layer(middleware::from_fn_with_state(state.clone(), shed))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Answers 503 with `Retry-After` when `max_inflight` requests are in flight and the bounded
/// admission queue is full or its wait ran out, so memory stays bounded under overload.
async fn shed(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // Probes and scrapes stay answerable under overload; they are cheap.
    if matches!(req.uri().path(), "/healthz" | "/metrics") {
        return next.run(req).await;
    }
    let Some(_permit) = state.limits.enter().await else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "Overloaded",
            "the server is at its limit of requests in flight; retry shortly",
        )
        .retry_after(1)
        .into_response();
    };
    next.run(req).await
}

async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |m| m.as_str()).to_string();
    // Extension methods are unbounded; label them `other` so a client cannot mint series.
    let method = match req.method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS") => m,
        _ => "other",
    }
    .to_string();
    let resp = next.run(req).await;
    state.metrics.request(&route, &method, resp.status().as_u16(), start.elapsed().as_secs_f64());
    resp
}

fn the_log(s: &AppState) -> Result<Arc<custody_log::Log>, ApiError> {
    s.log().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no-log",
            "No transparency log",
            "this server records to another audit sink",
        )
    })
}

fn text(body: String, cache: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, cache)], body).into_response()
}

/// The latest signed checkpoint (C2SP tlog-checkpoint as a signed note).
/// With witnesses configured, the latest checkpoint that reached their quorum.
async fn log_checkpoint(State(s): State<AppState>) -> Result<Response, ApiError> {
    let log = the_log(&s)?;
    if let Some(w) = &s.witnesses {
        return match w.cosigned() {
            Some(cosigned) => Ok(text(cosigned, "no-store")),
            None => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no-cosigned-checkpoint",
                "No cosigned checkpoint yet",
                "no checkpoint has reached the witness quorum yet",
            )),
        };
    }
    Ok(text(log.checkpoint_text(), "no-store"))
}

/// The log's verifier key, `name+keyid+base64`.
async fn log_key(State(s): State<AppState>) -> Result<Response, ApiError> {
    Ok(text(format!("{}\n", the_log(&s)?.verifier_key()), "public, max-age=3600"))
}

/// Every key the log has signed checkpoints with (oldest first, each with the index from
/// which it signs) and, for each rotation, the handover a follower trusting the old key
/// checks before trusting the new one ([`custody_verify::KeyHandover`]).
async fn log_keys(State(s): State<AppState>) -> Result<Json<custody_api::LogKeys>, ApiError> {
    let log = the_log(&s)?;
    let mut keys = Vec::new();
    let mut handovers = Vec::new();
    for record in log.key_history() {
        let (Some(index), Some(handover)) = (record.announced_at, record.handover) else {
            keys.push(custody_api::LogKey { vkey: record.vkey, from: 0 });
            continue;
        };
        let size = custody_tlog::Checkpoint::parse(
            custody_tlog::Note::parse(handover.as_bytes()).map_err(|e| ApiError::internal(e.to_string()))?.text(),
        )
        .map_err(|e| ApiError::internal(e.to_string()))?
        .size;
        let entry = log.entry(index).map_err(|e| ApiError::internal(e.to_string()))?;
        let proof = log.prove_inclusion(index, size).map_err(|e| ApiError::internal(e.to_string()))?;
        keys.push(custody_api::LogKey { vkey: record.vkey.clone(), from: index + 1 });
        let h = custody_verify::KeyHandover {
            vkey: record.vkey,
            entry: String::from_utf8_lossy(&entry).into_owned(),
            handover,
            proof: custody_verify::InclusionProof { index, size, proof },
        };
        handovers.push(serde_json::to_value(h).map_err(|e| ApiError::internal(e.to_string()))?);
    }
    Ok(Json(custody_api::LogKeys { keys, handovers }))
}

/// The provider's build key, which signs build provenance (DSSE `keyid` and Ed25519 public
/// key), for anyone checking an attestation.
async fn build_key(State(s): State<AppState>) -> Json<crate::deploy::BuildKey> {
    Json(s.deploy.build_key())
}

/// A hash tile or entry bundle at its C2SP tlog-tiles path. Full tiles never change.
async fn log_tile(State(s): State<AppState>, ApiPath(path): ApiPath<String>) -> Result<Response, ApiError> {
    let log = the_log(&s)?;
    let full_path = format!("tile/{path}");
    let data = log
        .read_tile(&full_path)
        .map_err(|e| {
            ApiError::bad_request(format!(
                "`{}` is not a tile path: {e}",
                full_path.chars().take(80).collect::<String>()
            ))
        })?
        .ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "no-tile", "No such tile", "the log has no such tile yet")
        })?;
    // A tile at a given path (a partial tile's path includes its width) never changes.
    let cache = "public, max-age=31536000, immutable";
    Ok(([(header::CONTENT_TYPE, "application/octet-stream"), (header::CACHE_CONTROL, cache)], data).into_response())
}

/// Query of an inclusion proof.
#[derive(Debug, serde::Deserialize)]
struct InclusionQuery {
    index: u64,
    size: u64,
}

/// Query of a consistency proof.
#[derive(Debug, serde::Deserialize)]
struct ConsistencyQuery {
    from: u64,
    to: u64,
}

fn proof_error(e: custody_log::LogError) -> ApiError {
    ApiError::bad_request(e.to_string())
}

/// An RFC 6962 inclusion proof of entry `index` in the tree of size `size`.
async fn proof_inclusion(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<InclusionQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let proof = the_log(&s)?.prove_inclusion(q.index, q.size).map_err(proof_error)?;
    Ok(Json(serde_json::json!({ "index": q.index, "size": q.size, "proof": proof })))
}

/// An RFC 6962 consistency proof between tree sizes `from` and `to`.
async fn proof_consistency(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ConsistencyQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let proof = the_log(&s)?.prove_consistency(q.from, q.to).map_err(proof_error)?;
    Ok(Json(serde_json::json!({ "old_size": q.from, "size": q.to, "proof": proof })))
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "see /openapi.json for the methods each route takes",
    )
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no-route", "No such route", "see /openapi.json for the API")
}

/// Creates a record.
#[utoipa::path(post, path = "/v1/collections/{collection}/records", request_body = CreateRecord,
    params(("collection" = String, Path, description = "A declared collection")),
    responses((status = 201, body = WriteResponse), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem)))]
async fn create_record(
    State(s): State<AppState>,
    Authed(caller): Authed,
    Ctx(ctx): Ctx,
    ApiPath(collection): ApiPath<String>,
    ApiJson(body): ApiJson<CreateRecord>,
) -> Result<(StatusCode, Json<WriteResponse>), ApiError> {
    Ok((StatusCode::CREATED, Json(s.guard.create(&caller, &collection, body, &ctx).await?)))
}

/// Reads a record: permitted fields, and the withheld ones with class and reason.
#[utoipa::path(get, path = "/v1/collections/{collection}/records/{id}",
    params(("collection" = String, Path), ("id" = String, Path),
        ("custody-purpose" = Option<String>, Header), ("custody-justification" = Option<String>, Header)),
    responses((status = 200, body = ReadResponse), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem), (status = 410, body = Problem), (status = 503, body = Problem)))]
async fn get_record(
    State(s): State<AppState>,
    Authed(caller): Authed,
    Ctx(ctx): Ctx,
    ApiPath((collection, id)): ApiPath<(String, String)>,
) -> Result<Json<ReadResponse>, ApiError> {
    Ok(Json(s.guard.read(&caller, &collection, &id, &ctx).await?))
}

/// Updates fields of a record.
#[utoipa::path(patch, path = "/v1/collections/{collection}/records/{id}", request_body = UpdateRecord,
    params(("collection" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = WriteResponse), (status = 400, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn update_record(
    State(s): State<AppState>,
    Authed(caller): Authed,
    Ctx(ctx): Ctx,
    ApiPath((collection, id)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<UpdateRecord>,
) -> Result<Json<WriteResponse>, ApiError> {
    Ok(Json(s.guard.update(&caller, &collection, &id, body, &ctx).await?))
}

/// Deletes a record.
#[utoipa::path(delete, path = "/v1/collections/{collection}/records/{id}",
    params(("collection" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = WriteResponse), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn delete_record(
    State(s): State<AppState>,
    Authed(caller): Authed,
    Ctx(ctx): Ctx,
    ApiPath((collection, id)): ApiPath<(String, String)>,
) -> Result<Json<WriteResponse>, ApiError> {
    Ok(Json(s.guard.delete(&caller, &collection, &id, &ctx).await?))
}

/// Reads up to 100 records under one logged event.
#[utoipa::path(post, path = "/v1/collections/{collection}/batch-get", request_body = BatchGet,
    params(("collection" = String, Path)),
    responses((status = 200, body = ListResponse), (status = 400, body = Problem), (status = 403, body = Problem)))]
async fn batch_get(
    State(s): State<AppState>,
    Authed(caller): Authed,
    Ctx(ctx): Ctx,
    ApiPath(collection): ApiPath<String>,
    ApiJson(body): ApiJson<BatchGet>,
) -> Result<Json<ListResponse>, ApiError> {
    Ok(Json(s.guard.batch_get(&caller, &collection, &body.ids, &ctx).await?))
}

/// Creates up to 1000 records: each decided, logged and receipted; stored all or none.
#[utoipa::path(post, path = "/v1/collections/{collection}/batch-create", request_body = BatchCreate,
    params(("collection" = String, Path)),
    responses((status = 201, body = BatchWriteResponse), (status = 400, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem)))]
async fn batch_create(
    State(s): State<AppState>,
    Authed(caller): Authed,
    Ctx(ctx): Ctx,
    ApiPath(collection): ApiPath<String>,
    ApiJson(body): ApiJson<BatchCreate>,
) -> Result<(StatusCode, Json<BatchWriteResponse>), ApiError> {
    Ok((StatusCode::CREATED, Json(s.guard.batch_create(&caller, &collection, body.records, &ctx).await?)))
}

/// Finds records by exact value of a searchable field, through its keyed blind index.
#[utoipa::path(post, path = "/v1/collections/{collection}/search", request_body = Search,
    params(("collection" = String, Path)),
    responses((status = 200, body = ListResponse), (status = 400, body = Problem), (status = 403, body = Problem)))]
async fn search(
    State(s): State<AppState>,
    Authed(caller): Authed,
    Ctx(ctx): Ctx,
    ApiPath(collection): ApiPath<String>,
    ApiJson(body): ApiJson<Search>,
) -> Result<Json<ListResponse>, ApiError> {
    Ok(Json(s.guard.search(&caller, &collection, &body, &ctx).await?))
}

/// Finds records whose searchable field equals any of several values: one decision of the
/// field's class, one read and one logged event for all of them.
#[utoipa::path(post, path = "/v1/collections/{collection}/search-any", request_body = SearchAny,
    params(("collection" = String, Path)),
    responses((status = 200, body = ListResponse), (status = 400, body = Problem), (status = 403, body = Problem)))]
async fn search_any(
    State(s): State<AppState>,
    Authed(caller): Authed,
    Ctx(ctx): Ctx,
    ApiPath(collection): ApiPath<String>,
    ApiJson(body): ApiJson<SearchAny>,
) -> Result<Json<ListResponse>, ApiError> {
    Ok(Json(s.guard.search_any(&caller, &collection, &body, &ctx).await?))
}

/// Exports what custody holds and logged about a subject: every record (decrypted as the
/// `export` policies permit) and every log entry naming the subject's pseudonym, each with an
/// inclusion proof against a signed checkpoint. The export itself is logged first.
#[utoipa::path(get, path = "/v1/subjects/{subject}/export",
    params(("subject" = String, Path), ("custody-justification" = Option<String>, Header)),
    responses((status = 200, body = SubjectExport), (status = 401, body = Problem), (status = 403, body = Problem), (status = 503, body = Problem)))]
async fn export_subject(
    State(s): State<AppState>,
    Authed(caller): Authed,
    Ctx(ctx): Ctx,
    ApiPath(subject): ApiPath<String>,
) -> Result<Json<SubjectExport>, ApiError> {
    Ok(Json(crate::subject::export(&s, &caller, &subject, &ctx).await?))
}

/// Erases a subject: the erasure is logged, their DEK destroyed, their records tombstoned
/// and their blind-index entries removed; reads of their records then answer 410.
#[utoipa::path(post, path = "/v1/subjects/{subject}/erase",
    params(("subject" = String, Path), ("custody-justification" = Option<String>, Header)),
    responses((status = 200, body = ErasureResponse), (status = 401, body = Problem), (status = 403, body = Problem), (status = 503, body = Problem)))]
async fn erase_subject(
    State(s): State<AppState>,
    Authed(caller): Authed,
    Ctx(ctx): Ctx,
    ApiPath(subject): ApiPath<String>,
) -> Result<Json<ErasureResponse>, ApiError> {
    Ok(Json(crate::subject::erase(&s, &caller, &subject, &ctx).await?))
}

/// Header of an export's answer: SHA-256 (hex) of the body, as logged.
pub const EXPORT_SHA256_HEADER: &str = "custody-export-sha256";
/// Header of an export's answer: rows (or released groups) in the body.
pub const EXPORT_ROWS_HEADER: &str = "custody-export-rows";
/// Header of an export's answer: groups suppressed below `k`.
pub const EXPORT_SUPPRESSED_HEADER: &str = "custody-export-suppressed";
/// Header of an export's answer: the receipt of its log entry, as base64url (no padding) JSON.
pub const EXPORT_RECEIPT_HEADER: &str = "custody-receipt";

/// Exports data across the boundary through the egress gateway (body: an export request
/// naming collection, profile, destination and purpose). Cedar decides every class read for
/// action `export` with the destination in the context; the answer (NDJSON, or Parquet with
/// `"format": "parquet"`) is served only after the `export` log entry carrying its SHA-256
/// is durable. A denial is logged and answers 403.
#[utoipa::path(post, path = "/v1/egress/exports",
    params(("custody-justification" = Option<String>, Header)),
    responses((status = 200, description = "the export, NDJSON or Parquet as the request's `format` asks; headers carry its SHA-256, rows and log receipt", content(("application/x-ndjson"), ("application/vnd.apache.parquet"))),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 503, body = Problem)))]
async fn export_data(
    State(s): State<AppState>,
    Authed(caller): Authed,
    Ctx(ctx): Ctx,
    ApiJson(req): ApiJson<custody_egress::ExportRequest>,
) -> Result<Response, ApiError> {
    use base64::Engine as _;
    let content_type = req.format.content_type();
    let ready = crate::egress::export(&s, &caller, req, &ctx).await?;
    let receipt = serde_json::to_vec(&ready.receipt).map_err(ApiError::internal)?;
    let receipt = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(receipt);
    let file = tokio::fs::File::from_std(ready.file);
    let stream = futures_util::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(buf), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, ready.summary.bytes)
        .header(EXPORT_SHA256_HEADER, &ready.summary.sha256)
        .header(EXPORT_ROWS_HEADER, ready.summary.rows)
        .header(EXPORT_SUPPRESSED_HEADER, ready.summary.suppressed)
        .header(EXPORT_RECEIPT_HEADER, receipt)
        .body(axum::body::Body::from_stream(stream))
        .map_err(ApiError::internal)
}

/// Liveness: 200 while the server runs.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "ok")))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Prometheus metrics in the text format.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format")))]
async fn metrics(State(s): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.metrics.render())
        .into_response()
}

async fn openapi_json() -> Response {
    match openapi().to_json() {
        Ok(s) => ([(header::CONTENT_TYPE, "application/json")], s).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}
