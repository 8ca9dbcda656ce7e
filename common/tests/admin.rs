//! Router tests through `tower::ServiceExt::oneshot` (no socket), plus one loopback test of bind/serve.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use axum::routing::{get, post};
use common::admin::*;
use common::config as cfg;
use testkit::admin::missing_operations;
use tower::ServiceExt as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

struct TestMetrics;

impl Metrics for TestMetrics {
    fn write_metrics(&self, out: &mut MetricsWriter) {
        out.family("uplink_tx_bytes_total", "Bytes sent per uplink.", MetricType::Counter)
            .sample(&[("uplink", "dsl")], 1234u64)
            .sample(&[("uplink", "lte \"backup\"")], 5u64);
        out.gauge("connections_open", "Connections open now.", 2u32);
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchReq {
    mode: String,
}

fn api() -> OpenApiRouter {
    Router::new()
        .route(
            "/api/v1/uplinks/{name}",
            axum::routing::patch(|ApiPath(name): ApiPath<String>, ApiJson(req): ApiJson<PatchReq>| async move {
                if name != "dsl" {
                    return Err(ApiError::not_found(format!("no uplink {name:?}")));
                }
                Ok(ApiJson(serde_json::json!({ "name": name, "mode": req.mode })))
            }),
        )
        .route(
            "/api/v1/connections/{id}",
            get(|ApiPath(id): ApiPath<u64>| async move {
                if id == 7 { Ok("seven") } else { Err(ApiError::not_found(format!("no connection {id}"))) }
            }),
        )
        .route("/api/v1/echo", post(|body: String| async move { body }))
        .route("/api/v1/slow", get(|| async { tokio::time::sleep(Duration::from_secs(3600)).await }))
        .into()
}

fn app() -> Router {
    AdminApp::new(ProcessInfo::new("hcpe", "1.2.3"), BearerToken::new(TOKEN).unwrap(), Arc::new(TestMetrics))
        .status_detail(|| serde_json::json!({ "uplinks": 2 }))
        .router(api())
}

fn req(method: Method, uri: &str, token: Option<&str>, body: Body) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(body).unwrap()
}

fn json_req(method: Method, uri: &str, body: &str) -> Request<Body> {
    let mut r = req(method, uri, Some(TOKEN), Body::from(body.to_owned()));
    r.headers_mut().insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    r
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Answer {
    /// The `error` member of a JSON error body (asserting the body is exactly `{"error": "..."}`).
    fn error(&self) -> String {
        let ct = self.headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(ct.as_deref(), Some("application/json"), "status {} body {}", self.status, self.body);
        let v: serde_json::Value = serde_json::from_str(&self.body).unwrap();
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 1, "{}", self.body);
        obj["error"].as_str().unwrap().to_owned()
    }
}

async fn send_to(app: Router, r: Request<Body>) -> Answer {
    let res = app.oneshot(r).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    Answer { status, headers, body: String::from_utf8(body.to_vec()).unwrap() }
}

async fn send(r: Request<Body>) -> Answer {
    send_to(app(), r).await
}

#[tokio::test]
async fn healthz_needs_no_token() {
    let a = send(req(Method::GET, "/healthz", None, Body::empty())).await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "ok"));
}

#[tokio::test]
async fn every_other_route_needs_the_right_token() {
    let routes = [
        (Method::GET, "/metrics"),
        (Method::GET, "/api/v1/status"),
        (Method::GET, "/api/v1/connections/7"),
        (Method::POST, "/api/v1/echo"),
        (Method::GET, "/api/v1/no-such-route"),
        (Method::GET, "/"),
    ];
    for (m, uri) in routes {
        for token in [None, Some("wrong"), Some(&TOKEN[1..]), Some("0123456789abcdef0123456789abcdeF")] {
            let a = send(req(m.clone(), uri, token, Body::empty())).await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{m} {uri} {token:?}");
            assert_eq!(a.error(), "unauthorized");
            assert_eq!(a.headers.get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");
            assert!(!a.body.contains(TOKEN) && !a.body.contains("wrong"), "{}", a.body);
        }
    }
    for (m, uri) in [(Method::GET, "/metrics"), (Method::GET, "/api/v1/status"), (Method::GET, "/api/v1/connections/7")]
    {
        let a = send(req(m.clone(), uri, Some(TOKEN), Body::empty())).await;
        assert_eq!(a.status, StatusCode::OK, "{m} {uri}: {}", a.body);
    }
}

#[tokio::test]
async fn status_has_identity_uptime_and_detail() {
    let a = send(req(Method::GET, "/api/v1/status", Some(TOKEN), Body::empty())).await;
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(v["daemon"], "hcpe");
    assert_eq!(v["version"], "1.2.3");
    assert!(v["uptime_seconds"].is_u64(), "{v}");
    assert!(v["started_unix"].as_u64().unwrap() > 1_600_000_000, "{v}");
    assert_eq!(v["uplinks"], 2);
}

#[tokio::test]
async fn malformed_or_mistyped_json_is_400_json() {
    for body in ["{\"mode\": ", "not json", "{\"mode\": 5}", "{\"mode\": \"backup\", \"extra\": 1}", ""] {
        let a = send(json_req(Method::PATCH, "/api/v1/uplinks/dsl", body)).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body:?}: {}", a.body);
        assert!(!a.error().is_empty());
    }
    // Right JSON, wrong content type.
    let a = send(req(Method::PATCH, "/api/v1/uplinks/dsl", Some(TOKEN), Body::from("{\"mode\":\"backup\"}"))).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().contains("Content-Type"), "{}", a.body);
    // And the well-formed request works.
    let a = send(json_req(Method::PATCH, "/api/v1/uplinks/dsl", "{\"mode\":\"backup\"}")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&a.body).unwrap()["mode"], "backup");
}

