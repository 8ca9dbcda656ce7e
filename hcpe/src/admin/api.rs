//! Handlers and JSON views of hcpe's `/api/v1/...` routes (their shapes are documented in the OpenAPI document
//! in the parent module).
//!
//! Invariants: a view is read from live state at request time (no cache); a handler that changes state
//! (PATCH, DELETE, reload) logs what it changed; errors are [`ApiError`]s (JSON `{"error": ...}`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::UNIX_EPOCH;

use axum::extract::State;
use axum::http::StatusCode;
use common::admin::openapi::{BadRequest, ErrorBody, NotFound, Unauthorized};
use common::admin::{ApiError, ApiJson, ApiPath, ConnIdPath, HasConnId};
use common::mptcp;
use common::pm::EndpointFlags;
use common::probe::HealthState;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};
use utoipa::{IntoParams, ToSchema};

use super::reload::ReloadOutcome;
use common::mptcp::subflow_diag::{self, DiagMap};

use super::ApiState;
use crate::conn::Connection;
use crate::uplink::adapt::{Carry, Reason};
use crate::uplink::volume::VolumeStatus;
use crate::uplink::{HealthSource, Mode, ModeReason, PathControlStatus, Role, SetModeError, UplinkStatus};

/// Endpoint flags as the API shows them.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[schema(as = Endpoint)]
pub struct EndpointView {
    pub signal: bool,
    pub subflow: bool,
    pub backup: bool,
    pub fullmesh: bool,
}

impl From<EndpointFlags> for EndpointView {
    fn from(f: EndpointFlags) -> Self {
        EndpointView {
            signal: f.contains(EndpointFlags::SIGNAL),
            subflow: f.contains(EndpointFlags::SUBFLOW),
            backup: f.contains(EndpointFlags::BACKUP),
            fullmesh: f.contains(EndpointFlags::FULLMESH),
        }
    }
}

/// One uplink as `GET /api/v1/uplinks` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Uplink)]
pub struct UplinkView {
    pub name: String,
    pub interface: String,
    pub role: Role,
    pub mode: Mode,
    /// `up`, `down` or `unknown` (not probed, or no verdict yet).
    pub state: HealthState,
    /// Where `state` comes from: `probes`, or `subflows` while no probe is answered on any uplink (UDP to hag
    /// filtered): then the kernel's view of the uplink's MPTCP subflows decides.
    pub health_source: HealthSource,
    /// After its subflows failed, the uplink is tried again: usable, last in line for new connections.
    pub trial: bool,
    /// Times its health switched from the probes to its subflows since start.
    pub subflow_fallbacks: u64,
    /// How MPTCP fares through the uplink.
    pub mptcp: MptcpPathView,
    /// New connections start on this uplink now.
    pub initial: bool,
    #[schema(value_type = Vec<String>)]
    pub addresses: Vec<IpAddr>,
    /// Smoothed probe RTT in milliseconds; `null` before the first answer or when not probed.
    pub rtt_ms: Option<f64>,
    /// Missed fraction of recent probes while the uplink was up (0..1; the misses of an outage make it `down`
    /// instead); `null` when not probed.
    pub loss: Option<f64>,
    /// Carrier of the uplink interface as the prober last saw it.
    pub carrier: Option<bool>,
    /// The MPTCP endpoint kept for this uplink now; `null`: none (standby, off, down).
    pub endpoint: Option<EndpointView>,
    /// Probe counters (sent, replies, ...); `null` when not probed.
    pub probe: Option<HashMap<&'static str, u64>>,
    /// Volume, quota and rates; `null` without a volume tracker.
    pub volume: Option<VolumeStatus>,
    /// An `adaptive` or `overflow` uplink: whether the path controller has it carry traffic now, and why;
    /// `null` for a pinned mode.
    pub path_control: Option<PathControlView>,
}

/// The path controller's standing of an `adaptive` or `overflow` uplink.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = PathControl)]
pub struct PathControlView {
    /// `active`: its endpoint has the `subflow` flag and it carries traffic; `backup`: `subflow,backup`, its
    /// subflows stand by (MP_PRIO told hag).
    pub carry: Carry,
    /// Decisions since start, per carry and reason.
    pub totals: Vec<DecisionTotal>,
    /// The latest decisions, oldest first.
    pub decisions: Vec<DecisionView>,
}

