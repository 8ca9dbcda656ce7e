//! Admin API pieces both daemons mount: config section, bearer auth, JSON errors, `/healthz`, `/metrics`,
//! `/api/v1/status`, `/api/v1/openapi.json` (generated from the routes: [`openapi`]), limits, and serving on the
//! configured addresses.
//!
//! A daemon builds its own `OpenApiRouter` of `/api/v1/...` routes (each handler with its `#[utoipa::path]`,
//! state applied), then [`AdminApp::router`] adds the shared routes, the document and the layers around it, and
//! [`serve`] runs it:
//!
//! ```ignore
//! let token = cfg.admin.load_token("admin.token_file", SecretFiles::Refuse)?;
//! let app = AdminApp::new(ProcessInfo::new("hcpe", env!("CARGO_PKG_VERSION")), token, metrics)
//!     .limits(&cfg.admin)
//!     .status_detail(move || serde_json::json!({ "uplinks": summary.clone() }));
//! let api = OpenApiRouter::new().routes(routes!(list_uplinks)).with_state(state);
//! let listeners = admin::bind(&cfg.admin.listen)?;
//! tokio::spawn(admin::serve(listeners, app.router(api), shutdown));
//! ```
//!
//! Invariants:
//! - Every route but the public ones (`/healthz`, plus any added with [`AdminApp::public_path`]) needs
//!   `Authorization: Bearer <token>`; the token is never logged or returned (see [`auth`]).
//! - Every error response is JSON `{"error": "..."}`: handlers' [`ApiError`]s, unknown routes (404), wrong
//!   methods (405), malformed bodies (400), bodies over the limit (413), requests over the timeout (408), 401.
//! - Nothing listens on a non-loopback address unless the operator configured it; then a warning says the token
//!   crosses the network in clear text.

pub mod auth;
pub mod conn_id;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod subflow;
pub mod table;

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use futures::FutureExt as _;
use serde::{Deserialize, Deserializer, Serialize};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use auth::{Auth, AuthGate, BearerToken};
pub use conn_id::{ConnId, ConnIdPath, HasConnId};
pub use error::{ApiError, ApiJson, ApiPath};
pub use metrics::{MetricType, Metrics, MetricsWriter};
pub use subflow::SubflowView;
pub use table::Table;

use crate::config::{self as cfg, ConfigError};

/// Default request body limit: admin requests are small JSON documents.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

/// Default time a request may take, body reading included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of binding and serving the admin API.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A configured listen address could not be bound (in use, not a local address, no permission).
    #[error("admin API: cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The server stopped with an I/O error.
    #[error("admin API: server failed: {0}")]
    Serve(#[source] io::Error),
}

/// The `admin:` section of a daemon config. `DEFAULT_PORT` is the daemon's admin port, used for the default
/// listen address and for bare addresses in `listen`.
///
/// ```yaml
/// admin:
///   listen: ["127.0.0.1", "[::1]:9124"]   # default: 127.0.0.1:DEFAULT_PORT
///   token_file: admin.token              # relative to the config file
///   request_timeout: 10s                 # default 10s
///   max_body_bytes: 65536                # default 64 KiB
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig<const DEFAULT_PORT: u16> {
    /// Addresses to serve on; a bare address gets `DEFAULT_PORT`. Default: `127.0.0.1:DEFAULT_PORT`.
    #[serde(default = "default_listen::<DEFAULT_PORT>", deserialize_with = "de_listen::<DEFAULT_PORT, _>")]
    pub listen: Vec<SocketAddr>,
    /// File holding the bearer token (see [`BearerToken::from_file`]).
    pub token_file: PathBuf,
    /// Longest time a request may take.
    #[serde(default = "default_timeout", with = "cfg::duration")]
    pub request_timeout: Duration,
    /// Largest request body accepted.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

fn default_listen<const P: u16>() -> Vec<SocketAddr> {
    vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), P)]
}

fn de_listen<'de, const P: u16, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    Ok(Vec::<ListenAddr<P>>::deserialize(d)?.into_iter().map(|a| a.0).collect())
}

/// One `listen` entry; its own type so a bad entry's error names its index (`listen[1]`).
struct ListenAddr<const P: u16>(SocketAddr);

impl<'de, const P: u16> Deserialize<'de> for ListenAddr<P> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        cfg::parse_addr_with_default_port(&s, P).map(ListenAddr).map_err(serde::de::Error::custom)
    }
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

fn default_max_body() -> usize {
    DEFAULT_MAX_BODY
}

