//! Acceptance of the link emulator: throughput unshaped, delay accuracy at 100 Mbit/s, loss,
//! jitter and live changes. Each test prints its numbers. Timing tests run one at a time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tests::testbed::addr;
use tests::{Client, Direction, LinkConfig, Server, Shape, Testbed, TestbedConfig, one_way_probes};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// cpe -> hag service address from the DSL source: the only hop is the DSL emulator.
fn dsl_target(port: u16) -> (SocketAddr, SocketAddr) {
    (SocketAddr::new(addr::HAG_SERVICE.ip(false), port), SocketAddr::new(addr::CPE_DSL.ip(false), 0))
}

#[test]
fn unshaped_emulator_carries_at_least_500_mbit() {
    let _g = serial();
    let tb = Testbed::new(TestbedConfig::default()).unwrap();
    let srv = Server::start(&tb.hag, 0).unwrap();
    let (dst, src) = dsl_target(srv.port());
    let n = 150_000_000;
    let down = tb.cpe.within(move || Client::new(dst).bind(src).download(n)).unwrap().unwrap();
    let up = tb.cpe.within(move || Client::new(dst).bind(src).upload(n)).unwrap().unwrap();
    let c = tb.dsl.counters(Direction::Down);
    println!(
        "unshaped DSL emulator: download {:.0} Mbit/s, upload {:.0} Mbit/s ({} MB each); \
         down-direction counters: {} pkts ({} frames) {} bytes {} dropped",
        down.mbit_per_s(),
        up.mbit_per_s(),
        n / 1_000_000,
        c.tx_packets,
        c.tx_frames,
        c.tx_bytes,
        c.dropped()
    );
    assert!(down.mbit_per_s() >= 500.0, "download {:.0} Mbit/s < 500", down.mbit_per_s());
    assert!(up.mbit_per_s() >= 500.0, "upload {:.0} Mbit/s < 500", up.mbit_per_s());
    assert!(c.tx_bytes >= n, "counters must see the whole download");
    assert!(srv.errors().is_empty(), "{:?}", srv.errors());
}

#[test]
fn delay_20ms_at_100_mbit_is_held_within_1ms() {
    let _g = serial();
    let shape = Shape::mbit(100.0).delay_ms(20.0);
    let tb = Testbed::new(TestbedConfig { dsl: LinkConfig::symmetric(shape), ..TestbedConfig::default() }).unwrap();
    let srv = Server::start(&tb.hag, 0).unwrap();
    let (dst, src) = dsl_target(srv.port());
    // One-way delay both ways, 200 probes each, measured with one monotonic clock.
    let up = one_way_probes(
        &tb.cpe,
        Some(src),
        &tb.hag,
        SocketAddr::new(dst.ip(), 0),
        200,
        Duration::from_millis(3),
        Duration::from_millis(200),
    )
    .unwrap();
    let down = one_way_probes(
        &tb.hag,
        None,
        &tb.cpe,
        SocketAddr::new(src.ip(), 0),
        200,
        Duration::from_millis(3),
        Duration::from_millis(200),
    )
    .unwrap();
    for (name, p) in [("up", &up), ("down", &down)] {
        println!(
            "100 Mbit/s + 20 ms, {name}: one-way median {:.3} ms, p5 {:.3} ms, p95 {:.3} ms, loss {:.1} %",
            ms(p.median().unwrap()),
            ms(p.quantile(0.05).unwrap()),
            ms(p.quantile(0.95).unwrap()),
            p.loss() * 100.0
        );
        let m = ms(p.median().unwrap());
        assert!((19.0..=21.0).contains(&m), "{name}: median one-way delay {m:.3} ms not within 20 ± 1 ms");
        assert_eq!(p.loss(), 0.0, "{name}: probes lost on an unloaded link");
    }
    // The rate: a TCP download through the same link; steady state = median 100 ms bucket
    // after the first second (slow start over a 40 ms RTT).
    let t = tb.cpe.within(move || Client::new(dst).bind(src).download(30_000_000)).unwrap().unwrap();
    let rr = tb.cpe.within(move || Client::new(dst).bind(src).request_response(20, 100, 100)).unwrap().unwrap();
    let mut steady: Vec<f64> = t.timeline.mbit_per_s();
    steady.pop(); // partial last bucket
    let mut steady: Vec<f64> = steady.into_iter().skip(10).collect();
    steady.sort_by(f64::total_cmp);
    let steady = steady.get(steady.len() / 2).copied().unwrap_or(0.0);
    println!(
        "100 Mbit/s + 20 ms: TCP goodput {:.1} Mbit/s overall (30 MB), {steady:.1} Mbit/s steady state; \
         request/response RTT median {:.2} ms",
        t.mbit_per_s(),
        ms(rr.median())
    );
    assert!((85.0..=100.0).contains(&steady), "steady goodput {steady:.1} Mbit/s at a 100 Mbit/s link");
    assert!(t.mbit_per_s() >= 60.0, "overall goodput {:.1} Mbit/s", t.mbit_per_s());
    assert!((39.0..=43.0).contains(&ms(rr.median())), "RTT {:.2} ms", ms(rr.median()));
}

