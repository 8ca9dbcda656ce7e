//! The uplink manager against the real kernel, each test in a fresh network namespace of its own (a thread
//! that called `unshare(CLONE_NEWNET)`; the namespace dies with the thread and its sockets, so nothing is
//! left behind, also on panic). Needs root, like `common::pm`'s kernel tests.
//!
//! The uplinks live on loopback addresses (127.0.0.3 "dsl", 127.0.0.2 "lte") and hag is 127.0.0.1 with
//! nobody answering probes; the probe interval is long enough that no verdict comes during a test, so every
//! uplink stays `Unknown` (= usable) and only modes drive the endpoint table.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::pm::PmEvent;
use testkit::netns::{MptcpPair, in_new_netns, loopback_up, mptcp_pair, wait_for};

use super::*;
use crate::config::Config;

const DSL: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const LTE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A config with the two loopback uplinks; `extra` is appended (top-level YAML).
fn config(lte_mode: &str, extra: &str) -> Config {
    let text = format!(
        r#"
lan_interfaces: [lan0]
hag: {{ addresses: [127.0.0.1], cpe_id: cpe-1, key_file: cpe.key }}
uplinks:
  - {{ name: dsl, interface: lo, ipv4: {{ address: {DSL} }} }}
  - {{ name: lte, interface: lo, mode: {lte_mode}, ipv4: {{ address: {LTE} }} }}
probe: {{ interval: 20s }}
{extra}"#
    );
    parse_config(&text)
}

/// `text` parsed as hcpe's config, with a throwaway `cpe.key` beside it.
fn parse_config(text: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    testkit::write_secret(dir.path().join("cpe.key"), "00112233445566778899aabbccddeeff").unwrap();
    Config::from_yaml(text, &dir.path().join("hcpe.yaml")).unwrap()
}

/// The endpoint table as (address, flags).
async fn table(pm: &PathManager) -> Vec<(IpAddr, EndpointFlags)> {
    let mut t: Vec<_> = pm.endpoints().await.unwrap().into_iter().map(|e| (e.addr, e.flags)).collect();
    t.sort_by_key(|(a, _)| *a);
    t
}

const SUB: EndpointFlags = EndpointFlags::SUBFLOW;
const BAK: EndpointFlags = EndpointFlags::from_bits(EndpointFlags::SUBFLOW.bits() | EndpointFlags::BACKUP.bits());

#[test]
fn set_mode_changes_the_endpoint_table_live_and_shutdown_empties_it() {
    in_new_netns(|| async {
        loopback_up();
        let mgr = UplinkManager::start(&config("active", "").uplink_settings()).await.unwrap();
        let pm = PathManager::connect().await.unwrap();
        let ctl = mgr.control();
        assert_eq!(table(&pm).await, vec![(LTE, SUB), (DSL, SUB)]);
        let lte_id = pm.endpoints().await.unwrap().into_iter().find(|e| e.addr == LTE).unwrap().id;

        assert_eq!(ctl.set_mode("lte", Mode::Backup, ModeReason::Admin).await.unwrap(), Mode::Active);
        assert_eq!(table(&pm).await, vec![(LTE, BAK), (DSL, SUB)]);
        let same = pm.endpoints().await.unwrap().into_iter().find(|e| e.addr == LTE).unwrap().id;
        assert_eq!(same, lte_id, "active -> backup keeps the endpoint (SET_FLAGS), so subflows stay up");

        assert_eq!(ctl.set_mode("lte", Mode::Standby, ModeReason::Quota).await.unwrap(), Mode::Backup);
        assert_eq!(table(&pm).await, vec![(DSL, SUB)], "standby: no endpoint while dsl is usable");
        assert!(ctl.snapshot()[1].health.is_some(), "standby uplinks are still probed");

        assert_eq!(ctl.set_mode("lte", Mode::Off, ModeReason::Admin).await.unwrap(), Mode::Standby);
        let snap = ctl.snapshot();
        assert_eq!(
            (snap[1].mode, snap[1].endpoint, snap[1].health.is_none()),
            (Mode::Off, None, true),
            "off: not probed"
        );
        assert_eq!(snap[1].addresses, vec![LTE]);

        // The primary off: the lte uplink (active again) starts new connections and has the only endpoint.
        ctl.set_mode("lte", Mode::Active, ModeReason::Admin).await.unwrap();
        ctl.set_mode("dsl", Mode::Off, ModeReason::Reload).await.unwrap();
        assert_eq!(table(&pm).await, vec![(LTE, SUB)]);
        assert_eq!(mgr.selector().source_for("127.0.0.1".parse().unwrap()), Some(LTE));
        assert!(ctl.snapshot()[1].initial);

        // Same mode again: not a change.
        assert_eq!(ctl.set_mode("dsl", Mode::Off, ModeReason::Admin).await.unwrap(), Mode::Off);
        assert!(matches!(
            ctl.set_mode("wifi", Mode::Off, ModeReason::Admin).await,
            Err(SetModeError::UnknownUplink(n)) if n == "wifi"
        ));
        let counts: Vec<u64> = ctl.mode_changes().into_iter().map(|(_, n)| n).collect();
        assert_eq!(counts, vec![0, 3, 1, 1], "config, admin, reload, quota");

        mgr.shutdown().await;
        assert_eq!(table(&pm).await, vec![], "shutdown removes every endpoint");
    });
}

