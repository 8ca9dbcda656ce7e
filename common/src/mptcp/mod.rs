//! Kernel Multipath TCP sockets: listen/connect (with TCP Fast Open), and introspection through
//! `MPTCP_INFO` / `MPTCP_FULL_INFO`, plus per-subflow TCP state from `sock_diag` ([`subflow_diag`]).
//!
//! The protocol is the Linux kernel's. An MPTCP socket is `SOCK_STREAM` with protocol `IPPROTO_MPTCP` (262)
//! and behaves like TCP towards the application, so everything here hands out plain
//! `tokio::net::TcpStream` / `TcpListener`; whether a socket is MPTCP is asked with [`is_mptcp_socket`] and
//! [`info`].
//!
//! What must hold:
//! - Every socket returned is non-blocking, close-on-exec and registered with the current tokio runtime.
//! - [`info`] / [`full_info`] return `Ok(None)` exactly when the connection is not (or no longer) MPTCP.
//!   Kernel semantics (checked on Linux 6.18, `net/mptcp/sockopt.c`): once an MPTCP connection has fallen
//!   back, the kernel forwards every getsockopt to the remaining TCP subflow, and TCP rejects level
//!   `SOL_MPTCP` with `EOPNOTSUPP`; a plain TCP socket (including the socket an MPTCP listener accepts from
//!   a client that did not offer MP_CAPABLE, whose `SO_PROTOCOL` is TCP) answers the same. A socket caught
//!   mid-fallback may still answer with `MPTCP_INFO_FLAG_FALLBACK` set; that also reads as `None`.
//! - TCP Fast Open (see [`connect_with_data`]): the mechanism that works with MPTCP on 6.18 is
//!   `TCP_FASTOPEN_NO_COOKIE` on the socket, then `sendto(MSG_FASTOPEN)` on the unconnected non-blocking
//!   socket; its return value is the number of bytes queued into the SYN. (`TCP_FASTOPEN_CONNECT` + connect +
//!   write works too; `sendto` needs one syscall less and reports the count directly.) TFO sysctl bits are
//!   per network namespace; [`check_tfo_sysctl`] explains what is missing.
//! - A server that accepted a TFO connection must call [`await_tfo_handshake`] before its first write: the
//!   kernel (6.18) accepts it while the initial subflow is in `SYN_RECV`, and bytes written then stay on the
//!   MPTCP socket's queue after the third ACK until something else pushes them (a reply-then-wait exchange
//!   stalls for ever).
//! - Do not enable Fast Open between kernel MPTCP peers on Linux 6.18 (hcpe's `fastopen` stays off): a socket
//!   accepted with data in the SYN ignores the client's receive window for its first ~65 MB. The passive
//!   MPTCP socket is created (`mptcp_sk_clone_init`, via `tcp_fastopen_create_child`) while the subflow's
//!   `snd_wnd` still holds the SYN's window shifted by the client's window scale (64240 << 10), sets
//!   `wnd_end = snd_nxt + snd_wnd` from it, and `wnd_end` never shrinks. With two subflows the client then
//!   drops what lies beyond its window (MPTcpExtNoDSSInWindow, TcpExtBeyondWindow) after the subflows acked
//!   it, and only the MPTCP retransmission timer fills the holes: downloads crawl. No socket option avoids
//!   it (the SYN window and the scale both follow the client's receive buffer and clamp). Reproducer and
//!   counters: `tests/tests/mptcp_tfo_join.rs`. A listener without a TFO queue (`tfo_queue: None`) declines
//!   SYN data, and the client's kernel resends it after the handshake.
//! - Per-subflow backup flags are not part of `MPTCP_FULL_INFO`; [`SubflowInfo::backup`] is `None` and the
//!   path manager's netlink events are the source for it.

mod congestion;
mod socket;
pub mod subflow_diag;
pub mod sys;
mod tfo;

#[cfg(test)]
mod tests;

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::Duration;

