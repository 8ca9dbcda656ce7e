//! Soak benchmark (ignored by default; `SOAK_SECS`, default 1800): both daemons from the shipped example
//! configs, mixed LAN traffic for the whole run (downloads and uploads of 1-32 MiB verified by content and
//! SHA-256, bursts of short connections, long request/response connections), and a link flapping every few
//! seconds (LTE cut for 2 s, every fourth flap DSL instead: a silent cut, nothing tells the endpoints).
//! Before and after (once the traffic stopped and the close timeouts passed): each daemon's resident memory
//! and open file descriptors, hcpe's NAT flow table and open connections, hag's open connections. Prints the
//! numbers; fails if any transfer was corrupt or lost, or if a gauge or descriptor count did not come back.
//!
//! `cargo test --release -p tests --test soak_bench -- --ignored --nocapture`

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tests::daemons::{self, HAG_ADMIN_PORT, HCPE_ADMIN_PORT};
use tests::emulator::Shape;
use tests::netns::ChildGuard;
use tests::testbed::{Testbed, addr};
use tests::traffic::{Client, Error, Server};

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    hcpe_rss: u64,
    hcpe_fds: usize,
    hag_rss: u64,
    hag_fds: usize,
    nat_flows: f64,
    hcpe_open: f64,
    hag_open: f64,
    pool_ready: f64,
}

