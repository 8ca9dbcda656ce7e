//! The controller's decisions on synthetic probe series: a probe answer per path every 200 ms (the default
//! probe interval), an evaluation after each round, the carries applied at once.

use super::*;

const TICK: Duration = Duration::from_millis(200);
/// The health verdict's longest time to call a silent path down, with the default probe settings (1.6 s).
fn silence_to_down() -> Duration {
    common::probe::HealthConfig::default().silence_to_down()
}
const DSL: usize = 0;
const LTE: usize = 1;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

struct Sim {
    c: Controller,
    t0: Instant,
    now: Instant,
    inputs: Vec<PathInput>,
    /// (time since start, path, decision)
    log: Vec<(Duration, usize, Decision)>,
    /// After a demotion, a path still carries what it holds for this long (its queue drains): its probes see
    /// the load and its interface is busy.
    drain: Duration,
    /// Per path, probes in flight: (sent, round trip); answered once the round trip has passed.
    in_flight: Vec<Vec<(Instant, Duration)>>,
    /// Per path: its interface is quiet although it carries (nothing to send).
    quiet: Vec<bool>,
    /// Per path: when its latest-sent answered probe was sent (the prober reports only probes sent after it
    /// as unanswered).
    newest_answered: Vec<Option<Instant>>,
}

impl Sim {
    fn new(policies: &[Policy]) -> Sim {
        let t0 = Instant::now();
        let inputs = policies
            .iter()
            .map(|p| PathInput {
                policy: *p,
                usable: true,
                carry: p.initial(),
                loss: 0.0,
                loss_probes: 50,
                loss_since: None,
                busy: false,
                rate_bps: 0.0,
                sending_rtt: None,
                waited_for_by: 0,
            })
            .collect();
        let c = Controller::new(PathControlFile::default(), policies.len(), silence_to_down());
        let in_flight = vec![Vec::new(); policies.len()];
        let quiet = vec![false; policies.len()];
        let newest_answered = vec![None; policies.len()];
        Sim { c, t0, now: t0, inputs, log: Vec::new(), drain: Duration::ZERO, in_flight, quiet, newest_answered }
    }

    /// DSL active (pinned), LTE adaptive.
    fn adaptive() -> Sim {
        Sim::new(&[Policy::Pinned { carries: true }, Policy::Adaptive])
    }

    fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    /// Runs for `secs`; `rtt(path, elapsed, carry)` is the answer of that path's probe (`None`: unanswered).
    fn run(&mut self, secs: f64, rtt: impl Fn(usize, Duration, Carry) -> Option<Duration>) {
        self.run_uploading(secs, rtt, |_, _, _| None);
    }

    /// [`Sim::run`], with `sending(path, elapsed, carry)` the round trip its uploading subflows measure.
    fn run_uploading(
        &mut self,
        secs: f64,
        rtt: impl Fn(usize, Duration, Carry) -> Option<Duration>,
        sending: impl Fn(usize, Duration, Carry) -> Option<Duration>,
    ) {
        let end = self.now + Duration::from_secs_f64(secs);
        while self.now < end {
            self.now += TICK;
            for i in 0..self.inputs.len() {
                let draining = self.last(i, Carry::Backup).is_some_and(|t| self.elapsed() < t + self.drain)
                    && self.inputs[i].carry == Carry::Backup;
                let loaded = if draining { Carry::Active } else { self.inputs[i].carry };
                self.inputs[i].busy = loaded == Carry::Active && !self.quiet[i];
                self.inputs[i].sending_rtt = sending(i, self.elapsed(), self.inputs[i].carry);
                // A probe now; the answers whose round trip has passed arrive; a lost one never does (dropped
                // after 2 s).
                let r = rtt(i, self.elapsed(), loaded).unwrap_or(Duration::from_secs(3600));
                self.in_flight[i].push((self.now, r));
                let now = self.now;
                let (arrived, waiting): (Vec<_>, Vec<_>) =
                    self.in_flight[i].drain(..).partition(|(sent, r)| *sent + *r <= now);
                for (sent, r) in arrived {
                    self.c.on_rtt(i, now, r);
                    self.newest_answered[i] = self.newest_answered[i].max(Some(sent));
                }
                self.in_flight[i] =
                    waiting.into_iter().filter(|(sent, _)| now - *sent < Duration::from_secs(2)).collect();
                let newest = self.newest_answered[i];
                let pending = self.in_flight[i].iter().map(|(sent, _)| *sent).filter(|s| newest.is_none_or(|n| *s > n));
                self.c.on_unanswered(i, pending.collect());
            }
            for (i, d) in self.c.evaluate(self.now, &self.inputs) {
                self.inputs[i].carry = d.to;
                self.log.push((self.now - self.t0, i, d));
            }
        }
    }

