//! The admin API's error shape: every error response is JSON `{"error": "..."}` with a fitting status.
//!
//! Owns [`ApiError`] (what handlers return), extractors whose rejections use that shape ([`ApiJson`],
//! [`ApiPath`]), and the outermost layer ([`json_errors`]) that rewrites any other error response (axum's
//! 404/405 and extractor rejections, tower-http's 413 and 408) into it.
//!
//! Invariant: an error message is written for the client; it never holds a secret (token, key) or a server-side
//! path the client did not send. Internal details go to the log through [`ApiError::internal`].

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// An error answer of the admin API: `status` with body `{"error": message}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// HTTP status of the response.
    pub status: StatusCode,
    /// Human-readable reason, for the client (no secrets).
    pub message: String,
}

impl ApiError {
    /// An error with any status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }

    /// 400: the request is wrong (bad JSON, a field that fails validation: name the field in `message`).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404: no such resource (`message` names what was looked up, e.g. `no uplink "lte2"`).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// 401 `unauthorized` (the response also carries `WWW-Authenticate: Bearer`).
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized")
    }

    /// 500 with a generic message; `detail` goes to the log only, since it may name server internals.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "admin API: internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = super::openapi::ErrorBody { error: self.message };
        let mut res = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

impl From<JsonRejection> for ApiError {
    /// Malformed JSON, JSON of the wrong shape and a missing `Content-Type: application/json` are all the
    /// client's request being wrong: 400. Other rejections keep their status (413 when the body limit was hit
    /// while reading).
    fn from(r: JsonRejection) -> Self {
        let status = match r {
            JsonRejection::JsonDataError(_)
            | JsonRejection::JsonSyntaxError(_)
            | JsonRejection::MissingJsonContentType(_) => StatusCode::BAD_REQUEST,
            _ => r.status(),
        };
        ApiError::new(status, r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    /// A path parameter of the wrong form (e.g. a connection id that is not a number): 400.
    fn from(r: PathRejection) -> Self {
        let status = if r.status().is_client_error() { StatusCode::BAD_REQUEST } else { r.status() };
        ApiError::new(status, r.body_text())
    }
}

/// `axum::Json` whose rejection is an [`ApiError`] (400 JSON for malformed bodies). As a response it is plain
/// JSON. Use it for request bodies: `async fn patch(ApiJson(req): ApiJson<PatchUplink>)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let Json(v) = Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(v))
    }
}

impl<T: serde::Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}

/// `axum::extract::Path` whose rejection is an [`ApiError`] (400 JSON).
#[derive(Debug, Clone, Copy)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(v) = axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(ApiPath(v))
    }
}

/// Message of the 404 for unknown routes (distinguishes it from a handler's "no such resource" 404).
pub const NO_SUCH_ROUTE: &str = "no such route";

/// Handler for unknown routes: 404 JSON.
pub async fn not_found() -> ApiError {
    ApiError::not_found(NO_SUCH_ROUTE)
}

/// What [`json_errors`] needs to word the errors that tower-http layers produce.
#[derive(Debug, Clone, Copy)]
pub struct ErrorContext {
    /// The request body limit in bytes.
    pub max_body: usize,
    /// The request timeout.
    pub timeout: Duration,
}

/// Longest non-JSON error body reused as the message; longer ones are replaced by the status' reason.
const MAX_REUSED_BODY: usize = 512;

/// Response mapper (for `axum::middleware::map_response_with_state`): turns any 4xx/5xx response that is not
/// JSON already into `{"error": ...}`, keeping the status and the other headers.
///
/// 413 and 408 get messages naming the limit; other bodies (axum's rejection texts) are kept as the message when
/// they are short UTF-8 text, else the status' canonical reason is used.
pub async fn json_errors(State(ctx): State<ErrorContext>, res: Response) -> Response {
    let status = res.status();
    let is_json = res
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => format!("request body larger than {} bytes", ctx.max_body),
        StatusCode::REQUEST_TIMEOUT => {
            format!("request not handled within {}", humantime::format_duration(ctx.timeout))
        }
        _ => match axum::body::to_bytes(body, MAX_REUSED_BODY).await {
            Ok(b) if !b.is_empty() => match String::from_utf8(b.to_vec()) {
                Ok(text) => text.trim().to_owned(),
                Err(_) => canonical(status),
            },
            _ => canonical(status),
        },
    };
    parts.headers.remove(CONTENT_TYPE);
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let mut out = ApiError::new(status, message).into_response();
    for (name, value) in parts.headers.iter() {
        if !out.headers().contains_key(name) {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

fn canonical(status: StatusCode) -> String {
    status.canonical_reason().map(str::to_lowercase).unwrap_or_else(|| status.as_str().to_owned())
}
