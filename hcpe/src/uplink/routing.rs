//! Source-based policy routing per uplink: `ip rule add from <src> lookup <table>` and a default route via the
//! uplink's gateway (or straight out of its device when it has none) in that table, so a socket bound to an
//! uplink's address leaves through that uplink whatever the main table says. MPTCP subflows and probes rely
//! on it.
//!
//! `common::net` has rules by destination and device routes only; the `from` rule and the gateway route are
//! built here with the same rtnetlink crate and the marker convention of `common::net`, so
//! [`common::net::Netlink::flush_marked`] with [`RT_PROTO_UPLINK`] removes exactly this state.
//!
//! With `routing.default_route` the main table's default route (metric 0) also belongs to the uplink
//! manager: [`set_main_default`] points it at the best uplink's gateway, so non-TCP traffic fails over too.
//!
//! Invariants:
//! - everything added carries [`RT_PROTO_UPLINK`] (not hcpe's interception marker, so each part cleans its own);
//! - [`install`] is idempotent: it flushes the marker first, then adds (a crash leaves no duplicate);
//! - rule priorities are `rule_priority + 950 + index`, inside hcpe's block and after its LAN rules (which
//!   match `iif <lan>` only, so they never see locally generated packets anyway).

use std::net::IpAddr;

use common::net::{NetError, Netlink};
use netlink_packet_route::route::{RouteAttribute, RouteProtocol, RouteScope, RouteType};
use netlink_packet_route::rule::{RuleAction, RuleAttribute};
use rtnetlink::RouteMessageBuilder;

/// rtnetlink protocol number marking the uplink manager's rules and routes (hcpe's interception uses 72).
pub const RT_PROTO_UPLINK: u8 = 73;
/// Offset of the first uplink rule from `routing.rule_priority`.
pub const RULE_OFFSET: u32 = 950;

/// One uplink's routing in one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkRoute {
    pub source: IpAddr,
    pub gateway: Option<IpAddr>,
    pub ifindex: u32,
    pub table: u32,
    pub priority: u32,
}

/// Removes leftovers, then adds the rule and the default route of each entry. Returns how many objects were
/// added.
pub async fn install(nl: &Netlink, handle: &rtnetlink::Handle, routes: &[UplinkRoute]) -> Result<usize, NetError> {
    nl.flush_marked(RT_PROTO_UPLINK).await?;
    let mut added = 0;
    for r in routes {
        add_default_route(handle, r).await?;
        add_source_rule(handle, r).await?;
        added += 2;
    }
    Ok(added)
}

/// Removes everything [`install`] added.
pub async fn remove(nl: &Netlink) -> Result<common::net::Flushed, NetError> {
    nl.flush_marked(RT_PROTO_UPLINK).await
}

/// Moves one uplink's routing from `old` to `new` (its address or gateway changed): rules of sources that
/// went are deleted, the table's default route is replaced, rules of new sources added. Other uplinks'
/// rules are not touched, so their traffic never sees a gap.
pub async fn update(
    nl: &Netlink,
    handle: &rtnetlink::Handle,
    old: &[UplinkRoute],
    new: &[UplinkRoute],
) -> Result<(), NetError> {
    for o in old.iter().filter(|o| !new.iter().any(|n| same_rule(n, o))) {
        delete_source_rule(nl, handle, o).await?;
    }
    for n in new {
        add_default_route(handle, n).await?;
        if !old.iter().any(|o| same_rule(n, o)) {
            add_source_rule(handle, n).await?;
        }
    }
    Ok(())
}

/// Re-adds the default routes of `routes` (replacing): the kernel drops routes through an interface that
/// goes administratively down, the rules stay.
pub async fn ensure_routes(handle: &rtnetlink::Handle, routes: &[UplinkRoute]) -> Result<(), NetError> {
    for r in routes {
        add_default_route(handle, r).await?;
    }
    Ok(())
}

/// The main table's id.
pub const MAIN_TABLE: u32 = 254;

/// Points the main table's default route (metric 0, marked) of one family at `gateway` out of `ifindex`
/// (no gateway: straight out of a point-to-point interface). `replace`: hcpe's own route is there already and is overwritten in one step (no gap);
/// otherwise it is created exclusively, so a default route the system installed with the same metric is
/// never clobbered (that fails with `EEXIST`: the firmware manages the default route itself).
pub async fn set_main_default(
    handle: &rtnetlink::Handle,
    v4: bool,
    gateway: Option<IpAddr>,
    ifindex: u32,
    replace: bool,
) -> Result<(), NetError> {
    let family_of: IpAddr =
        if v4 { std::net::Ipv4Addr::UNSPECIFIED.into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() };
    let r = UplinkRoute { source: family_of, gateway, ifindex, table: MAIN_TABLE, priority: 0 };
    let msg = default_route_message(&r);
    let what = format!("setting the main default route via {gateway:?} dev {ifindex}");
    let req = handle.route().add(msg);
    let req = if replace { req.replace() } else { req };
    req.execute().await.map_err(err(what))
}

