//! The path controller (sans-IO): whether an `adaptive` uplink helps the aggregate or drags it, and whether
//! an `overflow` uplink is needed because the paths that carry traffic are full.
//!
//! Why: the kernel's MPTCP scheduler sends on every non-backup subflow with room in its window. A path whose
//! round trip is far longer than the best path's (a slow LTE link whose modem queue is full adds hundreds of
//! milliseconds) holds data the receiver must wait for, and the aggregate falls below the best path alone.
//! Measured on the testbed (BENCHMARKS.md): with DSL 50 Mbit/s 10 ms and LTE 30 Mbit/s 30 ms the paths'
//! loaded round trips differ by about 70 ms and MPTCP reaches 0.97 × their sum; with LTE 5 Mbit/s 150 ms they
//! differ by 350-700 ms and MPTCP stays below DSL alone. Marking the slow path `backup` (MP_PRIO, so hag's
//! sender obeys too) gives DSL alone back. The round trips come from the uplinks' probes, which share each
//! path's queues with the subflows, so they see the delay a subflow sees, loaded or idle.
//!
//! Inputs: each answered probe ([`Controller::on_rtt`]), each uplink's probe loss, and per evaluation which
//! uplinks are usable and under which [`Policy`], and the round trip its subflows measure under an upload. Output: the uplinks whose [`Carry`] changes, each with a
//! [`Decision`] that says why, with the numbers behind it.
//!
//! Invariants:
//! - a path's round trip is the median over its probes sent in the last [`RTT_WINDOW`]: the round trips of
//!   those answered, and the ages of those not answered yet, where older than that median (each a lower
//!   bound: a queue that fills shows before its first late answer arrives; the prober leaves out probes sent
//!   before an answered one, which were lost, not queued, as when our own transfers fill a drop-tail queue;
//!   jitter, one late reply or one lost probe do not move it), the latter only while some probe was answered
//!   in the last [`ANSWER_HORIZON`] (a path that answers nothing is filtered or dead, which is the health
//!   verdict's business); without either it has none and nothing is decided for it;
//! - under an upload, a path's round trip for its demotion and promotion and as a reference is the larger of
//!   that median and the smoothed round trip of its subflows that carry the upload, which the kernel updates
//!   on every acknowledgement: when a link's rate collapses, that one passes the limit within a few hundred
//!   milliseconds, while the probes' median waits for their late answers (0.8-1 s at 3 Mbit/s behind a
//!   256 KiB queue), and every moment in between the data queued on the path keeps the best path idle.
//!   Subflows that are acknowledged prove the path alive, so it is not left to the health verdict;
//! - a path demoted on its round trip or loss has answered some probe since it went bad, or has been bad for
//!   longer than the health verdict takes to call a silent path down (`silence_to_down`): until its first
//!   late answer, a path whose queue fills looks like one that was cut, and a cut is the verdict's business
//!   (demoted for it, the path would come back from the cut as a backup). Traffic still arriving on the
//!   link does not tell a queue that fills from probes lost in a burst to a queue our transfers keep full;
//! - a path is saturated while it is busy (its interface moves more than probes) and its round trip is more
//!   than `overflow_delay`, or half its idle minimum where that is less, above that minimum: a sender that
//!   fills it keeps a queue there (BBR one of about its idle round trip, a loss-based one a full buffer);
//! - an adaptive path is compared with the best (lowest round trip) other usable path that carries traffic; it
//!   is demoted only after being worse than `max_rtt_excess` (or losing more than `max_loss` of its probes)
//!   for `demote_after` without a break, so the best path is never demoted and one path always carries; a
//!   round trip n times over the limit needs only 1/n of `demote_after` (a link whose rate collapses under a
//!   transfer holds the receiver waiting for every moment it is not demoted, and a 1 s median that far over
//!   is no jitter);
//! - an adaptive path that is saturated while the best carrying path, busy too and carrying more, is not
//!   (`head_of_line`, for [`HEAD_OF_LINE_AFTER`]) drags the aggregate: the data queued on it keeps the
//!   receiver waiting and the connection-level window closed, so the best path idles although the transfer
//!   wants more. In a healthy aggregation the sender fills both paths' queues; with an application that
//!   sends slowly neither fills. Measured on the testbed with LTE 30 Mbit/s 30 ms and 60 ms jitter: LTE's
//!   round trip 110-150 ms (within `max_rtt_excess` of DSL's 25 ms), DSL's queue empty, LTE holding 70 kB
//!   unsent, and the aggregate at 0.83 (download) and 0.37 (upload) x DSL alone. When the best path waits
//!   outright (a connection's subflow there idle while its subflow on the adaptive path carries, read from the
//!   subflows) that is the same drag at its worst, shown directly: [`WAITED_FOR_AFTER`] is enough;
//! - probe loss is evidence only when none of the probes it is over was sent while the path was saturated:
//!   our own transfers keep a drop-tail queue full and the probes that find it full are dropped with the data,
//!   which is congestion the subflows' own congestion control answers, not a lossy link (measured: 8 % of a
//!   good LTE's probes with four transfers on the testbed, more with more);
//! - a demoted path is promoted again when (a) no other path carries traffic (at once), or (b) it has been
//!   within half the limits for `promote_after` and either it was seen bad while idle (its interface quiet, at
//!   least [`SETTLE`] after the demotion: the link itself changed and has now recovered) or its trial time has
//!   come and the path it is compared with is saturated (a trial helps only a transfer that wants more than
//!   that path carries, and only such a transfer can show whether it helps). A path that is bad only under
//!   load looks good idle: trials find that out, and a trial that fails (demoted again within
//!   [`TRIAL_WINDOW`]) doubles the wait for the next, from [`TRIAL_FIRST`] up to [`TRIAL_MAX`];
//! - an overflow path carries traffic while every other usable carrying path is saturated for
//!   [`OVERFLOW_AFTER`], and stops when that has not been so for `overflow_release_after`; with no other
//!   carrying path it carries at once;
//! - each change is returned once with its reason; a policy change from outside resets the path's timers.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

