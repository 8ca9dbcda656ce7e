//! The hag's admin REST API: its own routes (`/api/v1/connections`, `/api/v1/connections/{id}`,
//! `/api/v1/clients`), its `/metrics` families ([`HagMetrics`]) and its `/api/v1/status` detail (a config
//! summary); `common::admin` adds auth, `/healthz`, `/metrics`, `/api/v1/status`, the OpenAPI document,
//! JSON errors and limits around them, and serves them ([`start`]).
//!
//! Connection ids (RFC 6897 CONNID) are `common::admin::ConnId`s: the MPTCP token of the CPE's connection, or
//! `tcp-<n>` (the hag's sequence number) for one without a token (plain TCP fallback, or not yet past accept).
//! Subflows are `common::admin::SubflowView`s from the client socket (`local` = the hag's address).
//!
//! Invariants:
//! - Nothing here shows a secret: CPE keys and the admin token never reach a response (the status summary
//!   lists CPE ids only).
//! - Every route of [`api_router`] is registered with its `#[utoipa::path]` operation, so the served OpenAPI
//!   document lists exactly the routes (`common::admin::openapi`).
//! - Per-CPE metric labels come only from configured CPE ids, so label cardinality is bounded by the config.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use common::admin::openapi::{BadRequest, NotFound, Unauthorized};
use common::admin::{
    self, AdminApp, AdminError, ApiError, ApiJson, ApiPath, Auth, BearerToken, ConnIdPath, HasConnId, MetricType,
    Metrics, MetricsWriter, ProcessInfo, SubflowView,
};
use common::mptcp;
use common::mptcp::subflow_diag::{self, DiagMap};
use serde::Serialize;
use serde_json::{Value, json};
use tracing::info;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;
use crate::connections::{Connection, Connections};
use crate::live::Settings;
use crate::server::Hag;
use crate::stats::{ERROR_CODES, Stats};
pub use common::admin::RunningAdmin;

/// What the API handlers read: the server's live counters and connection table, and its running config
/// (which a reload changes).
#[derive(Debug, Clone)]
pub struct ApiState {
    /// The server's counters.
    pub stats: Arc<Stats>,
    /// The server's open connections.
    pub connections: Arc<Connections>,
    /// The running config.
    pub settings: Arc<Settings>,
}

impl ApiState {
    /// State over a running (or bound) hag's counters, table and settings.
    pub fn new(settings: Arc<Settings>, stats: Arc<Stats>, connections: Arc<Connections>) -> Self {
        ApiState { stats, connections, settings }
    }

    /// Configured CPE ids now, sorted.
    pub fn clients(&self) -> Vec<String> {
        let mut clients: Vec<String> = self.settings.get().config.clients.keys().cloned().collect();
        clients.sort();
        clients
    }
}

/// One open connection as `GET /api/v1/connections` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Connection)]
pub struct ConnectionView {
    /// Connection id (see the module doc).
    pub id: String,
    /// MPTCP token, `null` without MPTCP.
    pub token: Option<u32>,
    /// The CPE id from the Auth TLV (`null` for trusted clients without one, or before authentication).
    pub cpe: Option<String>,
    /// The CPE's address of the initial subflow (`address:port`).
    #[schema(value_type = String)]
    pub peer: SocketAddr,
    /// Destination from the Connect TLV (`address:port`; `null` until it passed the policy).
    #[schema(value_type = Option<String>)]
    pub destination: Option<SocketAddr>,
    /// The client is plain TCP (did not do MPTCP, or fell back).
    pub fallback: bool,
    /// When it was accepted, Unix seconds.
    pub accepted_unix: u64,
    /// Seconds since it was accepted.
    pub age_seconds: f64,
    /// Held idle for the CPE's ready-connection pool: authenticated, no destination named yet.
    pub held: bool,
    /// Relayed bytes CPE -> destination.
    pub bytes_up: u64,
    /// Relayed bytes destination -> CPE.
    pub bytes_down: u64,
    /// Subflows (empty without MPTCP).
    pub subflows: Vec<SubflowView>,
}

