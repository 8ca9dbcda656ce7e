use super::*;

const MS: Duration = Duration::from_millis(1);

/// Test harness: a simulated link answering each probe after `rtt` unless `answering` is false.
struct Sim {
    t0: Instant,
    now: Instant,
    h: Health,
    rtt: Duration,
    answering: bool,
    /// (arrival time, seq) of replies in flight.
    in_flight: Vec<(Instant, u32)>,
    changes: Vec<(u64, HealthState)>,
    sent: u32,
}

impl Sim {
    fn new(config: HealthConfig, rtt: Duration) -> Self {
        let t0 = Instant::now();
        Sim {
            t0,
            now: t0,
            h: Health::new(config, t0),
            rtt,
            answering: true,
            in_flight: vec![],
            changes: vec![],
            sent: 0,
        }
    }

    fn ms(&self) -> u64 {
        (self.now - self.t0).as_millis() as u64
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::SendProbe { seq } => {
                    self.sent += 1;
                    if self.answering {
                        self.in_flight.push((self.now + self.rtt, seq));
                    }
                }
                Action::StateChanged(c) => {
                    assert_eq!(c.at, self.now);
                    assert_eq!(c.from, self.changes.last().map_or(HealthState::Unknown, |x| x.1));
                    self.changes.push(((c.at - self.t0).as_millis() as u64, c.to));
                }
            }
        }
    }

    /// Advances in 1 ms steps to `until_ms`, delivering replies and ticks.
    /// The current millisecond is processed again first (harmless: nothing is due twice).
    fn run_to(&mut self, until_ms: u64) {
        loop {
            let now = self.now;
            let (due, later): (Vec<_>, Vec<_>) = self.in_flight.drain(..).partition(|(t, _)| *t <= now);
            self.in_flight = later;
            for (_, seq) in due {
                let (_, actions) = self.h.on_reply(now, seq);
                self.apply(actions);
            }
            let actions = self.h.on_tick(now);
            self.apply(actions);
            if self.ms() >= until_ms {
                break;
            }
            self.now += MS;
        }
    }
}

#[test]
fn first_probe_is_immediate_then_every_interval() {
    let t0 = Instant::now();
    let mut h = Health::new(HealthConfig::default(), t0);
    assert_eq!(h.on_tick(t0), vec![Action::SendProbe { seq: 0 }]);
    assert_eq!(h.on_tick(t0 + 199 * MS), vec![]);
    assert_eq!(h.on_tick(t0 + 200 * MS), vec![Action::SendProbe { seq: 1 }]);
    assert_eq!(h.next_deadline(), Some(t0 + 400 * MS));
}

#[test]
fn up_after_three_successes_down_after_three_misses_and_back() {
    let mut s = Sim::new(HealthConfig::default(), 20 * MS);
    s.run_to(1000);
    // Replies at 20, 220, 420 ms: Up on the third.
    assert_eq!(s.changes, vec![(420, HealthState::Up)]);
    assert_eq!(s.h.srtt(), Some(20 * MS));

    // Blackhole right after the probe at 1000 ms. With srtt 20 ms and a small rttvar the timeout is
    // timeout_min = 200 ms: probes at 1200, 1400, 1600 are missed at 1400, 1600, 1800.
    s.answering = false;
    s.run_to(2000);
    assert_eq!(s.changes[1], (1800, HealthState::Down));
    assert_eq!(s.h.timeout(), 200 * MS);

    // Restored right after the probe at 2000 ms: probes at 2200, 2400, 2600 answered 20 ms later.
    s.answering = true;
    s.run_to(3000);
    assert_eq!(s.changes[2], (2620, HealthState::Up));
    assert_eq!(s.changes.len(), 3);
    assert_eq!(s.h.loss(), 0.0, "an outage is the state's business, not loss");
}