mod file;

pub use file::PathControlFile;

/// How far back answered probes count for a path's round trip.
pub const RTT_WINDOW: Duration = Duration::from_secs(1);
/// Unanswered probes count towards a path's round trip while some probe was answered this recently.
pub const ANSWER_HORIZON: Duration = Duration::from_secs(5);
/// How long a demoted path's round trip still shows its queue draining: samples before are not "idle".
pub const SETTLE: Duration = Duration::from_secs(2);
/// A demotion this soon after a promotion makes the promotion a failed trial.
pub const TRIAL_WINDOW: Duration = Duration::from_secs(30);
/// The wait for the first trial after a demotion.
pub const TRIAL_FIRST: Duration = Duration::from_secs(10);
/// The longest wait between trials.
pub const TRIAL_MAX: Duration = Duration::from_secs(300);
/// How long an adaptive path must keep the best path waiting ([`Reason::HeadOfLine`]) before it is demoted:
/// longer than a loss-based congestion control's sawtooth lets a full queue drain.
pub const HEAD_OF_LINE_AFTER: Duration = Duration::from_secs(2);
/// How long the best path must have waited outright for an adaptive path (a connection's subflow there idle
/// while its subflow on the adaptive path carried, [`PathInput::waited_for_by`]) before that path is demoted:
/// each reading already shows the best path idle for a while, and a connection whose fast subflow stops
/// needs no sawtooth to explain it.
pub const WAITED_FOR_AFTER: Duration = Duration::from_millis(400);
/// How long the carrying paths must be saturated before an overflow path joins.
pub const OVERFLOW_AFTER: Duration = Duration::from_millis(500);
/// The shortest queue that shows a path saturated, whatever its idle round trip: below it, probe round trips
/// vary with scheduling on either end.
pub const MIN_SATURATION_QUEUE: Duration = Duration::from_millis(2);
/// A path's idle minimum round trip is the minimum over this long (in [`BASE_BUCKETS`] buckets).
pub const BASE_WINDOW: Duration = Duration::from_secs(300);
const BASE_BUCKETS: u32 = 10;
/// Decisions kept per path for the admin API.
pub const HISTORY: usize = 8;

