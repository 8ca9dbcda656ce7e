//! Non-TCP traffic on the testbed with the real `hcpe` (uplink manager) and `hag`:
//! - `routing.default_route` (on by default): the main table's default route follows the healthy uplink, so
//!   UDP and ICMP fail over with TCP: a DSL cut moves `ip route get` from dsl0 to lte0 within about 1 s
//!   (printed), the restore moves it back, and hcpe's route is gone after hcpe stops;
//! - `block_quic: true`: a LAN client's UDP to port 443 gets ICMP port unreachable (ECONNREFUSED on a
//!   connected socket) while UDP to port 53 of the same server still gets its answer.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use tests::daemons::{self, HagSpec, HcpeSpec};
use tests::netns::ChildGuard;
use tests::testbed::{Testbed, TestbedConfig, addr};

fn start(tb: &Testbed, tag: &str, extra_yaml: &str) -> (tempfile::TempDir, ChildGuard, ChildGuard) {
    let dir = daemons::config_dir(&format!("uplink-modes-{tag}")).unwrap();
    let hag = daemons::start_hag(tb, dir.path(), &HagSpec { v6: false, ..HagSpec::default() }).unwrap();
    let spec = HcpeSpec { managed: true, v6: false, extra_yaml: extra_yaml.into(), ..HcpeSpec::default() };
    let hcpe = daemons::start_hcpe(tb, dir.path(), &spec).unwrap();
    daemons::wait_up(&hcpe, 2, Duration::from_secs(10)).unwrap();
    (dir, hag, hcpe)
}

/// The device cpe's routing picks for UDP from the LAN client to the internet server.
fn lan_route_dev(tb: &Testbed) -> String {
    let out = tb
        .cpe
        .ip(&[
            "route",
            "get",
            &addr::INET_SERVER.v4.to_string(),
            "from",
            &addr::LAN_CLIENT.v4.to_string(),
            "iif",
            "lan0",
        ])
        .unwrap();
    out.split_whitespace().skip_while(|w| *w != "dev").nth(1).unwrap_or("").to_owned()
}

fn wait_dev(tb: &Testbed, dev: &str, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        if lan_route_dev(tb) == dev {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < limit, "route still via {} after {limit:?}", lan_route_dev(tb));
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_default_route_for_non_tcp_follows_the_healthy_uplink() {
    let tb = Testbed::new(TestbedConfig::default()).unwrap();
    let (_dir, _hag, mut hcpe) = start(&tb, "route", "");
    assert!(
        tb.cpe.ip(&["route", "show", "default"]).unwrap().contains("proto 73"),
        "hcpe's route is in the main table"
    );
    assert_eq!(lan_route_dev(&tb), "dsl0");

    tb.dsl.cut();
    let moved = wait_dev(&tb, "lte0", Duration::from_secs(3));
    eprintln!("DSL cut: the non-TCP default route moved to lte0 after {moved:?}");
    assert!(moved <= Duration::from_millis(1200), "moved after {moved:?}");

    tb.dsl.restore();
    let back = wait_dev(&tb, "dsl0", Duration::from_secs(5));
    eprintln!("DSL restored: back on dsl0 after {back:?}");

    hcpe.kill();
    let routes = tb.cpe.ip(&["route", "show", "default"]).unwrap();
    assert!(!routes.contains("proto 73"), "hcpe removed its default route at exit:\n{routes}");
    assert!(routes.contains("metric 100"), "the system's routes are untouched:\n{routes}");
}

fn ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok(v) if !v.is_empty() && v != "false" && v != "0")
}

#[test]
fn block_quic_refuses_lan_udp_443_and_lets_dns_through() {
    if std::process::Command::new("nft").arg("--version").output().is_err() {
        assert!(!ci(), "block_quic needs the nft tool (package nftables) in CI");
        eprintln!("skipped: no nft tool (install nftables)");
        return;
    }
    let tb = Testbed::new(TestbedConfig::default()).unwrap();
    // UDP echo on the server's ports 53 and 443: without the block both would answer.
    let mut echoes = Vec::new();
    for port in [53u16, 443] {
        let at = SocketAddr::new(addr::INET_SERVER.ip(false), port);
        let sock = tb.inet.within(move || UdpSocket::bind(at)).unwrap().unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        echoes.push(std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }));
    }
    let (_dir, _hag, mut hcpe) = start(&tb, "quic", "block_quic: true\n");
    let ask = |port: u16| {
        let to = SocketAddr::new(addr::INET_SERVER.ip(false), port);
        tb.lan
            .within(move || -> std::io::Result<usize> {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.connect(to)?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.send(b"hello")?;
                let mut buf = [0u8; 64];
                s.recv(&mut buf)
            })
            .unwrap()
    };
    assert_eq!(ask(53).unwrap(), 5, "UDP to port 53 passes");
    let err = ask(443).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "UDP/443: {err}");

    hcpe.kill();
    assert!(hcpe.log().contains("removed the QUIC block"), "{}", hcpe.log());
    assert_eq!(ask(443).unwrap(), 5, "without hcpe, QUIC passes again");
    drop(echoes);
}
