//! rtnetlink helpers for the daemons' routing state: policy rules, routes in a table, interface addresses.
//!
//! Invariants:
//! - everything a daemon adds through [`Netlink::add_rule`] / [`Netlink::add_route`] carries the daemon's
//!   marker, the rtnetlink `protocol` number (`FRA_PROTOCOL` on rules, `rtm_protocol` on routes), so
//!   [`Netlink::flush_marked`] finds exactly that state again: after a crash (idempotent start) and on exit;
//! - nothing here touches state without that marker;
//! - works in whichever network namespace the calling thread is in when [`Netlink::new`] runs.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt as _;
use ipnet::IpNet;
use netlink_packet_route::route::{RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, IpProtocol};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

/// Errors of the rtnetlink helpers.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The netlink socket could not be opened.
    #[error("opening rtnetlink socket: {0}")]
    Socket(#[source] io::Error),
    /// The kernel refused a request.
    #[error("{what}: {source}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// An interface name does not exist.
    #[error("no interface named {0}")]
    NoSuchInterface(String),
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Netlink { what, source }
}

/// Address family of a rule or route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }
}

/// A policy rule: `ip rule add priority P [iif I] [ipproto tcp] [to PREFIX] lookup TABLE protocol MARKER`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub family: Family,
    pub priority: u32,
    pub iif: Option<String>,
    /// Match only TCP.
    pub tcp_only: bool,
    /// Destination prefix (its family must match `family`).
    pub to: Option<IpNet>,
    pub table: u32,
    /// Marker: rtnetlink protocol number of whoever owns the rule.
    pub protocol: u8,
}

/// A unicast route `PREFIX dev IFINDEX table T proto MARKER` (scope link, no gateway: a point-to-point device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRoute {
    pub dst: IpNet,
    pub ifindex: u32,
    pub table: u32,
    pub protocol: u8,
}

/// How many marked objects [`Netlink::flush_marked`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flushed {
    pub rules: usize,
    pub routes: usize,
}

