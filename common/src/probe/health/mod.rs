//! Per-uplink health state machine, sans-IO: the caller passes `now` into every call and performs the
//! [`Action`]s it gets back (send a probe with this sequence number; report a state change).
//!
//! Rules (defaults):
//! - A probe is due every `interval` (200 ms) while the carrier is up. If the caller falls behind (a long
//!   pause), probing resumes one interval after `now`; missed slots are not sent in a burst.
//! - A probe not answered within its timeout is a miss. The timeout adapts like a TCP RTO
//!   (RFC 6298: `srtt + 4 * rttvar`), clamped to `[timeout_min, timeout_max]`, and is `timeout_max`
//!   before the first RTT sample: a link whose delay grows slowly under load (bufferbloat) is not declared
//!   dead, while a blackholed link with a steady RTT is detected after `down_after` probes.
//! - `down_after` consecutive misses (3) make the uplink Down; `up_after` consecutive successes (3) make it
//!   Up. Successes and misses are counted in the order they are resolved.
//! - `carrier(false)` makes it Down at once, forgets outstanding probes and stops probing; `carrier(true)`
//!   resumes probing and it needs `up_after` successes to be Up again.
//! - RTT: RFC 6298 smoothing (alpha 1/8, beta 1/4) over replies that arrived within their timeout; a late
//!   or unknown reply changes nothing. Loss: misses / resolved probes over the last `loss_window` probes.
//!
//! Invariants: outstanding probes never exceed `timeout_max / interval + 2` (older ones are resolved as
//! misses first); the loss window never holds more than `loss_window` outcomes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Tuning of the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Time between probes.
    pub interval: Duration,
    /// Consecutive misses that make an uplink Down.
    pub down_after: u32,
    /// Consecutive successes that make an uplink Up.
    pub up_after: u32,
    /// Lower bound of the adaptive probe timeout.
    pub timeout_min: Duration,
    /// Upper bound of the adaptive probe timeout, and the timeout before the first RTT sample.
    pub timeout_max: Duration,
    /// Probes over which loss is computed.
    pub loss_window: usize,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_millis(200),
            down_after: 3,
            up_after: 3,
            timeout_min: Duration::from_millis(200),
            timeout_max: Duration::from_secs(1),
            loss_window: 50,
        }
    }
}

/// Verdict on one uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// No verdict yet (just started).
    Unknown,
    /// Probes are answered.
    Up,
    /// `down_after` probes in a row went unanswered, or the carrier is down.
    Down,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Up => "up",
            HealthState::Down => "down",
        }
    }
}

/// A state transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateChange {
    pub from: HealthState,
    pub to: HealthState,
    pub at: Instant,
}

/// What the caller must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send a probe request with this sequence number now.
    SendProbe { seq: u32 },
    /// The verdict changed.
    StateChanged(StateChange),
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    seq: u32,
    sent: Instant,
    deadline: Instant,
}

/// The state machine of one uplink.
#[derive(Debug)]
pub struct Health {
    config: HealthConfig,
    state: HealthState,
    last_change: Instant,
    carrier: bool,
    next_seq: u32,
    next_send: Instant,
    outstanding: VecDeque<Outstanding>,
    misses_in_row: u32,
    successes_in_row: u32,
    srtt: Option<Duration>,
    rttvar: Duration,
    latest_rtt: Option<Duration>,
    /// true = answered, false = missed; newest at the back.
    window: VecDeque<bool>,
}

impl Health {
    /// Starts in [`HealthState::Unknown`] with carrier up and the first probe due at `now`.
    pub fn new(config: HealthConfig, now: Instant) -> Self {
        let window = VecDeque::with_capacity(config.loss_window);
        Health {
            config,
            state: HealthState::Unknown,
            last_change: now,
            carrier: true,
            next_seq: 0,
            next_send: now,
            outstanding: VecDeque::new(),
            misses_in_row: 0,
            successes_in_row: 0,
            srtt: None,
            rttvar: Duration::ZERO,
            latest_rtt: None,
            window,
        }
    }

    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    pub fn state(&self) -> HealthState {
        self.state
    }

    /// When the state last changed (construction time if never).
    pub fn last_change(&self) -> Instant {
        self.last_change
    }

    pub fn carrier_up(&self) -> bool {
        self.carrier
    }

    /// Smoothed RTT (RFC 6298 SRTT); `None` before the first answered probe.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// RTT variation (RFC 6298 RTTVAR).
    pub fn rttvar(&self) -> Duration {
        self.rttvar
    }

    /// RTT of the most recent answered probe.
    pub fn latest_rtt(&self) -> Option<Duration> {
        self.latest_rtt
    }

    /// Fraction of the last `loss_window` resolved probes that were missed (0.0 with no probes yet).
    pub fn loss(&self) -> f64 {
        if self.window.is_empty() {
            return 0.0;
        }
        let missed = self.window.iter().filter(|ok| !**ok).count();
        missed as f64 / self.window.len() as f64
    }

