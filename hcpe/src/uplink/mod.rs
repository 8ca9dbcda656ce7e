//! The uplink manager: health of every uplink towards hag, source-based policy routing per uplink,
//! the kernel's MPTCP endpoints per uplink, the live mode of each uplink, and the choice of the uplink new
//! connections start on.
//!
//! Pieces: [`settings`] (config types: role, mode, probe timers, `auto` addresses), [`decide`] (sans-IO:
//! role/mode/health -> endpoint flags and initial uplink), [`routing`] (`from <src> lookup <table>` + default
//! route per uplink, and the main default route that non-TCP traffic follows), [`links`] (rtnetlink link,
//! address and default-route events; what an `auto` uplink learns), [`volume`]
//! (byte counts and quotas, which switch modes through [`UplinkControl`]).
//! This file is the async driver: one `common::probe::Prober` per probed uplink, one task (the `Driver`)
//! that owns the path manager and applies the decisions whenever a verdict or a mode changes, and the
//! [`UplinkControl`] handle other parts (admin API, volume quotas) change modes through.
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

pub mod carrier;
pub mod decide;
pub mod evidence;
pub mod links;
pub mod mptcp_path;
pub mod routing;
pub mod settings;
#[cfg(test)]
mod tests;
pub mod volume;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::net::Netlink;
use common::pm::{Endpoint, EndpointFlags, Limits, PathManager, PmError};
use common::probe::{HealthConfig, HealthState, Prober, ProberConfig, UplinkHealth};
use futures::TryStreamExt as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tracing::{info, warn};

use decide::View;
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
    /// The uplink's local addresses now (configured, or learned from its interface after renumbering).
    pub addresses: Vec<IpAddr>,
}

/// Which signal an uplink's health verdict comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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
            mode: l.mode,
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

/// A cheap handle for connection tasks: which source address a new connection to hag binds to.
#[derive(Debug, Clone)]
pub struct SourceSelector {
    shared: Arc<Shared>,
}

impl SourceSelector {
    /// The local address a new connection to `peer` binds to: the healthiest uplink by role and live mode
    /// with an address of `peer`'s family ([`decide::pick_initial`]).
    pub fn source_for(&self, peer: IpAddr) -> Option<IpAddr> {
        let live = self.shared.live();
        let i = decide::pick_initial(&views(&self.shared.uplinks, &live, Some(peer)))?;
        live[i].addrs.for_peer(peer)
    }

    /// Where a new connection to `peer` starts ([`SourceSelector::source_for`]) and, when another uplink is
    /// usable, the one a slow first attempt is raced against ([`decide::race_partner`]); each with its
    /// uplink's smoothed probe RTT, when known.
    pub fn attempts_for(&self, peer: IpAddr) -> Vec<Attempt> {
        let live = self.shared.live();
        let views = views(&self.shared.uplinks, &live, Some(peer));
        let Some(first) = decide::pick_initial(&views) else { return Vec::new() };
        let attempt = |i: usize| {
            Some(Attempt {
                uplink: i,
                source: live[i].addrs.for_peer(peer)?,
                srtt: live[i].probe.as_ref().and_then(|rx| rx.borrow().srtt),
            })
        };
        [Some(first), decide::race_partner(&views, first)].into_iter().flatten().filter_map(attempt).collect()
    }
}

impl SourceSelector {
    /// Tells how a connection that started on `uplink` came out: MPTCP, or a fallback to plain TCP (the MPTCP
    /// option stripped on the way?). Enough fallbacks in a row make new connections start elsewhere first.
    pub fn report_connect(&self, uplink: usize, mptcp: bool) {
        let change = self.shared.live_mut().get_mut(uplink).and_then(|l| l.path.on_connect(now_std(), mptcp));
        if let Some(change) = change {
            log_path_change(&self.shared.uplinks[uplink].name, change);
        }
    }
}

/// The log line of a change of an uplink's MPTCP standing (once per change).
fn log_path_change(uplink: &str, change: mptcp_path::Change) {
    use mptcp_path::Change;
    let retry = mptcp_path::RETRY;
    match change {
        Change::Stripped => warn!(
            uplink,
            ?retry,
            "MPTCP stripped on the uplink: its connections fall back to plain TCP; new connections start on another uplink first"
        ),
        Change::MptcpWorks => info!(uplink, "MPTCP works on the uplink again"),
        Change::JoinsFail => warn!(
            uplink,
            ?retry,
            "MPTCP joins over the uplink fail (MPTCP option stripped?): its endpoint is withdrawn, no aggregation over it"
        ),
        Change::JoinsWork => info!(uplink, "MPTCP joins over the uplink work again"),
    }
}

/// One attempt of a new connection to hag: the uplink, the source address it binds, its probe RTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub uplink: usize,
    pub source: IpAddr,
    pub srtt: Option<Duration>,
}

/// What [`UplinkControl`] asks of the driver task.
#[derive(Debug)]
enum Command {
    /// Bring probers and endpoints in line with the (already recorded) modes; answer with the outcome.
    Apply { reply: oneshot::Sender<Result<(), PmError>> },
}

