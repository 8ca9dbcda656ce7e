//! The monitoring shipped in `deploy/monitoring/` (Prometheus alerting rules, a Grafana dashboard) uses only
//! metrics the daemons really export: both daemons run from the shipped examples in the testbed, their
//! `/metrics` are scraped, and every `hag_*` / `hcpe_*` name in the rules' expressions and the dashboard's
//! queries must be a family there.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tests::daemons;
use tests::emulator::{LinkConfig, Shape};
use tests::netns::Netns;
use tests::testbed::{Testbed, TestbedConfig};

/// Family names in a Prometheus text exposition (from `# TYPE` lines).
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn scrape(ns: &Netns, port: u16, token: &str) -> String {
    let api = SocketAddr::from(([127, 0, 0, 1], port));
    let r = daemons::http(ns, api, "GET", "/metrics", Some(token), None).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

/// Every `hag_...` / `hcpe_...` identifier in `text`, with a histogram's `_bucket`/`_sum`/`_count` taken
/// back to its family.
fn used_metrics(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = (text[i..].starts_with("hag_") || text[i..].starts_with("hcpe_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if !starts {
            i += 1;
            continue;
        }
        let end = text[i..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(text.len(), |e| i + e);
        let name = &text[i..end];
        let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        out.insert(family.to_owned());
        i = end;
    }
    out
}

#[test]
fn alert_rules_and_dashboard_use_only_exported_metrics() {
    let tb = Testbed::new(TestbedConfig {
        dsl: LinkConfig::symmetric(Shape::mbit(50.0).delay_ms(5.0)),
        lte: LinkConfig { seed: 2, ..LinkConfig::symmetric(Shape::mbit(30.0).delay_ms(10.0)) },
        ..TestbedConfig::default()
    })
    .unwrap();
    let dir = daemons::config_dir("monitoring").unwrap();
    let token = daemons::admin_token(dir.path()).unwrap();
    let (_hag, hcpe) = daemons::start_examples(&tb, dir.path()).unwrap();
    daemons::wait_up(&hcpe, 2, Duration::from_secs(5)).unwrap();
    // The ready pool's held connections make the per-CPE families appear at hag.
    std::thread::sleep(Duration::from_secs(1));
    let mut exported = families(&scrape(&tb.hag, daemons::HAG_ADMIN_PORT, &token));
    exported.extend(families(&scrape(&tb.cpe, daemons::HCPE_ADMIN_PORT, &token)));
    eprintln!("exported: {exported:#?}");

    let monitoring = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring");
    for file in ["alerts.yml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(monitoring.join(file)).unwrap();
        let used = used_metrics(&text);
        assert!(used.len() >= 5, "{file} uses hardly any metric: {used:?}");
        let missing: Vec<&String> = used.iter().filter(|m| !exported.contains(*m)).collect();
        assert!(missing.is_empty(), "{file} uses metrics the daemons do not export: {missing:?}");
        eprintln!("{file}: {} metrics, all exported", used.len());
    }
    // The dashboard is JSON Grafana can import.
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(monitoring.join("grafana-dashboard.json")).unwrap()).unwrap();
    assert!(dashboard["panels"].as_array().is_some_and(|p| !p.is_empty()));
}
