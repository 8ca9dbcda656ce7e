//! Uplink failover on the testbed with the real `hcpe` (uplink manager) and `hag` (probe responder):
//! DSL blackholed (carrier up) during a download: no reset, SHA-256 intact, no stall over 1 s in the 100 ms
//! progress timeline, LTE carries on; new connections tried every 100 ms from the cut succeed within 1 s;
//! DSL restored: a running download regains a DSL subflow within 2 s and speeds up (subflows from hag's admin
//! API); standby and backup LTE.
//!
//! hcpe manages the MPTCP endpoints itself here (the test adds none): it drops DSL's endpoint when DSL's probes
//! go unanswered, so the kernel closes that subflow and reinjects its data on LTE.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tests::daemons::{self, HagSpec, HcpeSpec, LanDownload, verdicts};
use tests::emulator::{Direction, Shape};
use tests::netns::ChildGuard;
use tests::testbed::{Testbed, addr};
use tests::traffic::{Client, Server};

type TempDir = tempfile::TempDir;

fn config_dir(tag: &str) -> TempDir {
    daemons::config_dir(&format!("uplink-failover-{tag}")).unwrap()
}

fn start_hag(tb: &Testbed, dir: &TempDir) -> ChildGuard {
    daemons::start_hag(tb, dir.path(), &HagSpec { v6: false, admin: true, ..HagSpec::default() }).unwrap()
}

