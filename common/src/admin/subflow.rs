//! The subflow list of a connection as both admin APIs show it (RFC 6897 SUBFLOWS), from
//! `MPTCP_FULL_INFO` ([`crate::mptcp::full_info`]) on the daemon's MPTCP socket. `local` is always the
//! daemon's own end, `remote` the peer's.

use std::net::SocketAddr;

use serde::Serialize;

use crate::mptcp::{FullInfo, SubflowInfo};

/// One subflow of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = Subflow)]
pub struct SubflowView {
    /// Kernel subflow id (1 = initial subflow).
    pub id: u32,
    /// This daemon's address of the subflow (`address:port`).
    #[schema(value_type = Option<String>)]
    pub local: Option<SocketAddr>,
    /// The peer's address of the subflow (`address:port`).
    #[schema(value_type = Option<String>)]
    pub remote: Option<SocketAddr>,
    /// Bytes the peer acknowledged on this subflow (sent by this daemon).
    pub bytes_sent: u64,
    /// Bytes received on this subflow.
    pub bytes_received: u64,
    /// Smoothed RTT in microseconds.
    pub rtt_us: u64,
    /// Kernel TCP state (1 = established).
    pub tcp_state: u8,
    /// Backup flag; `null` when unknown (`MPTCP_FULL_INFO` does not report it; a daemon may fill it in from
    /// elsewhere).
    pub backup: Option<bool>,
}

impl SubflowView {
    /// The view of one subflow of `MPTCP_FULL_INFO`.
    pub fn of(s: &SubflowInfo) -> Self {
        SubflowView {
            id: s.id,
            local: s.local,
            remote: s.remote,
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
            rtt_us: s.rtt.as_micros() as u64,
            tcp_state: s.tcp_state,
            backup: s.backup,
        }
    }

    /// The views of all subflows of `full` (empty without it: not MPTCP).
    pub fn from_full_info(full: Option<&FullInfo>) -> Vec<Self> {
        full.map(|f| f.subflows.iter().map(SubflowView::of).collect()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn subflow_fields_are_shown_with_rtt_in_microseconds() {
        let s = SubflowInfo {
            id: 2,
            local: Some("192.0.2.1:4000".parse().unwrap()),
            remote: Some("198.51.100.1:4444".parse().unwrap()),
            bytes_sent: 10,
            bytes_received: 20,
            rtt: Duration::from_micros(1500),
            tcp_state: 1,
            backup: None,
        };
        let v = serde_json::to_value(SubflowView::of(&s)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({ "id": 2, "local": "192.0.2.1:4000", "remote": "198.51.100.1:4444",
                "bytes_sent": 10, "bytes_received": 20, "rtt_us": 1500, "tcp_state": 1, "backup": null })
        );
        assert!(SubflowView::from_full_info(None).is_empty());
    }
}
