//! Process-wide setup both daemons do at start: logging ([`init_tracing`]), the signals that stop them
//! ([`shutdown_signal`]), the open-file limit ([`ensure_fd_limit`]) and systemd's readiness protocol
//! ([`notify_ready`]).
//!
//! The open-file limit: a relayed connection costs two descriptors (hcpe: the LAN socket and the MPTCP
//! socket; hag: the MPTCP socket and the destination socket), so the distribution default of 1024 (or a
//! container's 20,000) caps a daemon far below its configured connection limit. [`raise_fd_limit`] lifts the
//! soft limit to what the daemon needs, and the hard limit too when the process may (root), never lowering
//! either.

use std::future::Future;
use std::sync::Arc;

use rlimit::Resource;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, reload};

/// Changes the log filter of a running daemon (a config reload's `log_level`); `Err` says why not.
pub type LogLevelSetter = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Logs to stderr (colours only on a terminal) with `level` as the filter, or `RUST_LOG` when set, and returns
/// the setter a reload uses to change the filter (refused while `RUST_LOG` is set: the environment wins, as at
/// start). Call once, before anything logs.
pub fn init_tracing(level: &str) -> LogLevelSetter {
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_set = from_env.is_some();
    let (filter, handle) = reload::Layer::new(from_env.unwrap_or_else(|| EnvFilter::new(level)));
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    Arc::new(move |level: &str| {
        if env_set {
            return Err("RUST_LOG is set and overrides log_level".to_owned());
        }
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}

/// Installs the SIGTERM and SIGINT handlers now (so a signal during start-up is not lost: the daemon still
/// stops and cleans up) and returns the future that resolves, with a log line, at the first of them. Must be
/// called inside a tokio runtime.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
    })
}

/// Tells systemd (a `Type=notify` unit) the daemon is ready: listeners bound, admin API up. Does nothing when
/// not started by systemd (`NOTIFY_SOCKET` unset). The `sd-notify` crate speaks the protocol.
pub fn notify_ready() {
    notify(&[sd_notify::NotifyState::Ready]);
}

/// Tells systemd a reload (SIGHUP) has begun; [`notify_ready`] ends it.
pub fn notify_reloading() {
    notify(&[sd_notify::NotifyState::Reloading]);
}

/// Tells systemd the daemon is stopping (draining its connections).
pub fn notify_stopping() {
    notify(&[sd_notify::NotifyState::Stopping]);
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(e) = sd_notify::notify(false, state)
    {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// [`raise_fd_limit`] for `connections` relays of `fds_per_connection` descriptors each, with a warning
/// naming the fix when the limit then holds fewer than `at_least` connections.
pub fn ensure_fd_limit(connections: u64, fds_per_connection: u64, at_least: u64) {
    match raise_fd_limit(fds_for(connections, fds_per_connection)) {
        Ok(l) if l.connections(fds_per_connection) < at_least => tracing::warn!(
            limit = l.now,
            holds = l.connections(fds_per_connection),
            wanted = connections,
            "the open-file limit holds fewer connections than wanted; raise LimitNOFILE (systemd) or ulimit -n"
        ),
        Ok(l) => tracing::debug!(
            before = l.before,
            now = l.now,
            holds = l.connections(fds_per_connection),
            "open-file limit"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
}

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
