//! Destination policy: may the hag open a TCP connection to this address on a CPE's behalf?
//!
//! The hag is an open relay into whatever network it sits in, so by default it refuses everything that is not
//! a public unicast destination (loopback, RFC 1918, link-local, CGNAT, multicast, unique-local, unspecified,
//! reserved/broadcast) and its own addresses. The operator's `allow`/`deny` prefix lists override that; when
//! both lists match, the longer prefix decides and a tie denies.
//!
//! Invariants:
//! - An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is judged exactly as the IPv4 address it maps, and an
//!   IPv6 address that carries an IPv4 address the network would deliver to (IPv4-compatible `::a.b.c.d`,
//!   NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) is judged as itself *and* as that IPv4 address: no IPv6 form is
//!   a way around an IPv4 rule. Forms whose IPv4 target cannot be read off the address (Teredo, local-use
//!   NAT64) are built-in special ranges.
//! - The hag's own addresses are denied as they are at the time of the check: besides the addresses known at
//!   start, [`PrefixPolicy::with_kernel_check`] asks the kernel whether the address is local now (a bind of
//!   a UDP socket to it), so an address added later is denied too. That bind is the policy's one IO; the
//!   rest is pure.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why a destination was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// A prefix of the operator's `deny` list matched (the longest match).
    DenyList(IpNet),
    /// A built-in special-purpose range (name of the range).
    Special(&'static str),
    /// One of the hag's own addresses.
    OwnAddress,
    /// Port 0: no server listens there; a connect to it is refused by the destination or means "any port".
    PortZero,
    /// An IPv6 address whose embedded IPv4 address (NAT64, 6to4, IPv4-compatible) is denied.
    Embedded {
        /// The IPv4 address the network would deliver to.
        v4: Ipv4Addr,
        /// Why that address is denied.
        why: Box<Denied>,
    },
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denied::DenyList(p) => write!(f, "in deny list prefix {p}"),
            Denied::Special(name) => write!(f, "{name} address"),
            Denied::OwnAddress => write!(f, "one of the hag's own addresses"),
            Denied::PortZero => write!(f, "port 0"),
            Denied::Embedded { v4, why } => write!(f, "it carries IPv4 address {v4}, which is denied: {why}"),
        }
    }
}

/// A destination policy: small, swappable, testable alone.
pub trait DestinationPolicy: Send + Sync {
    /// Ok when the hag may connect to `dst`.
    fn check(&self, dst: IpAddr) -> Result<(), Denied>;

    /// Whether the operator named `dst` in an allow list (so it is reached even where RFC 8803 would have
    /// the converter refuse it, as for a loopback address: a cache on the gateway itself).
    fn allows_explicitly(&self, _dst: IpAddr) -> bool {
        false
    }
}

