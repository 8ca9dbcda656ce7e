//! Typed MPTCP path-manager events from the `mptcp_pm_events` multicast group, and the stream that yields them.
//!
//! The codec half ([`parse_event`]) is sans-IO: the genl command byte is the event type
//! (`enum mptcp_event_type`), the attributes are `enum mptcp_event_attr`. Ports in events are big-endian
//! (`nla_put_be16(inet_sport)`), unlike endpoint ports. Unknown event types become [`PmEvent::Other`], unknown
//! attributes are ignored; a known event missing a required attribute is a decode error, never a panic.
//!
//! The I/O half ([`PmEvents`]) owns its own netlink socket joined to the group; the socket lives in the network
//! namespace of the thread that subscribed, and is closed when the [`PmEvents`] value is dropped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use futures::channel::mpsc::UnboundedReceiver;
use genetlink::message::RawGenlMessage;
use netlink_packet_core::{
    DecodeError, NetlinkMessage, NetlinkPayload, NlasIterator, parse_i32, parse_u8, parse_u16, parse_u16_be, parse_u32,
};
use netlink_sys::SocketAddr as NlSocketAddr;

use super::PmError;
use super::wire::{AF_INET, AF_INET6};

// enum mptcp_event_type
const EV_CREATED: u8 = 1;
const EV_ESTABLISHED: u8 = 2;
const EV_CLOSED: u8 = 3;
const EV_ANNOUNCED: u8 = 6;
const EV_REMOVED: u8 = 7;
const EV_SUB_ESTABLISHED: u8 = 10;
const EV_SUB_CLOSED: u8 = 11;
const EV_SUB_PRIORITY: u8 = 13;
const EV_LISTENER_CREATED: u8 = 15;
const EV_LISTENER_CLOSED: u8 = 16;

// enum mptcp_event_attr
const ATTR_TOKEN: u16 = 1;
const ATTR_FAMILY: u16 = 2;
const ATTR_LOC_ID: u16 = 3;
const ATTR_REM_ID: u16 = 4;
const ATTR_SADDR4: u16 = 5;
const ATTR_SADDR6: u16 = 6;
const ATTR_DADDR4: u16 = 7;
const ATTR_DADDR6: u16 = 8;
const ATTR_SPORT: u16 = 9;
const ATTR_DPORT: u16 = 10;
const ATTR_BACKUP: u16 = 11;
const ATTR_ERROR: u16 = 12;
const ATTR_FLAGS: u16 = 13;
const ATTR_IF_IDX: u16 = 15;
const ATTR_SERVER_SIDE: u16 = 18;

/// `MPTCP_PM_EV_FLAG_SERVER_SIDE` in `MPTCP_ATTR_FLAGS` (newer kernels; older ones send `MPTCP_ATTR_SERVER_SIDE`).
const EV_FLAG_SERVER_SIDE: u16 = 1 << 1;

/// One event of the in-kernel path manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PmEvent {
    /// A new MPTCP connection (its first subflow's addresses).
    Created(ConnectionEvent),
    /// The connection is fully established and may open more subflows.
    Established(ConnectionEvent),
    /// The connection is gone.
    Closed { token: u32 },
    /// The peer announced an address (ADD_ADDR).
    Announced { token: u32, remote_id: u8, addr: IpAddr, port: Option<u16> },
    /// The peer withdrew an address (REMOVE_ADDR).
    Removed { token: u32, remote_id: u8 },
    /// A new subflow joined the connection.
    SubflowEstablished(SubflowEvent),
    /// A subflow closed; `error` carries its `sk_err` if any.
    SubflowClosed(SubflowEvent),
    /// A subflow's backup priority changed (MP_PRIO sent or received).
    SubflowPriority(SubflowEvent),
    /// The PM created a listener (for a `signal` endpoint with a port).
    ListenerCreated { local: SocketAddr },
    /// The PM closed such a listener.
    ListenerClosed { local: SocketAddr },
    /// An event type this code does not know (kept, not an error).
    Other { kind: u8 },
}