#[test]
fn loss_and_jitter_are_applied_per_direction() {
    let _g = serial();
    let tb = Testbed::new(TestbedConfig {
        dsl: LinkConfig {
            up: Shape::default().loss(0.2),
            down: Shape::default().delay_ms(10.0).jitter_ms(4.0),
            seed: 7,
        },
        ..TestbedConfig::default()
    })
    .unwrap();
    let hag = SocketAddr::new(addr::HAG_DSL.ip(false), 0);
    let cpe = SocketAddr::new(addr::CPE_DSL.ip(false), 0);
    let up =
        one_way_probes(&tb.cpe, Some(cpe), &tb.hag, hag, 1000, Duration::from_millis(1), Duration::from_millis(100))
            .unwrap();
    let down =
        one_way_probes(&tb.hag, None, &tb.cpe, cpe, 300, Duration::from_millis(5), Duration::from_millis(200)).unwrap();
    let (p5, p50, p95) =
        (ms(down.quantile(0.05).unwrap()), ms(down.median().unwrap()), ms(down.quantile(0.95).unwrap()));
    println!(
        "loss 20 % configured: {:.1} % of 1000 probes lost; delay 10 ms ± 4 ms jitter: p5 {p5:.2} ms, \
         median {p50:.2} ms, p95 {p95:.2} ms, loss {:.1} %",
        up.loss() * 100.0,
        down.loss() * 100.0
    );
    assert!((0.15..=0.25).contains(&up.loss()), "loss {:.3}", up.loss());
    assert_eq!(down.loss(), 0.0);
    // 3 ms of slack above for scheduling: the emulator and the probes share 2 busy cores (CI saw p95 17.3 ms).
    assert!(p5 >= 5.5 && p95 <= 17.0 + 1.5, "delays outside 10 ± 4 ms (+ scheduling): p5 {p5} p95 {p95}");
    assert!(p95 - p5 >= 3.0, "no visible jitter: p5 {p5} p95 {p95}");
    assert!((8.5..=12.5).contains(&p50), "median {p50}");
    // The ARP/NDP-free direction check: nothing was dropped on the jittery direction.
    assert_eq!(tb.dsl.counters(Direction::Down).drop_loss, 0);
    assert!(tb.dsl.counters(Direction::Up).drop_loss > 100);
}

