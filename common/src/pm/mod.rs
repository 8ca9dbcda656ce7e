//! MPTCP path manager client: the kernel's endpoint table and limits over generic netlink (`mptcp_pm`), and its
//! event stream.
//!
//! This module owns every conversation with the in-kernel path manager: endpoints (`ip mptcp endpoint`),
//! limits (`ip mptcp limits`), flag changes that send MP_PRIO to peers, and the `mptcp_pm_events` multicast
//! group. The message codec lives in [`wire`] and [`events`] (sans-IO, unit-tested with golden bytes); this file
//! is the async driver on top of the `genetlink` crate.
//!
//! What must always hold:
//! - The kernel's endpoint table and limits are per network namespace. A [`PathManager`] talks to the namespace
//!   its socket was created in, i.e. the namespace of the thread that called [`PathManager::connect`] (or
//!   [`PathManager::subscribe`]); moving the value to another thread later does not change that.
//! - Every request carries `NLM_F_ACK`, so each call ends with the kernel's verdict: `Ok`, or
//!   [`PmError::Kernel`] with the errno and the kernel's extack message (e.g. "address not found").
//! - No state is cached here: every read asks the kernel.

pub mod events;
pub mod wire;

use std::fmt;
use std::net::IpAddr;
use std::ops::{BitOr, BitOrAssign};

use futures::StreamExt;
use genetlink::{GenetlinkError, GenetlinkHandle};
use netlink_packet_core::{DecodeError, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::GenlMessage;
use netlink_sys::AsyncSocket;

pub use events::{ConnectionEvent, PmEvent, PmEvents, SubflowEvent};
use wire::{PmAttr, PmCmd, PmMessage};

/// Receive buffer asked for the event socket: events come in bursts (one per subflow change of every
/// connection), and an overflow loses them.
const EVENT_RCVBUF: usize = 4 << 20;

/// Endpoint flags (`MPTCP_PM_ADDR_FLAG_*`). Bits this code has no name for are kept as they are.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EndpointFlags(u32);

impl EndpointFlags {
    /// Announce this address to peers (ADD_ADDR).
    pub const SIGNAL: Self = Self(1 << 0);
    /// Open a subflow from this address to the peer.
    pub const SUBFLOW: Self = Self(1 << 1);
    /// Subflows from this address are backup ones (MP_PRIO / MP_JOIN backup bit).
    pub const BACKUP: Self = Self(1 << 2);
    /// With SUBFLOW: one subflow to every address the peer announced.
    pub const FULLMESH: Self = Self(1 << 3);
    /// Set by the kernel on endpoints it created itself (not by user request).
    pub const IMPLICIT: Self = Self(1 << 4);
    /// Newer kernels: use the endpoint for subflows towards announced addresses too.
    pub const LAMINAR: Self = Self(1 << 5);
    const NAMES: [(Self, &'static str); 6] = [
        (Self::SIGNAL, "signal"),
        (Self::SUBFLOW, "subflow"),
        (Self::BACKUP, "backup"),
        (Self::FULLMESH, "fullmesh"),
        (Self::IMPLICIT, "implicit"),
        (Self::LAMINAR, "laminar"),
    ];

    pub const fn empty() -> Self {
        Self(0)
    }

    pub const fn from_bits(bits: u32) -> Self {
        Self(bits)
    }

    pub const fn bits(self) -> u32 {
        self.0
    }

    /// All bits of `other` are set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// `self` with `other` set (`on`) or cleared.
    #[must_use]
    pub const fn with(self, other: Self, on: bool) -> Self {
        if on { Self(self.0 | other.0) } else { Self(self.0 & !other.0) }
    }
}

impl BitOr for EndpointFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl BitOrAssign for EndpointFlags {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

/// As `ip mptcp endpoint show` writes them: `subflow backup`, unknown bits as hex.
impl fmt::Debug for EndpointFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                write!(f, "{}{name}", if first { "" } else { " " })?;
                rest &= !flag.0;
                first = false;
            }
        }
        if rest != 0 || first {
            write!(f, "{}{rest:#x}", if first { "" } else { " " })?;
        }
        Ok(())
    }
}