    fn carry(&self, i: usize) -> Carry {
        self.inputs[i].carry
    }

    fn decisions(&self, i: usize) -> Vec<(Carry, Reason)> {
        self.log.iter().filter(|(_, p, _)| *p == i).map(|(_, _, d)| (d.to, d.reason)).collect()
    }

    /// When path `i` last changed to `to`.
    fn last(&self, i: usize, to: Carry) -> Option<Duration> {
        self.log.iter().rev().find(|(_, p, d)| *p == i && d.to == to).map(|(t, _, _)| *t)
    }
}

/// A link's probe round trip: `base` idle, `base + queue` while it carries (a full modem queue).
fn link(base: u64, queue: u64) -> impl Fn(Carry) -> Duration {
    move |c| ms(if c == Carry::Active { base + queue } else { base })
}

/// DSL carrying a bulk transfer that fills it: its probes saw it idle (20 ms) for the first 2 s, then loaded.
fn dsl_full(t: Duration) -> Duration {
    ms(if t < Duration::from_secs(2) { 20 } else { 62 })
}

/// `d` moved by a deterministic pseudo-random jitter in [-j, +j] ms.
fn jit(d: Duration, t: Duration, j: u64) -> Duration {
    let x = (t.as_millis() as u64).wrapping_mul(2_654_435_761) % (2 * j + 1);
    (d + ms(x)).saturating_sub(ms(j))
}

#[test]
fn a_good_second_link_keeps_carrying_under_load_and_jitter() {
    // DSL 50 Mbit/s 10 ms, LTE 30 Mbit/s 30 ms ±5 ms each way, both queues full (the testbed's 256 KiB queues).
    let mut s = Sim::adaptive();
    let (dsl, lte) = (link(20, 42), link(60, 70));
    s.run(120.0, |i, t, c| Some(if i == DSL { jit(dsl(c), t, 2) } else { jit(lte(c), t, 10) }));
    assert_eq!(s.decisions(LTE), vec![]);
    assert_eq!(s.carry(LTE), Carry::Active);
}

#[test]
fn a_slow_second_link_is_demoted_after_demote_after_and_stays_demoted() {
    // LTE 5 Mbit/s 150 ms ±30 ms: 300 ms idle, 720 ms with its queue full.
    let mut s = Sim::adaptive();
    let (dsl, lte) = (link(20, 42), link(300, 420));
    s.run(60.0, |i, t, c| Some(if i == DSL { dsl(c) } else { jit(lte(c), t, 60) }));
    assert_eq!(s.decisions(LTE), vec![(Carry::Backup, Reason::RttExcess)], "bad idle too: no trial");
    let at = s.last(LTE, Carry::Backup).unwrap();
    // The first answer comes after its round trip (up to 780 ms with jitter), then demote_after over the limit.
    assert!(at >= ms(1000) && at <= ms(2200), "demoted at {at:?}");
    let d = s.log[0].2;
    assert!(d.rtt.unwrap() > ms(600) && d.reference == Some(ms(62)), "{d:?}");
}

#[test]
fn a_jittery_link_that_our_upload_loads_keeps_carrying() {
    // LTE 30 Mbit/s 30 ms with 60 ms of jitter each way, carrying an upload next to a full DSL: measured on the
    // testbed, its probes' median 187-195 ms (each probe anywhere in +-60 ms of it) against DSL's 30 ms. It
    // adds its rate (1.2-1.5 x DSL alone with it, 0.99 once it is demoted), so it stays under the limit.
    // Its subflows measure 100-160 ms under the upload (the kernel's smoothed round trip, on the testbed), DSL's
    // 45-50 ms: within the limit too.
    let mut s = Sim::adaptive();
    s.run_uploading(
        120.0,
        |i, t, c| {
            Some(match i {
                DSL => jit(ms(30), t, 3),
                _ if c == Carry::Active => jit(ms(191), t, 60),
                _ => jit(ms(120), t, 60),
            })
        },
        |i, t, c| match (i, c) {
            (DSL, _) => Some(jit(ms(47), t, 3)),
            (_, Carry::Active) => Some(jit(ms(130), t, 30)),
            _ => None,
        },
    );
    assert_eq!(s.decisions(LTE), vec![]);
}

