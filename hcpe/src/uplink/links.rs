//! The uplinks' interfaces as the kernel reports them: the rtnetlink event stream (link and address changes)
//! and the addresses an `auto` uplink learns from its interface.
//!
//! Split into a pure part (classifying event messages, choosing the address to use, filtering dumped
//! addresses) that the unit tests cover, and two small async helpers over `rtnetlink`.
//!
//! Invariants:
//! - only global-scope addresses that are usable now (not tentative, not failed DAD, not deprecated) are
//!   learned, so a socket can bind to a learned address at once;
//! - [`choose`] keeps the address in use while the interface still has it (adding a second address does not
//!   move an uplink), so only a removal or a first appearance moves it;
//! - the event socket lives in the namespace of the thread that called [`subscribe`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt as _;
use futures::channel::mpsc::UnboundedReceiver;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::MulticastGroup;

use super::carrier;

/// What an rtnetlink event means for the uplinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link appeared or changed (`NEWLINK`) or went away (`DELLINK`: `gone`, no carrier).
    Link { ifindex: u32, name: Option<String>, carrier: bool, gone: bool },
    /// An address was added to or removed from interface `ifindex`.
    Address { ifindex: u32 },
}

/// The stream of link and address events of this namespace.
pub type Events = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, rtnetlink::sys::SocketAddr)>;

/// Subscribes to link and IPv4/IPv6 address events (a socket of its own, driven by a spawned task).
pub fn subscribe() -> std::io::Result<Events> {
    let groups = [MulticastGroup::Link, MulticastGroup::Ipv4Ifaddr, MulticastGroup::Ipv6Ifaddr];
    let (conn, _handle, events) = rtnetlink::new_multicast_connection(&groups)?;
    tokio::spawn(conn);
    Ok(events)
}

/// What `msg` means for the uplinks; `None` for anything else.
pub fn classify(msg: &NetlinkMessage<RouteNetlinkMessage>) -> Option<LinkEvent> {
    let NetlinkPayload::InnerMessage(inner) = &msg.payload else { return None };
    match inner {
        RouteNetlinkMessage::NewLink(l) => Some(link_event(l, true)),
        RouteNetlinkMessage::DelLink(l) => Some(link_event(l, false)),
        RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a) => {
            Some(LinkEvent::Address { ifindex: a.header.index })
        }
        _ => None,
    }
}

fn link_event(l: &LinkMessage, exists: bool) -> LinkEvent {
    let name = l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    });
    let carrier = exists && carrier::has_carrier(l.header.flags);
    LinkEvent::Link { ifindex: l.header.index, name, carrier, gone: !exists }
}

/// The address of a dumped address message, if it is one an uplink may use (see the module invariants).
pub fn usable_address(m: &AddressMessage) -> Option<IpAddr> {
    if m.header.scope != AddressScope::Universe {
        return None;
    }
    let bad_header = AddressHeaderFlags::Tentative | AddressHeaderFlags::Dadfailed | AddressHeaderFlags::Deprecated;
    if m.header.flags.intersects(bad_header) {
        return None;
    }
    let bad = AddressFlags::Tentative | AddressFlags::Dadfailed | AddressFlags::Deprecated;
    let mut local = None;
    let mut address = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Flags(f) if f.intersects(bad) => return None,
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    // IFA_LOCAL is the local address on point-to-point links (IFA_ADDRESS is the peer there).
    local.or(address)
}

/// The usable addresses of interface `ifindex`, in the kernel's order (primary first).
pub async fn addresses(handle: &rtnetlink::Handle, ifindex: u32) -> Result<(Vec<Ipv4Addr>, Vec<Ipv6Addr>), rtnetlink::Error> {
    let msgs: Vec<AddressMessage> =
        handle.address().get().set_link_index_filter(ifindex).execute().try_collect().await?;
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    // The kernel's dump filter by index is advisory on some versions: check it here too.
    for ip in msgs.iter().filter(|m| m.header.index == ifindex).filter_map(usable_address) {
        match ip {
            IpAddr::V4(a) => v4.push(a),
            IpAddr::V6(a) => v6.push(a),
        }
    }
    Ok((v4, v6))
}

