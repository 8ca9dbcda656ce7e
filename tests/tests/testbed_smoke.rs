//! Smoke test: the topology is built, every path works on IPv4 and IPv6, counters move.

use std::net::SocketAddr;
use tests::testbed::addr;
use tests::{Client, Direction, Server, Testbed, TestbedConfig};

#[test]
fn every_path_works_v4_and_v6() {
    let tb = Testbed::new(TestbedConfig::default()).unwrap();
    let inet_srv = Server::start(&tb.inet, 0).unwrap();
    let hag_srv = Server::start(&tb.hag, 0).unwrap();
    for v6 in [false, true] {
        // lan -> inet, plain routed through cpe, dsl, hag.
        let dst = SocketAddr::new(addr::INET_SERVER.ip(v6), inet_srv.port());
        let before = tb.dsl.counters(Direction::Up);
        let t = tb.lan.within(move || Client::new(dst).download(2_000_000)).unwrap().unwrap();
        println!("lan->inet v6={v6}: {:.0} Mbit/s, first byte {:?}", t.mbit_per_s(), t.first_byte);
        assert!(tb.dsl.counters(Direction::Up).since(&before).tx_packets > 0);
        // cpe -> hag service address from each uplink source: each goes over its own link.
        for (src, link) in [(addr::CPE_DSL, &tb.dsl), (addr::CPE_LTE, &tb.lte)] {
            let dst = SocketAddr::new(addr::HAG_SERVICE.ip(v6), hag_srv.port());
            let local = SocketAddr::new(src.ip(v6), 0);
            let before = link.counters(Direction::Down);
            let t = tb.cpe.within(move || Client::new(dst).bind(local).download(1_000_000)).unwrap().unwrap();
            let moved = link.counters(Direction::Down).since(&before).tx_bytes;
            println!("cpe({local})->hag: {:.0} Mbit/s, link carried {moved} bytes", t.mbit_per_s());
            assert!(moved >= 1_000_000, "source {local} did not use its own link");
        }
    }
    assert!(inet_srv.errors().is_empty() && hag_srv.errors().is_empty());
}
