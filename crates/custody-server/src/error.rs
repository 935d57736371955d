//! One error type for every HTTP answer that is not a success: `application/problem+json`.
//!
//! 4xx answers carry a specific, safe detail. 5xx answers are generic to the caller; the
//! real cause goes to the server log only.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::AuthError;
use crate::guard::GuardError;
use crate::wire::{Problem, Receipt, Withheld};

/// An API error, rendered as an RFC 9457 problem document. Boxed: errors are the cold path.
#[derive(Debug)]
pub struct ApiError(Box<Inner>);

#[derive(Debug)]
struct Inner {
    status: StatusCode,
    name: &'static str,
    title: &'static str,
    detail: String,
    withheld: Vec<Withheld>,
    receipt: Option<Receipt>,
    retry_after: Option<u32>,
}

impl ApiError {
    /// A problem with the given status, stable name, title and detail.
    pub fn new(status: StatusCode, name: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self(Box::new(Inner {
            status,
            name,
            title,
            detail: detail.into(),
            withheld: Vec::new(),
            receipt: None,
            retry_after: None,
        }))
    }

    /// 400 with a detail naming the problem.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request", detail)
    }

    /// A 500 whose cause is logged but not shown.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the server failed; the cause is in its log",
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }
}

impl ApiError {
    /// Adds a `Retry-After` of `secs` seconds.
    pub fn retry_after(mut self, secs: u32) -> Self {
        self.0.retry_after = Some(secs);
        self
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Store(cause) => {
                tracing::error!(%cause, "principal store failed");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable", "try again later")
            }
            other => Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized", other.to_string()),
        }
    }
}

impl From<GuardError> for ApiError {
    fn from(e: GuardError) -> Self {
        match e {
            GuardError::UnknownCollection(_) => {
                Self::new(StatusCode::NOT_FOUND, "unknown-collection", "Unknown collection", e.to_string())
            }
            GuardError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, "not-found", "Record not found", e.to_string()),
            GuardError::Invalid(_) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid-record", "Record does not match the schema", e.to_string())
            }
            GuardError::BadRequest(_) => Self::bad_request(e.to_string()),
            GuardError::Forbidden { withheld, receipt } => {
                let mut p = Self::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "Access denied",
                    "no requested data class is permitted; the denial is logged",
                );
                p.0.withheld = withheld;
                p.0.receipt = Some(receipt);
                p
            }
            GuardError::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", "Conflict", e.to_string()),
            GuardError::Erased(_) => Self::new(StatusCode::GONE, "erased", "Subject erased", e.to_string()),
            GuardError::AuditUnavailable(cause) => {
                tracing::error!(%cause, "audit sink unavailable; failing closed");
                let mut p = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "audit-unavailable",
                    "Audit unavailable",
                    "the access could not be recorded, so nothing was released",
                );
                p.0.retry_after = Some(1);
                p
            }
            GuardError::Integrity(cause) => {
                tracing::error!(%cause, "integrity check failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "integrity",
                    "Integrity failure",
                    "stored data failed an integrity check; nothing was released",
                )
            }
            GuardError::Storage(cause) => Self::internal(cause),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let this = *self.0;
        let body = Problem {
            kind: format!("urn:custody:problem:{}", this.name),
            title: this.title.to_string(),
            status: this.status.as_u16(),
            detail: this.detail,
            withheld: this.withheld,
            receipt: this.receipt,
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut resp = (this.status, bytes).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if this.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"custody\""));
        }
        if let Some(s) = this.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}