/// Whether a path carries traffic (a `subflow` endpoint) or stands by (`subflow,backup`: its subflows exist
/// and take over when nothing else is left).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Carry {
    Active,
    Backup,
}

impl Carry {
    pub fn as_str(self) -> &'static str {
        match self {
            Carry::Active => "active",
            Carry::Backup => "backup",
        }
    }
}

/// What the controller does with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The operator pinned it: active carries (a reference for the others), anything else does not.
    Pinned { carries: bool },
    /// Demoted while it would drag the aggregate below the best path, promoted while it helps.
    Adaptive,
    /// Carries only while the carrying paths are saturated.
    Overflow,
}

impl Policy {
    /// A path under this policy starts out so.
    pub fn initial(self) -> Carry {
        match self {
            Policy::Pinned { carries: true } | Policy::Adaptive => Carry::Active,
            Policy::Pinned { carries: false } | Policy::Overflow => Carry::Backup,
        }
    }
}

/// Why a path's carry changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Its round trip exceeded the best carrying path's by more than `max_rtt_excess`.
    RttExcess,
    /// It lost more than `max_loss` of its probes.
    Loss,
    /// It was saturated while the best carrying path, busy and carrying more, was not, or a connection's subflow
    /// on the best path idled while its subflow here carried: the data queued here kept the best path waiting.
    HeadOfLine,
    /// It was bad while idle and is within half the limits again.
    Recovered,
    /// It looked good idle; it carries again to find out whether it helps under load.
    Trial,
    /// No other usable path carries traffic.
    OnlyPath,
    /// Every carrying path is saturated (overflow).
    Saturated,
    /// No carrying path is saturated any more (overflow).
    Drained,
}

impl Reason {
    /// Every reason, for metrics.
    pub const ALL: [Reason; 8] = [
        Reason::RttExcess,
        Reason::Loss,
        Reason::HeadOfLine,
        Reason::Recovered,
        Reason::Trial,
        Reason::OnlyPath,
        Reason::Saturated,
        Reason::Drained,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RttExcess => "rtt_excess",
            Reason::Loss => "loss",
            Reason::HeadOfLine => "head_of_line",
            Reason::Recovered => "recovered",
            Reason::Trial => "trial",
            Reason::OnlyPath => "only_path",
            Reason::Saturated => "saturated",
            Reason::Drained => "drained",
        }
    }
}

/// One change of a path's carry, with the measurements it was made on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub at: Instant,
    pub to: Carry,
    pub reason: Reason,
    /// The path's round trip under load then (its probes', or its uploading subflows' where larger).
    pub rtt: Option<Duration>,
    /// The round trip it was compared with: the best other carrying path's (adaptive), or the carrying
    /// paths' smallest queueing delay (overflow).
    pub reference: Option<Duration>,
    /// The path's probe loss then.
    pub loss: f64,
}

/// Resolved probes a loss fraction needs before it counts: one probe lost among the first few after a start
/// (11 % of 9) would otherwise demote a good path for a whole trial period; with 20, a 10 % limit means three
/// probes lost.
pub const MIN_LOSS_PROBES: usize = 20;

/// One path as an evaluation sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathInput {
    pub policy: Policy,
    /// Up or not yet judged, not `off`, with an address.
    pub usable: bool,
    /// The carry in force now (a mode change from outside may have reset it).
    pub carry: Carry,
    /// Missed fraction of its recent probes.
    pub loss: f64,
    /// How many resolved probes `loss` is over; below [`MIN_LOSS_PROBES`] it is no evidence either way.
    pub loss_probes: usize,
    /// When the oldest probe `loss` is over was sent.
    pub loss_since: Option<Instant>,
    /// Its interface moved more than probes in the last second: it carries traffic (a demoted path: still
    /// drains what it held).
    pub busy: bool,
    /// What its interface moved in the last second, both directions, in bit/s.
    pub rate_bps: f64,
    /// The smoothed round trip of its subflows that carry an upload, as the kernel measures it on every
    /// acknowledgement ([`super::evidence::sending_rtts`]); `None` without one.
    pub sending_rtt: Option<Duration>,
    /// Bit `j`: a connection's subflow on path `j` idled while its subflow on this one carried
    /// ([`super::evidence::waiting_for`]).
    pub waited_for_by: u32,
}

