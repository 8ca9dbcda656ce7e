//! End-to-end tests of the real `hcpe` and `hag` binaries on the testbed:
//! `lan` client -> `cpe` (hcpe: TUN interception, MPTCP to hag) -> `dsl`/`lte` emulators -> `hag` -> `inet` server.
//!
//! Every test builds its own testbed (unique namespaces), runs the daemons as children of guards declared after
//! the testbed (so they die first), and asserts what a user sees: SHA-256-verified bytes, both links carrying
//! data, a reset (not a hang) where the design says reset, and no rule/route/device of hcpe's left behind.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use tests::daemons::{self, HagSpec, HcpeSpec};
use tests::emulator::{Direction, LinkConfig, Shape};
use tests::netns::{ChildGuard, Netns};
use tests::testbed::{Testbed, TestbedConfig, addr};
use tests::traffic::{Client, Server};

/// Destination hag refuses by policy (nothing listens there either).
const DENIED4: &str = "198.18.4.3";

type TempDir = tempfile::TempDir;

fn config_dir(tag: &str) -> TempDir {
    daemons::config_dir(&format!("hcpe-e2e-{tag}")).unwrap()
}

/// hcpe as these tests run it: uplinks with addresses only (the testbed's source routing), `tun.offload` from
/// `HCPE_E2E_OFFLOAD`, TFO from `HCPE_E2E_TFO` (off, as shipped: see hcpe's `fastopen`).
fn hcpe_spec(fallback: &str) -> HcpeSpec {
    let env_bool = |k: &str| std::env::var(k).ok().map(|v| v == "true");
    HcpeSpec {
        fallback: fallback.into(),
        offload: env_bool("HCPE_E2E_OFFLOAD"),
        fastopen: env_bool("HCPE_E2E_TFO").unwrap_or(false),
        limits: "{ connect_timeout: 500ms, reply_timeout: 2s }".into(),
        ..HcpeSpec::default()
    }
}

/// The testbed with MPTCP endpoints for a second subflow over LTE.
fn testbed(link: Shape) -> Testbed {
    let tb = Testbed::new(TestbedConfig {
        dsl: LinkConfig::symmetric(link),
        lte: LinkConfig { seed: 2, ..LinkConfig::symmetric(link) },
        ..TestbedConfig::default()
    })
    .unwrap();
    daemons::static_endpoints(&tb).unwrap();
    tb
}

fn start_hag(tb: &Testbed, dir: &TempDir) -> ChildGuard {
    start_hag_with(tb, dir, &HagSpec::default())
}

fn start_hag_with(tb: &Testbed, dir: &TempDir, spec: &HagSpec) -> ChildGuard {
    let spec = HagSpec { deny: vec![format!("{DENIED4}/32")], ..spec.clone() };
    daemons::start_hag(tb, dir.path(), &spec).unwrap()
}

fn start_hcpe(tb: &Testbed, dir: &TempDir, fallback: &str) -> ChildGuard {
    daemons::start_hcpe(tb, dir.path(), &hcpe_spec(fallback)).unwrap()
}

fn server_addr(server: &Server, v6: bool) -> SocketAddr {
    SocketAddr::new(addr::INET_SERVER.ip(v6), server.port())
}

/// What hcpe leaves in its namespace: lines of `ip rule`, `ip -6 rule`, `ip route show table all`,
/// `ip -6 route show table all` and `ip link` that are hcpe's (protocol 72 or the TUN device).
fn hcpe_state(ns: &Netns) -> Vec<String> {
    let mut out = Vec::new();
    for args in [
        &["rule"][..],
        &["-6", "rule"],
        &["route", "show", "table", "all"],
        &["-6", "route", "show", "table", "all"],
        &["link"],
    ] {
        let text = ns.ip(args).unwrap();
        out.extend(text.lines().filter(|l| l.contains("proto 72") || l.contains("hcpe0")).map(str::to_owned));
    }
    out
}

/// Client connect + request, expecting the connection to be reset (not closed cleanly, not hanging).
fn expect_reset(ns: &Netns, dst: SocketAddr) -> Duration {
    let r = ns
        .within(move || {
            let t = Instant::now();
            let r = Client::new(dst).timeout(Duration::from_secs(5)).download(1000);
            (t.elapsed(), r)
        })
        .unwrap();
    let (elapsed, result) = r;
    let err = result.expect_err("the client must not get data");
    let text = format!("{err:?}");
    assert!(
        text.contains("ConnectionReset") || text.contains("reset") || text.contains("ConnectionRefused"),
        "expected a reset, got {text}"
    );
    elapsed
}