/// An rtnetlink connection in the current network namespace.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a connection and spawns its driver on the current tokio runtime.
    pub fn new() -> Result<Netlink, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Socket)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// Adds a rule; an identical existing rule is an error (`EEXIST`) so callers flush first.
    pub async fn add_rule(&self, rule: &Rule) -> Result<(), NetError> {
        let mut req = self.handle.rule().add().priority(rule.priority).table_id(rule.table).action(RuleAction::ToTable);
        if let Some(iif) = &rule.iif {
            req = req.input_interface(iif.clone());
        }
        let what = format!("adding rule {rule:?}");
        match (rule.family, rule.to) {
            (Family::V4, to) => {
                let mut r = req.v4();
                if let Some(IpNet::V4(n)) = to {
                    r = r.destination_prefix(n.addr(), n.prefix_len());
                }
                push_rule_extras(r.message_mut(), rule);
                r.execute().await.map_err(nl(what))
            }
            (Family::V6, to) => {
                let mut r = req.v6();
                if let Some(IpNet::V6(n)) = to {
                    r = r.destination_prefix(n.addr(), n.prefix_len());
                }
                push_rule_extras(r.message_mut(), rule);
                r.execute().await.map_err(nl(what))
            }
        }
    }

    /// Every rule of `family` (raw messages, for inspection and deletion).
    pub async fn rules(&self, family: Family) -> Result<Vec<RuleMessage>, NetError> {
        let v = match family {
            Family::V4 => IpVersion::V4,
            Family::V6 => IpVersion::V6,
        };
        self.handle.rule().get(v).execute().try_collect().await.map_err(nl("listing rules"))
    }

    /// Adds a device route; replaces an existing one with the same key.
    pub async fn add_route(&self, route: &DeviceRoute) -> Result<(), NetError> {
        let msg = match route.dst {
            IpNet::V4(n) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(n.addr(), n.prefix_len())
                .output_interface(route.ifindex)
                .table_id(route.table)
                .protocol(RouteProtocol::Other(route.protocol))
                .scope(RouteScope::Link)
                .kind(RouteType::Unicast)
                .build(),
            IpNet::V6(n) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(n.addr(), n.prefix_len())
                .output_interface(route.ifindex)
                .table_id(route.table)
                .protocol(RouteProtocol::Other(route.protocol))
                .kind(RouteType::Unicast)
                .build(),
        };
        self.handle.route().add(msg).replace().execute().await.map_err(nl(format!("adding route {route:?}")))
    }

    /// Every route of `family` in every table.
    pub async fn routes(&self, family: Family) -> Result<Vec<RouteMessage>, NetError> {
        let msg = match family {
            Family::V4 => RouteMessageBuilder::<Ipv4Addr>::new().table_id(0).build(),
            Family::V6 => RouteMessageBuilder::<Ipv6Addr>::new().table_id(0).build(),
        };
        let all: Vec<RouteMessage> =
            self.handle.route().get(msg).execute().try_collect().await.map_err(nl("listing routes"))?;
        Ok(all)
    }

    /// Removes every rule and route (both families, all tables) carrying `protocol`.
    pub async fn flush_marked(&self, protocol: u8) -> Result<Flushed, NetError> {
        let mut out = Flushed::default();
        for family in [Family::V4, Family::V6] {
            for rule in self.rules(family).await? {
                if rule_protocol(&rule) == Some(protocol) {
                    self.handle.rule().del(rule).execute().await.map_err(nl("deleting marked rule"))?;
                    out.rules += 1;
                }
            }
            for route in self.routes(family).await? {
                if route.header.protocol == RouteProtocol::Other(protocol) {
                    match self.handle.route().del(route).execute().await {
                        Ok(()) => out.routes += 1,
                        // Gone meanwhile (e.g. its device vanished): that is what we wanted.
                        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => {}
                        Err(e) => return Err(nl("deleting marked route")(e)),
                    }
                }
            }
        }
        Ok(out)
    }

    /// Counts rules and routes carrying `protocol` (what a test or `--check` wants to see).
    pub async fn count_marked(&self, protocol: u8) -> Result<Flushed, NetError> {
        let mut out = Flushed::default();
        for family in [Family::V4, Family::V6] {
            out.rules += self.rules(family).await?.iter().filter(|r| rule_protocol(r) == Some(protocol)).count();
            out.routes += self
                .routes(family)
                .await?
                .iter()
                .filter(|r| r.header.protocol == RouteProtocol::Other(protocol))
                .count();
        }
        Ok(out)
    }

    /// Addresses with prefix length on the interface `ifindex` (both families).
    pub async fn addresses(&self, ifindex: u32) -> Result<Vec<IpNet>, NetError> {
        use netlink_packet_route::address::AddressAttribute;
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(ifindex)
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing addresses"))?;
        let mut out = Vec::new();
        for m in msgs {
            let addr = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = addr.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = addr
                && let Ok(net) = IpNet::new(ip, m.header.prefix_len)
            {
                out.push(net);
            }
        }
        Ok(out)
    }
}

/// Interface index by name in the current namespace.
pub fn ifindex(name: &str) -> Result<u32, NetError> {
    let c = std::ffi::CString::new(name).map_err(|_| NetError::NoSuchInterface(name.to_owned()))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 { Err(NetError::NoSuchInterface(name.to_owned())) } else { Ok(idx) }
}

fn push_rule_extras(msg: &mut RuleMessage, rule: &Rule) {
    msg.attributes.push(RuleAttribute::Protocol(RouteProtocol::Other(rule.protocol)));
    if rule.tcp_only {
        msg.attributes.push(RuleAttribute::IpProtocol(IpProtocol::Tcp));
    }
    debug_assert!(rule.to.is_none_or(|t| Family::of(&t) == rule.family));
    debug_assert!(matches!(
        (rule.family, msg.header.family),
        (Family::V4, AddressFamily::Inet) | (Family::V6, AddressFamily::Inet6)
    ));
}

/// The marker of a rule, if it has one.
pub fn rule_protocol(rule: &RuleMessage) -> Option<u8> {
    rule.attributes.iter().find_map(|a| match a {
        RuleAttribute::Protocol(p) => Some(u8::from(*p)),
        _ => None,
    })
}

/// Priority of a rule (0 when absent).
pub fn rule_priority(rule: &RuleMessage) -> u32 {
    rule.attributes.iter().find_map(|a| if let RuleAttribute::Priority(p) = a { Some(*p) } else { None }).unwrap_or(0)
}

