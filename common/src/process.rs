//! Process-wide setup both daemons do at start.
//!
//! Owns the open-file limit: a relayed connection costs two descriptors (hcpe: the LAN socket and the MPTCP
//! socket; hag: the MPTCP socket and the destination socket), so the distribution default of 1024 (or a
//! container's 20,000) caps a daemon far below its configured connection limit. [`raise_fd_limit`] lifts the
//! soft limit to what the daemon needs, and the hard limit too when the process may (root), never lowering
//! either.

use rlimit::Resource;

/// Descriptors a daemon keeps besides its connections' (listeners, netlink, admin API, log files, tokio).
pub const FD_RESERVE: u64 = 256;

/// The open-file limit before and after [`raise_fd_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// Soft limit at start.
    pub before: u64,
    /// Soft limit now.
    pub now: u64,
    /// What was asked for.
    pub wanted: u64,
}

impl FdLimit {
    /// Whether the limit now covers what was asked for.
    pub fn sufficient(&self) -> bool {
        self.now >= self.wanted
    }

    /// Connections this limit holds at `fds_per_connection` each, after [`FD_RESERVE`].
    pub fn connections(&self, fds_per_connection: u64) -> u64 {
        self.now.saturating_sub(FD_RESERVE) / fds_per_connection.max(1)
    }
}

/// Descriptors needed for `connections` relays at `fds_per_connection` each, plus [`FD_RESERVE`].
pub fn fds_for(connections: u64, fds_per_connection: u64) -> u64 {
    connections.saturating_mul(fds_per_connection).saturating_add(FD_RESERVE)
}

/// Raises `RLIMIT_NOFILE` to at least `wanted` where allowed: the soft limit up to the hard limit, and both
/// together when the process may raise the hard limit (CAP_SYS_RESOURCE; capped by `fs.nr_open`). Never lowers
/// a limit. Logs what it did; the caller decides whether a shortfall is worth a warning.
pub fn raise_fd_limit(wanted: u64) -> std::io::Result<FdLimit> {
    let (soft, hard) = rlimit::getrlimit(Resource::NOFILE)?;
    if soft >= wanted {
        return Ok(FdLimit { before: soft, now: soft, wanted });
    }
    if hard < wanted {
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(hard);
        let target = wanted.min(nr_open).max(hard);
        // Fails without CAP_SYS_RESOURCE: then the hard limit is as far as we go.
        if target > hard && rlimit::setrlimit(Resource::NOFILE, target, target).is_ok() {
            tracing::debug!(from = soft, to = target, "raised the open-file limit (soft and hard)");
            return Ok(FdLimit { before: soft, now: target, wanted });
        }
    }
    let now = wanted.min(hard).max(soft);
    if now > soft {
        rlimit::setrlimit(Resource::NOFILE, now, hard)?;
        tracing::debug!(from = soft, to = now, "raised the open-file limit");
    }
    Ok(FdLimit { before: soft, now, wanted })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_counts_two_descriptors_per_relay_plus_the_reserve() {
        assert_eq!(fds_for(10_000, 2), 20_256);
        assert_eq!(fds_for(u64::MAX, 2), u64::MAX);
        let l = FdLimit { before: 1024, now: 20_256, wanted: 20_256 };
        assert!(l.sufficient());
        assert_eq!(l.connections(2), 10_000);
    }

    #[test]
    fn raising_never_lowers_and_reaches_what_is_allowed() {
        let (soft, hard) = rlimit::getrlimit(Resource::NOFILE).unwrap();
        // Asking for less than we have changes nothing.
        let l = raise_fd_limit(soft / 2).unwrap();
        assert_eq!((l.before, l.now), (soft, soft));
        // Asking for up to the hard limit always succeeds.
        let l = raise_fd_limit(hard).unwrap();
        assert!(l.sufficient(), "{l:?}");
        assert_eq!(rlimit::getrlimit(Resource::NOFILE).unwrap().0, l.now);
    }
}