/// LTE answering in 60 ms until 10 s, then in `after` (`None`: not at all); DSL in 20 ms throughout.
fn lte_from_10s(after: Option<Duration>) -> impl Fn(usize, Duration, Carry) -> Option<Duration> {
    move |i, t, _| {
        if i == DSL {
            Some(ms(20))
        } else if t < Duration::from_secs(10) {
            Some(ms(60))
        } else {
            after
        }
    }
}

#[test]
fn a_queue_that_fills_is_demoted_at_its_first_late_answer() {
    // LTE's round trip jumps from 60 to 700 ms at 10 s (its rate drops to 3 Mbit/s with 256 KiB queued): the
    // unanswered probes' ages start the streak, the first late answer (10.7 s) confirms it before
    // demote_after has passed, so the demotion comes when it would without the confirmation (11.2 s).
    let mut s = Sim::adaptive();
    s.run(20.0, lte_from_10s(Some(ms(700))));
    let at = s.last(LTE, Carry::Backup).expect("demoted");
    assert!(at <= Duration::from_secs(10) + ms(1200), "demoted at {at:?}");
    assert_eq!(s.decisions(LTE), vec![(Carry::Backup, Reason::RttExcess)]);
}

#[test]
fn a_round_trip_far_over_the_limit_is_demoted_sooner() {
    // LTE's rate collapses at 10 s: its round trip goes from 60 ms to 20 ms + 4 x the limit (a quarter of
    // demote_after) or to 20 ms + 1.1 x the limit (the whole of it, nearly). Both are demoted after their
    // first late answer; the first sooner by about the difference of the holds.
    let limit = PathControlFile::default().max_rtt_excess;
    let demoted = |excess: Duration| {
        let mut s = Sim::adaptive();
        s.run(20.0, lte_from_10s(Some(ms(20) + excess)));
        assert_eq!(s.decisions(LTE), vec![(Carry::Backup, Reason::RttExcess)]);
        s.last(LTE, Carry::Backup).unwrap() - Duration::from_secs(10)
    };
    let (far, near) = (demoted(limit * 4), demoted(limit.mul_f64(1.1)));
    let first_answer = ms(20) + limit * 4;
    assert!(far <= first_answer + 2 * TICK, "demoted {far:?} after the collapse");
    assert!(near >= ms(400), "demoted {near:?} after the collapse");
}

#[test]
fn an_upload_on_a_collapsing_link_is_demoted_on_its_subflows_round_trip() {
    // As above, LTE's rate collapses at 10 s under an upload and its probes come back 4 x the limit late. The
    // subflows carrying the upload measure the queue as it fills (as on the testbed: from 100 ms loaded, about
    // a millisecond more per millisecond, up to the full queue's 820 ms); DSL's measure 45 ms.
    let limit = PathControlFile::default().max_rtt_excess;
    let probes = lte_from_10s(Some(ms(20) + limit * 4));
    let demoted = |sending: bool| {
        let mut s = Sim::adaptive();
        s.run_uploading(20.0, &probes, |i, t, c| {
            let filling = t.saturating_sub(Duration::from_secs(10));
            match (sending, i, c) {
                (false, _, _) | (true, LTE, Carry::Backup) => None,
                (true, DSL, _) => Some(ms(45)),
                (true, _, _) => Some((ms(100) + filling).min(ms(820))),
            }
        });
        assert_eq!(s.decisions(LTE), vec![(Carry::Backup, Reason::RttExcess)]);
        s.last(LTE, Carry::Backup).unwrap() - Duration::from_secs(10)
    };
    let (subflows, probes_only) = (demoted(true), demoted(false));
    // Over the limit (45 + 200 ms) from 145 ms on; 600 ms over (a third of demote_after) by 700 ms.
    assert!(subflows <= ms(700), "demoted {subflows:?} after the collapse");
    assert!(subflows + 2 * TICK <= probes_only, "{subflows:?} on the subflows, {probes_only:?} on the probes");
}

