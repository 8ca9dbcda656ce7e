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
//! - RTT: RFC 6298 smoothing (alpha 1/8, beta 1/4) over every answered probe, also one answered after its
//!   timeout (of the last 64 timed out): it stays a miss, but its round trip is true, and it lets the timeout
//!   follow a path whose delay jumped (a queue filling under load). Duplicate and unknown replies change
//!   nothing. Loss: probes never answered / resolved probes over the last `loss_window` probes (a late answer
//!   is a miss for the verdict but no loss), of a path that is up: the run of misses that makes it Down and
//!   the misses while it is Down are an outage, which the state reports, not loss (a path back from a cut
//!   would otherwise look lossy for a whole window).
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

impl HealthConfig {
    /// The longest a path that stops answering can stay out of Down: the first probe it misses is sent within
    /// an interval of the silence, the `down_after`-th one `down_after - 1` intervals after that, and each
    /// miss is resolved at most `timeout_max` after its probe was sent.
    pub fn silence_to_down(&self) -> Duration {
        self.interval * self.down_after + self.timeout_max.max(self.timeout_min)
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
    /// Round-trip samples taken since start (answers in time and late ones).
    rtt_samples: u64,
    /// Probes that timed out, with their send time (newest at the back, at most [`TIMED_OUT_MEMORY`]): a late
    /// answer still measures the round trip.
    timed_out: VecDeque<(u32, Instant)>,
    /// When the latest-sent of the answered probes (in time or late) was sent.
    newest_answered: Option<Instant>,
    /// (seq, sent, answered at all) of the last `loss_window` resolved probes of the path while up, newest at
    /// the back.
    window: VecDeque<(u32, Instant, bool)>,
}

/// How many timed-out probes are remembered for their late answers.
const TIMED_OUT_MEMORY: usize = 64;

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
            rtt_samples: 0,
            timed_out: VecDeque::new(),
            newest_answered: None,
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

    /// RTT of the most recently answered probe, answered in time or late.
    pub fn latest_rtt(&self) -> Option<Duration> {
        self.latest_rtt
    }

    /// Round-trip samples taken since start: a new one has arrived when this grew.
    pub fn rtt_samples(&self) -> u64 {
        self.rtt_samples
    }

    /// Send times of the probes without an answer yet that may still get one: outstanding, or timed out (the
    /// last 64), and sent after the latest-sent answered probe. Each one's age is a lower bound of the path's
    /// round trip now (or it was lost). One sent before an answered probe was lost, not queued (a queue is
    /// first in, first out), and is left out: its age bounds nothing.
    pub fn unanswered(&self) -> Vec<Instant> {
        let pending = |sent: &Instant| self.newest_answered.is_none_or(|n| *sent > n);
        self.outstanding
            .iter()
            .map(|o| o.sent)
            .chain(self.timed_out.iter().map(|(_, sent)| *sent))
            .filter(pending)
            .collect()
    }

    /// Fraction of the last `loss_window` resolved probes that were never answered (0.0 with no probes yet). An
    /// answer after the timeout is a miss for the verdict, not a loss: the path was slow, nothing was lost.
    pub fn loss(&self) -> f64 {
        if self.window.is_empty() {
            return 0.0;
        }
        let missed = self.window.iter().filter(|(_, _, ok)| !*ok).count();
        missed as f64 / self.window.len() as f64
    }

    /// How many resolved probes [`Health::loss`] is over (at most `loss_window`; fewer just after start).
    pub fn loss_probes(&self) -> usize {
        self.window.len()
    }

