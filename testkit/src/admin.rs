//! Requests through an admin router with `tower::ServiceExt::oneshot` (no socket), and the check that keeps an
//! OpenAPI document true: every operation it lists is routed.

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

const METHODS: [&str; 7] = ["get", "put", "post", "delete", "options", "head", "patch"];

/// Every (method, path template) in `doc`, e.g. `("PATCH", "/api/v1/uplinks/{name}")`, sorted.
pub fn operations(doc: &Value) -> Vec<(Method, String)> {
    let mut ops = Vec::new();
    if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
        for (path, item) in paths {
            for m in METHODS {
                if item.get(m).is_some() {
                    ops.push((
                        Method::from_bytes(m.to_ascii_uppercase().as_bytes()).expect("known method"),
                        path.clone(),
                    ));
                }
            }
        }
    }
    ops.sort_by(|a, b| (&a.1, a.0.as_str()).cmp(&(&b.1, b.0.as_str())));
    ops
}

/// Sends each documented operation to `router` (with `token`, path parameters replaced by `param`, and a `{}`
/// JSON body) and returns those that are not routed: the JSON 404 fallback or 405. For tests.
///
/// The requests really run: use it on a router whose state is a test fixture, and pick `param` so it names
/// nothing that exists (a 404 "no connection ..." from the handler counts as routed).
pub async fn missing_operations(router: &Router, doc: &Value, token: &str, param: &str) -> Vec<String> {
    let mut missing = Vec::new();
    for (method, template) in operations(doc) {
        let uri = fill_params(&template, param);
        let req = Request::builder()
            .method(method.clone())
            .uri(&uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{}"))
            .expect("valid request");
        let res = router.clone().oneshot(req).await.expect("router is infallible");
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap_or_default();
        let fallback = status == StatusCode::NOT_FOUND
            && serde_json::from_slice::<Value>(&body).is_ok_and(|v| v["error"] == common::admin::error::NO_SUCH_ROUTE);
        if fallback || status == StatusCode::METHOD_NOT_ALLOWED || status == StatusCode::UNAUTHORIZED {
            missing.push(format!("{method} {template} ({uri} answered {status})"));
        }
    }
    missing
}

fn fill_params(template: &str, param: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        match rest[open..].find('}') {
            Some(close) => {
                out.push_str(param);
                rest = &rest[open + close + 1..];
            }
            None => {
                rest = &rest[open..];
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_filled() {
        assert_eq!(fill_params("/api/v1/uplinks/{name}", "x"), "/api/v1/uplinks/x");
        assert_eq!(fill_params("/a/{b}/c/{d}", "0"), "/a/0/c/0");
        assert_eq!(fill_params("/plain", "0"), "/plain");
    }
}