#[test]
fn a_path_that_falls_silent_is_down_within_silence_to_down() {
    let config = HealthConfig::default();
    let bound = config.silence_to_down().as_millis() as u64;
    // A fast path (timeout at timeout_min) and a slow one (timeout near timeout_max), silent from any point
    // of a probe interval on; the replies in flight then are lost with it.
    for rtt in [20, 900] {
        for offset in (0..200).step_by(25) {
            let mut s = Sim::new(config.clone(), rtt * MS);
            let silent = 5000 + offset;
            s.run_to(silent);
            assert_eq!(s.h.state(), HealthState::Up);
            s.answering = false;
            s.in_flight.clear();
            s.run_to(silent + 3000);
            let down = s.changes.iter().find(|c| c.1 == HealthState::Down).expect("down").0;
            assert!(down - silent <= bound, "rtt {rtt} ms, silent at {silent}: down {} ms later", down - silent);
        }
    }
}

#[test]
fn a_probe_sent_before_an_answered_one_is_lost_not_unanswered() {
    let t0 = Instant::now();
    let mut h = Health::new(HealthConfig::default(), t0);
    assert_eq!(h.on_tick(t0), vec![Action::SendProbe { seq: 0 }]);
    let t1 = t0 + 200 * MS;
    assert_eq!(h.on_tick(t1), vec![Action::SendProbe { seq: 1 }]);
    assert_eq!(h.unanswered(), vec![t0, t1]);
    h.on_reply(t1 + 50 * MS, 1);
    assert_eq!(h.unanswered(), vec![], "probe 0 was lost: a queue would have answered it first");
    let t2 = t0 + 400 * MS;
    assert_eq!(h.on_tick(t2), vec![Action::SendProbe { seq: 2 }]);
    assert_eq!(h.unanswered(), vec![t2]);
}

#[test]
fn unknown_goes_down_when_nothing_answers_from_the_start() {
    let mut s = Sim::new(HealthConfig::default(), 20 * MS);
    s.answering = false;
    s.run_to(3000);
    // No RTT sample yet: the timeout is timeout_max (1 s). Probes at 0, 200, 400 time out at 1000,
    // 1200, 1400.
    assert_eq!(s.changes, vec![(1400, HealthState::Down)]);
    assert_eq!((s.h.loss(), s.h.loss_probes()), (0.0, 0), "never up: no loss measured");
    assert!(s.h.outstanding() <= 7);
}

#[test]
fn carrier_loss_acts_at_once_and_stops_probing() {
    let mut s = Sim::new(HealthConfig::default(), 10 * MS);
    s.run_to(1000);
    assert_eq!(s.h.state(), HealthState::Up);
    let now = s.now;
    let actions = s.h.carrier(now, false);
    s.apply(actions);
    assert_eq!(s.changes.last(), Some(&(1000, HealthState::Down)));
    assert_eq!(s.h.next_deadline(), None);
    let sent = s.sent;
    s.run_to(5000);
    assert_eq!(s.sent, sent, "no probes without carrier");
    assert_eq!(s.h.state(), HealthState::Down);

    let now = s.now;
    let actions = s.h.carrier(now, true);
    s.apply(actions);
    s.run_to(6000);
    // Probes at 5000, 5200, 5400, answered 10 ms later.
    assert_eq!(s.changes.last(), Some(&(5410, HealthState::Up)));
}

#[test]
fn timeout_adapts_to_slowly_growing_rtt_instead_of_flapping() {
    let mut s = Sim::new(HealthConfig::default(), 20 * MS);
    s.run_to(1000);
    // Bufferbloat: RTT climbs 20 ms per probe up to 400 ms (above timeout_min).
    for step in 1..=19u32 {
        s.rtt = 20 * MS + step * 20 * MS;
        let t = s.ms() + 200;
        s.run_to(t);
    }
    s.run_to(s.ms() + 5000);
    assert_eq!(s.changes, vec![(420, HealthState::Up)], "no flap while the RTT grows");
    let srtt = s.h.srtt().unwrap();
    assert!(srtt > 300 * MS && srtt <= 400 * MS, "srtt {srtt:?}");
    assert!(s.h.timeout() >= 400 * MS);
}

