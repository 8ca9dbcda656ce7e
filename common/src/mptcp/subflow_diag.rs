//! The backup flag, TCP state and path counters of each MPTCP subflow, read from the kernel with `sock_diag`
//! (`INET_DIAG` over TCP, with the subflow's ULP info and `tcp_info`), because `MPTCP_FULL_INFO` does not carry
//! the flag and cannot be asked for every connection of a daemon at once.
//!
//! Why `sock_diag` and not the path manager's events (`SUB_ESTABLISHED` / `SUB_PRIORITY` carry the flag too):
//! the diag answer is the kernel's state at the moment of the request, so it needs no long-lived subscriber,
//! cannot drift when the event socket overruns, and also covers the initial subflow (no `SUB_ESTABLISHED` is
//! sent for it) and connections opened before a subscriber started. It costs one dump per service port and
//! family per API request, filtered in the kernel by that port (hcpe: the remote port, hag's service port; hag:
//! its local listening port), which is cheap next to an operator's poll rate.
//!
//! `netlink-packet-sock-diag` builds the request and parses the `inet_diag_msg`; it does not know
//! `INET_DIAG_ULP_INFO`, whose nested MPTCP attributes ([`parse_ulp_info`]) are decoded here (sans-IO).
//! The kernel includes ULP info only for a requester with `CAP_NET_ADMIN`, which both daemons have; without it
//! the flags are simply absent and the APIs show `backup: null`.
//!
//! Flag meaning (`net/mptcp/diag.c`): `BKUP_LOC` = this side asked for backup (`request_bkup`, set by a backup
//! endpoint or an MP_PRIO we sent), `BKUP_REM` = the peer marked the subflow backup (`backup`). The sender
//! treats a subflow as backup when either is set, so [`SubflowDiag::backup`] is their union.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlaBuffer};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags, nlas::Nla};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_SOCK_DIAG};

/// `INET_DIAG_ULP_INFO` (after `INET_DIAG_MD5SIG` = 18 in `enum inet_diag_attr`).
const INET_DIAG_ULP_INFO: u16 = 19;
/// `enum inet_ulp_info`.
const INET_ULP_INFO_NAME: u16 = 1;
const INET_ULP_INFO_MPTCP: u16 = 3;
/// `enum mptcp_subflow_attrs` (uapi `linux/mptcp.h`).
const MPTCP_SUBFLOW_ATTR_TOKEN_REM: u16 = 1;
const MPTCP_SUBFLOW_ATTR_TOKEN_LOC: u16 = 2;
const MPTCP_SUBFLOW_ATTR_FLAGS: u16 = 8;
const MPTCP_SUBFLOW_ATTR_ID_REM: u16 = 9;
const MPTCP_SUBFLOW_ATTR_ID_LOC: u16 = 10;
/// `MPTCP_SUBFLOW_FLAG_*`.
const FLAG_BKUP_REM: u32 = 1 << 4;
const FLAG_BKUP_LOC: u32 = 1 << 5;

/// What `sock_diag` tells about one subflow socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubflowDiag {
    /// Local token of the MPTCP connection the subflow belongs to.
    pub token_local: Option<u32>,
    /// The peer's token.
    pub token_remote: Option<u32>,
    /// Local / remote address ids (0 = the initial subflow's address).
    pub id_local: Option<u8>,
    pub id_remote: Option<u8>,
    /// Raw `MPTCP_SUBFLOW_FLAG_*` bits.
    pub flags: u32,
    /// The subflow's TCP state and path counters (`INET_DIAG_INFO`), when the kernel sent them.
    pub tcp: Option<SubflowTcp>,
}

/// The part of a subflow's `tcp_info` that tells whether its path works: what the uplink manager reads when
/// the uplink probes go unanswered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubflowTcp {
    /// TCP state (`TCP_ESTABLISHED` = 1, `TCP_SYN_SENT` = 2, ...).
    pub state: u8,
    /// Smoothed RTT, microseconds.
    pub rtt_us: u32,
    /// Milliseconds since data last arrived on the subflow.
    pub last_data_recv_ms: u32,
    /// Milliseconds since an ACK last arrived.
    pub last_ack_recv_ms: u32,
    /// Segments sent and not yet acknowledged.
    pub unacked: u32,
    /// Retransmissions since the last ACK (of the SYN, in `SYN_SENT`).
    pub retransmits: u8,
    /// Times the retransmission timer backed off since the last ACK.
    pub backoff: u8,
}

