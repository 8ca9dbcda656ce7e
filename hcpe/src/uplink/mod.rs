//! The uplink manager: health of every uplink towards hag, source-based policy routing per uplink,
//! the kernel's MPTCP endpoints per uplink, the live mode of each uplink, and the choice of the uplink new
//! connections start on.
//!
//! Pieces: [`settings`] (config types: role, mode, probe timers, `auto` addresses), [`decide`] (sans-IO:
//! role/mode/health -> endpoint flags and initial uplink), [`routing`] (`from <src> lookup <table>` + default
//! route per uplink, and the main default route that non-TCP traffic follows), [`links`] (rtnetlink link,
//! address and default-route events; what an `auto` uplink learns), [`evidence`] (sans-IO: subflows stand in
//! for unanswered probes), [`mptcp_path`] (sans-IO: an uplink that strips MPTCP), [`volume`] (byte counts and
//! quotas, which switch modes through [`UplinkControl`]).
//! `driver` is the one task that owns the kernel state (probers, endpoints, routes) and applies the decisions
//! whenever a verdict, a mode or a link changes; `control` holds the handles the rest of hcpe uses
//! ([`SourceSelector`] for connection tasks, [`UplinkControl`] for the admin API and quotas). This file holds
//! what they share (each uplink's `Live` state behind one lock) and [`UplinkManager`], which starts and
//! stops the driver.
//!
//! Invariants:
//! - the mutable state (mode, health, endpoint, addresses) lives in one lock (`Shared::live`); a new mode or
//!   verdict is published there before any netlink work, so new connections move at once;
//! - the endpoint table holds, for the uplinks' addresses, exactly what [`decide::endpoint_plan`] says (a
//!   Down uplink's endpoint is deleted: the kernel closes its subflows and reinjects their data; re-added on
//!   Up: the in-kernel path manager then opens the subflow again on every existing connection); an
//!   active<->backup change keeps the endpoint and uses SET_FLAGS, so the kernel sends MP_PRIO to hag;
//! - an uplink is probed exactly while its mode is not `off` and it has an address towards hag;
//! - an `auto` family's address is the one its interface has (the one in use is kept while it stays);
//!   a change moves the endpoint, the uplink's rule and table route, and the prober's source, no restart;
//! - with `routing.default_route`, the main table's default route (metric 0, marked) goes through the
//!   uplink [`decide::pick_initial`] picks among those with a known next hop, so UDP follows TCP;
//! - every endpoint, rule and route added is removed by [`UplinkManager::shutdown`]; a start after a crash
//!   removes leftovers first (endpoints on the uplinks' addresses, rules/routes with [`routing::RT_PROTO_UPLINK`]);
//! - all netlink sockets belong to the namespace of the thread that called [`UplinkManager::start`];
//! - with `probe.enabled: false` nothing is touched in the kernel: [`UplinkControl::set_mode`] only records
//!   the mode (which still steers the initial-uplink choice).

pub mod adapt;
pub mod carrier;
mod control;
pub mod decide;
mod driver;
pub mod evidence;
pub mod links;
pub mod mptcp_path;
pub mod routing;
pub mod settings;
#[cfg(test)]
mod tests;
pub mod volume;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::net::Netlink;
use common::pm::{EndpointFlags, Limits, PathManager, PmError};
use common::probe::{HealthConfig, HealthState, UplinkHealth};
use portable_atomic::AtomicU64;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use control::Command;
pub use control::{Attempt, ReadyFit, SourceSelector, UplinkControl};
use decide::View;
use driver::Driver;
pub use settings::{ManagerSettings, Mode, ProbeFile, Role, Uplink};

/// Errors starting the uplink manager (later failures are logged and retried on the next change).
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// rtnetlink (rules, routes) failed.
    #[error("uplink routing: {0}")]
    Net(#[from] common::net::NetError),
    /// The MPTCP path manager failed.
    #[error("MPTCP path manager: {0}")]
    Pm(#[from] PmError),
    /// A prober could not start.
    #[error("uplink {uplink}: probe: {source}")]
    Probe {
        /// Uplink name.
        uplink: String,
        #[source]
        source: common::probe::ProbeError,
    },
}

/// Why an uplink's mode changed; logged with the change and counted per reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModeReason {
    /// The mode from the config file at start.
    Config,
    /// An operator through the admin API.
    Admin,
    /// A config reload changed it.
    Reload,
    /// The uplink's volume quota was crossed (or a new period began).
    Quota,
}