/// Handle to read every uplink's state and change modes live. `Send + Sync`, cheap to clone; works with
/// the manager unmanaged (`probe.enabled: false`), where a mode change is only recorded.
#[derive(Debug, Clone)]
pub struct UplinkControl {
    shared: Arc<Shared>,
    cmds: Option<mpsc::Sender<Command>>,
}

impl UplinkControl {
    /// Every uplink's state now.
    pub fn snapshot(&self) -> Vec<UplinkStatus> {
        let s = &self.shared;
        let live = s.live();
        let initial = decide::pick_initial(&views(&s.uplinks, &live, Some(s.hag.ip())));
        s.uplinks
            .iter()
            .zip(live.iter())
            .enumerate()
            .map(|(i, (u, l))| UplinkStatus {
                name: u.name.clone(),
                interface: u.interface.clone(),
                role: u.role,
                mode: l.mode,
                state: l.health,
                health_source: if l.from_subflows { HealthSource::Subflows } else { HealthSource::Probes },
                trial: l.trial,
                subflow_fallbacks: l.subflow_fallbacks,
                mptcp: l.path,
                health: l.probe.as_ref().map(|rx| rx.borrow().clone()),
                endpoint: l.endpoint,
                initial: initial == Some(i),
                addresses: l.addrs.iter().collect(),
            })
            .collect()
    }

    /// The live mode of uplink `name`.
    pub fn mode(&self, name: &str) -> Option<Mode> {
        let i = self.shared.index(name)?;
        Some(self.shared.live()[i].mode)
    }

    /// Sets uplink `name`'s mode and returns the previous one. The new mode steers new connections at once;
    /// then (managed) the endpoint follows: active<->backup by SET_FLAGS on the existing endpoint (MP_PRIO
    /// tells hag, existing subflows change priority), standby/off by removing or adding it per
    /// [`decide::endpoint_plan`], and probing stops for `off` / starts again when leaving it. Returns when
    /// the kernel has the new endpoint table.
    pub async fn set_mode(&self, name: &str, mode: Mode, reason: ModeReason) -> Result<Mode, SetModeError> {
        let i = self.shared.index(name).ok_or_else(|| SetModeError::UnknownUplink(name.to_owned()))?;
        let previous = std::mem::replace(&mut self.shared.live_mut()[i].mode, mode);
        if previous != mode {
            info!(
                uplink = name,
                from = previous.as_str(),
                to = mode.as_str(),
                reason = reason.as_str(),
                "uplink mode changed"
            );
            let k = ModeReason::ALL.iter().position(|r| *r == reason).expect("listed");
            self.shared.mode_changes[k].fetch_add(1, Relaxed);
        }
        if let Some(cmds) = &self.cmds {
            let (reply, answer) = oneshot::channel();
            // A driver that is gone (shutting down) leaves the mode only recorded, like an unmanaged one.
            if cmds.send(Command::Apply { reply }).await.is_ok()
                && let Ok(result) = answer.await
            {
                result?;
            }
        }
        Ok(previous)
    }

    /// Mode changes since start per reason, in the order of [`ModeReason::ALL`].
    pub fn mode_changes(&self) -> Vec<(ModeReason, u64)> {
        ModeReason::ALL.iter().zip(&self.shared.mode_changes).map(|(r, n)| (*r, n.load(Relaxed))).collect()
    }

