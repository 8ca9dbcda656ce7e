//! The uplink manager (issue 5): health of every uplink towards hag, source-based policy routing per uplink,
//! the kernel's MPTCP endpoints per uplink, and the choice of the uplink new connections start on.
//!
//! Pieces: [`settings`] (config types: role, mode, probe timers), [`decide`] (sans-IO: role/mode/health ->
//! endpoint flags and initial uplink), [`routing`] (`from <src> lookup <table>` + default route per uplink).
//! This file is the async driver: one `common::probe::Prober` per uplink, one task applying the decisions
//! through `common::pm` whenever a verdict changes.
//!
//! Invariants:
//! - the initial-uplink choice is published (to [`UplinkManager::source_for`]) before any netlink work on a
//!   verdict change, so new connections move to the healthy uplink at once;
//! - the endpoint table holds, for the uplinks' addresses, exactly what [`decide::endpoint_plan`] says (a
//!   Down uplink's endpoint is deleted: the kernel closes its subflows and reinjects their data; re-added on
//!   Up: the in-kernel path manager then opens the subflow again on every existing connection);
//! - every endpoint, rule and route added is removed by [`UplinkManager::shutdown`]; a start after a crash
//!   removes leftovers first (endpoints on the uplinks' addresses, rules/routes with [`routing::RT_PROTO_UPLINK`]);
//! - all netlink sockets belong to the namespace of the thread that called [`UplinkManager::start`].

pub mod carrier;
pub mod decide;
pub mod routing;
pub mod settings;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::net::Netlink;
use common::pm::{Endpoint, EndpointFlags, Limits, PathManager};
use common::probe::{HealthConfig, HealthState, Prober, ProberConfig, UplinkHealth};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{Config, Uplink};
use decide::View;
pub use settings::{Mode, ProbeFile, Role};

