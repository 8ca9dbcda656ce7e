//! The handles the rest of hcpe holds on the uplink manager: [`SourceSelector`] for connection tasks (which
//! uplink and source address a new connection to hag starts on, and what came of it) and [`UplinkControl`]
//! for the admin API and the volume tracker (every uplink's state; live mode changes).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::pm::PmError;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::{
    HealthSource, Mode, ModeReason, PathControlStatus, SetModeError, Shared, UplinkStatus, decide, mptcp_path, now_std,
    views,
};

/// A cheap handle for connection tasks: which source address a new connection to hag binds to.
#[derive(Debug, Clone)]
pub struct SourceSelector {
    pub(super) shared: Arc<Shared>,
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

    /// Whether `uplink` has a probe unanswered for longer than `after` (sent within the last second beyond
    /// that, so an old loss does not count): a silent cut its health verdict has not caught yet, most likely.
    /// New connections should then race a second attempt rather than trust the uplink.
    pub fn probe_overdue(&self, uplink: usize, after: Duration) -> bool {
        let live = self.shared.live();
        let Some(rx) = live.get(uplink).and_then(|l| l.probe.as_ref()) else { return false };
        let now = std::time::Instant::now();
        rx.borrow().unanswered.iter().any(|sent| {
            let age = now.saturating_duration_since(*sent);
            age > after && age < after + Duration::from_secs(1)
        })
    }

    /// How a ready (pooled) connection to `peer` whose initial subflow is on `uplink` fits the uplinks now.
    pub fn ready_fit(&self, peer: IpAddr, uplink: usize) -> ReadyFit {
        let live = self.shared.live();
        let views = views(&self.shared.uplinks, &live, Some(peer));
        let initial = decide::pick_initial(&views) == Some(uplink);
        let others = |i: &usize| *i != uplink && views[*i].usable();
        let joins = decide::endpoint_plan(&views).iter().enumerate().filter(|(i, f)| others(i) && f.is_some()).count();
        let usable_others = (0..views.len()).filter(others).count();
        ReadyFit { initial, joins, usable_others }
    }
}

/// See [`SourceSelector::ready_fit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyFit {
    /// The uplink is where a new connection would start now (the best usable one).
    pub initial: bool,
    /// Other uplinks that would join a connection with a subflow now (usable, with an endpoint).
    pub joins: usize,
    /// Other usable uplinks, joined or not (a `standby` one has no endpoint while a better uplink works).
    pub usable_others: usize,
}

impl ReadyFit {
    /// A ready connection helps only when it can survive a silent cut of its first uplink as well as a new
    /// connection would (which races a second attempt over another usable uplink): when another uplink joins
    /// it, or no other uplink is usable at all. Not with only `standby` uplinks besides it.
    pub fn worth_pooling(&self) -> bool {
        self.joins > 0 || self.usable_others == 0
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
pub(super) fn log_path_change(uplink: &str, change: mptcp_path::Change) {
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
pub(super) enum Command {
    /// Bring probers and endpoints in line with the (already recorded) modes; answer with the outcome.
    Apply { reply: oneshot::Sender<Result<(), PmError>> },
}

/// Handle to read every uplink's state and change modes live. `Send + Sync`, cheap to clone; works with
/// the manager unmanaged (`probe.enabled: false`), where a mode change is only recorded.
#[derive(Debug, Clone)]
pub struct UplinkControl {
    pub(super) shared: Arc<Shared>,
    pub(super) cmds: Option<mpsc::Sender<Command>>,
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
                path_control: matches!(l.mode, Mode::Adaptive | Mode::Overflow).then(|| PathControlStatus {
                    carry: l.carry,
                    decisions: l.decisions.iter().copied().collect(),
                    counts: l.decision_counts.iter().map(|(k, n)| (*k, *n)).collect(),
                }),
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
        let previous = {
            let mut live = self.shared.live_mut();
            let previous = std::mem::replace(&mut live[i].mode, mode);
            if previous.policy() != mode.policy() {
                // The path controller starts over with the new mode.
                live[i].carry = mode.policy().initial();
            }
            previous
        };
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