#[test]
fn a_path_that_falls_silent_is_left_to_the_health_verdict() {
    // LTE answers nothing from 10 s on: a cut, or a queue so full that no answer has come back yet. The
    // verdict calls a cut path down within silence_to_down() (and the path is then unusable); until then it
    // is not demoted, after that a path still usable is.
    let mut s = Sim::adaptive();
    s.run(10.0 + silence_to_down().as_secs_f64() - 0.2, lte_from_10s(None));
    assert_eq!(s.decisions(LTE), vec![]);
    s.run(2.0, lte_from_10s(None));
    let at = s.last(LTE, Carry::Backup).expect("demoted");
    assert!(at <= Duration::from_secs(10) + silence_to_down() + ms(800), "demoted at {at:?}");

    // Cut again, the verdict calls it down in time: never demoted for the silence.
    let mut s = Sim::adaptive();
    s.run(10.0 + silence_to_down().as_secs_f64() - 0.4, lte_from_10s(None));
    s.inputs[LTE].usable = false;
    s.run(5.0, lte_from_10s(None));
    assert_eq!(s.decisions(LTE), vec![]);
}

#[test]
fn a_lost_probe_does_not_count_as_a_slow_one() {
    // Every third LTE probe is lost.
    let mut s = Sim::adaptive();
    s.run(60.0, |i, t, _| {
        Some(if i == DSL {
            ms(20)
        } else if t.as_millis() % 600 == 0 {
            ms(3_600_000)
        } else {
            ms(60)
        })
    });
    assert_eq!(s.decisions(LTE), vec![]);
}

#[test]
fn probes_lost_to_a_full_queue_do_not_count_as_slow_ones() {
    // Both links full of our own transfers (DSL 50 ms, LTE 130 ms loaded); LTE's drop-tail queue drops probes
    // with the data: (a) three of every five, each followed by one answered in 130 ms, so not queued behind
    // it; (b) six in a row every 2 s, which look like a queue filling until the next answer and are over
    // before the health verdict could have called a silent path down.
    let interleaved = |t: Duration| matches!(t.as_millis() % 1000, 0 | 200 | 600);
    let burst = |t: Duration| t.as_millis() % 2000 < 1200;
    for lost in [&interleaved as &dyn Fn(Duration) -> bool, &burst] {
        let mut s = Sim::adaptive();
        s.run(60.0, |i, t, _| {
            Some(if i == DSL {
                ms(50)
            } else if lost(t) {
                ms(3_600_000)
            } else {
                ms(130)
            })
        });
        assert_eq!(s.decisions(LTE), vec![]);
    }
}

#[test]
fn a_single_late_reply_does_not_demote() {
    let mut s = Sim::adaptive();
    s.run(30.0, |i, t, _| {
        Some(match i {
            DSL => ms(20),
            // One reply in five comes 400 ms late: the median ignores it.
            _ if t.as_millis() % 1000 == 0 => ms(460),
            _ => ms(60),
        })
    });
    assert_eq!(s.decisions(LTE), vec![]);
}

#[test]
fn the_best_path_and_a_lone_path_are_never_demoted() {
    // Both adaptive; LTE is far better (a rural DSL line): DSL, slower, is the one demoted, LTE never.
    let mut s = Sim::new(&[Policy::Adaptive, Policy::Adaptive]);
    s.run(30.0, |i, _, _| Some(if i == DSL { ms(300) } else { ms(70) }));
    assert_eq!(s.decisions(DSL), vec![(Carry::Backup, Reason::RttExcess)]);
    assert_eq!(s.decisions(LTE), vec![]);
    // A lone adaptive path has nothing to compare with.
    let mut one = Sim::new(&[Policy::Adaptive]);
    one.run(30.0, |_, _, _| Some(ms(900)));
    assert_eq!(one.decisions(0), vec![]);
}

#[test]
fn a_link_that_degrades_and_recovers_is_demoted_within_5s_and_promoted_within_10s() {
    // LTE good (30 Mbit/s 30 ms) until 20 s, then 3 Mbit/s 150 ms until 60 s, then good again.
    let mut s = Sim::adaptive();
    let bad = |t: Duration| t >= Duration::from_secs(20) && t < Duration::from_secs(60);
    let rtt = |i: usize, t: Duration, c: Carry| {
        Some(match i {
            DSL => link(20, 42)(c),
            _ if bad(t) => link(300, 700)(c),
            _ => link(60, 70)(c),
        })
    };
    s.run(90.0, rtt);
    assert_eq!(s.decisions(LTE), vec![(Carry::Backup, Reason::RttExcess), (Carry::Active, Reason::Recovered)]);
    let down = s.last(LTE, Carry::Backup).unwrap();
    let up = s.last(LTE, Carry::Active).unwrap();
    assert!(down <= Duration::from_secs(25), "demoted at {down:?}");
    assert!(up >= Duration::from_secs(60) && up <= Duration::from_secs(70), "promoted at {up:?}");
}