/// Removes hcpe's main-table default route of `v4`'s family, if there is one.
pub async fn del_main_default(nl: &Netlink, handle: &rtnetlink::Handle, v4: bool) -> Result<(), NetError> {
    let family = if v4 { common::net::Family::V4 } else { common::net::Family::V6 };
    for route in nl.routes(family).await? {
        let main = route.header.table == MAIN_TABLE as u8
            || route.attributes.iter().any(|a| matches!(a, RouteAttribute::Table(t) if *t == MAIN_TABLE));
        if main
            && route.header.protocol == RouteProtocol::Other(RT_PROTO_UPLINK)
            && route.header.destination_prefix_length == 0
        {
            match handle.route().del(route).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => {}
                Err(e) => return Err(err("deleting the main default route".into())(e)),
            }
        }
    }
    Ok(())
}

fn same_rule(a: &UplinkRoute, b: &UplinkRoute) -> bool {
    (a.source, a.table, a.priority) == (b.source, b.table, b.priority)
}

async fn delete_source_rule(nl: &Netlink, handle: &rtnetlink::Handle, r: &UplinkRoute) -> Result<(), NetError> {
    let family = if r.source.is_ipv4() { common::net::Family::V4 } else { common::net::Family::V6 };
    for rule in nl.rules(family).await? {
        let source = rule.attributes.iter().find_map(|a| match a {
            RuleAttribute::Source(ip) => Some(*ip),
            _ => None,
        });
        if common::net::rule_protocol(&rule) == Some(RT_PROTO_UPLINK)
            && source == Some(r.source)
            && common::net::rule_priority(&rule) == r.priority
        {
            handle.rule().del(rule).execute().await.map_err(err(format!("deleting rule from {}", r.source)))?;
        }
    }
    Ok(())
}

fn err(what: String) -> impl FnOnce(rtnetlink::Error) -> NetError {
    move |source| NetError::Netlink { what, source }
}

async fn add_source_rule(handle: &rtnetlink::Handle, r: &UplinkRoute) -> Result<(), NetError> {
    let req = handle.rule().add().priority(r.priority).table_id(r.table).action(RuleAction::ToTable);
    let what = format!("adding rule from {} lookup {}", r.source, r.table);
    let marker = RuleAttribute::Protocol(RouteProtocol::Other(RT_PROTO_UPLINK));
    match r.source {
        IpAddr::V4(a) => {
            let mut q = req.v4().source_prefix(a, 32);
            q.message_mut().attributes.push(marker);
            q.execute().await.map_err(err(what))
        }
        IpAddr::V6(a) => {
            let mut q = req.v6().source_prefix(a, 128);
            q.message_mut().attributes.push(marker);
            q.execute().await.map_err(err(what))
        }
    }
}

async fn add_default_route(handle: &rtnetlink::Handle, r: &UplinkRoute) -> Result<(), NetError> {
    let msg = default_route_message(r);
    let what = format!("adding default route via {:?} dev {} table {}", r.gateway, r.ifindex, r.table);
    handle.route().add(msg).replace().execute().await.map_err(err(what))
}

fn default_route_message(r: &UplinkRoute) -> netlink_packet_route::route::RouteMessage {
    let proto = RouteProtocol::Other(RT_PROTO_UPLINK);
    match (r.source, r.gateway) {
        (IpAddr::V4(_), gw) => {
            let mut b = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .output_interface(r.ifindex)
                .table_id(r.table)
                .protocol(proto)
                .kind(RouteType::Unicast);
            b = match gw {
                Some(IpAddr::V4(g)) => b.gateway(g).scope(RouteScope::Universe),
                _ => b.scope(RouteScope::Link),
            };
            b.build()
        }
        (IpAddr::V6(_), gw) => {
            let mut b = RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .output_interface(r.ifindex)
                .table_id(r.table)
                .protocol(proto)
                .kind(RouteType::Unicast);
            if let Some(IpAddr::V6(g)) = gw {
                b = b.gateway(g);
            }
            b.build()
        }
    }
}
