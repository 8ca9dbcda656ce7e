//! Benches of hcpe's data path (issue 4, acceptance 6), ignored in the normal suite; run them in release with
//! `cargo test --release -p tests --test hcpe_bench -- --ignored --nocapture --test-threads 1`.
//!
//! Every bench prints ratios against a baseline measured in the same run on the same testbed (the machine is
//! shared, so absolute numbers move; the ratios are what the targets are about):
//! - goodput of one unshaped download lan -> inet through hcpe/hag (and through hcpe alone) against plain
//!   routed forwarding through the same namespaces, offload off and on, several rounds (target >= 0.5);
//! - time to first byte of a new connection through hcpe/hag against going direct, link delays zero, TFO off
//!   and on (target <= +2 ms).
//!
//! Knobs (environment): `HCPE_BENCH_ROUNDS` (default 3), `HCPE_BENCH_MIB` (download size, default 512),
//! `HCPE_BENCH_OFFLOAD` (comma list of `false`/`true`, default both), `HCPE_BENCH_PATHS` (`hag`, `tun` or both, default both),
//! `HCPE_BENCH_DIRS` (`down`, `up` or both, default both),
//! `HCPE_BENCH_CONNS` (TTFB connections, default 300).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tests::emulator::{LinkConfig, Shape};
use tests::netns::{ChildGuard, Netns, bin_path};
use tests::testbed::{Testbed, TestbedConfig, addr};
use tests::traffic::{Client, Server};

const KEY_HEX: &str = "6863706520626e6368207465737420b5e7c1d2a3b4c5d6e7f80112233445566778";
const CPE_ID: &str = "bench-cpe";

type TempDir = tempfile::TempDir;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn config_dir(tag: &str) -> TempDir {
    tests::netns::config_dir(&format!("hcpe-bench-{tag}"), KEY_HEX).unwrap()
}

