//! Uplink volume quota on the testbed with the real `hcpe` and `hag`: LTE has a monthly quota of a few MiB with
//! `action: backup`; a download over both uplinks pushes LTE over it. hcpe logs `uplink over quota` and the mode
//! change (reason quota), LTE's endpoint gets the backup flag so the next download stays on DSL, and the volume
//! is in the state file after SIGTERM; a restart continues from the file (still over quota, still backup).
//!
//! The admin API shows the same: `/api/v1/uplinks` (mode, volume) and `/metrics` (over-quota gauge, crossings,
//! mode changes by reason).
//!
//! The volume hcpe counts comes from the kernel's counters of `lte0`; the link emulator counts the same
//! Ethernet frames, so the state file must agree with the emulator's counters.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tests::daemons::{self, HagSpec, HcpeSpec};
use tests::emulator::{Direction, Shape};
use tests::netns::ChildGuard;
use tests::testbed::{Testbed, addr};
use tests::traffic::{Client, Server};

const QUOTA: u64 = 6 << 20;

/// The LTE entry of the state file: (rx_bytes, tx_bytes, period_bytes, over_quota).
fn lte_state(path: &Path) -> (u64, u64, u64, bool) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let lte = &v["uplinks"]["lte"];
    let n = |k: &str| lte[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {text}"));
    (n("rx_bytes"), n("tx_bytes"), n("period_bytes"), lte["over_quota"].as_bool().expect("over_quota"))
}

fn lines_with<'a>(log: &'a str, a: &'a str, b: &'a str) -> impl Iterator<Item = &'a str> {
    log.lines().filter(move |l| l.contains(a) && l.contains(b))
}