#[test]
fn unmanaged_set_mode_only_records_and_steers_new_connections() {
    in_new_netns(|| async {
        loopback_up();
        let cfg = {
            let mut c = config("active", "");
            c.probe.enabled = false;
            c
        };
        let mgr = UplinkManager::start(&cfg.uplink_settings()).await.unwrap();
        let ctl = mgr.control();
        let hag: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(mgr.selector().source_for(hag), Some(DSL));
        assert_eq!(ctl.set_mode("dsl", Mode::Backup, ModeReason::Admin).await.unwrap(), Mode::Active);
        assert_eq!(ctl.mode("dsl"), Some(Mode::Backup));
        assert_eq!(mgr.selector().source_for(hag), Some(LTE), "an active uplink beats a backup one");
        let pm = PathManager::connect().await.unwrap();
        assert_eq!(table(&pm).await, vec![], "unmanaged: the kernel's endpoint table is not touched");
        mgr.shutdown().await;

        // An auto address is read once.
        ip(&["link", "add", "wwan0", "type", "veth", "peer", "name", "wwan1"]);
        ip(&["addr", "add", "10.9.0.2/24", "dev", "wwan0"]);
        let text = "lan_interfaces: [lan0]\nhag: { addresses: [10.7.0.1], cpe_id: c, key_file: cpe.key }\n\
                    uplinks: [{ name: lte, interface: wwan0, ipv4: { address: auto } }]\nprobe: { enabled: false }\n";
        let mgr = UplinkManager::start(&parse_config(text).uplink_settings()).await.unwrap();
        assert_eq!(mgr.selector().source_for("10.7.0.1".parse().unwrap()), Some("10.9.0.2".parse().unwrap()));
        mgr.shutdown().await;
    });
}

