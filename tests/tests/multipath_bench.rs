//! Multipath bench (ignored): downloads through hcpe/hag, started from `deploy/examples/`, against each link
//! alone and against kernel MPTCP between the CPE and hag's namespace without the daemons, on link pairs where
//! the second link is good, poor, or lossy. Every figure is a ratio against the
//! single-link rates measured in the same run, so the machine's load cancels out. Mid-download it also prints
//! what hag's kernel says of each subflow (`ss -tinM`: cwnd, RTT, delivery rate, bytes in flight) and the
//! MPTCP counters that move (`nstat`), which is where a multipath slowdown shows its cause.
//!
//! `cargo build --release --workspace --bins && cargo test --release -p tests --test multipath_bench -- --ignored --nocapture --test-threads 1`
//! (`MULTIPATH_BENCH_ROUNDS=n` repeats each scenario, default 1; `MULTIPATH_BENCH_CPE_RMEM_MAX=bytes` sets the
//! largest TCP receive buffer in hcpe's namespace, `net.ipv4.tcp_rmem`'s third value;
//! `MULTIPATH_BENCH_LTE_MODE=backup` sets LTE's mode through hcpe's admin API before the download).

use std::net::SocketAddr;
use std::time::Duration;

use tests::daemons::{self, LanDownload};
use tests::emulator::{LinkConfig, Shape};
use tests::testbed::{Testbed, TestbedConfig, addr, ifname};
use tests::traffic::{Client, Server};

const SIZE: u64 = 48 << 20;

struct Scenario {
    name: &'static str,
    dsl: Shape,
    lte: Shape,
}

fn scenarios() -> Vec<Scenario> {
    let dsl = || Shape::mbit(50.0).delay_ms(10.0);
    vec![
        Scenario { name: "good LTE", dsl: dsl(), lte: Shape::mbit(30.0).delay_ms(30.0).jitter_ms(5.0) },
        Scenario { name: "poor LTE", dsl: dsl(), lte: Shape::mbit(5.0).delay_ms(150.0).jitter_ms(30.0) },
        Scenario {
            name: "poor lossy LTE",
            dsl: dsl(),
            lte: Shape::mbit(5.0).delay_ms(150.0).jitter_ms(30.0).loss(0.02),
        },
    ]
}