impl<const DEFAULT_PORT: u16> AdminConfig<DEFAULT_PORT> {
    /// A config with the defaults and this token file.
    pub fn with_token_file(token_file: impl Into<PathBuf>) -> Self {
        AdminConfig {
            listen: default_listen::<DEFAULT_PORT>(),
            token_file: token_file.into(),
            request_timeout: DEFAULT_TIMEOUT,
            max_body_bytes: DEFAULT_MAX_BODY,
        }
    }

    /// Checks values serde cannot; `section` is the section's field path (e.g. `admin`) for the error.
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(ConfigError::invalid(format!("{section}.listen"), "needs at least one address"));
        }
        for (i, a) in self.listen.iter().enumerate() {
            if a.port() == 0 {
                return Err(ConfigError::invalid(format!("{section}.listen[{i}]"), "port 0 is not a service port"));
            }
            if self.listen[..i].contains(a) {
                return Err(ConfigError::invalid(format!("{section}.listen[{i}]"), format!("{a} is listed twice")));
            }
        }
        if self.request_timeout.is_zero() {
            return Err(ConfigError::invalid(format!("{section}.request_timeout"), "must be more than 0"));
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError::invalid(format!("{section}.max_body_bytes"), "must be more than 0"));
        }
        Ok(())
    }

    /// Makes `token_file` relative to the config file at `config_path` (see [`cfg::resolve_relative`]).
    pub fn resolve_paths(&mut self, config_path: &Path) {
        self.token_file = cfg::resolve_relative(config_path, &self.token_file);
    }

    /// Reads the token file; `field` names it in errors (e.g. `admin.token_file`).
    pub fn load_token(&self, field: &str, policy: cfg::SecretFiles) -> Result<BearerToken, ConfigError> {
        BearerToken::from_file(field, &self.token_file, policy)
    }

    /// The whole check of a parsed section at field path `section` of the config file at `config_path`:
    /// [`validate`](Self::validate), [`resolve_paths`](Self::resolve_paths), then the token file read (its
    /// mode checked as `policy` says).
    pub fn load(
        mut self,
        section: &str,
        config_path: &Path,
        policy: cfg::SecretFiles,
    ) -> Result<AdminSection<DEFAULT_PORT>, ConfigError> {
        self.validate(section)?;
        self.resolve_paths(config_path);
        let token = self.load_token(&format!("{section}.token_file"), policy)?;
        Ok(AdminSection { config: self, token })
    }
}

/// A validated `admin:` section with its token loaded (so `--check-config` proves the token file is usable).
#[derive(Debug, Clone)]
pub struct AdminSection<const DEFAULT_PORT: u16> {
    /// The section, `token_file` resolved against the config file's directory.
    pub config: AdminConfig<DEFAULT_PORT>,
    /// The bearer token (`Debug` redacts it).
    pub token: BearerToken,
}

/// Who is running and since when, for `/api/v1/status` and `/metrics`.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    /// Daemon name (`hcpe`, `hag`); also the metric name prefix, so it must be a valid metric name.
    pub daemon: &'static str,
    /// Version string (`env!("CARGO_PKG_VERSION")`).
    pub version: &'static str,
    started: Instant,
    started_unix: u64,
}

impl ProcessInfo {
    /// Records now as the start time.
    pub fn new(daemon: &'static str, version: &'static str) -> Self {
        debug_assert!(metrics::valid_metric_name(daemon), "daemon name {daemon:?} is not a metric prefix");
        let started_unix =
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        ProcessInfo { daemon, version, started: Instant::now(), started_unix }
    }

    /// Time since start (monotonic clock).
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The status document: identity and uptime, then the daemon's `detail` fields flattened in.
    pub fn status(&self, detail: BTreeMap<String, serde_json::Value>) -> Status {
        Status {
            daemon: self.daemon,
            version: self.version,
            uptime_seconds: self.uptime().as_secs(),
            started_unix: self.started_unix,
            detail,
        }
    }
}

/// Body of `GET /api/v1/status`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Status {
    /// Daemon name.
    pub daemon: &'static str,
    /// Daemon version.
    pub version: &'static str,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Start time, seconds since the Unix epoch.
    pub started_unix: u64,
    /// Daemon-specific fields (config summary without secrets), flattened into the object.
    #[serde(flatten)]
    pub detail: BTreeMap<String, serde_json::Value>,
}