/// A path's measurements and timers.
#[derive(Debug, Default)]
struct PathState {
    /// (sent, round trip) of its answered probes sent in the last [`RTT_WINDOW`].
    rtts: VecDeque<(Instant, Duration)>,
    /// When its last answer arrived.
    last_answer: Option<Instant>,
    /// Send times of its probes not answered yet.
    unanswered: Vec<Instant>,
    /// (bucket start, minimum round trip seen in it), oldest first.
    base: VecDeque<(Instant, Duration)>,
    last_policy: Option<Policy>,
    last_carry: Option<Carry>,
    /// Since when it has been worse than the limits (carrying) / within half of them (demoted) / saturated
    /// or not (overflow), without a break.
    streak: Option<Instant>,
    demoted_at: Option<Instant>,
    promoted_at: Option<Instant>,
    bad_while_idle: bool,
    /// Since when its interface has been quiet (not [`PathInput::busy`]).
    quiet_since: Option<Instant>,
    /// Whether it was saturated at the last evaluation ([`PathState::saturation_queue`]).
    saturated: bool,
    /// When it was last seen saturated.
    saturated_at: Option<Instant>,
    next_trial: Option<Instant>,
    backoff: Duration,
}

impl PathState {
    fn rtt(&self, now: Instant) -> Option<Duration> {
        let median = |mut v: Vec<Duration>| {
            v.sort();
            v.get(v.len() / 2).copied()
        };
        let answered: Vec<Duration> =
            self.rtts.iter().filter(|(t, _)| now.saturating_duration_since(*t) <= RTT_WINDOW).map(|s| s.1).collect();
        let floor = median(answered.clone()).unwrap_or(Duration::ZERO);
        // Only a path that answers at all: no answer for long is a filtered or dead path, not a slow one.
        let answers = self.last_answer.is_some_and(|t| now.saturating_duration_since(t) <= ANSWER_HORIZON);
        let waiting = self
            .unanswered
            .iter()
            .map(|sent| now.saturating_duration_since(*sent))
            .filter(|age| answers && *age <= RTT_WINDOW && *age > floor);
        median(answered.into_iter().chain(waiting).collect())
    }

    /// Whether its probe loss since `since` may be its own queue's doing: it was saturated since then.
    fn saturated_since(&self, since: Option<Instant>) -> bool {
        self.saturated_at.is_some_and(|t| since.is_none_or(|s| t >= s))
    }

    fn base(&self) -> Option<Duration> {
        self.base.iter().map(|b| b.1).min()
    }

    /// How far its round trip is above its idle minimum.
    fn queueing(&self, now: Instant) -> Option<Duration> {
        Some(self.rtt(now)?.saturating_sub(self.base()?))
    }

    /// The queueing delay above which this path, busy, is saturated: `limit` (`overflow_delay`), or half its
    /// idle round trip where that is less, but at least [`MIN_SATURATION_QUEUE`].
    ///
    /// How long a queue a sender keeps on a path it fills depends on its congestion control. A loss-based
    /// one (CUBIC, Reno) fills the bottleneck's buffer until it drops. BBR bounds what it has in flight at
    /// twice its estimate of the path's bandwidth-delay product, so its queue stays near one idle round trip
    /// and no longer: measured on the testbed with BBR senders, a 50 Mbit/s path idling at 8 ms queued
    /// 11-13 ms and one idling at 20 ms queued 22-28 ms, where a 20 ms limit alone never saw the first
    /// saturated (an overflow path never joined: 0.62 x the sum) and saw the second only after 2 s of its
    /// sawtooth. Half the idle round trip is well under such a queue and well over the none of a path with
    /// room (a 10 Mbit/s stream on it: the probes' median stays at the idle minimum).
    fn saturation_queue(&self, limit: Duration) -> Option<Duration> {
        Some(limit.min((self.base()? / 2).max(MIN_SATURATION_QUEUE)))
    }