impl SubflowTcp {
    /// `TCP_ESTABLISHED`.
    pub const ESTABLISHED: u8 = 1;
    /// `TCP_SYN_SENT`.
    pub const SYN_SENT: u8 = 2;

    fn from_info(info: &netlink_packet_sock_diag::inet::nlas::TcpInfo) -> SubflowTcp {
        SubflowTcp {
            state: info.state,
            rtt_us: info.rtt,
            last_data_recv_ms: info.last_data_recv,
            last_ack_recv_ms: info.last_ack_recv,
            unacked: info.unacked,
            retransmits: info.retransmits,
            backoff: info.backoff,
        }
    }
}

impl SubflowDiag {
    /// This side asked for backup (backup endpoint, or an MP_PRIO we sent).
    pub fn backup_local(&self) -> bool {
        self.flags & FLAG_BKUP_LOC != 0
    }

    /// The peer marked the subflow backup.
    pub fn backup_remote(&self) -> bool {
        self.flags & FLAG_BKUP_REM != 0
    }

    /// The subflow carries data only when no non-backup subflow can.
    pub fn backup(&self) -> bool {
        self.backup_local() || self.backup_remote()
    }
}

/// Decodes the value of an `INET_DIAG_ULP_INFO` attribute. `None` when it is not MPTCP's (another ULP, e.g.
/// TLS) or malformed.
pub fn parse_ulp_info(value: &[u8]) -> Option<SubflowDiag> {
    let mut mptcp = None;
    let mut name_ok = false;
    for nla in nlas(value) {
        match nla.kind() & 0x3fff {
            INET_ULP_INFO_NAME => name_ok = nla.value().split(|b| *b == 0).next() == Some(b"mptcp"),
            INET_ULP_INFO_MPTCP => mptcp = Some(nla.value().to_vec()),
            _ => {}
        }
    }
    let inner = mptcp.filter(|_| name_ok)?;
    let mut out = SubflowDiag::default();
    for nla in nlas(&inner) {
        let v = nla.value();
        match nla.kind() & 0x3fff {
            MPTCP_SUBFLOW_ATTR_TOKEN_REM => out.token_remote = u32_ne(v),
            MPTCP_SUBFLOW_ATTR_TOKEN_LOC => out.token_local = u32_ne(v),
            MPTCP_SUBFLOW_ATTR_FLAGS => out.flags = u32_ne(v)?,
            MPTCP_SUBFLOW_ATTR_ID_REM => out.id_remote = v.first().copied(),
            MPTCP_SUBFLOW_ATTR_ID_LOC => out.id_local = v.first().copied(),
            _ => {}
        }
    }
    Some(out)
}

fn u32_ne(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

/// Iterates the well-formed attributes of `buf`, stopping at the first malformed one.
fn nlas(buf: &[u8]) -> impl Iterator<Item = NlaBuffer<&[u8]>> {
    netlink_packet_core::NlasIterator::new(buf).map_while(Result::ok)
}

/// Which end of a subflow a port filter applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The local port (hag: its listening port).
    Local,
    /// The remote port (hcpe: hag's service port).
    Remote,
}

/// Subflow diagnostics by (local, remote) address, as [`by_port`] returns them.
pub type DiagMap = HashMap<(SocketAddr, SocketAddr), SubflowDiag>;

/// Subflow sockets (TCP sockets carrying the MPTCP ULP) whose remote port is one of `remote_ports`, by
/// (local, remote) address. Blocking (one netlink round trip per port and family); call it off the runtime.
pub fn by_remote_port(remote_ports: &[u16]) -> io::Result<DiagMap> {
    by_port(Side::Remote, remote_ports)
}

/// Subflow sockets whose `side` port is one of `ports`, by (local, remote) address. Blocking.
pub fn by_port(side: Side, ports: &[u16]) -> io::Result<DiagMap> {
    let mut out = HashMap::new();
    let mut ports = ports.to_vec();
    ports.sort_unstable();
    ports.dedup();
    if ports.is_empty() {
        return Ok(out);
    }
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NlAddr::new(0, 0))?;
    for port in ports {
        for family in [AF_INET, AF_INET6] {
            dump(&socket, family, side, port, &mut out)?;
        }
    }
    Ok(out)
}

