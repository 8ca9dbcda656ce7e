//! A cut link loses everything while its carrier stays up; restoring resumes traffic. Carrier
//! down is visible as NO-CARRIER in the cpe; carrier up resumes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tests::testbed::{addr, ifname};
use tests::{Client, Direction, LinkConfig, Server, Shape, Testbed, TestbedConfig, one_way_probes};

fn link_flags(tb: &Testbed) -> String {
    tb.cpe.ip(&["link", "show", "dev", ifname::DSL]).unwrap()
}

fn probes_via_dsl(tb: &Testbed, count: u32) -> tests::traffic::Probes {
    let hag = SocketAddr::new(addr::HAG_DSL.ip(false), 0);
    let cpe = SocketAddr::new(addr::CPE_DSL.ip(false), 0);
    one_way_probes(&tb.cpe, Some(cpe), &tb.hag, hag, count, Duration::from_millis(2), Duration::from_millis(100))
        .unwrap()
}

#[test]
fn cut_drops_everything_with_carrier_up_and_restore_resumes() {
    let tb = Testbed::new(TestbedConfig {
        dsl: LinkConfig::symmetric(Shape::mbit(100.0).delay_ms(5.0)),
        ..TestbedConfig::default()
    })
    .unwrap();
    let srv = Server::start(&tb.hag, 0).unwrap();
    let dst = SocketAddr::new(addr::HAG_SERVICE.ip(false), srv.port());
    let src = SocketAddr::new(addr::CPE_DSL.ip(false), 0);
    assert_eq!(probes_via_dsl(&tb, 50).loss(), 0.0, "link must work before the cut");

    // A download that is cut at ~30 % and restored a second later.
    let n = 20_000_000;
    let progress = Arc::new(AtomicU64::new(0));
    let p2 = progress.clone();
    let dl = tb.cpe.thread(move || Client::new(dst).bind(src).progress(p2).download(n)).unwrap();
    let t0 = Instant::now();
    while progress.load(Ordering::Relaxed) < n * 3 / 10 {
        assert!(t0.elapsed() < Duration::from_secs(10), "download did not progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    tb.dsl.cut();
    let cut_at = tb.dsl.counters(Direction::Down);
    std::thread::sleep(Duration::from_millis(300)); // let what was already delivered be read
    let frozen = progress.load(Ordering::Relaxed);
    let p = probes_via_dsl(&tb, 100);
    std::thread::sleep(Duration::from_millis(400));
    let still = progress.load(Ordering::Relaxed);
    let during = tb.dsl.counters(Direction::Down).since(&cut_at);
    let up_during = tb.dsl.counters(Direction::Up);
    let flags = link_flags(&tb);
    println!(
        "cut: probes lost {:.0} %, download frozen at {frozen} bytes (then {still}), down-direction during cut: \
         {} pkts in, {} out, {} dropped (cut); carrier flags: {}",
        p.loss() * 100.0,
        during.rx_packets,
        during.tx_packets,
        during.drop_cut,
        flags.lines().next().unwrap_or("")
    );
    assert_eq!(p.loss(), 1.0, "a cut link must lose every probe");
    assert_eq!(still, frozen, "data flowed through a cut link");
    assert_eq!(during.tx_packets, 0, "the emulator delivered packets while cut");
    assert!(up_during.drop_cut > 0 && during.drop_cut > 0, "sender retransmissions must be seen and dropped");
    assert!(flags.contains("LOWER_UP") && !flags.contains("NO-CARRIER"), "carrier must stay up: {flags}");

    tb.dsl.restore();
    let t = dl.join().unwrap().expect("download completes intact after restore");
    let p = probes_via_dsl(&tb, 50);
    println!(
        "restore: download of {n} bytes completed intact in {:.2} s, longest gap {:.2} s; probes lost after restore {:.0} %",
        t.elapsed.as_secs_f64(),
        t.timeline.max_gap.as_secs_f64(),
        p.loss() * 100.0
    );
    assert_eq!(p.loss(), 0.0);
    assert!(t.timeline.max_gap >= Duration::from_millis(600), "the cut must show as a stall");
}

#[test]
fn carrier_down_shows_no_carrier_and_up_resumes() {
    let tb = Testbed::new(TestbedConfig::default()).unwrap();
    assert!(!link_flags(&tb).contains("NO-CARRIER"));
    tb.dsl.set_carrier(false).unwrap();
    let flags = link_flags(&tb);
    let p = probes_via_dsl(&tb, 50);
    println!("carrier down: cpe dsl0 = {}; probes lost {:.0} %", flags.lines().next().unwrap_or(""), p.loss() * 100.0);
    assert!(flags.contains("NO-CARRIER"), "{flags}");
    assert_eq!(p.loss(), 1.0);
    // The far end notices nothing.
    let hag_flags = tb.hag.ip(&["link", "show", "dev", ifname::DSL]).unwrap();
    assert!(!hag_flags.contains("NO-CARRIER"), "{hag_flags}");

    tb.dsl.set_carrier(true).unwrap();
    let t0 = Instant::now();
    while link_flags(&tb).contains("NO-CARRIER") {
        assert!(t0.elapsed() < Duration::from_secs(5), "carrier did not come back");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Neighbour resolution failed while the carrier was down; the kernel retries ARP about
    // once a second, so traffic resumes within ~1 s.
    let mut p = probes_via_dsl(&tb, 20);
    while p.loss() > 0.1 && t0.elapsed() < Duration::from_secs(4) {
        p = probes_via_dsl(&tb, 20);
    }
    println!("carrier up: traffic resumed {:?} after carrier up; probes lost {:.0} %", t0.elapsed(), p.loss() * 100.0);
    assert!(p.loss() <= 0.1, "traffic must resume after carrier up (lost {:.0} %)", p.loss() * 100.0);
}
