//! The registry API's error answers: every failure of a handler leaves
//! through [`ApiError`], which renders `{"error", "code", "field"}` with the
//! right status, so the HTTP mapping of failures lives in one place.
//!
//! Its own module, below both `api` (the handlers) and `auth` (which
//! refuses requests before any handler runs), so neither imports the other
//! for it.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::catalog::CatalogError;
use crate::model::Invalid;
use crate::store::StoreError;

/// A failure rendered as a JSON error body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    /// For `lock_held`: who holds the lock, and until when.
    held: Option<Box<LockHeldBy>>,
}

/// Who holds a lock, added to a `lock_held` error body.
#[derive(Debug, Serialize)]
struct LockHeldBy {
    holder: String,
    expires_unix_ms: u64,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    held: Option<&'a LockHeldBy>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            held: None,
        }
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        // Unparseable or unknown input is a 400; well-formed but impossible values are a 422.
        let status = match e.code {
            "malformed_body"
            | "unknown_field"
            | "unknown_parameter"
            | "duplicate_field"
            | crate::certificate::INVALID_CERTIFICATE
            | crate::consumer::INVALID_CONSUMER
            | crate::lock::INVALID_LOCK => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError {
            status,
            code: e.code,
            message: e.reason,
            field: e.field,
            held: None,
        }
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::NotFound { .. } => ApiError::not_found(e.to_string()),
            CatalogError::Invalid(invalid)
                if invalid.code == "route_conflict"
                    || invalid.code == crate::consumer::CONSUMER_CONFLICT =>
            {
                ApiError {
                    status: StatusCode::CONFLICT,
                    code: invalid.code,
                    message: invalid.reason,
                    field: invalid.field,
                    held: None,
                }
            }
            CatalogError::Invalid(invalid) => invalid.into(),
            CatalogError::Store(s) => s.into(),
            CatalogError::LockHeld(lock) => lock_held(&lock),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store operation failed");
        match e {
            StoreError::Unavailable(_) | StoreError::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                e.to_string(),
            ),
            _ => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_failure",
                e.to_string(),
            ),
        }
    }
}

/// 409 for a lock another holder has: who, and until when, so the caller
/// knows when to try again.
fn lock_held(lock: &crate::lock::Lock) -> ApiError {
    ApiError {
        status: StatusCode::CONFLICT,
        code: "lock_held",
        message: format!(
            "lock {:?} is held by {:?} until unix ms {}",
            lock.name, lock.holder, lock.expires_unix_ms
        ),
        field: None,
        held: Some(Box::new(LockHeldBy {
            holder: lock.holder.clone(),
            expires_unix_ms: lock.expires_unix_ms,
        })),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&ErrorBody {
            error: &self.message,
            code: self.code,
            field: self.field.as_deref(),
            held: self.held.as_deref(),
        })
        .expect("error body serialises");
        (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response()
    }
}
