//! The hag's counters: a plain struct of atomics owned by the server, read live by whoever holds an `Arc`
//! (the admin API exports them; tests and the exit log read a [`Snapshot`]).
//!
//! Invariants: counters only grow, except `active` (connections currently held, a gauge) which the server's
//! connection guard increments and decrements exactly once per accepted connection. Every connection ends in
//! exactly one outcome counter: `relayed`, one `errors_sent` code, `header_timeouts` or `closed_before_header`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use common::convert::ErrorCode;

/// Error codes the hag can send, in the order of [`Stats::errors_sent`].
pub const ERROR_CODES: [ErrorCode; 10] = [
    ErrorCode::UnsupportedVersion,
    ErrorCode::MalformedMessage,
    ErrorCode::UnsupportedMessage,
    ErrorCode::MissingCookie,
    ErrorCode::NotAuthorized,
    ErrorCode::UnsupportedTcpOption,
    ErrorCode::ResourceExceeded,
    ErrorCode::NetworkFailure,
    ErrorCode::ConnectionReset,
    ErrorCode::DestinationUnreachable,
];

/// Live counters of one hag.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted on any listener.
    pub accepted: AtomicU64,
    /// Accepted connections that are plain TCP (the client did not do MPTCP, or it fell back).
    pub fallback: AtomicU64,
    /// Connections open right now (gauge).
    pub active: AtomicU64,
    /// Connections answered with success and relayed.
    pub relayed: AtomicU64,
    /// Error replies sent, per code (index as in [`ERROR_CODES`]).
    pub errors_sent: [AtomicU64; ERROR_CODES.len()],
    /// Of the Error 32 replies: authentication failures (MAC, skew, replay, unknown id, missing Auth).
    pub auth_failures: AtomicU64,
    /// Of the Error 32 replies: destination refused by policy.
    pub policy_denied: AtomicU64,
    /// Clients that did not deliver a whole Convert message within the header deadline.
    pub header_timeouts: AtomicU64,
    /// Clients that closed (or failed) before a whole Convert message arrived.
    pub closed_before_header: AtomicU64,
    /// Relays that ended because neither side sent anything for the idle timeout.
    pub idle_timeouts: AtomicU64,
    /// Relays that ended with an IO error (reset by either side).
    pub relay_errors: AtomicU64,
    /// Bytes from CPEs to destinations (finished relays and the client bytes sent with the Convert message).
    pub bytes_up: AtomicU64,
    /// Bytes from destinations to CPEs (finished relays).
    pub bytes_down: AtomicU64,
}

impl Stats {
    /// Counts one error reply with `code`.
    pub fn error_sent(&self, code: ErrorCode) {
        if let Some(i) = ERROR_CODES.iter().position(|c| *c == code) {
            self.errors_sent[i].fetch_add(1, Relaxed);
        }
    }

    /// Error replies sent with `code` so far.
    pub fn errors_with(&self, code: ErrorCode) -> u64 {
        ERROR_CODES
            .iter()
            .position(|c| *c == code)
            .map_or(0, |i| self.errors_sent[i].load(Relaxed))
    }

    /// A consistent-enough copy for printing (each counter read once).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            accepted: self.accepted.load(Relaxed),
            fallback: self.fallback.load(Relaxed),
            active: self.active.load(Relaxed),
            relayed: self.relayed.load(Relaxed),
            errors_sent: std::array::from_fn(|i| {
                (ERROR_CODES[i].code(), self.errors_sent[i].load(Relaxed))
            }),
            auth_failures: self.auth_failures.load(Relaxed),
            policy_denied: self.policy_denied.load(Relaxed),
            header_timeouts: self.header_timeouts.load(Relaxed),
            closed_before_header: self.closed_before_header.load(Relaxed),
            idle_timeouts: self.idle_timeouts.load(Relaxed),
            relay_errors: self.relay_errors.load(Relaxed),
            bytes_up: self.bytes_up.load(Relaxed),
            bytes_down: self.bytes_down.load(Relaxed),
        }
    }
}

/// Plain-value copy of [`Stats`]. `Display` prints `key=value` pairs (one log line, easy to grep).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub accepted: u64,
    pub fallback: u64,
    pub active: u64,
    pub relayed: u64,
    /// (error code, replies sent)
    pub errors_sent: [(u8, u64); ERROR_CODES.len()],
    pub auth_failures: u64,
    pub policy_denied: u64,
    pub header_timeouts: u64,
    pub closed_before_header: u64,
    pub idle_timeouts: u64,
    pub relay_errors: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "accepted={} fallback={} active={} relayed={} auth_failures={} policy_denied={} header_timeouts={} \
             closed_before_header={} idle_timeouts={} relay_errors={} bytes_up={} bytes_down={}",
            self.accepted,
            self.fallback,
            self.active,
            self.relayed,
            self.auth_failures,
            self.policy_denied,
            self.header_timeouts,
            self.closed_before_header,
            self.idle_timeouts,
            self.relay_errors,
            self.bytes_up,
            self.bytes_down
        )?;
        for (code, n) in self.errors_sent {
            write!(f, " error_{code}={n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_counters_are_per_code() {
        let s = Stats::default();
        s.error_sent(ErrorCode::NotAuthorized);
        s.error_sent(ErrorCode::NotAuthorized);
        s.error_sent(ErrorCode::DestinationUnreachable);
        s.error_sent(ErrorCode::Unknown(200));
        assert_eq!(s.errors_with(ErrorCode::NotAuthorized), 2);
        assert_eq!(s.errors_with(ErrorCode::DestinationUnreachable), 1);
        assert_eq!(s.errors_with(ErrorCode::MalformedMessage), 0);
        let line = s.snapshot().to_string();
        assert!(line.contains(" error_32=2"), "{line}");
        assert!(line.contains(" error_97=1"), "{line}");
        assert!(line.contains(" error_0=0"), "{line}");
    }
}