type StatusDetail = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Assembles the admin router: the daemon's API routes plus `/healthz`, `/metrics`, `/api/v1/status`, auth,
/// JSON errors, body limit and timeout.
pub struct AdminApp {
    process: ProcessInfo,
    auth: Arc<Auth>,
    metrics: Arc<dyn Metrics>,
    status_detail: StatusDetail,
    public: Vec<String>,
    max_body: usize,
    timeout: Duration,
}

impl std::fmt::Debug for AdminApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminApp")
            .field("process", &self.process)
            .field("public", &self.public)
            .field("max_body", &self.max_body)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Path of the unauthenticated liveness route.
pub const HEALTHZ: &str = "/healthz";

impl AdminApp {
    /// An app with default limits; `metrics` is written on each scrape after the process' own metrics, all
    /// under the prefix `<daemon>_`.
    pub fn new(process: ProcessInfo, token: BearerToken, metrics: Arc<dyn Metrics>) -> Self {
        AdminApp {
            auth: Arc::new(Auth::new(token)),
            metrics,
            status_detail: Arc::new(|| serde_json::Value::Object(Default::default())),
            public: vec![HEALTHZ.to_owned()],
            max_body: DEFAULT_MAX_BODY,
            timeout: DEFAULT_TIMEOUT,
            process,
        }
    }

    /// The token holder, for the daemon to replace the token on a config reload ([`Auth::set_token`]).
    pub fn auth(&self) -> Arc<Auth> {
        self.auth.clone()
    }

    /// Takes body limit and timeout from the config section.
    pub fn limits<const P: u16>(mut self, cfg: &AdminConfig<P>) -> Self {
        self.max_body = cfg.max_body_bytes;
        self.timeout = cfg.request_timeout;
        self
    }

    /// Serves `path` (exact match) without authentication, e.g. `/` for a status page that asks for the token
    /// itself. Only for routes that show nothing secret and change nothing.
    pub fn public_path(mut self, path: impl Into<String>) -> Self {
        self.public.push(path.into());
        self
    }

    /// Fields the daemon adds to `/api/v1/status` (a JSON object; e.g. a config summary without secrets).
    pub fn status_detail(mut self, f: impl Fn() -> serde_json::Value + Send + Sync + 'static) -> Self {
        self.status_detail = Arc::new(f);
        self
    }

    /// The complete router and its OpenAPI document (served at [`openapi::PATH`]). `api` holds the daemon's
    /// routes, each registered with its `#[utoipa::path]` operation (state applied); it must not define
    /// `/healthz`, `/metrics`, `/api/v1/status` or `/api/v1/openapi.json`, and needs no fallback (unknown routes
    /// get the JSON 404 here).
    pub fn router(self, api: OpenApiRouter) -> Router {
        let auth = self.auth;
        let gate = AuthGate::new(auth.clone(), self.public);
        let (daemon, version) = (self.process.daemon, self.process.version);
        let shared = Arc::new(Shared {
            process: self.process,
            metrics: self.metrics,
            auth: auth.clone(),
            status_detail: self.status_detail,
            openapi: OnceLock::new(),
        });
        let ctx = error::ErrorContext { max_body: self.max_body, timeout: self.timeout };
        let (api, api_doc) = api.split_for_parts();
        // The served document comes from the very routes served (the shared ones are collected once).
        let (routes, shared_doc) = shared_routes().with_state(shared.clone()).split_for_parts();
        let doc = openapi::assemble(shared_doc, api_doc, daemon, version);
        let doc = serde_json::to_vec_pretty(&doc).expect("an OpenAPI document serializes");
        let _ = shared.openapi.set(axum::body::Bytes::from(doc));
        // Layers run outermost last-added: JSON errors, timeout, auth, body limit, routes.
        routes
            .merge(api)
            .fallback(error::not_found)
            .layer(RequestBodyLimitLayer::new(self.max_body))
            .layer(axum::middleware::from_fn_with_state(gate, auth::require_bearer))
            .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, self.timeout))
            .layer(axum::middleware::map_response_with_state(ctx, error::json_errors))
    }
}

/// The routes every daemon serves, with their operations.
fn shared_routes() -> OpenApiRouter<Arc<Shared>> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(metrics_handler))
        .routes(routes!(status_handler))
        .routes(routes!(openapi_handler))
}

/// The operations of the routes every daemon serves (see [`openapi::document`]).
pub(crate) fn shared_operations() -> utoipa::openapi::OpenApi {
    shared_routes().into_openapi()
}