#[test]
fn a_link_bad_only_under_load_gets_trials_with_a_doubling_wait() {
    // LTE whose rate dropped to 3 Mbit/s, delay unchanged: 60 ms idle, 760 ms as soon as it carries.
    let mut s = Sim::adaptive();
    s.run(200.0, |i, t, c| Some(if i == DSL { dsl_full(t) } else { link(60, 700)(c) }));
    let promotions: Vec<Duration> =
        s.log.iter().filter(|(_, p, d)| *p == LTE && d.to == Carry::Active).map(|(t, _, _)| *t).collect();
    assert!(s.decisions(LTE).iter().all(|(c, r)| match c {
        Carry::Backup => *r == Reason::RttExcess,
        Carry::Active => *r == Reason::Trial,
    }));
    // Trials after 10, 20, 40, 80 s of waiting (plus the time to demote each): at most 5 in 200 s.
    assert!((3..=5).contains(&promotions.len()), "trials at {promotions:?}");
    let gaps: Vec<Duration> = promotions.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.windows(2).all(|w| w[1] > w[0] + Duration::from_secs(5)), "the wait grows: {gaps:?}");

    // The same link while DSL has room (an application that sends slowly): no trial, it would prove nothing.
    let mut s = Sim::adaptive();
    s.run(200.0, |i, _, c| Some(if i == DSL { ms(20) } else { link(60, 700)(c) }));
    assert_eq!(s.decisions(LTE), vec![(Carry::Backup, Reason::RttExcess)]);
}

#[test]
fn a_queue_draining_after_the_demotion_is_not_a_link_bad_while_idle() {
    // The rate dropped (60 ms idle, 760 ms loaded) and the subflow held 4 s worth of data when demoted.
    let mut s = Sim::adaptive();
    s.drain = Duration::from_secs(4);
    s.run(60.0, |i, t, c| Some(if i == DSL { dsl_full(t) } else { link(60, 700)(c) }));
    let d = s.decisions(LTE);
    assert_eq!(d[0], (Carry::Backup, Reason::RttExcess));
    assert!(d.iter().all(|(_, r)| *r != Reason::Recovered), "{d:?}");
    let first_trial = s.log.iter().find(|(_, p, d)| *p == LTE && d.to == Carry::Active).map(|(t, _, _)| *t);
    let demoted = s.log[0].0;
    assert!(first_trial.is_some_and(|t| t >= demoted + TRIAL_FIRST), "{first_trial:?} after {demoted:?}");
}

#[test]
fn a_trial_that_holds_resets_the_wait() {
    // Bad under load for 60 s, then the link is good again: the next trial sticks.
    let mut s = Sim::adaptive();
    s.run(200.0, |i, t, c| {
        Some(match i {
            DSL => dsl_full(t),
            _ if t < Duration::from_secs(60) => link(60, 700)(c),
            _ => link(60, 70)(c),
        })
    });
    assert_eq!(s.carry(LTE), Carry::Active);
    let last_up = s.last(LTE, Carry::Active).unwrap();
    assert!(last_up < Duration::from_secs(60 + 80), "promoted at {last_up:?}");
    assert!(s.last(LTE, Carry::Backup).unwrap() < last_up);
}

#[test]
fn loss_demotes_only_when_the_reference_loses_less() {
    let mut s = Sim::adaptive();
    s.inputs[LTE].loss = 0.3;
    s.run(10.0, |i, _, _| Some(if i == DSL { ms(20) } else { ms(60) }));
    assert_eq!(s.decisions(LTE), vec![(Carry::Backup, Reason::Loss)]);
    let mut both = Sim::adaptive();
    both.inputs[DSL].loss = 0.3;
    both.inputs[LTE].loss = 0.3;
    both.run(10.0, |i, _, _| Some(if i == DSL { ms(20) } else { ms(60) }));
    assert_eq!(both.decisions(LTE), vec![]);
}

