//! The converter's side toward the destination (RFC 8803 §5.2.5): which destinations a Connect TLV may name
//! at all, which of its TCP options this host can honour and how, the Supported TCP Extensions list that
//! answers an Info TLV, and the connect itself, with the ICMP error that ended it when there was one.
//!
//! The decisions ([`Destination::check`], [`Plan::from_options`], [`Failure::reply`]) are sans-IO and unit
//! tested; [`connect`] and [`KernelTcp::read`] do the IO.
//!
//! Invariants:
//! - A Connect TLV option is honoured only when the SYN hag sends will carry it as asked: listed without a
//!   value, the kernel generates its own (window scale, SACK permitted, timestamps: only when the sysctl
//!   enables them; MPTCP: hag connects over MPTCP); with a value, only where a socket option sets exactly
//!   that value (MSS through `TCP_MAXSEG`, window scale through `TCP_WINDOW_CLAMP`). Everything else is
//!   answered with Unsupported TCP Option (33) listing the kinds, before anything is sent to the destination.
//! - The Supported TCP Extensions list names exactly the kinds a Connect TLV may list without a value, and
//!   never 0, 1 or 2.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use common::convert::{ErrorCode, Message};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

/// TCP option kinds (IANA "TCP Option Kind Numbers").
mod kind {
    pub const MSS: u8 = 2;
    pub const WINDOW_SCALE: u8 = 3;
    pub const SACK_PERMITTED: u8 = 4;
    pub const TIMESTAMPS: u8 = 8;
    pub const MPTCP: u8 = 30;
}

/// The largest window scale shift TCP allows (RFC 7323 §2.3).
const MAX_WINDOW_SCALE: u8 = 14;
/// The smallest MSS the kernel accepts through `TCP_MAXSEG` (`TCP_MIN_MSS`).
const MIN_MSS: u16 = 88;

/// The host's TCP settings that decide which options a connecting socket sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelTcp {
    pub window_scaling: bool,
    pub sack: bool,
    pub timestamps: bool,
    pub mptcp: bool,
    /// Whether an MPTCP socket takes `TCP_WINDOW_CLAMP` (Linux 6.18 refuses it with ENOPROTOOPT).
    pub mptcp_window_clamp: bool,
    /// The largest receive space the kernel sizes the window scale from: max(`tcp_rmem[2]`, `rmem_max`).
    pub max_receive_space: u64,
}

impl KernelTcp {
    /// Reads the sysctls of the network namespace hag runs in; a value that cannot be read counts as off.
    pub fn read() -> KernelTcp {
        let value = |path: &str| std::fs::read_to_string(format!("/proc/sys/net/{path}")).unwrap_or_default();
        let on = |path: &str| value(path).trim().parse::<u64>().is_ok_and(|v| v > 0);
        let rmem_max = value("ipv4/tcp_rmem").split_whitespace().nth(2).and_then(|v| v.parse().ok()).unwrap_or(0);
        let core_max = value("core/rmem_max").trim().parse().unwrap_or(0);
        KernelTcp {
            window_scaling: on("ipv4/tcp_window_scaling"),
            sack: on("ipv4/tcp_sack"),
            timestamps: on("ipv4/tcp_timestamps"),
            mptcp: on("mptcp/enabled"),
            mptcp_window_clamp: Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::MPTCP))
                .is_ok_and(|s| setsockopt_int(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP, 65535).is_ok()),
            max_receive_space: u64::max(rmem_max, core_max),
        }
    }

    /// The kinds listed in the Supported TCP Extensions TLV that answers an Info TLV.
    pub fn supported_kinds(&self) -> Vec<u8> {
        [
            (self.window_scaling, kind::WINDOW_SCALE),
            (self.sack, kind::SACK_PERMITTED),
            (self.timestamps, kind::TIMESTAMPS),
            (self.mptcp, kind::MPTCP),
        ]
        .into_iter()
        .filter_map(|(on, kind)| on.then_some(kind))
        .collect()
    }

    /// Whether a window scale of `shift` is what the kernel will send once the window is clamped for it: the
    /// shift is `ilog2` of the smaller of the clamp and the largest receive space, less 15.
    fn reaches_window_scale(&self, shift: u8) -> bool {
        let space = self.max_receive_space.min(window_clamp(shift).into()).max(1);
        self.window_scaling && shift <= MAX_WINDOW_SCALE && space.ilog2().saturating_sub(15) == u32::from(shift)
    }
}