/// Errors starting the uplink manager (later failures are logged and retried on the next change).
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// rtnetlink (rules, routes) failed.
    #[error("uplink routing: {0}")]
    Net(#[from] common::net::NetError),
    /// The MPTCP path manager failed.
    #[error("MPTCP path manager: {0}")]
    Pm(#[from] common::pm::PmError),
    /// A prober could not start.
    #[error("uplink {uplink}: probe: {source}")]
    Probe {
        /// Uplink name.
        uplink: String,
        #[source]
        source: common::probe::ProbeError,
    },
}

/// One uplink as the admin API shows it.
#[derive(Debug, Clone)]
pub struct UplinkStatus {
    pub name: String,
    pub interface: String,
    pub role: Role,
    pub mode: Mode,
    /// Health verdict (`Unknown` when the uplink is not probed: `off`, or no address towards hag).
    pub state: HealthState,
    /// Latest probe statistics (RTT, loss, counters), when probed.
    pub health: Option<UplinkHealth>,
    /// Flags of the MPTCP endpoints the manager keeps for this uplink now (`None`: no endpoint).
    pub endpoint: Option<EndpointFlags>,
    /// New connections start on this uplink now.
    pub initial: bool,
}

/// What the driver task and the connection tasks share.
#[derive(Debug)]
struct Shared {
    uplinks: Vec<Uplink>,
    /// Health verdict per uplink, written by the driver on every change.
    health: RwLock<Vec<HealthState>>,
    /// Endpoint flags in force per uplink.
    endpoints: RwLock<Vec<Option<EndpointFlags>>>,
}

impl Shared {
    fn views(&self, family_of: Option<IpAddr>) -> Vec<View> {
        let health = self.health.read().expect("not poisoned");
        self.uplinks
            .iter()
            .zip(health.iter())
            .map(|(u, h)| View {
                role: u.role,
                mode: u.mode,
                health: *h,
                has_source: match family_of {
                    Some(peer) => u.source_for(peer).is_some(),
                    None => u.ipv4.is_some() || u.ipv6.is_some(),
                },
            })
            .collect()
    }
}

/// A cheap handle for connection tasks: which source address a new connection to hag binds to.
#[derive(Debug, Clone)]
pub struct SourceSelector {
    shared: Arc<Shared>,
}

impl SourceSelector {
    /// The local address a new connection to `peer` binds to: the healthiest uplink by role with an address
    /// of `peer`'s family ([`decide::pick_initial`]).
    pub fn source_for(&self, peer: IpAddr) -> Option<IpAddr> {
        let i = decide::pick_initial(&self.shared.views(Some(peer)))?;
        self.shared.uplinks[i].source_for(peer)
    }
}

/// The running uplink manager.
#[derive(Debug)]
pub struct UplinkManager {
    shared: Arc<Shared>,
    hag: SocketAddr,
    probes: Vec<Option<watch::Receiver<UplinkHealth>>>,
    driver: Option<JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Probers, their forwarders and the carrier watcher: they hold each other's channels, so they are
    /// stopped explicitly.
    tasks: Vec<tokio::task::AbortHandle>,
    managed: bool,
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
    /// starts probing. With `probe.enabled: false` it manages nothing and always picks by role.
    pub async fn start(cfg: &Config) -> Result<UplinkManager, UplinkError> {
        let shared = Arc::new(Shared {
            uplinks: cfg.uplinks.clone(),
            health: RwLock::new(vec![HealthState::Unknown; cfg.uplinks.len()]),
            endpoints: RwLock::new(vec![None; cfg.uplinks.len()]),
        });
        let hag = cfg.hag_addresses[0];
        let mut mgr =
            UplinkManager {
            shared: shared.clone(),
            hag,
            probes: Vec::new(),
            driver: None,
            stop: None,
            tasks: Vec::new(),
            managed: false,
        };
        if !cfg.probe.enabled {
            info!("uplink manager disabled (probe.enabled: false): new connections start on the primary uplink");
            return Ok(mgr);
        }
        mgr.managed = true;

        let nl = Netlink::new()?;
        let (conn, handle, _) = rtnetlink::new_connection().map_err(common::net::NetError::Socket)?;
        tokio::spawn(conn);
        let mut routes = Vec::new();
        for (i, u) in cfg.uplinks.iter().enumerate() {
            if u.mode == Mode::Off {
                continue;
            }
            let ifindex = match common::net::ifindex(&u.interface) {
                Ok(x) => x,
                Err(e) => {
                    warn!(uplink = %u.name, error = %e, "no policy routing for this uplink");
                    continue;
                }
            };
            let fams = [
                u.ipv4.map(|f| (IpAddr::V4(f.address), f.gateway.map(IpAddr::V4))),
                u.ipv6.map(|f| (IpAddr::V6(f.address), f.gateway.map(IpAddr::V6))),
            ];
            // Without a gateway the uplink's routing is left as the system has it (as before the uplink
            // manager): a device route would be wrong on a broadcast link.
            for (source, gateway) in fams.into_iter().flatten() {
                if gateway.is_none() {
                    info!(uplink = %u.name, %source, "no gateway configured: source routing left to the system");
                    continue;
                }
                routes.push(routing::UplinkRoute {
                    source,
                    gateway,
                    ifindex,
                    table: u.table,
                    priority: cfg.routing.rule_priority + routing::RULE_OFFSET + i as u32,
                });
            }
        }
        let added = routing::install(&nl, &handle, &routes).await?;

        let pm = PathManager::connect().await?;
        for u in &cfg.uplinks {
            for addr in addresses(u) {
                pm.del_endpoint_addr(addr).await?;
            }
        }
        let cur = pm.limits().await?;
        let want = Limits {
            subflows: cur.subflows.max((2 * cfg.uplinks.len() as u32).min(8)),
            add_addr_accepted: cur.add_addr_accepted,
        };
        if want != cur {
            pm.set_limits(want).await?;
        }

        let (events_tx, events_rx) = mpsc::channel(64);
        let mut carriers = Vec::new();
        for (i, u) in cfg.uplinks.iter().enumerate() {
            let source = match (u.mode, u.source_for(hag.ip())) {
                (Mode::Off, _) | (_, None) => {
                    mgr.probes.push(None);
                    continue;
                }
                (_, Some(s)) => s,
            };
            let prober = Prober::new(ProberConfig {
                cpe_id: cfg.cpe_id.clone(),
                key: cfg.key.0.clone(),
                uplink: i as u8,
                source,
                device: Some(u.interface.clone()),
                target: hag,
                health: health_config(&cfg.probe),
            })
            .map_err(|source| UplinkError::Probe { uplink: u.name.clone(), source })?;
            let mut rx = prober.subscribe();
            carriers.push((u.interface.clone(), prober.carrier_control()));
            mgr.probes.push(Some(rx.clone()));
            mgr.tasks.push(tokio::spawn(prober.run()).abort_handle());
            let tx = events_tx.clone();
            let forwarder = tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    let state = rx.borrow_and_update().state;
                    if tx.send((i, state)).await.is_err() {
                        break;
                    }
                }
            });
            mgr.tasks.push(forwarder.abort_handle());
        }
        drop(events_tx);
        mgr.tasks.push(tokio::spawn(carrier::watch_carrier(handle.clone(), carriers, cfg.probe.interval)).abort_handle());
        // Apply the start plan (everything Unknown = usable) before the first verdict.
        apply_plan(&pm, &shared).await;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        mgr.driver = Some(tokio::spawn(drive(pm, shared.clone(), events_rx, stop_rx, nl)));
        mgr.stop = Some(stop_tx);
        info!(routes = added, uplinks = cfg.uplinks.len(), hag = %hag, "uplink manager started");
        Ok(mgr)
    }

    /// The handle connection tasks ask for their source address.
    pub fn selector(&self) -> SourceSelector {
        SourceSelector { shared: self.shared.clone() }
    }

    /// The source address new connections to the (first) hag address bind to.
    pub fn primary_source(&self) -> Option<IpAddr> {
        self.selector().source_for(self.hag.ip())
    }

    /// Every uplink's state now (for the admin API).
    pub fn snapshot(&self) -> Vec<UplinkStatus> {
        let initial = decide::pick_initial(&self.shared.views(Some(self.hag.ip())));
        let health = self.shared.health.read().expect("not poisoned").clone();
        let endpoints = self.shared.endpoints.read().expect("not poisoned").clone();
        self.shared
            .uplinks
            .iter()
            .enumerate()
            .map(|(i, u)| UplinkStatus {
                name: u.name.clone(),
                interface: u.interface.clone(),
                role: u.role,
                mode: u.mode,
                state: health[i],
                health: self.probes.get(i).and_then(|p| p.as_ref()).map(|rx| rx.borrow().clone()),
                endpoint: endpoints[i],
                initial: initial == Some(i),
            })
            .collect()
    }

    /// Stops probing and removes every endpoint, rule and route the manager added.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(d) = self.driver.take() {
            let _ = d.await;
        }
        for t in &self.tasks {
            t.abort();
        }
        self.probes.clear();
        if self.managed {
            info!("uplink manager stopped");
        }
    }
}