#[test]
fn probe_loss_while_our_own_traffic_fills_the_queue_is_no_evidence() {
    // LTE 30 Mbit/s 30 ms: 60 ms idle; a bulk transfer fills its drop-tail queue (+70 ms) and a quarter of the
    // probes find it full. Over a probe window (10 s) that began while it was saturated, the loss is our own.
    let mut s = Sim::adaptive();
    let lte = |i: usize, _: Duration, c: Carry| Some(if i == DSL { ms(30) } else { link(60, 70)(c) });
    let idle = |i: usize, _: Duration, _: Carry| Some(if i == DSL { ms(30) } else { ms(60) });
    s.quiet[LTE] = true;
    s.run(5.0, idle);
    s.quiet[LTE] = false;
    // Probes are lost once the queue is full, when the round trip has grown.
    s.run(1.0, lte);
    s.inputs[LTE].loss = 0.25;
    for _ in 0..20 {
        s.inputs[LTE].loss_since = Some(s.now - Duration::from_secs(10));
        s.run(1.0, lte);
    }
    assert_eq!(s.decisions(LTE), vec![], "saturated by our transfers: {:?}", s.log);

    // The transfer ends; the probes of the window still include some sent while it ran: no evidence yet.
    s.quiet[LTE] = true;
    let ended = s.now;
    s.inputs[LTE].loss_since = Some(ended - Duration::from_secs(5));
    s.run(5.0, idle);
    assert_eq!(s.decisions(LTE), vec![]);
    // A whole window of probes sent since, still losing a quarter: the link loses them. Demoted.
    s.inputs[LTE].loss_since = Some(ended + TICK);
    s.run(2.0, idle);
    assert_eq!(s.decisions(LTE), vec![(Carry::Backup, Reason::Loss)]);
}

/// DSL and LTE idle for 5 s (their minimum round trips learnt), then both busy at these rates (Mbit/s) with
/// these loaded round trips, for 10 s.
fn loaded(dsl: (u64, f64), lte: (u64, f64)) -> Sim {
    let mut s = Sim::adaptive();
    s.quiet = vec![true, true];
    s.run(5.0, |i, _, _| Some(if i == DSL { ms(20) } else { ms(60) }));
    s.quiet = vec![false, false];
    s.inputs[DSL].rate_bps = dsl.1 * 1e6;
    s.inputs[LTE].rate_bps = lte.1 * 1e6;
    s.run(10.0, |i, t, c| {
        Some(match (i, c) {
            (DSL, _) => jit(ms(dsl.0), t, 2),
            (_, Carry::Active) => jit(ms(lte.0), t, 10),
            _ => ms(60),
        })
    });
    s
}

#[test]
fn a_path_whose_queue_keeps_the_best_path_waiting_is_demoted() {
    // LTE full (60 -> 130 ms, within max_rtt_excess of DSL) and carrying 5 Mbit/s while DSL, carrying 30, has an
    // empty queue: the transfer waits for LTE's data (the jittery LTE of the testbed).
    let s = loaded((22, 30.0), (130, 5.0));
    assert_eq!(s.decisions(LTE), vec![(Carry::Backup, Reason::HeadOfLine)]);
    let at = s.last(LTE, Carry::Backup).unwrap();
    // Saturated shows within the 1 s median window; then HEAD_OF_LINE_AFTER.
    assert!(at >= ms(5000) + HEAD_OF_LINE_AFTER && at <= ms(5000) + HEAD_OF_LINE_AFTER + ms(1200), "{at:?}");
}

#[test]
fn head_of_line_is_no_reason_while_both_paths_fill_or_neither_does_or_the_path_carries_more() {
    // A good aggregation: both queues full (DSL 20 -> 62 ms, LTE 60 -> 130 ms).
    assert_eq!(loaded((62, 45.0), (130, 27.0)).decisions(LTE), vec![]);
    // An application that sends slowly: both busy, neither queue fills.
    assert_eq!(loaded((22, 6.0), (65, 3.0)).decisions(LTE), vec![]);
    // A rural line: DSL (8 Mbit/s) waits while LTE (50 Mbit/s) is full; LTE is the better path.
    assert_eq!(loaded((22, 7.0), (130, 50.0)).decisions(LTE), vec![]);
}

/// DSL (22 ms, carrying `dsl` Mbit/s) and LTE (70 ms, its queue not full, carrying `lte`) busy after 5 s idle.
fn both_busy(dsl: f64, lte: f64) -> Sim {
    let mut s = Sim::adaptive();
    s.quiet = vec![true, true];
    s.run(5.0, |i, _, _| Some(if i == DSL { ms(20) } else { ms(60) }));
    s.quiet = vec![false, false];
    s.inputs[DSL].rate_bps = dsl * 1e6;
    s.inputs[LTE].rate_bps = lte * 1e6;
    s
}

fn steady(i: usize, _: Duration, _: Carry) -> Option<Duration> {
    Some(if i == DSL { ms(22) } else { ms(70) })
}

