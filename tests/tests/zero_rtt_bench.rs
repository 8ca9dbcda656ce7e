//! Bench of new connections through hcpe/hag against going direct, ignored in the normal suite; run it in
//! release with `cargo test --release -p tests --test zero_rtt_bench -- --ignored --nocapture --test-threads 1`.
//!
//! Testbed: DSL 50 Mbit/s 10 ms one-way, LTE 30 Mbit/s 25 ms one-way, the uplink manager in charge (as
//! shipped: LTE `adaptive`). Per round, in the same run:
//! - direct: the LAN routed over DSL, no daemon in the way (hag's namespace forwards);
//! - hcpe/hag as shipped (a pool of ready connections, `docs/zero-rtt.md`);
//! - hcpe/hag with the pool off (`hag.pool.max: 0`), every connection handshaking with hag first.
//!
//! Each runs `ZERO_RTT_BENCH_CONNS` (default 200) short request/response connections one after another
//! (connect, 100-byte request, 100-byte answer: time to first byte of the answer), then
//! `ZERO_RTT_BENCH_PAGES` (default 10) page loads one second apart: 20 such connections opened at once, timed
//! until all have their answer. The targets (issue "0-RTT"): median <= 0.6 x direct, p90 <= 0.75 x direct,
//! page load (median over the loads) <= 0.75 x direct. `ZERO_RTT_BENCH_ROUNDS` (default 3),
//! `ZERO_RTT_BENCH_LTE_MODE` (default `adaptive`, as shipped).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tests::daemons::{self, HagSpec, HcpeSpec};
use tests::emulator::Shape;
use tests::testbed::{Testbed, addr};
use tests::traffic::{Client, RrStats, Server};

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Connections per page load.
const PAGE: usize = 20;

struct Run {
    sequential: RrStats,
    /// Time until all of a page load's connections had their answer, one per load.
    pages: Vec<Duration>,
}

impl Run {
    fn page_median(&self) -> Duration {
        let mut p = self.pages.clone();
        p.sort();
        p[p.len() / 2]
    }
}

fn page_load(tb: &Testbed, dst: SocketAddr) -> Duration {
    tb.lan
        .within(move || {
            let t = Instant::now();
            let all: Vec<_> = (0..PAGE)
                .map(|i| std::thread::spawn(move || Client::new(dst).seed(i as u64).short_connections(1, 100, 100)))
                .collect();
            for h in all {
                h.join().expect("page connection thread").expect("page connection");
            }
            t.elapsed()
        })
        .unwrap()
}

fn measure(tb: &Testbed, dst: SocketAddr, conns: u32, pages: usize) -> Run {
    let sequential = tb.lan.within(move || Client::new(dst).short_connections(conns, 100, 100)).unwrap().unwrap();
    let pages = (0..pages)
        .map(|_| {
            std::thread::sleep(Duration::from_secs(1));
            page_load(tb, dst)
        })
        .collect();
    Run { sequential, pages }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

#[test]
#[ignore]
fn zero_rtt_bench_new_connections_vs_direct() {
    let tb = daemons::managed_testbed(Shape::mbit(50.0).delay_ms(10.0), Shape::mbit(30.0).delay_ms(25.0)).unwrap();
    let dir = daemons::config_dir("zero-rtt-bench").unwrap();
    let server = Server::start(&tb.inet, 0).unwrap();
    let dst = SocketAddr::new(addr::INET_SERVER.ip(false), server.port());
    let (rounds, conns, pages): (usize, u32, usize) =
        (env_or("ZERO_RTT_BENCH_ROUNDS", 3), env_or("ZERO_RTT_BENCH_CONNS", 200), env_or("ZERO_RTT_BENCH_PAGES", 10));
    let _hag = daemons::start_hag(&tb, dir.path(), &HagSpec { v6: false, ..HagSpec::default() }).unwrap();
    let lte_mode: String = env_or("ZERO_RTT_BENCH_LTE_MODE", "adaptive".to_owned());
    let spec = |pool: Option<&str>| HcpeSpec {
        managed: true,
        lte_mode: lte_mode.clone(),
        v6: false,
        admin: true,
        pool: pool.map(str::to_owned),
        log_level: "hcpe=info".into(),
        ..HcpeSpec::default()
    };
    for round in 1..=rounds {
        let direct = measure(&tb, dst, conns, pages);
        let mut lines = vec![format!(
            "  direct          : median {}, p90 {}, page load {}",
            ms(direct.sequential.median()),
            ms(direct.sequential.quantile(0.9)),
            ms(direct.page_median())
        )];
        for (name, pool) in [("hcpe/hag pool   ", None), ("hcpe/hag no pool", Some("{ min: 0, max: 0 }"))] {
            let hcpe = daemons::start_hcpe(&tb, dir.path(), &spec(pool)).unwrap();
            daemons::wait_up(&hcpe, 2, Duration::from_secs(10)).unwrap();
            // The pool fills and the other uplink joins its connections.
            std::thread::sleep(Duration::from_secs(2));
            let r = measure(&tb, dst, conns, pages);
            let token = daemons::admin_token(dir.path()).unwrap();
            let taken = daemons::metric(
                &tb.cpe,
                daemons::HCPE_ADMIN_PORT,
                &token,
                "hcpe_pool_connections_total",
                &[("event", "taken")],
            )
            .unwrap_or(0.0);
            let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
            lines.push(format!(
                "  {name}: median {} ({:.2} x direct), p90 {} ({:.2} x), page load {} ({:.2} x); {taken} of {} \
                 connections on a ready one",
                ms(r.sequential.median()),
                ratio(r.sequential.median(), direct.sequential.median()),
                ms(r.sequential.quantile(0.9)),
                ratio(r.sequential.quantile(0.9), direct.sequential.quantile(0.9)),
                ms(r.page_median()),
                ratio(r.page_median(), direct.page_median()),
                conns as usize + pages * PAGE,
            ));
            drop(hcpe);
        }
        eprintln!(
            "round {round} ({conns} sequential connections, {pages} page loads of {PAGE}):\n{}",
            lines.join("\n")
        );
    }
}