    fn record(&mut self, now: Instant, rtt: Duration) {
        // Keyed by when the probe was sent: what the path was like then. A late answer of an old probe is old
        // news next to the ages of the probes sent since.
        let sent = now.checked_sub(rtt).unwrap_or(now);
        self.rtts.push_back((sent, rtt));
        self.last_answer = Some(now);
        self.rtts.retain(|(t, _)| now.saturating_duration_since(*t) <= RTT_WINDOW);
        let bucket = BASE_WINDOW / BASE_BUCKETS;
        match self.base.back_mut() {
            Some((start, min)) if now.saturating_duration_since(*start) < bucket => *min = (*min).min(rtt),
            _ => self.base.push_back((now, rtt)),
        }
        while self.base.front().is_some_and(|(t, _)| now.saturating_duration_since(*t) > BASE_WINDOW) {
            self.base.pop_front();
        }
    }
}

/// The controller of every uplink, index for index with the uplinks.
#[derive(Debug)]
pub struct Controller {
    cfg: PathControlFile,
    /// How long the health verdict takes at most to call a path that stopped answering down.
    silence_to_down: Duration,
    paths: Vec<PathState>,
}

impl Controller {
    /// `silence_to_down`: how long the health verdict takes at most to call a path that stopped answering
    /// down ([`common::probe::HealthConfig::silence_to_down`]).
    pub fn new(cfg: PathControlFile, paths: usize, silence_to_down: Duration) -> Controller {
        Controller { cfg, silence_to_down, paths: (0..paths).map(|_| PathState::default()).collect() }
    }

    /// An answered probe of path `i`.
    pub fn on_rtt(&mut self, i: usize, now: Instant, rtt: Duration) {
        if let Some(p) = self.paths.get_mut(i) {
            p.record(now, rtt);
        }
    }

    /// The send times of path `i`'s probes not answered yet that may still be (replaces the previous list): a
    /// probe sent before one that was answered was lost, not queued, and is not among them.
    pub fn on_unanswered(&mut self, i: usize, sent: Vec<Instant>) {
        if let Some(p) = self.paths.get_mut(i) {
            p.unanswered = sent;
        }
    }

    /// Path `i`'s round trip now (median of the last second's answers and of the older unanswered probes).
    pub fn rtt(&self, i: usize, now: Instant) -> Option<Duration> {
        self.paths.get(i)?.rtt(now)
    }

    /// Path `i`'s round trip under load: the larger of its probes' and of its uploading subflows'.
    fn loaded_rtt(&self, i: usize, now: Instant, inputs: &[PathInput]) -> Option<Duration> {
        let probes = self.paths.get(i)?.rtt(now);
        match (probes, inputs[i].sending_rtt) {
            (Some(p), Some(s)) => Some(p.max(s)),
            (p, s) => p.or(s),
        }
    }

    /// Decides every path's carry from the measurements so far; returns the changes.
    pub fn evaluate(&mut self, now: Instant, inputs: &[PathInput]) -> Vec<(usize, Decision)> {
        let overflow_delay = self.cfg.overflow_delay;
        for (p, input) in self.paths.iter_mut().zip(inputs) {
            if p.last_policy != Some(input.policy) || p.last_carry != Some(input.carry) {
                p.streak = None;
                p.bad_while_idle = false;
                p.next_trial = None;
                if input.carry == Carry::Backup {
                    p.demoted_at.get_or_insert(now);
                }
            }
            p.last_policy = Some(input.policy);
            p.last_carry = Some(input.carry);
            // Saturated by traffic: only a busy path carries any, and an idle path's round trip may vary more
            // than a short queue.
            p.saturated = input.busy
                && p.queueing(now).zip(p.saturation_queue(overflow_delay)).is_some_and(|(q, limit)| q > limit);
            if p.saturated {
                p.saturated_at = Some(now);
            }
            if input.busy {
                p.quiet_since = None;
            } else {
                p.quiet_since.get_or_insert(now);
            }
        }
        let mut out = Vec::new();
        for i in 0..inputs.len().min(self.paths.len()) {
            let decision = match inputs[i].policy {
                Policy::Pinned { .. } => None,
                Policy::Adaptive => self.adaptive(i, now, inputs),
                Policy::Overflow => self.overflow(i, now, inputs),
            };
            if let Some(d) = decision {
                let p = &mut self.paths[i];
                p.last_carry = Some(d.to);
                p.streak = None;
                match d.to {
                    Carry::Backup => {
                        let failed_trial =
                            p.promoted_at.is_some_and(|t| now.saturating_duration_since(t) < TRIAL_WINDOW);
                        p.backoff =
                            if failed_trial { (p.backoff * 2).clamp(TRIAL_FIRST, TRIAL_MAX) } else { TRIAL_FIRST };
                        p.demoted_at = Some(now);
                        p.next_trial = Some(now + p.backoff);
                        p.bad_while_idle = false;
                    }
                    Carry::Active => {
                        p.promoted_at = Some(now);
                        p.demoted_at = None;
                    }
                }
                out.push((i, d));
            }
        }
        out
    }

