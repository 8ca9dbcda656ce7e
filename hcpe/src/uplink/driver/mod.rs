//! The task that owns the uplinks' kernel state: one `common::probe::Prober` per probed uplink, the MPTCP
//! endpoints, the policy routing and the main default route. It applies the decisions of [`super::decide`]
//! whenever a verdict, a mode, a link or an address changes, publishing each uplink's state in
//! [`super::Live`] before any netlink work.
//!
//! Its own state of each uplink is one [`Wiring`]; the routing half of its work is in [`routes`], the health
//! half (probers, join events, subflow evidence) in [`health`].

mod health;
mod paths;
mod routes;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::net::Netlink;
use common::pm::{Endpoint, PathManager, PmError, PmEvents};
use common::probe::{HealthConfig, HealthState};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tracing::{info, warn};

use super::control::Command;
use super::settings::{ManagerSettings, Uplink};
use super::{Addrs, Shared, UplinkError, adapt, decide, evidence, links, now_std, routing, views};

/// An endpoint re-created within this of a reading that showed its subflows carrying an upload closed
/// working subflows (the controller's readings are one probe interval apart).
const SENDING_RECENT: Duration = Duration::from_millis(250);
/// How long after hcpe removed an uplink's endpoint the subflows and joins closed over it are taken as its
/// doing.
const OWN_CLOSE_WINDOW: Duration = Duration::from_secs(2);

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

/// The driver's own state of one uplink: its prober, its interface as last seen, what it learned there, and
/// the kernel state it installed for it. (What connection tasks and the admin API read is in [`Live`].)
struct Wiring {
    prober: Option<ProberSlot>,
    /// The interface index (`None` while the interface does not exist).
    ifindex: Option<u32>,
    /// Whether the IPv4 / IPv6 address is learned from the interface (`auto`).
    auto: (bool, bool),
    /// Carrier of the interface as last seen.
    carrier: bool,
    /// Per family (IPv4, IPv6): the gateway of the system's default route through the interface, learned for
    /// `auto` families without a configured gateway.
    learned_gw: [Option<IpAddr>; 2],
    /// The interface is point-to-point (a route needs no gateway), as last seen.
    p2p: bool,
    /// The policy routing installed.
    installed: Vec<routing::UplinkRoute>,
    /// Addresses that have an MPTCP endpoint now.
    ep_addrs: Vec<IpAddr>,
    /// When hcpe last removed one of the uplink's endpoints (to withdraw it, or to re-create it with its
    /// subflows closed): the joins that closure cuts short are hcpe's doing, not the network's.
    ep_removed_at: Option<std::time::Instant>,
    /// When its subflows last carried an upload and were acknowledged just before (the path controller's
    /// reading): the path worked then.
    sending_at: Option<std::time::Instant>,
    /// When hcpe last re-created its endpoint (a demotion) while its subflows carried an upload: for a while
    /// after, the subflows' absence is hcpe's doing, not the path's.
    closed_alive_at: Option<std::time::Instant>,
}

impl Wiring {
    fn new(u: &Uplink) -> Wiring {
        Wiring {
            prober: None,
            ifindex: common::net::ifindex(&u.interface).ok(),
            auto: (
                u.ipv4.is_some_and(|f| f.address.fixed().is_none()),
                u.ipv6.is_some_and(|f| f.address.fixed().is_none()),
            ),
            carrier: true,
            learned_gw: [None, None],
            p2p: false,
            installed: Vec::new(),
            ep_addrs: Vec::new(),
            ep_removed_at: None,
            sending_at: None,
            closed_alive_at: None,
        }
    }
}

/// The task that owns the kernel state: probers, endpoints, routes.
pub(super) struct Driver {
    pm: PathManager,
    nl: Netlink,
    handle: rtnetlink::Handle,
    shared: Arc<Shared>,
    probe: ProbeTemplate,
    /// Per uplink, in config order: the driver's own state of it.
    wiring: Vec<Wiring>,
    generation: u64,
    health_tx: mpsc::Sender<(usize, u64, HealthState)>,
    rule_priority: u32,
    /// Keep the main table's default route on the best uplink (`routing.default_route`).
    default_route: bool,
    /// The main default route hcpe set per family (IPv4, IPv6): uplink, gateway (none: device route), ifindex.
    main_default: [Option<(usize, Option<IpAddr>, u32)>; 2],
    /// hcpe's main default route of the family may exist in the kernel (so it is replaced, not created).
    main_owned: [bool; 2],
    /// Probe verdicts or subflow evidence ([`evidence`]).
    fallback: evidence::Fallback,
    /// Some probe was answered since start.
    answered: bool,
    /// Joins established now, (token, local, remote), so a SUB_CLOSED without one is a join that failed.
    joined: std::collections::HashSet<(u32, SocketAddr, SocketAddr)>,
    /// The path controller of `adaptive` and `overflow` uplinks.
    paths: adapt::Controller,
    /// Per uplink: its prober's sample count when the controller last took a round trip from it.
    seen_samples: Vec<u64>,
    /// Per uplink: whether its interface carries traffic (watched while it is a demoted adaptive one).
    activity: Vec<paths::Activity>,
}

