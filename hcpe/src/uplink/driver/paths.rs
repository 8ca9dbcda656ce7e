//! The driver's path-control half: feeds each probe's round trip (answered in time or late), the send times
//! of the probes still unanswered and, while an adaptive uplink carries traffic, the round trips of the subflows
//! that carry uploads and which uplinks wait for another's subflows to the path controller ([`adapt`]), and
//! records its decisions on the uplinks,
//! which the endpoint plan then follows (SET_FLAGS, or a re-created endpoint on a demotion for delay or loss).

use std::time::{Duration, Instant};

use common::probe::HealthState;
use tracing::info;

use super::Driver;
use crate::uplink::{Mode, adapt, evidence, links, now_std};

/// An interface moving more than this (both directions) carries traffic: probes alone are a few kbit/s.
const BUSY_BPS: f64 = 100_000.0;
/// The window over which an interface's activity is judged.
const ACTIVITY_WINDOW: Duration = Duration::from_secs(1);

/// How much an uplink's interface carries, from its byte counters over [`ACTIVITY_WINDOW`].
#[derive(Debug, Default)]
pub(super) struct Activity {
    /// Start of the current window and the counters (rx + tx) then.
    window: Option<(Instant, u64)>,
    /// Bits per second (both directions) over the last whole window.
    bps: f64,
    /// Bytes moved so far in the current window.
    partial: u64,
}

impl Activity {
    fn update(&mut self, now: Instant, bytes: Option<u64>) {
        let Some(bytes) = bytes else {
            self.window = None;
            return;
        };
        match self.window {
            Some((t0, b0)) if now.saturating_duration_since(t0) >= ACTIVITY_WINDOW => {
                let secs = now.saturating_duration_since(t0).as_secs_f64();
                self.bps = bytes.saturating_sub(b0) as f64 * 8.0 / secs;
                self.window = Some((now, bytes));
            }
            Some(_) => {}
            None => self.window = Some((now, bytes)),
        }
        self.partial = self.window.map_or(0, |(_, b0)| bytes.saturating_sub(b0));
    }

    /// It moves more than probes do: it carries traffic. A transfer that starts is busy as soon as the current
    /// window holds what a busy whole one would, not only once that window ends.
    fn busy(&self) -> bool {
        self.bps > BUSY_BPS || self.partial as f64 * 8.0 > BUSY_BPS * ACTIVITY_WINDOW.as_secs_f64()
    }
}

impl Driver {
    /// Some uplink is `adaptive` or `overflow`: the controller runs.
    pub(super) fn paths_controlled(&self) -> bool {
        self.shared.live().iter().any(|l| matches!(l.mode, Mode::Adaptive | Mode::Overflow))
    }

    /// Takes the probes answered since the last call and those still unanswered, lets the controller decide,
    /// and records its decisions.
    /// Whether a carry changed (the endpoints must follow).
    pub(super) async fn control_paths(&mut self) -> bool {
        let now = now_std();
        // What each uplink carries: whether an adaptive one is saturated by our traffic (then its probe loss is its
        // own queue's, and it may keep the best path waiting) or, demoted, still drains what it held; and how much
        // it and the uplinks it is compared with carry.
        for i in 0..self.shared.uplinks.len() {
            let bytes =
                links::byte_counters(&self.handle, &self.shared.uplinks[i].interface).await.map(|(_, rx, tx)| rx + tx);
            self.activity[i].update(now, bytes);
        }
        // The subflows, read only while an adaptive uplink carries traffic (one `sock_diag` dump per evaluation
        // then; nothing while idle or where no uplink is adaptive): their own round trips under an upload, and
        // which uplinks' subflows idle while their connection's subflows on another carry.
        let sending = {
            let live = self.shared.live();
            live.iter()
                .enumerate()
                .any(|(i, l)| l.mode == Mode::Adaptive && l.carry == adapt::Carry::Active && self.activity[i].busy())
        };
        let subflows = match sending {
            true => self.read_subflows().await,
            false => None,
        };
        let n = self.shared.uplinks.len();
        let sending = subflows.as_ref().map(|s| evidence::sending_rtts(s, n));
        let waiting = subflows.as_ref().map(|s| evidence::waiting_for(s, n));
        for (w, rtt) in self.wiring.iter_mut().zip(sending.iter().flatten()) {
            if rtt.is_some() {
                w.sending_at = Some(now);
            }
        }
        let inputs: Vec<adapt::PathInput> = {
            let live = self.shared.live();
            live.iter()
                .enumerate()
                .map(|(i, l)| {
                    // Read in place: only the unanswered send times are copied out.
                    let (loss, loss_probes, loss_since) = l.probe.as_ref().map_or((0.0, 0, None), |rx| {
                        let h = rx.borrow();
                        self.paths.on_unanswered(i, h.unanswered.clone());
                        if h.rtt_samples != self.seen_samples[i] {
                            self.seen_samples[i] = h.rtt_samples;
                            if let Some(rtt) = h.latest_rtt {
                                self.paths.on_rtt(i, now, rtt);
                            }
                        }
                        (h.loss, h.loss_probes, h.loss_since)
                    });
                    adapt::PathInput {
                        policy: l.mode.policy(),
                        usable: l.mode != Mode::Off && l.health != HealthState::Down && l.addrs.iter().next().is_some(),
                        carry: l.carry,
                        loss,
                        loss_probes,
                        loss_since,
                        busy: self.activity[i].busy(),
                        rate_bps: self.activity[i].bps,
                        sending_rtt: sending.as_ref().and_then(|s| s[i]),
                        waited_for_by: waiting.as_ref().map_or(0, |w| w[i]),
                    }
                })
                .collect()
        };
        for (i, input) in inputs.iter().enumerate().filter(|(_, x)| !matches!(x.policy, adapt::Policy::Pinned { .. })) {
            tracing::trace!(
                uplink = %self.shared.uplinks[i].name,
                rtt_ms = self.paths.rtt(i, now).map(|d| d.as_millis() as u64),
                sending_rtt_ms = input.sending_rtt.map(|d| d.as_millis() as u64),
                waited_for_by = input.waited_for_by,
                carry = input.carry.as_str(),
                busy = input.busy,
                mbit = (input.rate_bps / 1e5).round() / 10.0,
                loss = input.loss,
                "path control input"
            );
        }
        let decisions = self.paths.evaluate(now, &inputs);
        let mut live = self.shared.live_mut();
        for (i, d) in &decisions {
            let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_millis() as u64);
            info!(
                uplink = %self.shared.uplinks[*i].name,
                to = d.to.as_str(),
                reason = d.reason.as_str(),
                rtt_ms = ms(d.rtt),
                reference_ms = ms(d.reference),
                loss = d.loss,
                "path control: uplink {}",
                if d.to == adapt::Carry::Active { "promoted" } else { "demoted" }
            );
            live[*i].decided(*d);
        }
        !decisions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transfer_is_busy_within_its_first_window_and_quiet_after_a_whole_quiet_one() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut a = Activity::default();
        a.update(at(0), Some(0));
        // Probes only: a few hundred bytes per evaluation.
        a.update(at(200), Some(300));
        assert!(!a.busy());
        // A transfer starts 400 ms into the window: busy at the next evaluation, not at the window's end.
        a.update(at(600), Some(300 + 1_250_000));
        assert!(a.busy());
        a.update(at(1000), Some(300 + 2_500_000));
        assert!(a.busy());
        // It ended: busy while the last whole window shows it, quiet after a whole window of probes only.
        a.update(at(2000), Some(2_500_600));
        assert!(!a.busy(), "the window [1.0, 2.0) moved 300 bytes");
    }
}