struct Shared {
    process: ProcessInfo,
    metrics: Arc<dyn Metrics>,
    auth: Arc<Auth>,
    status_detail: StatusDetail,
    /// The serialized OpenAPI document, set once the routes are collected.
    openapi: OnceLock<axum::body::Bytes>,
}

/// Liveness; needs no token.
#[utoipa::path(get, path = "/healthz", security(()), responses(
    (status = 200, description = "The daemon is running.", body = String, content_type = "text/plain"),
))]
async fn healthz() -> &'static str {
    "ok"
}

/// Prometheus text exposition (format 0.0.4).
#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "Metrics.", body = String, content_type = "text/plain"),
    (status = 401, response = openapi::Unauthorized),
))]
async fn metrics_handler(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let mut w = MetricsWriter::with_prefix(&format!("{}_", s.process.daemon));
    w.family("build_info", "Version of the running daemon (value is always 1).", MetricType::Gauge)
        .sample(&[("version", s.process.version)], 1u8);
    w.gauge("uptime_seconds", "Seconds since the daemon started.", s.process.uptime().as_secs_f64());
    w.counter(
        "admin_auth_failures_total",
        "Admin API requests refused for a missing or wrong bearer token.",
        s.auth.failures(),
    );
    s.metrics.write_metrics(&mut w);
    ([(CONTENT_TYPE, metrics::CONTENT_TYPE)], w.finish())
}

/// Daemon identity, uptime and a config summary (no secrets).
#[utoipa::path(get, path = "/api/v1/status", responses(
    (status = 200, description = "Status.", body = Status),
    (status = 401, response = openapi::Unauthorized),
))]
async fn status_handler(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let detail = match (s.status_detail)() {
        serde_json::Value::Object(fields) => fields.into_iter().collect(),
        other => BTreeMap::from([("detail".to_owned(), other)]),
    };
    axum::Json(s.process.status(detail))
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", responses(
    (status = 200, description = "OpenAPI 3 document.", body = serde_json::Value),
    (status = 401, response = openapi::Unauthorized),
))]
async fn openapi_handler(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], s.openapi.get().cloned().unwrap_or_default())
}

/// Binds every address (must be called inside a tokio runtime). IPv6 sockets are IPv6-only so `0.0.0.0` and
/// `::` can both be listed; `SO_REUSEADDR` lets a restarted daemon bind at once. A non-loopback address is
/// allowed (the operator configured it) with a warning that the API is plain HTTP.
pub fn bind(addrs: &[SocketAddr]) -> Result<Vec<tokio::net::TcpListener>, AdminError> {
    addrs
        .iter()
        .map(|&addr| {
            if !addr.ip().is_loopback() {
                tracing::warn!(
                    %addr,
                    "admin API listens on a non-loopback address: it is plain HTTP, so the bearer token crosses \
                     the network in clear text; prefer loopback or a protected management network"
                );
            }
            bind_one(addr).map_err(|source| AdminError::Bind { addr, source })
        })
        .collect()
}

fn bind_one(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(128)?;
    tokio::net::TcpListener::from_std(sock.into())
}

/// A running admin API (see [`spawn`]).
#[derive(Debug)]
pub struct RunningAdmin {
    /// The bound addresses.
    pub addrs: Vec<SocketAddr>,
    /// The server task; it ends after the shutdown future completes and requests in flight finish.
    pub task: tokio::task::JoinHandle<Result<(), AdminError>>,
}

/// [`bind`]s `listen` and spawns [`serve`] of `router` on it until `shutdown`. Must be called inside a tokio
/// runtime.
pub fn spawn(
    listen: &[SocketAddr],
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunningAdmin, AdminError> {
    let listeners = bind(listen)?;
    let addrs: Vec<SocketAddr> = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
    Ok(RunningAdmin { addrs, task: tokio::spawn(serve(listeners, router, shutdown)) })
}

/// Serves `router` on every listener until `shutdown` completes, then lets requests in flight finish.
pub async fn serve(
    listeners: Vec<tokio::net::TcpListener>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AdminError> {
    let shutdown = shutdown.shared();
    let mut tasks = tokio::task::JoinSet::new();
    for l in listeners {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "admin API listening");
        }
        tasks.spawn(
            axum::serve(l, router.clone().into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(shutdown.clone())
                .into_future(),
        );
    }
    while let Some(res) = tasks.join_next().await {
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(AdminError::Serve(e)),
            Err(join) => return Err(AdminError::Serve(io::Error::other(join))),
        }
    }
    Ok(())
}
