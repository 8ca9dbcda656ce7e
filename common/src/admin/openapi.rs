//! The OpenAPI 3 document of the admin API: the part [`AdminApp`](super::AdminApp) serves itself (shared routes,
//! bearer security, the error shape), merged with the daemon's own paths.
//!
//! Invariant: every operation in the document is routed (not the JSON 404 fallback, not 405), which
//! `testkit::admin::missing_operations` checks in the tests of each daemon.

use serde_json::{Value, json};

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
        let paths: Vec<_> = doc["paths"].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(paths, ["/api/v1/clients", "/api/v1/openapi.json", "/api/v1/status", "/healthz", "/metrics"]);
        assert!(doc["components"]["schemas"]["Error"].is_object());
        assert!(doc["components"]["schemas"]["Client"].is_object());
        assert_eq!(doc["info"]["title"], "hag admin API");
    }
}
