//! Both daemons started from `deploy/examples/*.yaml` as an operator gets them (hag on the wildcard listeners
//! `0.0.0.0:5124` and `[::]:5124`, hcpe with its uplink manager and default probes), with only addresses,
//! interface names and file paths substituted: uplinks healthy within 2 s, one download aggregates both links
//! against single-link baselines measured in the same run, and a download survives a silent DSL cut; the same
//! with UDP to hag filtered, where uplink health comes from the MPTCP subflows.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tests::daemons::{self, LanDownload};
use tests::emulator::{Direction, LinkConfig, Shape};
use tests::netns::ChildGuard;
use tests::testbed::{Testbed, TestbedConfig, addr};
use tests::traffic::Server;

/// DSL 50 Mbit/s at 10 ms one way, LTE 30 Mbit/s at 20 ms, both directions; nothing else configured (hag's
/// kernel keeps its default MPTCP limits).
fn testbed() -> Testbed {
    Testbed::new(TestbedConfig {
        dsl: LinkConfig::symmetric(Shape::mbit(50.0).delay_ms(10.0)),
        lte: LinkConfig { seed: 2, ..LinkConfig::symmetric(Shape::mbit(30.0).delay_ms(20.0)) },
        ..TestbedConfig::default()
    })
    .unwrap()
}

/// A testbed, a config directory (key and token), and a server in `inet` with its address in the family asked.
struct Bed {
    tb: Testbed,
    dir: tempfile::TempDir,
    dst: SocketAddr,
    server: Server,
}

fn bed(tag: &str, v6: bool) -> Bed {
    let tb = testbed();
    let dir = daemons::config_dir(&format!("as-shipped-{tag}")).unwrap();
    let server = Server::start(&tb.inet, 0).unwrap();
    let dst = SocketAddr::new(addr::INET_SERVER.ip(v6), server.port());
    Bed { tb, dir, dst, server }
}

/// Runs each `nft` command (words split on spaces) in hag's namespace.
fn nft(tb: &Testbed, rules: &[String]) {
    for rule in rules {
        let args: Vec<&str> = rule.split(' ').collect();
        tb.hag.exec_ok("nft", &args).unwrap_or_else(|e| panic!("nft {rule}: {e} (needs Debian's nftables)"));
    }
}

/// Bytes each link delivered towards the CPE so far (DSL, LTE).
fn down_bytes(tb: &Testbed) -> (u64, u64) {
    (tb.dsl.counters(Direction::Down).tx_bytes, tb.lte.counters(Direction::Down).tx_bytes)
}

/// hcpe's admin API (as the example config serves it) inside the cpe namespace: `GET path`, the body.
fn hcpe_api(tb: &Testbed, token: &str, path: &str) -> String {
    let api = SocketAddr::from(([127, 0, 0, 1], daemons::HCPE_ADMIN_PORT));
    let r = daemons::http(&tb.cpe, api, "GET", path, Some(token), None).unwrap();
    assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    r.body
}