pub use congestion::{CongestionControl, StartPhase, restart_congestion_control, set_congestion_control};
pub use socket::{
    ConnectOptions, ListenOptions, await_tfo_handshake, connect_with_data, hold_send_buffer, listen, listen_with,
    push_pending, raise_receive_window, syn_data_acked,
};
pub use tfo::{
    TFO_CLIENT_ENABLE, TFO_CLIENT_NO_COOKIE, TFO_SERVER_COOKIE_NOT_REQUIRED, TFO_SERVER_ENABLE, TfoRole,
    check_tfo_sysctl, check_tfo_value, read_tfo_sysctl,
};

/// `IPPROTO_MPTCP`.
pub const IPPROTO_MPTCP: libc::c_int = libc::IPPROTO_MPTCP;

/// The receive window hcpe's and hag's MPTCP connections offer from their first data on
/// ([`raise_receive_window`]), where the kernel's autotuning would start lower or grow too late: 4 MiB covers
/// 300 Mbit/s at 100 ms. Autotuning grows it further when it sees the need.
pub const RECEIVE_WINDOW: u32 = 4 << 20;

/// The send buffer hcpe's MPTCP connections hold ([`hold_send_buffer`]; the kernel doubles it for its
/// bookkeeping): room for what a fast path delivers while a slow path's bytes are still travelling.
pub const SEND_BUFFER: u32 = 4 << 20;

/// The most an MPTCP connection with [`SEND_BUFFER`] holds that its subflows have not taken yet: the
/// application's writes wait beyond it, so the buffer's memory goes to data in flight.
pub const SEND_UNSENT: u32 = 256 << 10;

/// True when the socket was created as MPTCP (`SO_PROTOCOL == IPPROTO_MPTCP`). An MPTCP listener hands out
/// plain TCP sockets for clients that did not offer MPTCP, so on an accepted socket this already tells a
/// fallback at handshake apart. A connection that falls back later keeps its protocol: use [`info`].
pub fn is_mptcp_socket(fd: &impl AsFd) -> bool {
    matches!(
        socket2::SockRef::from(fd).protocol(),
        Ok(Some(p)) if p == socket2::Protocol::from(IPPROTO_MPTCP)
    )
}

/// Connection-level MPTCP state (`struct mptcp_info`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MptcpInfo {
    /// The local connection token (RFC 8684), the id the path manager and `ss` use for the connection.
    pub token: u32,
    /// Subflows in use, the initial one included (`mptcpi_subflows_total`; on kernels without it,
    /// additional subflows + 1).
    pub subflows: u8,
    /// Additional subflows only (`mptcpi_subflows`), the count the path-manager limit applies to.
    pub extra_subflows: u8,
    /// Subflow limit of the in-kernel path manager.
    pub subflows_max: u8,
    /// Local endpoints in use for additional subflows.
    pub local_addr_used: u8,
    /// ADD_ADDR announcements sent / accepted.
    pub add_addr_signal: u8,
    pub add_addr_accepted: u8,
    /// Raw `mptcpi_flags` (bit 1: remote key received).
    pub flags: u32,
    /// DSS checksums negotiated.
    pub csum_enabled: bool,
    /// Connection-level data sequence numbers.
    pub write_seq: u64,
    pub snd_una: u64,
    pub rcv_nxt: u64,
    /// Connection-level byte counters (Linux 6.5+, 0 on older kernels).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub bytes_acked: u64,
    pub bytes_retrans: u64,
    pub retransmits: u32,
}

