//! The second health signal: each uplink's health from the kernel's own view of its MPTCP subflows, used
//! when the UDP probes go unanswered on every uplink (a firewall dropping UDP to hag, hag's responder down)
//! while MPTCP itself may work fine. Sans-IO: samples and `now` in, verdicts out.
//!
//! - [`judge`] turns one `sock_diag` sample of the subflows towards hag into an [`Evidence`] per uplink.
//! - [`sending_rtts`] reads from the same sample each uplink's round trip under an upload, for the path
//!   controller ([`super::adapt`]); [`with_own_closures`] keeps subflows hcpe closed itself from counting as
//!   silence.
//! - [`Fallback`] decides per uplink which signal counts and, in subflow mode, the verdict. Every uplink switches
//!   to its subflows when no probe was ever answered and the first uplink's probes give up, or when every
//!   probed uplink with carrier is `Down` by its probes while some uplink's subflows carry data; one uplink
//!   switches alone when its probes give up while its own subflows are still receiving (a real cut silences
//!   them as long as the probes). An uplink switches back as soon as its own probe verdict is `Up` again.
//!
//! Invariants:
//! - in probe mode the verdict is the probe verdict, untouched; nothing here runs in the healthy case;
//! - in subflow mode a lost carrier is `Down`; `Dead` evidence is `Down` for a hold time that doubles on each
//!   failed trial (up to [`HOLD_MAX`]); after the hold the uplink is on trial ([`Verdict::trial`]): usable for
//!   joins, last in line for new connections, until its subflows carry data (`Up`) or fail again;
//! - no evidence (idle subflows, or none) keeps an uplink usable: without probes, only a failure is a reason
//!   to drop a path.

use std::time::{Duration, Instant};

use common::mptcp::subflow_diag::SubflowTcp;
use common::probe::HealthState;

/// First hold time of an uplink whose subflows failed.
pub const HOLD_MIN: Duration = Duration::from_secs(2);
/// Longest hold time.
pub const HOLD_MAX: Duration = Duration::from_secs(30);

/// What an uplink's subflows say about its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// Data or ACKs arrived within [`Thresholds::sibling`] on one of its subflows: the path works right now.
    Receiving,
    /// Data or ACKs arrived within [`Thresholds::fresh`] on one of its subflows.
    Alive,
    /// Its subflows fail: a SYN or data retransmitted without answer, or silence while another uplink's
    /// subflow of the same connection keeps receiving.
    Dead,
    /// Nothing to tell (no subflow, or idle ones).
    Silent,
}

/// One subflow of a connection to hag, attributed to an uplink by its local address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub uplink: usize,
    /// The MPTCP connection's local token (subflows of one connection share it).
    pub conn: u32,
    pub tcp: SubflowTcp,
}

/// Thresholds of [`judge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// A subflow that received within this is alive.
    pub fresh: Duration,
    /// A subflow silent for this long (and at least four of its RTTs) while another subflow of its connection
    /// received within [`Thresholds::sibling`] is dead, ...
    pub silent: Duration,
    pub sibling: Duration,
    /// ... unless it has been silent for longer than this: then the scheduler has simply not used it (an
    /// application-limited stream stays on the fastest subflow), and a cut shows well before.
    pub idle: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            fresh: Duration::from_millis(1000),
            silent: Duration::from_millis(800),
            sibling: Duration::from_millis(200),
            idle: Duration::from_millis(3000),
        }
    }
}

fn ms(v: u32) -> Duration {
    Duration::from_millis(u64::from(v))
}

/// Time since anything arrived on the subflow.
fn quiet(t: &SubflowTcp) -> Duration {
    ms(t.last_data_recv_ms.min(t.last_ack_recv_ms))
}

/// The evidence of each of `uplinks` uplinks from one sample of the subflows.
pub fn judge(samples: &[Sample], uplinks: usize, th: &Thresholds) -> Vec<Evidence> {
    let live_within = |s: &Sample, d: Duration| s.tcp.state == SubflowTcp::ESTABLISHED && quiet(&s.tcp) <= d;
    (0..uplinks)
        .map(|i| {
            let mine: Vec<&Sample> = samples.iter().filter(|s| s.uplink == i).collect();
            let failing = mine.iter().any(|s| {
                let t = &s.tcp;
                let syn_lost = t.state == SubflowTcp::SYN_SENT && t.retransmits > 0;
                let data_lost = t.state == SubflowTcp::ESTABLISHED && t.unacked > 0 && t.backoff > 0;
                let limit = th.silent.max(Duration::from_micros(u64::from(t.rtt_us) * 4));
                let silent_beside_a_live_sibling = t.state == SubflowTcp::ESTABLISHED
                    && quiet(t) >= limit
                    && quiet(t) <= th.idle.max(limit * 2)
                    && samples.iter().any(|o| o.conn == s.conn && o.uplink != i && live_within(o, th.sibling));
                syn_lost || data_lost || silent_beside_a_live_sibling
            });
            // Anything received since the failure began outweighs it (another connection on the same path
            // proves the path works).
            let recent = mine.iter().any(|s| live_within(s, th.sibling));
            let alive = mine.iter().any(|s| live_within(s, th.fresh));
            match (failing, recent, alive) {
                (true, false, _) => Evidence::Dead,
                (_, true, _) => Evidence::Receiving,
                (_, _, true) => Evidence::Alive,
                _ => Evidence::Silent,
            }
        })
        .collect()
}

