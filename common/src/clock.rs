//! The wall clock a CPE signs with (Auth TLV timestamps, probe timestamps): the system clock, until hag
//! says in an authenticated Time TLV that it is off by more than hag accepts; from then on hag's time
//! carried forward on the monotonic clock, until the system clock agrees with it again (NTP synchronised,
//! an operator set it) and takes over.
//!
//! Why: routers often boot without a real-time clock and sign requests hours or years off until NTP syncs,
//! which can be never when NTP needs the very uplink hag provides. Replay protection stays hag's: it still
//! takes only timestamps within its skew of its own clock and each nonce once; what changes is that a CPE
//! learns, in one refused request, which time to sign with. Design: `docs/protocol.md`, "A CPE whose clock
//! is wrong".
//!
//! Sans-IO core ([`SigningClock::now_at`], [`SigningClock::learn_at`]: the caller passes both clocks);
//! [`CLOCK`] is the process's instance over the real clocks.
//!
//! Invariants: without a learnt anchor, the clock is the system clock exactly; with one, it moves with the
//! monotonic clock, so a system clock that jumps (set by hand, NTP's first step) does not move it; the
//! anchor is dropped as soon as the two agree within [`AGREE`].

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Within this, the system clock and hag's are taken to agree: the system clock is used.
pub const AGREE: Duration = Duration::from_secs(2);

/// The process's signing clock.
pub static CLOCK: SigningClock = SigningClock::new();

/// Unix time to sign with now (the system clock unless hag's time was learnt, see the module docs).
pub fn unix_now() -> Duration {
    CLOCK.now_at(Instant::now(), system_unix())
}

/// The system clock as Unix time (zero before 1970).
pub fn system_unix() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// hag's time at a monotonic instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Anchor {
    at: Instant,
    unix: Duration,
}

/// See the module docs.
#[derive(Debug)]
pub struct SigningClock {
    anchor: Mutex<Option<Anchor>>,
}

/// What [`SigningClock::learn_at`] concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learnt {
    /// The system clock agrees with hag's; it stays (or is again) the clock.
    SystemAgrees,
    /// hag's time is used from now on: the system clock is this far behind (negative: ahead), in
    /// milliseconds.
    Offset { behind_ms: i64 },
}

impl Default for SigningClock {
    fn default() -> Self {
        SigningClock::new()
    }
}

impl SigningClock {
    pub const fn new() -> Self {
        SigningClock { anchor: Mutex::new(None) }
    }

    /// The time to sign with at monotonic instant `mono`, the system clock reading `system` then.
    pub fn now_at(&self, mono: Instant, system: Duration) -> Duration {
        let mut anchor = self.anchor.lock().expect("clock anchor poisoned");
        let Some(a) = *anchor else { return system };
        let hag = a.unix + mono.saturating_duration_since(a.at);
        if hag.abs_diff(system) <= AGREE {
            *anchor = None;
            return system;
        }
        hag
    }

    /// hag said its time was `hag_unix` while the request went out at `sent` and its answer came at
    /// `received` (monotonic); `system` is the system clock at `received`. hag's time at `received` is
    /// taken as `hag_unix` plus half the round trip.
    pub fn learn_at(&self, hag_unix: Duration, sent: Instant, received: Instant, system: Duration) -> Learnt {
        let hag = hag_unix + received.saturating_duration_since(sent) / 2;
        let mut anchor = self.anchor.lock().expect("clock anchor poisoned");
        if hag.abs_diff(system) <= AGREE {
            *anchor = None;
            return Learnt::SystemAgrees;
        }
        *anchor = Some(Anchor { at: received, unix: hag });
        let behind_ms =
            i64::try_from(hag.as_millis()).unwrap_or(i64::MAX) - i64::try_from(system.as_millis()).unwrap_or(i64::MAX);
        Learnt::Offset { behind_ms }
    }

    /// [`SigningClock::learn_at`] with the clocks read now.
    pub fn learn(&self, hag_unix: Duration, sent: Instant) -> Learnt {
        self.learn_at(hag_unix, sent, Instant::now(), system_unix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_secs(3600);

    #[test]
    fn without_a_learnt_time_it_is_the_system_clock() {
        let c = SigningClock::new();
        let t0 = Instant::now();
        assert_eq!(c.now_at(t0, Duration::from_secs(1_700_000_000)), Duration::from_secs(1_700_000_000));
    }

    #[test]
    fn three_hours_behind_it_signs_with_hags_time_carried_on_the_monotonic_clock() {
        let c = SigningClock::new();
        let t0 = Instant::now();
        let real = Duration::from_secs(1_800_000_000);
        let wrong = real - 3 * H;
        // Sent at t0, answered 40 ms later: hag's time at t0 + 40 ms is `real` + 20 ms.
        let learnt = c.learn_at(real, t0, t0 + Duration::from_millis(40), wrong + Duration::from_millis(40));
        assert_eq!(learnt, Learnt::Offset { behind_ms: 3 * 3600 * 1000 - 20 });
        let later = t0 + Duration::from_secs(100);
        assert_eq!(c.now_at(later, wrong + Duration::from_secs(100)), real + Duration::from_millis(100_000 - 20));
        // The system clock jumps by a day (a bad RTC read): the signing clock does not move with it.
        let now = c.now_at(later, wrong + 24 * H);
        assert_eq!(now, real + Duration::from_millis(100_000 - 20));
    }

    #[test]
    fn once_the_system_clock_agrees_it_takes_over_again() {
        let c = SigningClock::new();
        let t0 = Instant::now();
        let real = Duration::from_secs(1_800_000_000);
        c.learn_at(real, t0, t0, real - 3 * H);
        // NTP stepped the system clock to within a second of hag's.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(c.now_at(t1, real + Duration::from_secs(11)), real + Duration::from_secs(11));
        // Dropped for good: a later wrong step is followed, as with any system clock.
        assert_eq!(c.now_at(t1, real - H), real - H);
    }

    #[test]
    fn a_clock_that_already_agrees_learns_nothing() {
        let c = SigningClock::new();
        let t0 = Instant::now();
        let real = Duration::from_secs(1_800_000_000);
        assert_eq!(c.learn_at(real, t0, t0, real + Duration::from_millis(1500)), Learnt::SystemAgrees);
        assert_eq!(c.now_at(t0, real - H), real - H);
        // A clock ahead of hag's.
        assert_eq!(c.learn_at(real, t0, t0, real + 2 * H), Learnt::Offset { behind_ms: -2 * 3600 * 1000 });
    }
}
