//! Rate limits: for log lines (auth failures: a burst of lines per interval, then silence, then one line
//! saying how many were suppressed, so an attacker hammering the gateway cannot fill the disk), and for
//! Convert Error replies per source address (RFC 8803 §5.2.5: error messages SHOULD be rate-limited).
//!
//! Sans-IO: the caller passes `now`. Invariants: at most `burst` lines are allowed per `interval`; a source
//! gets at most `burst` error replies at once and `per_second` after that; the per-source table holds at most
//! [`ErrorReplyLimiter::MAX_SOURCES`] addresses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Fixed-window limiter for log lines.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    interval: Duration,
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// At most `burst` lines per `interval`.
    pub fn new(burst: u32, interval: Duration) -> Self {
        LogLimiter { burst, interval, window_start: None, used: 0, suppressed: 0 }
    }

    /// `Some(n)` when a line may be logged now, `n` being the lines suppressed since the last allowed one;
    /// `None` when this line must be dropped (it is counted).
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let fresh = match self.window_start {
            None => true,
            Some(start) => now.saturating_duration_since(start) >= self.interval,
        };
        if fresh {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used < self.burst {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// A token bucket per source address for Convert Error replies. A source past its budget gets a reset
/// instead of an Error TLV: the reply costs hag a write, a lingering socket and a log line, and the budget is
/// far above what a CPE that is refused for a real reason ever uses.
#[derive(Debug)]
pub struct ErrorReplyLimiter {
    burst: f64,
    per_second: f64,
    sources: HashMap<IpAddr, (f64, Instant)>,
}

impl ErrorReplyLimiter {
    /// Addresses tracked at once; past it, the sources whose buckets are full again are forgotten (they
    /// would start full anyway), and if none is, the whole table is.
    pub const MAX_SOURCES: usize = 4096;

    pub fn new(burst: u32, per_second: u32) -> Self {
        ErrorReplyLimiter { burst: f64::from(burst), per_second: f64::from(per_second), sources: HashMap::new() }
    }

    /// Whether `source` may be sent an Error reply now (and if so, one is taken from its budget).
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        let source = source.to_canonical();
        if self.sources.len() >= Self::MAX_SOURCES && !self.sources.contains_key(&source) {
            let (burst, rate) = (self.burst, self.per_second);
            self.sources
                .retain(|_, (tokens, at)| *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst);
            if self.sources.len() >= Self::MAX_SOURCES {
                self.sources.clear();
            }
        }
        let (tokens, at) = self.sources.entry(source).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_replies_burst_then_refill_per_source() {
        let t0 = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let mut l = ErrorReplyLimiter::new(4, 2);
        assert!((0..4).all(|_| l.allow(a, t0)));
        assert!(!l.allow(a, t0));
        assert!(l.allow(b, t0), "another source has its own budget");
        assert!(l.allow(a, t0 + Duration::from_millis(500)), "one token back after half a second");
        assert!(!l.allow(a, t0 + Duration::from_millis(500)));
        assert!((0..4).all(|_| l.allow(a, t0 + Duration::from_secs(60))), "refills to the burst, not past it");
        assert!(!l.allow(a, t0 + Duration::from_secs(60)));
        // IPv4-mapped is the same source.
        assert!(!l.allow("::ffff:192.0.2.1".parse().unwrap(), t0 + Duration::from_secs(60)));
    }

    #[test]
    fn the_source_table_is_bounded() {
        let t0 = Instant::now();
        let mut l = ErrorReplyLimiter::new(2, 1);
        let max = ErrorReplyLimiter::MAX_SOURCES as u32;
        for i in 0..max {
            assert!(l.allow(IpAddr::from(i.to_be_bytes()), t0));
        }
        assert_eq!(l.sources.len(), max as usize);
        // A new source when the table is full: the sources whose buckets refilled are forgotten.
        assert!(l.allow("198.51.100.1".parse().unwrap(), t0 + Duration::from_secs(5)));
        assert_eq!(l.sources.len(), 1);
        // None refilled: the table starts over rather than grow.
        for i in 0..max + 10 {
            assert!(l.allow(IpAddr::from((i + max).to_be_bytes()), t0 + Duration::from_secs(5)));
            assert!(l.sources.len() <= max as usize);
        }
    }

    #[test]
    fn burst_then_silence_then_report_suppressed() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(3, Duration::from_secs(10));
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0 + Duration::from_secs(1)), Some(0));
        for _ in 0..5 {
            assert_eq!(l.allow(t0 + Duration::from_secs(9)), None);
        }
        assert_eq!(l.allow(t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(l.allow(t0 + Duration::from_secs(10)), Some(0));
    }
}