impl ModeReason {
    /// Every reason, in the order of [`UplinkControl::mode_changes`].
    pub const ALL: [ModeReason; 4] = [ModeReason::Config, ModeReason::Admin, ModeReason::Reload, ModeReason::Quota];

    pub fn as_str(self) -> &'static str {
        match self {
            ModeReason::Config => "config",
            ModeReason::Admin => "admin",
            ModeReason::Reload => "reload",
            ModeReason::Quota => "quota",
        }
    }
}

/// Errors of [`UplinkControl::set_mode`].
#[derive(Debug, thiserror::Error)]
pub enum SetModeError {
    /// No uplink has this name.
    #[error("no uplink named {0:?}")]
    UnknownUplink(String),
    /// The mode is recorded (and steers new connections) but the kernel refused the endpoint change; it is
    /// retried on the next health or mode change.
    #[error("mode recorded, but the MPTCP endpoints could not follow: {0}")]
    Pm(#[from] PmError),
}

/// One uplink as the admin API shows it.
#[derive(Debug, Clone)]
pub struct UplinkStatus {
    pub name: String,
    pub interface: String,
    pub role: Role,
    /// The live mode (config, or changed since through [`UplinkControl::set_mode`]).
    pub mode: Mode,
    /// Health verdict (`Unknown` when the uplink is not probed: `off`, or no address towards hag).
    pub state: HealthState,
    /// Where the verdict comes from: the probes, or (every probe unanswered) the uplink's subflows.
    pub health_source: HealthSource,
    /// After a failure seen on its subflows, the uplink is tried again: usable, last for new connections.
    pub trial: bool,
    /// Times its health switched from the probes to its subflows since start.
    pub subflow_fallbacks: u64,
    /// How MPTCP fares through the uplink (fallbacks of connections started on it, failed joins over it).
    pub mptcp: mptcp_path::PathCheck,
    /// Latest probe statistics (RTT, loss, counters), when probed.
    pub health: Option<UplinkHealth>,
    /// Flags of the MPTCP endpoints the manager keeps for this uplink now (`None`: no endpoint).
    pub endpoint: Option<EndpointFlags>,
    /// New connections start on this uplink now.
    pub initial: bool,
    /// An `adaptive` or `overflow` uplink: whether it carries traffic now, and the path controller's latest
    /// decisions (oldest first) and counts per (carry, reason). `None` for a pinned mode.
    pub path_control: Option<PathControlStatus>,
    /// The uplink's local addresses now (configured, or learned from its interface after renumbering).
    pub addresses: Vec<IpAddr>,
}

/// The path controller's standing of one `adaptive` or `overflow` uplink.
#[derive(Debug, Clone)]
pub struct PathControlStatus {
    pub carry: adapt::Carry,
    pub decisions: Vec<adapt::Decision>,
    pub counts: Vec<((adapt::Carry, adapt::Reason), u64)>,
}

/// Which signal an uplink's health verdict comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthSource {
    /// The authenticated UDP probes (the normal case).
    Probes,
    /// The kernel's view of the uplink's MPTCP subflows, because no probe is answered on any uplink
    /// ([`evidence::Fallback`]).
    Subflows,
}

impl HealthSource {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthSource::Probes => "probes",
            HealthSource::Subflows => "subflows",
        }
    }
}