/// Attributes of CREATED and ESTABLISHED.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionEvent {
    /// The connection's local token (each side of a connection has its own).
    pub token: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// This side accepted the connection.
    pub server_side: bool,
    /// Raw `MPTCP_ATTR_FLAGS` (`MPTCP_PM_EV_FLAG_*`).
    pub flags: u16,
}

/// Attributes of SUB_ESTABLISHED, SUB_CLOSED and SUB_PRIORITY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubflowEvent {
    pub token: u32,
    /// Local endpoint id (0 for the initial subflow's address).
    pub local_id: u8,
    pub remote_id: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The subflow is a backup one (after this event, for SUB_PRIORITY).
    pub backup: bool,
    pub ifindex: Option<u32>,
    /// The subflow's socket error (SUB_CLOSED only, when set).
    pub error: Option<u8>,
}

#[derive(Default)]
struct Attrs {
    token: Option<u32>,
    family: Option<u16>,
    loc_id: Option<u8>,
    rem_id: Option<u8>,
    saddr4: Option<Ipv4Addr>,
    saddr6: Option<Ipv6Addr>,
    daddr4: Option<Ipv4Addr>,
    daddr6: Option<Ipv6Addr>,
    sport: Option<u16>,
    dport: Option<u16>,
    backup: Option<u8>,
    error: Option<u8>,
    flags: Option<u16>,
    if_idx: Option<i32>,
    server_side: Option<u8>,
}

fn in4(v: &[u8]) -> Result<Ipv4Addr, DecodeError> {
    <[u8; 4]>::try_from(v).map(Ipv4Addr::from).map_err(|_| DecodeError::invalid_ip_address(v.len()))
}

fn in6(v: &[u8]) -> Result<Ipv6Addr, DecodeError> {
    <[u8; 16]>::try_from(v).map(Ipv6Addr::from).map_err(|_| DecodeError::invalid_ip_address(v.len()))
}

impl Attrs {
    fn parse(payload: &[u8]) -> Result<Attrs, DecodeError> {
        let mut a = Attrs::default();
        for nla in NlasIterator::new(payload) {
            let nla = nla?;
            let v = nla.value();
            match nla.kind() {
                ATTR_TOKEN => a.token = Some(parse_u32(v)?),
                ATTR_FAMILY => a.family = Some(parse_u16(v)?),
                ATTR_LOC_ID => a.loc_id = Some(parse_u8(v)?),
                ATTR_REM_ID => a.rem_id = Some(parse_u8(v)?),
                ATTR_SADDR4 => a.saddr4 = Some(in4(v)?),
                ATTR_SADDR6 => a.saddr6 = Some(in6(v)?),
                ATTR_DADDR4 => a.daddr4 = Some(in4(v)?),
                ATTR_DADDR6 => a.daddr6 = Some(in6(v)?),
                ATTR_SPORT => a.sport = Some(parse_u16_be(v)?),
                ATTR_DPORT => a.dport = Some(parse_u16_be(v)?),
                ATTR_BACKUP => a.backup = Some(parse_u8(v)?),
                ATTR_ERROR => a.error = Some(parse_u8(v)?),
                ATTR_FLAGS => a.flags = Some(parse_u16(v)?),
                ATTR_IF_IDX => a.if_idx = Some(parse_i32(v)?),
                ATTR_SERVER_SIDE => a.server_side = Some(parse_u8(v)?),
                _ => {}
            }
        }
        Ok(a)
    }

    fn token(&self) -> Result<u32, DecodeError> {
        self.token.ok_or_else(|| DecodeError::from("event without MPTCP_ATTR_TOKEN"))
    }

    fn rem_id(&self) -> Result<u8, DecodeError> {
        self.rem_id.ok_or_else(|| DecodeError::from("event without MPTCP_ATTR_REM_ID"))
    }

    /// The source address as the family attribute says (falls back to whichever address is present).
    fn saddr(&self) -> Result<IpAddr, DecodeError> {
        pick(self.family, self.saddr4, self.saddr6).ok_or_else(|| DecodeError::from("event without source address"))
    }

    fn daddr(&self) -> Result<IpAddr, DecodeError> {
        pick(self.family, self.daddr4, self.daddr6)
            .ok_or_else(|| DecodeError::from("event without destination address"))
    }