    /// The selector connection tasks use (same state as this handle).
    pub fn selector(&self) -> SourceSelector {
        SourceSelector { shared: self.shared.clone() }
    }
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
        let mut driver = Driver {
            pm,
            nl,
            handle,
            shared: shared.clone(),
            probe: ProbeTemplate {
                cpe_id: cfg.cpe_id.clone(),
                key: cfg.key.clone(),
                health: health_config(&cfg.probe),
            },
            slots: (0..cfg.uplinks.len()).map(|_| None).collect(),
            generation: 0,
            health_tx,
            ep_addrs: vec![Vec::new(); cfg.uplinks.len()],
            rule_priority: cfg.rule_priority,
            ifindex: cfg.uplinks.iter().map(|u| common::net::ifindex(&u.interface).ok()).collect(),
            auto: cfg
                .uplinks
                .iter()
                .map(|u| {
                    let auto4 = u.ipv4.is_some_and(|f| f.address.fixed().is_none());
                    let auto6 = u.ipv6.is_some_and(|f| f.address.fixed().is_none());
                    (auto4, auto6)
                })
                .collect(),
            carrier: vec![true; cfg.uplinks.len()],
            installed: vec![Vec::new(); cfg.uplinks.len()],
            default_route: cfg.default_route,
            main_default: [None, None],
            main_owned: [false, false],
            learned_gw: vec![[None, None]; cfg.uplinks.len()],
            p2p: vec![false; cfg.uplinks.len()],
            fallback: evidence::Fallback::new(cfg.uplinks.len()),
            answered: false,
            joined: Default::default(),
        };
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
        let pm_events = match driver.pm.subscribe().await {
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

    /// The source address new connections to the (first) hag address bind to.
    pub fn primary_source(&self) -> Option<IpAddr> {
        self.selector().source_for(self.shared.hag.ip())
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

/// What every prober shares.
struct ProbeTemplate {
    cpe_id: String,
    key: Vec<u8>,
    health: HealthConfig,
}

/// A running prober of one uplink.
struct ProberSlot {
    source: IpAddr,
    /// Tells this prober's health events from those of an earlier one of the same uplink.
    generation: u64,
    source_tx: watch::Sender<IpAddr>,
    carrier_tx: watch::Sender<bool>,
    /// The prober and its forwarder: they hold each other's channels, so they are stopped explicitly.
    tasks: [AbortHandle; 2],
}

impl Drop for ProberSlot {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The task that owns the kernel state: probers, endpoints, routes.
struct Driver {
    pm: PathManager,
    nl: Netlink,
    handle: rtnetlink::Handle,
    shared: Arc<Shared>,
    probe: ProbeTemplate,
    slots: Vec<Option<ProberSlot>>,
    generation: u64,
    health_tx: mpsc::Sender<(usize, u64, HealthState)>,
    /// Addresses that have an endpoint now, per uplink.
    ep_addrs: Vec<Vec<IpAddr>>,
    rule_priority: u32,
    /// Each uplink's interface index (`None` while the interface does not exist).
    ifindex: Vec<Option<u32>>,
    /// Per uplink: whether its IPv4 / IPv6 address is learned from the interface.
    auto: Vec<(bool, bool)>,
    /// Carrier of each uplink's interface as last seen.
    carrier: Vec<bool>,
    /// The policy routing installed per uplink.
    installed: Vec<Vec<routing::UplinkRoute>>,
    /// Keep the main table's default route on the best uplink (`routing.default_route`).
    default_route: bool,
    /// The main default route hcpe set per family (IPv4, IPv6): uplink, gateway (none: device route), ifindex.
    main_default: [Option<(usize, Option<IpAddr>, u32)>; 2],
    /// Per uplink and family (IPv4, IPv6): the gateway of the system's default route through the uplink's
    /// interface, learned for `auto` families without a configured gateway.
    learned_gw: Vec<[Option<IpAddr>; 2]>,
    /// Per uplink: its interface is point-to-point (a route needs no gateway), as last seen.
    p2p: Vec<bool>,
    /// hcpe's main default route of the family may exist in the kernel (so it is replaced, not created).
    main_owned: [bool; 2],
    /// Probe verdicts or subflow evidence ([`evidence`]).
    fallback: evidence::Fallback,
    /// Some probe was answered since start.
    answered: bool,
    /// Joins established now, (token, local, remote), so a SUB_CLOSED without one is a join that failed.
    joined: std::collections::HashSet<(u32, SocketAddr, SocketAddr)>,
}

impl Driver {
    /// Learns addresses, removes leftover endpoints, installs the policy routing, starts the probers and
    /// applies the start plan. Returns how many rules and routes were added.
    async fn init(&mut self) -> Result<usize, UplinkError> {
        for i in 0..self.shared.uplinks.len() {
            self.relearn(i).await;
        }
        let mut leftovers: Vec<IpAddr> = self.shared.live().iter().flat_map(|l| l.addrs.iter()).collect();
        leftovers.extend(self.shared.uplinks.iter().flat_map(|u| Addrs::configured(u).iter()));
        leftovers.sort();
        leftovers.dedup();
        for addr in leftovers {
            self.pm.del_endpoint_addr(addr).await?;
        }
        let added = self.install_routes().await?;
        self.sync_probers()?;
        self.poll_carrier().await;
        // Apply the start plan (everything Unknown = usable) before the first verdict.
        if let Err(e) = self.reconcile().await {
            warn!(error = %e, "setting the MPTCP endpoints; retried on the next change");
        }
        Ok(added)
    }

    /// Applies verdict, mode, link and address changes until told to stop, then cleans up.
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Command>,
        mut health: mpsc::Receiver<(usize, u64, HealthState)>,
        mut stop: oneshot::Receiver<()>,
        mut events: Option<links::Events>,
        mut pm_events: Option<common::pm::PmEvents>,
        carrier_poll: Duration,
    ) {
        use futures::StreamExt as _;
        // Without the event stream, the carrier is polled (a change is seen within one probe interval).
        let mut tick = tokio::time::interval(carrier_poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The subflows are sampled on the probe grid, only while every probe goes unanswered.
        let mut sample_tick = tokio::time::interval(carrier_poll);
        sample_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Withdrawn endpoints of uplinks whose joins failed come back when their retry time is up.
        let mut retry_tick = tokio::time::interval(Duration::from_secs(1));
        retry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let polling = events.is_none();
            let next_event = async {
                match events.as_mut() {
                    Some(ev) => ev.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = next_event => match ev {
                    Some((msg, _)) => {
                        if let Some(ev) = links::classify(&msg) {
                            self.on_link_event(ev).await;
                        }
                    }
                    None => {
                        warn!("rtnetlink event stream ended: carrier polled from now on");
                        events = None;
                    }
                },
                _ = &mut stop => break,
                Some(cmd) = cmds.recv() => match cmd {
                    Command::Apply { reply } => {
                        if let Err(e) = self.sync_probers() {
                            warn!(error = %e, "starting a prober");
                        }
                        let _ = reply.send(self.reconcile().await);
                    }
                },
                Some(ev) = health.recv() => {
                    self.on_health(ev);
                    // Take every verdict already queued before touching netlink.
                    while let Ok(ev) = health.try_recv() {
                        self.on_health(ev);
                    }
                    // A probe that gave up is checked against the subflows before its endpoint goes: they tell a
                    // filtered probe (still receiving) from a dead path.
                    let evidence = if self.fallback.wants_samples(&self.fallback_inputs()) {
                        self.sample_subflows().await
                    } else {
                        None
                    };
                    if self.evaluate(evidence) && let Err(e) = self.reconcile().await {
                        warn!(error = %e, "updating MPTCP endpoints; retried on the next change");
                    }
                }
                _ = tick.tick(), if polling => self.poll_carrier().await,
                ev = async { pm_events.as_mut()?.next().await }, if pm_events.is_some() => match ev {
                    Some(Ok(ev)) => {
                        if self.on_pm_event(ev) && let Err(e) = self.reconcile().await {
                            warn!(error = %e, "updating MPTCP endpoints; retried on the next change");
                        }
                    }
                    Some(Err(e)) => tracing::debug!(error = %e, "MPTCP path manager event"),
                    None => {
                        warn!("MPTCP path manager events ended: failing joins are not noticed from now on");
                        pm_events = None;
                    }
                },
                _ = retry_tick.tick(), if self.shared.live().iter().any(|l| l.path.reported().1) => {
                    if let Err(e) = self.reconcile().await {
                        warn!(error = %e, "updating MPTCP endpoints; retried on the next change");
                    }
                }
                _ = sample_tick.tick(), if self.fallback.wants_samples(&self.fallback_inputs()) => {
                    let evidence = self.sample_subflows().await;
                    if self.evaluate(evidence) && let Err(e) = self.reconcile().await {
                        warn!(error = %e, "updating MPTCP endpoints; retried on the next change");
                    }
                }
            }
        }
        self.cleanup().await;
    }

    /// Follows a link or address change of an uplink's interface: carrier to its prober, learned addresses
    /// (routing, prober source, endpoints), routes again after the link came back.
    async fn on_link_event(&mut self, ev: links::LinkEvent) {
        let mut changed = false;
        let mut routes_back = false;
        for i in 0..self.shared.uplinks.len() {
            match &ev {
                links::LinkEvent::Link { ifindex, name, carrier, gone, .. } => {
                    let ours = name.as_deref() == Some(self.shared.uplinks[i].interface.as_str())
                        || self.ifindex[i] == Some(*ifindex);
                    if !ours {
                        continue;
                    }
                    self.ifindex[i] = if *gone { None } else { Some(*ifindex) };
                    if let Some(slot) = &self.slots[i] {
                        slot.carrier_tx.send_if_modified(|cur| std::mem::replace(cur, *carrier) != *carrier);
                    }
                    let came_back = *carrier && !self.carrier[i];
                    self.carrier[i] = *carrier;
                    changed |= self.relearn(i).await;
                    if came_back {
                        self.reinstall_routes(i).await;
                        // The kernel dropped routes through the interface if it was down: set it again.
                        for m in &mut self.main_default {
                            if m.is_some_and(|(u, _, _)| u == i) {
                                *m = None;
                            }
                        }
                        routes_back = true;
                    }
                }
                links::LinkEvent::DefaultRoute { ifindex } => {
                    if self.ifindex[i] == Some(*ifindex) {
                        changed |= self.relearn(i).await;
                    }
                }
                links::LinkEvent::Address { ifindex } => {
                    if self.ifindex[i] == Some(*ifindex) {
                        if self.relearn(i).await {
                            changed = true;
                        } else {
                            // Same addresses, but the kernel drops the routes through an interface whose
                            // last address went (a PPP reconnect with a fixed address): set them again.
                            self.refresh_routes(i).await;
                            routes_back = true;
                        }
                    }
                }
            }
        }
        if changed {
            if let Err(e) = self.sync_probers() {
                warn!(error = %e, "starting a prober");
            }
            if let Err(e) = self.reconcile().await {
                warn!(error = %e, "updating MPTCP endpoints; retried on the next change");
            }
        } else if routes_back {
            self.sync_main_default().await;
        }
    }

    /// Looks again at what uplink `i` learns from its interface (for `auto` families): its addresses, and
    /// for families without a configured gateway the system's default-route gateway through it or, on a
    /// point-to-point link, none needed. On a change, publishes the new addresses (new connections bind to
    /// them at once) and moves the uplink's policy routing. Whether anything changed (the caller then
    /// re-syncs probers, endpoints and the main default route).
    async fn relearn(&mut self, i: usize) -> bool {
        let (auto4, auto6) = self.auto[i];
        if !auto4 && !auto6 {
            return false;
        }
        let name = self.shared.uplinks[i].name.clone();
        let ((v4, v6), p2p, gws) = match self.ifindex[i] {
            Some(ix) => {
                let addrs = match links::addresses(&self.handle, ix).await {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(uplink = %name, error = %e, "listing the uplink's addresses");
                        return false;
                    }
                };
                let p2p = links::link_flags(&self.handle, ix).await.is_some_and(links::point_to_point);
                (addrs, p2p, self.learn_gateways(i, ix).await)
            }
            None => ((Vec::new(), Vec::new()), false, [None, None]),
        };
        let cur = self.shared.live()[i].addrs;
        let mut new = cur;
        if auto4 {
            new.v4 = links::choose(cur.v4, &v4);
        }
        if auto6 {
            new.v6 = links::choose(cur.v6, &v6);
        }
        let next_hop_changed = p2p != self.p2p[i] || gws != self.learned_gw[i];
        if new == cur && !next_hop_changed {
            return false;
        }
        if new != cur {
            let show = |a: Addrs| a.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
            info!(uplink = %name, from = %show(cur), to = %show(new), "uplink address changed");
            self.shared.live_mut()[i].addrs = new;
        }
        if next_hop_changed {
            info!(uplink = %name, gateways = ?gws, point_to_point = p2p, "uplink next hop learned");
            self.p2p[i] = p2p;
            self.learned_gw[i] = gws;
        }
        let routes = self.routes_of(i);
        match routing::update(&self.nl, &self.handle, &self.installed[i], &routes).await {
            Ok(()) => self.installed[i] = routes,
            Err(e) => warn!(uplink = %name, error = %e, "moving the uplink's policy routing"),
        }
        true
    }

    /// The gateways of the system's main-table default routes through `ifindex`, for the `auto` families
    /// of uplink `i` without a configured gateway.
    async fn learn_gateways(&self, i: usize, ifindex: u32) -> [Option<IpAddr>; 2] {
        let u = &self.shared.uplinks[i];
        let (auto4, auto6) = self.auto[i];
        let wanted = [
            (auto4 && u.ipv4.is_some_and(|f| f.gateway.is_none()), common::net::Family::V4),
            (auto6 && u.ipv6.is_some_and(|f| f.gateway.is_none()), common::net::Family::V6),
        ];
        let mut out = [None, None];
        for (k, (want, family)) in wanted.into_iter().enumerate() {
            if want {
                match self.nl.routes(family).await {
                    Ok(routes) => out[k] = links::pick_gateway(&routes, ifindex),
                    Err(e) => warn!(uplink = %u.name, error = %e, "listing routes to learn the gateway"),
                }
            }
        }
        out
    }

    /// How uplink `i` reaches the internet in one family: `Some(Some(gw))` via a gateway (configured, or
    /// learned for an `auto` family), `Some(None)` straight out of a point-to-point interface (`auto`
    /// families only), `None` unknown (its routing is then left to the system).
    fn next_hop(&self, i: usize, v4: bool) -> Option<Option<IpAddr>> {
        let u = &self.shared.uplinks[i];
        let (configured, auto, learned) = if v4 {
            (u.ipv4.and_then(|f| f.gateway).map(IpAddr::V4), self.auto[i].0, self.learned_gw[i][0])
        } else {
            (u.ipv6.and_then(|f| f.gateway).map(IpAddr::V6), self.auto[i].1, self.learned_gw[i][1])
        };
        match (configured, auto, learned) {
            (Some(g), _, _) => Some(Some(g)),
            (None, true, Some(g)) => Some(Some(g)),
            (None, true, None) if self.p2p[i] => Some(None),
            _ => None,
        }
    }

    /// Re-adds uplink `i`'s default route in its table (gone with an interface that went down).
    async fn reinstall_routes(&mut self, i: usize) {
        let routes = self.routes_of(i);
        let res = if routes == self.installed[i] {
            routing::ensure_routes(&self.handle, &routes).await
        } else {
            routing::update(&self.nl, &self.handle, &self.installed[i], &routes).await
        };
        match res {
            Ok(()) => self.installed[i] = routes,
            Err(e) => warn!(uplink = %self.shared.uplinks[i].name, error = %e, "re-adding the uplink's routes"),
        }
    }

    /// Re-adds uplink `i`'s table route and forgets the main default route through it (so the next sync
    /// sets it again). Quiet on failure: right after an address went, the gateway is unreachable, and the
    /// event of the address coming back tries again.
    async fn refresh_routes(&mut self, i: usize) {
        if let Err(e) = routing::ensure_routes(&self.handle, &self.installed[i]).await {
            tracing::debug!(uplink = %self.shared.uplinks[i].name, error = %e, "re-adding the uplink's routes");
        }
        for m in &mut self.main_default {
            if m.is_some_and(|(u, _, _)| u == i) {
                *m = None;
            }
        }
    }

    /// Records a probe verdict (one from a prober stopped since is ignored).
    fn on_health(&mut self, (i, generation, state): (usize, u64, HealthState)) {
        if self.slots[i].as_ref().is_some_and(|s| s.generation == generation) {
            self.shared.live_mut()[i].probe_health = state;
        }
    }

    /// Follows the joins of hcpe's connections: a join that closed before it was established, over an uplink
    /// that is not down, counts as failed for the uplink of its local address. Whether an uplink's standing
    /// changed.
    fn on_pm_event(&mut self, ev: common::pm::PmEvent) -> bool {
        use common::pm::PmEvent;
        let (ok, sub) = match ev {
            PmEvent::SubflowEstablished(sub) if sub.local_id != 0 => {
                self.joined.insert((sub.token, sub.local, sub.remote));
                (true, sub)
            }
            PmEvent::SubflowClosed(sub) if sub.local_id != 0 => {
                // Linux 6.18 reports a join refused by the peer (its SYN-ACK without MP_JOIN is reset) with no
                // error attribute: a join that closes while its connection is still open, never established,
                // failed.
                if self.joined.remove(&(sub.token, sub.local, sub.remote)) {
                    return false;
                }
                (false, sub)
            }
            PmEvent::Closed { token } => {
                self.joined.retain(|(t, _, _)| *t != token);
                return false;
            }
            _ => return false,
        };
        let ip = sub.local.ip().to_canonical();
        let change = {
            let mut live = self.shared.live_mut();
            let Some(i) = live.iter().position(|l| l.addrs.iter().any(|a| a == ip)) else { return false };
            // A join that died with its uplink (the endpoint is withdrawn once the uplink is down) says nothing
            // about MPTCP on it: only joins over an uplink that is not down count.
            if !ok && live[i].health == HealthState::Down {
                return false;
            }
            live[i].path.on_join(now_std(), ok).map(|c| (i, c))
        };
        match change {
            Some((i, c)) => {
                log_path_change(&self.shared.uplinks[i].name, c);
                true
            }
            None => false,
        }
    }

    /// What [`evidence::Fallback`] needs of each uplink now.
    fn fallback_inputs(&self) -> Vec<evidence::Input> {
        let live = self.shared.live();
        live.iter()
            .enumerate()
            .map(|(i, l)| evidence::Input {
                probed: self.slots[i].is_some(),
                probe: l.probe_health,
                carrier: self.carrier[i],
            })
            .collect()
    }

    /// Applies the probe verdicts and, when given, fresh subflow evidence: records each uplink's verdict in
    /// force; whether any changed.
    fn evaluate(&mut self, evidence: Option<Vec<evidence::Evidence>>) -> bool {
        let inputs = self.fallback_inputs();
        self.answered |=
            self.shared.live().iter().any(|l| l.probe.as_ref().is_some_and(|rx| rx.borrow().stats.replies > 0));
        let verdicts = self.fallback.update(now_std(), &inputs, self.answered, evidence);
        let mut changed = false;
        let mut live = self.shared.live_mut();
        for (i, v) in verdicts.into_iter().enumerate() {
            let l = &mut live[i];
            let uplink = &self.shared.uplinks[i].name;
            if l.from_subflows != v.from_subflows {
                l.from_subflows = v.from_subflows;
                changed = true;
                if v.from_subflows {
                    l.subflow_fallbacks += 1;
                    warn!(%uplink, "probes unanswered: health from subflows (UDP to hag filtered, or its probe responder down?)");
                } else {
                    info!(%uplink, "a probe was answered again: health from probes");
                }
            }
            if l.health != v.state || l.trial != v.trial {
                let source = if v.from_subflows { "subflows" } else { "probes" };
                info!(%uplink, from = l.health.as_str(), to = v.state.as_str(), trial = v.trial, source, "uplink health changed");
                l.health = v.state;
                l.trial = v.trial;
                changed = true;
            }
        }
        changed
    }

    /// One `sock_diag` dump of the subflows towards hag's port, attributed to uplinks by local address, judged.
    async fn sample_subflows(&self) -> Option<Vec<evidence::Evidence>> {
        let port = self.shared.hag.port();
        let diag = match tokio::task::spawn_blocking(move || common::mptcp::subflow_diag::by_remote_port(&[port])).await
        {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                warn!(error = %e, "reading the subflows (sock_diag)");
                return None;
            }
            Err(_) => return None,
        };
        let samples: Vec<evidence::Sample> = {
            let live = self.shared.live();
            diag.iter()
                .filter_map(|((local, _), d)| {
                    let uplink = live.iter().position(|l| l.addrs.iter().any(|a| a == local.ip().to_canonical()))?;
                    Some(evidence::Sample { uplink, conn: d.token_local.unwrap_or(0), tcp: d.tcp? })
                })
                .collect()
        };
        Some(evidence::judge(&samples, self.shared.uplinks.len(), &evidence::Thresholds::default()))
    }

    /// Starts, re-binds or stops each uplink's prober so that exactly the uplinks not `off` with an address
    /// towards hag are probed.
    fn sync_probers(&mut self) -> Result<(), UplinkError> {
        let hag = self.shared.hag;
        let mut first_err = None;
        for i in 0..self.slots.len() {
            let (mode, source) = {
                let live = self.shared.live();
                (live[i].mode, live[i].addrs.for_peer(hag.ip()))
            };
            let want = source.filter(|_| mode != Mode::Off);
            match (want, &mut self.slots[i]) {
                (Some(src), Some(slot)) => {
                    if slot.source != src {
                        slot.source = src;
                        let _ = slot.source_tx.send(src);
                    }
                }
                (Some(src), None) => match self.start_prober(i, src) {
                    Ok(slot) => self.slots[i] = Some(slot),
                    Err(e) => {
                        first_err.get_or_insert(UplinkError::Probe {
                            uplink: self.shared.uplinks[i].name.clone(),
                            source: e,
                        });
                    }
                },
                (None, Some(_)) => {
                    self.slots[i] = None;
                    let mut live = self.shared.live_mut();
                    live[i].health = HealthState::Unknown;
                    live[i].probe_health = HealthState::Unknown;
                    live[i].trial = false;
                    live[i].probe = None;
                }
                (None, None) => {}
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn start_prober(&mut self, i: usize, source: IpAddr) -> Result<ProberSlot, common::probe::ProbeError> {
        let u = &self.shared.uplinks[i];
        let prober = Prober::new(ProberConfig {
            cpe_id: self.probe.cpe_id.clone(),
            key: self.probe.key.clone(),
            uplink: i as u8,
            source,
            device: Some(u.interface.clone()),
            target: self.shared.hag,
            health: self.probe.health.clone(),
        })?;
        self.generation += 1;
        let generation = self.generation;
        let mut rx = prober.subscribe();
        self.shared.live_mut()[i].probe = Some(rx.clone());
        let (source_tx, carrier_tx) = (prober.source_control(), prober.carrier_control());
        let run = tokio::spawn(prober.run()).abort_handle();
        let tx = self.health_tx.clone();
        let forwarder = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let state = rx.borrow_and_update().state;
                if tx.send((i, generation, state)).await.is_err() {
                    break;
                }
            }
        })
        .abort_handle();
        Ok(ProberSlot { source, generation, source_tx, carrier_tx, tasks: [run, forwarder] })
    }

    /// Feeds each probed uplink's carrier to its prober (a lost carrier makes it Down at once).
    async fn poll_carrier(&mut self) {
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(slot) = slot else { continue };
            let name = self.shared.uplinks[i].interface.clone();
            let up = match self.handle.link().get().match_name(name.clone()).execute().try_next().await {
                Ok(Some(msg)) => carrier::has_carrier(msg.header.flags),
                Ok(None) | Err(_) => false,
            };
            slot.carrier_tx.send_if_modified(|cur| std::mem::replace(cur, up) != up);
            self.carrier[i] = up;
        }
    }

    /// The policy routing of uplink `i` with its current addresses and next hops (none without a known next
    /// hop: then the uplink's routing is left as the system has it, as before the uplink manager, since a
    /// device route would be wrong on a broadcast link).
    fn routes_of(&self, i: usize) -> Vec<routing::UplinkRoute> {
        let u = &self.shared.uplinks[i];
        let Some(ifindex) = self.ifindex[i] else { return Vec::new() };
        let addrs = self.shared.live()[i].addrs;
        let fams = [
            addrs.v4.map(IpAddr::V4).zip(self.next_hop(i, true)),
            addrs.v6.map(IpAddr::V6).zip(self.next_hop(i, false)),
        ];
        fams.into_iter()
            .flatten()
            .map(|(source, gateway)| routing::UplinkRoute {
                source,
                gateway,
                ifindex,
                table: u.table,
                priority: self.rule_priority + routing::RULE_OFFSET + i as u32,
            })
            .collect()
    }

    /// Installs every uplink's policy routing (removing leftovers first).
    async fn install_routes(&mut self) -> Result<usize, common::net::NetError> {
        let mut routes = Vec::new();
        for (i, u) in self.shared.uplinks.iter().enumerate() {
            let r = self.routes_of(i);
            if r.is_empty() {
                info!(uplink = %u.name, "no gateway, address or interface (yet): source routing left to the system");
            }
            routes.extend(r.iter().cloned());
            self.installed[i] = r;
        }
        routing::install(&self.nl, &self.handle, &routes).await
    }

    /// Endpoints, then the main default route, in line with the current state; the endpoint outcome.
    async fn reconcile(&mut self) -> Result<(), PmError> {
        let res = self.apply_plan().await;
        self.sync_main_default().await;
        res
    }

    /// Points the main table's default route of each family at the gateway of the uplink that new
    /// connections start on ([`decide::pick_initial`] among uplinks with a gateway of that family), so
    /// non-TCP traffic fails over with them. Failures are logged and retried on the next change.
    async fn sync_main_default(&mut self) {
        if !self.default_route {
            return;
        }
        for (k, v4) in [(0usize, true), (1, false)] {
            let want = {
                let live = self.shared.live();
                let views: Vec<View> = self
                    .shared
                    .uplinks
                    .iter()
                    .zip(live.iter())
                    .enumerate()
                    .map(|(i, (u, l))| View {
                        role: u.role,
                        mode: l.mode,
                        health: l.health,
                        trial: l.trial,
                        stripped: l.path.stripped(now_std()),
                        joins_blocked: false,
                        has_source: self.next_hop(i, v4).is_some()
                            && self.ifindex[i].is_some()
                            && if v4 { l.addrs.v4.is_some() } else { l.addrs.v6.is_some() },
                    })
                    .collect();
                decide::pick_initial(&views).and_then(|i| Some((i, self.next_hop(i, v4)?, self.ifindex[i]?)))
            };
            if want == self.main_default[k] {
                continue;
            }
            let res = match want {
                Some((_, gw, ix)) => routing::set_main_default(&self.handle, v4, gw, ix, self.main_owned[k]).await,
                None => routing::del_main_default(&self.nl, &self.handle, v4).await,
            };
            let family = if v4 { "ipv4" } else { "ipv6" };
            match res {
                Ok(()) => {
                    let uplink = want.map(|(i, _, _)| self.shared.uplinks[i].name.as_str()).unwrap_or("none");
                    info!(family, uplink, via = ?want.map(|(_, g, _)| g), "main default route");
                    self.main_default[k] = want;
                    self.main_owned[k] = want.is_some();
                }
                Err(e) => {
                    warn!(family, error = %e, "main default route (routing.default_route: false if the system manages it)")
                }
            }
        }
    }

    /// Brings the endpoint table in line with [`decide::endpoint_plan`] and the uplinks' current addresses.
    /// Every uplink is tried; the first failure is returned (the next change tries again).
    async fn apply_plan(&mut self) -> Result<(), PmError> {
        let (plan, addrs) = {
            let live = self.shared.live();
            let plan = decide::endpoint_plan(&views(&self.shared.uplinks, &live, None));
            let addrs: Vec<Addrs> = live.iter().map(|l| l.addrs).collect();
            (plan, addrs)
        };
        let current: Vec<_> = self.shared.live().iter().map(|l| l.endpoint).collect();
        let mut first_err = None;
        // Additions before removals: an existing connection never finds itself without any endpoint to join on.
        let mut order: Vec<usize> = (0..plan.len()).collect();
        order.sort_by_key(|i| plan[*i].is_none());
        for i in order {
            let want: Vec<IpAddr> = if plan[i].is_some() { addrs[i].iter().collect() } else { Vec::new() };
            if plan[i] == current[i] && want == self.ep_addrs[i] {
                continue;
            }
            let u = &self.shared.uplinks[i];
            let ifindex = common::net::ifindex(&u.interface).ok();
            let mut ok = true;
            let mut res = Vec::new();
            for addr in self.ep_addrs[i].iter().filter(|a| !want.contains(a)) {
                res.push((*addr, self.pm.del_endpoint_addr(*addr).await.map(|_| ())));
            }
            if let Some(flags) = plan[i] {
                for addr in &want {
                    let ep = Endpoint { addr: *addr, id: None, flags, ifindex, port: None };
                    res.push((*addr, self.pm.ensure_endpoint(ep).await.map(|_| ())));
                }
            }
            for (addr, r) in res {
                if let Err(e) = r {
                    warn!(uplink = %u.name, %addr, error = %e, "updating MPTCP endpoint");
                    ok = false;
                    first_err.get_or_insert(e);
                }
            }
            if ok {
                info!(uplink = %u.name, endpoint = ?plan[i], addresses = ?want, "MPTCP endpoint updated");
                self.shared.live_mut()[i].endpoint = plan[i];
                self.ep_addrs[i] = want;
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Stops the probers and removes every endpoint, rule and route the manager added.
    async fn cleanup(&mut self) {
        for s in &mut self.slots {
            *s = None;
        }
        let mut addrs: Vec<IpAddr> = self.ep_addrs.iter().flatten().copied().collect();
        addrs.extend(self.shared.live().iter().flat_map(|l| l.addrs.iter()));
        addrs.sort();
        addrs.dedup();
        for addr in addrs {
            if let Err(e) = self.pm.del_endpoint_addr(addr).await {
                warn!(%addr, error = %e, "removing MPTCP endpoint");
            }
        }
        match routing::remove(&self.nl).await {
            Ok(f) => info!(rules = f.rules, routes = f.routes, "removed uplink rules and routes"),
            Err(e) => warn!(error = %e, "removing uplink rules and routes"),
        }
    }
}

/// tokio's clock as a std `Instant` (follows a paused test clock).
fn now_std() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}