/// The window clamp whose size makes the kernel choose `shift` (`ilog2(clamp) - 15`, see the kernel's
/// `tcp_select_initial_window`), and the largest window that shift can announce.
fn window_clamp(shift: u8) -> u32 {
    (1u32 << (u32::from(shift) + 16)) - 1
}

/// Why a Connect TLV's destination is refused before the policy is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadDestination {
    #[error("a loopback address")]
    Loopback,
    #[error("a multicast address")]
    Multicast,
    #[error("the broadcast address")]
    Broadcast,
}

/// The address classes RFC 8803 §5.2.5 forbids in a Connect TLV and answers with Malformed Message (1).
/// Judged on the address as the TLV carries it (an IPv4-mapped address as its IPv4 address); every other
/// refusal of a destination is the policy's (Not Authorized, 32).
pub struct Destination;

impl Destination {
    pub fn check(ip: IpAddr) -> Result<(), BadDestination> {
        let ip = ip.to_canonical();
        if ip.is_loopback() {
            Err(BadDestination::Loopback)
        } else if ip.is_multicast() {
            Err(BadDestination::Multicast)
        } else if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
            Err(BadDestination::Broadcast)
        } else {
            Ok(())
        }
    }
}

/// How to open the connection to the destination so that its SYN carries what the Connect TLV asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// `TCP_MAXSEG`: the MSS option's value.
    pub mss: Option<u16>,
    /// `TCP_WINDOW_CLAMP`, which sets the window scale shift the SYN announces.
    pub window_clamp: Option<u32>,
    /// Connect over MPTCP (the kernel adds MP_CAPABLE, and falls back to TCP if the server has no MPTCP).
    pub mptcp: bool,
}

impl Plan {
    /// The plan for a Connect TLV's options (kind/length blocks without padding, as the codec gives them),
    /// or the kinds that cannot be honoured, each once, in the order they came.
    pub fn from_options(options: &[u8], kernel: &KernelTcp) -> Result<Plan, Vec<u8>> {
        let mut plan = Plan::default();
        let mut unsupported = Vec::new();
        let mut rest = options;
        // The codec checked the layout: kind >= 2, length >= 2, blocks exactly fill the field.
        while let [option_kind, len, ..] = *rest {
            let (option, tail) = rest.split_at(usize::from(len).min(rest.len()));
            rest = tail;
            let value = &option[2..];
            let honoured = match (option_kind, value) {
                (kind::MSS, []) => true,
                (kind::MSS, [hi, lo]) => {
                    let mss = u16::from_be_bytes([*hi, *lo]);
                    plan.mss = Some(mss);
                    mss >= MIN_MSS
                }
                (kind::WINDOW_SCALE, []) => kernel.window_scaling,
                (kind::WINDOW_SCALE, [shift]) => {
                    plan.window_clamp = Some(window_clamp((*shift).min(MAX_WINDOW_SCALE)));
                    kernel.reaches_window_scale(*shift)
                }
                (kind::SACK_PERMITTED, []) => kernel.sack,
                (kind::TIMESTAMPS, []) => kernel.timestamps,
                (kind::MPTCP, []) => {
                    plan.mptcp = true;
                    kernel.mptcp
                }
                _ => false,
            };
            if !honoured && !unsupported.contains(&option_kind) {
                unsupported.push(option_kind);
            }
        }
        if plan.mptcp && plan.window_clamp.is_some() && !kernel.mptcp_window_clamp {
            unsupported.push(kind::WINDOW_SCALE);
        }
        if unsupported.is_empty() { Ok(plan) } else { Err(unsupported) }
    }
}

/// An ICMP error the kernel queued on the socket while it connected (`IP_RECVERR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icmp {
    pub v6: bool,
    pub kind: u8,
    pub code: u8,
}

impl Icmp {
    fn is_destination_unreachable(self) -> bool {
        // ICMP type 3; ICMPv6 type 1.
        self.kind == if self.v6 { 1 } else { 3 }
    }
}