/// Built-in ranges no CPE may reach unless allowed: (prefix, name).
const SPECIAL: &[(&str, &str)] = &[
    ("0.0.0.0/8", "unspecified (this-network)"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared CGNAT (RFC 6598)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved or broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fe80::/10", "link-local"),
    ("fc00::/7", "unique local"),
    ("ff00::/8", "multicast"),
    ("2001::/32", "Teredo (RFC 4380)"),
    ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"),
];

/// The IPv4 address an IPv6 destination carries and the network would deliver to: IPv4-compatible
/// (`::a.b.c.d`, deprecated but still routed by some stacks), the NAT64 well-known prefix (`64:ff9b::/96`,
/// RFC 6052) and 6to4 (`2002:aabb:ccdd::/48`, RFC 3056). `::` and `::1` are IPv6's own unspecified and
/// loopback addresses, not IPv4-compatible ones. (IPv4-mapped addresses are canonicalised before this.)
pub fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let o = v6.octets();
    let last32 = || Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if o[..12].iter().all(|b| *b == 0) {
        return (v6 != Ipv6Addr::UNSPECIFIED && v6 != Ipv6Addr::LOCALHOST).then(last32);
    }
    if o[..12] == [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0] {
        return Some(last32());
    }
    if o[..2] == [0x20, 0x02] {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    None
}

/// Whether `ip` is local to this host now: a UDP socket can bind to it. Only meaningful while
/// `ip_nonlocal_bind` is off (see [`PrefixPolicy::with_kernel_check`]).
fn bound_locally(ip: IpAddr) -> bool {
    let domain = if ip.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    socket2::Socket::new(domain, socket2::Type::DGRAM, None)
        .and_then(|s| s.bind(&std::net::SocketAddr::new(ip, 0).into()))
        .is_ok()
}

/// Whether this network namespace lets sockets bind to addresses it does not have (then a bind says nothing).
fn nonlocal_bind_allowed() -> bool {
    ["/proc/sys/net/ipv4/ip_nonlocal_bind", "/proc/sys/net/ipv6/ip_nonlocal_bind"]
        .iter()
        .any(|p| std::fs::read_to_string(p).is_ok_and(|v| v.trim() != "0"))
}

/// The built-in special range `ip` falls in, if any (mapped IPv4 judged as IPv4).
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    let ip = ip.to_canonical();
    SPECIAL.iter().find(|(p, _)| p.parse::<IpNet>().expect("built-in prefix").contains(&ip)).map(|(_, n)| *n)
}

/// Prefix lists over built-in ranges over own addresses: the hag's policy.
#[derive(Debug, Clone)]
pub struct PrefixPolicy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    special: Vec<(IpNet, &'static str)>,
    own: HashSet<IpAddr>,
    /// Also ask the kernel whether an address is local at the time of the check.
    kernel_check: bool,
}

impl PrefixPolicy {
    /// A policy with the operator's lists and the hag's own addresses (see [`local_addresses`]).
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>, own: impl IntoIterator<Item = IpAddr>) -> Self {
        let special = SPECIAL.iter().map(|(p, n)| (p.parse().expect("built-in prefix"), *n)).collect();
        let canon = |n: IpNet| match n {
            // A mapped IPv6 prefix written by the operator means the IPv4 prefix it maps.
            IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
                Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).expect("length <= 32"),
                None => n,
            },
            other => other,
        };
        PrefixPolicy {
            allow: allow.into_iter().map(canon).collect(),
            deny: deny.into_iter().map(canon).collect(),
            special,
            own: own.into_iter().map(|a| a.to_canonical()).collect(),
            kernel_check: false,
        }
    }

    /// Also denies any address that is local to this host at the time of the check (one that was added
    /// after start, or that a local route covers), asking the kernel with a bind. Not when the namespace
    /// allows binding to non-local addresses (`ip_nonlocal_bind`): then only the addresses known at start
    /// count, and a warning says so.
    pub fn with_kernel_check(mut self) -> Self {
        if nonlocal_bind_allowed() {
            tracing::warn!(
                "net.ipv4/ipv6.ip_nonlocal_bind is on: hag cannot tell its own addresses from others at connect \
                 time and denies only those it had at start (and reloads)"
            );
        } else {
            self.kernel_check = true;
        }
        self
    }

    /// The verdict on `ip` as written (canonical), without looking at an IPv4 address it may carry.
    fn judge(&self, ip: IpAddr) -> Result<(), Denied> {
        match (longest(&self.allow, &ip), longest(&self.deny, &ip)) {
            (Some(a), Some(d)) if a.prefix_len() > d.prefix_len() => return Ok(()),
            (_, Some(d)) => return Err(Denied::DenyList(*d)),
            (Some(_), None) => return Ok(()),
            (None, None) => {}
        }
        if let Some((_, name)) = self.special.iter().find(|(p, _)| p.contains(&ip)) {
            return Err(Denied::Special(name));
        }
        if self.own.contains(&ip) || (self.kernel_check && bound_locally(ip)) {
            return Err(Denied::OwnAddress);
        }
        Ok(())
    }
}