fn start_hag(tb: &Testbed, dir: &TempDir) -> ChildGuard {
    let yaml = format!(
        "listen: ['{}']\n\
         clients:\n  {CPE_ID}: {{key_file: cpe.key}}\n\
         destinations:\n  allow: [198.18.4.0/24]\n\
         limits:\n  connect_timeout: 2s\n  drain_deadline: 1s\n\
         log_level: info\n",
        addr::HAG_SERVICE.v4,
    );
    let path = dir.path().join("hag.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut hag = tb.hag.spawn(bin_path("hag").to_str().unwrap(), &["--config", path.to_str().unwrap()]).unwrap();
    assert!(hag.wait_for_log("listening", Duration::from_secs(10)), "hag did not start:\n{}", hag.log());
    hag
}

fn hcpe_config(dir: &TempDir, fallback: &str, offload: bool, fastopen: bool) -> PathBuf {
    let yaml = format!(
        "lan_interfaces: [lan0]\n\
         tun: {{ name: hcpe0, queues: 2, offload: {offload} }}\n\
         hag:\n  addresses: ['{hag4}']\n  cpe_id: {CPE_ID}\n  key_file: cpe.key\n  fastopen: {fastopen}\n\
         uplinks:\n\
         \x20 - {{ name: dsl, interface: dsl0, ipv4: {{ address: {d4} }} }}\n\
         \x20 - {{ name: lte, interface: lte0, ipv4: {{ address: {l4} }} }}\n\
         fallback: {fallback}\n\
         limits: {{ connect_timeout: 1s, reply_timeout: 2s }}\n\
         log_level: hcpe=info\n",
        hag4 = addr::HAG_SERVICE.v4,
        d4 = addr::CPE_DSL.v4,
        l4 = addr::CPE_LTE.v4,
    );
    let path = dir.path().join(format!("hcpe-{fallback}-{offload}-{fastopen}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

fn start_hcpe(ns: &Netns, cfg: PathBuf) -> ChildGuard {
    let mut hcpe = ns.spawn(bin_path("hcpe").to_str().unwrap(), &["--config", cfg.to_str().unwrap()]).unwrap();
    assert!(hcpe.wait_for_log("hcpe ready", Duration::from_secs(10)), "hcpe did not start:\n{}", hcpe.log());
    hcpe
}

/// Unshaped testbed, MPTCP endpoints for a second subflow over LTE.
fn testbed() -> Testbed {
    let tb = Testbed::new(TestbedConfig {
        dsl: LinkConfig::symmetric(Shape::default()),
        lte: LinkConfig { seed: 2, ..LinkConfig::symmetric(Shape::default()) },
        ..TestbedConfig::default()
    })
    .unwrap();
    tb.cpe.ip(&["mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "2"]).unwrap();
    tb.cpe.ip(&["mptcp", "endpoint", "add", &addr::CPE_LTE.v4.to_string(), "dev", "lte0", "subflow"]).unwrap();
    tb.hag.ip(&["mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "2"]).unwrap();
    tb
}

/// CPU seconds (user + system) a process has used so far, from /proc/<pid>/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the comm: state is index 0, utime 11, stime 12 (proc(5) fields 14 and 15).
    (ticks(11) + ticks(12)) / 100.0
}

#[test]
#[ignore]
fn hcpe_bench_tun_path_vs_routed() {
    let tb = testbed();
    let dir = config_dir("goodput");
    let server = Server::start(&tb.inet, 0).unwrap();
    let dst = SocketAddr::new(addr::INET_SERVER.ip(false), server.port());
    let rounds: usize = env_or("HCPE_BENCH_ROUNDS", 3);
    let size: u64 = env_or::<u64>("HCPE_BENCH_MIB", 512) << 20;
    let offloads: Vec<bool> = std::env::var("HCPE_BENCH_OFFLOAD")
        .unwrap_or_else(|_| "false,true".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    // `reject` = the whole chain through hag, `direct` = the TUN path alone (see below).
    let paths = std::env::var("HCPE_BENCH_PATHS").unwrap_or_else(|_| "hag,tun".into());
    let fallbacks: Vec<&str> = paths.split(',').map(|p| if p.trim() == "tun" { "direct" } else { "reject" }).collect();
    let dirs: Vec<bool> = std::env::var("HCPE_BENCH_DIRS")
        .unwrap_or_else(|_| "down,up".into())
        .split(',')
        .map(|d| d.trim() == "up")
        .collect();
    // Every transfer is verified (content and SHA-256) by the traffic client/server; a failure panics.
    let run = |up: bool| {
        let t = tb.lan.within(move || if up { Client::new(dst).upload(size) } else { Client::new(dst).download(size) });
        t.unwrap().unwrap_or_else(|e| panic!("{} failed: {e}", if up { "upload" } else { "download" })).mbit_per_s()
    };
    let hag = start_hag(&tb, &dir);
    let gbit = size as f64 * 8.0 / 1e9;
    let me = std::process::id();
    let name = |up: bool| if up { "up  " } else { "down" };
    for round in 1..=rounds {
        let mut routed = [0.0; 2];
        let mut lines = Vec::new();
        for &up in &dirs {
            let cpu_me = cpu_seconds(me);
            routed[usize::from(up)] = run(up);
            lines.push(format!(
                "  routed            {}: {:5.0} Mbit/s            (cpu-s/Gbit: test process {:.2})",
                name(up),
                routed[usize::from(up)],
                (cpu_seconds(me) - cpu_me) / gbit
            ));
        }
        for &offload in &offloads {
            for &fallback in &fallbacks {
                // `reject`: the whole chain (MPTCP to hag). `direct` with hag's address on a port nobody
                // listens on: refused at once, so hcpe falls back to plain TCP to the destination and the
                // run measures the TUN interception path alone.
                let cfg = hcpe_config(&dir, fallback, offload, false);
                if fallback == "direct" {
                    let hag4 = addr::HAG_SERVICE.v4;
                    let text = std::fs::read_to_string(&cfg).unwrap();
                    std::fs::write(&cfg, text.replace(&format!("'{hag4}'"), &format!("'{hag4}:5199'"))).unwrap();
                }
                let mut hcpe = start_hcpe(&tb.cpe, cfg);
                let path = if fallback == "direct" { "tun-only" } else { "hcpe/hag" };
                for &up in &dirs {
                    let cpu0 = [cpu_seconds(hcpe.pid()), cpu_seconds(hag.pid()), cpu_seconds(me)];
                    let mbit = run(up);
                    let cpu1 = [cpu_seconds(hcpe.pid()), cpu_seconds(hag.pid()), cpu_seconds(me)];
                    let per_gbit = |i: usize| (cpu1[i] - cpu0[i]) / gbit;
                    lines.push(format!(
                        "  {path} off={:<5} {}: {mbit:5.0} Mbit/s ratio {:.2} (cpu-s/Gbit: hcpe {:.2}, hag {:.2}, \
                         test process {:.2})",
                        offload,
                        name(up),
                        mbit / routed[usize::from(up)],
                        per_gbit(0),
                        per_gbit(1),
                        per_gbit(2),
                    ));
                }
                hcpe.kill();
            }
        }
        eprintln!("round {round} ({} MiB per transfer):\n{}", size >> 20, lines.join("\n"));
    }
}

#[test]
#[ignore]
fn hcpe_bench_time_to_first_byte() {
    let tb = testbed();
    let dir = config_dir("ttfb");
    let server = Server::start(&tb.inet, 0).unwrap();
    let dst = SocketAddr::new(addr::INET_SERVER.ip(false), server.port());
    let conns: u32 = env_or("HCPE_BENCH_CONNS", 300);
    let offload = std::env::var("HCPE_BENCH_OFFLOAD").map(|v| v.contains("true")).unwrap_or(true);
    // The testbed sets the TFO sysctls of the DESIGN's contract (no-cookie client bits on cpe, cookie-not-
    // required server bits on hag), so `fastopen: true` carries the Convert request in the SYN.
    let run = || tb.lan.within(move || Client::new(dst).short_connections(conns, 100, 100)).unwrap().unwrap();
    let direct = run();
    let _hag = start_hag(&tb, &dir);
    let mut out = vec![];
    for tfo in [false, true] {
        let mut hcpe = start_hcpe(&tb.cpe, hcpe_config(&dir, "reject", offload, tfo));
        out.push((tfo, tb.lan.within(move || Client::new(dst).short_connections(conns, 100, 100)).unwrap()));
        hcpe.kill();
    }
    eprintln!("direct: median {:?}, p90 {:?}", direct.median(), direct.quantile(0.9));
    for (tfo, r) in out {
        match r {
            Ok(r) => eprintln!(
                "hcpe/hag tfo={tfo} offload={offload}: median {:?} (+{:?}), p90 {:?}",
                r.median(),
                r.median().saturating_sub(direct.median()),
                r.quantile(0.9)
            ),
            Err(e) => eprintln!("hcpe/hag tfo={tfo}: failed: {e}"),
        }
    }
}
