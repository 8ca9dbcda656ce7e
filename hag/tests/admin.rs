//! The hag's admin API: every route refuses a missing or wrong token and answers the right one (router tests
//! with `oneshot`, no socket), ids are checked (404 unknown, 400 malformed), `/metrics` is valid Prometheus
//! text, the OpenAPI document lists exactly the routed operations, no secret leaks; and with a real hag on
//! loopback, a relayed MPTCP connection is listed with its subflow and `DELETE` closes it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::http::{Method, StatusCode};
use common::admin::{BearerToken, openapi};
use common::convert::{self, Decoded, Message, auth};
use common::mptcp;
use hag::admin::{self as hadmin, ApiState};
use hag::connections::Connections;
use hag::stats::Stats;
use hag::{Config, Hag};
use serde_json::Value;
use testkit::admin::{self, json_of as json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KEY: &[u8] = b"test key for the hag admin tests.";
const KEY_HEX_FRAGMENT: &str = "74657374"; // "test" in hex, as a key dump would show it
const TOKEN: &str = "admin-token-for-tests-0123456789";

/// Temp dir with a CPE key and the admin token; removed on drop.
struct Dir(PathBuf);

impl Dir {
    /// A directory of its own per call: tests run in parallel, and one test's drop must not remove another's.
    fn new(tag: &str) -> Dir {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("hag-admin-test-{}-{tag}-{n}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        testkit::write_secret(d.join("cpe.key"), KEY).unwrap();
        testkit::write_secret(d.join("admin.token"), format!("{TOKEN}\n")).unwrap();
        Dir(d)
    }

    fn config(&self, admin_listen: &str) -> Config {
        let yaml = format!(
            "listen: ['127.0.0.1:0']\n\
             clients: {{cpe-1: {{key_file: cpe.key}}, cpe-2: {{key_file: cpe.key}}}}\n\
             destinations: {{allow: [127.0.0.2/32]}}\n\
             limits: {{header_deadline: 2s, connect_timeout: 2s, drain_deadline: 1s, tfo_queue: 0}}\n\
             admin: {{listen: ['{admin_listen}'], token_file: admin.token}}\n"
        );
        Config::from_yaml(&yaml, &self.0.join("hag.yaml")).unwrap()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn token() -> BearerToken {
    BearerToken::new(TOKEN).unwrap()
}

/// A router over a fixture table: one MPTCP-looking relay of cpe-1 (token 0x1a2b3c4d) and one fallback
/// connection of cpe-2.
struct RouterFixture {
    router: Router,
    state: Arc<ApiState>,
    _entries: Vec<hag::connections::Entry>,
}

fn router_fixture() -> RouterFixture {
    let dir = Dir::new("router");
    let config = dir.config("127.0.0.1:15125");
    let stats = Arc::new(Stats::default());
    let connections = Arc::new(Connections::default());
    let a = connections.insert("192.0.2.10:40000".parse().unwrap(), std::sync::Weak::new());
    a.conn().token.set(Some(0x1a2b_3c4d)).unwrap();
    a.conn().cpe.set("cpe-1".into()).unwrap();
    a.conn().dst.set("203.0.113.5:443".parse().unwrap()).unwrap();
    a.conn().counters.a_to_b.store(1000, Relaxed);
    a.conn().counters.b_to_a.store(50_000, Relaxed);
    let b = connections.insert("192.0.2.11:40001".parse().unwrap(), std::sync::Weak::new());
    b.conn().token.set(None).unwrap();
    b.conn().cpe.set("cpe-2".into()).unwrap();
    stats.accepted.store(7, Relaxed);
    stats.active.store(2, Relaxed);
    stats.fallback.store(1, Relaxed);
    stats.error_sent(convert::ErrorCode::NotAuthorized);
    stats.auth_failures.store(1, Relaxed);
    stats.bytes_up.store(11, Relaxed);
    stats.bytes_down.store(22, Relaxed);
    stats.cpe_admitted("cpe-1");
    stats.cpe_relayed("cpe-1", 11, 22);
    stats.cpe_auth_failed("cpe-2");
    let settings = Arc::new(hag::live::Settings::new(config, vec![]));
    let state = Arc::new(ApiState::new(settings, stats, connections));
    let router = hadmin::router(&["127.0.0.1:5124".parse().unwrap()], state.clone(), token());
    RouterFixture { router, state, _entries: vec![a, b] }
}

async fn call(router: &Router, method: Method, uri: &str, auth: Option<&str>) -> (StatusCode, Vec<u8>) {
    admin::call(router, method, uri, auth, None).await
}

#[tokio::test]
async fn every_route_needs_the_token() {
    let f = router_fixture();
    let routes = [
        (Method::GET, "/metrics"),
        (Method::GET, "/api/v1/status"),
        (Method::GET, "/api/v1/openapi.json"),
        (Method::GET, "/api/v1/connections"),
        (Method::GET, "/api/v1/connections/1a2b3c4d"),
        (Method::GET, "/api/v1/clients"),
        (Method::DELETE, "/api/v1/connections/tcp-1"),
    ];
    for (m, uri) in &routes {
        for bad in [None, Some("wrong-token"), Some("")] {
            let (status, body) = call(&f.router, m.clone(), uri, bad).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{m} {uri} with {bad:?}");
            assert_eq!(json(&body)["error"], "unauthorized");
        }
        let (status, body) = call(&f.router, m.clone(), uri, Some(TOKEN)).await;
        let want = if *m == Method::DELETE { StatusCode::NO_CONTENT } else { StatusCode::OK };
        assert_eq!(status, want, "{m} {uri}: {}", String::from_utf8_lossy(&body));
    }
    let (status, body) = call(&f.router, Method::GET, "/healthz", None).await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, b"ok".as_slice()));
}

#[tokio::test]
async fn connections_are_listed_and_looked_up_by_token_or_seq() {
    let f = router_fixture();
    let (status, body) = call(&f.router, Method::GET, "/api/v1/connections", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    let list = json(&body);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let a = &list[0];
    assert_eq!(a["id"], "1a2b3c4d");
    assert_eq!(a["token"], 0x1a2b_3c4d);
    assert_eq!(a["cpe"], "cpe-1");
    assert_eq!(a["peer"], "192.0.2.10:40000");
    assert_eq!(a["destination"], "203.0.113.5:443");
    assert_eq!(a["fallback"], false);
    assert_eq!((a["bytes_up"].as_u64(), a["bytes_down"].as_u64()), (Some(1000), Some(50_000)));
    assert_eq!(a["subflows"], serde_json::json!([]), "no socket behind the fixture");
    let b = &list[1];
    assert_eq!(b["fallback"], true);
    assert_eq!(b["token"], Value::Null);
    let b_id = b["id"].as_str().unwrap().to_owned();
    assert!(b_id.starts_with("tcp-"), "{b_id}");

    for id in ["1a2b3c4d", "0x1A2B3C4D"] {
        let (status, body) = call(&f.router, Method::GET, &format!("/api/v1/connections/{id}"), Some(TOKEN)).await;
        assert_eq!(status, StatusCode::OK, "{id}");
        assert_eq!(json(&body)["cpe"], "cpe-1");
    }
    let (status, body) = call(&f.router, Method::GET, &format!("/api/v1/connections/{b_id}"), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["cpe"], "cpe-2");

    for unknown in ["deadbeef", "tcp-999"] {
        for m in [Method::GET, Method::DELETE] {
            let (status, body) =
                call(&f.router, m.clone(), &format!("/api/v1/connections/{unknown}"), Some(TOKEN)).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{m} {unknown}");
            assert!(json(&body)["error"].as_str().unwrap().contains("no connection"));
        }
    }
    for malformed in ["xyz", "123456789", "tcp-x", "1a2b%203c"] {
        for m in [Method::GET, Method::DELETE] {
            let (status, body) =
                call(&f.router, m.clone(), &format!("/api/v1/connections/{malformed}"), Some(TOKEN)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{m} {malformed}");
            assert!(json(&body)["error"].is_string());
        }
    }
}

#[tokio::test]
async fn delete_cancels_the_connection_and_counts_it() {
    let f = router_fixture();
    let conns = f.state.connections.snapshot();
    assert!(!conns[0].close.is_cancelled());
    let (status, body) = call(&f.router, Method::DELETE, "/api/v1/connections/1a2b3c4d", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(body.is_empty());
    assert!(conns[0].close.is_cancelled(), "the task's close token is cancelled");
    assert!(!conns[1].close.is_cancelled(), "only that one");
    assert_eq!(f.state.stats.closed_by_admin.load(Relaxed), 1);
    // A second DELETE while the task winds down is still fine and not counted twice.
    let (status, _) = call(&f.router, Method::DELETE, "/api/v1/connections/1a2b3c4d", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(f.state.stats.closed_by_admin.load(Relaxed), 1);
}

#[tokio::test]
async fn clients_show_per_cpe_counts() {
    let f = router_fixture();
    let (status, body) = call(&f.router, Method::GET, "/api/v1/clients", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    let v = json(&body);
    let ids: Vec<&str> = v.as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["cpe-1", "cpe-2"]);
    let c1 = &v[0];
    assert_eq!(c1["open_connections"], 1);
    assert_eq!(c1["connections_total"], 1);
    assert_eq!(c1["bytes_up"], 11 + 1000, "finished + open relay");
    assert_eq!(c1["bytes_down"], 22 + 50_000);
    assert_eq!(c1["auth_failures"], 0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(c1["last_seen_unix"].as_u64().unwrap().abs_diff(now) < 60);
    assert_eq!(v[1]["auth_failures"], 1);
    assert_eq!(v[1]["open_connections"], 1);
}

#[tokio::test]
async fn status_summarises_the_config_without_secrets() {
    let f = router_fixture();
    let (status, body) = call(&f.router, Method::GET, "/api/v1/status", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    let v = json(&body);
    assert_eq!(v["daemon"], "hag");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["uptime_seconds"].is_u64());
    assert_eq!(v["listen"], serde_json::json!(["127.0.0.1:5124"]));
    assert_eq!(v["clients"], serde_json::json!(["cpe-1", "cpe-2"]));
    assert_eq!(v["limits"]["max_connections"], 20_000);
    assert_eq!(v["admin_listen"], serde_json::json!(["127.0.0.1:15125"]));
    let text = String::from_utf8(body).unwrap();
    for secret in [TOKEN, KEY_HEX_FRAGMENT, "test key", "cpe.key", "admin.token"] {
        assert!(!text.contains(secret), "status shows {secret:?}: {text}");
    }
}

#[tokio::test]
async fn metrics_are_valid_prometheus_text_with_the_hag_families() {
    let f = router_fixture();
    let (status, body) = call(&f.router, Method::GET, "/metrics", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    let families = testkit::prometheus::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let fam = |name: &str| families.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("no {name} in\n{text}"));
    assert_eq!(fam("hag_connections_open").value(&[]), Some(2.0));
    assert_eq!(fam("hag_connections_accepted_total").value(&[]), Some(7.0));
    assert_eq!(fam("hag_connections_fallback_total").value(&[]), Some(1.0));
    assert_eq!(fam("hag_connections_failed_total").value(&[("reason", "refused")]), Some(1.0));
    assert_eq!(fam("hag_convert_errors_sent_total").value(&[("code", "32"), ("name", "not_authorized")]), Some(1.0));
    assert_eq!(fam("hag_convert_errors_sent_total").samples.len(), 10);
    assert_eq!(fam("hag_auth_failures_total").value(&[]), Some(1.0));
    assert_eq!(fam("hag_bytes_total").value(&[("direction", "down")]), Some(22.0));
    assert_eq!(fam("hag_open_relay_bytes").value(&[("direction", "down")]), Some(50_000.0));
    assert_eq!(fam("hag_cpe_connections_open").value(&[("cpe", "cpe-1")]), Some(1.0));
    assert_eq!(fam("hag_cpe_connections_total").value(&[("cpe", "cpe-1")]), Some(1.0));
    assert_eq!(fam("hag_cpe_bytes_total").value(&[("cpe", "cpe-1"), ("direction", "up")]), Some(11.0));
    assert_eq!(fam("hag_cpe_auth_failures_total").value(&[("cpe", "cpe-2")]), Some(1.0));
    assert_eq!(fam("hag_build_info").kind, "gauge");
    assert_eq!(fam("hag_connections_open").kind, "gauge");
    assert_eq!(fam("hag_bytes_total").kind, "counter");
}

#[tokio::test]
async fn openapi_document_is_true() {
    let f = router_fixture();
    let (status, body) = call(&f.router, Method::GET, openapi::PATH, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    let doc = json(&body);
    assert_eq!(doc, serde_json::to_value(hag::admin::openapi()).unwrap(), "served = generated from the routes");
    let ops: Vec<String> = testkit::admin::operations(&doc).into_iter().map(|(m, p)| format!("{m} {p}")).collect();
    assert_eq!(
        ops,
        [
            "GET /api/v1/clients",
            "GET /api/v1/connections",
            "DELETE /api/v1/connections/{id}",
            "GET /api/v1/connections/{id}",
            "GET /api/v1/openapi.json",
            "GET /api/v1/status",
            "GET /healthz",
            "GET /metrics",
        ],
        "every route of the router, each once"
    );
    // A valid id that names nothing: every documented operation must be routed (404 from the handler counts).
    let missing = testkit::admin::missing_operations(&f.router, &doc, TOKEN, "00000000").await;
    assert!(missing.is_empty(), "documented but not routed: {missing:?}");
    for schema in ["Connection", "Subflow", "Client", "Error"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
}

// ---- a real hag on loopback -------------------------------------------------------------------------

/// An echo server on 127.0.0.2.
async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`); returns status and body.
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await.expect("admin API answers").unwrap();
    let text = String::from_utf8(raw).unwrap();
    let status = text[9..12].parse().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (len, rest) = s.split_once("\r\n").unwrap();
        let len = usize::from_str_radix(len.trim(), 16).unwrap();
        if len == 0 {
            return out;
        }
        out.push_str(&rest[..len]);
        s = &rest[len + 2..];
    }
}

/// A port that was free a moment ago (the admin config cannot ask for port 0).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn live_mptcp_relay_is_listed_with_its_subflow_and_delete_closes_it() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("hag=debug").try_init();
    let dir = Dir::new("live");
    let config = dir.config(&format!("127.0.0.1:{}", free_port()));
    let hag = Hag::bind(config.clone()).unwrap();
    let hag_addr = hag.local_addrs()[0];
    let stats = hag.stats();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut rx1 = stop_rx.clone();
    let (running, _auth) = hadmin::start(&hag, async move {
        let _ = rx1.wait_for(|s| *s).await;
    })
    .unwrap()
    .expect("admin configured");
    let admin = running.addrs[0];
    let admin_task = running.task;
    let mut rx2 = stop_rx.clone();
    let hag_task = tokio::spawn(hag.run(async move {
        let _ = rx2.wait_for(|s| *s).await;
    }));

    // An MPTCP client (no TFO) relayed to the echo server.
    let dst = echo_server().await;
    let request = auth::signed_request(KEY, dst, "cpe-1", now(), auth::random_nonce().unwrap()).unwrap();
    let opts = mptcp::ConnectOptions { fastopen: false, ..Default::default() };
    let (mut client, sent) = mptcp::connect_with_data(hag_addr, &request, &opts).await.unwrap();
    client.write_all(&request[sent..]).await.unwrap();
    assert!(mptcp::is_mptcp_socket(&client));
    let mut buf = Vec::new();
    while !matches!(convert::decode(&buf), Decoded::Done { .. }) {
        let mut chunk = [0u8; 256];
        let n = client.read(&mut chunk).await.unwrap();
        assert!(n > 0, "hag closed before its reply");
        buf.extend_from_slice(&chunk[..n]);
    }
    let Decoded::Done { message, consumed } = convert::decode(&buf) else { unreachable!() };
    assert_eq!(message, Message::success());
    assert_eq!(consumed, buf.len());
    client.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    client.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
    let client_local = client.local_addr().unwrap();

    let (status, body) = http(admin, "GET", "/api/v1/connections").await;
    assert_eq!(status, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{body}");
    let c = &list[0];
    assert_eq!(c["fallback"], false, "{body}");
    assert_eq!(c["cpe"], "cpe-1");
    assert_eq!(c["destination"], dst.to_string());
    assert_eq!(c["peer"], client_local.to_string());
    assert_eq!((c["bytes_up"].as_u64(), c["bytes_down"].as_u64()), (Some(4), Some(4)), "{body}");
    let id = c["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 8, "token as 8 hex digits: {id}");
    assert_eq!(format!("{:08x}", c["token"].as_u64().unwrap()), id);
    let subflows = c["subflows"].as_array().unwrap();
    assert_eq!(subflows.len(), 1, "one subflow on loopback: {body}");
    let sf = &subflows[0];
    assert_eq!(sf["local"], hag_addr.to_string());
    assert_eq!(sf["remote"], client_local.to_string());
    assert!(sf["bytes_received"].as_u64().unwrap() >= request.len() as u64 + 4, "{sf}");
    // Acknowledged bytes: at least the Convert reply (the echo's ACK may still be delayed).
    assert!(sf["bytes_sent"].as_u64().unwrap() >= 4, "{sf}");
    assert!(sf["rtt_us"].as_u64().unwrap() > 0, "{sf}");

    let (status, body) = http(admin, "GET", &format!("/api/v1/connections/{id}")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(admin, "GET", "/api/v1/clients").await;
    assert_eq!(status, 200);
    let clients: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(clients[0]["open_connections"], 1, "{body}");
    assert_eq!(clients[0]["connections_total"], 1, "{body}");

    let (status, body) = http(admin, "DELETE", &format!("/api/v1/connections/{id}")).await;
    assert_eq!(status, 204, "{body}");
    // The client sees its connection end (EOF or reset), without sending anything.
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest))
        .await
        .expect("the hag closes the connection after DELETE");
    assert!(rest.is_empty(), "{end:?} {rest:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = http(admin, "GET", "/api/v1/connections").await;
        if body == "[]" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still listed: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = http(admin, "GET", &format!("/api/v1/connections/{id}")).await;
    assert_eq!(status, 404);
    assert_eq!(stats.closed_by_admin.load(Relaxed), 1);
    assert_eq!(stats.bytes_up.load(Relaxed), 4, "relay bytes counted when closed by the API");
    let (_, body) = http(admin, "GET", "/metrics").await;
    let families = testkit::prometheus::parse(&body).unwrap();
    let ended = families.iter().find(|f| f.name == "hag_relays_ended_total").unwrap();
    assert_eq!(ended.value(&[("reason", "admin")]), Some(1.0));
    let cpe_bytes = families.iter().find(|f| f.name == "hag_cpe_bytes_total").unwrap();
    assert_eq!(cpe_bytes.value(&[("cpe", "cpe-1"), ("direction", "down")]), Some(4.0));
    let probes = families.iter().find(|f| f.name == "hag_probe_requests_total").unwrap();
    assert_eq!(
        probes.value(&[("listen", &hag_addr.to_string())]),
        Some(0.0),
        "the UDP probe responder on the service address is exported"
    );

    // Shutdown stops the admin API too.
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), admin_task)
        .await
        .expect("admin API stops on shutdown")
        .unwrap()
        .unwrap();
    hag_task.await.unwrap();
    assert!(TcpStream::connect(admin).await.is_err(), "nothing listens after shutdown");
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}
