//! hcpe's admin API through its router (`oneshot`, no socket, no namespace): every route refuses a missing or
//! wrong token and answers the right one; bad JSON, bad modes and malformed ids are 400, unknown uplinks and
//! connections 404; PATCH changes the live mode; DELETE cancels the connection; reload applies a mode change,
//! lists what needs a restart, and refuses an invalid file naming the field while the old config keeps
//! running; `/metrics` is valid Prometheus text; the OpenAPI document lists exactly the routed operations; no
//! secret leaks. (The live API on the testbed: `tests/tests/hcpe_admin.rs`.)

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{Method, StatusCode};
use common::admin::{BearerToken, openapi};
use common::convert::ErrorCode;
use hcpe::admin::{self, ApiState, LogLevelSetter, Reloader};
use hcpe::config::Config;
use hcpe::conn::{ConnCounters, Connections, Entry, Shared};
use hcpe::uplink::UplinkManager;
use serde_json::{Value, json};
use testkit::admin::{call, json_of};

const KEY_HEX: &str = "00112233445566778899aabbccddeeff";
const TOKEN: &str = "hcpe-admin-token-for-tests-0123456789";

fn yaml(lte_mode: &str, extra: &str) -> String {
    format!(
        "lan_interfaces: [lan0]\n\
         hag:\n  addresses: [198.51.100.1]\n  cpe_id: cpe-admin-test\n  key_file: cpe.key\n\
         uplinks:\n\
         \x20 - {{ name: dsl, interface: dsl0, ipv4: {{ address: 192.0.2.2, gateway: 192.0.2.1 }} }}\n\
         \x20 - {{ name: lte, interface: lte0, mode: {lte_mode}, ipv4: {{ address: 203.0.113.2, gateway: 203.0.113.1 }} }}\n\
         probe: {{ enabled: false }}\n\
         admin: {{ listen: ['127.0.0.1:15126'], token_file: admin.token }}\n\
         {extra}"
    )
}

/// A config directory (key, token, `hcpe.yaml`), a router over fixture state, and the fixture's handles.
struct Fixture {
    dir: tempfile::TempDir,
    router: Router,
    state: Arc<ApiState>,
    log_levels: Arc<Mutex<Vec<String>>>,
    _entries: Vec<Entry>,
    _manager: UplinkManager,
}

impl Fixture {
    fn path(&self) -> PathBuf {
        self.dir.path().join("hcpe.yaml")
    }