#[test]
fn rfc6298_smoothing() {
    let t0 = Instant::now();
    let mut h = Health::new(HealthConfig { up_after: 1, ..Default::default() }, t0);
    h.on_tick(t0);
    let (counted, actions) = h.on_reply(t0 + 100 * MS, 0);
    assert!(counted);
    assert!(matches!(actions[..], [Action::StateChanged(StateChange { to: HealthState::Up, .. })]));
    assert_eq!((h.srtt(), h.rttvar()), (Some(100 * MS), 50 * MS));
    h.on_tick(t0 + 200 * MS);
    h.on_reply(t0 + 220 * MS, 1);
    // RTTVAR = 3/4 * 50 + 1/4 * |100 - 20| = 57.5; SRTT = 7/8 * 100 + 1/8 * 20 = 90.
    assert_eq!(h.srtt(), Some(90 * MS));
    assert_eq!(h.rttvar(), Duration::from_micros(57_500));
    assert_eq!(h.latest_rtt(), Some(20 * MS));
}

#[test]
fn late_duplicate_and_unknown_replies_do_not_count() {
    let t0 = Instant::now();
    let mut h = Health::new(HealthConfig::default(), t0);
    h.on_tick(t0);
    assert!(!h.on_reply(t0 + MS, 77).0, "never sent");
    assert!(h.on_reply(t0 + 2 * MS, 0).0);
    assert!(!h.on_reply(t0 + 3 * MS, 0).0, "duplicate");
    // Probe 1 (timeout 200 ms after the first sample) answered after its deadline is not counted: a miss for
    // the verdict, though not a loss.
    h.on_tick(t0 + 200 * MS);
    assert!(!h.on_reply(t0 + 401 * MS, 1).0);
    assert_eq!(h.loss(), 0.0);
}

#[test]
fn a_late_answer_is_a_miss_but_still_a_round_trip_sample() {
    let t0 = Instant::now();
    let mut h = Health::new(HealthConfig::default(), t0);
    h.on_tick(t0);
    assert!(h.on_reply(t0 + 20 * MS, 0).0);
    assert_eq!(h.rtt_samples(), 1);
    // Probe 1 times out (on_tick resolves it), then its answer comes 900 ms after it was sent.
    h.on_tick(t0 + 200 * MS);
    h.on_tick(t0 + 400 * MS + MS);
    assert_eq!(h.loss(), 0.5, "a miss until answered");
    assert!(!h.on_reply(t0 + 1100 * MS, 1).0);
    assert_eq!((h.latest_rtt(), h.rtt_samples()), (Some(900 * MS), 2));
    assert_eq!(h.loss(), 0.0, "answered late: not lost");
    assert!(h.srtt().unwrap() > 20 * MS, "the timeout follows the slower path");
    // A second answer to the same probe is no sample.
    h.on_reply(t0 + 1200 * MS, 1);
    assert_eq!(h.rtt_samples(), 2);
}

#[test]
fn a_round_trip_that_jumps_above_the_timeout_is_followed_by_the_timeout() {
    // A queue fills at once (the link's rate dropped): 20 ms -> 900 ms. The late answers raise the timeout
    // until probes are answered in time again.
    let mut s = Sim::new(HealthConfig::default(), 20 * MS);
    s.run_to(2000);
    s.rtt = 900 * MS;
    s.run_to(20_000);
    assert!(s.h.timeout() >= 900 * MS, "timeout {:?}", s.h.timeout());
    assert_eq!(s.h.state(), HealthState::Up, "answered in time again: {:?}", s.changes);
}

#[test]
fn loss_counts_misses_of_a_path_that_is_up_not_an_outage() {
    let mut s = Sim::new(HealthConfig::default(), 20 * MS);
    s.run_to(1000);
    // Every fifth probe lost for 10 s: 20 % loss, never two misses in a row.
    for k in 0..50u64 {
        s.answering = k % 5 != 0;
        s.run_to(1000 + (k + 1) * 200);
    }
    s.answering = true;
    s.run_to(12_000);
    assert_eq!(s.h.state(), HealthState::Up);
    let lossy = s.h.loss();
    assert!((0.15..=0.25).contains(&lossy), "{lossy}");
    let since = s.h.loss_since().unwrap();
    assert!(since >= s.t0 + 1900 * MS && since <= s.t0 + 2300 * MS, "{:?}", since - s.t0);

    // A 2 s cut, then 10 s of answers: the cut's misses made the path Down and are not loss; the window is the
    // answers around it.
    s.answering = false;
    s.run_to(14_000);
    assert_eq!(s.h.state(), HealthState::Down);
    s.answering = true;
    s.run_to(24_000);
    assert_eq!(s.h.state(), HealthState::Up);
    assert_eq!(s.h.loss(), 0.0, "{} of {}", s.h.loss(), s.h.loss_probes());
}

