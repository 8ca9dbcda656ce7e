//! hcpe's admin REST API and status page: its own routes (`/api/v1/uplinks[/{name}]`,
//! `/api/v1/connections[/{id}]`, `/api/v1/reload`), its `/metrics` families ([`metrics::HcpeMetrics`]), its
//! `/api/v1/status` detail (a config summary) and its part of the OpenAPI document; `common::admin` adds auth,
//! `/healthz`, `/metrics`, `/api/v1/status`, JSON errors and limits around them, and [`start`] serves them.
//! `GET /` is the status page ([`page`]), served without a token (it holds no data and asks for the token).
//!
//! Connection ids (RFC 6897 CONNID) are `common::admin::ConnId`s: the local MPTCP token of the connection to
//! hag, or `tcp-<n>` (hcpe's sequence number) for one without a token (carried directly, fell back to TCP, or
//! still connecting).
//!
//! Invariants:
//! - Nothing here shows a secret: the CPE key, the admin token and their file names never reach a response.
//! - Every route of [`api_router`] is in [`openapi`] and the other way round (tested with
//!   `testkit::admin::missing_operations`).
//! - Uplink metric labels come only from configured uplink names, so label cardinality is bounded by the config.
//! - A reload never replaces the running config with an invalid one: the new file is validated whole first.

pub mod api;
pub mod metrics;
pub mod page;
pub mod reload;

use std::future::Future;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::routing::{get, post};
use common::admin::{self, AdminApp, AdminError, Auth, BearerToken, ProcessInfo, conn_id};
use serde_json::{Value, json};
use tracing::info;

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
}

/// hcpe's own routes, state applied (no auth: [`AdminApp::router`] adds it), plus the status page at `/`.
pub fn api_router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/uplinks", get(api::list_uplinks))
        .route("/api/v1/uplinks/{name}", get(api::get_uplink).patch(api::patch_uplink))
        .route("/api/v1/connections", get(api::list_connections))
        .route("/api/v1/connections/{id}", get(api::get_connection).delete(api::delete_connection))
        .route("/api/v1/reload", post(api::reload))
        .with_state(state)
        .route("/", get(page::handler))
}