/// The CPE-side addresses of the subflows hag's admin API shows for its connection to `dst`, once it has two
/// established ones (or whatever it has after `timeout`), and whether that connection is MPTCP.
fn hag_subflows(tb: &Testbed, dir: &Path, dst: SocketAddr, timeout: Duration) -> (bool, Vec<IpAddr>) {
    let api = SocketAddr::from(([127, 0, 0, 1], daemons::HAG_ADMIN_PORT));
    let token = daemons::admin_token(dir).unwrap();
    let deadline = Instant::now() + timeout;
    let mut last = (false, Vec::new());
    while Instant::now() < deadline {
        let r = daemons::http(&tb.hag, api, "GET", "/api/v1/connections", Some(&token), None).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let conns: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let ours = conns.as_array().unwrap().iter().find(|c| c["destination"] == dst.to_string());
        if let Some(c) = ours {
            let established = c["subflows"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|f| f["tcp_state"] == 1)
                .filter_map(|f| f["remote"].as_str()?.parse::<SocketAddr>().ok().map(|a| a.ip()))
                .collect::<Vec<_>>();
            last = (c["token"].is_u64() && c["fallback"] == false, established);
            if last.1.len() >= 2 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    last
}

#[test]
fn hcpe_carries_v4_and_v6_over_both_uplinks_intact() {
    let tb = testbed(Shape::mbit(100.0).delay_ms(2.0));
    let dir = config_dir("bulk");
    let server = Server::start(&tb.inet, 0).unwrap();
    let _hag = start_hag_with(&tb, &dir, &HagSpec { admin: true, ..HagSpec::default() });
    let mut hcpe = start_hcpe(&tb, &dir, "reject");
    const SIZE: u64 = 64 << 20;
    for v6 in [false, true] {
        let dst = server_addr(&server, v6);
        for upload in [false, true] {
            let dir_ = if upload { Direction::Up } else { Direction::Down };
            let (d0, l0) = (tb.dsl.counters(dir_).tx_bytes, tb.lte.counters(dir_).tx_bytes);
            let transfer = tb
                .lan
                .thread(move || {
                    let c = Client::new(dst).timeout(Duration::from_secs(20));
                    if upload { c.upload(SIZE) } else { c.download(SIZE) }
                })
                .unwrap();
            // hag's socket for this connection: MPTCP with a subflow from each uplink (hcpe reaches hag over IPv4).
            let (mptcp, subflows) = hag_subflows(&tb, dir.path(), dst, Duration::from_secs(4));
            let t = transfer
                .join()
                .unwrap()
                .unwrap_or_else(|e| panic!("v6={v6} upload={upload}: {e}\nhcpe log:\n{}", hcpe.log()));
            let mut sorted = subflows.clone();
            sorted.sort();
            assert!(mptcp, "v6={v6} upload={upload}: hag's connection is not MPTCP");
            assert_eq!(
                sorted,
                vec![IpAddr::V4(addr::CPE_DSL.v4), IpAddr::V4(addr::CPE_LTE.v4)],
                "v6={v6} upload={upload}: hag's subflows come from the DSL and the LTE address"
            );
            let dsl = tb.dsl.counters(dir_).tx_bytes - d0;
            let lte = tb.lte.counters(dir_).tx_bytes - l0;
            let share = dsl as f64 / (dsl + lte) as f64;
            eprintln!(
                "v6={v6} upload={upload}: {:.1} Mbit/s, dsl {dsl} B, lte {lte} B, dsl share {share:.2}, \
                 hag subflows from {subflows:?}",
                t.mbit_per_s()
            );
            assert!((0.2..=0.8).contains(&share), "each uplink carries >= 20 %: dsl {dsl}, lte {lte}");
        }
    }
    let log = hcpe.log();
    assert_eq!(log.matches("converted").count(), 4, "all four went through hag:\n{log}");
    hcpe.kill();
}

#[test]
fn hcpe_refusals_reset_the_client() {
    let tb = testbed(Shape::default());
    let dir = config_dir("refuse");
    let server = Server::start(&tb.inet, 0).unwrap();
    let _hag = start_hag(&tb, &dir);
    let _hcpe = start_hcpe(&tb, &dir, "direct");
    // Server refuses (closed port): hag answers an Error, hcpe resets the client.
    let closed = SocketAddr::new(addr::INET_SERVER.ip(false), 1);
    let took = expect_reset(&tb.lan, closed);
    assert!(took < Duration::from_secs(1), "refused reset after {took:?}");
    let closed6 = SocketAddr::new(addr::INET_SERVER.ip(true), 1);
    assert!(expect_reset(&tb.lan, closed6) < Duration::from_secs(1));
    // Destination denied by hag policy: reset, and no direct fallback (the refusal is hag's answer).
    let denied = SocketAddr::new(DENIED4.parse::<IpAddr>().unwrap(), server.port());
    assert!(expect_reset(&tb.lan, denied) < Duration::from_secs(1));
    // A good destination still works afterwards.
    let dst = server_addr(&server, false);
    tb.lan.within(move || Client::new(dst).download(1 << 20)).unwrap().unwrap();
}

#[test]
fn hcpe_fallback_direct_and_reject_when_hag_is_down() {
    let tb = testbed(Shape::default());
    let dir = config_dir("fallback");
    let server = Server::start(&tb.inet, 0).unwrap();
    // No hag at all: connections to the service address are refused.
    {
        let mut hcpe = start_hcpe(&tb, &dir, "direct");
        for v6 in [false, true] {
            let dst = server_addr(&server, v6);
            tb.lan
                .within(move || Client::new(dst).timeout(Duration::from_secs(10)).download(8 << 20))
                .unwrap()
                .unwrap_or_else(|e| panic!("direct fallback v6={v6}: {e}\n{}", hcpe.log()));
        }
        assert!(hcpe.log().contains("fallback=Direct"));
        hcpe.kill();
    }
    let mut hcpe = start_hcpe(&tb, &dir, "reject");
    let took = expect_reset(&tb.lan, server_addr(&server, false));
    assert!(took < Duration::from_secs(1), "reject took {took:?}");
    // hag unreachable (DSL and LTE blackholed): connect timeout, then reset, never a hang.
    tb.dsl.cut();
    tb.lte.cut();
    let took = expect_reset(&tb.lan, server_addr(&server, false));
    assert!(took < Duration::from_secs(2), "reject with hag unreachable took {took:?}\n{}", hcpe.log());
    tb.dsl.restore();
    tb.lte.restore();
    hcpe.kill();
}

#[test]
fn hcpe_removes_its_rules_routes_and_tun_on_exit_and_after_a_crash() {
    let tb = testbed(Shape::default());
    let dir = config_dir("cleanup");
    let before = hcpe_state(&tb.cpe);
    assert!(before.is_empty(), "{before:?}");

    let mut hcpe = start_hcpe(&tb, &dir, "direct");
    let running = hcpe_state(&tb.cpe);
    assert!(running.iter().any(|l| l.contains("ipproto tcp lookup 5124")), "{running:?}");
    assert!(running.iter().any(|l| l.contains("default dev hcpe0")), "{running:?}");
    hcpe.signal(libc::SIGTERM);
    assert!(hcpe.wait_timeout(Duration::from_secs(5)).is_some_and(|s| s.success()), "{}", hcpe.log());
    assert_eq!(hcpe_state(&tb.cpe), Vec::<String>::new(), "after SIGTERM");

    // Crash: rules stay behind (the TUN and its routes go with the process).
    let mut crashed = start_hcpe(&tb, &dir, "direct");
    crashed.signal(libc::SIGKILL);
    crashed.wait_timeout(Duration::from_secs(5));
    let left = hcpe_state(&tb.cpe);
    assert!(left.iter().any(|l| l.contains("proto 72")), "a crash leaves rules: {left:?}");

    // Restart: leftovers are replaced, not duplicated.
    let mut again = start_hcpe(&tb, &dir, "direct");
    assert!(again.log().contains("removed leftovers"), "{}", again.log());
    let routing = |state: Vec<String>| state.into_iter().filter(|l| l.contains("proto 72")).collect::<Vec<_>>();
    assert_eq!(routing(hcpe_state(&tb.cpe)), routing(running), "same rules and routes as the first run, no duplicates");
    again.signal(libc::SIGTERM);
    assert!(again.wait_timeout(Duration::from_secs(5)).is_some_and(|s| s.success()));
    assert_eq!(hcpe_state(&tb.cpe), Vec::<String>::new(), "after restart + SIGTERM");
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn hcpe_many_connections_leave_no_flow_and_no_fd_behind() {
    let tb = testbed(Shape::default());
    let dir = config_dir("many");
    let server = Server::start(&tb.inet, 0).unwrap();
    let _hag = start_hag(&tb, &dir);
    let mut hcpe = daemons::start_hcpe(&tb, dir.path(), &HcpeSpec { admin: true, ..hcpe_spec("reject") }).unwrap();
    let dst = server_addr(&server, false);
    // Descriptors not counting the ready connections of the pool, which grows after a burst and shrinks slowly.
    let token = daemons::admin_token(dir.path()).unwrap();
    let fds = |hcpe: &ChildGuard| {
        let ready = daemons::metric(&tb.cpe, daemons::HCPE_ADMIN_PORT, &token, "hcpe_pool_ready", &[]).unwrap();
        open_fds(hcpe.pid()) - ready as usize
    };
    // Warm up (lazily opened descriptors, the pool filled), then count.
    tb.lan.within(move || Client::new(dst).download(1000)).unwrap().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let fds_before = fds(&hcpe);

    // 200 concurrent connections.
    let results = tb
        .lan
        .within(move || {
            let handles: Vec<_> = (0..200u64)
                .map(|i| {
                    std::thread::spawn(move || {
                        Client::new(dst).seed(i).timeout(Duration::from_secs(20)).download(64 << 10)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap().map(|_| ())).collect::<Vec<_>>()
        })
        .unwrap();
    let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
    assert!(failed.is_empty(), "{} of 200 failed: {:?}", failed.len(), failed.first());

    // Then many sequential short ones.
    let count: u32 = std::env::var("HCPE_E2E_SHORT").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let stats = tb.lan.within(move || Client::new(dst).short_connections(count, 100, 100)).unwrap().unwrap();
    assert_eq!(stats.samples.len(), count as usize);
    eprintln!("{count} short connections: median {:?}, {:.0}/s", stats.median(), stats.per_second());

    // Entries leave the NAT table after the closed timeout (10 s); hcpe reports the table at shutdown.
    std::thread::sleep(Duration::from_secs(12));
    let fds_after = fds(&hcpe);
    assert!(fds_after <= fds_before, "fds: {fds_before} before, {fds_after} after");
    hcpe.signal(libc::SIGTERM);
    hcpe.wait_timeout(Duration::from_secs(5));
    let log = hcpe.log();
    assert!(log.contains("NAT at shutdown flows=0"), "{}", log.lines().rev().take(5).collect::<Vec<_>>().join("\n"));
}

#[test]
fn hcpe_resets_connections_it_lost_in_a_restart() {
    use std::io::{Read, Write};
    let tb = testbed(Shape::default());
    let dir = config_dir("restart");
    let server = Server::start(&tb.inet, 0).unwrap();
    let dst = server_addr(&server, false);
    let mut hcpe = start_hcpe(&tb, &dir, "direct");
    // A LAN connection through hcpe (no hag: carried directly), idle.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let lan = tb.lan.thread(move || {
        let mut s = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        rx.recv().unwrap();
        let t = Instant::now();
        let _ = s.write_all(b"are you there?");
        let mut b = [0u8; 16];
        let r = s.read(&mut b);
        done_tx.send((t.elapsed(), r.map_err(|e| e.kind()))).unwrap();
    });
    std::thread::sleep(Duration::from_millis(300));
    hcpe.signal(libc::SIGKILL);
    hcpe.wait_timeout(Duration::from_secs(5));
    let _hcpe = start_hcpe(&tb, &dir, "direct");
    tx.send(()).unwrap();
    let (took, result) = done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(result, Err(std::io::ErrorKind::ConnectionReset), "after {took:?}");
    assert!(took < Duration::from_secs(1), "reset took {took:?}");
    let _ = lan.map(|h| h.join());
}