/// An uplink's local addresses now, one per family at most.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Addrs {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl Addrs {
    /// The configured addresses of `u` (none for a family whose address is learned).
    pub fn configured(u: &Uplink) -> Addrs {
        Addrs { v4: u.ipv4.and_then(|f| f.address.fixed()), v6: u.ipv6.and_then(|f| f.address.fixed()) }
    }

    /// The address of `peer`'s family.
    pub fn for_peer(&self, peer: IpAddr) -> Option<IpAddr> {
        match peer {
            IpAddr::V4(_) => self.v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.v6.map(IpAddr::V6),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + use<> {
        self.v4.map(IpAddr::V4).into_iter().chain(self.v6.map(IpAddr::V6))
    }
}

/// The mutable state of one uplink.
#[derive(Debug, Clone)]
struct Live {
    mode: Mode,
    /// The verdict in force (the probes', or the subflows' in [`HealthSource::Subflows`]).
    health: HealthState,
    /// The probes' own verdict.
    probe_health: HealthState,
    trial: bool,
    /// The verdict comes from the subflows ([`HealthSource::Subflows`]).
    from_subflows: bool,
    /// Times the uplink's health switched to its subflows since start.
    subflow_fallbacks: u64,
    path: mptcp_path::PathCheck,
    endpoint: Option<EndpointFlags>,
    addrs: Addrs,
    probe: Option<watch::Receiver<UplinkHealth>>,
    /// Whether the path controller has an `adaptive` / `overflow` uplink carry traffic (pinned modes: their own).
    carry: adapt::Carry,
    /// The path controller's latest decisions on it, oldest first (at most [`adapt::HISTORY`]).
    decisions: std::collections::VecDeque<adapt::Decision>,
    /// Its decisions since start per (carry, reason).
    decision_counts: std::collections::BTreeMap<(adapt::Carry, adapt::Reason), u64>,
    /// The next endpoint change re-creates the endpoint instead of changing its flags, so its subflows close
    /// and the kernel sends what they held over the other uplinks.
    reset_subflows: bool,
}

impl Live {
    /// The pinned mode the uplink behaves as now.
    fn effective_mode(&self) -> Mode {
        self.mode.effective(self.carry)
    }

    /// Records a decision of the path controller.
    fn decided(&mut self, d: adapt::Decision) {
        self.carry = d.to;
        // A path demoted for being slow, lossy or holding up the best path still holds data in its subflows (its
        // queue): closing them makes the kernel resend that data on the carrying uplinks at once instead of
        // waiting for it.
        self.reset_subflows = d.to == adapt::Carry::Backup
            && matches!(d.reason, adapt::Reason::RttExcess | adapt::Reason::Loss | adapt::Reason::HeadOfLine);
        if self.decisions.len() == adapt::HISTORY {
            self.decisions.pop_front();
        }
        self.decisions.push_back(d);
        *self.decision_counts.entry((d.to, d.reason)).or_default() += 1;
    }
}

/// What the driver task, the control handles and the connection tasks share.
#[derive(Debug)]
struct Shared {
    uplinks: Vec<Uplink>,
    hag: SocketAddr,
    live: RwLock<Vec<Live>>,
    /// Mode changes per [`ModeReason`] (index as in [`ModeReason::ALL`]).
    mode_changes: [AtomicU64; 4],
}

impl Shared {
    fn new(cfg: &ManagerSettings) -> Shared {
        let live = cfg
            .uplinks
            .iter()
            .map(|u| Live {
                mode: u.mode,
                health: HealthState::Unknown,
                probe_health: HealthState::Unknown,
                trial: false,
                from_subflows: false,
                subflow_fallbacks: 0,
                path: mptcp_path::PathCheck::default(),
                endpoint: None,
                addrs: Addrs::configured(u),
                probe: None,
                carry: u.mode.policy().initial(),
                decisions: Default::default(),
                decision_counts: Default::default(),
                reset_subflows: false,
            })
            .collect();
        Shared { uplinks: cfg.uplinks.clone(), hag: cfg.hag, live: RwLock::new(live), mode_changes: Default::default() }
    }

    fn live(&self) -> std::sync::RwLockReadGuard<'_, Vec<Live>> {
        self.live.read().expect("not poisoned")
    }

    fn live_mut(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Live>> {
        self.live.write().expect("not poisoned")
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.uplinks.iter().position(|u| u.name == name)
    }
}

/// The decision inputs of every uplink; `family_of`: only addresses of that family count as a source.
fn views(uplinks: &[Uplink], live: &[Live], family_of: Option<IpAddr>) -> Vec<View> {
    let now = now_std();
    uplinks
        .iter()
        .zip(live)
        .map(|(u, l)| View {
            role: u.role,
            mode: l.effective_mode(),
            health: l.health,
            trial: l.trial,
            stripped: l.path.stripped(now),
            joins_blocked: l.path.joins_blocked(now),
            has_source: match family_of {
                Some(peer) => l.addrs.for_peer(peer).is_some(),
                None => l.addrs.iter().next().is_some(),
            },
        })
        .collect()
}

/// The running uplink manager.
#[derive(Debug)]
pub struct UplinkManager {
    shared: Arc<Shared>,
    cmds: Option<mpsc::Sender<Command>>,
    driver: Option<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
}

/// The health timers from the config.
pub fn health_config(p: &ProbeFile) -> HealthConfig {
    HealthConfig {
        interval: p.interval,
        down_after: p.down_after,
        up_after: p.up_after,
        // Not below the interval: a probe is late once the next one is due.
        timeout_min: p.interval.max(Duration::from_millis(50)),
        ..HealthConfig::default()
    }
}

impl UplinkManager {
    /// Removes leftovers, installs the per-uplink policy routing, sets the MPTCP limits and endpoints, and
    /// starts probing. With `probe.enabled: false` it manages nothing and picks by role and mode only.
    pub async fn start(cfg: &ManagerSettings) -> Result<UplinkManager, UplinkError> {
        let shared = Arc::new(Shared::new(cfg));
        let mut mgr = UplinkManager { shared: shared.clone(), cmds: None, driver: None, stop: None };
        if !cfg.probe.enabled {
            info!("uplink manager disabled (probe.enabled: false): new connections start on the primary uplink");
            learn_once(&shared).await;
            return Ok(mgr);
        }

        let nl = Netlink::new()?;
        let (conn, handle, _) = rtnetlink::new_connection().map_err(common::net::NetError::Socket)?;
        tokio::spawn(conn);
        let pm = PathManager::connect().await?;
        let cur = pm.limits().await?;
        let want = Limits {
            subflows: cur.subflows.max((2 * cfg.uplinks.len() as u32).min(8)),
            add_addr_accepted: cur.add_addr_accepted,
        };
        if want != cur {
            pm.set_limits(want).await?;
        }

        let (health_tx, health_rx) = mpsc::channel(64);
        let mut driver = Driver::new(cfg, shared.clone(), (pm, nl, handle), health_tx);
        // Subscribe before the first look at the interfaces, so no change falls between the two.
        let events = match links::subscribe() {
            Ok(ev) => Some(ev),
            Err(e) => {
                warn!(error = %e, "no rtnetlink events: carrier polled, learned addresses not followed");
                None
            }
        };
        let added = match driver.init().await {
            Ok(n) => n,
            Err(e) => {
                driver.cleanup().await;
                return Err(e);
            }
        };
        // The path manager's events tell which joins fail (MPTCP stripped on an uplink).
        let pm_events = match driver.pm_events().await {
            Ok(ev) => Some(ev),
            Err(e) => {
                warn!(error = %e, "no MPTCP path manager events: failing joins are not noticed");
                None
            }
        };
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        let (stop_tx, stop_rx) = oneshot::channel();
        mgr.driver = Some(tokio::spawn(driver.run(cmd_rx, health_rx, stop_rx, events, pm_events, cfg.probe.interval)));
        mgr.stop = Some(stop_tx);
        mgr.cmds = Some(cmd_tx);
        info!(routes = added, uplinks = cfg.uplinks.len(), hag = %shared.hag, "uplink manager started");
        Ok(mgr)
    }

    /// The handle connection tasks ask for their source address.
    pub fn selector(&self) -> SourceSelector {
        SourceSelector { shared: self.shared.clone() }
    }

    /// The handle for the admin API and the volume tracker: snapshot and live mode changes.
    pub fn control(&self) -> UplinkControl {
        UplinkControl { shared: self.shared.clone(), cmds: self.cmds.clone() }
    }

    /// Every uplink's state now (for the admin API).
    pub fn snapshot(&self) -> Vec<UplinkStatus> {
        self.control().snapshot()
    }

    /// Stops probing and removes every endpoint, rule and route the manager added.
    pub async fn shutdown(mut self) {
        let managed = self.driver.is_some();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(d) = self.driver.take() {
            let _ = d.await;
        }
        if managed {
            info!("uplink manager stopped");
        }
    }
}

/// Unmanaged: `auto` addresses are read from the interfaces once (not followed afterwards).
async fn learn_once(shared: &Shared) {
    let Ok((conn, handle, _)) = rtnetlink::new_connection() else { return };
    let conn = tokio::spawn(conn);
    for (i, u) in shared.uplinks.iter().enumerate() {
        let auto4 = u.ipv4.is_some_and(|f| f.address.fixed().is_none());
        let auto6 = u.ipv6.is_some_and(|f| f.address.fixed().is_none());
        if !(auto4 || auto6) {
            continue;
        }
        let Ok(ix) = common::net::ifindex(&u.interface) else { continue };
        if let Ok((v4, v6)) = links::addresses(&handle, ix).await {
            let mut live = shared.live_mut();
            if auto4 {
                live[i].addrs.v4 = v4.first().copied();
            }
            if auto6 {
                live[i].addrs.v6 = v6.first().copied();
            }
            info!(uplink = %u.name, addresses = ?live[i].addrs.iter().collect::<Vec<_>>(), "uplink address learned once (unmanaged)");
        }
    }
    conn.abort();
}

/// tokio's clock as a std `Instant` (follows a paused test clock).
fn now_std() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}