/// The config summary of `/api/v1/status` (no secrets: no key, no token, no file names).
pub fn status_detail(config: &Config) -> Value {
    let t = &config.tun;
    let l = &config.limits;
    json!({
        "cpe_id": config.cpe_id,
        "hag_addresses": config.hag_addresses,
        "fastopen": config.fastopen,
        "lan_interfaces": config.lan_interfaces,
        "tun": {
            "name": t.name, "ipv4": t.ipv4.map(|n| n.to_string()), "ipv6": t.ipv6.map(|n| n.to_string()),
            "mtu": t.mtu, "listen_port": t.listen_port, "queues": t.queues, "offload": t.offload,
        },
        "uplinks": config.uplinks.iter().map(|u| json!({
            "name": u.name,
            "interface": u.interface,
            "role": api::role_str(u.role),
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
    .openapi(openapi())
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

/// hcpe's part of the OpenAPI document (merged by [`AdminApp::openapi`]).
pub fn openapi() -> Value {
    let name_param = json!({
        "name": "name", "in": "path", "required": true, "description": "Uplink name from the config.",
        "schema": { "type": "string" }
    });
    let r = |name: &str| json!({ "$ref": format!("#/components/responses/{name}") });
    let schema = |name: &str| json!({ "$ref": format!("#/components/schemas/{name}") });
    let json_body = |s: Value| json!({ "application/json": { "schema": s } });
    let addr = json!({ "type": "string", "nullable": true, "description": "address:port" });
    let count = json!({ "type": "integer", "minimum": 0 });
    let opt_num = json!({ "type": "number", "nullable": true });
    let mode = json!({ "type": "string", "enum": ["active", "backup", "standby", "off"] });
    json!({
        "paths": {
            "/": { "get": {
                "summary": "Status page (HTML, no data in it; needs no token, asks for it in the URL fragment).",
                "security": [],
                "responses": { "200": { "description": "The page.",
                    "content": { "text/html": { "schema": { "type": "string" } } } } }
            } },
            "/api/v1/uplinks": { "get": {
                "summary": "Every uplink: health, mode, RTT, loss, endpoint flags, addresses, volume and rates.",
                "responses": {
                    "200": { "description": "Uplinks in config order.",
                        "content": json_body(json!({ "type": "array", "items": schema("Uplink") })) },
                    "401": r("Unauthorized")
                }
            } },
            "/api/v1/uplinks/{name}": {
                "parameters": [name_param],
                "get": {
                    "summary": "One uplink.",
                    "responses": {
                        "200": { "description": "The uplink.", "content": json_body(schema("Uplink")) },
                        "401": r("Unauthorized"), "404": r("NotFound")
                    }
                },
                "patch": {
                    "summary": "Changes the uplink's mode live (endpoint flags, MP_PRIO to hag, subflows added or \
                                removed); lasts until a restart or a reload that changes the uplink's mode in the file.",
                    "requestBody": { "required": true, "content": json_body(schema("UplinkPatch")) },
                    "responses": {
                        "200": { "description": "The uplink after the change.", "content": json_body(schema("Uplink")) },
                        "400": r("BadRequest"), "401": r("Unauthorized"), "404": r("NotFound"),
                        "409": { "description": "Refused: every uplink would be off, or no uplink manager runs.",
                            "content": json_body(schema("Error")) },
                        "500": { "description": "Mode recorded, but the kernel refused the endpoint change.",
                            "content": json_body(schema("Error")) }
                    }
                }
            },
            "/api/v1/connections": { "get": {
                "summary": "Open LAN connections with their subflows (RFC 6897 CONNID and SUBFLOWS).",
                "responses": {
                    "200": { "description": "Connections, oldest first.",
                        "content": json_body(json!({ "type": "array", "items": schema("Connection") })) },
                    "401": r("Unauthorized")
                }
            } },
            "/api/v1/connections/{id}": conn_id::openapi_path_item(
                "Local MPTCP token of the connection to hag as 8 hex digits (`0x` prefix accepted), or `tcp-<n>` \
                 for a connection without one.",
                "Closes the connection: the relay stops and both sockets (LAN and hag) are closed.",
            ),
            "/api/v1/reload": { "post": {
                "summary": "Re-reads the config file the daemon started with. Invalid: 400 naming the field, the \
                            running config stays. Valid: uplink modes, log level and admin token apply at once; \
                            the response lists the changes that need a restart.",
                "responses": {
                    "200": { "description": "Reloaded.", "content": json_body(schema("Reload")) },
                    "400": r("BadRequest"), "401": r("Unauthorized"),
                    "409": { "description": "The daemon was not started from a config file.",
                        "content": json_body(schema("Error")) }
                }
            } }
        },
        "components": { "schemas": {
            "UplinkPatch": { "type": "object", "required": ["mode"], "additionalProperties": false,
                "properties": { "mode": mode } },
            "Uplink": { "type": "object",
                "required": ["name", "interface", "role", "mode", "state", "health_source", "trial",
                             "subflow_fallbacks", "mptcp", "initial",
                             "addresses", "rtt_ms", "loss", "endpoint", "volume"],
                "properties": {
                    "name": { "type": "string" }, "interface": { "type": "string" },
                    "role": { "type": "string", "enum": ["primary", "secondary"] },
                    "mode": mode,
                    "state": { "type": "string", "enum": ["up", "down", "unknown"] },
                    "health_source": { "type": "string", "enum": ["probes", "subflows"], "description":
                        "subflows: no probe is answered on any uplink (UDP to hag filtered), so the kernel's view of the uplink's MPTCP subflows decides." },
                    "trial": { "type": "boolean", "description": "After its subflows failed, tried again: usable, last for new connections." },
                    "subflow_fallbacks": { "type": "integer", "description": "Times its health switched from the probes to its subflows." },
                    "mptcp": { "type": "object", "required": ["fallbacks", "join_failures", "stripped", "joins_fail"],
                        "description": "How MPTCP fares through the uplink (a middlebox may strip the MPTCP option).",
                        "properties": {
                            "fallbacks": { "type": "integer", "description": "Connections started on it that fell back to plain TCP." },
                            "join_failures": { "type": "integer", "description": "Joins over it that failed." },
                            "stripped": { "type": "boolean", "description": "New connections start on another uplink first." },
                            "joins_fail": { "type": "boolean", "description": "Its endpoint is withdrawn: no aggregation over it." } } },
                    "initial": { "type": "boolean", "description": "New connections start on this uplink now." },
                    "addresses": { "type": "array", "items": { "type": "string" } },
                    "rtt_ms": opt_num, "loss": { "type": "number", "nullable": true, "minimum": 0, "maximum": 1 },
                    "carrier": { "type": "boolean", "nullable": true },
                    "endpoint": { "type": "object", "nullable": true, "properties": {
                        "signal": { "type": "boolean" }, "subflow": { "type": "boolean" },
                        "backup": { "type": "boolean" }, "fullmesh": { "type": "boolean" } } },
                    "probe": { "type": "object", "nullable": true, "additionalProperties": { "type": "integer" } },
                    "volume": { "allOf": [schema("Volume")], "nullable": true }
                } },
            "Volume": { "type": "object", "properties": {
                "rx_bytes": count, "tx_bytes": count, "period_bytes": count, "period_start_unix": count,
                "quota_bytes": { "type": "integer", "nullable": true }, "over_quota": { "type": "boolean" },
                "rx_bps": count, "tx_bps": count,
                "history": { "type": "array", "items": { "type": "object", "properties": {
                    "t_unix_ms": count, "rx_bps": count, "tx_bps": count } } }
            } },
            "Subflow": { "type": "object",
                "required": ["id", "local", "remote", "bytes_sent", "bytes_received", "rtt_us", "backup"],
                "properties": {
                    "id": count, "local": addr, "remote": addr, "bytes_sent": count, "bytes_received": count,
                    "rtt_us": count, "tcp_state": count,
                    "backup": { "type": "boolean", "nullable": true,
                        "description": "Carries data only when no non-backup subflow can (either side asked)." },
                    "backup_local": { "type": "boolean", "nullable": true },
                    "backup_remote": { "type": "boolean", "nullable": true }
                } },
            "Connection": { "type": "object",
                "required": ["id", "token", "client", "destination", "uplink_initial", "fallback", "age_seconds",
                             "bytes_up", "bytes_down", "subflows"],
                "properties": {
                    "id": { "type": "string" },
                    "token": { "type": "integer", "minimum": 0, "nullable": true },
                    "client": { "type": "string" }, "destination": { "type": "string" },
                    "uplink_initial": { "type": "string", "nullable": true },
                    "fallback": { "type": "boolean" },
                    "direct": { "type": "boolean" },
                    "accepted_unix": count,
                    "age_seconds": { "type": "number" },
                    "bytes_up": count, "bytes_down": count,
                    "subflows": { "type": "array", "items": schema("Subflow") }
                } },
            "Reload": { "type": "object", "required": ["reloaded", "changed", "applied", "restart_required"],
                "properties": {
                    "reloaded": { "type": "boolean" },
                    "changed": { "type": "array", "items": { "type": "string" } },
                    "applied": { "type": "array", "items": { "type": "string" } },
                    "restart_required": { "type": "array", "items": { "type": "string" } }
                } }
        } }
    })
}
