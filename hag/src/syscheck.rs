//! What `hag --check-system` checks, and what hag checks at every start (refusing to start on a fail): MPTCP on,
//! the in-kernel path manager and its subflow limit (joins from a CPE's second uplink), the Fast Open bits
//! when `limits.tfo_queue` is on, the open-file limit against `limits.max_connections`, the clock (the
//! Auth TLV's timestamps), and (warnings) whether the service, which has no `CAP_NET_ADMIN`, may use the
//! congestion control algorithms of `congestion_control` and (where set) `congestion_control_start`. The checks
//! themselves are `common::syscheck`.

use common::mptcp::{CongestionControl, TfoRole};
use common::syscheck::{self as check, Level, Report, Sysctl};

use crate::config::Config;

/// Runs every check that applies to `config` in the current network namespace.
pub fn run(config: &Config) -> Report {
    let s = Sysctl::default();
    let mut findings = vec![
        check::mptcp_enabled(&s),
        check::path_manager(&s, Level::Warn),
        check::subflow_limit(check::read_subflow_limit()),
    ];
    if config.limits.tfo_queue > 0 {
        findings.push(check::fastopen(&s, TfoRole::Server));
    }
    findings.push(check::fd_limit(config.limits.max_connections as u64, 2, "relays"));
    findings.push(check::clock(&format!(
        "hag refuses Auth TLVs whose timestamp is more than limits.auth_skew ({:?}) off its clock",
        config.limits.auth_skew
    )));
    let cc = config.congestion_control.clone().unwrap_or_default();
    if let Some(name) = cc.name() {
        let otherwise = match config.congestion_control {
            Some(_) => "hag's service does not start",
            None => "hag's service runs the machine's default",
        };
        findings.push(check::congestion_control_allowed(&s, "congestion_control", name, otherwise));
    }
    if let Some(start) = config.congestion_control_start.as_ref().filter(|p| !p.duration.is_zero())
        && CongestionControl::Named(start.algorithm.clone()) != cc
    {
        let otherwise = "hag's service does not start";
        findings.push(check::congestion_control_allowed(&s, "congestion_control_start", &start.algorithm, otherwise));
    }
    Report { findings }
}