fn addresses(u: &Uplink) -> impl Iterator<Item = IpAddr> {
    u.ipv4.map(|f| IpAddr::V4(f.address)).into_iter().chain(u.ipv6.map(|f| IpAddr::V6(f.address)))
}

/// Applies verdict changes until told to stop, then cleans up.
async fn drive(
    pm: PathManager,
    shared: Arc<Shared>,
    mut events: mpsc::Receiver<(usize, HealthState)>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    nl: Netlink,
) {
    loop {
        tokio::select! {
            _ = &mut stop => break,
            ev = events.recv() => {
                let Some((i, state)) = ev else { break };
                let from = std::mem::replace(&mut shared.health.write().expect("not poisoned")[i], state);
                if from == state {
                    continue;
                }
                // Take every verdict already queued before touching netlink.
                while let Ok((j, s)) = events.try_recv() {
                    shared.health.write().expect("not poisoned")[j] = s;
                }
                info!(uplink = %shared.uplinks[i].name, from = from.as_str(), to = state.as_str(), "uplink health changed");
                apply_plan(&pm, &shared).await;
            }
        }
    }
    for u in &shared.uplinks {
        for addr in addresses(u) {
            if let Err(e) = pm.del_endpoint_addr(addr).await {
                warn!(%addr, error = %e, "removing MPTCP endpoint");
            }
        }
    }
    match routing::remove(&nl).await {
        Ok(f) => info!(rules = f.rules, routes = f.routes, "removed uplink rules and routes"),
        Err(e) => warn!(error = %e, "removing uplink rules and routes"),
    }
}

/// Brings the endpoint table in line with [`decide::endpoint_plan`]. Failures are logged; the next verdict
/// change tries again.
async fn apply_plan(pm: &PathManager, shared: &Shared) {
    let plan = decide::endpoint_plan(&shared.views(None));
    let current = shared.endpoints.read().expect("not poisoned").clone();
    // Additions before removals: an existing connection never finds itself without any endpoint to join on.
    let mut order: Vec<usize> = (0..plan.len()).collect();
    order.sort_by_key(|i| plan[*i].is_none());
    for i in order {
        if plan[i] == current[i] {
            continue;
        }
        let u = &shared.uplinks[i];
        let ifindex = common::net::ifindex(&u.interface).ok();
        let mut ok = true;
        for addr in addresses(u) {
            let res = match plan[i] {
                Some(flags) => {
                    pm.ensure_endpoint(Endpoint { addr, id: None, flags, ifindex, port: None }).await.map(|_| ())
                }
                None => pm.del_endpoint_addr(addr).await.map(|_| ()),
            };
            if let Err(e) = res {
                warn!(uplink = %u.name, %addr, error = %e, "updating MPTCP endpoint");
                ok = false;
            }
        }
        if ok {
            info!(uplink = %u.name, endpoint = ?plan[i], "MPTCP endpoint updated");
            shared.endpoints.write().expect("not poisoned")[i] = plan[i];
        }
    }
}
