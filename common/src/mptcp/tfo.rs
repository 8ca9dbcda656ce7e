//! TCP Fast Open sysctl check. `net.ipv4.tcp_fastopen` is per network namespace, so a daemon checks it in
//! the namespace it runs in and tells the operator the exact value to set.
//!
//! Bits (Documentation/networking/ip-sysctl.rst): 0x1 client enable, 0x2 server enable, 0x4 client sends
//! data in the SYN without a cookie, 0x200 server accepts data in the SYN without a cookie.
//! Our client sets `TCP_FASTOPEN_NO_COOKIE` per socket (works on MPTCP sockets, verified on 6.18), so it
//! needs only 0x1; 0x4 is the namespace-wide equivalent and is accepted but not required.

use std::fmt;

/// Client: TFO enabled for `sendto(MSG_FASTOPEN)` / `TCP_FASTOPEN_CONNECT`.
pub const TFO_CLIENT_ENABLE: u32 = 0x1;
/// Server: listeners with a `TCP_FASTOPEN` queue accept TFO.
pub const TFO_SERVER_ENABLE: u32 = 0x2;
/// Client: data in the SYN without a cookie, namespace-wide (we set it per socket instead).
pub const TFO_CLIENT_NO_COOKIE: u32 = 0x4;
/// Server: accept data in the SYN from clients that present no cookie.
pub const TFO_SERVER_COOKIE_NOT_REQUIRED: u32 = 0x200;

const SYSCTL_PATH: &str = "/proc/sys/net/ipv4/tcp_fastopen";

/// Which end of Fast Open this process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TfoRole {
    /// hcpe: sends the Convert message in the SYN.
    Client,
    /// hag: accepts data in the SYN without a cookie round trip.
    Server,
}

impl fmt::Display for TfoRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TfoRole::Client => "client",
            TfoRole::Server => "server",
        })
    }
}

fn required_bits(role: TfoRole) -> &'static [(u32, &'static str)] {
    match role {
        TfoRole::Client => &[(TFO_CLIENT_ENABLE, "0x1 (client enable)")],
        TfoRole::Server => &[
            (TFO_SERVER_ENABLE, "0x2 (server enable)"),
            (TFO_SERVER_COOKIE_NOT_REQUIRED, "0x200 (server accepts SYN data without cookie)"),
        ],
    }
}

/// Reads `net.ipv4.tcp_fastopen` of the calling thread's network namespace.
pub fn read_tfo_sysctl() -> Result<u32, String> {
    let text = std::fs::read_to_string(SYSCTL_PATH).map_err(|e| format!("cannot read {SYSCTL_PATH}: {e}"))?;
    let text = text.trim();
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("{SYSCTL_PATH} holds {text:?}, not a number"))
}

/// Pure check of a sysctl value for a role; the error names each missing bit and the value to set.
pub fn check_tfo_value(role: TfoRole, value: u32) -> Result<(), String> {
    let missing: Vec<_> = required_bits(role).iter().filter(|(bit, _)| value & bit == 0).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|(_, name)| *name).collect();
    let wanted = missing.iter().fold(value, |v, (bit, _)| v | bit);
    Err(format!(
        "TCP Fast Open {role}: net.ipv4.tcp_fastopen = {value} (0x{value:x}) lacks bit {}; \
         set net.ipv4.tcp_fastopen={wanted} (0x{wanted:x}) in this network namespace (sysctl -w)",
        names.join(" and ")
    ))
}

/// Checks `net.ipv4.tcp_fastopen` in the current network namespace for `role`.
pub fn check_tfo_sysctl(role: TfoRole) -> Result<(), String> {
    check_tfo_value(role, read_tfo_sysctl()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_needs_only_the_enable_bit() {
        assert_eq!(check_tfo_value(TfoRole::Client, 0x1), Ok(()));
        assert_eq!(check_tfo_value(TfoRole::Client, 0x5), Ok(()));
        let err = check_tfo_value(TfoRole::Client, 0x2).unwrap_err();
        assert!(err.contains("lacks bit 0x1 (client enable)"), "{err}");
        assert!(err.contains("tcp_fastopen=3 (0x3)"), "{err}");
    }

    #[test]
    fn server_needs_enable_and_cookie_not_required() {
        assert_eq!(check_tfo_value(TfoRole::Server, 0x203), Ok(()));
        let err = check_tfo_value(TfoRole::Server, 0x1).unwrap_err();
        assert!(err.contains("0x2 (server enable) and 0x200"), "{err}");
        assert!(err.contains("tcp_fastopen=515 (0x203)"), "{err}");
        let err = check_tfo_value(TfoRole::Server, 0x3).unwrap_err();
        assert!(!err.contains("0x2 (server enable)"), "{err}");
        assert!(err.contains("lacks bit 0x200"), "{err}");
    }
}