fn dump(socket: &Socket, family: u8, side: Side, port: u16, out: &mut DiagMap) -> io::Result<()> {
    let mut socket_id = if family == AF_INET { SocketId::new_v4() } else { SocketId::new_v6() };
    // The kernel filters a TCP dump by source and destination port when they are set (`inet_diag_dump_icsk`).
    match side {
        Side::Local => socket_id.source_port = port,
        Side::Remote => socket_id.destination_port = port,
    }
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            // ULP info comes with INFO (`tcp_diag_get_aux`).
            extensions: ExtensionFlags::INFO,
            states: StateFlags::ESTABLISHED
                | StateFlags::SYN_SENT
                | StateFlags::FIN_WAIT1
                | StateFlags::FIN_WAIT2
                | StateFlags::CLOSE_WAIT
                | StateFlags::LAST_ACK
                | StateFlags::CLOSING,
            socket_id,
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut rx = vec![0u8; 64 * 1024];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        let mut off = 0;
        while off < n {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&rx[off..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let id = &r.header.socket_id;
                    let local = SocketAddr::new(id.source_address, id.source_port);
                    let remote = SocketAddr::new(id.destination_address, id.destination_port);
                    let (mut diag, mut tcp) = (None, None);
                    for nla in &r.nlas {
                        match nla {
                            Nla::Other(attr) => {
                                use netlink_packet_core::Nla as _;
                                if attr.kind() & 0x3fff == INET_DIAG_ULP_INFO {
                                    let mut value = vec![0u8; attr.value_len()];
                                    attr.emit_value(&mut value);
                                    diag = parse_ulp_info(&value);
                                }
                            }
                            Nla::TcpInfo(info) => tcp = Some(SubflowTcp::from_info(info)),
                            _ => {}
                        }
                    }
                    if let Some(d) = diag {
                        out.insert((local, remote), SubflowDiag { tcp, ..d });
                    }
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return Err(e.to_io());
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += (len + 3) & !3;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(value);
        v.resize((v.len() + 3) & !3, 0);
        v
    }

    /// The attribute as `subflow_get_info` (net/mptcp/diag.c) writes it for a joined backup subflow.
    fn ulp(name: &[u8], flags: u32) -> Vec<u8> {
        let inner = [
            nla(MPTCP_SUBFLOW_ATTR_TOKEN_REM, &0x1111_2222u32.to_ne_bytes()),
            nla(MPTCP_SUBFLOW_ATTR_TOKEN_LOC, &0xaabb_ccddu32.to_ne_bytes()),
            nla(3, &7u32.to_ne_bytes()),
            nla(4, &9u64.to_ne_bytes()),
            nla(MPTCP_SUBFLOW_ATTR_FLAGS, &flags.to_ne_bytes()),
            nla(MPTCP_SUBFLOW_ATTR_ID_REM, &[0]),
            nla(MPTCP_SUBFLOW_ATTR_ID_LOC, &[2]),
        ]
        .concat();
        [nla(INET_ULP_INFO_NAME, name), nla(INET_ULP_INFO_MPTCP | 0x8000, &inner)].concat()
    }

    #[test]
    fn mptcp_ulp_info_gives_tokens_ids_and_backup() {
        // JOIN_LOC | BKUP_LOC | FULLY_ESTABLISHED | CONNECTED
        let d = parse_ulp_info(&ulp(b"mptcp\0", (1 << 3) | (1 << 5) | (1 << 6) | (1 << 7))).unwrap();
        assert_eq!(d.token_local, Some(0xaabb_ccdd));
        assert_eq!(d.token_remote, Some(0x1111_2222));
        assert_eq!((d.id_local, d.id_remote), (Some(2), Some(0)));
        assert!(d.backup_local() && !d.backup_remote() && d.backup());

        let d = parse_ulp_info(&ulp(b"mptcp\0", 1 << 4)).unwrap();
        assert!(d.backup_remote() && d.backup(), "the peer's MP_PRIO counts too");
        let d = parse_ulp_info(&ulp(b"mptcp\0", (1 << 0) | (1 << 6))).unwrap();
        assert!(!d.backup());
    }

    #[test]
    fn other_ulps_and_garbage_are_not_subflows() {
        assert_eq!(parse_ulp_info(&ulp(b"tls\0", 1 << 5)), None);
        assert_eq!(parse_ulp_info(&[]), None);
        assert_eq!(parse_ulp_info(&[0xff; 3]), None);
        // Truncated flags value: not a usable answer.
        let bad = [nla(INET_ULP_INFO_NAME, b"mptcp\0"), nla(INET_ULP_INFO_MPTCP, &nla(MPTCP_SUBFLOW_ATTR_FLAGS, &[1]))]
            .concat();
        assert_eq!(parse_ulp_info(&bad), None);
    }
}