/// `ss -tinM` in hag's namespace for the service port: one line per subflow with the fields that explain a
/// scheduler's choices.
fn subflows(tb: &Testbed) -> String {
    let out = tb.hag.exec_ok("ss", &["-tinHM", "state", "established", "( sport = :5124 )"]).unwrap_or_default();
    // `name:value` fields, and fields written as `name value`.
    let keep = ["cwnd:", "rtt:", "unacked:", "retrans:", "notsent:", "lost:", "reordering:"];
    let paired = ["delivery_rate", "send"];
    let mut lines = Vec::new();
    let mut cur = String::new();
    for line in out.lines() {
        if !line.starts_with(char::is_whitespace) && !line.starts_with('\t') {
            if !cur.is_empty() {
                lines.push(std::mem::take(&mut cur));
            }
            cur = line.split_whitespace().take(4).collect::<Vec<_>>().join(" ");
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            if keep.iter().any(|k| w.starts_with(k)) {
                cur.push(' ');
                cur.push_str(w);
            } else if paired.contains(w) && i + 1 < words.len() {
                cur.push_str(&format!(" {w}:{}", words[i + 1]));
            }
        }
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines.join("\n      ")
}

/// MPTCP and TCP counters of hag's namespace that changed since the last call (`nstat` keeps the history).
fn counters(tb: &Testbed) -> String {
    let out = tb.hag.exec_ok("nstat", &["-z"]).unwrap_or_default();
    out.lines()
        .filter(|l| l.starts_with("MPTcpExt") || l.starts_with("TcpExtTCPOFO") || l.starts_with("TcpRetransSegs"))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (name, value) = (w.next()?, w.next()?);
            (value != "0").then(|| format!("{name}={value}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One kernel MPTCP download from the CPE to a server in hag's namespace over both links (an endpoint on
/// LTE, the testbed's source routing), without hcpe or hag: what the kernel alone makes of the two paths. The
/// endpoint goes again before the daemons start.
fn kernel_mptcp(tb: &Testbed) -> f64 {
    let lte = addr::CPE_LTE.ip(false).to_string();
    tb.cpe.ip(&["mptcp", "endpoint", "add", &lte, "dev", ifname::LTE, "subflow"]).unwrap();
    let server = Server::bind_mptcp(&tb.hag, SocketAddr::new(addr::HAG_SERVICE.ip(false), 0)).unwrap();
    let (dst, src) = (server.addr(), SocketAddr::new(addr::CPE_DSL.ip(false), 0));
    let t = tb.cpe.within(move || Client::new(dst).bind(src).mptcp().timeout(Duration::from_secs(30)).download(SIZE));
    tb.cpe.ip(&["mptcp", "endpoint", "flush"]).unwrap();
    t.unwrap().unwrap().mbit_per_s()
}

fn run(s: &Scenario, round: usize) {
    let tb = Testbed::new(TestbedConfig {
        dsl: LinkConfig::symmetric(s.dsl),
        lte: LinkConfig { seed: 2 + round as u64, ..LinkConfig::symmetric(s.lte) },
        ..TestbedConfig::default()
    })
    .unwrap();
    let dir = daemons::config_dir("multipath-bench").unwrap();
    let server = Server::start(&tb.inet, 0).unwrap();
    let dst = SocketAddr::new(addr::INET_SERVER.ip(false), server.port());
    let dsl = daemons::single_link(&tb, dst, addr::CPE_DSL.ip(false), 24 << 20).unwrap().mbit_per_s();
    let lte_size = if s.lte.rate_bps.is_some_and(|r| r < 10_000_000) { 3 << 20 } else { 16 << 20 };
    let lte = daemons::single_link(&tb, dst, addr::CPE_LTE.ip(false), lte_size).unwrap().mbit_per_s();
    let kernel = kernel_mptcp(&tb);

    if let Ok(max) = std::env::var("MULTIPATH_BENCH_CPE_RMEM_MAX") {
        // hcpe's MPTCP sockets receive the download: their window autotunes up to this (default 6 MiB).
        tb.cpe.exec_ok("sysctl", &["-qw", &format!("net.ipv4.tcp_rmem=4096 131072 {max}")]).unwrap();
    }
    let (_hag, hcpe) = daemons::start_examples(&tb, dir.path()).unwrap();
    daemons::wait_up(&hcpe, 2, Duration::from_secs(5)).unwrap();
    if let Ok(mode) = std::env::var("MULTIPATH_BENCH_LTE_MODE") {
        // The example's admin API, in hcpe's namespace.
        let token = daemons::admin_token(dir.path()).unwrap();
        let api = SocketAddr::from(([127, 0, 0, 1], daemons::HCPE_ADMIN_PORT));
        let body = format!("{{\"mode\":\"{mode}\"}}");
        let r = daemons::http(&tb.cpe, api, "PATCH", "/api/v1/uplinks/lte", Some(&token), Some(&body)).unwrap();
        assert_eq!(r.status, 200, "LTE mode {mode}: {}", r.body);
    }
    let _ = counters(&tb);
    let download = LanDownload::start(&tb, dst, SIZE, Duration::from_secs(30)).unwrap();
    download.wait_for(SIZE / 2, Duration::from_secs(60), "download", &hcpe);
    let mid = subflows(&tb);
    let transfer = download.join().unwrap_or_else(|e| panic!("{}: {e}\n{}", s.name, hcpe.log()));
    let moved = counters(&tb);
    let got = transfer.mbit_per_s();
    let best = dsl.max(lte);
    println!(
        "{} (round {round}): DSL alone {dsl:.1}, LTE alone {lte:.1}, kernel MPTCP alone {kernel:.1} ({:.2} x best), \
         hcpe/hag {got:.1} Mbit/s = {:.2} x best, {:.2} x sum; longest stall {:?}",
        s.name,
        kernel / best,
        got / best,
        got / (dsl + lte),
        transfer.timeline.max_stall()
    );
    println!("    hag subflows at half way:\n      {mid}");
    println!("    hag counters that moved: {moved}");
}

#[test]
#[ignore = "bench: prints ratios to each link alone; run with --ignored --nocapture"]
fn downloads_against_each_link_alone() {
    let rounds = std::env::var("MULTIPATH_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    for s in scenarios() {
        for round in 0..rounds {
            run(&s, round);
        }
    }
}
