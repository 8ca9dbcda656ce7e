//! The hag's counters: a plain struct of atomics owned by the server, read live by whoever holds an `Arc`
//! (the admin API exports them; tests and the exit log read a [`Snapshot`]).
//!
//! Invariants: counters only grow, except `active` (connections currently held, a gauge) which the server's
//! connection guard increments and decrements exactly once per accepted connection, and `held` (connections
//! held idle for a CPE's pool, a gauge). Every connection ends in exactly one outcome counter: `relayed`, one
//! `errors_sent` code, `info_answered`, `reset_zero_length`, `error_replies_limited`, `header_timeouts`,
//! `closed_before_header`, `holds_expired` or `holds_closed`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use common::convert::ErrorCode;
use common::probe::ResponderCounters;

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
    /// Connections open right now that have not delivered a whole Convert message yet (gauge).
    pub pending: AtomicU64,
    /// Connections closed before their Convert message because a newer one from the same address came while
    /// it had `limits.max_pending_per_source` pending (the oldest goes).
    pub pending_evicted: AtomicU64,
    /// Connections whose message held only an Info TLV, answered with the Supported TCP Extensions.
    pub info_answered: AtomicU64,
    /// Connections reset because their message's total length was zero (RFC 8803 §5.1).
    pub reset_zero_length: AtomicU64,
    /// Connections reset instead of answered with an Error TLV: their source was over its error reply budget.
    pub error_replies_limited: AtomicU64,
    /// Held connections (Hold TLV) open right now, all CPEs (gauge).
    pub held: AtomicU64,
    /// Hold requests accepted (answered with the bare header).
    pub holds_accepted: AtomicU64,
    /// Held connections whose Convert message naming the destination arrived.
    pub holds_used: AtomicU64,
    /// Held connections closed by hag after the hold timeout.
    pub holds_expired: AtomicU64,
    /// Held connections the CPE closed without using them.
    pub holds_closed: AtomicU64,
    /// Relays that ended because neither side sent anything for the idle timeout.
    pub idle_timeouts: AtomicU64,
    /// Relays that ended with an IO error (reset by either side).
    pub relay_errors: AtomicU64,
    /// Bytes from CPEs to destinations (finished relays and the client bytes sent with the Convert message).
    pub bytes_up: AtomicU64,
    /// Bytes from destinations to CPEs (finished relays).
    pub bytes_down: AtomicU64,
    /// Connections closed through the admin API.
    pub closed_by_admin: AtomicU64,
    /// Per authenticated CPE id. Only ids with a configured key get an entry, so its size is bounded by the
    /// config.
    pub per_cpe: Mutex<HashMap<String, CpeCounters>>,
    /// The UDP probe responders' counters per bound service address (set when the server runs).
    pub probes: Mutex<Vec<(SocketAddr, Arc<ResponderCounters>)>>,
}

/// Counters of one CPE (see [`Stats::per_cpe`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpeCounters {
    /// Connections admitted (authenticated, within the per-CPE limit).
    pub connections: u64,
    /// Bytes from this CPE to destinations (finished relays).
    pub bytes_up: u64,
    /// Bytes from destinations to this CPE (finished relays).
    pub bytes_down: u64,
    /// Auth TLVs naming this CPE that failed (bad MAC, clock skew, replayed nonce).
    pub auth_failures: u64,
    /// Last time this CPE connected (admitted or not) or a relay of it ended.
    pub last_seen: Option<SystemTime>,
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
        ERROR_CODES.iter().position(|c| *c == code).map_or(0, |i| self.errors_sent[i].load(Relaxed))
    }

    fn with_cpe(&self, cpe: &str, f: impl FnOnce(&mut CpeCounters)) {
        let mut map = self.per_cpe.lock().expect("per-CPE stats poisoned");
        let c = match map.get_mut(cpe) {
            Some(c) => c,
            None => map.entry(cpe.to_owned()).or_default(),
        };
        f(c);
        c.last_seen = Some(SystemTime::now());
    }

    /// Counts an admitted connection of `cpe` (a configured id).
    pub fn cpe_admitted(&self, cpe: &str) {
        self.with_cpe(cpe, |c| c.connections += 1);
    }

    /// Counts a failed Auth TLV of `cpe` (a configured id).
    pub fn cpe_auth_failed(&self, cpe: &str) {
        self.with_cpe(cpe, |c| c.auth_failures += 1);
    }

    /// Adds the bytes of a finished relay of `cpe`.
    pub fn cpe_relayed(&self, cpe: &str, up: u64, down: u64) {
        self.with_cpe(cpe, |c| {
            c.bytes_up += up;
            c.bytes_down += down;
        });
    }

    /// Copy of the per-CPE counters.
    pub fn per_cpe(&self) -> HashMap<String, CpeCounters> {
        self.per_cpe.lock().expect("per-CPE stats poisoned").clone()
    }

    /// A consistent-enough copy for printing (each counter read once).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            accepted: self.accepted.load(Relaxed),
            fallback: self.fallback.load(Relaxed),
            active: self.active.load(Relaxed),
            relayed: self.relayed.load(Relaxed),
            errors_sent: std::array::from_fn(|i| (ERROR_CODES[i].code(), self.errors_sent[i].load(Relaxed))),
            auth_failures: self.auth_failures.load(Relaxed),
            policy_denied: self.policy_denied.load(Relaxed),
            header_timeouts: self.header_timeouts.load(Relaxed),
            closed_before_header: self.closed_before_header.load(Relaxed),
            pending_evicted: self.pending_evicted.load(Relaxed),
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
    pub pending_evicted: u64,
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
             closed_before_header={} pending_evicted={} idle_timeouts={} relay_errors={} bytes_up={} bytes_down={}",
            self.accepted,
            self.fallback,
            self.active,
            self.relayed,
            self.auth_failures,
            self.policy_denied,
            self.header_timeouts,
            self.closed_before_header,
            self.pending_evicted,
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

    #[test]
    fn per_cpe_counters_add_up() {
        let s = Stats::default();
        s.cpe_admitted("a");
        s.cpe_admitted("a");
        s.cpe_relayed("a", 10, 20);
        s.cpe_auth_failed("b");
        let m = s.per_cpe();
        assert_eq!((m["a"].connections, m["a"].bytes_up, m["a"].bytes_down), (2, 10, 20));
        assert_eq!((m["b"].connections, m["b"].auth_failures), (0, 1));
        assert!(m["a"].last_seen.is_some());
    }
}