fn wait_log(hcpe: &ChildGuard, a: &str, b: &str, n: usize, timeout: Duration) {
    let t = Instant::now();
    while lines_with(&hcpe.log(), a, b).count() < n {
        assert!(t.elapsed() < timeout, "no {n}. log line with `{a}` and `{b}` within {timeout:?}:\n{}", hcpe.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of the `/metrics` sample `name{..}` that has every one of `labels` (`k="v"`).
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')))
        .find(|l| labels.iter().all(|lb| l.contains(lb)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// `/api/v1/uplinks` and `/metrics` of the running hcpe.
fn admin_views(tb: &Testbed, token: &str) -> (serde_json::Value, String) {
    let api = SocketAddr::from(([127, 0, 0, 1], daemons::HCPE_ADMIN_PORT));
    let r = daemons::http(&tb.cpe, api, "GET", "/api/v1/uplinks", Some(token), None).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let uplinks: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let lte = uplinks.as_array().unwrap().iter().find(|u| u["name"] == "lte").expect("lte listed").clone();
    let m = daemons::http(&tb.cpe, api, "GET", "/metrics", Some(token), None).unwrap();
    assert_eq!(m.status, 200, "{}", m.body);
    (lte, m.body)
}

fn lte_endpoint_is_backup(tb: &Testbed) -> bool {
    let eps = tb.cpe.ip(&["mptcp", "endpoint", "show"]).unwrap();
    eps.lines().any(|l| l.contains(&addr::CPE_LTE.v4.to_string()) && l.contains("backup"))
}

fn stop(mut hcpe: ChildGuard) {
    hcpe.signal(libc::SIGTERM);
    assert!(hcpe.wait_timeout(Duration::from_secs(5)).is_some_and(|s| s.success()), "{}", hcpe.log());
}

#[test]
fn crossing_the_lte_quota_switches_lte_to_backup_and_survives_a_restart() {
    let tb = daemons::managed_testbed(Shape::mbit(40.0).delay_ms(5.0), Shape::mbit(30.0).delay_ms(10.0)).unwrap();
    let dir = daemons::config_dir("uplink-quota").unwrap();
    let state = dir.path().join("state/volume.json");
    let server = Server::start(&tb.inet, 0).unwrap();
    let _hag = daemons::start_hag(&tb, dir.path(), &HagSpec { v6: false, ..HagSpec::default() }).unwrap();
    let spec = HcpeSpec {
        managed: true,
        admin: true,
        v6: false,
        uplink_extra: [String::new(), format!("quota: {{ limit: {QUOTA}, reset_day: 1, action: backup }}")],
        extra_yaml: "volume: { state_file: state/volume.json, save_interval: 1s }\n".into(),
        ..HcpeSpec::default()
    };
    let hcpe = daemons::start_hcpe(&tb, dir.path(), &spec).unwrap();
    daemons::wait_up(&hcpe, 2, Duration::from_secs(10)).unwrap();
    assert!(!lte_endpoint_is_backup(&tb), "LTE starts active");
    let token = daemons::admin_token(dir.path()).unwrap();
    let (lte, metrics) = admin_views(&tb, &token);
    assert_eq!((lte["mode"].as_str(), lte["volume"]["quota_bytes"].as_u64()), (Some("active"), Some(QUOTA)), "{lte}");
    assert_eq!(metric(&metrics, "hcpe_uplink_over_quota", &["uplink=\"lte\""]), Some(0.0), "{metrics}");
    let dst = SocketAddr::new(addr::INET_SERVER.ip(false), server.port());
    let lte_wire0 = tb.lte.counters(Direction::Down).tx_bytes + tb.lte.counters(Direction::Up).rx_bytes;

    // Both uplinks active: LTE carries its share of 32 MiB until it crosses the quota and drops to backup (the
    // tracker reads counters every second, so it overshoots by up to a second of LTE's rate).
    let t = tb.lan.within(move || Client::new(dst).timeout(Duration::from_secs(10)).download(32 << 20)).unwrap();
    let t = t.unwrap_or_else(|e| panic!("download: {e}\n{}", hcpe.log()));
    let lte_wire = tb.lte.counters(Direction::Down).tx_bytes + tb.lte.counters(Direction::Up).rx_bytes - lte_wire0;
    eprintln!("first download {:.1} Mbit/s; LTE carried {lte_wire} B on the wire (quota {QUOTA} B)", t.mbit_per_s());
    assert!(lte_wire > QUOTA, "LTE carried too little to cross its quota: {lte_wire} B");
    wait_log(&hcpe, "uplink over quota", "lte", 1, Duration::from_secs(5));
    wait_log(&hcpe, "uplink mode changed", "quota", 1, Duration::from_secs(5));
    let log = hcpe.log();
    let changed: Vec<&str> = lines_with(&log, "uplink mode changed", "quota").collect();
    assert!(changed[0].contains("lte") && changed[0].contains("backup"), "{}", changed[0]);
    assert_eq!(lines_with(&log, "uplink over quota", "lte").count(), 1, "logged once:\n{log}");
    assert!(lte_endpoint_is_backup(&tb), "LTE endpoint has the backup flag after the quota");
    let (lte, metrics) = admin_views(&tb, &token);
    let v = &lte["volume"];
    assert_eq!((lte["mode"].as_str(), v["over_quota"].as_bool()), (Some("backup"), Some(true)), "{lte}");
    assert!(v["period_bytes"].as_u64().unwrap() >= QUOTA && v["history"].as_array().is_some_and(|h| !h.is_empty()));
    for (name, labels, want) in [
        ("hcpe_uplink_over_quota", &["uplink=\"lte\""][..], 1.0),
        ("hcpe_uplink_quota_exceeded_total", &["uplink=\"lte\""][..], 1.0),
        ("hcpe_uplink_mode", &["uplink=\"lte\"", "mode=\"backup\""][..], 1.0),
        ("hcpe_uplink_mode_changes_total", &["reason=\"quota\""][..], 1.0),
        ("hcpe_uplink_over_quota", &["uplink=\"dsl\""][..], 0.0),
    ] {
        assert_eq!(metric(&metrics, name, labels), Some(want), "{name}{labels:?} in\n{metrics}");
    }

    // Over quota, LTE is a backup subflow: the next download stays on the healthy DSL.
    let lte0 = tb.lte.counters(Direction::Down).tx_bytes;
    let t = tb.lan.within(move || Client::new(dst).timeout(Duration::from_secs(10)).download(16 << 20)).unwrap();
    t.unwrap_or_else(|e| panic!("download over quota: {e}\n{}", hcpe.log()));
    let lte_after = tb.lte.counters(Direction::Down).tx_bytes - lte0;
    eprintln!("over quota: LTE carried {lte_after} B of a 16 MiB download");
    assert!(lte_after < (16 << 20) / 50, "LTE still carries {lte_after} B while over quota");

    // The volume is in the state file after SIGTERM, and matches the wire.
    stop(hcpe);
    let (rx, tx, period, over) = lte_state(&state);
    let wire_total = tb.lte.counters(Direction::Down).tx_bytes + tb.lte.counters(Direction::Up).rx_bytes;
    eprintln!("state file after SIGTERM: lte rx {rx} tx {tx} period {period} over_quota {over}; wire {wire_total} B");
    assert!(over, "over_quota persisted");
    assert_eq!(period, rx + tx, "one period since counting began");
    assert!(rx + tx <= wire_total, "counted {} B, more than the wire's {wire_total} B", rx + tx);
    assert!(
        (rx + tx) as f64 >= lte_wire as f64 * 0.95,
        "counted {} B, the download alone put {lte_wire} B on LTE",
        rx + tx
    );

    // A restart continues from the file: still over quota (LTE back to backup at once), volume keeps growing.
    let hcpe = daemons::start_hcpe(&tb, dir.path(), &spec).unwrap();
    wait_log(&hcpe, "still over quota", "lte", 1, Duration::from_secs(5));
    wait_log(&hcpe, "uplink mode changed", "quota", 1, Duration::from_secs(5));
    assert!(lte_endpoint_is_backup(&tb), "LTE is backup again after the restart");
    assert!(!hcpe.log().contains("uplink over quota"), "no second crossing in the same period:\n{}", hcpe.log());
    let (lte, metrics) = admin_views(&tb, &token);
    assert_eq!((lte["mode"].as_str(), lte["volume"]["over_quota"].as_bool()), (Some("backup"), Some(true)), "{lte}");
    assert_eq!(metric(&metrics, "hcpe_uplink_quota_exceeded_total", &["uplink=\"lte\""]), Some(1.0), "persisted");
    daemons::wait_up(&hcpe, 2, Duration::from_secs(10)).unwrap();
    let t = tb.lan.within(move || Client::new(dst).timeout(Duration::from_secs(10)).download(4 << 20)).unwrap();
    t.unwrap_or_else(|e| panic!("download after the restart: {e}\n{}", hcpe.log()));
    stop(hcpe);
    let (rx2, tx2, period2, over2) = lte_state(&state);
    eprintln!("state file after the restart: lte rx {rx2} tx {tx2} period {period2} over_quota {over2}");
    assert!(over2 && rx2 + tx2 > rx + tx && period2 == rx2 + tx2, "the restart continued from the file");
}