    /// When the oldest probe [`Health::loss`] is over was sent: the loss describes the path since then.
    pub fn loss_since(&self) -> Option<Instant> {
        self.window.front().map(|(_, sent, _)| *sent)
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
                expired.push((o.seq, o.sent));
                false
            } else {
                true
            }
        });
        for probe in expired {
            self.timed_out_probe(probe);
            self.miss(now, probe, &mut actions);
        }
        if now >= self.next_send {
            let seq = self.next_seq;
            self.next_seq = self.next_seq.wrapping_add(1);
            let timeout = self.timeout();
            self.outstanding.push_back(Outstanding { seq, sent: now, deadline: now + timeout });
            // Bound: a probe older than any timeout could be is a miss already.
            let cap = (self.config.timeout_max.as_nanos() / self.config.interval.as_nanos().max(1)) as usize + 2;
            while self.outstanding.len() > cap {
                if let Some(o) = self.outstanding.pop_front() {
                    self.timed_out_probe((o.seq, o.sent));
                    self.miss(now, (o.seq, o.sent), &mut actions);
                }
            }
            self.next_send += self.config.interval;
            if self.next_send <= now {
                self.next_send = now + self.config.interval;
            }
            actions.push(Action::SendProbe { seq });
        }
        actions
    }

    /// An authenticated reply for `seq` arrived. A late one (after its probe's timeout) is a miss for the
    /// verdict, but not a loss, and its round trip is sampled; duplicates and unknown ones are ignored.
    /// Returns whether the reply was counted as an answer in time.
    pub fn on_reply(&mut self, now: Instant, seq: u32) -> (bool, Vec<Action>) {
        let mut actions = Vec::new();
        let Some(pos) = self.outstanding.iter().position(|o| o.seq == seq) else {
            // The answer of a probe that timed out: a miss already, but still a true round trip (each probe is
            // sent once, so Karn's ambiguity does not arise). Taking it lets the timeout follow a path whose
            // delay grew (a queue filling under load), and the path controller see how slow the path is.
            if let Some(i) = self.timed_out.iter().position(|(s, _)| *s == seq) {
                let (_, sent) = self.timed_out.remove(i).expect("position is in range");
                self.rtt_sample(now, sent);
                self.answered_late(seq);
            }
            return (false, actions);
        };
        let probe = self.outstanding.remove(pos).expect("position is in range");
        if now > probe.deadline {
            // Answered, but after its timeout: the next on_tick would have called it a miss.
            self.rtt_sample(now, probe.sent);
            self.miss(now, (seq, probe.sent), &mut actions);
            self.answered_late(seq);
            return (false, actions);
        }
        self.rtt_sample(now, probe.sent);
        self.record(seq, probe.sent, true);
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

    fn miss(&mut self, now: Instant, (seq, sent): (u32, Instant), actions: &mut Vec<Action>) {
        self.successes_in_row = 0;
        self.misses_in_row = self.misses_in_row.saturating_add(1);
        if self.state == HealthState::Down {
            return;
        }
        self.record(seq, sent, false);
        if self.misses_in_row >= self.config.down_after {
            // The run that makes it Down is the outage starting: out of the loss window again.
            for _ in 0..self.config.down_after {
                if self.window.back().is_some_and(|(_, _, ok)| !*ok) {
                    self.window.pop_back();
                }
            }
            self.set_state(now, HealthState::Down, actions);
        }
    }

    fn timed_out_probe(&mut self, probe: (u32, Instant)) {
        if self.timed_out.len() == TIMED_OUT_MEMORY {
            self.timed_out.pop_front();
        }
        self.timed_out.push_back(probe);
    }

    /// A probe counted as missed was answered after all: not lost.
    fn answered_late(&mut self, seq: u32) {
        if let Some(entry) = self.window.iter_mut().rev().find(|(s, _, _)| *s == seq) {
            entry.2 = true;
        }
    }

    fn record(&mut self, seq: u32, sent: Instant, answered: bool) {
        if self.config.loss_window == 0 {
            return;
        }
        if self.window.len() == self.config.loss_window {
            self.window.pop_front();
        }
        self.window.push_back((seq, sent, answered));
    }

    /// RFC 6298 §2: first sample R: SRTT = R, RTTVAR = R/2; then RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R|,
    /// SRTT = 7/8 SRTT + 1/8 R. R is from the answer of a probe sent at `sent` arriving `now`.
    fn rtt_sample(&mut self, now: Instant, sent: Instant) {
        let r = now.saturating_duration_since(sent);
        self.newest_answered = self.newest_answered.max(Some(sent));
        self.latest_rtt = Some(r);
        self.rtt_samples += 1;
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
