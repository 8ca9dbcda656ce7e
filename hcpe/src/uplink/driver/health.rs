//! The driver's health half: the probers, the path manager's join events, and the subflow evidence that
//! stands in for probes that go unanswered.

use std::net::IpAddr;

use common::probe::{HealthState, Prober, ProberConfig};
use futures::TryStreamExt as _;
use tracing::{info, warn};

use super::{Driver, OWN_CLOSE_WINDOW, ProberSlot};
use crate::uplink::control::log_path_change;
use crate::uplink::{Mode, UplinkError, carrier, evidence, now_std};

impl Driver {
    /// Records a probe verdict (one from a prober stopped since is ignored).
    pub(super) fn on_health(&mut self, (i, generation, state): (usize, u64, HealthState)) {
        if self.wiring[i].prober.as_ref().is_some_and(|s| s.generation == generation) {
            self.shared.live_mut()[i].probe_health = state;
        }
    }

    /// Follows the joins of hcpe's connections: a join that closed before it was established, over an uplink
    /// that is not down and whose endpoint hcpe did not just remove, counts as failed for the uplink of its
    /// local address. Whether an uplink's standing changed.
    pub(super) fn on_pm_event(&mut self, ev: common::pm::PmEvent) -> bool {
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
            // Nor does one that hcpe closed by removing the endpoint (a path demoted for loss or delay has its
            // endpoint re-created so that its subflows close): the kernel reports those closures right after.
            let removed = self.wiring[i].ep_removed_at;
            if !ok && removed.is_some_and(|t| now_std().saturating_duration_since(t) < OWN_CLOSE_WINDOW) {
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
    pub(super) fn fallback_inputs(&self) -> Vec<evidence::Input> {
        let live = self.shared.live();
        live.iter()
            .enumerate()
            .map(|(i, l)| evidence::Input {
                probed: self.wiring[i].prober.is_some(),
                probe: l.probe_health,
                carrier: self.wiring[i].carrier,
            })
            .collect()
    }

    /// Applies the probe verdicts and, when given, fresh subflow evidence: records each uplink's verdict in
    /// force; whether any changed.
    pub(super) fn evaluate(&mut self, evidence: Option<Vec<evidence::Evidence>>) -> bool {
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
                    warn!(%uplink, "probes unanswered: health from subflows (UDP to hag filtered, its probe responder down, or the link's queue full?)");
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
    pub(super) async fn sample_subflows(&self) -> Option<Vec<evidence::Evidence>> {
        let samples = self.read_subflows().await?;
        let judged = evidence::judge(&samples, self.shared.uplinks.len(), &evidence::Thresholds::default());
        let now = now_std();
        let closed_alive: Vec<bool> = (self.wiring.iter())
            .map(|w| w.closed_alive_at.is_some_and(|t| now.saturating_duration_since(t) < OWN_CLOSE_WINDOW))
            .collect();
        Some(evidence::with_own_closures(judged, &closed_alive))
    }

    /// One `sock_diag` dump of the subflows towards hag's port, attributed to uplinks by local address.
    pub(super) async fn read_subflows(&self) -> Option<Vec<evidence::Sample>> {
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
        Some(samples)
    }

    /// Starts, re-binds or stops each uplink's prober so that exactly the uplinks not `off` with an address
    /// towards hag are probed.
    pub(super) fn sync_probers(&mut self) -> Result<(), UplinkError> {
        let hag = self.shared.hag;
        let mut first_err = None;
        for i in 0..self.wiring.len() {
            let (mode, source) = {
                let live = self.shared.live();
                (live[i].mode, live[i].addrs.for_peer(hag.ip()))
            };
            let want = source.filter(|_| mode != Mode::Off);
            match (want, &mut self.wiring[i].prober) {
                (Some(src), Some(slot)) => {
                    if slot.source != src {
                        slot.source = src;
                        let _ = slot.source_tx.send(src);
                    }
                }
                (Some(src), None) => match self.start_prober(i, src) {
                    Ok(slot) => self.wiring[i].prober = Some(slot),
                    Err(e) => {
                        first_err.get_or_insert(UplinkError::Probe {
                            uplink: self.shared.uplinks[i].name.clone(),
                            source: e,
                        });
                    }
                },
                (None, Some(_)) => {
                    self.wiring[i].prober = None;
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

    pub(super) fn start_prober(&mut self, i: usize, source: IpAddr) -> Result<ProberSlot, common::probe::ProbeError> {
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
    pub(super) async fn poll_carrier(&mut self) {
        for (w, u) in self.wiring.iter_mut().zip(&self.shared.uplinks) {
            let Some(slot) = &w.prober else { continue };
            let name = u.interface.clone();
            let up = match self.handle.link().get().match_name(name.clone()).execute().try_next().await {
                Ok(Some(msg)) => carrier::has_carrier(msg.header.flags),
                Ok(None) | Err(_) => false,
            };
            slot.carrier_tx.send_if_modified(|cur| std::mem::replace(cur, up) != up);
            w.carrier = up;
        }
    }
}
