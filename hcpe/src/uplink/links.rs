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
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::MulticastGroup;

use super::carrier;

/// What an rtnetlink event means for the uplinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link appeared or changed (`NEWLINK`) or went away (`DELLINK`: `gone`, no carrier).
    /// `point_to_point`: no link-layer neighbours (POINTOPOINT or NOARP), so a route needs no gateway.
    Link { ifindex: u32, name: Option<String>, carrier: bool, gone: bool, point_to_point: bool },
    /// A main-table default route through interface `ifindex` not made by hcpe came or went (a DHCP
    /// client setting the gateway).
    DefaultRoute { ifindex: u32 },
    /// An address was added to or removed from interface `ifindex`.
    Address { ifindex: u32 },
}

/// The stream of link and address events of this namespace.
pub type Events = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, rtnetlink::sys::SocketAddr)>;

/// Subscribes to link and IPv4/IPv6 address events (a socket of its own, driven by a spawned task).
pub fn subscribe() -> std::io::Result<Events> {
    let groups = [
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
    ];
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
        RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => {
            foreign_main_default(r).map(|(ifindex, _)| LinkEvent::DefaultRoute { ifindex })
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
    LinkEvent::Link {
        ifindex: l.header.index,
        name,
        carrier,
        gone: !exists,
        point_to_point: point_to_point(l.header.flags),
    }
}

/// Whether an interface with these flags has no link-layer neighbours (a route out of it needs no gateway).
pub fn point_to_point(flags: LinkFlags) -> bool {
    flags.intersects(LinkFlags::Pointopoint | LinkFlags::Noarp)
}

/// For a main-table default route not marked as hcpe's: its interface and gateway (if any).
fn foreign_main_default(r: &RouteMessage) -> Option<(u32, Option<IpAddr>)> {
    let table = r
        .attributes
        .iter()
        .find_map(|a| if let RouteAttribute::Table(t) = a { Some(*t) } else { None })
        .unwrap_or(u32::from(r.header.table));
    if table != super::routing::MAIN_TABLE
        || r.header.destination_prefix_length != 0
        || r.header.protocol == RouteProtocol::Other(super::routing::RT_PROTO_UPLINK)
    {
        return None;
    }
    let oif = r.attributes.iter().find_map(|a| if let RouteAttribute::Oif(o) = a { Some(*o) } else { None })?;
    let gateway = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(IpAddr::V4(*g)),
        RouteAttribute::Gateway(RouteAddress::Inet6(g)) => Some(IpAddr::V6(*g)),
        _ => None,
    });
    Some((oif, gateway))
}

/// The gateway of the best (lowest metric) foreign main-table default route through `ifindex` among
/// `routes` (one family): what a DHCP client set for that interface.
pub fn pick_gateway(routes: &[RouteMessage], ifindex: u32) -> Option<IpAddr> {
    routes
        .iter()
        .filter_map(|r| {
            let (oif, gw) = foreign_main_default(r)?;
            let metric =
                r.attributes.iter().find_map(|a| if let RouteAttribute::Priority(p) = a { Some(*p) } else { None });
            (oif == ifindex).then_some((metric.unwrap_or(0), gw?))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, gw)| gw)
}

/// The interface's link flags, `None` when it does not exist.
pub async fn link_flags(handle: &rtnetlink::Handle, ifindex: u32) -> Option<LinkFlags> {
    match handle.link().get().match_index(ifindex).execute().try_next().await {
        Ok(Some(msg)) => Some(msg.header.flags),
        _ => None,
    }
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
pub async fn addresses(
    handle: &rtnetlink::Handle,
    ifindex: u32,
) -> Result<(Vec<Ipv4Addr>, Vec<Ipv6Addr>), rtnetlink::Error> {
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

/// The interface's index and 64-bit byte counters (received, sent), or `None` when it is missing or has none.
pub async fn byte_counters(handle: &rtnetlink::Handle, interface: &str) -> Option<(u32, u64, u64)> {
    let msg: LinkMessage = handle.link().get().match_name(interface.to_owned()).execute().try_next().await.ok()??;
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::Stats64(s) => Some((msg.header.index, s.rx_bytes, s.tx_bytes)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::AddressFamily;

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
        assert_eq!(
            classify(&msg),
            Some(LinkEvent::Link {
                ifindex: 4,
                name: Some("lte0".into()),
                carrier: true,
                gone: false,
                point_to_point: false
            })
        );
        let msg = NetlinkMessage::from(RouteNetlinkMessage::DelLink(link.clone()));
        assert_eq!(
            classify(&msg),
            Some(LinkEvent::Link {
                ifindex: 4,
                name: Some("lte0".into()),
                carrier: false,
                gone: true,
                point_to_point: false
            })
        );
        link.header.flags = LinkFlags::Up;
        let msg = NetlinkMessage::from(RouteNetlinkMessage::NewLink(link));
        assert!(matches!(classify(&msg), Some(LinkEvent::Link { carrier: false, gone: false, .. })), "no carrier");
        let a = addr_msg("198.18.3.3".parse().unwrap(), AddressScope::Universe, AddressFlags::empty());
        let msg = NetlinkMessage::from(RouteNetlinkMessage::DelAddress(a));
        assert_eq!(classify(&msg), Some(LinkEvent::Address { ifindex: 7 }));
        assert!(point_to_point(LinkFlags::Up | LinkFlags::Pointopoint | LinkFlags::Noarp), "raw-IP wwan");
        assert!(!point_to_point(LinkFlags::Up | LinkFlags::Broadcast | LinkFlags::Multicast), "ethernet");
    }

    fn default_route(oif: u32, gw: &str, metric: u32, proto: RouteProtocol) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet;
        r.header.table = 254;
        r.header.protocol = proto;
        r.attributes.push(RouteAttribute::Oif(oif));
        r.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(gw.parse().unwrap())));
        r.attributes.push(RouteAttribute::Priority(metric));
        r
    }

    #[test]
    fn the_gateway_is_learned_from_the_systems_default_route_through_the_interface() {
        let boot = RouteProtocol::Boot;
        let routes = [
            default_route(3, "10.8.0.1", 100, boot),
            default_route(4, "10.9.0.254", 300, boot),
            default_route(4, "10.9.0.1", 200, RouteProtocol::Dhcp),
            default_route(4, "10.9.0.77", 0, RouteProtocol::Other(73)), // hcpe's own: never learned from
        ];
        assert_eq!(pick_gateway(&routes, 4), Some("10.9.0.1".parse().unwrap()), "lowest metric, not hcpe's");
        assert_eq!(pick_gateway(&routes, 5), None);
        let mut in_table = default_route(4, "10.9.0.1", 0, boot);
        in_table.header.table = 100;
        assert_eq!(pick_gateway(&[in_table.clone()], 4), None, "only the main table");
        let msg = NetlinkMessage::from(RouteNetlinkMessage::NewRoute(routes[2].clone()));
        assert_eq!(classify(&msg), Some(LinkEvent::DefaultRoute { ifindex: 4 }));
        let msg = NetlinkMessage::from(RouteNetlinkMessage::NewRoute(routes[3].clone()));
        assert_eq!(classify(&msg), None, "hcpe's own route changes are not events");
    }
}
