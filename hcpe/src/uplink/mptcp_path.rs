//! Whether MPTCP itself gets through an uplink: a middlebox on an access network may strip the MPTCP option
//! from TCP headers. On the uplink a connection starts on, that makes the connection fall back to plain TCP
//! (it works, on that uplink alone); on another uplink, it makes the joins fail. Sans-IO: outcomes and `now`
//! in, the uplink's standing out.
//!
//! Invariants:
//! - [`IN_ROW`] fallbacks in a row of connections that started on the uplink mark it *stripped* for
//!   [`RETRY`]: new connections start on another uplink first; after that time one is tried on it again, and
//!   one more fallback marks it again at once (the row is only broken by a connection that got MPTCP);
//! - [`IN_ROW`] failed joins in a row block its joins for [`RETRY`] (its endpoint is withdrawn, so new
//!   connections stop sending join SYNs into the stripping network); likewise retried and re-blocked;
//! - every change of standing is returned once, for a log line; counters only grow.

use std::time::{Duration, Instant};

/// Outcomes in a row that change an uplink's standing.
pub const IN_ROW: u32 = 2;
/// How long a stripped uplink is avoided (or its joins blocked) before it is tried again.
pub const RETRY: Duration = Duration::from_secs(30);

/// A change of an uplink's MPTCP standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Connections starting on it fall back to plain TCP.
    Stripped,
    /// A connection starting on it got MPTCP again.
    MptcpWorks,
    /// Joins over it fail.
    JoinsFail,
    /// A join over it succeeded again.
    JoinsWork,
}

/// Failures of one kind on an uplink: how many, how many in a row, and until when the uplink is marked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Streak {
    total: u64,
    in_row: u32,
    marked_until: Option<Instant>,
}

impl Streak {
    /// Records an outcome; `Some(true)` when the uplink becomes marked, `Some(false)` when a mark is cleared.
    fn record(&mut self, now: Instant, ok: bool) -> Option<bool> {
        if ok {
            self.in_row = 0;
            return self.marked_until.take().map(|_| false);
        }
        self.total += 1;
        self.in_row += 1;
        if self.in_row < IN_ROW || self.marked(now) {
            return None;
        }
        let first = self.marked_until.is_none();
        self.marked_until = Some(now + RETRY);
        first.then_some(true)
    }

    fn marked(&self, now: Instant) -> bool {
        self.marked_until.is_some_and(|t| now < t)
    }
}

/// The MPTCP standing of one uplink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathCheck {
    fallbacks: Streak,
    joins: Streak,
}

impl PathCheck {
    /// A connection that started on the uplink got MPTCP (`true`) or fell back to plain TCP.
    pub fn on_connect(&mut self, now: Instant, mptcp: bool) -> Option<Change> {
        self.fallbacks.record(now, mptcp).map(|marked| if marked { Change::Stripped } else { Change::MptcpWorks })
    }

    /// A join over the uplink was established (`true`) or failed.
    pub fn on_join(&mut self, now: Instant, ok: bool) -> Option<Change> {
        self.joins.record(now, ok).map(|marked| if marked { Change::JoinsFail } else { Change::JoinsWork })
    }

    /// Connections that started on the uplink and fell back to plain TCP.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.total
    }

    /// Joins over the uplink that failed.
    pub fn join_failures(&self) -> u64 {
        self.joins.total
    }

    /// New connections avoid the uplink now.
    pub fn stripped(&self, now: Instant) -> bool {
        self.fallbacks.marked(now)
    }

    /// The uplink's joins are blocked now (no endpoint).
    pub fn joins_blocked(&self, now: Instant) -> bool {
        self.joins.marked(now)
    }

    /// The last verdict was "stripped" or "joins fail" and nothing has proven it wrong since (also while a
    /// retry is under way): what the API reports.
    pub fn reported(&self) -> (bool, bool) {
        (self.fallbacks.marked_until.is_some(), self.joins.marked_until.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_fallbacks_in_a_row_strip_the_uplink_until_mptcp_works_again() {
        let t0 = Instant::now();
        let mut p = PathCheck::default();
        assert_eq!(p.on_connect(t0, false), None, "one fallback can be anything");
        assert_eq!(p.on_connect(t0, true), None);
        assert_eq!(p.on_connect(t0, false), None);
        assert_eq!(p.on_connect(t0, false), Some(Change::Stripped));
        assert!(p.stripped(t0));
        assert_eq!(p.on_connect(t0, false), None, "reported once");
        assert_eq!(p.fallbacks(), 4);
        // After the retry time one connection tries again; a fallback marks it at once, without a log line.
        let later = t0 + RETRY;
        assert!(!p.stripped(later));
        assert_eq!(p.on_connect(later, false), None);
        assert!(p.stripped(later));
        assert_eq!(p.reported(), (true, false));
        // MPTCP through it again.
        assert_eq!(p.on_connect(later + RETRY, true), Some(Change::MptcpWorks));
        assert!(!p.stripped(later + RETRY));
        assert_eq!(p.reported(), (false, false));
    }

    #[test]
    fn failed_joins_block_the_uplink_joins_and_a_good_one_unblocks() {
        let t0 = Instant::now();
        let mut p = PathCheck::default();
        assert_eq!(p.on_join(t0, false), None);
        assert_eq!(p.on_join(t0, false), Some(Change::JoinsFail));
        assert!(p.joins_blocked(t0));
        assert!(!p.joins_blocked(t0 + RETRY));
        assert_eq!(p.on_join(t0 + RETRY, false), None);
        assert!(p.joins_blocked(t0 + RETRY));
        assert_eq!(p.on_join(t0 + RETRY * 2, true), Some(Change::JoinsWork));
        assert_eq!((p.join_failures(), p.reported()), (3, (false, false)));
    }
}
