//! Destination policy: may the hag open a TCP connection to this address on a CPE's behalf?
//!
//! The hag is an open relay into whatever network it sits in, so by default it refuses everything that is not
//! a public unicast destination (loopback, RFC 1918, link-local, CGNAT, multicast, unique-local, unspecified,
//! reserved/broadcast) and its own addresses. The operator's `allow`/`deny` prefix lists override that; when
//! both lists match, the longer prefix decides and a tie denies.
//!
//! Invariants: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is judged exactly as the IPv4 address it maps,
//! so the mapped form is never a way around an IPv4 rule. The policy is pure (no IO): [`local_addresses`]
//! is the one function here that asks the kernel, once at start.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::net::IpAddr;

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
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denied::DenyList(p) => write!(f, "in deny list prefix {p}"),
            Denied::Special(name) => write!(f, "{name} address"),
            Denied::OwnAddress => write!(f, "one of the hag's own addresses"),
        }
    }
}

/// A destination policy: small, swappable, testable alone.
pub trait DestinationPolicy: Send + Sync {
    /// Ok when the hag may connect to `dst`.
    fn check(&self, dst: IpAddr) -> Result<(), Denied>;
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
];

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
        }
    }
}

fn longest<'a>(list: &'a [IpNet], ip: &IpAddr) -> Option<&'a IpNet> {
    list.iter().filter(|p| p.contains(ip)).max_by_key(|p| p.prefix_len())
}

impl DestinationPolicy for PrefixPolicy {
    fn check(&self, dst: IpAddr) -> Result<(), Denied> {
        let ip = dst.to_canonical();
        match (longest(&self.allow, &ip), longest(&self.deny, &ip)) {
            (Some(a), Some(d)) if a.prefix_len() > d.prefix_len() => return Ok(()),
            (_, Some(d)) => return Err(Denied::DenyList(*d)),
            (Some(_), None) => return Ok(()),
            (None, None) => {}
        }
        if let Some((_, name)) = self.special.iter().find(|(p, _)| p.contains(&ip)) {
            return Err(Denied::Special(name));
        }
        if self.own.contains(&ip) {
            return Err(Denied::OwnAddress);
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
    fn local_addresses_include_loopback() {
        let addrs = local_addresses().unwrap();
        assert!(addrs.contains(&ip("127.0.0.1")), "{addrs:?}");
    }
}