/// A subflow with at least this many segments unacknowledged carries a transfer we send (an upload), not a
/// request or acknowledgements alone.
pub const SENDING_MIN_UNACKED: u32 = 8;
/// ... and one acknowledged within this is alive right now: its round trip is the path's under our load.
pub const SENDING_FRESH_ACK: Duration = Duration::from_millis(200);

/// The subflow carries a transfer we send and was acknowledged just now.
fn sends(t: &SubflowTcp) -> bool {
    t.unacked >= SENDING_MIN_UNACKED && ms(t.last_ack_recv_ms) <= SENDING_FRESH_ACK
}

/// Per uplink, the largest smoothed round trip of its subflows that carry a transfer we send
/// ([`SENDING_MIN_UNACKED`]) and were acknowledged within [`SENDING_FRESH_ACK`]; `None` where none does.
///
/// The kernel updates that round trip on every acknowledgement, so a queue that fills under an upload shows
/// in it within a few of them, while the probes, one per interval, show it only once their answers come back
/// through the same queue. A download's subflows here only receive: they measure nothing of the path under load.
pub fn sending_rtts(samples: &[Sample], uplinks: usize) -> Vec<Option<Duration>> {
    (0..uplinks)
        .map(|i| {
            samples
                .iter()
                .filter(|s| s.uplink == i && s.tcp.state == SubflowTcp::ESTABLISHED)
                .filter(|s| sends(&s.tcp))
                .map(|s| Duration::from_micros(u64::from(s.tcp.rtt_us)))
                .max()
        })
        .collect()
}

/// A subflow with nothing in flight that has heard nothing for this long (and four of its round trips) while
/// a sibling of its connection carries data waits for that sibling.
pub const WAITING_QUIET: Duration = Duration::from_millis(200);

/// Per uplink, a bit mask of the uplinks that wait for it (bit `j`: uplink `j`): some connection's subflow on
/// it carries data (an upload in flight and acknowledged within [`SENDING_FRESH_ACK`], or a download's data
/// received within it) while the same connection's subflow on uplink `j` has nothing in flight and has heard
/// nothing for [`WAITING_QUIET`].
///
/// Both subflows are open and the transfer still moves, so the kernel's scheduler, which sends on the subflow
/// that would get data out soonest, would use the idle one; it does not because the connection-level window is
/// full: the receiver holds everything sent since the oldest data still queued on the slow subflow
/// (head-of-line blocking). At most 32 uplinks are told apart; MPTCP itself uses at most 8 subflows.
pub fn waiting_for(samples: &[Sample], uplinks: usize) -> Vec<u32> {
    let fresh = |d: u32| ms(d) <= SENDING_FRESH_ACK;
    let carries = |t: &SubflowTcp| t.state == SubflowTcp::ESTABLISHED && (sends(t) || fresh(t.last_data_recv_ms));
    let waits = |t: &SubflowTcp| {
        t.state == SubflowTcp::ESTABLISHED
            && t.unacked == 0
            && quiet(t) >= WAITING_QUIET.max(Duration::from_micros(u64::from(t.rtt_us)) * 4)
    };
    (0..uplinks)
        .map(|i| {
            samples
                .iter()
                .filter(|s| s.uplink == i && carries(&s.tcp))
                .flat_map(|s| samples.iter().filter(move |o| o.conn == s.conn && o.uplink != i && o.uplink < 32))
                .filter(|o| waits(&o.tcp))
                .fold(0, |mask, o| mask | 1 << o.uplink)
        })
        .collect()
}

/// The evidence of uplinks whose subflows hcpe itself closed a moment ago while they carried an upload
/// (`closed_alive`: its endpoint re-created on a demotion): `Silent` there is hcpe's doing, and the path was
/// working when they closed, so it counts as `Receiving`. Without this, a link whose rate collapses, whose
/// probes then sit in its full queue past their timeout, would be called down by its probes with nothing to
/// say otherwise, and its endpoint removed a second time: every subflow the kernel closes makes it resend
/// the whole connection-level queue.
pub fn with_own_closures(mut evidence: Vec<Evidence>, closed_alive: &[bool]) -> Vec<Evidence> {
    for (e, closed) in evidence.iter_mut().zip(closed_alive) {
        if *closed && *e == Evidence::Silent {
            *e = Evidence::Receiving;
        }
    }
    evidence
}

/// What [`Fallback`] needs to know about one uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Input {
    /// The uplink is probed now.
    pub probed: bool,
    /// Its probe verdict.
    pub probe: HealthState,
    /// Its carrier.
    pub carrier: bool,
}

/// The verdict of one uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub state: HealthState,
    /// The verdict comes from the subflows, not the probes.
    pub from_subflows: bool,
    /// Usable, but only after every other uplink for new connections (after a failure, until proven).
    pub trial: bool,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Health comes from the subflows for this uplink.
    via: bool,
    state: HealthState,
    trial: bool,
    down_until: Option<Instant>,
    hold: Duration,
}