/// Why the connection to the destination failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{error}{}", icmp_suffix(.icmp))]
    Io { error: io::Error, icmp: Option<Icmp> },
    #[error("timed out after {after:?}{}", icmp_suffix(.icmp))]
    Timeout { after: Duration, icmp: Option<Icmp> },
}

fn icmp_suffix(icmp: &Option<Icmp>) -> String {
    icmp.map(|i| format!(" (ICMP{} type {} code {})", if i.v6 { "v6" } else { "" }, i.kind, i.code)).unwrap_or_default()
}

impl Failure {
    /// The Error TLV for the client (RFC 8803 §5.2.8): an ICMP destination unreachable (port unreachable
    /// included) is Destination Unreachable (97) with the ICMP code; a reset from the destination is
    /// Connection Reset (96); anything local or unexplained (no route, no source address, a timeout, any
    /// other ICMP message) is the converter's Network Failure (65).
    pub fn reply(&self) -> Message {
        let (icmp, refused) = match self {
            Failure::Io { error, icmp } => (*icmp, error.kind() == io::ErrorKind::ConnectionRefused),
            Failure::Timeout { icmp, .. } => (*icmp, false),
        };
        match icmp {
            Some(i) if i.is_destination_unreachable() => Message::unreachable_reply(i.code),
            Some(_) => Message::error_reply(ErrorCode::NetworkFailure),
            None if refused => Message::error_reply(ErrorCode::ConnectionReset),
            None => Message::error_reply(ErrorCode::NetworkFailure),
        }
    }
}

/// Connects to `dst` as `plan` says within `timeout`, with `TCP_NODELAY` set.
pub async fn connect(dst: SocketAddr, plan: &Plan, timeout: Duration) -> Result<TcpStream, Failure> {
    let setup = || -> io::Result<(Socket, Socket)> {
        let protocol = if plan.mptcp { Protocol::MPTCP } else { Protocol::TCP };
        let socket = Socket::new(Domain::for_address(dst), Type::STREAM.nonblocking(), Some(protocol))?;
        if let Some(mss) = plan.mss {
            socket.set_tcp_mss(u32::from(mss))?;
        }
        if let Some(clamp) = plan.window_clamp {
            setsockopt_int(socket.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP, clamp as libc::c_int)?;
        }
        // Best effort: an MPTCP socket refuses it (EOPNOTSUPP on Linux 6.18), and then no ICMP code is known.
        let _ = set_recverr(socket.as_raw_fd(), dst, true);
        socket.set_tcp_nodelay(true)?;
        // A second handle on the same socket: the connect future owns and drops the first when it fails,
        // and the ICMP error is read from the socket after that.
        let errors = socket.try_clone()?;
        Ok((socket, errors))
    };
    let (socket, errors) = setup().map_err(|error| Failure::Io { error, icmp: None })?;
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    match tokio::time::timeout(timeout, socket.connect(dst)).await {
        Ok(Ok(stream)) => {
            // Connected: with IP_RECVERR on, TCP would turn every later ICMP error (a route flapping for a
            // moment) into a hard error of the relay; without it such errors stay soft, as on any socket.
            let _ = set_recverr(stream.as_raw_fd(), dst, false);
            Ok(stream)
        }
        Ok(Err(error)) => Err(Failure::Io { error, icmp: queued_icmp(errors.as_raw_fd()) }),
        Err(_) => Err(Failure::Timeout { after: timeout, icmp: queued_icmp(errors.as_raw_fd()) }),
    }
}

fn set_recverr(fd: RawFd, dst: SocketAddr, on: bool) -> io::Result<()> {
    let (level, name) =
        if dst.is_ipv4() { (libc::SOL_IP, libc::IP_RECVERR) } else { (libc::SOL_IPV6, libc::IPV6_RECVERR) };
    setsockopt_int(fd, level, name, on.into())
}

