//! The topology carries kernel MPTCP the way hcpe/hag use it: a connection from cpe to the hag
//! service address gets a subflow per uplink (source policy routing), and both links carry data.

use std::net::SocketAddr;
use tests::testbed::{addr, ifname};
use tests::{Client, Direction, LinkConfig, Server, Shape, Testbed, TestbedConfig};

#[test]
fn mptcp_connection_uses_both_uplinks() {
    let tb = Testbed::new(TestbedConfig {
        dsl: LinkConfig::symmetric(Shape::mbit(50.0).delay_ms(5.0)),
        lte: LinkConfig { seed: 2, ..LinkConfig::symmetric(Shape::mbit(30.0).delay_ms(10.0)) },
        ..TestbedConfig::default()
    })
    .unwrap();
    tb.hag.ip(&["mptcp", "limits", "set", "subflows", "4", "add_addr_accepted", "4"]).unwrap();
    tb.cpe.ip(&["mptcp", "limits", "set", "subflows", "4", "add_addr_accepted", "4"]).unwrap();
    let lte_src = addr::CPE_LTE.v4.to_string();
    tb.cpe.ip(&["mptcp", "endpoint", "add", &lte_src, "dev", ifname::LTE, "subflow"]).unwrap();
    let srv = Server::bind_mptcp(&tb.hag, SocketAddr::new(addr::HAG_SERVICE.ip(false), 0)).unwrap();
    let dst = srv.addr();
    let src = SocketAddr::new(addr::CPE_DSL.ip(false), 0);
    let t = tb.cpe.within(move || Client::new(dst).bind(src).mptcp().download(20_000_000)).unwrap().unwrap();
    let (d, l) = (tb.dsl.counters(Direction::Down), tb.lte.counters(Direction::Down));
    println!(
        "MPTCP over DSL 50 + LTE 30 Mbit/s: {:.1} Mbit/s; dsl carried {} bytes, lte {} bytes",
        t.mbit_per_s(),
        d.tx_bytes,
        l.tx_bytes
    );
    assert!(d.tx_bytes > 2_000_000, "DSL subflow carried too little");
    assert!(l.tx_bytes > 2_000_000, "LTE subflow carried too little");
    assert!(t.mbit_per_s() > 50.0, "no aggregation: {:.1} Mbit/s", t.mbit_per_s());
}