#[test]
fn backup_mode_reaches_the_peer_of_a_running_connection_by_mp_prio() {
    in_new_netns(|| async {
        loopback_up();
        let mgr = UplinkManager::start(&config("active", "").uplink_settings()).await.unwrap();
        let ctl = mgr.control();
        let pm = PathManager::connect().await.unwrap();
        let mut events = pm.subscribe().await.unwrap();

        // "hag": an MPTCP listener on 127.0.0.1; the client starts on the dsl address, the kernel adds the
        // lte subflow from the endpoint.
        let MptcpPair { listener: _listener, server_addr, client, server } = mptcp_pair(Some(DSL)).await;

        let sub = wait_for(
            &mut events,
            "SUB_ESTABLISHED from the lte endpoint",
            |e| matches!(e, PmEvent::SubflowEstablished(s) if s.local.ip() == LTE && !s.backup),
        )
        .await;
        let PmEvent::SubflowEstablished(sub) = sub else { unreachable!() };

        ctl.set_mode("lte", Mode::Backup, ModeReason::Admin).await.unwrap();
        // The server side (hag's role) learns the new priority from MP_PRIO on its subflow.
        let prio = wait_for(
            &mut events,
            "server-side SUB_PRIORITY backup",
            |e| matches!(e, PmEvent::SubflowPriority(s) if s.backup && s.remote == sub.local),
        )
        .await;
        let PmEvent::SubflowPriority(prio) = prio else { unreachable!() };
        assert_eq!(prio.local, server_addr, "{prio:?}");

        ctl.set_mode("lte", Mode::Active, ModeReason::Admin).await.unwrap();
        wait_for(
            &mut events,
            "server-side SUB_PRIORITY active",
            |e| matches!(e, PmEvent::SubflowPriority(s) if !s.backup && s.remote == sub.local),
        )
        .await;
        drop((client, server));
        mgr.shutdown().await;
    });
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip").args(args).output().expect("ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A veth pair `a`–`b`, both up, with `addr` on `a`.
fn veth(a: &str, b: &str, addr: &str) {
    ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
    ip(&["link", "set", b, "up"]);
    ip(&["link", "set", a, "up"]);
    ip(&["addr", "add", addr, "dev", a]);
}

fn ip_out(args: &[&str]) -> String {
    let out = std::process::Command::new("ip").args(args).output().expect("ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` every 20 ms for up to 3 s.
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..150 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within 3 s: {what}");
}

#[test]
fn a_learned_address_follows_renumbering_with_endpoint_rule_route_and_prober() {
    in_new_netns(|| async {
        loopback_up();
        veth("wwan0", "wwan1", "10.9.0.2/24");
        let text = format!(
            r#"
lan_interfaces: [lan0]
hag: {{ addresses: [127.0.0.1], cpe_id: cpe-1, key_file: cpe.key }}
uplinks:
  - {{ name: dsl, interface: lo, ipv4: {{ address: {DSL} }} }}
  - {{ name: lte, interface: wwan0, ipv4: {{ address: auto, gateway: 10.9.0.1 }} }}
probe: {{ interval: 20s }}
"#
        );
        let cfg = parse_config(&text);
        let table = cfg.uplinks[1].table.to_string();

        let mgr = UplinkManager::start(&cfg.uplink_settings()).await.unwrap();
        let ctl = mgr.control();
        let pm = PathManager::connect().await.unwrap();
        let (old, new): (IpAddr, IpAddr) = ("10.9.0.2".parse().unwrap(), "10.9.0.3".parse().unwrap());
        assert_eq!(ctl.snapshot()[1].addresses, vec![old], "learned at start");
        assert!(self::table(&pm).await.contains(&(old, SUB)));
        assert!(ip_out(&["rule"]).contains(&format!("from {old} lookup {table}")), "{}", ip_out(&["rule"]));
        assert!(ip_out(&["route", "show", "table", &table]).contains("default via 10.9.0.1 dev wwan0"));

        // A second address does not move the uplink.
        ip(&["addr", "add", "10.9.0.7/24", "dev", "wwan0"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(ctl.snapshot()[1].addresses, vec![old]);
        ip(&["addr", "flush", "dev", "wwan0"]);
        eventually("the uplink loses its address", async || ctl.snapshot()[1].addresses.is_empty()).await;
        eventually("its endpoint goes", async || !self::table(&pm).await.iter().any(|(a, _)| *a == old)).await;
        assert!(ctl.snapshot()[1].health.is_none(), "nothing to probe from");

        // Renumbered: endpoint, rule, route and prober follow; new connections bind to the new address.
        ip(&["addr", "add", "10.9.0.3/24", "dev", "wwan0"]);
        eventually("the new address is learned", async || ctl.snapshot()[1].addresses == vec![new]).await;
        eventually("the endpoint moves", async || self::table(&pm).await == vec![(new, SUB), (DSL, SUB)]).await;
        let rules = ip_out(&["rule"]);
        assert!(
            rules.contains(&format!("from {new} lookup {table}")) && !rules.contains(&format!("from {old} ")),
            "{rules}"
        );
        assert!(ip_out(&["route", "show", "table", &table]).contains("default via 10.9.0.1 dev wwan0"));
        assert_eq!(
            ctl.snapshot()[1].health.as_ref().map(|h| h.source),
            Some(new),
            "the prober sends from the new address"
        );
        ctl.set_mode("dsl", Mode::Off, ModeReason::Admin).await.unwrap();
        assert_eq!(mgr.selector().source_for("127.0.0.1".parse().unwrap()), Some(new));

        mgr.shutdown().await;
        assert_eq!(self::table(&pm).await, vec![]);
        assert!(!ip_out(&["rule"]).contains(&format!("lookup {table}")), "{}", ip_out(&["rule"]));
    });
}

#[test]
fn the_main_default_route_follows_the_uplink_new_connections_start_on() {
    in_new_netns(|| async {
        loopback_up();
        veth("dsl0", "dsl1", "10.8.0.2/24");
        veth("lte0", "lte1", "10.9.0.2/24");
        // The system's own default route (as DHCP would add it) stays below hcpe's and comes back after it.
        ip(&["route", "add", "default", "via", "10.8.0.1", "metric", "100"]);
        let text = r#"
lan_interfaces: [lan0]
hag: { addresses: [10.7.0.1], cpe_id: cpe-1, key_file: cpe.key }
uplinks:
  - { name: dsl, interface: dsl0, ipv4: { address: 10.8.0.2, gateway: 10.8.0.1 } }
  - { name: lte, interface: lte0, ipv4: { address: auto, gateway: 10.9.0.1 } }
probe: { interval: 20s }
"#;
        let cfg = parse_config(text);
        let mgr = UplinkManager::start(&cfg.uplink_settings()).await.unwrap();
        let ctl = mgr.control();
        let get = || ip_out(&["route", "get", "10.7.0.99"]);
        assert!(get().contains("via 10.8.0.1 dev dsl0"), "{}", get());
        assert!(ip_out(&["route", "show", "default"]).contains("default via 10.8.0.1 dev dsl0 proto 73"));

        ctl.set_mode("dsl", Mode::Off, ModeReason::Admin).await.unwrap();
        assert!(get().contains("via 10.9.0.1 dev lte0"), "{}", get());
        ctl.set_mode("dsl", Mode::Active, ModeReason::Admin).await.unwrap();
        assert!(get().contains("via 10.8.0.1 dev dsl0"), "{}", get());

        // A fixed address that goes and comes back (PPP reconnect): the kernel drops the routes through
        // the interface with its last address; hcpe sets its table route and the main default route again.
        let table = cfg.uplinks[0].table.to_string();
        ip(&["addr", "flush", "dev", "dsl0"]);
        eventually("the kernel drops the dsl table route", async || {
            !ip_out(&["route", "show", "table", &table]).contains("default")
        })
        .await;
        ip(&["addr", "add", "10.8.0.2/24", "dev", "dsl0"]);
        eventually("hcpe re-adds the dsl routes", async || {
            ip_out(&["route", "show", "table", &table]).contains("default via 10.8.0.1 dev dsl0")
                && ip_out(&["route", "show", "default"]).contains("default via 10.8.0.1 dev dsl0 proto 73")
        })
        .await;
        // The system's route went with the address too; its DHCP client would add it again.
        ip(&["route", "add", "default", "via", "10.8.0.1", "metric", "100"]);

        mgr.shutdown().await;
        let routes = ip_out(&["route", "show", "default"]);
        assert_eq!(routes.trim(), "default via 10.8.0.1 dev dsl0 metric 100", "only the system's route is left");
    });
}

#[test]
fn no_default_route_when_turned_off() {
    in_new_netns(|| async {
        loopback_up();
        veth("dsl0", "dsl1", "10.8.0.2/24");
        let text = r#"
lan_interfaces: [lan0]
hag: { addresses: [10.7.0.1], cpe_id: cpe-1, key_file: cpe.key }
uplinks:
  - { name: dsl, interface: dsl0, ipv4: { address: 10.8.0.2, gateway: 10.8.0.1 } }
routing: { default_route: false }
probe: { interval: 20s }
"#;
        let cfg = parse_config(text);
        let mgr = UplinkManager::start(&cfg.uplink_settings()).await.unwrap();
        assert_eq!(ip_out(&["route", "show", "default"]), "", "the firmware keeps the default route");
        mgr.shutdown().await;
    });
}

#[test]
fn an_auto_uplink_learns_its_next_hop_from_dhcp_routes_or_its_point_to_point_link() {
    in_new_netns(|| async {
        loopback_up();
        veth("wwan0", "wwan1", "10.9.0.2/24");
        ip(&["tuntap", "add", "dev", "ppp0", "mode", "tun"]);
        ip(&["link", "set", "ppp0", "up"]);
        ip(&["addr", "add", "10.10.0.2/32", "dev", "ppp0"]);
        let text = r#"
lan_interfaces: [lan0]
hag: { addresses: [10.7.0.1], cpe_id: cpe-1, key_file: cpe.key }
uplinks:
  - { name: lte, interface: wwan0, ipv4: { address: auto } }
  - { name: ppp, interface: ppp0, ipv4: { address: auto } }
probe: { interval: 20s }
"#;
        let cfg = parse_config(text);
        let (lte_table, ppp_table) = (cfg.uplinks[0].table.to_string(), cfg.uplinks[1].table.to_string());
        let mgr = UplinkManager::start(&cfg.uplink_settings()).await.unwrap();
        let ctl = mgr.control();
        assert_eq!(ip_out(&["route", "show", "table", &lte_table]), "", "no gateway known yet");
        assert!(
            ip_out(&["route", "show", "table", &ppp_table]).contains("default dev ppp0"),
            "point-to-point: no gateway needed: {}",
            ip_out(&["route", "show", "table", &ppp_table])
        );
        assert!(ip_out(&["rule"]).contains(&format!("from 10.10.0.2 lookup {ppp_table}")));
        assert!(ip_out(&["route", "show", "default"]).contains("default dev ppp0 proto 73"));

        // The DHCP client sets the gateway: learned, and the primary gets the main default route.
        ip(&["route", "add", "default", "via", "10.9.0.1", "dev", "wwan0", "metric", "300"]);
        eventually("the lte table route via the learned gateway", async || {
            ip_out(&["route", "show", "table", &lte_table]).contains("default via 10.9.0.1 dev wwan0")
        })
        .await;
        assert!(ip_out(&["rule"]).contains(&format!("from 10.9.0.2 lookup {lte_table}")));
        eventually("the main default route via the primary", async || {
            ip_out(&["route", "show", "default"]).contains("default via 10.9.0.1 dev wwan0 proto 73")
        })
        .await;
        // A new lease with another gateway.
        ip(&["route", "replace", "default", "via", "10.9.0.254", "dev", "wwan0", "metric", "300"]);
        eventually("the new gateway is followed", async || {
            ip_out(&["route", "show", "table", &lte_table]).contains("default via 10.9.0.254 dev wwan0")
        })
        .await;
        assert_eq!(ctl.snapshot()[0].addresses, vec!["10.9.0.2".parse::<IpAddr>().unwrap()]);
        mgr.shutdown().await;
        assert!(!ip_out(&["route", "show", "default"]).contains("proto 73"));
    });
}