/// The address an `auto` uplink uses given the one it uses now and those its interface has: the current
/// one while it is still there, else the first one present, else none.
pub fn choose<A: PartialEq + Copy>(current: Option<A>, present: &[A]) -> Option<A> {
    match current {
        Some(c) if present.contains(&c) => Some(c),
        _ => present.first().copied(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::AddressFamily;
    use netlink_packet_route::link::LinkFlags;

    fn addr_msg(ip: IpAddr, scope: AddressScope, flags: AddressFlags) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        m.header.prefix_len = 24;
        m.header.scope = scope;
        m.header.index = 7;
        m.attributes.push(AddressAttribute::Address(ip));
        m.attributes.push(AddressAttribute::Flags(flags));
        m
    }

    #[test]
    fn only_global_settled_addresses_are_learned() {
        let a4: IpAddr = "198.18.3.2".parse().unwrap();
        let a6: IpAddr = "2001:2:0:3::2".parse().unwrap();
        assert_eq!(usable_address(&addr_msg(a4, AddressScope::Universe, AddressFlags::Permanent)), Some(a4));
        assert_eq!(usable_address(&addr_msg(a6, AddressScope::Universe, AddressFlags::empty())), Some(a6));
        let ll: IpAddr = "fe80::1".parse().unwrap();
        assert_eq!(usable_address(&addr_msg(ll, AddressScope::Link, AddressFlags::Permanent)), None);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(usable_address(&addr_msg(lo, AddressScope::Host, AddressFlags::Permanent)), None);
        for f in [AddressFlags::Tentative, AddressFlags::Dadfailed, AddressFlags::Deprecated] {
            assert_eq!(usable_address(&addr_msg(a6, AddressScope::Universe, f)), None, "{f:?}");
        }
        // Point-to-point: IFA_LOCAL is ours, IFA_ADDRESS the peer's.
        let mut p2p = addr_msg("10.64.0.1".parse().unwrap(), AddressScope::Universe, AddressFlags::empty());
        p2p.attributes.push(AddressAttribute::Local(a4));
        assert_eq!(usable_address(&p2p), Some(a4));
    }

    #[test]
    fn the_address_in_use_stays_until_it_goes() {
        let (a, b, c) = (1u8, 2u8, 3u8);
        assert_eq!(choose(None, &[a, b]), Some(a), "first appearance: the primary address");
        assert_eq!(choose(Some(a), &[b, a]), Some(a), "a second address does not move the uplink");
        assert_eq!(choose(Some(a), &[b, c]), Some(b), "renumbered: the new one");
        assert_eq!(choose(Some(a), &[]), None, "gone");
    }

    #[test]
    fn events_are_classified() {
        let mut link = LinkMessage::default();
        link.header.index = 4;
        link.header.flags = LinkFlags::Up | LinkFlags::LowerUp | LinkFlags::Running;
        link.attributes.push(LinkAttribute::IfName("lte0".into()));
        let msg = NetlinkMessage::from(RouteNetlinkMessage::NewLink(link.clone()));
        assert_eq!(classify(&msg), Some(LinkEvent::Link { ifindex: 4, name: Some("lte0".into()), carrier: true, gone: false }));
        let msg = NetlinkMessage::from(RouteNetlinkMessage::DelLink(link.clone()));
        assert_eq!(classify(&msg), Some(LinkEvent::Link { ifindex: 4, name: Some("lte0".into()), carrier: false, gone: true }));
        link.header.flags = LinkFlags::Up;
        let msg = NetlinkMessage::from(RouteNetlinkMessage::NewLink(link));
        assert!(matches!(classify(&msg), Some(LinkEvent::Link { carrier: false, gone: false, .. })), "no carrier");
        let a = addr_msg("198.18.3.3".parse().unwrap(), AddressScope::Universe, AddressFlags::empty());
        let msg = NetlinkMessage::from(RouteNetlinkMessage::DelAddress(a));
        assert_eq!(classify(&msg), Some(LinkEvent::Address { ifindex: 7 }));
    }
}