/// Whether hag's admin API lists an established subflow from `cpe_ip` on its connection to `dst`.
fn hag_has_subflow_from(tb: &Testbed, dir: &TempDir, dst: SocketAddr, cpe_ip: std::net::IpAddr) -> bool {
    let token = daemons::admin_token(dir.path()).unwrap();
    let conns = daemons::connections(&tb.hag, daemons::HAG_ADMIN_PORT, &token).unwrap();
    conns.as_array().unwrap().iter().filter(|c| c["destination"] == dst.to_string()).any(|c| {
        c["subflows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["tcp_state"] == 1 && daemons::subflow_ip(f, "remote") == Some(cpe_ip))
    })
}

/// DSL 40 Mbit/s 5 ms, LTE 20 Mbit/s 10 ms.
fn testbed() -> Testbed {
    daemons::managed_testbed(Shape::mbit(40.0).delay_ms(5.0), Shape::mbit(20.0).delay_ms(10.0)).unwrap()
}

/// hcpe with the uplink manager in charge (roles, gateways, probes every 200 ms), IPv4 only.
fn start_hcpe(tb: &Testbed, dir: &TempDir, lte_mode: &str) -> ChildGuard {
    let spec = HcpeSpec { managed: true, lte_mode: lte_mode.into(), v6: false, ..HcpeSpec::default() };
    daemons::start_hcpe(tb, dir.path(), &spec).unwrap()
}

/// Waits until hcpe logged `n` health verdicts going to up.
fn wait_up(hcpe: &mut ChildGuard, n: usize) {
    daemons::wait_up(hcpe, n, Duration::from_secs(10)).unwrap();
}

#[test]
fn dsl_cut_keeps_the_download_and_new_connections_move_to_lte() {
    let tb = testbed();
    let dir = config_dir("cut");
    let server = Server::start(&tb.inet, 0).unwrap();
    let _hag = start_hag(&tb, &dir);
    let mut hcpe = start_hcpe(&tb, &dir, "active");
    wait_up(&mut hcpe, 2);
    let dst = SocketAddr::new(addr::INET_SERVER.ip(false), server.port());

    // Cut DSL at about 30 % of a download.
    const SIZE: u64 = 24 << 20;
    let download = LanDownload::start(&tb, dst, SIZE, Duration::from_secs(10)).unwrap();
    download.wait_for(SIZE * 3 / 10, Duration::from_secs(20), "download", &hcpe);
    let lte_before = tb.lte.counters(Direction::Down).tx_bytes;
    let cut_at = download.started.elapsed();
    tb.dsl.cut();
    let transfer = download
        .join()
        .unwrap_or_else(|e| panic!("download across the DSL cut failed: {e}\nhcpe log:\n{}", hcpe.log()));
    let lte_after = tb.lte.counters(Direction::Down).tx_bytes - lte_before;
    let rates: Vec<String> = transfer.timeline.mbit_per_s().iter().map(|r| format!("{r:.0}")).collect();
    eprintln!(
        "download across the cut (at {cut_at:?}): {:.1} Mbit/s, max stall {:?}, max gap {:?}, LTE carried {lte_after} B after the cut\n\
         per-100ms Mbit/s: {}",
        transfer.mbit_per_s(),
        transfer.timeline.max_stall(),
        transfer.timeline.max_gap,
        rates.join(" ")
    );
    assert_eq!(transfer.bytes, SIZE);
    assert!(transfer.timeline.max_stall() <= Duration::from_secs(1), "stall {:?}", transfer.timeline.max_stall());
    assert!(lte_after as f64 > SIZE as f64 * 0.5, "LTE carried the rest: {lte_after} B");

    // DSL back and healthy, then cut again while new connections start every 100 ms.
    tb.dsl.restore();
    wait_up(&mut hcpe, 3);
    let cut = Instant::now();
    tb.dsl.cut();
    let mut attempts = Vec::new();
    for i in 0..20u32 {
        let started = cut + Duration::from_millis(100) * i;
        if let Some(wait) = started.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        attempts.push(
            tb.lan
                .thread(move || {
                    let r = Client::new(dst).timeout(Duration::from_secs(3)).download(1000);
                    (i, r.is_ok(), cut.elapsed())
                })
                .unwrap(),
        );
    }
    let results: Vec<(u32, bool, Duration)> = attempts.into_iter().map(|h| h.join().unwrap()).collect();
    let first_ok = results.iter().filter(|r| r.1).map(|r| r.2).min();
    let failed = results.iter().filter(|r| !r.1).count();
    eprintln!("new connections after the cut: first success {first_ok:?} after the cut, {failed} of 20 failed");
    let first_ok = first_ok.unwrap_or_else(|| panic!("no new connection succeeded:\n{}", hcpe.log()));
    assert!(first_ok <= Duration::from_secs(1), "first success {first_ok:?} after the cut");

    // A download that started on LTE alone gets a DSL subflow (hag's MPTCP_FULL_INFO, through its
    // admin API) within 2 s of DSL coming back, and its throughput rises.
    let download = LanDownload::start(&tb, dst, 32 << 20, Duration::from_secs(10)).unwrap();
    download.wait_for(2 << 20, Duration::from_secs(20), "download on LTE", &hcpe);
    let bytes_in = |d: Duration| {
        let a = download.bytes();
        std::thread::sleep(d);
        download.bytes() - a
    };
    let lte_only = bytes_in(Duration::from_secs(1));
    let dsl_ip = std::net::IpAddr::V4(addr::CPE_DSL.v4);
    assert!(!hag_has_subflow_from(&tb, &dir, dst, dsl_ip), "a DSL subflow while DSL is cut");
    let restored = Instant::now();
    tb.dsl.restore();
    let regained = loop {
        if hag_has_subflow_from(&tb, &dir, dst, dsl_ip) {
            break restored.elapsed();
        }
        assert!(restored.elapsed() < Duration::from_secs(8), "no DSL subflow on the running download:\n{}", hcpe.log());
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(300));
    let with_dsl = bytes_in(Duration::from_secs(1));
    let transfer = download.join().unwrap_or_else(|e| panic!("download across the restore: {e}"));
    let rates: Vec<String> = transfer.timeline.mbit_per_s().iter().map(|r| format!("{r:.0}")).collect();
    eprintln!(
        "DSL restored: the running download had a DSL subflow {regained:?} after the restore; {:.1} Mbit/s on LTE \
         alone, {:.1} Mbit/s with DSL back\nper-100ms Mbit/s: {}",
        lte_only as f64 * 8e-6,
        with_dsl as f64 * 8e-6,
        rates.join(" ")
    );
    assert!(regained <= Duration::from_secs(2), "DSL subflow regained after {regained:?}");
    assert!(with_dsl as f64 > lte_only as f64 * 1.3, "throughput did not rise: {lte_only} -> {with_dsl} B/s");

    hcpe.signal(libc::SIGTERM);
    assert!(hcpe.wait_timeout(Duration::from_secs(5)).is_some_and(|s| s.success()), "{}", hcpe.log());
    let left = tb.cpe.ip(&["rule"]).unwrap();
    assert!(!left.contains("lookup 5125") && !left.contains("lookup 5126"), "uplink rules left behind:\n{left}");
    let eps = tb.cpe.ip(&["mptcp", "endpoint", "show"]).unwrap();
    assert!(eps.trim().is_empty(), "endpoints left behind:\n{eps}");
}

/// `standby` LTE carries nothing and has no subflow while DSL is healthy; the running download
/// has an LTE subflow (as hag lists it) within 1 s of a DSL cut.
#[test]
fn standby_lte_is_unused_until_dsl_dies() {
    let tb = testbed();
    let dir = config_dir("standby");
    let server = Server::start(&tb.inet, 0).unwrap();
    let _hag = start_hag(&tb, &dir);
    let mut hcpe = start_hcpe(&tb, &dir, "standby");
    wait_up(&mut hcpe, 2);
    let dst = SocketAddr::new(addr::INET_SERVER.ip(false), server.port());
    let eps = tb.cpe.ip(&["mptcp", "endpoint", "show"]).unwrap();
    assert!(!eps.contains(&addr::CPE_LTE.v4.to_string()), "standby LTE has an endpoint while DSL is up:\n{eps}");

    let lte0 = tb.lte.counters(Direction::Down).tx_bytes;
    let download = LanDownload::start(&tb, dst, 16 << 20, Duration::from_secs(10)).unwrap();
    download.wait_for(4 << 20, Duration::from_secs(20), "download", &hcpe);
    let lte_while_dsl_up = tb.lte.counters(Direction::Down).tx_bytes - lte0;
    let lte_ip = std::net::IpAddr::V4(addr::CPE_LTE.v4);
    assert!(!hag_has_subflow_from(&tb, &dir, dst, lte_ip), "standby LTE has a subflow while DSL is up");
    let cut = Instant::now();
    tb.dsl.cut();
    // The LTE subflow as hag sees it: established, from the LTE address, on this connection.
    let took_over = loop {
        if hag_has_subflow_from(&tb, &dir, dst, lte_ip) {
            break cut.elapsed();
        }
        assert!(cut.elapsed() < Duration::from_secs(8), "no LTE subflow after the cut:\n{}", hcpe.log());
        std::thread::sleep(Duration::from_millis(20));
    };
    let transfer = download.join().unwrap_or_else(|e| panic!("download across the cut: {e}\n{}", hcpe.log()));
    let rates: Vec<String> = transfer.timeline.mbit_per_s().iter().map(|r| format!("{r:.0}")).collect();
    eprintln!(
        "standby: LTE carried {lte_while_dsl_up} B of the first 4 MiB while DSL was up; LTE subflow established \
         {took_over:?} after the cut; max stall {:?}\nper-100ms Mbit/s: {}",
        transfer.timeline.max_stall(),
        rates.join(" ")
    );
    assert!(lte_while_dsl_up < 64 << 10, "LTE carried {lte_while_dsl_up} B while DSL was healthy");
    assert!(took_over <= Duration::from_secs(1), "LTE subflow established {took_over:?} after the cut");

    // Carrier loss acts at once (no waiting for missed probes).
    tb.dsl.restore();
    wait_up(&mut hcpe, 3);
    let downs = verdicts(&hcpe, "down");
    let t = Instant::now();
    tb.dsl.set_carrier(false).unwrap();
    while verdicts(&hcpe, "down") == downs {
        assert!(t.elapsed() < Duration::from_secs(5), "carrier loss not noticed:\n{}", hcpe.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let noticed = t.elapsed();
    eprintln!("carrier loss on DSL: uplink down after {noticed:?}");
    assert!(noticed < Duration::from_millis(500), "carrier loss took {noticed:?} (probes alone need ~600 ms)");
    tb.dsl.set_carrier(true).unwrap();
}

/// `backup` LTE (subflow with the backup flag) carries < 1 % while DSL is healthy, takes the
/// download after a DSL cut, and traffic returns to DSL once it is back.
#[test]
fn backup_lte_carries_only_while_dsl_is_down() {
    let tb = testbed();
    let dir = config_dir("backup");
    let server = Server::start(&tb.inet, 0).unwrap();
    let _hag = start_hag(&tb, &dir);
    let mut hcpe = start_hcpe(&tb, &dir, "backup");
    wait_up(&mut hcpe, 2);
    let dst = SocketAddr::new(addr::INET_SERVER.ip(false), server.port());
    let eps = tb.cpe.ip(&["mptcp", "endpoint", "show"]).unwrap();
    assert!(
        eps.lines().any(|l| l.contains(&addr::CPE_LTE.v4.to_string()) && l.contains("backup")),
        "LTE endpoint with the backup flag:\n{eps}"
    );

    const SIZE: u64 = 24 << 20;
    let (dsl0, lte0) = (tb.dsl.counters(Direction::Down).tx_bytes, tb.lte.counters(Direction::Down).tx_bytes);
    let download = LanDownload::start(&tb, dst, SIZE, Duration::from_secs(10)).unwrap();
    let wait_progress = |n: u64| download.wait_for(n, Duration::from_secs(30), "download", &hcpe);
    wait_progress(4 << 20);
    let dsl_up_phase = tb.dsl.counters(Direction::Down).tx_bytes - dsl0;
    let lte_up_phase = tb.lte.counters(Direction::Down).tx_bytes - lte0;
    let lte1 = tb.lte.counters(Direction::Down).tx_bytes;
    let cut = Instant::now();
    tb.dsl.cut();
    // LTE carries the transfer: 64 KiB delivered (about 26 ms at 20 Mbit/s) past what it moved before the cut.
    let took_over = loop {
        if tb.lte.counters(Direction::Down).tx_bytes - lte1 > 64 << 10 {
            break cut.elapsed();
        }
        assert!(cut.elapsed() < Duration::from_secs(8), "LTE never took over:\n{}", hcpe.log());
        std::thread::sleep(Duration::from_millis(10));
    };
    wait_progress(10 << 20);
    let dsl2 = tb.dsl.counters(Direction::Down).tx_bytes;
    tb.dsl.restore();
    // Give DSL time to be declared up again and its subflow to rejoin, then measure the share.
    std::thread::sleep(Duration::from_millis(1500));
    let (dsl3, lte3) = (tb.dsl.counters(Direction::Down).tx_bytes, tb.lte.counters(Direction::Down).tx_bytes);
    wait_progress(18 << 20);
    let dsl_back = tb.dsl.counters(Direction::Down).tx_bytes - dsl3;
    let lte_back = tb.lte.counters(Direction::Down).tx_bytes - lte3;
    let transfer = download.join().unwrap_or_else(|e| panic!("download: {e}\n{}", hcpe.log()));
    let lte_share = lte_up_phase as f64 / (dsl_up_phase + lte_up_phase) as f64;
    let back_share = lte_back as f64 / (dsl_back + lte_back).max(1) as f64;
    eprintln!(
        "backup: LTE share while DSL healthy {:.3} %; LTE took over {took_over:?} after the cut; LTE share after DSL \
         came back {:.1} % (DSL carried {} B from the restore to the end); max stall {:?}",
        lte_share * 100.0,
        back_share * 100.0,
        tb.dsl.counters(Direction::Down).tx_bytes - dsl2,
        transfer.timeline.max_stall()
    );
    assert!(lte_share < 0.01, "LTE carried {:.2} % while DSL was healthy", lte_share * 100.0);
    assert!(took_over <= Duration::from_secs(1), "LTE took over after {took_over:?}");
    assert!(back_share < 0.1, "traffic did not return to DSL: LTE share {:.1} %", back_share * 100.0);
    tb.dsl.restore();
}