impl MptcpInfo {
    fn from_raw(raw: &sys::RawMptcpInfo, len: usize) -> Self {
        let subflows = if len >= sys::MPTCP_INFO_LEN_WITH_SUBFLOWS_TOTAL {
            raw.subflows_total
        } else {
            raw.subflows.saturating_add(1)
        };
        MptcpInfo {
            token: raw.token,
            subflows,
            extra_subflows: raw.subflows,
            subflows_max: raw.subflows_max,
            local_addr_used: raw.local_addr_used,
            add_addr_signal: raw.add_addr_signal,
            add_addr_accepted: raw.add_addr_accepted,
            flags: raw.flags,
            csum_enabled: raw.csum_enabled != 0,
            write_seq: raw.write_seq,
            snd_una: raw.snd_una,
            rcv_nxt: raw.rcv_nxt,
            bytes_sent: raw.bytes_sent,
            bytes_received: raw.bytes_received,
            bytes_acked: raw.bytes_acked,
            bytes_retrans: raw.bytes_retrans,
            retransmits: raw.retransmits,
        }
    }
}

/// True for the errors with which the kernel says "this is not an MPTCP connection (any more)".
fn is_not_mptcp(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::ENOPROTOOPT))
}

/// Reads `MPTCP_INFO`. `Ok(None)` when the connection is plain TCP or fell back (see the module header).
pub fn info(fd: &impl AsFd) -> io::Result<Option<MptcpInfo>> {
    let mut raw = sys::RawMptcpInfo::default();
    match sys::getsockopt_into(fd.as_fd(), sys::SOL_MPTCP, sys::MPTCP_INFO, &mut raw) {
        Ok(_) if raw.flags & sys::MPTCP_INFO_FLAG_FALLBACK != 0 => Ok(None),
        Ok(len) => Ok(Some(MptcpInfo::from_raw(&raw, len))),
        Err(e) if is_not_mptcp(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// One subflow as `MPTCP_FULL_INFO` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubflowInfo {
    /// Kernel subflow id (1 = the initial subflow), stable for the subflow's life.
    pub id: u32,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    /// `tcpi_bytes_acked`: bytes the peer acknowledged on this subflow.
    pub bytes_sent: u64,
    /// `tcpi_bytes_received`.
    pub bytes_received: u64,
    /// `tcpi_rtt` (smoothed RTT).
    pub rtt: Duration,
    /// Kernel TCP state (`tcpi_state`, 1 = established).
    pub tcp_state: u8,
    /// Not exposed by `MPTCP_FULL_INFO`; always `None` here (the path manager's events carry it).
    pub backup: Option<bool>,
}

/// `MPTCP_FULL_INFO`: connection info plus every subflow, read atomically by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullInfo {
    pub info: MptcpInfo,
    pub subflows: Vec<SubflowInfo>,
}

/// Reads `MPTCP_FULL_INFO` (Linux 6.5+). `Ok(None)` when not (or no longer) MPTCP, like [`info`].
pub fn full_info(fd: &impl AsFd) -> io::Result<Option<FullInfo>> {
    let mut capacity = 8;
    loop {
        let raw = match sys::full_info_raw(fd.as_fd(), capacity) {
            Ok(raw) => raw,
            Err(e) if is_not_mptcp(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let total = raw.header.num_subflows as usize;
        if total > capacity && capacity < 256 {
            // Subflows were added between calls; retry with room for all of them.
            capacity = total.min(256);
            continue;
        }
        if raw.header.mptcp_info.flags & sys::MPTCP_INFO_FLAG_FALLBACK != 0 {
            return Ok(None);
        }
        let info = MptcpInfo::from_raw(&raw.header.mptcp_info, raw.mptcp_info_len);
        let subflows = raw
            .subflows
            .iter()
            .map(|(sf, tcp)| SubflowInfo {
                id: sf.id,
                local: sys::sockaddr_from_bytes(&sf.local),
                remote: sys::sockaddr_from_bytes(&sf.remote),
                bytes_sent: tcp.tcpi_bytes_acked,
                bytes_received: tcp.tcpi_bytes_received,
                rtt: Duration::from_micros(u64::from(tcp.tcpi_rtt)),
                tcp_state: tcp.tcpi_state,
                backup: None,
            })
            .collect();
        return Ok(Some(FullInfo { info, subflows }));
    }
}