impl ConnectionView {
    /// Reads `c`'s fields, live counters and subflows (`full`: its `MPTCP_FULL_INFO`); backup flags from `diag`
    /// (by local, remote address), since `MPTCP_FULL_INFO` lacks them.
    pub fn of(c: &Connection, full: Option<mptcp::FullInfo>, diag: &DiagMap) -> Self {
        let mut subflows = SubflowView::from_full_info(full.as_ref());
        for s in &mut subflows {
            if let Some(d) = s.local.zip(s.remote).and_then(|k| diag.get(&k)) {
                s.backup = Some(d.backup());
            }
        }
        ConnectionView {
            id: c.conn_id().to_string(),
            token: c.token.get().copied().flatten(),
            cpe: c.cpe.get().cloned(),
            peer: c.peer,
            destination: c.dst.get().copied(),
            fallback: matches!(c.token.get(), Some(None)),
            accepted_unix: unix(c.accepted_at).unwrap_or(0),
            age_seconds: c.accepted.elapsed().as_secs_f64(),
            held: c.held.load(Relaxed),
            bytes_up: c.counters.a_to_b.load(Relaxed),
            bytes_down: c.counters.b_to_a.load(Relaxed),
            subflows,
        }
    }
}

/// One configured CPE as `GET /api/v1/clients` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Client)]
pub struct ClientView {
    /// CPE id.
    pub id: String,
    /// Connections open now (held ones included).
    pub open_connections: u64,
    /// Of those, held idle for the CPE's ready-connection pool (bounded by `limits.max_held_per_cpe`).
    pub held_connections: u64,
    /// Connections admitted since start.
    pub connections_total: u64,
    /// Bytes CPE -> destinations (finished relays plus the open ones so far).
    pub bytes_up: u64,
    /// Bytes destinations -> CPE (finished relays plus the open ones so far).
    pub bytes_down: u64,
    /// Failed Auth TLVs naming this CPE.
    pub auth_failures: u64,
    /// Last connection attempt or relay end, Unix seconds; `null` if never seen.
    pub last_seen_unix: Option<u64>,
}

fn unix(t: SystemTime) -> Option<u64> {
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

fn clients_view(state: &ApiState) -> Vec<ClientView> {
    let per_cpe = state.stats.per_cpe();
    let clients = state.clients();
    let mut out: BTreeMap<&str, ClientView> = clients
        .iter()
        .map(|id| {
            let c = per_cpe.get(id).copied().unwrap_or_default();
            let view = ClientView {
                id: id.clone(),
                open_connections: 0,
                held_connections: 0,
                connections_total: c.connections,
                bytes_up: c.bytes_up,
                bytes_down: c.bytes_down,
                auth_failures: c.auth_failures,
                last_seen_unix: c.last_seen.and_then(unix),
            };
            (id.as_str(), view)
        })
        .collect();
    for conn in state.connections.snapshot() {
        let Some(v) = conn.cpe.get().and_then(|id| out.get_mut(id.as_str())) else {
            continue;
        };
        v.open_connections += 1;
        v.held_connections += u64::from(conn.held.load(Relaxed));
        v.bytes_up += conn.counters.a_to_b.load(Relaxed);
        v.bytes_down += conn.counters.b_to_a.load(Relaxed);
        v.last_seen_unix = v.last_seen_unix.max(unix(conn.accepted_at));
    }
    out.into_values().collect()
}

/// Views of `conns`: `MPTCP_FULL_INFO` per connection, then one `sock_diag` pass over hag's listening ports for
/// the subflows' backup flags (off the runtime: both are blocking syscalls).
async fn connection_views(conns: Vec<Arc<Connection>>) -> Vec<ConnectionView> {
    tokio::task::spawn_blocking(move || {
        let full: Vec<Option<mptcp::FullInfo>> =
            conns.iter().map(|c| c.client.upgrade().and_then(|s| mptcp::full_info(&*s).ok().flatten())).collect();
        let ports: Vec<u16> =
            full.iter().flatten().flat_map(|f| f.subflows.iter().filter_map(|s| s.local.map(|a| a.port()))).collect();
        let diag = subflow_diag::by_port(subflow_diag::Side::Local, &ports).unwrap_or_else(|e| {
            tracing::debug!(error = %e, "sock_diag: no subflow backup flags");
            DiagMap::new()
        });
        conns.iter().zip(full).map(|(c, f)| ConnectionView::of(c, f, &diag)).collect()
    })
    .await
    .unwrap_or_default()
}

/// Open connections with their subflows (RFC 6897 CONNID and SUBFLOWS).
#[utoipa::path(get, path = "/api/v1/connections", responses(
    (status = 200, description = "Connections, oldest first.", body = Vec<ConnectionView>),
    (status = 401, response = Unauthorized),
))]
async fn list_connections(State(s): State<Arc<ApiState>>) -> ApiJson<Vec<ConnectionView>> {
    ApiJson(connection_views(s.connections.snapshot()).await)
}