fn setsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` outlives the call and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(fd, level, name, (&raw const value).cast(), size_of::<libc::c_int>() as libc::socklen_t)
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// The most recent ICMP error on the socket's error queue. By hand: no maintained crate reads
/// `MSG_ERRQUEUE` control messages (`struct sock_extended_err`) for a TCP socket.
fn queued_icmp(fd: RawFd) -> Option<Icmp> {
    let mut last = None;
    for _ in 0..8 {
        let mut data = [0u8; 64];
        let mut control = [0u64; 64];
        let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
        // SAFETY: all-zero is a valid msghdr; the pointers set below stay valid for the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 64]>();
        // SAFETY: `msg` describes buffers that live until the call returns.
        if unsafe { libc::recvmsg(fd, &raw mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) } < 0 {
            break;
        }
        // SAFETY: the kernel filled `msg_controllen` bytes of `control`; CMSG_* walk within them.
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&raw const msg) };
        while !cmsg.is_null() {
            // SAFETY: `cmsg` points at a header inside `control` (CMSG_FIRSTHDR/NXTHDR checked the bounds).
            let header = unsafe { &*cmsg };
            let ours = matches!(
                (header.cmsg_level, header.cmsg_type),
                (libc::SOL_IP, libc::IP_RECVERR) | (libc::SOL_IPV6, libc::IPV6_RECVERR)
            );
            if ours
                && header.cmsg_len as usize
                    >= unsafe { libc::CMSG_LEN(size_of::<libc::sock_extended_err>() as u32) } as usize
            {
                // SAFETY: the length check above; the data may be unaligned, so read it unaligned.
                let ee: libc::sock_extended_err =
                    unsafe { libc::CMSG_DATA(cmsg).cast::<libc::sock_extended_err>().read_unaligned() };
                match ee.ee_origin {
                    libc::SO_EE_ORIGIN_ICMP => last = Some(Icmp { v6: false, kind: ee.ee_type, code: ee.ee_code }),
                    libc::SO_EE_ORIGIN_ICMP6 => last = Some(Icmp { v6: true, kind: ee.ee_type, code: ee.ee_code }),
                    _ => {}
                }
            }
            // SAFETY: as above.
            cmsg = unsafe { libc::CMSG_NXTHDR(&raw const msg, cmsg) };
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> KernelTcp {
        KernelTcp {
            window_scaling: true,
            sack: true,
            timestamps: true,
            mptcp: true,
            mptcp_window_clamp: false,
            max_receive_space: 6 << 20,
        }
    }

    #[test]
    fn supported_kinds_follow_the_sysctls_and_never_list_the_base_options() {
        assert_eq!(kernel().supported_kinds(), [3, 4, 8, 30]);
        let bare = KernelTcp { window_scaling: false, sack: false, timestamps: true, mptcp: false, ..kernel() };
        assert_eq!(bare.supported_kinds(), [8]);
    }

    #[test]
    fn options_without_a_value_are_honoured_when_the_kernel_sends_them() {
        let plan = Plan::from_options(&[2, 2, 3, 2, 4, 2, 8, 2, 30, 2], &kernel()).unwrap();
        assert_eq!(plan, Plan { mptcp: true, ..Plan::default() });
        let no_sack = KernelTcp { sack: false, ..kernel() };
        assert_eq!(Plan::from_options(&[4, 2, 8, 2], &no_sack), Err(vec![4]));
        assert_eq!(Plan::from_options(&[], &kernel()), Ok(Plan::default()));
    }

    #[test]
    fn values_are_honoured_only_where_a_socket_option_sets_them_exactly() {
        assert_eq!(Plan::from_options(&[2, 4, 0x05, 0x00], &kernel()).unwrap().mss, Some(1280));
        assert_eq!(Plan::from_options(&[2, 4, 0, 40], &kernel()), Err(vec![2]), "below the kernel's minimum");
        // 6 MiB of receive space gives shift 7 at most; a clamp of 2^(s+16) - 1 gives any smaller shift s.
        assert_eq!(Plan::from_options(&[3, 3, 7], &kernel()).unwrap().window_clamp, Some((1 << 23) - 1));
        assert_eq!(Plan::from_options(&[3, 3, 2], &kernel()).unwrap().window_clamp, Some((1 << 18) - 1));
        assert_eq!(Plan::from_options(&[3, 3, 0], &kernel()).unwrap().window_clamp, Some(65535));
        assert_eq!(Plan::from_options(&[3, 3, 8], &kernel()), Err(vec![3]));
        let big = KernelTcp { max_receive_space: 32 << 20, ..kernel() };
        assert_eq!(Plan::from_options(&[3, 3, 9], &big).unwrap().window_clamp, Some((1 << 25) - 1));
        assert_eq!(Plan::from_options(&[3, 3, 15], &big), Err(vec![3]), "past RFC 7323's 14");
        // An MPTCP socket takes no window clamp on this kernel.
        assert_eq!(Plan::from_options(&[30, 2, 3, 3, 2], &kernel()), Err(vec![3]));
        // A timestamp value, a TFO cookie, an MPTCP option with data, MD5, an unknown kind: each listed once.
        let options = [8, 10, 1, 2, 3, 4, 5, 6, 7, 8, 34, 6, 1, 2, 3, 4, 30, 4, 0, 1, 19, 2, 254, 2, 34, 2];
        assert_eq!(Plan::from_options(&options, &kernel()), Err(vec![8, 34, 30, 19, 254]));
    }

    #[test]
    fn loopback_multicast_and_broadcast_are_malformed_requests() {
        for (ip, why) in [
            ("127.0.0.1", BadDestination::Loopback),
            ("127.255.0.9", BadDestination::Loopback),
            ("::1", BadDestination::Loopback),
            ("::ffff:127.0.0.1", BadDestination::Loopback),
            ("224.0.0.1", BadDestination::Multicast),
            ("ff02::1", BadDestination::Multicast),
            ("255.255.255.255", BadDestination::Broadcast),
        ] {
            assert_eq!(Destination::check(ip.parse().unwrap()), Err(why), "{ip}");
        }
        for ip in ["192.0.2.1", "2001:db8::1", "::127.0.0.1", "64:ff9b::7f00:1", "0.0.0.0"] {
            assert_eq!(Destination::check(ip.parse().unwrap()), Ok(()), "{ip} is the policy's to judge");
        }
    }

    #[test]
    fn connect_failures_map_to_rfc8803_codes_with_the_icmp_code() {
        let io = |errno, icmp| Failure::Io { error: io::Error::from_raw_os_error(errno), icmp };
        let wire = |f: Failure| f.reply().to_bytes().unwrap();
        let unreachable = |v6, kind, code| Some(Icmp { v6, kind, code });
        // A reset from the destination; the same errno from an ICMP port unreachable is 97 with code 3.
        assert_eq!(wire(io(libc::ECONNREFUSED, None)), [1, 2, 0x22, 0x63, 30, 1, 96, 0]);
        assert_eq!(wire(io(libc::ECONNREFUSED, unreachable(false, 3, 3))), [1, 2, 0x22, 0x63, 30, 1, 97, 3]);
        assert_eq!(wire(io(libc::EHOSTUNREACH, unreachable(false, 3, 13))), [1, 2, 0x22, 0x63, 30, 1, 97, 13]);
        assert_eq!(wire(io(libc::ECONNREFUSED, unreachable(true, 1, 4))), [1, 2, 0x22, 0x63, 30, 1, 97, 4]);
        // Local failures: no route, no usable source address.
        assert_eq!(wire(io(libc::ENETUNREACH, None)), [1, 2, 0x22, 0x63, 30, 1, 65, 0]);
        assert_eq!(wire(io(libc::EADDRNOTAVAIL, None)), [1, 2, 0x22, 0x63, 30, 1, 65, 0]);
        // Time exceeded is not "destination unreachable".
        assert_eq!(wire(io(libc::EHOSTUNREACH, unreachable(false, 11, 0))), [1, 2, 0x22, 0x63, 30, 1, 65, 0]);
        let late = Failure::Timeout { after: Duration::from_secs(1), icmp: unreachable(false, 3, 1) };
        assert_eq!(wire(late), [1, 2, 0x22, 0x63, 30, 1, 97, 1], "a soft ICMP error, then the timeout");
        let silent = Failure::Timeout { after: Duration::from_secs(1), icmp: None };
        assert_eq!(wire(silent), [1, 2, 0x22, 0x63, 30, 1, 65, 0]);
    }
}