/// One entry of the kernel's endpoint table: a local address the path manager may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: IpAddr,
    /// Endpoint id (1..=255). `None` when adding lets the kernel pick; always set when read back.
    pub id: Option<u8>,
    pub flags: EndpointFlags,
    /// Bind subflows from this endpoint to this interface (`dev`).
    pub ifindex: Option<u32>,
    /// Only with SIGNAL: announce this port and listen on it for joins.
    pub port: Option<u16>,
}

impl Endpoint {
    /// An endpoint on `addr` with `flags` and nothing else set.
    pub fn new(addr: IpAddr, flags: EndpointFlags) -> Self {
        Endpoint { addr, id: None, flags, ifindex: None, port: None }
    }
}

/// Per-namespace path-manager limits (`ip mptcp limits`). The kernel caps both at 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Additional subflows per connection (`subflows`).
    pub subflows: u32,
    /// ADD_ADDRs accepted from a peer per connection (`add_addr_accepted`).
    pub add_addr_accepted: u32,
}

/// How SET_FLAGS finds the endpoint: by id, or by address when the id is not known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointRef {
    Id(u8),
    Addr(IpAddr),
}

impl From<u8> for EndpointRef {
    fn from(id: u8) -> Self {
        EndpointRef::Id(id)
    }
}

impl From<IpAddr> for EndpointRef {
    fn from(addr: IpAddr) -> Self {
        EndpointRef::Addr(addr)
    }
}