    fn write(&self, text: &str) {
        std::fs::write(self.path(), text).unwrap();
    }
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    testkit::write_secret(dir.path().join("cpe.key"), KEY_HEX).unwrap();
    testkit::write_secret(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let path = dir.path().join("hcpe.yaml");
    std::fs::write(&path, yaml("active", "")).unwrap();
    let config = Config::from_file(&path).unwrap();
    let manager = UplinkManager::start(&config.uplink_settings()).await.unwrap();

    let connections = Arc::new(Connections::default());
    // An MPTCP connection (token 0x1a2b3c4d) through dsl, and one carried directly.
    let a = connections.insert("192.168.1.10:40000".parse().unwrap(), "198.18.4.2:443".parse().unwrap());
    a.conn().token.set(Some(0x1a2b_3c4d)).unwrap();
    a.conn().uplink_initial.set("dsl".into()).unwrap();
    a.conn().counters.a_to_b.store(1000, Relaxed);
    a.conn().counters.b_to_a.store(50_000, Relaxed);
    let b = connections.insert("192.168.1.11:40001".parse().unwrap(), "198.18.4.3:80".parse().unwrap());
    b.conn().direct.set(()).unwrap();
    let counters = ConnCounters::default();
    counters.accepted.store(9, Relaxed);
    counters.converted.store(5, Relaxed);
    counters.fallback_direct.store(1, Relaxed);
    counters.refused_with(ErrorCode::NotAuthorized);
    counters.bytes_up.store(11, Relaxed);
    counters.bytes_down.store(22, Relaxed);
    let pool = Arc::new(hcpe::conn::pool::Pool::new(config.pool));
    let shared = Arc::new(Shared {
        config: config.clone(),
        counters,
        sources: None,
        connections,
        pool,
        nat: None,
        congestion_control: None,
    });

    let log_levels = Arc::new(Mutex::new(Vec::new()));
    let seen = log_levels.clone();
    let setter: LogLevelSetter = Arc::new(move |l: &str| {
        seen.lock().unwrap().push(l.to_owned());
        Ok(())
    });
    let reload = Reloader::new(Some(path), config.clone(), Some(setter));
    let state = Arc::new(ApiState::new(shared, Some(manager.control()), None, reload));
    let router = admin::router(state.clone(), BearerToken::new(TOKEN).unwrap());
    Fixture { dir, router, state, log_levels, _entries: vec![a, b], _manager: manager }
}

#[tokio::test]
async fn every_route_needs_the_token() {
    let f = fixture().await;
    let routes: [(Method, &str, Option<&str>, StatusCode); 11] = [
        (Method::GET, "/metrics", None, StatusCode::OK),
        (Method::GET, "/api/v1/status", None, StatusCode::OK),
        (Method::GET, "/api/v1/openapi.json", None, StatusCode::OK),
        (Method::GET, "/api/v1/uplinks", None, StatusCode::OK),
        (Method::GET, "/api/v1/uplinks/lte", None, StatusCode::OK),
        (Method::PATCH, "/api/v1/uplinks/lte", Some(r#"{"mode":"active"}"#), StatusCode::OK),
        (Method::GET, "/api/v1/connections", None, StatusCode::OK),
        (Method::GET, "/api/v1/connections/1a2b3c4d", None, StatusCode::OK),
        (Method::DELETE, "/api/v1/connections/tcp-1", None, StatusCode::NO_CONTENT),
        (Method::POST, "/api/v1/reload", None, StatusCode::OK),
        (Method::GET, "/api/v1/no-such-route", None, StatusCode::NOT_FOUND),
    ];
    for (m, uri, body, want) in &routes {
        for bad in [None, Some("wrong-token"), Some("")] {
            let (status, res) = call(&f.router, m.clone(), uri, bad, *body).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{m} {uri} with {bad:?}");
            assert_eq!(json_of(&res)["error"], "unauthorized");
        }
        let (status, res) = call(&f.router, m.clone(), uri, Some(TOKEN), *body).await;
        assert_eq!(status, *want, "{m} {uri}: {}", String::from_utf8_lossy(&res));
    }
    let (status, body) = call(&f.router, Method::GET, "/healthz", None, None).await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, b"ok".as_slice()));
    // The status page is public and holds no data.
    let (status, body) = call(&f.router, Method::GET, "/", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let page = String::from_utf8(body).unwrap();
    assert!(page.contains("<html") || page.contains("<!doctype") || page.contains("<!DOCTYPE"), "{page:.200}");
    assert!(!page.contains("198.18.4.2") && !page.contains("cpe-admin-test"), "the page embeds no data");
    // Refused requests are counted.
    let (_, body) = call(&f.router, Method::GET, "/metrics", Some(TOKEN), None).await;
    let fams = testkit::prometheus::parse(&String::from_utf8(body).unwrap()).unwrap();
    let refused = fams.iter().find(|f| f.name == "hcpe_admin_auth_failures_total").unwrap();
    assert_eq!(refused.value(&[]), Some((routes.len() * 3) as f64));
}

#[tokio::test]
async fn uplinks_show_mode_state_addresses_and_patch_changes_the_mode() {
    let f = fixture().await;
    let (status, body) = call(&f.router, Method::GET, "/api/v1/uplinks", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK);
    let v = json_of(&body);
    let names: Vec<&str> = v.as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["dsl", "lte"]);
    let dsl = &v[0];
    assert_eq!(dsl["interface"], "dsl0");
    assert_eq!(dsl["role"], "primary");
    assert_eq!(dsl["mode"], "active");
    assert_eq!(dsl["state"], "unknown", "not probed (probe.enabled: false)");
    assert_eq!(dsl["initial"], true);
    assert_eq!(dsl["addresses"], json!(["192.0.2.2"]));
    assert_eq!(dsl["rtt_ms"], Value::Null);
    assert_eq!(dsl["volume"], Value::Null, "no volume tracker in this fixture");
    assert_eq!(v[1]["role"], "secondary");

    let (status, body) =
        call(&f.router, Method::PATCH, "/api/v1/uplinks/lte", Some(TOKEN), Some(r#"{"mode":"backup"}"#)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json_of(&body)["mode"], "backup");
    assert_eq!(json_of(&body)["name"], "lte");
    let (_, body) = call(&f.router, Method::GET, "/api/v1/uplinks/lte", Some(TOKEN), None).await;
    assert_eq!(json_of(&body)["mode"], "backup", "the change is live");
    let changes = f.state.uplinks.as_ref().unwrap().mode_changes();
    assert!(changes.iter().any(|(r, n)| r.as_str() == "admin" && *n == 1), "{changes:?}");

    // Bad bodies: 400 with a JSON error; nothing changes.
    for bad in [r#"{"mode":"fast"}"#, r#"{"mode":"active""#, r#"{"mode":1}"#, r#"{}"#, r#"{"mode":"off","x":1}"#, ""] {
        let (status, body) = call(&f.router, Method::PATCH, "/api/v1/uplinks/lte", Some(TOKEN), Some(bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}: {}", String::from_utf8_lossy(&body));
        assert!(json_of(&body)["error"].is_string());
    }
    let (_, body) = call(&f.router, Method::GET, "/api/v1/uplinks/lte", Some(TOKEN), None).await;
    assert_eq!(json_of(&body)["mode"], "backup");

    // Unknown uplinks: 404, for reads and changes.
    for m in [Method::GET, Method::PATCH] {
        let (status, body) =
            call(&f.router, m.clone(), "/api/v1/uplinks/wifi", Some(TOKEN), Some(r#"{"mode":"backup"}"#)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{m}");
        assert!(json_of(&body)["error"].as_str().unwrap().contains("wifi"));
    }
    // Every uplink off: refused.
    let (status, _) =
        call(&f.router, Method::PATCH, "/api/v1/uplinks/lte", Some(TOKEN), Some(r#"{"mode":"off"}"#)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) =
        call(&f.router, Method::PATCH, "/api/v1/uplinks/dsl", Some(TOKEN), Some(r#"{"mode":"off"}"#)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test]
async fn connections_are_listed_looked_up_and_closed() {
    let f = fixture().await;
    let (status, body) = call(&f.router, Method::GET, "/api/v1/connections", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK);
    let list = json_of(&body);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let a = &list[0];
    assert_eq!(a["id"], "1a2b3c4d");
    assert_eq!(a["token"], 0x1a2b_3c4d);
    assert_eq!(a["client"], "192.168.1.10:40000");
    assert_eq!(a["destination"], "198.18.4.2:443");
    assert_eq!(a["uplink_initial"], "dsl");
    assert_eq!(a["fallback"], false);
    assert_eq!((a["bytes_up"].as_u64(), a["bytes_down"].as_u64()), (Some(1000), Some(50_000)));
    assert_eq!(a["subflows"], json!([]), "no socket behind the fixture");
    let b = &list[1];
    assert_eq!((b["fallback"].clone(), b["direct"].clone()), (json!(true), json!(true)));
    assert_eq!(b["id"], "tcp-1");
    assert_eq!(b["uplink_initial"], Value::Null);

    for id in ["1a2b3c4d", "0x1A2B3C4D"] {
        let (status, body) =
            call(&f.router, Method::GET, &format!("/api/v1/connections/{id}"), Some(TOKEN), None).await;
        assert_eq!(status, StatusCode::OK, "{id}");
        assert_eq!(json_of(&body)["client"], "192.168.1.10:40000");
    }
    for unknown in ["deadbeef", "tcp-999", "tcp-0"] {
        for m in [Method::GET, Method::DELETE] {
            let (status, body) =
                call(&f.router, m.clone(), &format!("/api/v1/connections/{unknown}"), Some(TOKEN), None).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{m} {unknown}: tcp-0 has a token, so it is named by it");
            assert!(json_of(&body)["error"].as_str().unwrap().contains("no connection"));
        }
    }
    for malformed in ["xyz", "123456789", "tcp-x", "1a2b%203c"] {
        let (status, body) =
            call(&f.router, Method::GET, &format!("/api/v1/connections/{malformed}"), Some(TOKEN), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{malformed}");
        assert!(json_of(&body)["error"].is_string());
    }

    let conns = f.state.conns.connections.snapshot();
    let (status, body) = call(&f.router, Method::DELETE, "/api/v1/connections/1a2b3c4d", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(body.is_empty());
    assert!(conns[0].close.is_cancelled(), "the connection task's close token is cancelled");
    assert!(!conns[1].close.is_cancelled(), "only that one");
}

#[tokio::test]
async fn reload_applies_modes_and_log_level_and_lists_restart_fields() {
    let f = fixture().await;
    f.write(&yaml("backup", "log_level: hcpe=trace\nlimits: { idle_timeout: 30s }\n"));
    let (status, body) = call(&f.router, Method::POST, "/api/v1/reload", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let r = json_of(&body);
    assert_eq!(r["reloaded"], true);
    let set = |k: &str| {
        let mut v: Vec<String> = r[k].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect();
        v.sort();
        v
    };
    assert_eq!(set("changed"), ["limits", "log_level", "uplinks[1].mode"]);
    assert_eq!(set("applied"), ["log_level", "uplinks[1].mode"]);
    assert_eq!(set("restart_required"), ["limits"]);
    assert_eq!(*f.log_levels.lock().unwrap(), ["hcpe=trace"]);
    let (_, body) = call(&f.router, Method::GET, "/api/v1/uplinks/lte", Some(TOKEN), None).await;
    assert_eq!(json_of(&body)["mode"], "backup");
    let changes = f.state.uplinks.as_ref().unwrap().mode_changes();
    assert!(changes.iter().any(|(r, n)| r.as_str() == "reload" && *n == 1), "{changes:?}");

    // The same file again: the mode and log level are in force now; limits still need a restart.
    let (_, body) = call(&f.router, Method::POST, "/api/v1/reload", Some(TOKEN), None).await;
    assert_eq!(json_of(&body)["changed"], json!(["limits"]));

    // An operator's PATCH survives a reload that does not touch that uplink's mode.
    call(&f.router, Method::PATCH, "/api/v1/uplinks/dsl", Some(TOKEN), Some(r#"{"mode":"backup"}"#)).await;
    call(&f.router, Method::POST, "/api/v1/reload", Some(TOKEN), None).await;
    let (_, body) = call(&f.router, Method::GET, "/api/v1/uplinks/dsl", Some(TOKEN), None).await;
    assert_eq!(json_of(&body)["mode"], "backup");
}

#[tokio::test]
async fn reload_resizes_the_pool_of_ready_connections_at_once() {
    let f = fixture().await;
    assert_eq!(f.state.conns.pool.status().target, 4, "the default pool");
    f.write(&yaml("active", "").replace("key_file: cpe.key\n", "key_file: cpe.key\n  pool: { min: 2, max: 8 }\n"));
    let (status, body) = call(&f.router, Method::POST, "/api/v1/reload", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let r = json_of(&body);
    assert_eq!((&r["changed"], &r["applied"]), (&json!(["hag.pool"]), &json!(["hag.pool"])), "{r:#}");
    let pool = f.state.conns.pool.status();
    assert_eq!(
        (pool.settings.min, pool.settings.max, pool.target),
        (2, 8, 4),
        "the target stays inside the new bounds"
    );
    // max: 0 turns it off.
    f.write(&yaml("active", "").replace("key_file: cpe.key\n", "key_file: cpe.key\n  pool: { min: 0, max: 0 }\n"));
    call(&f.router, Method::POST, "/api/v1/reload", Some(TOKEN), None).await;
    assert_eq!(f.state.conns.pool.status().target, 0);
}

#[tokio::test]
async fn an_invalid_reload_is_refused_naming_the_field_and_changes_nothing() {
    let f = fixture().await;
    for (text, field) in [
        (yaml("sometimes", ""), "uplinks[1].mode"),
        (yaml("backup", "limits: { idle_timeout: forever }\n"), "limits.idle_timeout"),
        (yaml("backup", "colour: red\n"), "colour"),
        (yaml("backup", "").replace("key_file: cpe.key", "key_file: gone.key"), "hag.key_file"),
    ] {
        f.write(&text);
        let (status, body) = call(&f.router, Method::POST, "/api/v1/reload", Some(TOKEN), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {}", String::from_utf8_lossy(&body));
        let msg = json_of(&body)["error"].as_str().unwrap().to_owned();
        assert!(msg.starts_with(&format!("{field}: ")), "{msg}");
        assert!(!msg.contains(&*f.dir.path().to_string_lossy()), "no server-side path in the error: {msg}");
        let (_, body) = call(&f.router, Method::GET, "/api/v1/uplinks/lte", Some(TOKEN), None).await;
        assert_eq!(json_of(&body)["mode"], "active", "the old config keeps running");
    }
    assert!(f.log_levels.lock().unwrap().is_empty());
    std::fs::remove_file(f.path()).unwrap();
    let (status, _) = call(&f.router, Method::POST, "/api/v1/reload", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn status_summarises_the_config_without_secrets() {
    let f = fixture().await;
    let (status, body) = call(&f.router, Method::GET, "/api/v1/status", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK);
    let v = json_of(&body);
    assert_eq!(v["daemon"], "hcpe");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["uptime_seconds"].is_u64());
    assert_eq!(v["cpe_id"], "cpe-admin-test");
    assert_eq!(v["hag_addresses"], json!(["198.51.100.1:5124"]));
    assert_eq!(v["uplinks"][1]["name"], "lte");
    assert_eq!(v["admin_listen"], json!(["127.0.0.1:15126"]));
    assert_eq!((&v["zero_rtt"], &v["fastopen"]), (&json!("pool"), &json!(false)), "ready connections by default");
    assert_eq!(v["pool"], json!({"min": 4, "max": 32, "max_age_seconds": 60.0}));
    let text = String::from_utf8(body).unwrap();
    for secret in [TOKEN, KEY_HEX, "cpe.key", "admin.token", &*f.dir.path().to_string_lossy()] {
        assert!(!text.contains(secret), "status shows {secret:?}: {text}");
    }
}

#[tokio::test]
async fn metrics_are_valid_prometheus_text_with_the_hcpe_families() {
    let f = fixture().await;
    call(&f.router, Method::PATCH, "/api/v1/uplinks/lte", Some(TOKEN), Some(r#"{"mode":"backup"}"#)).await;
    let (status, body) = call(&f.router, Method::GET, "/metrics", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    let families = testkit::prometheus::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let fam = |name: &str| families.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("no {name} in\n{text}"));
    assert_eq!(fam("hcpe_connections_open").value(&[]), Some(2.0));
    assert_eq!(fam("hcpe_connections_accepted_total").value(&[]), Some(9.0));
    assert_eq!(fam("hcpe_connections_total").value(&[("via", "direct")]), Some(1.0));
    assert_eq!(fam("hcpe_connections_failed_total").value(&[("reason", "refused")]), Some(1.0));
    assert_eq!(
        fam("hcpe_convert_errors_received_total").value(&[("code", "32"), ("name", "not_authorized")]),
        Some(1.0)
    );
    assert_eq!(fam("hcpe_bytes_total").value(&[("direction", "down")]), Some(22.0));
    assert_eq!(fam("hcpe_open_connection_bytes").value(&[("direction", "down")]), Some(50_000.0));
    assert_eq!(fam("hcpe_uplink_mode").value(&[("uplink", "lte"), ("mode", "backup")]), Some(1.0));
    assert_eq!(fam("hcpe_uplink_mode").value(&[("uplink", "lte"), ("mode", "active")]), Some(0.0));
    assert_eq!(fam("hcpe_uplink_state").value(&[("uplink", "dsl"), ("state", "unknown")]), Some(1.0));
    assert_eq!(fam("hcpe_uplink_initial").value(&[("uplink", "dsl")]), Some(1.0));
    assert_eq!(fam("hcpe_uplink_mode_changes_total").value(&[("reason", "admin")]), Some(1.0));
    assert_eq!(fam("hcpe_connections_open").kind, "gauge");
    assert_eq!(fam("hcpe_bytes_total").kind, "counter");
    assert!(fam("hcpe_hag_exchange_failures_total").samples.len() >= 5);
}

#[tokio::test]
async fn openapi_document_is_true() {
    let f = fixture().await;
    let (status, body) = call(&f.router, Method::GET, openapi::PATH, Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK);
    let doc = json_of(&body);
    assert_eq!(doc, serde_json::to_value(hcpe::admin::openapi()).unwrap(), "served = generated from the routes");
    let ops: Vec<String> = testkit::admin::operations(&doc).into_iter().map(|(m, p)| format!("{m} {p}")).collect();
    assert_eq!(
        ops,
        [
            "GET /",
            "GET /api/v1/connections",
            "DELETE /api/v1/connections/{id}",
            "GET /api/v1/connections/{id}",
            "GET /api/v1/openapi.json",
            "POST /api/v1/reload",
            "GET /api/v1/status",
            "GET /api/v1/uplinks",
            "GET /api/v1/uplinks/{name}",
            "PATCH /api/v1/uplinks/{name}",
            "GET /healthz",
            "GET /metrics",
        ],
        "every route of the router, each once"
    );
    // A valid id that names nothing: every documented operation must be routed (a handler's 404 counts).
    let missing = testkit::admin::missing_operations(&f.router, &doc, TOKEN, "00000000").await;
    assert!(missing.is_empty(), "documented but not routed: {missing:?}");
    for schema in ["Uplink", "UplinkPatch", "Connection", "Subflow", "Reload", "Error"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
    // And the other way round: each route of the API router is documented (by probing undocumented
    // neighbours: a method the document does not list must be 405).
    let (status, _) = call(&f.router, Method::POST, "/api/v1/uplinks", Some(TOKEN), Some("{}")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}