#[test]
fn loss_is_over_a_sliding_window() {
    let cfg = HealthConfig { loss_window: 10, ..Default::default() };
    let mut s = Sim::new(cfg, 10 * MS);
    s.answering = false;
    s.run_to(1000); // first misses
    s.answering = true;
    s.run_to(10_000);
    assert_eq!(s.h.loss(), 0.0, "old misses left the window");
}

#[test]
fn falling_behind_does_not_burst() {
    let t0 = Instant::now();
    let mut h = Health::new(HealthConfig::default(), t0);
    h.on_tick(t0);
    // The caller was stalled for 5 s: one probe now, the next one interval later.
    let actions = h.on_tick(t0 + 5000 * MS);
    assert_eq!(actions.iter().filter(|a| matches!(a, Action::SendProbe { .. })).count(), 1);
    assert_eq!(h.next_deadline(), Some(t0 + 5200 * MS));
}

#[derive(Debug, Clone)]
enum Op {
    Tick,
    /// Reply to the probe sent this many probes ago.
    Reply(u32),
    Carrier(bool),
}

fn arb_op() -> impl proptest::strategy::Strategy<Value = (u64, Op)> {
    use proptest::prelude::*;
    let op = prop_oneof![
        4 => Just(Op::Tick),
        4 => (0u32..8).prop_map(Op::Reply),
        1 => any::<bool>().prop_map(Op::Carrier),
    ];
    (0u64..700, op)
}

proptest::proptest! {
    /// Whatever the order of events: nothing panics, bounds hold, no probe without carrier, every
    /// reported change is a real change, and after on_tick nothing is overdue.
    #[test]
    fn invariants_hold_under_arbitrary_events(ops in proptest::collection::vec(arb_op(), 1..300)) {
        let cfg = HealthConfig { loss_window: 20, ..Default::default() };
        let cap = (cfg.timeout_max.as_nanos() / cfg.interval.as_nanos()) as usize + 2;
        let mut now = Instant::now();
        let mut h = Health::new(cfg, now);
        let mut last_sent: Option<u32> = None;
        let mut state = HealthState::Unknown;
        for (ms, op) in ops {
            now += Duration::from_millis(ms);
            let carrier_before = h.carrier_up();
            let actions = match op {
                Op::Tick => h.on_tick(now),
                Op::Reply(back) => match last_sent {
                    Some(seq) => h.on_reply(now, seq.wrapping_sub(back)).1,
                    None => vec![],
                },
                Op::Carrier(up) => h.carrier(now, up),
            };
            for a in actions {
                match a {
                    Action::SendProbe { seq } => {
                        proptest::prop_assert!(carrier_before && h.carrier_up());
                        last_sent = Some(seq);
                    }
                    Action::StateChanged(c) => {
                        proptest::prop_assert_eq!(c.from, state);
                        proptest::prop_assert_ne!(c.from, c.to);
                        proptest::prop_assert_eq!(c.at, now);
                        state = c.to;
                    }
                }
            }
            proptest::prop_assert_eq!(h.state(), state);
            proptest::prop_assert!(h.outstanding() <= cap);
            proptest::prop_assert!((0.0..=1.0).contains(&h.loss()));
            if !h.carrier_up() {
                proptest::prop_assert_eq!(h.state(), HealthState::Down);
                proptest::prop_assert_eq!(h.next_deadline(), None);
            } else if matches!(op, Op::Tick) {
                proptest::prop_assert!(h.next_deadline().unwrap() > now);
            }
            let t = h.timeout();
            proptest::prop_assert!(t >= h.config().timeout_min && t <= h.config().timeout_max);
        }
    }
}