    fn local(&self) -> Result<SocketAddr, DecodeError> {
        let port = self.sport.ok_or_else(|| DecodeError::from("event without MPTCP_ATTR_SPORT"))?;
        Ok(SocketAddr::new(self.saddr()?, port))
    }

    fn remote(&self) -> Result<SocketAddr, DecodeError> {
        let port = self.dport.ok_or_else(|| DecodeError::from("event without MPTCP_ATTR_DPORT"))?;
        Ok(SocketAddr::new(self.daddr()?, port))
    }

    fn connection(&self) -> Result<ConnectionEvent, DecodeError> {
        let flags = self.flags.unwrap_or(0);
        Ok(ConnectionEvent {
            token: self.token()?,
            local: self.local()?,
            remote: self.remote()?,
            server_side: self.server_side.unwrap_or(0) != 0 || flags & EV_FLAG_SERVER_SIDE != 0,
            flags,
        })
    }

    fn subflow(&self) -> Result<SubflowEvent, DecodeError> {
        Ok(SubflowEvent {
            token: self.token()?,
            local_id: self.loc_id.ok_or_else(|| DecodeError::from("event without MPTCP_ATTR_LOC_ID"))?,
            remote_id: self.rem_id()?,
            local: self.local()?,
            remote: self.remote()?,
            backup: self.backup.unwrap_or(0) != 0,
            ifindex: self.if_idx.and_then(|i| u32::try_from(i).ok()).filter(|i| *i != 0),
            error: self.error.filter(|e| *e != 0),
        })
    }
}