#[tokio::test]
async fn unknown_route_resource_and_method_are_json_errors() {
    let a = send(req(Method::GET, "/api/v1/nothing", Some(TOKEN), Body::empty())).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.error(), "no such route");

    let a = send(json_req(Method::PATCH, "/api/v1/uplinks/lte9", "{\"mode\":\"backup\"}")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.error(), "no uplink \"lte9\"");

    let a = send(req(Method::GET, "/api/v1/connections/8", Some(TOKEN), Body::empty())).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.error(), "no connection 8");

    let a = send(req(Method::GET, "/api/v1/connections/abc", Some(TOKEN), Body::empty())).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().contains("parse"), "{}", a.body);

    let a = send(req(Method::DELETE, "/metrics", Some(TOKEN), Body::empty())).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.error(), "method not allowed");
    assert!(a.headers.contains_key(header::ALLOW), "{:?}", a.headers);
}

#[tokio::test]
async fn oversize_body_is_413_json_with_or_without_content_length() {
    let big = "x".repeat(DEFAULT_MAX_BODY + 1);
    let mut r = req(Method::POST, "/api/v1/echo", Some(TOKEN), Body::from(big.clone()));
    r.headers_mut().insert(header::CONTENT_LENGTH, big.len().into());
    let a = send(r).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.error(), format!("request body larger than {DEFAULT_MAX_BODY} bytes"));

    // Streamed (chunked) body: the limit hits while the handler reads it.
    let chunks = big.into_bytes().chunks(1000).map(|c| Ok::<_, io::Error>(c.to_vec())).collect::<Vec<_>>();
    let r = req(Method::POST, "/api/v1/echo", Some(TOKEN), Body::from_stream(futures::stream::iter(chunks)));
    let a = send(r).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.body);
    a.error();

    // Also through the JSON extractor.
    let mut r = json_req(Method::PATCH, "/api/v1/uplinks/dsl", &format!("{{\"mode\":\"{}\"}}", "b".repeat(70_000)));
    r.headers_mut().remove(header::CONTENT_LENGTH);
    let a = send(r).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.body);

    // Just under the limit passes.
    let ok = "y".repeat(DEFAULT_MAX_BODY);
    let a = send(req(Method::POST, "/api/v1/echo", Some(TOKEN), Body::from(ok.clone()))).await;
    assert_eq!((a.status, a.body.len()), (StatusCode::OK, ok.len()));
}

#[tokio::test(start_paused = true)]
async fn slow_request_is_408_json() {
    let a = send(req(Method::GET, "/api/v1/slow", Some(TOKEN), Body::empty())).await;
    assert_eq!(a.status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(a.error(), "request not handled within 10s");
}

#[tokio::test]
async fn limits_come_from_config() {
    let mut cfg = AdminConfig::<9124>::with_token_file("t");
    cfg.max_body_bytes = 10;
    let app = AdminApp::new(ProcessInfo::new("hag", "0"), BearerToken::new(TOKEN).unwrap(), Arc::new(()))
        .limits(&cfg)
        .router(api());
    let a = send_to(app, req(Method::POST, "/api/v1/echo", Some(TOKEN), Body::from("01234567890"))).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.error(), "request body larger than 10 bytes");
}

