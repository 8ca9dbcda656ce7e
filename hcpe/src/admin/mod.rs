//! hcpe's admin REST API and status page: its own routes (`/api/v1/uplinks[/{name}]`,
//! `/api/v1/connections[/{id}]`, `/api/v1/reload`), its `/metrics` families ([`metrics::HcpeMetrics`]) and its
//! `/api/v1/status` detail (a config summary); `common::admin` adds auth,
//! `/healthz`, `/metrics`, `/api/v1/status`, JSON errors and limits around them, and [`start`] serves them.
//! `GET /` is the status page ([`page`]), served without a token (it holds no data and asks for the token).
//!
//! Connection ids (RFC 6897 CONNID) are `common::admin::ConnId`s: the local MPTCP token of the connection to
//! hag, or `tcp-<n>` (hcpe's sequence number) for one without a token (carried directly, fell back to TCP, or
//! still connecting).
//!
//! Invariants:
//! - Nothing here shows a secret: the CPE key, the admin token and their file names never reach a response.
//! - Every route of [`api_router`] is registered with its `#[utoipa::path]` operation, so the served OpenAPI
//!   document lists exactly the routes (`common::admin::openapi`).
//! - Uplink metric labels come only from configured uplink names, so label cardinality is bounded by the config.
//! - A reload never replaces the running config with an invalid one: the new file is validated whole first.

pub mod api;
pub mod metrics;
pub mod page;
pub mod reload;

use std::future::Future;
use std::sync::{Arc, OnceLock};

use axum::Router;
use common::admin::{self, AdminApp, AdminError, ApiError, Auth, BearerToken, ProcessInfo};
use serde_json::{Value, json};
use tracing::info;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;
use crate::conn;
use crate::uplink::UplinkControl;
use crate::uplink::volume::VolumeHandle;
pub use common::admin::RunningAdmin;
pub use reload::{LogLevelSetter, Reloader};

/// What the API handlers read and act on.
#[derive(Debug)]
pub struct ApiState {
    /// The connection tasks' shared state: config they run with, outcome counters, open connections.
    pub conns: Arc<conn::Shared>,
    /// Live uplink state and mode changes; `None` when the uplink manager could not start.
    pub uplinks: Option<UplinkControl>,
    /// Per-uplink volume and rates; `None` when no volume tracker runs.
    pub volume: Option<VolumeHandle>,
    /// `POST /api/v1/reload`.
    pub reload: Reloader,
    /// The admin token holder, set once the app is built (a reload may replace the token).
    pub auth: OnceLock<Arc<Auth>>,
}

impl ApiState {
    /// State over a running daemon's parts.
    pub fn new(
        conns: Arc<conn::Shared>,
        uplinks: Option<UplinkControl>,
        volume: Option<VolumeHandle>,
        reload: Reloader,
    ) -> Self {
        ApiState { conns, uplinks, volume, reload, auth: OnceLock::new() }
    }

    /// The config the daemon runs with.
    pub fn config(&self) -> &Config {
        &self.conns.config
    }

    /// Reloads the config file (`POST /api/v1/reload`, SIGHUP).
    pub async fn reload_now(&self) -> Result<reload::ReloadOutcome, ApiError> {
        self.reload.reload(self.uplinks.as_ref(), self.auth.get(), Some(&self.conns.pool)).await
    }
}

/// hcpe's own routes with their OpenAPI operations, state applied (no auth: [`AdminApp::router`] adds it),
/// plus the status page at `/`.
pub fn api_router(state: Arc<ApiState>) -> OpenApiRouter {
    api_routes().with_state(state)
}

fn api_routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new()
        .routes(routes!(api::list_uplinks))
        .routes(routes!(api::get_uplink, api::patch_uplink))
        .routes(routes!(api::list_connections))
        .routes(routes!(api::get_connection, api::delete_connection))
        .routes(routes!(api::reload))
        .routes(routes!(page::handler))
}