/// One open connection.
#[utoipa::path(get, path = "/api/v1/connections/{id}", params(ConnIdPath), responses(
    (status = 200, description = "The connection.", body = ConnectionView),
    (status = 400, response = BadRequest),
    (status = 401, response = Unauthorized),
    (status = 404, response = NotFound),
))]
async fn get_connection(
    State(s): State<Arc<ApiState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<ConnectionView>, ApiError> {
    let c = s.connections.by_path(&id)?;
    let mut v = connection_views(vec![c]).await;
    v.pop().map(ApiJson).ok_or_else(|| ApiError::internal("connection view task failed"))
}

/// Closes the connection: the relay stops and both sockets are closed.
#[utoipa::path(delete, path = "/api/v1/connections/{id}", params(ConnIdPath), responses(
    (status = 204, description = "Closing."),
    (status = 400, response = BadRequest),
    (status = 401, response = Unauthorized),
    (status = 404, response = NotFound),
))]
async fn delete_connection(
    State(s): State<Arc<ApiState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let c = s.connections.by_path(&id)?;
    if !c.close.is_cancelled() {
        c.close.cancel();
        s.stats.closed_by_admin.fetch_add(1, Relaxed);
        info!(id = %c.conn_id(), peer = %c.peer, "connection closed through the admin API");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Configured CPEs with their connection, byte and auth-failure counts.
#[utoipa::path(get, path = "/api/v1/clients", responses(
    (status = 200, description = "CPEs by id.", body = Vec<ClientView>),
    (status = 401, response = Unauthorized),
))]
async fn list_clients(State(s): State<Arc<ApiState>>) -> ApiJson<Vec<ClientView>> {
    ApiJson(clients_view(&s))
}

/// The hag's own `/api/v1/...` routes with their OpenAPI operations, state applied (no auth:
/// [`AdminApp::router`] adds it).
pub fn api_router(state: Arc<ApiState>) -> OpenApiRouter {
    api_routes().with_state(state)
}

fn api_routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new()
        .routes(routes!(list_connections))
        .routes(routes!(get_connection, delete_connection))
        .routes(routes!(list_clients))
}

/// The OpenAPI document hag serves at `/api/v1/openapi.json` (it needs no running daemon).
pub fn openapi() -> utoipa::openapi::OpenApi {
    admin::openapi::document("hag", env!("CARGO_PKG_VERSION"), api_routes().into_openapi())
}

/// The hag's `/metrics` families (prefix `hag_`), read from [`Stats`] and the connection table.
#[derive(Debug, Clone)]
pub struct HagMetrics {
    state: Arc<ApiState>,
}