#[tokio::test]
async fn metrics_are_valid_prometheus_text_with_process_and_daemon_families() {
    let app = app();
    // Two refused requests, counted in the auth failure counter.
    for _ in 0..2 {
        let a = send_to(app.clone(), req(Method::GET, "/metrics", Some("nope"), Body::empty())).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
    let a = send_to(app, req(Method::GET, "/metrics", Some(TOKEN), Body::empty())).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers.get(header::CONTENT_TYPE).unwrap(), metrics::CONTENT_TYPE);
    let fams = testkit::prometheus::parse(&a.body).unwrap_or_else(|e| panic!("{e}\n{}", a.body));
    let fam = |name: &str| fams.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("{name} in {}", a.body));
    assert_eq!(fam("hcpe_build_info").value(&[("version", "1.2.3")]), Some(1.0));
    assert_eq!(fam("hcpe_uptime_seconds").kind, "gauge");
    assert_eq!(fam("hcpe_admin_auth_failures_total").value(&[]), Some(2.0));
    assert_eq!(fam("hcpe_admin_auth_failures_total").kind, "counter");
    let tx = fam("hcpe_uplink_tx_bytes_total");
    assert_eq!(tx.value(&[("uplink", "dsl")]), Some(1234.0));
    assert_eq!(tx.value(&[("uplink", "lte \"backup\"")]), Some(5.0));
    assert_eq!(fam("hcpe_connections_open").value(&[]), Some(2.0));
    assert!(!a.body.contains(TOKEN));
}

#[test]
fn config_defaults_bare_addresses_and_unknown_fields() {
    type Cfg = AdminConfig<9124>;
    let c: Cfg = cfg::from_yaml_str("token_file: admin.token\n").unwrap();
    assert_eq!(c, Cfg::with_token_file("admin.token"));
    assert_eq!(c.listen, vec!["127.0.0.1:9124".parse::<SocketAddr>().unwrap()]);
    c.validate("admin").unwrap();

    let c: Cfg = cfg::from_yaml_str(
        "listen: ['::1', '10.0.0.1:8080']\ntoken_file: /etc/hag/t\nrequest_timeout: 2s\nmax_body_bytes: 1024\n",
    )
    .unwrap();
    assert_eq!(c.listen, vec!["[::1]:9124".parse().unwrap(), "10.0.0.1:8080".parse().unwrap()]);
    assert_eq!((c.request_timeout, c.max_body_bytes), (Duration::from_secs(2), 1024));

    let e = cfg::from_yaml_str::<Cfg>("token_file: t\ntoken: abc\n").unwrap_err();
    assert_eq!(e.field(), Some("token"), "{e}");
    let e = cfg::from_yaml_str::<Cfg>("listen: []\n").unwrap_err();
    assert_eq!(e.field(), Some("token_file"), "{e}");
    let e = cfg::from_yaml_str::<Cfg>("listen: ['nope']\ntoken_file: t\n").unwrap_err();
    assert_eq!(e.field(), Some("listen[0]"), "{e}");

    let e = cfg::from_yaml_str::<Cfg>("listen: []\ntoken_file: t\n").unwrap().validate("admin").unwrap_err();
    assert_eq!(e.field(), Some("admin.listen"), "{e}");
    let e = cfg::from_yaml_str::<Cfg>("listen: ['::1', '[::1]:9124']\ntoken_file: t\n")
        .unwrap()
        .validate("admin")
        .unwrap_err();
    assert_eq!(e.field(), Some("admin.listen[1]"), "{e}");

    let mut c = Cfg::with_token_file("tok");
    c.resolve_paths(Path::new("/etc/hag/hag.yaml"));
    assert_eq!(c.token_file, Path::new("/etc/hag/tok"));
}

#[tokio::test]
async fn serve_answers_on_loopback_and_stops_on_shutdown() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listeners = bind(&["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()]).unwrap();
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listeners, app(), async move {
        let _ = stopped.await;
    }));
    for addr in &addrs {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.ends_with("ok"), "{out}");
    }
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    // The ports are free again.
    assert!(tokio::net::TcpStream::connect(addrs[0]).await.is_err());
}

#[test]
fn binding_a_taken_port_names_the_address() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _g = rt.enter();
    let first = bind(&["127.0.0.1:0".parse().unwrap()]).unwrap();
    let addr = first[0].local_addr().unwrap();
    // A listening port cannot be bound again, SO_REUSEADDR or not.
    let e = bind(&[addr]).unwrap_err();
    assert!(matches!(e, AdminError::Bind { addr: a, .. } if a == addr), "{e}");
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
}