/// A 64 MiB download aggregates both links (each at least 20 % of the bytes, at least 0.9 x the sum of the
/// single-link baselines), then a second download survives a silent DSL cut at a third (intact, longest stall
/// 1.5 s). `label` names the run in the printed numbers.
fn aggregate_then_cut(tb: &Testbed, dst: SocketAddr, baselines: (f64, f64), hcpe: &ChildGuard, label: &str) {
    let (dsl_alone, lte_alone) = baselines;
    const SIZE: u64 = 64 << 20;
    let links_before = down_bytes(tb);
    let download = LanDownload::start(tb, dst, SIZE, Duration::from_secs(10)).unwrap();
    let transfer = download.join().unwrap_or_else(|e| panic!("aggregate download: {e}\nhcpe log:\n{}", hcpe.log()));
    let links = down_bytes(tb);
    let (dsl, lte) = (links.0 - links_before.0, links.1 - links_before.1);
    let dsl_share = dsl as f64 / (dsl + lte) as f64;
    let sum = dsl_alone + lte_alone;
    let got = transfer.mbit_per_s();
    eprintln!(
        "{label}: DSL alone {dsl_alone:.1}, LTE alone {lte_alone:.1} Mbit/s; through hcpe/hag {got:.1} Mbit/s = {:.2} x \
         the sum; DSL carried {:.0} %",
        got / sum,
        dsl_share * 100.0
    );
    assert_eq!(transfer.bytes, SIZE);
    assert!((0.2..=0.8).contains(&dsl_share), "each link carries at least 20 %: DSL {dsl} B, LTE {lte} B");
    assert!(got >= 0.9 * sum, "{got:.1} Mbit/s < 0.9 x ({dsl_alone:.1} + {lte_alone:.1})");

    // A silent DSL cut (carrier up, every frame dropped) at a third of a second download.
    const CUT_SIZE: u64 = 32 << 20;
    let download = LanDownload::start(tb, dst, CUT_SIZE, Duration::from_secs(10)).unwrap();
    download.wait_for(CUT_SIZE / 3, Duration::from_secs(20), "download", hcpe);
    tb.dsl.cut();
    let transfer = download.join().unwrap_or_else(|e| panic!("download across the DSL cut: {e}\n{}", hcpe.log()));
    eprintln!(
        "{label}, DSL cut: {:.1} Mbit/s, longest stall {:?}",
        transfer.mbit_per_s(),
        transfer.timeline.max_stall()
    );
    assert_eq!(transfer.bytes, CUT_SIZE, "intact (the client checks the SHA-256 of the stream)");
    assert!(transfer.timeline.max_stall() <= Duration::from_millis(1500), "stall {:?}", transfer.timeline.max_stall());
}

/// The single-link baselines (DSL, LTE) in Mbit/s, measured with no daemon running, in `dst`'s family.
fn baselines(tb: &Testbed, dst: SocketAddr) -> (f64, f64) {
    let v6 = dst.is_ipv6();
    let dsl = daemons::single_link(tb, dst, addr::CPE_DSL.ip(v6), 16 << 20).unwrap().mbit_per_s();
    let lte = daemons::single_link(tb, dst, addr::CPE_LTE.ip(v6), 10 << 20).unwrap().mbit_per_s();
    (dsl, lte)
}

#[test]
fn example_configs_aggregate_both_uplinks_and_survive_a_dsl_cut() {
    let Bed { tb, dir, dst, server: _server } = bed("examples", false);
    let baselines = baselines(&tb, dst);

    let (_hag, hcpe) = daemons::start_examples(&tb, dir.path()).unwrap();
    // Within 2 s of hcpe's start (hcpe logs `hcpe ready` a few ms after its process starts).
    let started = Instant::now();
    daemons::wait_up(&hcpe, 2, Duration::from_secs(2)).unwrap();
    eprintln!("as shipped: both uplinks healthy {:?} after hcpe was ready", started.elapsed());
    aggregate_then_cut(&tb, dst, baselines, &hcpe, "as shipped");
}

/// IPv6 through hag's wildcard listeners, hag reached over IPv6 (the shipped example gives LTE no IPv6, so hcpe
/// runs with both uplinks dual-stack here): both uplinks come up within 2 s on IPv6 probes, and an IPv6 download
/// aggregates and survives the cut like IPv4.
#[test]
fn wildcard_hag_aggregates_ipv6_and_survives_a_dsl_cut() {
    let Bed { tb, dir, dst, server: _server } = bed("v6", true);
    let baselines = baselines(&tb, dst);
    let _hag = daemons::start_hag(&tb, dir.path(), &daemons::HagSpec::default()).unwrap();
    // hag over IPv6 first: the MPTCP connections, their subflows and the probes all run over IPv6.
    let spec = daemons::HcpeSpec { managed: true, log_level: "info".into(), ..daemons::HcpeSpec::default() };
    let hag4 = format!("addresses: ['{}']", addr::HAG_SERVICE.v4);
    let yaml = daemons::hcpe_yaml(&spec)
        .replace(&hag4, &format!("addresses: ['{}', '{}']", addr::HAG_SERVICE.v6, addr::HAG_SERVICE.v4));
    let cfg = daemons::write_config(dir.path(), "hcpe.yaml", &yaml).unwrap();
    let hcpe = daemons::start(&tb.cpe, "hcpe", &cfg, &["hcpe ready", "uplink manager started"]).unwrap();
    daemons::wait_up(&hcpe, 2, Duration::from_secs(2)).unwrap();
    aggregate_then_cut(&tb, dst, baselines, &hcpe, "IPv6, wildcard hag");
}