/// How many decisions of one kind the path controller made on an uplink.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DecisionTotal {
    pub to: Carry,
    pub reason: Reason,
    pub count: u64,
}

/// One decision of the path controller, with the measurements it was made on.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Decision)]
pub struct DecisionView {
    pub to: Carry,
    /// `rtt_excess`, `loss`, `head_of_line` (demoted); `recovered`, `trial`, `only_path` (promoted);
    /// `saturated`, `drained` (overflow joins, leaves).
    pub reason: Reason,
    /// When, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// The uplink's round trip then: its probes' median of the last second, or the smoothed round trip of its
    /// subflows that carried an upload where that was larger.
    pub rtt_ms: Option<f64>,
    /// What it was compared with: the best other carrying uplink's round trip (adaptive), or the carrying
    /// uplinks' smallest queueing delay (overflow).
    pub reference_ms: Option<f64>,
    /// The uplink's probe loss then (0..1).
    pub loss: f64,
}

impl From<&PathControlStatus> for PathControlView {
    fn from(p: &PathControlStatus) -> Self {
        let (now, wall) = (std::time::Instant::now(), std::time::SystemTime::now());
        let millis = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        PathControlView {
            carry: p.carry,
            totals: p
                .counts
                .iter()
                .map(|((to, reason), count)| DecisionTotal { to: *to, reason: *reason, count: *count })
                .collect(),
            decisions: p
                .decisions
                .iter()
                .map(|d| DecisionView {
                    to: d.to,
                    reason: d.reason,
                    at_unix_ms: (wall - now.saturating_duration_since(d.at))
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |t| t.as_millis() as u64),
                    rtt_ms: d.rtt.map(millis),
                    reference_ms: d.reference.map(millis),
                    loss: d.loss,
                })
                .collect(),
        }
    }
}

/// How MPTCP fares through one uplink, as `GET /api/v1/uplinks` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = MptcpPath)]
pub struct MptcpPathView {
    /// Connections that started on the uplink and fell back to plain TCP (MPTCP option stripped on the way?).
    pub fallbacks: u64,
    /// Joins over the uplink that failed.
    pub join_failures: u64,
    /// Connections on it fall back: new connections start on another uplink first (retried every 30 s).
    pub stripped: bool,
    /// Joins over it fail: its endpoint is withdrawn, no aggregation over it (retried every 30 s).
    pub joins_fail: bool,
}

impl From<&crate::uplink::mptcp_path::PathCheck> for MptcpPathView {
    fn from(p: &crate::uplink::mptcp_path::PathCheck) -> Self {
        let (stripped, joins_fail) = p.reported();
        MptcpPathView { fallbacks: p.fallbacks(), join_failures: p.join_failures(), stripped, joins_fail }
    }
}

impl UplinkView {
    /// Joins the uplink manager's view of `u` with its volume, if any.
    pub fn new(u: UplinkStatus, volume: Option<VolumeStatus>) -> Self {
        let h = u.health.as_ref();
        UplinkView {
            role: u.role,
            mode: u.mode,
            state: u.state,
            health_source: u.health_source,
            trial: u.trial,
            subflow_fallbacks: u.subflow_fallbacks,
            mptcp: MptcpPathView::from(&u.mptcp),
            initial: u.initial,
            addresses: u.addresses,
            rtt_ms: h.and_then(|h| h.srtt).map(|d| d.as_secs_f64() * 1000.0),
            loss: h.map(|h| h.loss),
            carrier: h.map(|h| h.carrier),
            endpoint: u.endpoint.map(EndpointView::from),
            probe: h.map(|h| {
                let s = &h.stats;
                HashMap::from([
                    ("sent", s.sent),
                    ("send_errors", s.send_errors),
                    ("replies", s.replies),
                    ("late_replies", s.late_replies),
                    ("bad_replies", s.bad_replies),
                    ("rebinds", s.rebinds),
                    ("recv_errors", s.recv_errors),
                ])
            }),
            volume,
            path_control: u.path_control.as_ref().map(PathControlView::from),
            name: u.name,
            interface: u.interface,
        }
    }
}

