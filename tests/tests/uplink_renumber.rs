//! Uplink renumbering on the testbed with the real `hcpe` and `hag`: the LTE uplink's address is learned
//! (`address: auto`); the LTE modem "renumbers" (198.18.3.2 goes, 198.18.3.3 comes) while a download runs.
//! hcpe follows without a restart: hag sees a new subflow from the new address on the running connection
//! (hag's admin API lists its subflows), LTE carries data again, and the download finishes intact (every
//! byte checked, SHA-256 trailer).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tests::daemons::{self, HAG_ADMIN_PORT, HagSpec, HcpeSpec, LanDownload};
use tests::emulator::{Direction, Shape};
use tests::testbed::{Testbed, addr, ifname};
use tests::traffic::Server;

/// Remote addresses of every subflow hag's admin API lists (none while the API does not answer).
fn hag_subflow_peers(tb: &Testbed, token: &str) -> Vec<IpAddr> {
    let Ok(json) = daemons::connections(&tb.hag, HAG_ADMIN_PORT, token) else {
        return Vec::new();
    };
    json.as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["subflows"].as_array().cloned().unwrap_or_default())
        .filter_map(|s| daemons::subflow_ip(&s, "remote"))
        .collect()
}

#[test]
fn lte_renumbered_mid_download_gets_a_subflow_from_the_new_address_without_restart() {
    let tb = daemons::managed_testbed(Shape::mbit(20.0).delay_ms(5.0), Shape::mbit(20.0).delay_ms(10.0)).unwrap();
    let dir = daemons::config_dir("uplink-renumber").unwrap();
    let token = daemons::admin_token(dir.path()).unwrap();
    let server = Server::start(&tb.inet, 0).unwrap();
    let _hag = daemons::start_hag(&tb, dir.path(), &HagSpec { v6: false, admin: true, ..HagSpec::default() }).unwrap();
    let yaml = daemons::hcpe_yaml(&HcpeSpec { managed: true, v6: false, ..HcpeSpec::default() });
    let old = addr::CPE_LTE.v4;
    let new: std::net::Ipv4Addr = "198.18.3.3".parse().unwrap();
    let yaml = yaml.replace(&format!("address: {old}"), "address: auto");
    assert!(yaml.contains("address: auto"), "{yaml}");
    let cfg = daemons::write_config(dir.path(), "hcpe.yaml", &yaml).unwrap();
    let mut hcpe = daemons::start(&tb.cpe, "hcpe", &cfg, &["hcpe ready", "uplink manager started"]).unwrap();
    daemons::wait_up(&hcpe, 2, Duration::from_secs(10)).unwrap();
    assert!(hcpe.log().contains(&format!("to={old}")), "the LTE address is learned at start:\n{}", hcpe.log());

    const SIZE: u64 = 20 << 20;
    let dst = SocketAddr::new(addr::INET_SERVER.ip(false), server.port());
    let download = LanDownload::start(&tb, dst, SIZE, Duration::from_secs(15)).unwrap();
    download.wait_for(SIZE / 4, Duration::from_secs(20), "download", &hcpe);
    let token2 = token.clone();
    assert!(hag_subflow_peers(&tb, &token2).contains(&IpAddr::V4(old)), "LTE subflow from the old address first");

    // The modem renumbers: the old address goes, a new one comes (as a new lease would).
    let renumbered = Instant::now();
    tb.cpe.ip(&["addr", "del", &format!("{old}/24"), "dev", ifname::LTE]).unwrap();
    tb.cpe.ip(&["addr", "add", &format!("{new}/24"), "dev", ifname::LTE]).unwrap();
    let lte_before = tb.lte.counters(Direction::Down).tx_bytes;
    assert!(hcpe.wait_for_log(&format!("to={new}"), Duration::from_secs(2)), "hcpe did not follow:\n{}", hcpe.log());
    let followed = renumbered.elapsed();
    let joined = loop {
        if hag_subflow_peers(&tb, &token).contains(&IpAddr::V4(new)) {
            break renumbered.elapsed();
        }
        assert!(
            renumbered.elapsed() < Duration::from_secs(5),
            "hag never saw a subflow from {new}: {:?}\n{}",
            hag_subflow_peers(&tb, &token),
            hcpe.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let transfer = download.join().unwrap_or_else(|e| panic!("download across the renumbering: {e}\n{}", hcpe.log()));
    let lte_after = tb.lte.counters(Direction::Down).tx_bytes - lte_before;
    eprintln!(
        "LTE renumbered {old} -> {new}: hcpe followed after {followed:?}, hag saw the new subflow after {joined:?}; \
         download {:.1} Mbit/s, max stall {:?}, LTE carried {lte_after} B after the renumbering",
        transfer.mbit_per_s(),
        transfer.timeline.max_stall()
    );
    assert_eq!(transfer.bytes, SIZE);
    assert!(joined <= Duration::from_secs(2), "new subflow after {joined:?}");
    assert!(lte_after > 1 << 20, "LTE carried the running download again: {lte_after} B");
    assert!(!hcpe.log().contains("hcpe stopped"), "no restart");
}