impl HagMetrics {
    /// Metrics over `state`.
    pub fn new(state: Arc<ApiState>) -> Self {
        HagMetrics { state }
    }
}

/// Metric label of a Convert error code (RFC 8803 §4.2.9 names).
fn code_name(code: common::convert::ErrorCode) -> &'static str {
    use common::convert::ErrorCode as E;
    match code {
        E::UnsupportedVersion => "unsupported_version",
        E::MalformedMessage => "malformed_message",
        E::UnsupportedMessage => "unsupported_message",
        E::MissingCookie => "missing_cookie",
        E::NotAuthorized => "not_authorized",
        E::UnsupportedTcpOption => "unsupported_tcp_option",
        E::ResourceExceeded => "resource_exceeded",
        E::NetworkFailure => "network_failure",
        E::ConnectionReset => "connection_reset",
        E::DestinationUnreachable => "destination_unreachable",
        E::Unknown(_) => "unknown",
    }
}

impl Metrics for HagMetrics {
    fn write_metrics(&self, w: &mut MetricsWriter) {
        let s = self.state.stats.snapshot();
        let st = &self.state.stats;
        w.gauge("connections_open", "Client connections open now.", s.active);
        w.gauge(
            "connections_pending",
            "Client connections open now that have not delivered a whole Convert message yet.",
            st.pending.load(Relaxed),
        );
        w.counter("connections_accepted_total", "Client connections accepted on any listener.", s.accepted);
        w.counter("connections_relayed_total", "Connections answered with success and relayed.", s.relayed);
        w.counter(
            "connections_fallback_total",
            "Accepted connections that are plain TCP (no MPTCP or fallen back).",
            s.fallback,
        );
        w.gauge(
            "connections_held",
            "Connections held idle for CPEs' ready-connection pools (Hold TLV), all CPEs.",
            st.held.load(Relaxed),
        );
        w.family("holds_total", "Hold requests accepted, and how held connections ended.", MetricType::Counter)
            .sample(&[("outcome", "accepted")], st.holds_accepted.load(Relaxed))
            .sample(&[("outcome", "used")], st.holds_used.load(Relaxed))
            .sample(&[("outcome", "expired")], st.holds_expired.load(Relaxed))
            .sample(&[("outcome", "closed")], st.holds_closed.load(Relaxed));
        let refused: u64 = s.errors_sent.iter().map(|(_, n)| n).sum();
        w.family(
            "connections_failed_total",
            "Connections that ended without a relay, by reason (refused = answered with a Convert Error TLV).",
            MetricType::Counter,
        )
        .sample(&[("reason", "refused")], refused)
        .sample(&[("reason", "header_timeout")], s.header_timeouts)
        .sample(&[("reason", "closed_before_header")], s.closed_before_header)
        .sample(&[("reason", "pending_evicted")], s.pending_evicted)
        .sample(&[("reason", "zero_length")], st.reset_zero_length.load(Relaxed))
        .sample(&[("reason", "error_rate_limited")], st.error_replies_limited.load(Relaxed));
        w.counter(
            "info_answered_total",
            "Convert messages asking only for the supported TCP extensions (Info TLV), answered.",
            st.info_answered.load(Relaxed),
        );
        w.family(
            "relays_ended_total",
            "Relays that ended other than by both sides closing, by reason.",
            MetricType::Counter,
        )
        .sample(&[("reason", "idle_timeout")], s.idle_timeouts)
        .sample(&[("reason", "error")], s.relay_errors)
        .sample(&[("reason", "admin")], st.closed_by_admin.load(Relaxed));
        {
            let mut f = w.family(
                "convert_errors_sent_total",
                "Convert Error TLVs sent to clients, by RFC 8803 error code.",
                MetricType::Counter,
            );
            for (i, (code, n)) in s.errors_sent.iter().enumerate() {
                f.sample(&[("code", &code.to_string()), ("name", code_name(ERROR_CODES[i]))], *n);
            }
        }
        w.counter(
            "auth_failures_total",
            "Convert connections refused for authentication (bad MAC, skew, replay, unknown or missing id).",
            s.auth_failures,
        );
        w.counter(
            "policy_denied_total",
            "Convert connections refused because the destination policy denies the destination.",
            s.policy_denied,
        );
        w.family(
            "bytes_total",
            "Bytes relayed by finished relays (up = CPE to destination, down = back).",
            MetricType::Counter,
        )
        .sample(&[("direction", "up")], s.bytes_up)
        .sample(&[("direction", "down")], s.bytes_down);

        let conns = self.state.connections.snapshot();
        let (mut live_up, mut live_down) = (0u64, 0u64);
        let mut open_per_cpe: HashMap<&str, u64> = HashMap::new();
        let mut held_per_cpe: HashMap<&str, u64> = HashMap::new();
        for c in &conns {
            live_up += c.counters.a_to_b.load(Relaxed);
            live_down += c.counters.b_to_a.load(Relaxed);
            if let Some(id) = c.cpe.get() {
                *open_per_cpe.entry(id.as_str()).or_default() += 1;
                *held_per_cpe.entry(id.as_str()).or_default() += u64::from(c.held.load(Relaxed));
            }
        }
        w.family("open_relay_bytes", "Bytes relayed so far by the relays still open.", MetricType::Gauge)
            .sample(&[("direction", "up")], live_up)
            .sample(&[("direction", "down")], live_down);

        let per_cpe = st.per_cpe();
        let counters = |id: &str| per_cpe.get(id).copied().unwrap_or_default();
        let ids = &self.state.clients();
        {
            let mut f = w.family("cpe_connections_open", "Connections open now, per CPE.", MetricType::Gauge);
            for id in ids {
                f.sample(&[("cpe", id)], open_per_cpe.get(id.as_str()).copied().unwrap_or(0));
            }
        }
        {
            let mut f = w.family(
                "cpe_connections_held",
                "Connections held idle for the CPE's ready-connection pool, per CPE.",
                MetricType::Gauge,
            );
            for id in ids {
                f.sample(&[("cpe", id)], held_per_cpe.get(id.as_str()).copied().unwrap_or(0));
            }
        }
        {
            let mut f =
                w.family("cpe_connections_total", "Connections admitted since start, per CPE.", MetricType::Counter);
            for id in ids {
                f.sample(&[("cpe", id)], counters(id).connections);
            }
        }
        {
            let mut f = w.family(
                "cpe_bytes_total",
                "Bytes relayed by finished relays, per CPE and direction.",
                MetricType::Counter,
            );
            for id in ids {
                let c = counters(id);
                f.sample(&[("cpe", id), ("direction", "up")], c.bytes_up);
                f.sample(&[("cpe", id), ("direction", "down")], c.bytes_down);
            }
        }
        {
            let mut f = w.family(
                "cpe_auth_failures_total",
                "Failed Auth TLVs naming the CPE (bad MAC, skew, replay).",
                MetricType::Counter,
            );
            for id in ids {
                f.sample(&[("cpe", id)], counters(id).auth_failures);
            }
        }
        write_probe_metrics(&st.probes.lock().expect("probe list poisoned"), w);
    }
}

