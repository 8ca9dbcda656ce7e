//! The hybrid-access topology: `lan` (client) — `cpe` — `dsl` / `lte` (link emulators) — `hag`
//! — `inet` (servers), IPv4 and IPv6 on every link, unique namespace names per run.
//!
//! Owns the namespaces, veths, addresses, routes and the two [`LinkEmulator`]s. Dropping a
//! [`Testbed`] stops the emulators first (their sockets would keep the namespaces alive), then
//! deletes the namespaces (which removes every veth). Children started with
//! [`Netns::spawn`](crate::Netns::spawn) are separate guards: drop them before the testbed
//! (declare them after it).
//!
//! Addressing (the same in every testbed; namespaces keep testbeds apart). All addresses are
//! from the benchmarking ranges 198.18.0.0/15 and 2001:2::/48.
//!
//! ```text
//! lan  eth0 198.18.1.2  2001:2:0:1::2 ── lan0 198.18.1.1 2001:2:0:1::1  cpe
//! cpe  dsl0 198.18.2.2  2001:2:0:2::2 ── [dsl: a ⇄ emulator ⇄ b] ── dsl0 198.18.2.1 2001:2:0:2::1  hag
//! cpe  lte0 198.18.3.2  2001:2:0:3::2 ── [lte: a ⇄ emulator ⇄ b] ── lte0 198.18.3.1 2001:2:0:3::1  hag
//! hag  inet0 198.18.4.1 2001:2:0:4::1 ── eth0 198.18.4.2 2001:2:0:4::2  inet (server)
//! hag  lo   198.18.0.1/32  2001:2::1/128   (the HAG service address, reachable over both links)
//! ```
//!
//! Routing: in `cpe`, source-based policy rules send each uplink address out of its own link
//! (`from 198.18.2.2 lookup 100` -> via dsl, `from 198.18.3.2 lookup 101` -> via lte, same for
//! IPv6), so an MPTCP connection to the service address gets one subflow per source address.
//! The main table has default routes via dsl (metric 100) and lte (metric 200) unless
//! [`TestbedConfig::cpe_default_routes`] is false. `hag` routes the LAN prefix via dsl (so plain
//! routed forwarding lan <-> inet works as a baseline) and forwards; `inet` and `lan` have
//! default routes towards the middle.
//!
//! ```no_run
//! use tests::testbed::{Testbed, TestbedConfig};
//! use tests::emulator::{Direction, LinkConfig, Shape};
//! let tb = Testbed::new(TestbedConfig {
//!     dsl: LinkConfig::symmetric(Shape::mbit(50.0).delay_ms(10.0)),
//!     lte: LinkConfig::symmetric(Shape::mbit(30.0).delay_ms(25.0)),
//!     ..TestbedConfig::default()
//! }).unwrap();
//! let hag = tb.hag.spawn(tests::bin_path("hag").to_str().unwrap(), &["--config", "/tmp/x.yaml"]).unwrap();
//! tb.dsl.cut();                       // blackhole DSL, carrier up
//! let c = tb.dsl.counters(Direction::Up);
//! tb.dsl.restore();
//! drop(hag); // children before the testbed
//! ```

use crate::emulator::{self, LinkConfig, LinkEmulator};
use crate::netns::Netns;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Errors while building a testbed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A namespace, veth, address or route operation failed.
    #[error(transparent)]
    Netns(#[from] crate::netns::Error),
    /// The link emulator failed to start.
    #[error(transparent)]
    Emulator(#[from] emulator::Error),
}

/// What to build.
#[derive(Debug, Clone)]
pub struct TestbedConfig {
    /// DSL link shape (`Up` = cpe -> hag).
    pub dsl: LinkConfig,
    /// LTE link shape.
    pub lte: LinkConfig,
    /// Install main-table default routes in `cpe` (dsl metric 100, lte metric 200). Turn off
    /// when hcpe manages them.
    pub cpe_default_routes: bool,
    /// Set TCP Fast Open sysctls for cookie-less TFO: `cpe` client (0x5), `hag` server (0x202).
    pub tfo: bool,
    /// Keep TSO/GSO on the veths into the link namespaces (fast; loss then hits whole
    /// super-frames). `false` disables them so the emulator sees MTU-sized packets.
    pub offloads: bool,
}

impl Default for TestbedConfig {
    fn default() -> Self {
        TestbedConfig {
            dsl: LinkConfig::default(),
            lte: LinkConfig { seed: 2, ..LinkConfig::default() },
            cpe_default_routes: true,
            tfo: true,
            offloads: true,
        }
    }
}

/// An address pair of one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    /// IPv4 address.
    pub v4: Ipv4Addr,
    /// IPv6 address.
    pub v6: Ipv6Addr,
}

impl Addrs {
    const fn new(v4: [u8; 4], v6_net: u16, v6_host: u16) -> Addrs {
        Addrs {
            v4: Ipv4Addr::new(v4[0], v4[1], v4[2], v4[3]),
            v6: Ipv6Addr::new(0x2001, 2, 0, v6_net, 0, 0, 0, v6_host),
        }
    }
    /// The address of the given family.
    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 { IpAddr::V6(self.v6) } else { IpAddr::V4(self.v4) }
    }
}