fn sample(tb: &Testbed, hcpe: &ChildGuard, hag: &ChildGuard, token: &str) -> Sample {
    let m = |ns, port, name| daemons::metric(ns, port, token, name, &[]).unwrap();
    let (hcpe_rss, hcpe_fds, hag_rss, hag_fds) = (hcpe.rss(), hcpe.open_fds(), hag.rss(), hag.open_fds());
    Sample {
        hcpe_rss,
        hcpe_fds,
        hag_rss,
        hag_fds,
        nat_flows: m(&tb.cpe, HCPE_ADMIN_PORT, "hcpe_nat_flows"),
        hcpe_open: m(&tb.cpe, HCPE_ADMIN_PORT, "hcpe_connections_open"),
        hag_open: m(&tb.hag, HAG_ADMIN_PORT, "hag_connections_open"),
        pool_ready: m(&tb.cpe, HCPE_ADMIN_PORT, "hcpe_pool_ready"),
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

struct Tally {
    started: Instant,
    transfers: AtomicU64,
    bytes: AtomicU64,
    short: AtomicU64,
    rr: AtomicU64,
    failed: AtomicU64,
    corrupt: AtomicU64,
}

impl Tally {
    fn record<T>(&self, what: &str, r: Result<T, Error>) -> Option<T> {
        match r {
            Ok(t) => Some(t),
            Err(e) => {
                if matches!(e, Error::Corrupt { .. } | Error::HashMismatch { .. }) {
                    self.corrupt.fetch_add(1, Relaxed);
                }
                self.failed.fetch_add(1, Relaxed);
                eprintln!("soak: {what} failed at {:?}: {e}", self.started.elapsed());
                None
            }
        }
    }
}

#[test]
#[ignore]
fn soak_mixed_traffic_with_link_flaps_returns_to_baseline() {
    let secs: u64 = env_or("SOAK_SECS", 1800);
    let tb = daemons::managed_testbed(Shape::mbit(50.0).delay_ms(10.0), Shape::mbit(30.0).delay_ms(25.0)).unwrap();
    let dir = daemons::config_dir("soak").unwrap();
    let token = daemons::admin_token(dir.path()).unwrap();
    let server = Server::start(&tb.inet, 0).unwrap();
    let dst = SocketAddr::new(addr::INET_SERVER.ip(false), server.port());
    let (hag, hcpe) = daemons::start_examples(&tb, dir.path()).unwrap();
    daemons::wait_up(&hcpe, 2, Duration::from_secs(10)).unwrap();

    // Warm-up: one of each kind, then the baseline once everything settled.
    let client = move || Client::new(dst).timeout(Duration::from_secs(20));
    tb.lan.within(move || client().download(8 << 20)).unwrap().unwrap();
    tb.lan.within(move || client().short_connections(20, 100, 1000)).unwrap().unwrap();
    std::thread::sleep(Duration::from_secs(15));
    let before = sample(&tb, &hcpe, &hag, &token);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally {
        started: Instant::now(),
        transfers: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        short: AtomicU64::new(0),
        rr: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        corrupt: AtomicU64::new(0),
    });
    let mut workers = Vec::new();
    for w in 0..5u64 {
        let (stop, tally) = (stop.clone(), tally.clone());
        workers.push(
            tb.lan
                .thread(move || {
                    let mut round = 0u64;
                    while !stop.load(Relaxed) {
                        round += 1;
                        let size = (1 + (round * 7 + w * 13) % 32) << 20;
                        let c = client().seed(w * 1_000_003 + round);
                        match w {
                            0 | 1 => {
                                if let Some(t) = tally.record("download", c.download(size)) {
                                    tally.transfers.fetch_add(1, Relaxed);
                                    tally.bytes.fetch_add(t.bytes, Relaxed);
                                }
                            }
                            2 => {
                                if let Some(t) = tally.record("upload", c.upload(size / 2)) {
                                    tally.transfers.fetch_add(1, Relaxed);
                                    tally.bytes.fetch_add(t.bytes, Relaxed);
                                }
                            }
                            3 => {
                                if tally.record("short connections", c.short_connections(50, 200, 4000)).is_some() {
                                    tally.short.fetch_add(50, Relaxed);
                                }
                            }
                            _ => {
                                if tally.record("request/response", c.request_response(500, 100, 1500)).is_some() {
                                    tally.rr.fetch_add(500, Relaxed);
                                }
                            }
                        }
                    }
                })
                .unwrap(),
        );
    }

    // The flaps, in this thread, for the whole run.
    let started = Instant::now();
    let mut flaps = 0u32;
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(3000 + u64::from(flaps % 5) * 700));
        flaps += 1;
        let dsl = flaps.is_multiple_of(4);
        let link = if dsl { &tb.dsl } else { &tb.lte };
        if std::env::var_os("SOAK_VERBOSE").is_some() {
            eprintln!("soak: flap {flaps} ({}) at {:?}", if dsl { "DSL" } else { "LTE" }, tally.started.elapsed());
        }
        link.cut();
        std::thread::sleep(Duration::from_secs(2));
        link.restore();
        if flaps.is_multiple_of(50) {
            let s = sample(&tb, &hcpe, &hag, &token);
            eprintln!(
                "soak {:>5.0} s: {flaps} flaps, {} transfers, hcpe {} / {} fds, hag {} / {} fds, NAT flows {}, failed {}",
                started.elapsed().as_secs_f64(),
                tally.transfers.load(Relaxed),
                mib(s.hcpe_rss),
                s.hcpe_fds,
                mib(s.hag_rss),
                s.hag_fds,
                s.nat_flows,
                tally.failed.load(Relaxed)
            );
        }
    }
    stop.store(true, Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    // Closed flows leave hcpe's NAT after its close timeout (10 s), the pool refills, idle things settle.
    std::thread::sleep(Duration::from_secs(30));
    let after = sample(&tb, &hcpe, &hag, &token);
    if after.hcpe_open > 0.0 {
        // What keeps them open: hcpe's MPTCP connections to hag and their subflows.
        for (name, ns) in [("cpe", &tb.cpe), ("hag", &tb.hag)] {
            let out = ns
                .exec("ss", &["-tinmM", "state", "established"])
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            eprintln!("soak: ss -tinmM in {name}:\n{}", out.unwrap_or_default());
        }
    }
    let t = &tally;
    eprintln!(
        "soak: {secs} s, {flaps} flaps; {} transfers ({}), {} short connections, {} request/responses; {} failed, {} corrupt",
        t.transfers.load(Relaxed),
        mib(t.bytes.load(Relaxed)),
        t.short.load(Relaxed),
        t.rr.load(Relaxed),
        t.failed.load(Relaxed),
        t.corrupt.load(Relaxed)
    );
    eprintln!(
        "soak: before: hcpe {} / {} fds, hag {} / {} fds, NAT flows {}, hcpe open {}, hag open {}, pool {}",
        mib(before.hcpe_rss),
        before.hcpe_fds,
        mib(before.hag_rss),
        before.hag_fds,
        before.nat_flows,
        before.hcpe_open,
        before.hag_open,
        before.pool_ready
    );
    eprintln!(
        "soak: after:  hcpe {} / {} fds, hag {} / {} fds, NAT flows {}, hcpe open {}, hag open {}, pool {}",
        mib(after.hcpe_rss),
        after.hcpe_fds,
        mib(after.hag_rss),
        after.hag_fds,
        after.nat_flows,
        after.hcpe_open,
        after.hag_open,
        after.pool_ready
    );
    assert_eq!(t.corrupt.load(Relaxed), 0, "corrupt transfers");
    assert_eq!(t.failed.load(Relaxed), 0, "failed transfers (see the lines above)");
    assert_eq!(after.nat_flows, 0.0, "NAT flows left");
    assert_eq!(after.hcpe_open, 0.0, "hcpe connections left open");
    // hag holds the pool's ready connections, whose number may differ by a few between the samples.
    assert!(after.hag_open <= after.pool_ready + 2.0, "hag connections left open: {after:?}");
    // Descriptors: the same, give or take the pool's.
    let pool_delta = (after.pool_ready - before.pool_ready).abs() as usize + 2;
    assert!(
        after.hcpe_fds <= before.hcpe_fds + pool_delta,
        "hcpe descriptors {} -> {}",
        before.hcpe_fds,
        after.hcpe_fds
    );
    assert!(after.hag_fds <= before.hag_fds + pool_delta, "hag descriptors {} -> {}", before.hag_fds, after.hag_fds);
    // Memory: what the allocator keeps after the peak is bounded; growth with time would break this.
    assert!(
        after.hcpe_rss <= before.hcpe_rss + (32 << 20),
        "hcpe RSS {} -> {}",
        mib(before.hcpe_rss),
        mib(after.hcpe_rss)
    );
    assert!(after.hag_rss <= before.hag_rss + (32 << 20), "hag RSS {} -> {}", mib(before.hag_rss), mib(after.hag_rss));
    assert!(!hcpe.log().contains("panicked") && !hag.log().contains("panicked"));
    drop(server);
}