    /// The timeout a probe sent now would get.
    pub fn timeout(&self) -> Duration {
        match self.srtt {
            None => self.config.timeout_max,
            Some(srtt) => {
                let rto = srtt + 4 * self.rttvar;
                rto.clamp(self.config.timeout_min, self.config.timeout_max.max(self.config.timeout_min))
            }
        }
    }

    /// Probes sent and not yet answered or timed out.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// The next instant at which [`Health::on_tick`] has work: a probe due or a probe timing out. `None`
    /// while the carrier is down (nothing happens until [`Health::carrier`]).
    pub fn next_deadline(&self) -> Option<Instant> {
        if !self.carrier {
            return None;
        }
        let first_timeout = self.outstanding.iter().map(|o| o.deadline).min();
        Some(first_timeout.map_or(self.next_send, |t| t.min(self.next_send)))
    }

    /// Resolves probes whose timeout passed (misses), then asks for a probe if one is due.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if !self.carrier {
            return actions;
        }
        // Timeouts may differ per probe (adaptive), so scan rather than only looking at the front.
        let mut expired = Vec::new();
        self.outstanding.retain(|o| {
            if o.deadline <= now {
                expired.push(o.seq);
                false
            } else {
                true
            }
        });
        for _ in expired {
            self.miss(now, &mut actions);
        }
        if now >= self.next_send {
            let seq = self.next_seq;
            self.next_seq = self.next_seq.wrapping_add(1);
            let timeout = self.timeout();
            self.outstanding.push_back(Outstanding { seq, sent: now, deadline: now + timeout });
            // Bound: a probe older than any timeout could be is a miss already.
            let cap = (self.config.timeout_max.as_nanos() / self.config.interval.as_nanos().max(1)) as usize + 2;
            while self.outstanding.len() > cap {
                self.outstanding.pop_front();
                self.miss(now, &mut actions);
            }
            self.next_send += self.config.interval;
            if self.next_send <= now {
                self.next_send = now + self.config.interval;
            }
            actions.push(Action::SendProbe { seq });
        }
        actions
    }

    /// An authenticated reply for `seq` arrived. Replies for probes already resolved (late, duplicate,
    /// unknown) are ignored; returns whether the reply was counted.
    pub fn on_reply(&mut self, now: Instant, seq: u32) -> (bool, Vec<Action>) {
        let mut actions = Vec::new();
        let Some(pos) = self.outstanding.iter().position(|o| o.seq == seq) else {
            return (false, actions);
        };
        let probe = self.outstanding.remove(pos).expect("position is in range");
        if now > probe.deadline {
            // Answered, but after its timeout: the next on_tick would have called it a miss.
            self.miss(now, &mut actions);
            return (false, actions);
        }
        self.rtt_sample(now.saturating_duration_since(probe.sent));
        self.record(true);
        self.misses_in_row = 0;
        self.successes_in_row = self.successes_in_row.saturating_add(1);
        if self.state != HealthState::Up && self.successes_in_row >= self.config.up_after {
            self.set_state(now, HealthState::Up, &mut actions);
        }
        (true, actions)
    }

    /// Link carrier changed. Down acts at once; up resumes probing at `now`.
    pub fn carrier(&mut self, now: Instant, up: bool) -> Vec<Action> {
        let mut actions = Vec::new();
        if up == self.carrier {
            return actions;
        }
        self.carrier = up;
        self.outstanding.clear();
        self.misses_in_row = 0;
        self.successes_in_row = 0;
        if up {
            self.next_send = now;
        } else {
            self.set_state(now, HealthState::Down, &mut actions);
        }
        actions
    }

    fn miss(&mut self, now: Instant, actions: &mut Vec<Action>) {
        self.record(false);
        self.successes_in_row = 0;
        self.misses_in_row = self.misses_in_row.saturating_add(1);
        if self.state != HealthState::Down && self.misses_in_row >= self.config.down_after {
            self.set_state(now, HealthState::Down, actions);
        }
    }

    fn record(&mut self, answered: bool) {
        if self.config.loss_window == 0 {
            return;
        }
        if self.window.len() == self.config.loss_window {
            self.window.pop_front();
        }
        self.window.push_back(answered);
    }

    /// RFC 6298 §2: first sample R: SRTT = R, RTTVAR = R/2; then RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R|,
    /// SRTT = 7/8 SRTT + 1/8 R.
    fn rtt_sample(&mut self, r: Duration) {
        self.latest_rtt = Some(r);
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((srtt * 7 + r) / 8);
            }
        }
    }

    fn set_state(&mut self, now: Instant, to: HealthState, actions: &mut Vec<Action>) {
        if self.state == to {
            return;
        }
        let change = StateChange { from: self.state, to, at: now };
        self.state = to;
        self.last_change = now;
        actions.push(Action::StateChanged(change));
    }
}

#[cfg(test)]
mod tests;