fn longest<'a>(list: &'a [IpNet], ip: &IpAddr) -> Option<&'a IpNet> {
    list.iter().filter(|p| p.contains(ip)).max_by_key(|p| p.prefix_len())
}

impl DestinationPolicy for PrefixPolicy {
    fn allows_explicitly(&self, dst: IpAddr) -> bool {
        let ip = dst.to_canonical();
        match (longest(&self.allow, &ip), longest(&self.deny, &ip)) {
            (Some(a), Some(d)) => a.prefix_len() > d.prefix_len(),
            (allow, _) => allow.is_some(),
        }
    }

    fn check(&self, dst: IpAddr) -> Result<(), Denied> {
        let ip = dst.to_canonical();
        self.judge(ip)?;
        // An allowed IPv6 prefix does not open the IPv4 address it carries: allow that IPv4 prefix for it.
        if let IpAddr::V6(v6) = ip
            && let Some(v4) = embedded_ipv4(v6)
        {
            self.judge(IpAddr::V4(v4)).map_err(|why| Denied::Embedded { v4, why: Box::new(why) })?;
        }
        Ok(())
    }
}

/// The addresses configured on this host's interfaces (in the current network namespace), via getifaddrs(3).
pub fn local_addresses() -> io::Result<Vec<IpAddr>> {
    // Hand-written over libc: a dozen lines, and no workspace crate wraps getifaddrs.
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we own and free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr is non-null and points to a sockaddr whose family says its real type.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: family AF_INET means the storage is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()));
            } else if family == libc::AF_INET6 {
                // SAFETY: family AF_INET6 means the storage is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed exactly once; no reference into it outlives this.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn special_ranges_are_denied_by_default() {
        let p = PrefixPolicy::new(vec![], vec![], []);
        for dst in [
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.16.5.5",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "224.0.0.1",
            "239.1.2.3",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:192.168.0.1",
            "::ffff:169.254.1.1",
            "::ffff:100.64.0.1",
            "::ffff:0.0.0.0",
            "::ffff:255.255.255.255",
        ] {
            assert!(matches!(p.check(ip(dst)), Err(Denied::Special(_))), "{dst} must be denied");
        }
    }

    #[test]
    fn public_addresses_are_allowed_by_default() {
        let p = PrefixPolicy::new(vec![], vec![], []);
        for dst in ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2001:4860::8888", "::ffff:8.8.8.8"] {
            assert_eq!(p.check(ip(dst)), Ok(()), "{dst} must be allowed");
        }
    }

    #[test]
    fn own_addresses_are_denied_also_in_mapped_form() {
        let p = PrefixPolicy::new(vec![], vec![], [ip("203.0.113.5"), ip("2001:db8::5")]);
        assert_eq!(p.check(ip("203.0.113.5")), Err(Denied::OwnAddress));
        assert_eq!(p.check(ip("::ffff:203.0.113.5")), Err(Denied::OwnAddress));
        assert_eq!(p.check(ip("2001:db8::5")), Err(Denied::OwnAddress));
        assert_eq!(p.check(ip("203.0.113.6")), Ok(()));
    }

    #[test]
    fn allow_list_overrides_builtins_and_deny_list_adds() {
        let p = PrefixPolicy::new(nets(&["10.9.0.0/16", "::1/128"]), nets(&["8.8.8.0/24", "10.9.9.0/24"]), []);
        assert_eq!(p.check(ip("10.9.1.1")), Ok(()));
        assert_eq!(p.check(ip("::ffff:10.9.1.1")), Ok(()));
        assert_eq!(p.check(ip("::1")), Ok(()));
        assert!(matches!(p.check(ip("10.8.1.1")), Err(Denied::Special(_))));
        assert_eq!(p.check(ip("8.8.8.8")), Err(Denied::DenyList("8.8.8.0/24".parse().unwrap())));
        assert_eq!(p.check(ip("::ffff:8.8.8.8")), Err(Denied::DenyList("8.8.8.0/24".parse().unwrap())));
        // Longer deny inside an allow denies; longer allow inside a deny allows; a tie denies.
        assert!(matches!(p.check(ip("10.9.9.9")), Err(Denied::DenyList(_))));
        let p = PrefixPolicy::new(nets(&["8.8.8.8/32", "1.0.0.0/8"]), nets(&["8.8.0.0/16", "1.0.0.0/8"]), []);
        assert_eq!(p.check(ip("8.8.8.8")), Ok(()));
        assert!(p.check(ip("8.8.8.9")).is_err());
        assert!(p.check(ip("1.2.3.4")).is_err());
    }

    #[test]
    fn mapped_prefixes_in_lists_mean_ipv4() {
        let p = PrefixPolicy::new(vec![], nets(&["::ffff:8.8.8.0/120"]), []);
        assert!(matches!(p.check(ip("8.8.8.8")), Err(Denied::DenyList(_))));
    }

    #[test]
    fn allow_list_can_open_own_address() {
        let p = PrefixPolicy::new(nets(&["127.0.0.1/32"]), vec![], [ip("127.0.0.1")]);
        assert_eq!(p.check(ip("127.0.0.1")), Ok(()));
    }

    #[test]
    fn ipv6_forms_carrying_a_denied_ipv4_address_are_denied() {
        let p = PrefixPolicy::new(vec![], nets(&["198.51.100.0/24"]), [ip("203.0.113.5")]);
        let embedded = |dst: &str| match p.check(ip(dst)) {
            Err(Denied::Embedded { v4, .. }) => Some(v4.to_string()),
            other => panic!("{dst}: {other:?}"),
        };
        assert_eq!(embedded("::127.0.0.1").as_deref(), Some("127.0.0.1"), "IPv4-compatible");
        assert_eq!(embedded("::10.1.2.3").as_deref(), Some("10.1.2.3"));
        assert_eq!(embedded("64:ff9b::10.1.2.3").as_deref(), Some("10.1.2.3"), "NAT64 well-known prefix");
        assert_eq!(embedded("64:ff9b::198.51.100.7").as_deref(), Some("198.51.100.7"), "deny list through NAT64");
        assert_eq!(embedded("2002:7f00:1::1").as_deref(), Some("127.0.0.1"), "6to4");
        assert_eq!(embedded("2002:cb00:7105::1").as_deref(), Some("203.0.113.5"), "6to4 of an own address");
        for dst in ["2001:0:4136:e378:8000:63bf:3fff:fdd2", "64:ff9b:1::a00:1"] {
            assert!(matches!(p.check(ip(dst)), Err(Denied::Special(_))), "{dst}");
        }
        // Public IPv4 behind the same forms passes; `::` and `::1` are IPv6's own.
        for dst in ["64:ff9b::8.8.8.8", "2002:808:808::1", "::8.8.8.8"] {
            assert_eq!(p.check(ip(dst)), Ok(()), "{dst}");
        }
        assert!(matches!(p.check(ip("::1")), Err(Denied::Special("loopback"))));
        assert!(matches!(p.check(ip("::")), Err(Denied::Special(_))));
    }

    #[test]
    fn the_kernel_says_which_addresses_are_local_now() {
        assert!(bound_locally(ip("127.0.0.1")), "127.0.0.1 is local in every namespace");
        assert!(bound_locally(ip("::1")));
        if !nonlocal_bind_allowed() {
            assert!(!bound_locally(ip("192.0.2.254")), "a documentation address is nobody's here");
            assert!(PrefixPolicy::new(vec![], vec![], []).with_kernel_check().kernel_check);
        }
    }

    #[test]
    fn local_addresses_include_loopback() {
        let addrs = local_addresses().unwrap();
        assert!(addrs.contains(&ip("127.0.0.1")), "{addrs:?}");
    }
}