/// The UDP probe responders' counters, one sample per bound service address.
fn write_probe_metrics(probes: &[(SocketAddr, Arc<common::probe::ResponderCounters>)], w: &mut MetricsWriter) {
    let stats: Vec<(String, common::probe::ResponderStats)> =
        probes.iter().map(|(addr, c)| (addr.to_string(), c.snapshot())).collect();
    type Field = fn(&common::probe::ResponderStats) -> u64;
    let families: [(&str, &str, Field); 5] = [
        ("probe_requests_total", "UDP probe datagrams received from CPEs.", |s| s.received),
        ("probe_replies_total", "UDP probe replies sent.", |s| s.replied),
        ("probe_rate_limited_total", "UDP probe datagrams dropped by the per-source rate limit.", |s| s.rate_limited),
        ("probe_malformed_total", "UDP datagrams that are not a valid probe request.", |s| s.malformed),
        (
            "probe_auth_failures_total",
            "Probe requests dropped for an unknown CPE id, a bad MAC or a stale timestamp.",
            |s| s.unknown_cpe + s.bad_mac + s.stale,
        ),
    ];
    for (name, help, field) in families {
        let mut f = w.family(name, help, MetricType::Counter);
        for (addr, s) in &stats {
            f.sample(&[("listen", addr)], field(s));
        }
    }
}