/// Every address of the topology (see the module docs for the picture).
pub mod addr {
    use super::Addrs;
    /// Client in `lan` (eth0).
    pub const LAN_CLIENT: Addrs = Addrs::new([198, 18, 1, 2], 1, 2);
    /// cpe's LAN side (lan0), the client's gateway.
    pub const CPE_LAN: Addrs = Addrs::new([198, 18, 1, 1], 1, 1);
    /// cpe's DSL-side address (dsl0): source of the DSL subflow.
    pub const CPE_DSL: Addrs = Addrs::new([198, 18, 2, 2], 2, 2);
    /// cpe's LTE-side address (lte0): source of the LTE subflow.
    pub const CPE_LTE: Addrs = Addrs::new([198, 18, 3, 2], 3, 2);
    /// hag's address on the DSL link (dsl0).
    pub const HAG_DSL: Addrs = Addrs::new([198, 18, 2, 1], 2, 1);
    /// hag's address on the LTE link (lte0).
    pub const HAG_LTE: Addrs = Addrs::new([198, 18, 3, 1], 3, 1);
    /// hag's service address (on lo), reachable from cpe over both links.
    pub const HAG_SERVICE: Addrs = Addrs::new([198, 18, 0, 1], 0, 1);
    /// hag's internet side (inet0), the server's gateway.
    pub const HAG_INET: Addrs = Addrs::new([198, 18, 4, 1], 4, 1);
    /// The server in `inet` (eth0).
    pub const INET_SERVER: Addrs = Addrs::new([198, 18, 4, 2], 4, 2);
    /// Policy routing table in cpe for the DSL uplink.
    pub const CPE_DSL_TABLE: u32 = 100;
    /// Policy routing table in cpe for the LTE uplink.
    pub const CPE_LTE_TABLE: u32 = 101;
}

/// Interface names (the same in every testbed; they live in different namespaces).
pub mod ifname {
    /// lan's interface towards cpe.
    pub const LAN: &str = "eth0";
    /// cpe's interface towards lan.
    pub const CPE_LAN: &str = "lan0";
    /// cpe's DSL uplink / hag's DSL-side interface.
    pub const DSL: &str = "dsl0";
    /// cpe's LTE uplink / hag's LTE-side interface.
    pub const LTE: &str = "lte0";
    /// hag's interface towards inet.
    pub const HAG_INET: &str = "inet0";
    /// inet's interface towards hag.
    pub const INET: &str = "eth0";
}

/// A built testbed. Fields are public so tests can spawn processes and run threads in any
/// namespace, and drive the link emulators.
#[derive(Debug)]
pub struct Testbed {
    /// DSL link emulator (`Up` = cpe -> hag).
    pub dsl: LinkEmulator,
    /// LTE link emulator.
    pub lte: LinkEmulator,
    /// The client's namespace.
    pub lan: Netns,
    /// The CPE's namespace (hcpe runs here).
    pub cpe: Netns,
    /// The DSL link namespace (emulator interfaces `a` towards cpe, `b` towards hag).
    pub dsl_ns: Netns,
    /// The LTE link namespace.
    pub lte_ns: Netns,
    /// The gateway's namespace (hag runs here).
    pub hag: Netns,
    /// The servers' namespace.
    pub inet: Netns,
}