/// Chooses between the probe verdicts and the subflow evidence (see the module docs).
#[derive(Debug)]
pub struct Fallback {
    slots: Vec<Slot>,
    evidence: Vec<Evidence>,
}

impl Fallback {
    pub fn new(uplinks: usize) -> Fallback {
        Fallback { slots: vec![Slot::fresh(false); uplinks], evidence: vec![Evidence::Silent; uplinks] }
    }

    /// Health comes from the subflows for some uplink now.
    pub fn active(&self) -> bool {
        self.slots.iter().any(|s| s.via)
    }

    /// The last evidence per uplink.
    pub fn evidence(&self) -> &[Evidence] {
        &self.evidence
    }

    /// Whether the subflows are worth sampling: some probed uplink with carrier is down by its probes, or some
    /// uplink's health comes from its subflows. Never while every probe is answered.
    pub fn wants_samples(&self, inputs: &[Input]) -> bool {
        self.active() || inputs.iter().any(|i| i.probed && i.carrier && i.probe == HealthState::Down)
    }

    /// Whether to switch to the subflows: no probe was ever answered and one uplink's probes have given up
    /// already (the others would follow: waiting for them would drop and re-add that uplink's endpoint), or
    /// every probe goes unanswered while some uplink's subflows carry data.
    fn should_enter(&self, inputs: &[Input], answered: bool) -> bool {
        let some_down = inputs.iter().any(|i| i.probed && i.carrier && i.probe == HealthState::Down);
        let none_up = !inputs.iter().any(|i| i.probed && i.probe == HealthState::Up);
        let carrying = self.evidence.iter().any(|e| matches!(e, Evidence::Alive | Evidence::Receiving));
        (!answered && some_down && none_up) || (all_unanswered(inputs) && carrying)
    }

    /// Takes the probe verdicts and, when there is a fresh sample, the evidence; returns each uplink's verdict.
    /// `answered` tells whether any probe was ever answered since start.
    pub fn update(
        &mut self,
        now: Instant,
        inputs: &[Input],
        answered: bool,
        evidence: Option<Vec<Evidence>>,
    ) -> Vec<Verdict> {
        if let Some(e) = evidence {
            self.evidence = e;
        }
        if self.should_enter(inputs, answered) && !self.slots.iter().all(|s| s.via) {
            for s in &mut self.slots {
                if !s.via {
                    *s = Slot::fresh(true);
                }
            }
        }
        self.slots
            .iter_mut()
            .zip(inputs)
            .zip(&self.evidence)
            .map(|((slot, input), evidence)| {
                if input.probed && input.probe == HealthState::Up {
                    // An answered probe: the probes are trusted again for this uplink.
                    slot.via = false;
                } else if !slot.via
                    && input.probed
                    && input.carrier
                    && input.probe == HealthState::Down
                    && *evidence == Evidence::Receiving
                {
                    // Its probes died while its subflows still receive: UDP is filtered, the path works.
                    *slot = Slot::fresh(true);
                }
                if !slot.via {
                    return Verdict { state: input.probe, from_subflows: false, trial: false };
                }
                slot.judge(now, input.carrier, *evidence);
                Verdict { state: slot.state, from_subflows: true, trial: slot.trial }
            })
            .collect()
    }
}

impl Slot {
    fn fresh(via: bool) -> Slot {
        Slot { via, state: HealthState::Unknown, trial: false, down_until: None, hold: HOLD_MIN }
    }

    /// The subflow-mode verdict of one uplink (see the module docs).
    fn judge(&mut self, now: Instant, carrier: bool, evidence: Evidence) {
        if !carrier {
            self.state = HealthState::Down;
            self.trial = false;
            return;
        }
        match evidence {
            Evidence::Dead if self.down_until.is_none() => {
                // A trial that failed holds twice as long as the last hold.
                if self.trial {
                    self.hold = (self.hold * 2).min(HOLD_MAX);
                }
                self.state = HealthState::Down;
                self.trial = false;
                self.down_until = Some(now + self.hold);
            }
            Evidence::Alive | Evidence::Receiving if self.down_until.is_none_or(|t| now >= t) => {
                *self = Slot { state: HealthState::Up, ..Slot::fresh(true) };
            }
            _ => {
                if self.down_until.is_some_and(|t| now >= t) {
                    self.down_until = None;
                    self.state = HealthState::Unknown;
                    self.trial = true;
                } else if self.state == HealthState::Down && self.down_until.is_none() {
                    // Carrier back: usable again, on trial.
                    self.state = HealthState::Unknown;
                    self.trial = true;
                }
            }
        }
    }
}

/// Every probed uplink that has carrier is `Down` by its probes (and there is at least one).
fn all_unanswered(inputs: &[Input]) -> bool {
    let mut probed = inputs.iter().filter(|i| i.probed && i.carrier).peekable();
    probed.peek().is_some() && probed.all(|i| i.probe == HealthState::Down)
}

#[cfg(test)]
mod tests;