    /// The other usable path that carries traffic (not an overflow one) with the best round trip, and that.
    fn reference(&self, i: usize, now: Instant, inputs: &[PathInput]) -> Option<(usize, Duration)> {
        self.carrying(i, inputs).filter_map(|j| Some((j, self.loaded_rtt(j, now, inputs)?))).min_by_key(|(_, rtt)| *rtt)
    }

    /// Whether path `i` was saturated at this evaluation: busy, and its queue past
    /// [`PathState::saturation_queue`].
    fn saturated(&self, i: usize) -> bool {
        self.paths[i].saturated
    }

    /// The other usable paths that carry traffic, overflow paths excepted.
    fn carrying<'a>(&self, i: usize, inputs: &'a [PathInput]) -> impl Iterator<Item = usize> + 'a {
        (0..inputs.len()).filter(move |j| {
            let x = &inputs[*j];
            *j != i && x.usable && x.carry == Carry::Active && x.policy != Policy::Overflow
        })
    }

    fn decision(
        &self,
        i: usize,
        now: Instant,
        inputs: &[PathInput],
        to: Carry,
        reason: Reason,
        reference: Option<Duration>,
    ) -> Decision {
        Decision { at: now, to, reason, rtt: self.loaded_rtt(i, now, inputs), reference, loss: inputs[i].loss }
    }

    fn adaptive(&mut self, i: usize, now: Instant, inputs: &[PathInput]) -> Option<Decision> {
        let input = inputs[i];
        if !input.usable {
            self.paths[i].streak = None;
            return None;
        }
        let has_other = self.carrying(i, inputs).next().is_some();
        if input.carry == Carry::Backup && !has_other {
            return Some(self.decision(i, now, inputs, Carry::Active, Reason::OnlyPath, None));
        }
        let (r, reference) = self.reference(i, now, inputs)?;
        let ref_loss = inputs[r].loss;
        let rtt = self.loaded_rtt(i, now, inputs)?;
        let excess = rtt.saturating_sub(reference);
        // The best path waits for this one while carrying more: this one's queue fills while the best path's does
        // not, or, outright, a connection's subflow there idles while its subflow here carries. A path that
        // carries more than the best one (a rural DSL line's LTE) is worth its wait.
        let waited_for = input.carry == Carry::Active
            && r < 32
            && input.waited_for_by & (1 << r) != 0
            && input.rate_bps < inputs[r].rate_bps;
        let head_of_line = waited_for
            || (input.carry == Carry::Active
                && input.busy
                && inputs[r].busy
                && input.rate_bps < inputs[r].rate_bps
                && self.saturated(i)
                && !self.saturated(r));
        // Only a full reference path can use another path's help: a trial while it has room proves nothing.
        let reference_full = self.saturated(r);
        let own_queue = self.paths[i].saturated_since(input.loss_since);
        let loss_bad = |limit: f64| {
            input.loss_probes >= MIN_LOSS_PROBES && !own_queue && input.loss > limit && input.loss > ref_loss
        };
        let (worse, reason, hold) = if excess > self.cfg.max_rtt_excess {
            // Far over the limit, sooner: a round trip four times over it needs a quarter of demote_after.
            let over = self.cfg.max_rtt_excess.as_secs_f64() / excess.as_secs_f64();
            (true, Reason::RttExcess, self.cfg.demote_after.mul_f64(over))
        } else if loss_bad(self.cfg.max_loss) {
            (true, Reason::Loss, self.cfg.demote_after)
        } else if head_of_line {
            let hold = if waited_for { WAITED_FOR_AFTER } else { self.cfg.demote_after.max(HEAD_OF_LINE_AFTER) };
            (true, Reason::HeadOfLine, hold)
        } else {
            (false, Reason::RttExcess, self.cfg.demote_after)
        };
        let (promote_after, half_excess, half_loss) =
            (self.cfg.promote_after, self.cfg.max_rtt_excess / 2, self.cfg.max_loss / 2.0);
        let silence_to_down = self.silence_to_down;
        let p = &mut self.paths[i];
        match input.carry {
            Carry::Active => {
                if !worse {
                    p.streak = None;
                    return None;
                }
                let since = *p.streak.get_or_insert(now);
                // Silent since it went bad: slow or cut, which the health verdict tells first. Subflows still
                // acknowledged an upload or received data just now: slow, not cut.
                let alive = p.last_answer.is_some_and(|t| t >= since) || input.sending_rtt.is_some() || waited_for;
                let hold = if alive { hold } else { hold.max(silence_to_down) };
                (now.saturating_duration_since(since) >= hold)
                    .then(|| self.decision(i, now, inputs, Carry::Backup, reason, Some(reference)))
            }
            Carry::Backup => {
                // Idle: quiet for as long as its round trip looks back, and settled after the demotion.
                let idle = p.quiet_since.is_some_and(|t| now.saturating_duration_since(t) >= RTT_WINDOW)
                    && p.demoted_at.is_none_or(|t| now.saturating_duration_since(t) >= SETTLE);
                if worse && idle {
                    p.bad_while_idle = true;
                }
                let good = excess <= half_excess && !loss_bad(half_loss);
                if !good {
                    p.streak = None;
                    return None;
                }
                let since = *p.streak.get_or_insert(now);
                if now.saturating_duration_since(since) < promote_after {
                    return None;
                }
                let reason = if p.bad_while_idle {
                    Reason::Recovered
                } else if reference_full && p.next_trial.is_none_or(|t| now >= t) {
                    Reason::Trial
                } else {
                    return None;
                };
                Some(self.decision(i, now, inputs, Carry::Active, reason, Some(reference)))
            }
        }
    }

    fn overflow(&mut self, i: usize, now: Instant, inputs: &[PathInput]) -> Option<Decision> {
        let input = inputs[i];
        if !input.usable {
            self.paths[i].streak = None;
            return None;
        }
        let carrying: Vec<usize> = self.carrying(i, inputs).collect();
        if carrying.is_empty() {
            return (input.carry == Carry::Backup)
                .then(|| self.decision(i, now, inputs, Carry::Active, Reason::OnlyPath, None));
        }
        // The carrying paths' smallest queueing delay: every one of them is at least this full.
        let queueing = carrying.iter().map(|j| self.paths[*j].queueing(now)).collect::<Option<Vec<_>>>()?;
        let least = queueing.into_iter().min()?;
        let saturated = carrying.iter().all(|j| self.saturated(*j));
        let release_after = self.cfg.overflow_release_after;
        let p = &mut self.paths[i];
        // The streak counts how long the state that would change the carry has held.
        let (wants_change, hold, to, reason) = match input.carry {
            Carry::Backup => (saturated, OVERFLOW_AFTER, Carry::Active, Reason::Saturated),
            Carry::Active => (!saturated, release_after, Carry::Backup, Reason::Drained),
        };
        if !wants_change {
            p.streak = None;
            return None;
        }
        let since = *p.streak.get_or_insert(now);
        (now.saturating_duration_since(since) >= hold).then(|| self.decision(i, now, inputs, to, reason, Some(least)))
    }
}

#[cfg(test)]
mod tests;