impl Testbed {
    /// Builds the topology and starts both emulators. Takes well under a second.
    pub fn new(cfg: TestbedConfig) -> Result<Testbed, Error> {
        use addr::*;
        let lan = Netns::new("lan")?;
        let cpe = Netns::new("cpe")?;
        let dsl_ns = Netns::new("dsl")?;
        let lte_ns = Netns::new("lte")?;
        let hag = Netns::new("hag")?;
        let inet = Netns::new("inet")?;

        for ns in [&lan, &cpe, &hag, &inet] {
            // Link-local addresses usable at once (no 1-2 s of DAD before IPv6 works).
            ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        }
        for link in [&dsl_ns, &lte_ns] {
            // The link namespaces are pure layer 2: no IPv6 chatter of their own.
            link.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            link.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        }
        for ns in [&cpe, &hag] {
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            ns.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
            ns.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        }

        Netns::veth(&lan, ifname::LAN, &cpe, ifname::CPE_LAN)?;
        Netns::veth(&cpe, ifname::DSL, &dsl_ns, "a")?;
        Netns::veth(&dsl_ns, "b", &hag, ifname::DSL)?;
        Netns::veth(&cpe, ifname::LTE, &lte_ns, "a")?;
        Netns::veth(&lte_ns, "b", &hag, ifname::LTE)?;
        Netns::veth(&hag, ifname::HAG_INET, &inet, ifname::INET)?;

        let add = |ns: &Netns, dev: &str, a: Addrs, v4len: u8, v6len: u8| -> Result<(), crate::netns::Error> {
            ns.addr(dev, &format!("{}/{v4len}", a.v4))?;
            ns.addr(dev, &format!("{}/{v6len}", a.v6))
        };
        add(&lan, ifname::LAN, LAN_CLIENT, 24, 64)?;
        add(&cpe, ifname::CPE_LAN, CPE_LAN, 24, 64)?;
        add(&cpe, ifname::DSL, CPE_DSL, 24, 64)?;
        add(&cpe, ifname::LTE, CPE_LTE, 24, 64)?;
        add(&hag, ifname::DSL, HAG_DSL, 24, 64)?;
        add(&hag, ifname::LTE, HAG_LTE, 24, 64)?;
        add(&hag, "lo", HAG_SERVICE, 32, 128)?;
        add(&hag, ifname::HAG_INET, HAG_INET, 24, 64)?;
        add(&inet, ifname::INET, INET_SERVER, 24, 64)?;

        if !cfg.offloads {
            for (ns, dev) in [(&cpe, ifname::DSL), (&cpe, ifname::LTE), (&hag, ifname::DSL), (&hag, ifname::LTE)] {
                emulator::disable_offloads(ns, dev)?;
            }
        }

        let s = |x: &dyn std::fmt::Display| x.to_string();
        // lan, inet: default towards the middle.
        lan.route(&["default", "via", &s(&CPE_LAN.v4)])?;
        lan.route(&["default", "via", &s(&CPE_LAN.v6)])?;
        inet.route(&["default", "via", &s(&HAG_INET.v4)])?;
        inet.route(&["default", "via", &s(&HAG_INET.v6)])?;

        // cpe: one table per uplink, chosen by source address.
        for (dev, me, gw, table) in
            [(ifname::DSL, CPE_DSL, HAG_DSL, CPE_DSL_TABLE), (ifname::LTE, CPE_LTE, HAG_LTE, CPE_LTE_TABLE)]
        {
            let t = table.to_string();
            cpe.route(&[&format!("{}/24", net24(me.v4)), "dev", dev, "src", &s(&me.v4), "table", &t])?;
            cpe.route(&["default", "via", &s(&gw.v4), "dev", dev, "src", &s(&me.v4), "table", &t])?;
            cpe.route(&[&format!("{}/64", net64(me.v6)), "dev", dev, "table", &t])?;
            cpe.route(&["default", "via", &s(&gw.v6), "dev", dev, "table", &t])?;
            cpe.rule(&["from", &s(&me.v4), "lookup", &t, "priority", &(table + 900).to_string()])?;
            cpe.rule(&["from", &s(&me.v6), "lookup", &t, "priority", &(table + 900).to_string()])?;
        }
        if cfg.cpe_default_routes {
            cpe.route(&["default", "via", &s(&HAG_DSL.v4), "dev", ifname::DSL, "metric", "100"])?;
            cpe.route(&["default", "via", &s(&HAG_LTE.v4), "dev", ifname::LTE, "metric", "200"])?;
            cpe.route(&["default", "via", &s(&HAG_DSL.v6), "dev", ifname::DSL, "metric", "100"])?;
            cpe.route(&["default", "via", &s(&HAG_LTE.v6), "dev", ifname::LTE, "metric", "200"])?;
        }
        // hag: LAN prefix via the DSL link (plain routed baseline).
        hag.route(&[&format!("{}/24", net24(LAN_CLIENT.v4)), "via", &s(&CPE_DSL.v4)])?;
        hag.route(&[&format!("{}/64", net64(LAN_CLIENT.v6)), "via", &s(&CPE_DSL.v6)])?;

        // `TESTBED_SYSCTL=key=value,...`: more sysctls in the CPE's and hag's namespaces, to run a test on a
        // kernel setting it does not choose (`net.ipv4.tcp_rto_min_us=50000`).
        for kv in std::env::var("TESTBED_SYSCTL").unwrap_or_default().split(',').filter(|s| !s.is_empty()) {
            let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
            for ns in [&cpe, &hag] {
                ns.sysctl(key.trim(), value.trim())?;
            }
        }
        if cfg.tfo {
            cpe.sysctl("net.ipv4.tcp_fastopen", "5")?;
            hag.sysctl("net.ipv4.tcp_fastopen", "514")?;
        }

        let dsl = LinkEmulator::start(&dsl_ns, "a", "b", cfg.dsl)?;
        let lte = LinkEmulator::start(&lte_ns, "a", "b", cfg.lte)?;
        Ok(Testbed { dsl, lte, lan, cpe, dsl_ns, lte_ns, hag, inet })
    }

    /// Names of all six namespaces (lan, cpe, dsl, lte, hag, inet).
    pub fn namespace_names(&self) -> Vec<String> {
        [&self.lan, &self.cpe, &self.dsl_ns, &self.lte_ns, &self.hag, &self.inet]
            .iter()
            .map(|n| n.name().to_string())
            .collect()
    }
}

fn net24(a: Ipv4Addr) -> Ipv4Addr {
    let o = a.octets();
    Ipv4Addr::new(o[0], o[1], o[2], 0)
}

fn net64(a: Ipv6Addr) -> Ipv6Addr {
    let s = a.segments();
    Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0)
}
