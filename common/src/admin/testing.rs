//! Router-test helpers for the daemons' admin API tests: one request through a router with
//! `tower::ServiceExt::oneshot` (no socket), and its JSON body. Test support only; the daemons do not call it.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::Value;
use tower::ServiceExt as _;

/// Sends `method uri` to `router`, with `Authorization: Bearer <token>` when given and `body` as JSON when
/// given; the status and the body (up to 1 MiB). Panics when the router fails (it never should: errors are
/// responses).
pub async fn call(
    router: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req.body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned()))).expect("request");
    let res = router.clone().oneshot(req).await.expect("router");
    let status = res.status();
    let body = axum::body::to_bytes(res.into_body(), 1 << 20).await.expect("body");
    (status, body.to_vec())
}

/// `body` as JSON; panics naming the body when it is not.
pub fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}
