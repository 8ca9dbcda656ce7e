//! Multipath bench (ignored): downloads and uploads through hcpe/hag, started from `deploy/examples/` as an
//! operator would (LTE in the example's mode unless told otherwise), against each link alone and (downloads)
//! against kernel MPTCP between the CPE and hag's namespace without the daemons, on link pairs where the second
//! link is good, poor, lossy, jittery, better than DSL (a rural line), or drops its rate mid-transfer. Every
//! figure is a ratio against the single-link rates measured in the same run, so the machine's load cancels
//! out. Each direction starts on freshly started daemons, 3 s after they are up, so one row's path-control
//! decisions do not carry into the next. Mid-transfer it also prints what hag's kernel says of each subflow
//! (`ss -tinM`: cwnd, RTT, delivery rate, bytes in flight), the MPTCP counters that moved (`nstat`), and hcpe's
//! path-control decisions, health verdicts and endpoint changes, which is where a multipath slowdown shows its
//! cause. At the end, a table of every round's ratios.
//!
//! `cargo build --release --workspace --bins && cargo test --release -p tests --test multipath_bench -- --ignored --nocapture --test-threads 1`
//! (`MULTIPATH_BENCH_ROUNDS=n` repeats each scenario, default 1; `MULTIPATH_BENCH_ONLY=text,...` runs the
//! scenarios whose name contains one of them; `MULTIPATH_BENCH_DIRECTIONS=down` or `up` runs one direction;
//! `MULTIPATH_BENCH_LTE_MODE=active|adaptive|backup|overflow` sets LTE's mode in hcpe's config;
//! `MULTIPATH_BENCH_HAG_BUF_MAX=bytes` and `MULTIPATH_BENCH_CPE_BUF_MAX=bytes` set the largest TCP send and
//! receive buffers, `net.ipv4.tcp_wmem`'s and `tcp_rmem`'s third values, in hag's and in the CPE's namespace;
//! `MULTIPATH_BENCH_POOL_MAX=n` limits hcpe's ready-connection pool, 0 turns it off, and
//! `MULTIPATH_BENCH_POOL_MAX_AGE=duration` sets how long a ready connection waits before it is replaced;
//! `MULTIPATH_BENCH_CC=name` sets the congestion control of the bench's own sockets (the baselines' senders,
//! and the LAN and Internet legs through the daemons), any the kernel has; `MULTIPATH_BENCH_DAEMON_CC=name` the
//! daemons' MPTCP connections' (their `congestion_control`, any the kernel has);
//! `MULTIPATH_BENCH_HAG_START=name:duration` or `off` sets hag's `congestion_control_start` (shipped: none);
//! `TESTBED_SYSCTL=key=value,...` (every testbed's) sets more sysctls in the CPE's and hag's namespaces;
//! `MULTIPATH_BENCH_SS=1` prints both ends' `ss -tinmM` 3 s in; `MULTIPATH_BENCH_TIMELINE=1` prints what the
//! LAN client moved and each link delivered per 100 ms).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tests::ChildGuard;
use tests::daemons;
use tests::emulator::{Direction, LinkConfig, Shape};
use tests::testbed::{Testbed, TestbedConfig, addr, ifname};
use tests::traffic::{Client, Server, Transfer};

struct Scenario {
    name: &'static str,
    dsl: Shape,
    lte: Shape,
    /// LTE's shape once a third of a transfer's bytes have moved (a rate drop mid-transfer).
    lte_later: Option<Shape>,
}

fn scenarios() -> Vec<Scenario> {
    let dsl = || Shape::mbit(50.0).delay_ms(10.0);
    let good_lte = || Shape::mbit(30.0).delay_ms(30.0).jitter_ms(5.0);
    let poor_lte = || Shape::mbit(5.0).delay_ms(150.0).jitter_ms(30.0);
    let s = |name, dsl, lte| Scenario { name, dsl, lte, lte_later: None };
    vec![
        s("good LTE", dsl(), good_lte()),
        s("poor LTE", dsl(), poor_lte()),
        s("poor lossy LTE", dsl(), poor_lte().loss(0.02)),
        s("jittery LTE", dsl(), Shape::mbit(30.0).delay_ms(30.0).jitter_ms(60.0)),
        s("rural DSL", Shape::mbit(8.0).delay_ms(15.0), Shape::mbit(60.0).delay_ms(35.0).jitter_ms(5.0)),
        Scenario {
            lte_later: Some(Shape::mbit(3.0).delay_ms(30.0).jitter_ms(5.0)),
            ..s("LTE drops to 3 Mbit/s", dsl(), good_lte())
        },
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Down,
    Up,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::Down => "download",
            Dir::Up => "upload",
        }
    }
}

