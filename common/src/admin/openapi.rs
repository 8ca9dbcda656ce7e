//! The OpenAPI 3 document of the admin API: the part [`AdminApp`](super::AdminApp) serves itself (shared routes,
//! bearer security, the error shape), merged with the daemon's own paths, and a check that keeps it true.
//!
//! Invariant: every operation in the document is routed (not the JSON 404 fallback, not 405), which
//! [`missing_operations`] checks and the tests of this module and of each daemon assert.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt as _;

/// Path the document is served at.
pub const PATH: &str = "/api/v1/openapi.json";

/// The document for the routes [`AdminApp`](super::AdminApp) adds, for a daemon and version. Daemons reference
/// `#/components/responses/{BadRequest,Unauthorized,NotFound}` and `#/components/schemas/Error` from their own
/// operations.
pub fn base(daemon: &str, version: &str) -> Value {
    let err = |d: &str| {
        json!({ "description": d, "content": { "application/json": {
        "schema": { "$ref": "#/components/schemas/Error" } } } })
    };
    json!({
        "openapi": "3.0.3",
        "info": { "title": format!("{daemon} admin API"), "version": version },
        "security": [ { "bearer": [] } ],
        "paths": {
            "/healthz": { "get": {
                "summary": "Liveness; needs no token.",
                "security": [],
                "responses": { "200": { "description": "The daemon is running.",
                    "content": { "text/plain": { "schema": { "type": "string", "enum": ["ok"] } } } } }
            } },
            "/metrics": { "get": {
                "summary": "Prometheus text exposition (format 0.0.4).",
                "responses": {
                    "200": { "description": "Metrics.", "content": { "text/plain": { "schema": { "type": "string" } } } },
                    "401": { "$ref": "#/components/responses/Unauthorized" }
                }
            } },
            "/api/v1/status": { "get": {
                "summary": "Daemon identity, uptime and a config summary (no secrets).",
                "responses": {
                    "200": { "description": "Status.", "content": { "application/json": {
                        "schema": { "$ref": "#/components/schemas/Status" } } } },
                    "401": { "$ref": "#/components/responses/Unauthorized" }
                }
            } },
            PATH: { "get": {
                "summary": "This document.",
                "responses": {
                    "200": { "description": "OpenAPI 3 document.", "content": { "application/json": {
                        "schema": { "type": "object" } } } },
                    "401": { "$ref": "#/components/responses/Unauthorized" }
                }
            } }
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "additionalProperties": false,
                    "properties": { "error": { "type": "string" } } },
                "Status": { "type": "object", "required": ["daemon", "version", "uptime_seconds", "started_unix"],
                    "additionalProperties": true,
                    "properties": {
                        "daemon": { "type": "string" },
                        "version": { "type": "string" },
                        "uptime_seconds": { "type": "integer", "minimum": 0 },
                        "started_unix": { "type": "integer", "minimum": 0 }
                    } }
            },
            "responses": {
                "BadRequest": err("Malformed request (bad JSON, a field that fails validation)."),
                "Unauthorized": err("Missing or wrong bearer token."),
                "NotFound": err("No such route or resource."),
                "PayloadTooLarge": err("Request body over the configured limit."),
                "RequestTimeout": err("Request not handled within the configured timeout.")
            }
        }
    })
}

/// Merges `extra` into `doc`: objects are merged key by key (recursively), anything else in `extra` replaces.
pub fn merge(doc: &mut Value, extra: Value) {
    match (doc, extra) {
        (Value::Object(d), Value::Object(e)) => {
            for (k, v) in e {
                match d.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        d.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
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
            && serde_json::from_slice::<Value>(&body).is_ok_and(|v| v["error"] == super::error::NO_SUCH_ROUTE);
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
    fn merge_adds_paths_and_keeps_base() {
        let mut doc = base("hag", "1.0");
        merge(
            &mut doc,
            json!({ "paths": { "/api/v1/clients": { "get": { "responses": {} } } },
                    "components": { "schemas": { "Client": { "type": "object" } } } }),
        );
        let ops: Vec<_> = operations(&doc).into_iter().map(|(m, p)| format!("{m} {p}")).collect();
        assert_eq!(
            ops,
            ["GET /api/v1/clients", "GET /api/v1/openapi.json", "GET /api/v1/status", "GET /healthz", "GET /metrics"]
        );
        assert!(doc["components"]["schemas"]["Error"].is_object());
        assert!(doc["components"]["schemas"]["Client"].is_object());
        assert_eq!(doc["info"]["title"], "hag admin API");
    }

    #[test]
    fn params_are_filled() {
        assert_eq!(fill_params("/api/v1/uplinks/{name}", "x"), "/api/v1/uplinks/x");
        assert_eq!(fill_params("/a/{b}/c/{d}", "0"), "/a/0/c/0");
        assert_eq!(fill_params("/plain", "0"), "/plain");
    }
}