/// Errors of the path-manager client.
#[derive(Debug, thiserror::Error)]
pub enum PmError {
    /// The kernel refused a request; `errno` is positive (e.g. `libc::EINVAL`), `message` is its extack text.
    #[error("mptcp_pm {}: {}{}", op.name(), std::io::Error::from_raw_os_error(*errno),
        message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Kernel { op: PmCmd, errno: i32, message: Option<String> },
    /// The netlink socket could not be created or configured.
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The `mptcp_pm` generic netlink family is not there (kernel without MPTCP, or the family lookup failed).
    #[error("mptcp_pm generic netlink family unavailable: {0}")]
    Unavailable(#[source] GenetlinkError),
    /// The netlink connection failed while sending a request or waiting for its answer.
    #[error("netlink transport: {0}")]
    Transport(#[source] GenetlinkError),
    /// The kernel's answer could not be decoded.
    #[error("malformed mptcp_pm message: {0}")]
    Decode(#[source] DecodeError),
    /// A reply lacked what the command always returns.
    #[error("mptcp_pm {} reply without {what}", op.name())]
    MissingReply { op: PmCmd, what: &'static str },
    /// The event socket's buffer overflowed and the kernel dropped events.
    #[error("mptcp_pm events lost: netlink receive buffer overflowed")]
    EventsLost,
}

impl PmError {
    /// The kernel's errno for [`PmError::Kernel`] (positive), `None` otherwise.
    pub fn errno(&self) -> Option<i32> {
        match self {
            PmError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// A client of the in-kernel path manager of one network namespace. Cheap to share by reference; each call
/// is one request/answer exchange with the kernel.
#[derive(Debug)]
pub struct PathManager {
    handle: GenetlinkHandle,
    family_id: u16,
    events_group: Option<u32>,
}

impl PathManager {
    /// Open a generic netlink socket in the current thread's network namespace and resolve `mptcp_pm`.
    /// Needs a tokio runtime: the socket is driven by a spawned task that ends when this value is dropped.
    pub async fn connect() -> Result<Self, PmError> {
        let (mut conn, handle, _unsolicited) = genetlink::new_connection().map_err(PmError::Socket)?;
        let socket = conn.socket_mut().socket_mut();
        // Ask for the kernel's error text, and for errors that echo only the request header.
        socket.set_ext_ack(true).map_err(PmError::Socket)?;
        socket.set_cap_ack(true).map_err(PmError::Socket)?;
        tokio::spawn(conn);
        let family = handle.resolve_family::<PmMessage>().await.map_err(PmError::Unavailable)?;
        let events_group = family.multicast_groups.get(wire::MPTCP_PM_EV_GRP_NAME).copied();
        Ok(PathManager { handle, family_id: family.id, events_group })
    }

    /// Add an endpoint and return its id (the one asked for, or the one the kernel picked).
    pub async fn add_endpoint(&self, ep: Endpoint) -> Result<u8, PmError> {
        self.request(PmCmd::AddAddr, vec![PmAttr::Addr(wire::endpoint_attrs(&ep))], false).await?;
        if let Some(id) = ep.id {
            return Ok(id);
        }
        // ADD_ADDR answers with a bare ACK; the kernel-chosen id is found by address (unique in the table).
        self.endpoints()
            .await?
            .into_iter()
            .find(|e| e.addr == ep.addr && e.port == ep.port)
            .and_then(|e| e.id)
            .ok_or(PmError::MissingReply { op: PmCmd::AddAddr, what: "the new endpoint in GET_ADDR" })
    }

    /// Remove endpoint `id`. The kernel closes the subflows that use it (reinjecting their data elsewhere) and
    /// withdraws it from peers if it was signalled.
    pub async fn del_endpoint(&self, id: u8) -> Result<(), PmError> {
        self.request(PmCmd::DelAddr, vec![PmAttr::Addr(vec![wire::AddrAttr::Id(id)])], false).await?;
        Ok(())
    }

    /// Remove the endpoint on `addr` (any port), if there is one; returns whether one was removed.
    /// For cleaning up after a crash, when the ids handed out before are lost.
    pub async fn del_endpoint_addr(&self, addr: IpAddr) -> Result<bool, PmError> {
        let mut removed = false;
        for ep in self.endpoints().await?.into_iter().filter(|e| e.addr == addr) {
            if let Some(id) = ep.id {
                self.del_endpoint(id).await?;
                removed = true;
            }
        }
        Ok(removed)
    }

    /// Make the table hold `ep` (found by address and port), changing as little as possible, and return its
    /// id: nothing if it is already so; SET_FLAGS if only BACKUP/FULLMESH differ (subflows stay up and the
    /// peer gets MP_PRIO); otherwise delete and re-add. Makes daemon setup idempotent across restarts.
    pub async fn ensure_endpoint(&self, ep: Endpoint) -> Result<u8, PmError> {
        const CHANGEABLE: u32 = EndpointFlags::BACKUP.bits() | EndpointFlags::FULLMESH.bits();
        let existing = self.endpoints().await?.into_iter().find(|e| e.addr == ep.addr && e.port == ep.port);
        let Some(cur) = existing else {
            return self.add_endpoint(ep).await;
        };
        let cur_id = cur.id.ok_or(PmError::MissingReply { op: PmCmd::GetAddr, what: "MPTCP_PM_ADDR_ATTR_ID" })?;
        let same_identity = ep.id.is_none_or(|id| id == cur_id) && ep.ifindex == cur.ifindex;
        let fixed_bits_equal = (cur.flags.bits() ^ ep.flags.bits()) & !CHANGEABLE == 0;
        if same_identity && fixed_bits_equal {
            if cur.flags != ep.flags {
                self.set_flags(cur_id, ep.flags).await?;
            }
            return Ok(cur_id);
        }
        self.del_endpoint(cur_id).await?;
        self.add_endpoint(ep).await
    }

    /// One endpoint by id.
    pub async fn endpoint(&self, id: u8) -> Result<Endpoint, PmError> {
        let replies = self.request(PmCmd::GetAddr, vec![PmAttr::Addr(vec![wire::AddrAttr::Id(id)])], false).await?;
        let addr = replies
            .iter()
            .find_map(PmMessage::addr)
            .ok_or(PmError::MissingReply { op: PmCmd::GetAddr, what: "MPTCP_PM_ATTR_ADDR" })?;
        wire::endpoint_from_attrs(addr).map_err(PmError::Decode)
    }

    /// The whole endpoint table, in the kernel's order.
    pub async fn endpoints(&self) -> Result<Vec<Endpoint>, PmError> {
        let replies = self.request(PmCmd::GetAddr, Vec::new(), true).await?;
        replies
            .iter()
            .filter_map(PmMessage::addr)
            .map(|a| wire::endpoint_from_attrs(a).map_err(PmError::Decode))
            .collect()
    }

    /// Remove every endpoint.
    pub async fn flush(&self) -> Result<(), PmError> {
        self.request(PmCmd::FlushAddrs, Vec::new(), false).await?;
        Ok(())
    }

    pub async fn set_limits(&self, limits: Limits) -> Result<(), PmError> {
        let attrs = vec![PmAttr::RcvAddAddrs(limits.add_addr_accepted), PmAttr::Subflows(limits.subflows)];
        self.request(PmCmd::SetLimits, attrs, false).await?;
        Ok(())
    }

    pub async fn limits(&self) -> Result<Limits, PmError> {
        let replies = self.request(PmCmd::GetLimits, Vec::new(), false).await?;
        let (mut subflows, mut add_addr_accepted) = (None, None);
        for attr in replies.iter().flat_map(|m| &m.attrs) {
            match attr {
                PmAttr::Subflows(v) => subflows = Some(*v),
                PmAttr::RcvAddAddrs(v) => add_addr_accepted = Some(*v),
                _ => {}
            }
        }
        match (subflows, add_addr_accepted) {
            (Some(subflows), Some(add_addr_accepted)) => Ok(Limits { subflows, add_addr_accepted }),
            _ => Err(PmError::MissingReply { op: PmCmd::GetLimits, what: "MPTCP_PM_ATTR_SUBFLOWS/RCV_ADD_ADDRS" }),
        }
    }

    /// Change an endpoint's flags. The kernel changes only BACKUP and FULLMESH and ignores the other bits;
    /// a BACKUP change sends MP_PRIO on every subflow using the endpoint, so the peer learns it too.
    /// Note that a FULLMESH bit left out here is cleared: use [`PathManager::set_backup`] to touch BACKUP alone.
    pub async fn set_flags(&self, target: impl Into<EndpointRef>, flags: EndpointFlags) -> Result<(), PmError> {
        let mut addr = match target.into() {
            // No family attribute: the kernel looks the endpoint up by id.
            EndpointRef::Id(id) => vec![wire::AddrAttr::Id(id)],
            EndpointRef::Addr(a) => wire::addr_attrs(a),
        };
        addr.push(wire::AddrAttr::Flags(flags.bits()));
        self.request(PmCmd::SetFlags, vec![PmAttr::Addr(addr)], false).await?;
        Ok(())
    }

    /// Turn BACKUP on or off for endpoint `id`, keeping its other flags.
    pub async fn set_backup(&self, id: u8, backup: bool) -> Result<(), PmError> {
        let current = self.endpoint(id).await?;
        self.set_flags(id, current.flags.with(EndpointFlags::BACKUP, backup)).await
    }

    /// Subscribe to path-manager events of this namespace. Opens a second socket, in the current thread's
    /// namespace (call it from the same namespace as `connect`); dropping the [`PmEvents`] closes it.
    pub async fn subscribe(&self) -> Result<PmEvents, PmError> {
        let group = self.events_group.ok_or(PmError::MissingReply {
            op: PmCmd::GetAddr,
            what: "the mptcp_pm_events multicast group in the family description",
        })?;
        let (mut conn, _handle, rx) = genetlink::new_connection().map_err(PmError::Socket)?;
        let socket = conn.socket_mut().socket_mut();
        socket.bind_auto().map_err(PmError::Socket)?;
        // Best effort: the kernel caps it at net.core.rmem_max; a smaller buffer only makes overruns likelier.
        let _ = socket.set_rx_buf_sz(EVENT_RCVBUF);
        socket.add_membership(group).map_err(PmError::Socket)?;
        let task = tokio::spawn(conn);
        Ok(PmEvents { rx, family_id: self.family_id, task })
    }

    /// Send one command and collect its replies. Non-dump requests carry NLM_F_ACK so that commands without
    /// a reply still end with the kernel's verdict; dumps end with NLMSG_DONE.
    async fn request(&self, cmd: PmCmd, attrs: Vec<PmAttr>, dump: bool) -> Result<Vec<PmMessage>, PmError> {
        let mut genl = GenlMessage::from_payload(PmMessage::new(cmd, attrs));
        genl.set_resolved_family_id(self.family_id);
        let mut msg = NetlinkMessage::from(genl);
        msg.header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
        msg.finalize();
        let mut answers = self.handle.clone().send_request(msg).map_err(PmError::Transport)?;
        let mut replies = Vec::new();
        while let Some(answer) = answers.next().await {
            let answer = answer.map_err(PmError::Decode)?;
            match answer.payload {
                NetlinkPayload::InnerMessage(genl) => replies.push(genl.payload),
                NetlinkPayload::Error(err) if err.code.is_some() => {
                    return Err(PmError::Kernel {
                        op: cmd,
                        errno: -err.raw_code(),
                        message: wire::extack_message(answer.header.flags, &err),
                    });
                }
                _ => {}
            }
        }
        Ok(replies)
    }
}