impl Driver {
    /// A driver for `cfg`'s uplinks that has touched nothing yet ([`Driver::init`] does).
    pub(super) fn new(
        cfg: &ManagerSettings,
        shared: Arc<Shared>,
        (pm, nl, handle): (PathManager, Netlink, rtnetlink::Handle),
        health_tx: mpsc::Sender<(usize, u64, HealthState)>,
    ) -> Driver {
        let health = super::health_config(&cfg.probe);
        Driver {
            pm,
            nl,
            handle,
            shared,
            probe: ProbeTemplate { cpe_id: cfg.cpe_id.clone(), key: cfg.key.clone(), health: health.clone() },
            wiring: cfg.uplinks.iter().map(Wiring::new).collect(),
            generation: 0,
            health_tx,
            rule_priority: cfg.rule_priority,
            default_route: cfg.default_route,
            main_default: [None, None],
            main_owned: [false, false],
            fallback: evidence::Fallback::new(cfg.uplinks.len()),
            answered: false,
            joined: Default::default(),
            paths: adapt::Controller::new(cfg.path_control.clone(), cfg.uplinks.len(), health.silence_to_down()),
            seen_samples: vec![0; cfg.uplinks.len()],
            activity: cfg.uplinks.iter().map(|_| paths::Activity::default()).collect(),
        }
    }

    /// The path manager's events (they tell which joins fail).
    pub(super) async fn pm_events(&self) -> Result<PmEvents, PmError> {
        self.pm.subscribe().await
    }

    /// Learns addresses, removes leftover endpoints, installs the policy routing, starts the probers and
    /// applies the start plan. Returns how many rules and routes were added.
    pub(super) async fn init(&mut self) -> Result<usize, UplinkError> {
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
    pub(super) async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Command>,
        mut health: mpsc::Receiver<(usize, u64, HealthState)>,
        mut stop: oneshot::Receiver<()>,
        mut events: Option<links::Events>,
        mut pm_events: Option<PmEvents>,
        carrier_poll: Duration,
    ) {
        use futures::StreamExt as _;
        // Without the event stream, the carrier is polled (a change is seen within one probe interval).
        let mut tick = tokio::time::interval(carrier_poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // For the health fallback the subflows are sampled on the probe grid, only while every probe goes
        // unanswered (the path controller reads them itself while an adaptive uplink carries traffic).
        let mut sample_tick = tokio::time::interval(carrier_poll);
        sample_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Withdrawn endpoints of uplinks whose joins failed come back when their retry time is up.
        let mut retry_tick = tokio::time::interval(Duration::from_secs(1));
        retry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The path controller takes each probe answer (one per interval and uplink) while it has uplinks to run.
        let mut paths_tick = tokio::time::interval(carrier_poll);
        paths_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                _ = paths_tick.tick(), if self.paths_controlled() => {
                    if self.control_paths().await && let Err(e) = self.reconcile().await {
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
                        || self.wiring[i].ifindex == Some(*ifindex);
                    if !ours {
                        continue;
                    }
                    self.wiring[i].ifindex = if *gone { None } else { Some(*ifindex) };
                    if let Some(slot) = &self.wiring[i].prober {
                        slot.carrier_tx.send_if_modified(|cur| std::mem::replace(cur, *carrier) != *carrier);
                    }
                    let came_back = *carrier && !self.wiring[i].carrier;
                    self.wiring[i].carrier = *carrier;
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
                    if self.wiring[i].ifindex == Some(*ifindex) {
                        changed |= self.relearn(i).await;
                    }
                }
                links::LinkEvent::Address { ifindex } => {
                    if self.wiring[i].ifindex == Some(*ifindex) {
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

    /// Endpoints, then the main default route, in line with the current state; the endpoint outcome.
    async fn reconcile(&mut self) -> Result<(), PmError> {
        let res = self.apply_plan().await;
        self.sync_main_default().await;
        res
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
            if plan[i] == current[i] && want == self.wiring[i].ep_addrs {
                continue;
            }
            let u = &self.shared.uplinks[i];
            let ifindex = common::net::ifindex(&u.interface).ok();
            let mut ok = true;
            let mut res = Vec::new();
            // Re-created (demoted for being slow): every address goes first, so its subflows close.
            let reset = std::mem::take(&mut self.shared.live_mut()[i].reset_subflows) && plan[i].is_some();
            let removing: Vec<IpAddr> =
                self.wiring[i].ep_addrs.iter().copied().filter(|a| reset || !want.contains(a)).collect();
            for addr in removing {
                res.push((addr, self.pm.del_endpoint_addr(addr).await.map(|_| ())));
                let now = now_std();
                self.wiring[i].ep_removed_at = Some(now);
                if reset
                    && self.wiring[i].sending_at.is_some_and(|t| now.saturating_duration_since(t) <= SENDING_RECENT)
                {
                    self.wiring[i].closed_alive_at = Some(now);
                }
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
                self.wiring[i].ep_addrs = want;
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Stops the probers and removes every endpoint, rule and route the manager added.
    pub(super) async fn cleanup(&mut self) {
        for w in &mut self.wiring {
            w.prober = None;
        }
        let mut addrs: Vec<IpAddr> = self.wiring.iter().flat_map(|w| w.ep_addrs.iter()).copied().collect();
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