fn pick(family: Option<u16>, v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> Option<IpAddr> {
    match family {
        Some(AF_INET) => v4.map(IpAddr::V4),
        Some(AF_INET6) => v6.map(IpAddr::V6),
        _ => v4.map(IpAddr::V4).or(v6.map(IpAddr::V6)),
    }
}

/// Decode one event: `kind` is the genl command byte, `payload` the attributes after the genl header.
pub fn parse_event(kind: u8, payload: &[u8]) -> Result<PmEvent, DecodeError> {
    let a = Attrs::parse(payload)?;
    Ok(match kind {
        EV_CREATED => PmEvent::Created(a.connection()?),
        EV_ESTABLISHED => PmEvent::Established(a.connection()?),
        EV_CLOSED => PmEvent::Closed { token: a.token()? },
        EV_ANNOUNCED => PmEvent::Announced {
            token: a.token()?,
            remote_id: a.rem_id()?,
            addr: a.daddr()?,
            port: a.dport.filter(|p| *p != 0),
        },
        EV_REMOVED => PmEvent::Removed { token: a.token()?, remote_id: a.rem_id()? },
        EV_SUB_ESTABLISHED => PmEvent::SubflowEstablished(a.subflow()?),
        EV_SUB_CLOSED => PmEvent::SubflowClosed(a.subflow()?),
        EV_SUB_PRIORITY => PmEvent::SubflowPriority(a.subflow()?),
        EV_LISTENER_CREATED => PmEvent::ListenerCreated { local: a.local()? },
        EV_LISTENER_CLOSED => PmEvent::ListenerClosed { local: a.local()? },
        kind => PmEvent::Other { kind },
    })
}

/// Events of the in-kernel path manager, in the order the kernel sent them.
///
/// Yields `Err(PmError::EventsLost)` when the socket's receive buffer overflowed (the kernel dropped events;
/// re-read state with [`super::PathManager::endpoints`] or MPTCP_INFO), and `Err(PmError::Decode)` for an event
/// that could not be decoded; the stream goes on after both. It ends only if the socket fails.
pub struct PmEvents {
    pub(super) rx: UnboundedReceiver<(NetlinkMessage<RawGenlMessage>, NlSocketAddr)>,
    pub(super) family_id: u16,
    /// The task driving the event socket; aborted on drop so the socket closes with this value.
    pub(super) task: tokio::task::JoinHandle<()>,
}

impl Drop for PmEvents {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for PmEvents {
    type Item = Result<PmEvent, PmError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let (msg, _) = match Pin::new(&mut self.rx).poll_next(cx) {
                Poll::Ready(Some(m)) => m,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            match msg.payload {
                NetlinkPayload::InnerMessage(raw) if raw.family_id == self.family_id => {
                    let item = parse_event(raw.header.cmd, &raw.payload).map_err(PmError::Decode);
                    return Poll::Ready(Some(item));
                }
                NetlinkPayload::Overrun(_) => return Poll::Ready(Some(Err(PmError::EventsLost))),
                // Other families' messages or netlink control messages: not ours.
                _ => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let len = 4 + value.len();
        let mut v = Vec::new();
        v.extend_from_slice(&(len as u16).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(value);
        v.resize((v.len() + 3) & !3, 0);
        v
    }

    #[test]
    fn created_event_golden_bytes() {
        // mptcp_event_created order: TOKEN, [SERVER_SIDE], [FLAGS], FAMILY, SADDR4, DADDR4, SPORT, DPORT.
        let bytes = [
            nla(ATTR_TOKEN, &0xdead_beefu32.to_ne_bytes()),
            nla(ATTR_SERVER_SIDE, &[1]),
            nla(ATTR_FLAGS, &EV_FLAG_SERVER_SIDE.to_ne_bytes()),
            nla(ATTR_FAMILY, &AF_INET.to_ne_bytes()),
            nla(ATTR_SADDR4, &[127, 0, 0, 1]),
            nla(ATTR_DADDR4, &[127, 0, 0, 2]),
            nla(ATTR_SPORT, &5124u16.to_be_bytes()),
            nla(ATTR_DPORT, &40000u16.to_be_bytes()),
        ]
        .concat();
        assert_eq!(
            parse_event(EV_CREATED, &bytes).unwrap(),
            PmEvent::Created(ConnectionEvent {
                token: 0xdead_beef,
                local: "127.0.0.1:5124".parse().unwrap(),
                remote: "127.0.0.2:40000".parse().unwrap(),
                server_side: true,
                flags: EV_FLAG_SERVER_SIDE,
            })
        );
    }

    #[test]
    fn sub_priority_ipv6_golden_bytes() {
        let s: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let d: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let bytes = [
            nla(ATTR_TOKEN, &7u32.to_ne_bytes()),
            nla(ATTR_FAMILY, &AF_INET6.to_ne_bytes()),
            nla(ATTR_LOC_ID, &[2]),
            nla(ATTR_REM_ID, &[0]),
            nla(ATTR_SADDR6, &s.octets()),
            nla(ATTR_DADDR6, &d.octets()),
            nla(ATTR_SPORT, &1234u16.to_be_bytes()),
            nla(ATTR_DPORT, &443u16.to_be_bytes()),
            nla(ATTR_BACKUP, &[1]),
            nla(ATTR_IF_IDX, &4i32.to_ne_bytes()),
            nla(99, &[1, 2, 3]), // an attribute from the future is ignored
        ]
        .concat();
        assert_eq!(
            parse_event(EV_SUB_PRIORITY, &bytes).unwrap(),
            PmEvent::SubflowPriority(SubflowEvent {
                token: 7,
                local_id: 2,
                remote_id: 0,
                local: SocketAddr::new(s.into(), 1234),
                remote: SocketAddr::new(d.into(), 443),
                backup: true,
                ifindex: Some(4),
                error: None,
            })
        );
    }

    #[test]
    fn unknown_kinds_are_kept_and_missing_attributes_are_errors() {
        assert_eq!(parse_event(200, &[]).unwrap(), PmEvent::Other { kind: 200 });
        assert_eq!(
            parse_event(EV_CLOSED, &nla(ATTR_TOKEN, &9u32.to_ne_bytes())).unwrap(),
            PmEvent::Closed { token: 9 }
        );
        assert!(parse_event(EV_CLOSED, &[]).is_err());
        assert!(parse_event(EV_SUB_ESTABLISHED, &nla(ATTR_TOKEN, &9u32.to_ne_bytes())).is_err());
        // Truncated attribute header and a 3-byte IPv4 address.
        assert!(parse_event(EV_CREATED, &[8, 0, 1]).is_err());
        assert!(parse_event(EV_CREATED, &nla(ATTR_SADDR4, &[1, 2, 3])).is_err());
    }
}
