//! Rate limit for log lines (auth failures): a burst of lines per interval, then silence, then one line
//! saying how many were suppressed. An attacker hammering the gateway must not be able to fill the disk.
//!
//! Sans-IO: the caller passes `now`. Invariant: at most `burst` lines are allowed per `interval`.

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

#[cfg(test)]
mod tests {
    use super::*;

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