/// The OpenAPI document hcpe serves at `/api/v1/openapi.json` (it needs no running daemon).
pub fn openapi() -> utoipa::openapi::OpenApi {
    admin::openapi::document("hcpe", env!("CARGO_PKG_VERSION"), api_routes().into_openapi())
}

/// The config summary of `/api/v1/status` (no secrets: no key, no token, no file names).
pub fn status_detail(config: &Config) -> Value {
    let t = &config.tun;
    let l = &config.limits;
    json!({
        "cpe_id": config.cpe_id,
        "hag_addresses": config.hag_addresses,
        "fastopen": config.fastopen,
        "zero_rtt": match (config.pool.enabled(), config.fastopen) {
            (true, _) => "pool",
            (false, true) => "fastopen",
            (false, false) => "none",
        },
        "pool": {
            "min": config.pool.min, "max": config.pool.max, "max_age_seconds": config.pool.max_age.as_secs_f64(),
        },
        "lan_interfaces": config.lan_interfaces,
        "tun": {
            "name": t.name, "ipv4": t.ipv4.map(|n| n.to_string()), "ipv6": t.ipv6.map(|n| n.to_string()),
            "mtu": t.mtu, "listen_port": t.listen_port, "queues": t.queues, "offload": t.offload,
        },
        "uplinks": config.uplinks.iter().map(|u| json!({
            "name": u.name,
            "interface": u.interface,
            "role": u.role,
            "mode": u.mode.as_str(),
            "ipv4": u.ipv4.map(|f| f.address.to_string()),
            "ipv6": u.ipv6.map(|f| f.address.to_string()),
            "quota_bytes": u.quota.map(|q| q.limit.as_u64()),
        })).collect::<Vec<_>>(),
        "bypass": config.bypass.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "fallback": match config.fallback {
            crate::config::Fallback::Direct => "direct",
            crate::config::Fallback::Reject => "reject",
        },
        "limits": {
            "idle_timeout_seconds": l.idle_timeout.as_secs_f64(),
            "connect_timeout_seconds": l.connect_timeout.as_secs_f64(),
            "reply_timeout_seconds": l.reply_timeout.as_secs_f64(),
            "nat_pool_addresses": l.nat_pool_addresses,
        },
        "probe": {
            "enabled": config.probe.enabled,
            "interval_seconds": config.probe.interval.as_secs_f64(),
            "down_after": config.probe.down_after,
            "up_after": config.probe.up_after,
        },
        "log_level": config.log_level,
        "admin_listen": config.admin.as_ref().map(|a| &a.config.listen),
    })
}

/// The whole admin app of an hcpe: shared routes from `common::admin` plus hcpe's.
pub fn app(state: Arc<ApiState>, token: BearerToken) -> AdminApp {
    let detail = status_detail(state.config());
    let mut app = AdminApp::new(
        ProcessInfo::new("hcpe", env!("CARGO_PKG_VERSION")),
        token,
        Arc::new(metrics::HcpeMetrics::new(state.clone())),
    )
    .status_detail(move || detail.clone())
    .public_path("/");
    if let Some(a) = &state.config().admin {
        app = app.limits(&a.config);
    }
    let _ = state.auth.set(app.auth());
    app
}

/// The complete admin router of an hcpe (what [`start`] serves), for tests.
pub fn router(state: Arc<ApiState>, token: BearerToken) -> Router {
    app(state.clone(), token).router(api_router(state))
}

/// Binds the admin API as `config.admin` says and serves it until `shutdown`. `Ok(None)` (and a log line)
/// when the config has no `admin:` section. Must be called inside a tokio runtime.
pub fn start(
    state: Arc<ApiState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Option<RunningAdmin>, AdminError> {
    let Some(a) = state.config().admin.clone() else {
        info!("no admin section in the config: admin API off");
        return Ok(None);
    };
    let running = admin::spawn(&a.config.listen, router(state, a.token), shutdown)?;
    info!(addrs = ?running.addrs, "admin API started");
    Ok(Some(running))
}