/// The destination address of a route message, if any.
pub fn route_destination(route: &RouteMessage) -> Option<IpAddr> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => match d {
            netlink_packet_route::route::RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
            netlink_packet_route::route::RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
            _ => None,
        },
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a fresh thread moved into a fresh, unnamed network namespace (gone when the thread ends),
    /// so these tests never touch the host's routing. `None` when not permitted (not root).
    fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        std::thread::spawn(move || {
            // SAFETY: unshare only affects the calling thread's namespace membership.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                eprintln!("skipping: cannot create a network namespace ({})", io::Error::last_os_error());
                return None;
            }
            Some(f())
        })
        .join()
        .expect("test thread")
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    const MARK: u8 = 0x5c;

    /// The calling thread's namespace is inherited by the child `ip`.
    fn link_up(name: &str) {
        let status = std::process::Command::new("ip").args(["link", "set", name, "up"]).status();
        assert!(status.map(|s| s.success()).unwrap_or(false), "ip link set {name} up");
    }

    #[test]
    fn rules_and_routes_are_added_and_flushed_by_marker() {
        let Some(result) = in_private_netns(|| {
            rt().block_on(async {
                let nl = Netlink::new().unwrap();
                let lo = ifindex("lo").unwrap();
                link_up("lo");
                // Somebody else's rule, without our marker: must survive the flush.
                let foreign = Rule {
                    family: Family::V4,
                    priority: 4000,
                    iif: None,
                    tcp_only: false,
                    to: Some("192.0.2.0/24".parse().unwrap()),
                    table: 254,
                    protocol: 4,
                };
                nl.add_rule(&foreign).await.unwrap();
                for (family, to) in [(Family::V4, "198.51.100.0/24"), (Family::V6, "2001:db8::/32")] {
                    nl.add_rule(&Rule {
                        family,
                        priority: 5000,
                        iif: Some("lan0".into()),
                        tcp_only: true,
                        to: Some(to.parse().unwrap()),
                        table: 254,
                        protocol: MARK,
                    })
                    .await
                    .unwrap();
                    nl.add_rule(&Rule {
                        family,
                        priority: 5500,
                        iif: Some("lan0".into()),
                        tcp_only: true,
                        to: None,
                        table: 777,
                        protocol: MARK,
                    })
                    .await
                    .unwrap();
                }
                let r4 = nl.rules(Family::V4).await.unwrap();
                let ours: Vec<_> = r4.iter().filter(|r| rule_protocol(r) == Some(MARK)).collect();
                assert_eq!(ours.len(), 2);
                assert!(ours.iter().any(|r| rule_priority(r) == 5500
                    && r.attributes.contains(&RuleAttribute::IpProtocol(IpProtocol::Tcp))
                    && r.attributes.contains(&RuleAttribute::Iifname("lan0".into()))));
                nl.add_route(&DeviceRoute {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    ifindex: lo,
                    table: 777,
                    protocol: MARK,
                })
                .await
                .unwrap();
                nl.add_route(&DeviceRoute { dst: "::/0".parse().unwrap(), ifindex: lo, table: 777, protocol: MARK })
                    .await
                    .unwrap();
                // Adding again replaces instead of failing.
                nl.add_route(&DeviceRoute {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    ifindex: lo,
                    table: 777,
                    protocol: MARK,
                })
                .await
                .unwrap();
                let counted = nl.count_marked(MARK).await.unwrap();
                let flushed = nl.flush_marked(MARK).await.unwrap();
                let after = nl.count_marked(MARK).await.unwrap();
                let foreign_left = nl.rules(Family::V4).await.unwrap().iter().any(|r| rule_priority(r) == 4000);
                let again = nl.flush_marked(MARK).await.unwrap();
                (counted, flushed, after, foreign_left, again)
            })
        }) else {
            return;
        };
        let (counted, flushed, after, foreign_left, again) = result;
        assert_eq!(counted, Flushed { rules: 4, routes: 2 });
        assert_eq!(flushed, counted);
        assert_eq!(after, Flushed::default());
        assert!(foreign_left, "rules without our marker are left alone");
        assert_eq!(again, Flushed::default(), "flushing twice is harmless");
    }

    #[test]
    fn addresses_of_an_interface() {
        let Some(addrs) = in_private_netns(|| {
            rt().block_on(async {
                let nl = Netlink::new().unwrap();
                let lo = ifindex("lo").unwrap();
                // A fresh namespace's lo is down and has no address until set up.
                link_up("lo");
                nl.addresses(lo).await.unwrap()
            })
        }) else {
            return;
        };
        assert!(addrs.contains(&"127.0.0.1/8".parse().unwrap()), "{addrs:?}");
    }

    #[test]
    fn unknown_interface_is_an_error() {
        assert!(matches!(ifindex("no-such-if0"), Err(NetError::NoSuchInterface(_))));
    }
}