/// Bytes that take about `secs` at `mbit`, at least 3 MiB.
fn size_for(mbit: f64, secs: f64) -> u64 {
    ((mbit * 1e6 / 8.0 * secs) as u64).max(3 << 20)
}

fn mbit(shape: &Shape) -> f64 {
    shape.rate_bps.map_or(1000.0, |r| r as f64 / 1e6)
}

/// `MULTIPATH_BENCH_CC=name`: the congestion control of the bench's own sockets (the test server's and
/// client's, so the baselines' senders and the LAN and Internet legs through the daemons), any the kernel has;
/// without it, the namespaces' default, which they inherit from the machine.
fn bench_cc() -> Option<String> {
    std::env::var("MULTIPATH_BENCH_CC").ok()
}

/// One transfer of `size` bytes with `client` (from the LAN client or the CPE itself), in `dir`; with `drop`,
/// LTE takes that shape once a third of the bytes have moved.
fn transfer(tb: &Testbed, on_lan: bool, client: Client, dir: Dir, size: u64, drop: Option<Shape>) -> Transfer {
    let progress = Arc::new(AtomicU64::new(0));
    let client = client.progress(progress.clone()).timeout(Duration::from_secs(30));
    let done = AtomicBool::new(false);
    let ns = if on_lan { &tb.lan } else { &tb.cpe };
    let t = std::thread::scope(|scope| {
        if let Some(shape) = drop {
            let (done, progress) = (&done, &progress);
            scope.spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    if progress.load(Ordering::Relaxed) >= size / 3 {
                        tb.lte.set_both(shape);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
        let t = ns.within(move || match dir {
            Dir::Down => client.download(size),
            Dir::Up => client.upload(size),
        });
        done.store(true, Ordering::Relaxed);
        t
    });
    t.unwrap().unwrap_or_else(|e| panic!("{} of {size} bytes: {e}", dir.name()))
}

/// A plain TCP transfer over one uplink alone (its source address picks the link through the testbed's policy
/// rules): a single-link baseline.
fn single_link(tb: &Testbed, s: &Scenario, dst: SocketAddr, src: IpAddr, link: &Shape, dir: Dir, drop: bool) -> f64 {
    let drop = if drop { s.lte_later } else { None };
    let size = size_for(mbit(link), 5.0);
    let t = transfer(tb, false, Client::new(dst).bind(SocketAddr::new(src, 0)).congestion(bench_cc()), dir, size, drop);
    // The drop is undone for what follows.
    tb.lte.set_both(s.lte);
    t.mbit_per_s()
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

/// MPTCP and TCP counters of hag's namespace that changed since the last call (`nstat` keeps the history):
/// reordering, retransmissions, and CUBIC's slow-start exits (HyStart).
fn counters(tb: &Testbed) -> String {
    let out = tb.hag.exec_ok("nstat", &["-z"]).unwrap_or_default();
    out.lines()
        .filter(|l| ["MPTcpExt", "TcpExtTCPOFO", "TcpRetransSegs", "TcpExtTCPHystart"].iter().any(|p| l.starts_with(p)))
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
fn kernel_mptcp(tb: &Testbed, s: &Scenario) -> f64 {
    let lte = addr::CPE_LTE.ip(false).to_string();
    tb.cpe.ip(&["mptcp", "endpoint", "add", &lte, "dev", ifname::LTE, "subflow"]).unwrap();
    let addr = SocketAddr::new(addr::HAG_SERVICE.ip(false), 0);
    let server = Server::bind_with(&tb.hag, addr, true, bench_cc().as_deref()).unwrap();
    let (dst, src) = (server.addr(), SocketAddr::new(addr::CPE_DSL.ip(false), 0));
    let size = size_for(mbit(&s.dsl) + mbit(&s.lte), 7.0);
    let t =
        transfer(tb, false, Client::new(dst).bind(src).mptcp().congestion(bench_cc()), Dir::Down, size, s.lte_later);
    tb.lte.set_both(s.lte);
    tb.cpe.ip(&["mptcp", "endpoint", "flush"]).unwrap();
    t.mbit_per_s()
}

/// The LTE mode hcpe's config gets: `MULTIPATH_BENCH_LTE_MODE`, or the example's own.
fn lte_mode() -> Option<String> {
    std::env::var("MULTIPATH_BENCH_LTE_MODE").ok().filter(|m| !m.is_empty())
}

/// hcpe's example config, with LTE's mode replaced when one is asked for.
fn hcpe_yaml() -> String {
    let yaml = match lte_mode() {
        Some(mode) => daemons::example_hcpe_yaml_lte_mode(&mode),
        None => daemons::example_hcpe_yaml(),
    }
    .unwrap();
    // `MULTIPATH_BENCH_POOL_MAX=n`: the ready-connection pool's size limit (0: every transfer on a fresh connection).
    let yaml = match std::env::var("MULTIPATH_BENCH_POOL_MAX") {
        Ok(max) => yaml.replace("    min: 4\n    max: 32", &format!("    min: 0\n    max: {max}")),
        Err(_) => yaml,
    };
    // `MULTIPATH_BENCH_POOL_MAX_AGE=duration`: how long a ready connection waits before it is replaced.
    let yaml = match std::env::var("MULTIPATH_BENCH_POOL_MAX_AGE") {
        Ok(age) => yaml.replace("    max_age: 60s", &format!("    max_age: {age}")),
        Err(_) => yaml,
    };
    // `MULTIPATH_BENCH_TRACE=1`: every input of the path controller in hcpe's log, printed after each transfer.
    let yaml = match std::env::var("MULTIPATH_BENCH_TRACE").is_ok() {
        true => yaml.replace("log_level: info", "log_level: info,hcpe::uplink::driver::paths=trace"),
        false => yaml,
    };
    with_daemon_cc(yaml)
}

/// `MULTIPATH_BENCH_DAEMON_CC=name`: the congestion control of the daemons' MPTCP connections
/// (`congestion_control` in both configs; the baselines keep the namespaces' default).
/// `MULTIPATH_BENCH_HAG_START=name:duration` or `off`: hag's `congestion_control_start`.
fn with_daemon_cc(yaml: String) -> String {
    let yaml = match std::env::var("MULTIPATH_BENCH_DAEMON_CC") {
        Ok(cc) => yaml.replace("#congestion_control: cubic", &format!("congestion_control: {cc}")),
        Err(_) => yaml,
    };
    let start = match std::env::var("MULTIPATH_BENCH_HAG_START").as_deref() {
        Ok("off") => "bbr:0s".to_owned(),
        Ok(s) => s.to_owned(),
        Err(_) => return yaml,
    };
    let (algorithm, duration) = start.split_once(':').expect("MULTIPATH_BENCH_HAG_START=name:duration or off");
    let commented = "#congestion_control_start:\n#  algorithm: bbr\n#  duration: 3s";
    assert!(yaml.contains(commented), "MULTIPATH_BENCH_HAG_START: hag's example no longer has {commented:?}");
    yaml.replace(commented, &format!("congestion_control_start:\n  algorithm: {algorithm}\n  duration: {duration}"))
}

/// What one round of one scenario measured in one direction.
struct Outcome {
    scenario: &'static str,
    dir: Dir,
    dsl: f64,
    lte: f64,
    kernel: Option<f64>,
    hcpe: f64,
}

impl Outcome {
    fn best(&self) -> f64 {
        self.dsl.max(self.lte)
    }
}

fn run(s: &Scenario, round: usize, dirs: &[Dir]) -> Vec<Outcome> {
    let tb = Testbed::new(TestbedConfig {
        dsl: LinkConfig::symmetric(s.dsl),
        lte: LinkConfig { seed: 2 + round as u64, ..LinkConfig::symmetric(s.lte) },
        ..TestbedConfig::default()
    })
    .unwrap();
    // Buffer limits for every MPTCP run of the round (the kernel baseline's too): hag's namespace sends
    // downloads, the CPE's receives them (and the reverse for uploads).
    for (var, ns) in [("MULTIPATH_BENCH_HAG_BUF_MAX", &tb.hag), ("MULTIPATH_BENCH_CPE_BUF_MAX", &tb.cpe)] {
        if let Ok(max) = std::env::var(var) {
            for key in ["net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"] {
                ns.exec_ok("sysctl", &["-qw", &format!("{key}=4096 131072 {max}")]).unwrap();
            }
        }
    }
    let dir = daemons::config_dir("multipath-bench").unwrap();
    let server = Server::bind_with(&tb.inet, "[::]:0".parse().unwrap(), false, bench_cc().as_deref()).unwrap();
    let dst = SocketAddr::new(addr::INET_SERVER.ip(false), server.port());
    let mut baselines = Vec::new();
    for d in dirs {
        let dsl = single_link(&tb, s, dst, addr::CPE_DSL.ip(false), &s.dsl, *d, false);
        let lte = single_link(&tb, s, dst, addr::CPE_LTE.ip(false), &s.lte, *d, true);
        let kernel = (*d == Dir::Down).then(|| kernel_mptcp(&tb, s));
        baselines.push((*d, dsl, lte, kernel));
    }

    let hag_yaml = with_daemon_cc(daemons::example_hag_yaml().unwrap());
    let mut out = Vec::new();
    for (d, dsl, lte, kernel) in baselines {
        // Each direction on freshly started daemons: what the path controller decided in the other direction's
        // transfer (a demotion, and the trial wait after it) is not carried into this one's.
        let (_hag, hcpe) = daemons::start_configs(&tb, dir.path(), &hag_yaml, &hcpe_yaml()).unwrap();
        daemons::wait_up(&hcpe, 2, Duration::from_secs(5)).unwrap();
        // A router runs long before anyone downloads: the path controller has had its few seconds.
        std::thread::sleep(Duration::from_secs(3));
        let size = size_for(mbit(&s.dsl) + mbit(&s.lte), 7.0);
        let _ = counters(&tb);
        let link_dir = if d == Dir::Down { Direction::Down } else { Direction::Up };
        let carried = |tb: &Testbed| (tb.dsl.counters(link_dir).tx_bytes, tb.lte.counters(link_dir).tx_bytes);
        let carried_before = carried(&tb);
        let decisions_before = path_control(&hcpe).len();
        let timeline = std::env::var("MULTIPATH_BENCH_TIMELINE").is_ok();
        let moving = AtomicBool::new(true);
        let mid = std::thread::scope(|scope| {
            // `MULTIPATH_BENCH_TIMELINE=1`: what each link delivered in the transfer's direction per 100 ms (the
            // client's own timeline of an upload shows its writes, which come in bursts as its buffer drains).
            let wire = scope.spawn(|| {
                let mut rows = Vec::new();
                let mut last = carried(&tb);
                while timeline && moving.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    let now = carried(&tb);
                    rows.push(((now.0 - last.0) * 8 / 100_000, (now.1 - last.1) * 8 / 100_000));
                    last = now;
                }
                rows
            });
            let t = scope.spawn(|| {
                std::thread::sleep(Duration::from_secs(3));
                // `MULTIPATH_BENCH_SS=1`: both ends' sockets to hag as `ss` shows them, with their memory.
                if std::env::var("MULTIPATH_BENCH_SS").is_ok() {
                    for (ns, filter) in [(&tb.cpe, "( dport = :5124 )"), (&tb.hag, "( sport = :5124 )")] {
                        let out = ns.exec_ok("ss", &["-tinmM", "state", "established", filter]).unwrap_or_default();
                        println!("    ss in {}:\n{out}", ns.name());
                    }
                }
                subflows(&tb)
            });
            let transfer = transfer(&tb, true, Client::new(dst).congestion(bench_cc()), d, size, s.lte_later);
            moving.store(false, Ordering::Relaxed);
            (transfer, t.join().unwrap(), wire.join().unwrap())
        });
        tb.lte.set_both(s.lte);
        let (transfer, mid, wire) = mid;
        let moved = counters(&tb);
        let carried_after = carried(&tb);
        let got = transfer.mbit_per_s();
        let o = Outcome { scenario: s.name, dir: d, dsl, lte, kernel, hcpe: got };
        let kernel =
            kernel.map_or(String::new(), |k| format!(", kernel MPTCP alone {k:.1} ({:.2} x best)", k / o.best()));
        println!(
            "{} {} (round {round}): DSL alone {dsl:.1}, LTE alone {lte:.1}{kernel}, hcpe/hag {got:.1} Mbit/s = {:.2} x best, \
             {:.2} x sum; longest stall {:?}",
            s.name,
            d.name(),
            got / o.best(),
            got / (dsl + lte),
            transfer.timeline.max_stall()
        );
        // `MULTIPATH_BENCH_TIMELINE=1`: what the LAN client moved per 100 ms, in Mbit/s.
        if std::env::var("MULTIPATH_BENCH_TIMELINE").is_ok() {
            let rates: Vec<String> = transfer.timeline.mbit_per_s().iter().map(|r| format!("{r:.0}")).collect();
            println!("    per 100 ms: {} (then {:?} to the end)", rates.join(" "), transfer.elapsed);
            let link = |pick: fn(&(u64, u64)) -> u64| wire.iter().map(|r| pick(r).to_string()).collect::<Vec<_>>();
            println!("    DSL per 100 ms: {}", link(|r| r.0).join(" "));
            println!("    LTE per 100 ms: {}", link(|r| r.1).join(" "));
        }
        println!("    hag subflows 3 s in:\n      {mid}");
        println!(
            "    the links carried in the transfer's direction (frames): DSL {:.1} MB, LTE {:.2} MB",
            (carried_after.0 - carried_before.0) as f64 / 1e6,
            (carried_after.1 - carried_before.1) as f64 / 1e6
        );
        println!("    hag counters that moved: {moved}");
        for line in &path_control(&hcpe)[decisions_before..] {
            println!("    hcpe: {line}");
        }
        out.push(o);
    }
    out
}

/// hcpe's log lines so far that tell what happened to LTE's path: path-control decisions (and with
/// `MULTIPATH_BENCH_TRACE`, their inputs), health verdicts, and the endpoint changes that follow them.
fn path_control(hcpe: &ChildGuard) -> Vec<String> {
    let relevant = |l: &&str| {
        (l.contains("path control") && l.contains("uplink=lte"))
            || l.contains("MPTCP endpoint")
            || l.contains("health")
            || l.contains("join")
    };
    hcpe.log().lines().filter(relevant).map(str::to_owned).collect()
}

#[test]
#[ignore = "bench: prints ratios to each link alone; run with --ignored --nocapture"]
fn transfers_against_each_link_alone() {
    let rounds = std::env::var("MULTIPATH_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let only = std::env::var("MULTIPATH_BENCH_ONLY").unwrap_or_default();
    let dirs: Vec<Dir> = match std::env::var("MULTIPATH_BENCH_DIRECTIONS").as_deref() {
        Ok("down") => vec![Dir::Down],
        Ok("up") => vec![Dir::Up],
        _ => vec![Dir::Down, Dir::Up],
    };
    println!("LTE mode: {}", lte_mode().unwrap_or_else(|| "as in deploy/examples/hcpe.yaml".into()));
    let mut all: Vec<Outcome> = Vec::new();
    for s in scenarios().into_iter().filter(|s| only.split(',').any(|o| s.name.contains(o))) {
        for round in 0..rounds {
            all.extend(run(&s, round, &dirs));
        }
    }
    println!(
        "\n| scenario | direction | DSL alone | LTE alone | kernel MPTCP, x best | hcpe/hag | x best single link | x sum |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut keys: Vec<(&str, Dir)> = Vec::new();
    for o in &all {
        if !keys.contains(&(o.scenario, o.dir)) {
            keys.push((o.scenario, o.dir));
        }
    }
    for (name, d) in keys {
        let rows: Vec<&Outcome> = all.iter().filter(|o| o.scenario == name && o.dir == d).collect();
        let list = |f: &dyn Fn(&Outcome) -> f64, digits: usize| {
            rows.iter().map(|o| format!("{:.*}", digits, f(o))).collect::<Vec<_>>().join(" / ")
        };
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} |",
            d.name(),
            list(&|o| o.dsl, 1),
            list(&|o| o.lte, 1),
            if d == Dir::Down { list(&|o| o.kernel.unwrap_or(0.0) / o.best(), 2) } else { "-".into() },
            list(&|o| o.hcpe, 1),
            list(&|o| o.hcpe / o.best(), 2),
            list(&|o| o.hcpe / (o.dsl + o.lte), 2),
        );
    }
}