/// UDP to hag dropped on both uplinks (nftables in hag's namespace): no probe is ever answered, yet both
/// endpoints stay, aggregation holds and a silent DSL cut is still survived, on health from the subflows.
#[test]
fn probes_filtered_on_both_uplinks_health_comes_from_the_subflows() {
    let Bed { tb, dir, dst, server: _server } = bed("filtered", false);
    let baselines = baselines(&tb, dst);
    nft(
        &tb,
        &[
            "add table inet probefilter".into(),
            "add chain inet probefilter input { type filter hook input priority 0 ; }".into(),
            "add rule inet probefilter input udp dport 5124 drop".into(),
        ],
    );

    let (_hag, mut hcpe) = daemons::start_examples(&tb, dir.path()).unwrap();
    assert!(
        hcpe.wait_for_log("health from subflows", Duration::from_secs(5)),
        "no switch to subflow health:\n{}",
        hcpe.log()
    );
    let token = daemons::admin_token(dir.path()).unwrap();
    // Past the moment the probes would have removed the endpoints.
    std::thread::sleep(Duration::from_secs(1));
    let uplinks: serde_json::Value = serde_json::from_str(&hcpe_api(&tb, &token, "/api/v1/uplinks")).unwrap();
    for u in uplinks.as_array().unwrap() {
        assert_eq!(u["health_source"], "subflows", "{u}");
        assert!(u["endpoint"].is_object(), "the endpoint stays: {u}");
        assert_ne!(u["state"], "down", "{u}");
    }
    let metrics = hcpe_api(&tb, &token, "/metrics");
    for line in
        ["hcpe_uplink_health_from_subflows{uplink=\"dsl\"} 1", "hcpe_uplink_subflow_fallbacks_total{uplink=\"dsl\"} 1"]
    {
        assert!(metrics.lines().any(|l| l == line), "/metrics lacks `{line}`:\n{metrics}");
    }
    aggregate_then_cut(&tb, dst, baselines, &hcpe, "probes filtered");
    // The cut is seen on the subflows: DSL goes down, LTE carries new connections.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let uplinks: serde_json::Value = serde_json::from_str(&hcpe_api(&tb, &token, "/api/v1/uplinks")).unwrap();
        let dsl = &uplinks[0];
        if dsl["state"] == "down" && uplinks[1]["initial"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "DSL not down on its subflows after the cut: {uplinks}\n{}", hcpe.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A counter from hag's `/metrics` (as the example config serves it, with the config directory's token).
fn hag_counter(tb: &Testbed, token: &str, name: &str) -> u64 {
    let api = SocketAddr::from(([127, 0, 0, 1], daemons::HAG_ADMIN_PORT));
    let r = daemons::http(&tb.hag, api, "GET", "/metrics", Some(token), None).unwrap();
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in hag's /metrics:\n{}", r.body))
}

/// New connections every 50 ms from 1 s before a silent DSL cut until 3 s after it (on ready connections from
/// hcpe's pool, or connected afresh and raced): every one succeeds (the reply arrives whole, SHA-256 checked)
/// within 1 s of its connect, hag relayed exactly as many connections as the clients made, and afterwards
/// hag holds nothing open but the pool's ready connections (a raced attempt that lost leaves nothing open).
#[test]
fn connections_opened_around_a_silent_cut_all_succeed_within_a_second() {
    let Bed { tb, dir, dst, server } = bed("race", false);
    let (_hag, hcpe, token) = start_healthy(&tb, &dir);
    let relayed_before = hag_counter(&tb, &token, "hag_connections_relayed_total");
    let served_before = server.connections();

    const EVERY: Duration = Duration::from_millis(50);
    const COUNT: u32 = 80;
    let start = Instant::now() + Duration::from_millis(100);
    let cut_at = start + Duration::from_secs(1);
    let clients: Vec<_> = (0..COUNT)
        .map(|k| {
            let at = start + EVERY * k;
            tb.lan
                .thread(move || {
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                    let r = tests::traffic::Client::new(dst).timeout(Duration::from_secs(5)).download(1000);
                    (k, at, r)
                })
                .unwrap()
        })
        .collect();
    std::thread::sleep(cut_at.saturating_duration_since(Instant::now()));
    tb.dsl.cut();
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();

    let mut slowest = (Duration::ZERO, 0i64);
    let mut failed = Vec::new();
    for (k, at, r) in &results {
        let offset_ms = at.duration_since(cut_at).as_millis() as i64 - cut_at.duration_since(*at).as_millis() as i64;
        match r {
            Ok(t) if t.first_byte > slowest.0 => slowest = (t.first_byte, offset_ms),
            Ok(_) => {}
            Err(e) => failed.push(format!("#{k} at {offset_ms:+} ms: {e}")),
        }
    }
    let firsts: Vec<u128> =
        results.iter().filter_map(|(_, _, r)| r.as_ref().ok()).map(|t| t.first_byte.as_millis()).collect();
    eprintln!(
        "{COUNT} connections around the cut: {} failed; slowest first byte {:?} (started {:+} ms from the cut); \
         first byte ms: {firsts:?}",
        failed.len(),
        slowest.0,
        slowest.1
    );
    assert!(failed.is_empty(), "failed connections: {failed:#?}\nhcpe log:\n{}", hcpe.log());
    assert!(slowest.0 <= Duration::from_secs(1), "slowest first byte {:?}\n{}", slowest.0, hcpe.log());
    // Let any straggler at hag show up before counting.
    std::thread::sleep(Duration::from_millis(500));
    let relayed = hag_counter(&tb, &token, "hag_connections_relayed_total") - relayed_before;
    assert_eq!(server.connections() - served_before, u64::from(COUNT));
    assert_eq!(relayed, u64::from(COUNT), "hag relayed {relayed} connections for {COUNT} clients");
    let open = hag_counter(&tb, &token, "hag_connections_open");
    let held = hag_counter(&tb, &token, "hag_connections_held");
    assert_eq!(open, held, "hag holds {open} connections open, {held} of them ready connections");
}

/// Both daemons from the examples with both uplinks up; the admin token.
fn start_healthy(tb: &Testbed, dir: &tempfile::TempDir) -> (ChildGuard, ChildGuard, String) {
    let (hag, hcpe) = daemons::start_examples(tb, dir.path()).unwrap();
    daemons::wait_up(&hcpe, 2, Duration::from_secs(5)).unwrap();
    (hag, hcpe, daemons::admin_token(dir.path()).unwrap())
}

/// nftables in hag's namespace blanking the MPTCP option of every TCP segment that crosses `dev` either way: a
/// middlebox on that access network that strips MPTCP.
fn strip_mptcp(tb: &Testbed, dev: &str) {
    nft(
        tb,
        &[
            "add table inet strip".into(),
            "add chain inet strip pre { type filter hook prerouting priority -300 ; }".into(),
            "add chain inet strip post { type filter hook postrouting priority -300 ; }".into(),
            format!("add rule inet strip pre iifname {dev} reset tcp option mptcp"),
            format!("add rule inet strip post oifname {dev} reset tcp option mptcp"),
        ],
    );
}

/// One download of `size` bytes by the LAN client (in the lan namespace), to its end.
fn lan_download(tb: &Testbed, dst: SocketAddr, size: u64) -> Result<tests::traffic::Transfer, tests::traffic::Error> {
    tb.lan.within(move || tests::traffic::Client::new(dst).timeout(Duration::from_secs(5)).download(size)).unwrap()
}

/// `/api/v1/uplinks` of hcpe, parsed.
fn uplinks(tb: &Testbed, token: &str) -> serde_json::Value {
    serde_json::from_str(&hcpe_api(tb, token, "/api/v1/uplinks")).unwrap()
}

/// The one connection hcpe lists while `download` runs (waits for it to appear).
fn listed_connection(tb: &Testbed, token: &str, download: &LanDownload, hcpe: &ChildGuard) -> serde_json::Value {
    download.wait_for(1 << 20, Duration::from_secs(10), "download", hcpe);
    let list: serde_json::Value = serde_json::from_str(&hcpe_api(tb, token, "/api/v1/connections")).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    list[0].clone()
}

/// MPTCP stripped on DSL: connections that start there fall back to plain TCP and still work; hcpe counts and
/// reports it, and new connections start on LTE with MPTCP within 2 s.
#[test]
fn mptcp_stripped_on_dsl_connections_fall_back_and_new_ones_move_to_lte() {
    let Bed { tb, dir, dst, server: _server } = bed("strip-dsl", false);
    let (_hag, hcpe, token) = start_healthy(&tb, &dir);

    strip_mptcp(&tb, "dsl0");
    let stripped = Instant::now();
    let mut connections = 0;
    let moved = loop {
        let t = lan_download(&tb, dst, 256 << 10);
        t.unwrap_or_else(|e| panic!("a connection over stripped DSL failed: {e}\n{}", hcpe.log()));
        connections += 1;
        if uplinks(&tb, &token)[1]["initial"] == true {
            break stripped.elapsed();
        }
        assert!(stripped.elapsed() < Duration::from_secs(5), "new connections stay on DSL:\n{}", hcpe.log());
    };
    let ups = uplinks(&tb, &token);
    eprintln!(
        "MPTCP stripped on DSL: new connections start on LTE {moved:?} after, {connections} connections; dsl: {}",
        ups[0]["mptcp"]
    );
    assert!(moved <= Duration::from_secs(2), "moved after {moved:?}");
    assert!(ups[0]["mptcp"]["fallbacks"].as_u64() >= Some(2) && ups[0]["mptcp"]["stripped"] == true, "{ups}");
    let metrics = hcpe_api(&tb, &token, "/metrics");
    let line = "hcpe_uplink_mptcp_stripped{uplink=\"dsl\",what=\"initial\"} 1";
    assert!(metrics.lines().any(|l| l == line), "/metrics lacks `{line}`");
    assert!(hcpe.log().contains("MPTCP stripped on the uplink"), "no log line");

    let download = LanDownload::start(&tb, dst, 8 << 20, Duration::from_secs(10)).unwrap();
    let c = listed_connection(&tb, &token, &download, &hcpe);
    assert_eq!((c["uplink_initial"].as_str(), c["fallback"].as_bool()), (Some("lte"), Some(false)), "{c}");
    assert!(c["token"].is_u64(), "an MPTCP connection: {c}");
    download.join().unwrap();
}

/// MPTCP stripped on LTE: connections still start on DSL with MPTCP and work, LTE carries nothing of them (no
/// aggregation), the failing joins are counted and reported, and once reported no more joins go out over LTE.
#[test]
fn mptcp_stripped_on_lte_joins_fail_are_reported_and_dsl_carries_on() {
    let Bed { tb, dir, dst, server: _server } = bed("strip-lte", false);
    let (_hag, hcpe, token) = start_healthy(&tb, &dir);

    strip_mptcp(&tb, "lte0");
    let lte_before = tb.lte.counters(Direction::Down).tx_bytes;
    let started = Instant::now();
    while uplinks(&tb, &token)[1]["mptcp"]["joins_fail"] != true {
        let t = lan_download(&tb, dst, 1 << 20);
        t.unwrap_or_else(|e| panic!("a connection failed: {e}\n{}", hcpe.log()));
        assert!(started.elapsed() < Duration::from_secs(10), "failing joins not reported:\n{}", hcpe.log());
    }
    let ups = uplinks(&tb, &token);
    eprintln!("MPTCP stripped on LTE: reported {:?} after; lte: {}", started.elapsed(), ups[1]["mptcp"]);
    assert!(ups[1]["endpoint"].is_null(), "LTE's endpoint is withdrawn: {ups}");
    assert_eq!(ups[0]["initial"], true);
    assert!(hcpe.log().contains("MPTCP joins over the uplink fail"), "no log line");
    let failures = ups[1]["mptcp"]["join_failures"].as_u64().unwrap();

    let download = LanDownload::start(&tb, dst, 16 << 20, Duration::from_secs(10)).unwrap();
    let c = listed_connection(&tb, &token, &download, &hcpe);
    assert_eq!((c["uplink_initial"].as_str(), c["fallback"].as_bool()), (Some("dsl"), Some(false)), "{c}");
    download.join().unwrap();
    for _ in 0..5 {
        lan_download(&tb, dst, 256 << 10).unwrap();
    }
    let lte_carried = tb.lte.counters(Direction::Down).tx_bytes - lte_before;
    let after = uplinks(&tb, &token)[1]["mptcp"]["join_failures"].as_u64().unwrap();
    eprintln!(
        "LTE carried {lte_carried} B of the downloads; join failures {failures} -> {after} over 6 more connections"
    );
    assert_eq!(after, failures, "joins still tried over LTE (retry storm)");
    assert!(lte_carried < 1 << 20, "LTE carried {lte_carried} B");
}
