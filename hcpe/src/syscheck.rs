//! What `hcpe --check-system` checks, and what hcpe checks at every start (refusing to start on a fail):
//! MPTCP on with the in-kernel path manager (hcpe adds its uplinks as its endpoints), the TUN device, IP
//! forwarding (LAN packets are routed into the TUN device), reverse-path filtering on each uplink, `nft`
//! when `block_quic` is on, the Fast Open bits when `hag.fastopen` is on, the open-file limit and the clock
//! (hag accepts the Auth TLV only within its skew). The checks themselves are `common::syscheck`.

use common::mptcp::TfoRole;
use common::syscheck::{self as check, Level, Report, Sysctl};

use crate::config::Config;

/// LAN connections hcpe makes room for in the open-file limit (it has no connection limit of its own),
/// and the fewest it should hold: the numbers `main` raises the limit to.
pub const FD_CONNECTIONS: (u64, u64) = (32_768, 4_096);

/// Runs every check that applies to `config` in the current network namespace.
pub fn run(config: &Config) -> Report {
    let s = Sysctl::default();
    let mut findings = vec![check::mptcp_enabled(&s), check::path_manager(&s, Level::Fail), check::tun_device()];
    findings.extend(check::ip_forward(&s, config.tun.ipv6.is_some()));
    for uplink in &config.uplinks {
        findings.push(check::rp_filter(&s, &uplink.interface));
    }
    if config.block_quic {
        findings.push(check::nft_tool());
    }
    if config.fastopen {
        findings.push(check::fastopen(&s, TfoRole::Client));
    }
    findings.push(check::fd_limit(FD_CONNECTIONS.1, 2, "LAN connections"));
    findings.push(check::clock(
        "if it is off by more than hag's skew (30 s by default), the first request is refused and hcpe signs \
         with the time hag tells it (one round trip lost); other timestamps (logs, volume periods) stay wrong",
    ));
    Report { findings }
}