#[test]
fn a_path_the_best_path_waits_for_outright_is_demoted_soon() {
    // The jittery LTE of the testbed under an upload: its subflow carries 1-2 Mbit/s, which its queue does not
    // notice, while the connection's DSL subflow idles (the connection-level window full behind LTE's data).
    let mut s = both_busy(20.0, 1.5);
    s.run(2.0, steady);
    assert_eq!(s.decisions(LTE), vec![], "no reading shows DSL waiting yet");
    s.inputs[LTE].waited_for_by = 1 << DSL;
    s.run(1.0, steady);
    assert_eq!(s.decisions(LTE), vec![(Carry::Backup, Reason::HeadOfLine)]);
    let at = s.last(LTE, Carry::Backup).unwrap();
    assert!(at >= ms(7000) + WAITED_FOR_AFTER && at <= ms(7000) + WAITED_FOR_AFTER + TICK * 2, "{at:?}");
}

#[test]
fn a_moment_of_waiting_or_a_wait_for_the_path_carrying_more_is_no_reason() {
    // DSL waits now and then (one reading a second: the end of a burst, LTE's last segments still on the way).
    let mut s = both_busy(20.0, 1.5);
    for _ in 0..10 {
        s.inputs[LTE].waited_for_by = 1 << DSL;
        s.run(0.2, steady);
        s.inputs[LTE].waited_for_by = 0;
        s.run(0.8, steady);
    }
    assert_eq!(s.decisions(LTE), vec![]);
    // A rural line: DSL (7 Mbit/s) waits for LTE (50 Mbit/s), the better path.
    let mut s = both_busy(7.0, 50.0);
    s.inputs[LTE].waited_for_by = 1 << DSL;
    s.run(10.0, steady);
    assert_eq!(s.decisions(LTE), vec![]);
}

#[test]
fn a_loss_over_too_few_probes_is_no_evidence() {
    // One probe lost among the first nine after a start: 11 %, over the 10 % limit, but no measurement yet.
    let mut s = Sim::adaptive();
    s.inputs[LTE].loss = 1.0 / 9.0;
    s.inputs[LTE].loss_probes = 9;
    s.run(10.0, |i, _, _| Some(if i == DSL { ms(20) } else { ms(60) }));
    assert_eq!(s.decisions(LTE), vec![]);
    s.inputs[LTE].loss_probes = MIN_LOSS_PROBES;
    s.run(10.0, |i, _, _| Some(if i == DSL { ms(20) } else { ms(60) }));
    assert_eq!(s.decisions(LTE), vec![(Carry::Backup, Reason::Loss)]);
}

#[test]
fn a_demoted_path_carries_at_once_when_it_is_the_only_one_left() {
    let mut s = Sim::adaptive();
    s.run(10.0, |i, _, _| Some(if i == DSL { ms(20) } else { ms(400) }));
    assert_eq!(s.carry(LTE), Carry::Backup);
    s.inputs[DSL].usable = false;
    s.run(0.2, |i, _, _| (i == LTE).then_some(ms(400)));
    assert_eq!(s.decisions(LTE), vec![(Carry::Backup, Reason::RttExcess), (Carry::Active, Reason::OnlyPath)]);
    // DSL back: LTE is demoted again after demote_after.
    s.inputs[DSL].usable = true;
    s.run(3.0, |i, _, _| Some(if i == DSL { ms(20) } else { ms(400) }));
    assert_eq!(s.carry(LTE), Carry::Backup);
}

#[test]
fn no_answers_no_decision() {
    let mut s = Sim::adaptive();
    s.run(10.0, |i, _, _| (i == DSL).then_some(ms(20)));
    assert_eq!(s.decisions(LTE), vec![]);
}

#[test]
fn round_trips_straddling_the_limit_do_not_flap() {
    // LTE's loaded round trip wanders around DSL's + the limit: once demoted it needs half the excess to return.
    let limit = PathControlFile::default().max_rtt_excess;
    let mut s = Sim::adaptive();
    s.run(300.0, |i, t, c| {
        Some(match i {
            DSL => ms(20),
            _ if c == Carry::Active => jit(limit + ms(20), t, 40),
            _ => jit(limit, t, 40),
        })
    });
    assert!(s.decisions(LTE).len() <= 8, "{:?}", s.decisions(LTE));
}