/// Every uplink now: the uplink manager's state (or, without one, the config's), joined with the volume.
pub fn uplinks_view(state: &ApiState) -> Vec<UplinkView> {
    let mut volumes: HashMap<String, VolumeStatus> = state
        .volume
        .as_ref()
        .map(|v| v.snapshot())
        .unwrap_or_default()
        .into_iter()
        .map(|v| (v.name.clone(), v))
        .collect();
    let statuses = match &state.uplinks {
        Some(c) => c.snapshot(),
        None => state
            .config()
            .uplinks
            .iter()
            .enumerate()
            .map(|(i, u)| UplinkStatus {
                name: u.name.clone(),
                interface: u.interface.clone(),
                role: u.role,
                mode: u.mode,
                state: HealthState::Unknown,
                health_source: crate::uplink::HealthSource::Probes,
                trial: false,
                subflow_fallbacks: 0,
                mptcp: Default::default(),
                health: None,
                endpoint: None,
                initial: i == 0,
                path_control: None,
                addresses: crate::uplink::Addrs::configured(u).iter().collect(),
            })
            .collect(),
    };
    statuses
        .into_iter()
        .map(|u| {
            let v = volumes.remove(&u.name);
            UplinkView::new(u, v)
        })
        .collect()
}

fn find_uplink(state: &ApiState, name: &str) -> Result<UplinkView, ApiError> {
    uplinks_view(state)
        .into_iter()
        .find(|u| u.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no uplink {name:?}")))
}

/// Every uplink: health, mode, RTT, loss, endpoint flags, addresses, volume and rates.
#[utoipa::path(get, path = "/api/v1/uplinks", responses(
    (status = 200, description = "Uplinks in config order.", body = Vec<UplinkView>),
    (status = 401, response = Unauthorized),
))]
pub(super) async fn list_uplinks(State(s): State<Arc<ApiState>>) -> ApiJson<Vec<UplinkView>> {
    ApiJson(uplinks_view(&s))
}

/// One uplink.
#[utoipa::path(get, path = "/api/v1/uplinks/{name}", params(UplinkName), responses(
    (status = 200, description = "The uplink.", body = UplinkView),
    (status = 401, response = Unauthorized),
    (status = 404, response = NotFound),
))]
pub(super) async fn get_uplink(
    State(s): State<Arc<ApiState>>,
    ApiPath(name): ApiPath<String>,
) -> Result<ApiJson<UplinkView>, ApiError> {
    find_uplink(&s, &name).map(ApiJson)
}

/// The `{name}` of the uplink routes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct UplinkName {
    /// Uplink name from the config.
    pub name: String,
}

/// Body of `PATCH /api/v1/uplinks/{name}`.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UplinkPatch {
    pub mode: Mode,
}