#[test]
fn rate_changes_apply_while_traffic_flows() {
    let _g = serial();
    let tb = Testbed::new(TestbedConfig { dsl: LinkConfig::symmetric(Shape::mbit(100.0)), ..TestbedConfig::default() })
        .unwrap();
    let srv = Server::start(&tb.hag, 0).unwrap();
    let (dst, src) = dsl_target(srv.port());
    let progress = Arc::new(AtomicU64::new(0));
    let p2 = progress.clone();
    let dl = tb.cpe.thread(move || Client::new(dst).bind(src).progress(p2).download(40_000_000)).unwrap();
    let rate_over = |d: Duration| {
        let (b0, t0) = (progress.load(Ordering::Relaxed), Instant::now());
        std::thread::sleep(d);
        (progress.load(Ordering::Relaxed) - b0) as f64 * 8.0 / t0.elapsed().as_secs_f64() / 1e6
    };
    std::thread::sleep(Duration::from_millis(500)); // past slow start
    let fast = rate_over(Duration::from_millis(800));
    tb.dsl.set_both(Shape::mbit(20.0));
    std::thread::sleep(Duration::from_millis(300)); // drain the 100 Mbit/s queue
    let slow = rate_over(Duration::from_millis(1000));
    tb.dsl.set_both(Shape::default());
    let t = dl.join().unwrap().unwrap();
    println!(
        "live change: {fast:.1} Mbit/s at 100 Mbit/s, {slow:.1} Mbit/s after switching to 20 Mbit/s; total {:.1} s",
        t.elapsed.as_secs_f64()
    );
    assert!(fast >= 70.0, "before the change {fast:.1} Mbit/s");
    assert!((12.0..=21.0).contains(&slow), "after the change {slow:.1} Mbit/s");
}

#[test]
fn without_offloads_frames_are_mtu_sized_and_still_fast() {
    let _g = serial();
    let tb = Testbed::new(TestbedConfig { offloads: false, ..TestbedConfig::default() }).unwrap();
    let srv = Server::start(&tb.hag, 0).unwrap();
    let (dst, src) = dsl_target(srv.port());
    let t = tb.cpe.within(move || Client::new(dst).bind(src).download(60_000_000)).unwrap().unwrap();
    let c = tb.dsl.counters(Direction::Down);
    let frames_per_sec = c.tx_packets as f64 / t.elapsed.as_secs_f64();
    println!(
        "offloads off: download {:.0} Mbit/s, {} packets in {} frames, {:.0} bytes/packet average, {:.0} packets/s",
        t.mbit_per_s(),
        c.tx_packets,
        c.tx_frames,
        c.tx_bytes as f64 / c.tx_packets as f64,
        frames_per_sec
    );
    assert_eq!(c.tx_frames, c.tx_packets, "super-frames seen with offloads off");
    assert!(t.mbit_per_s() >= 150.0, "{:.0} Mbit/s", t.mbit_per_s());
}

#[test]
fn loss_hits_single_segments_with_offloads_on() {
    let _g = serial();
    let tb = Testbed::new(TestbedConfig {
        dsl: LinkConfig { down: Shape::mbit(200.0).delay_ms(2.0).loss(0.01), ..LinkConfig::default() },
        ..TestbedConfig::default()
    })
    .unwrap();
    let srv = Server::start(&tb.hag, 0).unwrap();
    let (dst, src) = dsl_target(srv.port());
    let t = tb.cpe.within(move || Client::new(dst).bind(src).download(20_000_000)).unwrap().unwrap();
    let c = tb.dsl.counters(Direction::Down);
    let rate = c.drop_loss as f64 / c.rx_packets as f64;
    println!(
        "1 % loss, offloads on: download intact at {:.0} Mbit/s; {} of {} packets lost ({:.2} %), \
         {} frames delivered for {} packets",
        t.mbit_per_s(),
        c.drop_loss,
        c.rx_packets,
        rate * 100.0,
        c.tx_frames,
        c.tx_packets
    );
    assert!((0.004..=0.02).contains(&rate), "loss rate {rate}");
    assert!(c.tx_frames * 10 >= c.tx_packets * 9, "super-frames were not split into segments");
}