/// The config summary of `/api/v1/status` (no secrets: CPE ids only, never keys or the token file).
pub fn status_detail(config: &Config, listening: &[SocketAddr]) -> Value {
    let mut clients: Vec<&String> = config.clients.keys().collect();
    clients.sort();
    let l = &config.limits;
    json!({
        "listen": listening,
        "clients": clients,
        "trusted_sources": config.trusted_sources.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "destinations": {
            "allow": config.destinations.allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "deny": config.destinations.deny.iter().map(ToString::to_string).collect::<Vec<_>>(),
        },
        "limits": {
            "max_connections": l.max_connections,
            "max_connections_per_cpe": l.max_connections_per_cpe,
            "header_deadline_seconds": l.header_deadline.as_secs_f64(),
            "connect_timeout_seconds": l.connect_timeout.as_secs_f64(),
            "idle_timeout_seconds": l.idle_timeout.as_secs_f64(),
            "drain_deadline_seconds": l.drain_deadline.as_secs_f64(),
            "auth_skew_seconds": l.auth_skew.as_secs_f64(),
            "replay_entries": l.replay_entries,
            "backlog": l.backlog,
            "tfo_queue": l.tfo_queue,
        },
        "admin_listen": config.admin.as_ref().map(|a| &a.config.listen),
    })
}

/// The whole admin app of a hag: shared routes from `common::admin` plus the hag's.
pub fn app(listening: &[SocketAddr], state: Arc<ApiState>, token: BearerToken) -> AdminApp {
    let (settings, listening) = (state.settings.clone(), listening.to_vec());
    let config = settings.get();
    let mut app =
        AdminApp::new(ProcessInfo::new("hag", env!("CARGO_PKG_VERSION")), token, Arc::new(HagMetrics::new(state)))
            .status_detail(move || status_detail(&settings.get().config, &listening));
    if let Some(a) = &config.config.admin {
        app = app.limits(&a.config);
    }
    app
}

/// The complete admin router of a hag (what [`start`] serves), for tests.
pub fn router(listening: &[SocketAddr], state: Arc<ApiState>, token: BearerToken) -> Router {
    router_app(listening, state, token).0
}

/// The admin router and the token holder a reload replaces the token in.
fn router_app(listening: &[SocketAddr], state: Arc<ApiState>, token: BearerToken) -> (Router, Arc<Auth>) {
    let app = app(listening, state.clone(), token);
    let auth = app.auth();
    (app.router(api_router(state)), auth)
}

/// Binds the admin API of `hag` as its config's `admin` section says and serves it until `shutdown`, with the
/// token holder a reload replaces the token in. `Ok(None)` (and a log line) when the config has no `admin:`
/// section. Must be called inside a tokio runtime.
pub fn start(
    hag: &Hag,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Option<(RunningAdmin, Arc<Auth>)>, AdminError> {
    let settings = hag.settings();
    let Some(a) = settings.get().config.admin.clone() else {
        info!("no admin section in the config: admin API off");
        return Ok(None);
    };
    let state = Arc::new(ApiState::new(settings, hag.stats(), hag.connections()));
    let (router, auth) = router_app(&hag.local_addrs(), state, a.token.clone());
    admin::spawn(&a.config.listen, router, shutdown).map(|running| Some((running, auth)))
}