/// Changes the uplink's mode live (endpoint flags, MP_PRIO to hag, subflows added or removed); lasts until a
/// restart or a reload that changes the uplink's mode in the file.
#[utoipa::path(patch, path = "/api/v1/uplinks/{name}", params(UplinkName), request_body = UplinkPatch, responses(
    (status = 200, description = "The uplink after the change.", body = UplinkView),
    (status = 400, response = BadRequest),
    (status = 401, response = Unauthorized),
    (status = 404, response = NotFound),
    (status = 409, description = "Refused: every uplink would be off, or no uplink manager runs.", body = ErrorBody),
    (status = 500, description = "Mode recorded, but the kernel refused the endpoint change.", body = ErrorBody),
))]
pub(super) async fn patch_uplink(
    State(s): State<Arc<ApiState>>,
    ApiPath(name): ApiPath<String>,
    ApiJson(patch): ApiJson<UplinkPatch>,
) -> Result<ApiJson<UplinkView>, ApiError> {
    let Some(control) = &s.uplinks else {
        find_uplink(&s, &name)?;
        return Err(ApiError::conflict("the uplink manager is not running: modes cannot change"));
    };
    let current = control.snapshot();
    if !current.iter().any(|u| u.name == name) {
        return Err(ApiError::not_found(format!("no uplink {name:?}")));
    }
    if patch.mode == Mode::Off && current.iter().all(|u| u.name == name || u.mode == Mode::Off) {
        return Err(ApiError::conflict(format!("refused: every uplink would be off with {name:?} off")));
    }
    match control.set_mode(&name, patch.mode, ModeReason::Admin).await {
        Ok(previous) => {
            info!(uplink = %name, from = previous.as_str(), to = patch.mode.as_str(), "uplink mode set through the admin API");
            find_uplink(&s, &name).map(ApiJson)
        }
        Err(SetModeError::UnknownUplink(_)) => Err(ApiError::not_found(format!("no uplink {name:?}"))),
        Err(e @ SetModeError::Pm(_)) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// One subflow of a connection: `MPTCP_FULL_INFO` on the hag socket (`local` = hcpe's address, which uplink),
/// plus `sock_diag` for the backup flags.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = SubflowFlags)]
pub struct SubflowView {
    /// The fields both daemons show; `backup`: either side asked, `null` when `sock_diag` could not tell.
    #[serde(flatten)]
    pub subflow: common::admin::SubflowView,
    /// hcpe asked for backup (backup endpoint or MP_PRIO sent).
    pub backup_local: Option<bool>,
    /// hag marked it backup.
    pub backup_remote: Option<bool>,
}

/// One open connection as `GET /api/v1/connections` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Connection)]
pub struct ConnectionView {
    /// Connection id (see the module doc of `admin`).
    pub id: String,
    /// Local MPTCP token of the connection to hag; `null` without MPTCP.
    pub token: Option<u32>,
    /// The LAN client (`address:port`).
    #[schema(value_type = String)]
    pub client: SocketAddr,
    /// Where the client wanted to go (`address:port`).
    #[schema(value_type = String)]
    pub destination: SocketAddr,
    /// The uplink the initial subflow was bound to; `null` for a direct connection.
    pub uplink_initial: Option<String>,
    /// Not carried as MPTCP to hag: carried directly, or the hag connection fell back to plain TCP.
    pub fallback: bool,
    /// Carried directly to the destination (`fallback: direct`).
    pub direct: bool,
    /// Carried on a ready connection from the pool (made before the client connected: no handshake to hag).
    pub ready: bool,
    /// When it was accepted, Unix seconds.
    pub accepted_unix: u64,
    /// Seconds since it was accepted.
    pub age_seconds: f64,
    /// Bytes client -> destination so far.
    pub bytes_up: u64,
    /// Bytes destination -> client so far.
    pub bytes_down: u64,
    /// Subflows (empty without MPTCP).
    pub subflows: Vec<SubflowView>,
}

impl ConnectionView {
    /// Reads `c`'s fields, live counters and subflows; backup flags from `diag` (by local, remote address);
    /// the initial uplink from the initial subflow's local address when `uplink_of` knows it (addresses may be
    /// learned at run time), else as recorded at connect.
    pub fn of(
        c: &Connection,
        full: Option<mptcp::FullInfo>,
        diag: &DiagMap,
        uplink_of: &HashMap<IpAddr, String>,
    ) -> Self {
        let mptcp_fell_back = c.hag.get().is_some() && full.is_none();
        let initial_local = full.as_ref().and_then(|f| f.subflows.iter().find(|s| s.id == 1)).and_then(|s| s.local);
        let uplink_initial = initial_local
            .and_then(|a| uplink_of.get(&a.ip()).cloned())
            .or_else(|| c.uplink_initial.get().cloned())
            .filter(|_| c.direct.get().is_none());
        let subflows = full
            .map(|fi| {
                fi.subflows
                    .into_iter()
                    .map(|s| {
                        let d = s.local.zip(s.remote).and_then(|k| diag.get(&k));
                        let mut subflow = common::admin::SubflowView::of(&s);
                        subflow.backup = d.map(|d| d.backup()).or(s.backup);
                        SubflowView {
                            subflow,
                            backup_local: d.map(|d| d.backup_local()),
                            backup_remote: d.map(|d| d.backup_remote()),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        ConnectionView {
            id: c.conn_id().to_string(),
            token: c.token.get().copied().flatten(),
            client: c.client,
            destination: c.destination,
            uplink_initial,
            fallback: c.fallback() || mptcp_fell_back,
            direct: c.direct.get().is_some(),
            ready: c.ready.get().is_some(),
            accepted_unix: c.accepted_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            age_seconds: c.accepted.elapsed().as_secs_f64(),
            bytes_up: c.counters.a_to_b.load(Relaxed),
            bytes_down: c.counters.b_to_a.load(Relaxed),
            subflows,
        }
    }
}

/// Views of `conns`: `MPTCP_FULL_INFO` per connection, then one `sock_diag` pass for the backup flags of all
/// their subflows (off the runtime: it is a blocking netlink exchange).
pub async fn connection_views(state: &ApiState, conns: Vec<Arc<Connection>>) -> Vec<ConnectionView> {
    let uplink_of: HashMap<IpAddr, String> = uplinks_view(state)
        .into_iter()
        .flat_map(|u| u.addresses.into_iter().map(move |a| (a, u.name.clone())))
        .collect();
    tokio::task::spawn_blocking(move || {
        let full: Vec<Option<mptcp::FullInfo>> = conns
            .iter()
            .map(|c| c.hag.get().and_then(Weak::upgrade).and_then(|s| mptcp::full_info(&*s).ok().flatten()))
            .collect();
        let ports: Vec<u16> =
            full.iter().flatten().flat_map(|f| f.subflows.iter().filter_map(|s| s.remote.map(|r| r.port()))).collect();
        let diag = subflow_diag::by_remote_port(&ports).unwrap_or_else(|e| {
            debug!(error = %e, "sock_diag: no subflow backup flags");
            DiagMap::new()
        });
        conns.iter().zip(full).map(|(c, f)| ConnectionView::of(c, f, &diag, &uplink_of)).collect()
    })
    .await
    .unwrap_or_default()
}

/// Open LAN connections with their subflows (RFC 6897 CONNID and SUBFLOWS).
#[utoipa::path(get, path = "/api/v1/connections", responses(
    (status = 200, description = "Connections, oldest first.", body = Vec<ConnectionView>),
    (status = 401, response = Unauthorized),
))]
pub(super) async fn list_connections(State(s): State<Arc<ApiState>>) -> ApiJson<Vec<ConnectionView>> {
    ApiJson(connection_views(&s, s.conns.connections.snapshot()).await)
}

/// One open connection.
#[utoipa::path(get, path = "/api/v1/connections/{id}", params(ConnIdPath), responses(
    (status = 200, description = "The connection.", body = ConnectionView),
    (status = 400, response = BadRequest),
    (status = 401, response = Unauthorized),
    (status = 404, response = NotFound),
))]
pub(super) async fn get_connection(
    State(s): State<Arc<ApiState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<ConnectionView>, ApiError> {
    let c = s.conns.connections.by_path(&id)?;
    let mut v = connection_views(&s, vec![c]).await;
    v.pop().map(ApiJson).ok_or_else(|| ApiError::internal("connection view task failed"))
}

/// Closes the connection: the relay stops and both sockets (LAN and hag) are closed.
#[utoipa::path(delete, path = "/api/v1/connections/{id}", params(ConnIdPath), responses(
    (status = 204, description = "Closing."),
    (status = 400, response = BadRequest),
    (status = 401, response = Unauthorized),
    (status = 404, response = NotFound),
))]
pub(super) async fn delete_connection(
    State(s): State<Arc<ApiState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let c = s.conns.connections.by_path(&id)?;
    if !c.close.is_cancelled() {
        c.close.cancel();
        info!(id = %c.conn_id(), client = %c.client, dest = %c.destination, "closing a connection through the admin API");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Re-reads the config file the daemon started with. Invalid: 400 naming the field, the running config stays.
/// Valid: uplink modes, log level and admin token apply at once; the response lists the changes that need a
/// restart.
#[utoipa::path(post, path = "/api/v1/reload", responses(
    (status = 200, description = "Reloaded.", body = ReloadOutcome),
    (status = 400, response = BadRequest),
    (status = 401, response = Unauthorized),
    (status = 409, description = "The daemon was not started from a config file.", body = ErrorBody),
))]
pub(super) async fn reload(State(s): State<Arc<ApiState>>) -> Result<ApiJson<ReloadOutcome>, ApiError> {
    s.reload_now().await.map(ApiJson)
}
