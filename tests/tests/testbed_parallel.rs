//! Two testbeds at the same time do not interfere: unique names, separate traffic, separate
//! counters, a cut in one leaves the other untouched.

use std::net::SocketAddr;
use std::time::Duration;
use tests::testbed::addr;
use tests::{Client, Direction, Server, Testbed, TestbedConfig, one_way_probes};

#[test]
fn two_testbeds_run_side_by_side() {
    // Built concurrently, to exercise name uniqueness under a race.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Testbed::new(TestbedConfig::default()).unwrap());
        let b = s.spawn(|| Testbed::new(TestbedConfig::default()).unwrap());
        (a.join().unwrap(), b.join().unwrap())
    });
    let (na, nb) = (a.namespace_names(), b.namespace_names());
    assert!(na.iter().all(|n| !nb.contains(n)), "{na:?} vs {nb:?}");

    let sa = Server::start(&a.inet, 0).unwrap();
    let sb = Server::start(&b.inet, 0).unwrap();
    let da = SocketAddr::new(addr::INET_SERVER.ip(false), sa.port());
    let db = SocketAddr::new(addr::INET_SERVER.ip(true), sb.port());
    // Same addresses in both, different data (seeds) and sizes at the same time.
    let (ta, tb) = std::thread::scope(|s| {
        let ta = s.spawn(|| a.lan.within(move || Client::new(da).seed(1).download(30_000_000)).unwrap());
        let tb = s.spawn(|| b.lan.within(move || Client::new(db).seed(2).upload(20_000_000)).unwrap());
        (ta.join().unwrap().unwrap(), tb.join().unwrap().unwrap())
    });
    let (ca, cb) = (a.dsl.counters(Direction::Down), b.dsl.counters(Direction::Up));
    println!(
        "parallel: A download {:.0} Mbit/s (A dsl down {} bytes), B upload {:.0} Mbit/s (B dsl up {} bytes)",
        ta.mbit_per_s(),
        ca.tx_bytes,
        tb.mbit_per_s(),
        cb.tx_bytes
    );
    assert_eq!((sa.connections(), sb.connections()), (1, 1), "each server saw only its own client");
    assert!(ca.tx_bytes >= 30_000_000 && ca.tx_bytes < 33_000_000, "A's counters carry A's bytes only");
    assert!(a.dsl.counters(Direction::Up).tx_bytes < 3_000_000, "A's uplink did not carry B's upload");
    assert!(cb.tx_bytes >= 20_000_000 && cb.tx_bytes < 23_000_000);

    // Cutting A's DSL leaves B's DSL working.
    a.dsl.cut();
    let probe = |tb: &Testbed| {
        let hag = SocketAddr::new(addr::HAG_DSL.ip(false), 0);
        let cpe = SocketAddr::new(addr::CPE_DSL.ip(false), 0);
        one_way_probes(&tb.cpe, Some(cpe), &tb.hag, hag, 50, Duration::from_millis(2), Duration::from_millis(100))
            .unwrap()
    };
    let (pa, pb) = (probe(&a), probe(&b));
    println!("A cut: A lost {:.0} %, B lost {:.0} %", pa.loss() * 100.0, pb.loss() * 100.0);
    assert_eq!(pa.loss(), 1.0);
    assert_eq!(pb.loss(), 0.0);
    drop(a);
    // B still works after A is gone.
    let t = b.lan.within(move || Client::new(db).download(5_000_000)).unwrap().unwrap();
    assert_eq!(t.bytes, 5_000_000);
}