#[tokio::test]
async fn a_token_replaced_on_reload_applies_at_once() {
    let app = AdminApp::new(ProcessInfo::new("hcpe", "1"), BearerToken::new(TOKEN).unwrap(), Arc::new(()));
    let auth = app.auth();
    let router = app.router(api());
    let a = send_to(router.clone(), req(Method::GET, "/api/v1/status", Some(TOKEN), Body::empty())).await;
    assert_eq!(a.status, StatusCode::OK);
    auth.set_token(BearerToken::new("another-token-0123456789").unwrap());
    let a = send_to(router.clone(), req(Method::GET, "/api/v1/status", Some(TOKEN), Body::empty())).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let r = req(Method::GET, "/api/v1/status", Some("another-token-0123456789"), Body::empty());
    assert_eq!(send_to(router, r).await.status, StatusCode::OK);
}

#[tokio::test]
async fn extra_public_paths_are_served_without_token_and_only_they() {
    let api = api().route("/", get(|| async { "status page" }));
    let router = AdminApp::new(ProcessInfo::new("hcpe", "1"), BearerToken::new(TOKEN).unwrap(), Arc::new(()))
        .public_path("/")
        .router(api);
    let a = send_to(router.clone(), req(Method::GET, "/", None, Body::empty())).await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "status page"));
    for uri in ["/api/v1/status", "/index.html", "/metrics"] {
        let a = send_to(router.clone(), req(Method::GET, uri, None, Body::empty())).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{uri}");
    }
}

#[test]
fn several_metric_sources_write_in_order() {
    struct One(&'static str);
    impl Metrics for One {
        fn write_metrics(&self, out: &mut MetricsWriter) {
            out.gauge(self.0, "x", 1u8);
        }
    }
    let mut w = MetricsWriter::new();
    vec![One("a"), One("b")].write_metrics(&mut w);
    let names: Vec<_> = testkit::prometheus::parse(w.as_str()).unwrap().into_iter().map(|f| f.name).collect();
    assert_eq!(names, ["a", "b"]);
}

/// Echoes the request body.
#[utoipa::path(put, path = "/api/v1/documented", responses(
    (status = 200, description = "The body.", body = String),
    (status = 401, response = openapi::Unauthorized),
))]
async fn documented(body: String) -> String {
    body
}

#[tokio::test]
async fn openapi_document_is_generated_from_the_routes_and_every_operation_in_it_is_routed() {
    let app = AdminApp::new(ProcessInfo::new("hcpe", "1.2.3"), BearerToken::new(TOKEN).unwrap(), Arc::new(()));
    let router = app.router(OpenApiRouter::new().routes(routes!(documented)).merge(api()));
    let a = send_to(router.clone(), req(Method::GET, openapi::PATH, Some(TOKEN), Body::empty())).await;
    assert_eq!(a.status, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(doc["info"]["title"], "hcpe admin API");
    assert_eq!(doc["info"]["version"], "1.2.3");
    let ops: Vec<String> = testkit::admin::operations(&doc).into_iter().map(|(m, p)| format!("{m} {p}")).collect();
    assert_eq!(
        ops,
        ["PUT /api/v1/documented", "GET /api/v1/openapi.json", "GET /api/v1/status", "GET /healthz", "GET /metrics"],
        "the shared routes and the documented one; plain axum routes are not in the document"
    );
    assert_eq!(missing_operations(&router, &doc, TOKEN, "0").await, Vec::<String>::new());
    // What the operations reference exists.
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert_eq!(doc["security"], serde_json::json!([{ "bearer": [] }]));
    assert_eq!(doc["paths"]["/healthz"]["get"]["security"], serde_json::json!([{}]), "public");
    for r in ["BadRequest", "Unauthorized", "NotFound", "PayloadTooLarge", "RequestTimeout"] {
        let schema = &doc["components"]["responses"][r]["content"]["application/json"]["schema"];
        assert_eq!(schema["$ref"], "#/components/schemas/Error", "{r}: {schema}");
    }
    assert_eq!(doc["components"]["schemas"]["Error"]["required"], serde_json::json!(["error"]));
    let status = &doc["components"]["schemas"]["Status"];
    assert_eq!(status["required"], serde_json::json!(["daemon", "version", "uptime_seconds", "started_unix"]));

    // A documented operation that is not routed, or a wrong method, is reported.
    let mut wrong = doc.clone();
    wrong["paths"]["/api/v1/ghost"] = serde_json::json!({ "get": { "responses": {} } });
    wrong["paths"]["/api/v1/status"]["delete"] = serde_json::json!({ "responses": {} });
    let missing = missing_operations(&router, &wrong, TOKEN, "0").await;
    assert_eq!(missing.len(), 2, "{missing:?}");
    assert!(missing[0].starts_with("GET /api/v1/ghost") && missing[1].starts_with("DELETE /api/v1/status"));
    // A wrong token makes every authenticated operation "missing", so a broken test setup cannot pass.
    assert_eq!(missing_operations(&router, &doc, "bad", "0").await.len(), 4);
}
