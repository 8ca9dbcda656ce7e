//! Benches of hcpe's data path, ignored in the normal suite; run them in release with
//! `cargo test --release -p tests --test hcpe_bench -- --ignored --nocapture --test-threads 1`.
//!
//! Every bench prints ratios against a baseline measured in the same run on the same testbed (the machine is
//! shared, so absolute numbers move; the ratios are what the targets are about), several rounds:
//! - goodput of one unshaped transfer lan <-> inet (download and upload) through hcpe/hag, and through hcpe
//!   alone, against plain routed forwarding through the same namespaces, offload off and on (target >= 0.5),
//!   with the CPU seconds per Gbit of hcpe, hag and the test process (client, server, link emulators);
//! - time to first byte of a new connection (connect, 100-byte request, 100-byte answer) through hcpe/hag
//!   against going direct, link delays zero, TFO off and on (target <= +2 ms).
//!
//! Knobs (environment): `HCPE_BENCH_ROUNDS` (default 3), `HCPE_BENCH_MIB` (transfer size, default 512),
//! `HCPE_BENCH_OFFLOAD` (comma list of `false`/`true`; goodput default both, TTFB default `true`),
//! `HCPE_BENCH_PATHS` (`hag`, `tun` or both, default both), `HCPE_BENCH_DIRS` (`down`, `up` or both, default
//! both), `HCPE_BENCH_CONNS` (TTFB connections per round, default 300).

use std::net::SocketAddr;

use tests::daemons::{self, HagSpec, HcpeSpec};
use tests::emulator::{LinkConfig, Shape};
use tests::netns::ChildGuard;
use tests::testbed::{Testbed, TestbedConfig, addr};
use tests::traffic::{Client, Server};

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// hcpe for a bench run: IPv4 uplinks (addresses only, the testbed's source routing), info logs.
fn hcpe_spec(fallback: &str, offload: bool, fastopen: bool) -> HcpeSpec {
    HcpeSpec {
        fallback: fallback.into(),
        offload: Some(offload),
        fastopen,
        v6: false,
        limits: "{ connect_timeout: 1s, reply_timeout: 2s }".into(),
        log_level: "hcpe=info".into(),
        ..HcpeSpec::default()
    }
}

/// hcpe carrying LAN TCP without hag: hag's address on a port nobody listens on is refused at once, so with
/// `fallback: direct` every connection goes plain TCP to its destination and a run measures the TUN
/// interception path alone.
fn start_hcpe_tun_only(tb: &Testbed, dir: &std::path::Path, offload: bool) -> ChildGuard {
    let hag4 = addr::HAG_SERVICE.v4;
    let yaml = daemons::hcpe_yaml(&hcpe_spec("direct", offload, false))
        .replace(&format!("'{hag4}'"), &format!("'{hag4}:5199'"));
    let cfg = daemons::write_config(dir, "hcpe-tun-only.yaml", &yaml).unwrap();
    daemons::start(&tb.cpe, "hcpe", &cfg, &["hcpe ready"]).unwrap()
}

/// Unshaped testbed, MPTCP endpoints for a second subflow over LTE.
fn testbed() -> Testbed {
    let tb = Testbed::new(TestbedConfig {
        dsl: LinkConfig::symmetric(Shape::default()),
        lte: LinkConfig { seed: 2, ..LinkConfig::symmetric(Shape::default()) },
        ..TestbedConfig::default()
    })
    .unwrap();
    daemons::static_endpoints(&tb).unwrap();
    tb
}

