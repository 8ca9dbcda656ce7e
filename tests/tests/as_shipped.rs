//! Both daemons started from `deploy/examples/*.yaml` as an operator gets them (hag on the wildcard listeners
//! `0.0.0.0:5124` and `[::]:5124`, hcpe with its uplink manager and default probes), with only addresses,
//! interface names and file paths substituted: uplinks healthy within 2 s, one download aggregates both links
//! against single-link baselines measured in the same run, and a download survives a silent DSL cut.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tests::daemons::{self, LanDownload};
use tests::emulator::{Direction, LinkConfig, Shape};
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

/// Bytes each link delivered towards the CPE so far (DSL, LTE).
fn down_bytes(tb: &Testbed) -> (u64, u64) {
    (tb.dsl.counters(Direction::Down).tx_bytes, tb.lte.counters(Direction::Down).tx_bytes)
}

#[test]
fn example_configs_aggregate_both_uplinks_and_survive_a_dsl_cut() {
    let tb = testbed();
    let dir = daemons::config_dir("as-shipped").unwrap();
    let server = Server::start(&tb.inet, 0).unwrap();
    let dst = SocketAddr::new(addr::INET_SERVER.ip(false), server.port());

    // Baselines first, with no daemon running: one plain TCP download over each link alone.
    let dsl_alone = daemons::single_link(&tb, dst, addr::CPE_DSL.ip(false), 16 << 20).unwrap().mbit_per_s();
    let lte_alone = daemons::single_link(&tb, dst, addr::CPE_LTE.ip(false), 10 << 20).unwrap().mbit_per_s();

    let started = Instant::now();
    let (_hag, hcpe) = daemons::start_examples(&tb, dir.path()).unwrap();
    daemons::wait_up(&hcpe, 2, Duration::from_secs(2).saturating_sub(started.elapsed())).unwrap();
    let healthy_after = started.elapsed();

    const SIZE: u64 = 64 << 20;
    let links_before = down_bytes(&tb);
    let download = LanDownload::start(&tb, dst, SIZE, Duration::from_secs(10)).unwrap();
    let transfer = download.join().unwrap_or_else(|e| panic!("aggregate download: {e}\nhcpe log:\n{}", hcpe.log()));
    let links = down_bytes(&tb);
    let (dsl, lte) = (links.0 - links_before.0, links.1 - links_before.1);
    let dsl_share = dsl as f64 / (dsl + lte) as f64;
    let sum = dsl_alone + lte_alone;
    let got = transfer.mbit_per_s();
    eprintln!(
        "as shipped: healthy {healthy_after:?} after start; DSL alone {dsl_alone:.1}, LTE alone {lte_alone:.1} Mbit/s; \
         through hcpe/hag {got:.1} Mbit/s = {:.2} x the sum; DSL carried {:.0} %",
        got / sum,
        dsl_share * 100.0
    );
    assert_eq!(transfer.bytes, SIZE);
    assert!((0.2..=0.8).contains(&dsl_share), "each link carries at least 20 %: DSL {dsl} B, LTE {lte} B");
    assert!(got >= 0.9 * sum, "{got:.1} Mbit/s < 0.9 x ({dsl_alone:.1} + {lte_alone:.1})");

    // A silent DSL cut (carrier up, every frame dropped) at a third of a second download.
    const CUT_SIZE: u64 = 32 << 20;
    let download = LanDownload::start(&tb, dst, CUT_SIZE, Duration::from_secs(10)).unwrap();
    download.wait_for(CUT_SIZE / 3, Duration::from_secs(20), "download", &hcpe);
    tb.dsl.cut();
    let transfer = download.join().unwrap_or_else(|e| panic!("download across the DSL cut: {e}\n{}", hcpe.log()));
    eprintln!(
        "as shipped, DSL cut: {:.1} Mbit/s, longest stall {:?}",
        transfer.mbit_per_s(),
        transfer.timeline.max_stall()
    );
    assert_eq!(transfer.bytes, CUT_SIZE, "intact (the client checks the SHA-256 of the stream)");
    assert!(transfer.timeline.max_stall() <= Duration::from_millis(1500), "stall {:?}", transfer.timeline.max_stall());
}