#[test]
fn a_mode_change_from_outside_resets_the_timers() {
    // LTE 4/3 of the limit over DSL: the hold is 3/4 of demote_after.
    let cfg = PathControlFile::default();
    let excess = cfg.max_rtt_excess.mul_f64(4.0 / 3.0);
    let hold = cfg.demote_after.mul_f64(cfg.max_rtt_excess.as_secs_f64() / excess.as_secs_f64());
    let rtt = move |i: usize, _: Duration, _: Carry| Some(if i == DSL { ms(20) } else { ms(20) + excess });
    // Pinned for 3 s (the operator's choice: nothing decided), then adaptive: the hold starts anew.
    let mut s = Sim::adaptive();
    s.inputs[LTE].policy = Policy::Pinned { carries: true };
    s.run(3.0, rtt);
    s.inputs[LTE].policy = Policy::Adaptive;
    s.run((hold - TICK).as_secs_f64(), rtt);
    assert_eq!(s.decisions(LTE), vec![], "not before the hold has passed again");
    s.run(0.4, rtt);
    assert_eq!(s.decisions(LTE), vec![(Carry::Backup, Reason::RttExcess)]);
}

/// DSL pinned active, LTE overflow.
fn overflow() -> Sim {
    Sim::new(&[Policy::Pinned { carries: true }, Policy::Overflow])
}

#[test]
fn overflow_stays_out_while_the_primary_has_room() {
    // A 10 Mbit/s stream on 50 Mbit/s DSL: no queue, round trip at its idle minimum ± 2 ms.
    let mut s = overflow();
    assert_eq!(s.carry(LTE), Carry::Backup);
    s.run(60.0, |i, t, _| Some(if i == DSL { jit(ms(22), t, 2) } else { ms(60) }));
    assert_eq!(s.decisions(LTE), vec![]);
}

#[test]
fn overflow_joins_within_a_second_of_saturation_and_leaves_after_release_after() {
    let mut s = overflow();
    // Idle 5 s, a bulk download fills DSL's queue (+42 ms) for 20 s, then idle again.
    let busy = |t: Duration| t >= Duration::from_secs(5) && t < Duration::from_secs(25);
    s.run(40.0, |i, t, _| {
        Some(if i == LTE {
            ms(60)
        } else if busy(t) {
            ms(62)
        } else {
            ms(20)
        })
    });
    assert_eq!(s.decisions(LTE), vec![(Carry::Active, Reason::Saturated), (Carry::Backup, Reason::Drained)]);
    let on = s.last(LTE, Carry::Active).unwrap();
    let off = s.last(LTE, Carry::Backup).unwrap();
    assert!(on > Duration::from_secs(5) && on <= ms(6300), "joined at {on:?}");
    assert!(off > Duration::from_secs(25 + 5) && off <= ms(31_500), "left at {off:?}");
}

#[test]
fn overflow_joins_a_primary_whose_sender_keeps_a_short_queue() {
    // DSL idling at 8 ms, filled from 5 s on by a BBR sender that queues about one idle round trip (measured on
    // the testbed: 19-21 ms loaded), far under `overflow_delay`.
    let mut s = overflow();
    s.run(20.0, |i, t, _| {
        Some(if i == LTE {
            ms(60)
        } else if t >= Duration::from_secs(5) {
            jit(ms(20), t, 1)
        } else {
            jit(ms(8), t, 1)
        })
    });
    assert_eq!(s.decisions(LTE), vec![(Carry::Active, Reason::Saturated)]);
    let on = s.last(LTE, Carry::Active).unwrap();
    assert!(on > Duration::from_secs(5) && on <= ms(6300), "joined at {on:?}");
}

#[test]
fn an_idle_primary_whose_round_trip_varies_is_not_saturated() {
    // Nothing to send on DSL; its probes vary by ±10 ms around 20 ms (a cable line's request-grant delay).
    let mut s = overflow();
    s.quiet[DSL] = true;
    s.run(60.0, |i, t, _| Some(if i == DSL { jit(ms(20), t, 10) } else { ms(60) }));
    assert_eq!(s.decisions(LTE), vec![]);
}

#[test]
fn overflow_carries_when_the_primary_is_gone() {
    let mut s = overflow();
    s.inputs[DSL].usable = false;
    s.run(0.2, |_, _, _| Some(ms(60)));
    assert_eq!(s.decisions(LTE), vec![(Carry::Active, Reason::OnlyPath)]);
}

#[test]
fn the_idle_minimum_forgets_after_its_window() {
    let mut p = PathState::default();
    let t0 = Instant::now();
    p.record(t0, ms(10));
    p.record(t0 + Duration::from_secs(100), ms(50));
    assert_eq!(p.base(), Some(ms(10)));
    p.record(t0 + BASE_WINDOW + Duration::from_secs(31), ms(50));
    assert_eq!(p.base(), Some(ms(50)));
}