/// A field of the `TUN at shutdown` counters hcpe logs when it exits (0 when absent).
fn tun_counter(log: &str, field: &str) -> u64 {
    let Some(line) = log.lines().rev().find(|l| l.contains("TUN at shutdown")) else { return 0 };
    let Some(at) = line.find(&format!("{field}: ")) else { return 0 };
    line[at + field.len() + 2..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap_or(0)
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
    let dir = daemons::config_dir("hcpe-bench-goodput").unwrap();
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
    let hag = daemons::start_hag(&tb, dir.path(), &HagSpec { v6: false, ..HagSpec::default() }).unwrap();
    let gbit = size as f64 * 8.0 / 1e9;
    let me = std::process::id();
    let name = |up: bool| if up { "up  " } else { "down" };
    let routed_run = |lines: &mut Vec<String>| {
        let mut routed = [0.0; 2];
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
        routed
    };
    for round in 1..=rounds {
        let mut lines = Vec::new();
        for &offload in &offloads {
            for &fallback in &fallbacks {
                // The baseline right before each configuration, so other load on the machine moves both alike.
                let routed = routed_run(&mut lines);
                // `reject`: the whole chain (MPTCP to hag); `direct`: the TUN path alone.
                let mut hcpe = if fallback == "direct" {
                    start_hcpe_tun_only(&tb, dir.path(), offload)
                } else {
                    daemons::start_hcpe(&tb, dir.path(), &hcpe_spec(fallback, offload, false)).unwrap()
                };
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
                // Per-packet view from hcpe's own counters (both directions of the transfers above).
                let log = hcpe.log();
                let reads = tun_counter(&log, "reads");
                let write_errors = tun_counter(&log, "write_errors");
                lines.push(format!(
                    "    TUN packets: {reads} reads, {:.0} bytes of transfer per read, {write_errors} refused writes",
                    (size * dirs.len() as u64) as f64 / reads.max(1) as f64
                ));
                assert_eq!(write_errors, 0, "the kernel refused packets hcpe wrote back:\n{log}");
            }
        }
        eprintln!("round {round} ({} MiB per transfer):\n{}", size >> 20, lines.join("\n"));
    }
}

#[test]
#[ignore]
fn hcpe_bench_time_to_first_byte() {
    let tb = testbed();
    let dir = daemons::config_dir("hcpe-bench-ttfb").unwrap();
    let server = Server::start(&tb.inet, 0).unwrap();
    let dst = SocketAddr::new(addr::INET_SERVER.ip(false), server.port());
    let conns: u32 = env_or("HCPE_BENCH_CONNS", 300);
    let offload = std::env::var("HCPE_BENCH_OFFLOAD").map(|v| v.contains("true")).unwrap_or(true);
    // The testbed sets the TFO sysctls of the DESIGN's contract (no-cookie client bits on cpe, cookie-not-
    // required server bits on hag), so `fastopen: true` carries the Convert request in the SYN.
    let rounds: usize = env_or("HCPE_BENCH_ROUNDS", 3);
    let run = || tb.lan.within(move || Client::new(dst).short_connections(conns, 100, 100)).unwrap();
    let _hag = daemons::start_hag(&tb, dir.path(), &HagSpec { v6: false, ..HagSpec::default() }).unwrap();
    for round in 1..=rounds {
        // Direct: no hcpe, so LAN TCP is routed (hag's namespace forwards it; the hag process is idle).
        let direct = run().unwrap();
        let mut lines =
            vec![format!("  direct               : median {:?}, p90 {:?}", direct.median(), direct.quantile(0.9))];
        for tfo in [false, true] {
            let mut hcpe = daemons::start_hcpe(&tb, dir.path(), &hcpe_spec("reject", offload, tfo)).unwrap();
            lines.push(match run() {
                Ok(r) => format!(
                    "  hcpe/hag tfo={tfo:<5}     : median {:?} (+{:?}), p90 {:?}",
                    r.median(),
                    r.median().saturating_sub(direct.median()),
                    r.quantile(0.9)
                ),
                Err(e) => format!("  hcpe/hag tfo={tfo}: failed: {e}"),
            });
            hcpe.kill();
        }
        eprintln!("round {round} ({conns} connections each, offload={offload}):\n{}", lines.join("\n"));
    }
}
