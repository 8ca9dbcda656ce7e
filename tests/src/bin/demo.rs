//! `demo`: the README's one-command tour of the product, with both daemons started from `deploy/examples/`
//! (only addresses, interface names and file paths substituted). Run as root after
//! `cargo build --release --workspace --bins`:
//!
//! ```text
//! target/release/demo            # ~35 s: 16/12 MiB baselines, 64 MiB aggregate, 64 MiB failover
//! target/release/demo --quick    # ~15 s: the same steps with small transfers (CI smoke test)
//! ```
//!
//! Steps: build the namespace testbed (DSL 50/10 Mbit/s 20 ms RTT, LTE 30/10 Mbit/s 45 ms RTT,
//! rates down/up, the RTT split evenly over both directions), measure each link alone with a
//! plain TCP download from the CPE (the "best single link" baseline, same run), start `hag` and
//! `hcpe`, download from the LAN client through them with a live line of the per-uplink rates
//! (the link emulators' delivered bytes) and the total, print the aggregate against the best
//! single link, then run a second download, blackhole DSL at 40 % (carrier stays up, nothing
//! tells the endpoints) and show it finishing on LTE: same connection, no reset, SHA-256 of the
//! received bytes equal to the server's.
//!
//! Owns nothing but this flow; everything it builds is torn down by guards: children (hcpe,
//! hag) before the testbed, the testbed's namespaces last, also on error (unwinding/`?`), and on
//! Ctrl-C/SIGTERM by the netns library's signal watcher (kills the children, deletes the
//! namespaces). The config directory (with a fresh random key) is deleted as soon as both
//! daemons have read it. Exit code 0 only if every transfer was intact.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use tests::daemons;
use tests::emulator::{Direction, LinkConfig, Shape};
use tests::netns::ChildGuard;
use tests::testbed::{Testbed, TestbedConfig, addr, ifname};
use tests::traffic::{Client, Server, Transfer};

#[derive(Parser)]
#[command(about = "Hybrid access demo: hcpe + hag bonding DSL and LTE on a namespace testbed, then DSL failing")]
struct Cli {
    /// Small transfers (about 15 s in all); the same steps, including the DSL cut.
    #[arg(long)]
    quick: bool,
    /// Progress line interval in milliseconds (default 1000, 500 with --quick).
    #[arg(long)]
    interval_ms: Option<u64>,
    /// Let hcpe send the Convert request in the SYN (TCP Fast Open). Off by default, as in hcpe: on Linux 6.18
    /// an MPTCP connection accepted with SYN data ignores the client's receive window at first, and about half
    /// of such downloads crawl on retransmissions (reproduced in tests/tests/mptcp_tfo_join.rs).
    #[arg(long)]
    tfo: bool,
}

/// Link parameters of the demo (rates in Mbit/s, round-trip times in ms).
const DSL_DOWN: f64 = 50.0;
const DSL_UP: f64 = 10.0;
const DSL_RTT: f64 = 20.0;
const LTE_DOWN: f64 = 30.0;
const LTE_UP: f64 = 10.0;
const LTE_RTT: f64 = 45.0;
const MIB: u64 = 1 << 20;

/// Transfer sizes of one run.
struct Sizes {
    baseline_dsl: u64,
    baseline_lte: u64,
    aggregate: u64,
    failover: u64,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes { baseline_dsl: 6 * MIB, baseline_lte: 4 * MIB, aggregate: 12 * MIB, failover: 16 * MIB }
        } else {
            Sizes { baseline_dsl: 16 * MIB, baseline_lte: 12 * MIB, aggregate: 64 * MIB, failover: 64 * MIB }
        }
    }
}

/// The daemons' log level: `info`, or `$DEMO_LOG` (e.g. `debug`) when set.
fn log_level() -> String {
    std::env::var("DEMO_LOG").unwrap_or_else(|_| "info".into())
}

/// The demo testbed: shaped links, nothing else. hcpe's uplink manager adds the MPTCP endpoints and limits on
/// the CPE; hag's kernel keeps its defaults (two subflows per connection are enough for two uplinks).
fn build_testbed() -> anyhow::Result<Testbed> {
    let link = |down: f64, up: f64, rtt: f64, seed: u64| LinkConfig {
        up: Shape::mbit(up).delay_ms(rtt / 2.0),
        down: Shape::mbit(down).delay_ms(rtt / 2.0),
        seed,
    };
    let tb = Testbed::new(TestbedConfig {
        dsl: link(DSL_DOWN, DSL_UP, DSL_RTT, 1),
        lte: link(LTE_DOWN, LTE_UP, LTE_RTT, 2),
        ..TestbedConfig::default()
    })
    .context("build the testbed")?;
    Ok(tb)
}

fn daemon_path(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("current_exe")?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let p = dir.join(name);
    if !p.is_file() {
        bail!("`{name}` not found at {}: build with `cargo build --release --workspace --bins`", p.display());
    }
    Ok(p)
}

fn mbit(bytes: u64, secs: f64) -> f64 {
    bytes as f64 * 8.0 / secs.max(1e-9) / 1e6
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

fn sha_hex(sha: &[u8; 32]) -> String {
    sha.iter().map(|b| format!("{b:02x}")).collect()
}

/// Downlink bytes the two emulators delivered towards the CPE (on-wire frames).
fn down_bytes(tb: &Testbed) -> (u64, u64) {
    (tb.dsl.counters(Direction::Down).tx_bytes, tb.lte.counters(Direction::Down).tx_bytes)
}

/// What a watched download did on the links.
struct Watched {
    transfer: Transfer,
    /// Downlink on-wire bytes per link over the whole transfer.
    dsl: u64,
    lte: u64,
    /// Progress and per-link bytes at the moment of the cut (if one happened).
    cut: Option<CutInfo>,
}

struct CutInfo {
    at_bytes: u64,
    at: Duration,
    dsl_after: u64,
    lte_after: u64,
}

/// Runs a download from the LAN client to `dst` while printing, every `interval`, the rate of
/// each uplink (emulator counters) and the client's goodput. With `cut_at = Some(f)`, DSL is
/// blackholed once the client has received fraction `f` of the bytes.
fn watched_download(
    tb: &Testbed,
    dst: SocketAddr,
    size: u64,
    seed: u64,
    interval: Duration,
    cut_at: Option<f64>,
) -> anyhow::Result<Watched> {
    let progress = Arc::new(AtomicU64::new(0));
    let p = progress.clone();
    let start_links = down_bytes(tb);
    let t0 = Instant::now();
    let handle = tb
        .lan
        .thread(move || Client::new(dst).seed(seed).timeout(Duration::from_secs(30)).progress(p).download(size))?;
    let tty = std::io::stdout().is_terminal();
    let mut last = (t0, start_links, 0u64);
    let mut cut: Option<(u64, Duration, (u64, u64))> = None;
    let mut next_tick = t0 + interval;
    while !handle.is_finished() {
        std::thread::sleep(Duration::from_millis(10));
        let got = progress.load(Ordering::Relaxed);
        if cut.is_none() && cut_at.is_some_and(|f| got as f64 >= f * size as f64) {
            tb.dsl.cut();
            let flags = tb.cpe.ip(&["-br", "link", "show", "dev", ifname::DSL]).unwrap_or_default();
            let state = flags.split_whitespace().skip(1).collect::<Vec<_>>().join(" ");
            if tty {
                println!();
            }
            println!(
                "  >>> DSL cut at {:.1} MiB ({:.0} %): every frame dropped silently, cpe {} still {state}",
                mib(got),
                100.0 * got as f64 / size as f64,
                ifname::DSL
            );
            cut = Some((got, t0.elapsed(), down_bytes(tb)));
        }
        let now = Instant::now();
        if now >= next_tick {
            next_tick += interval;
            let links = down_bytes(tb);
            // "(cut)" once the whole interval was after the cut.
            let was_cut = cut.is_some_and(|(_, at, _)| t0 + at <= last.0);
            let dt = (now - last.0).as_secs_f64();
            let (d, l) = (links.0 - last.1.0, links.1 - last.1.1);
            let line = format!(
                "  {:5.1} s  DSL {:5.1} Mbit/s{}  LTE {:5.1} Mbit/s  total {:5.1} Mbit/s | goodput {:5.1} Mbit/s  {:6.1}/{:.0} MiB",
                (now - t0).as_secs_f64(),
                mbit(d, dt),
                if was_cut { " (cut)" } else { "      " },
                mbit(l, dt),
                mbit(d + l, dt),
                mbit(got - last.2, dt),
                mib(got),
                mib(size),
            );
            if tty {
                print!("\r{line}");
            } else {
                println!("{line}");
            }
            let _ = std::io::stdout().flush();
            last = (now, links, got);
        }
    }
    if tty {
        println!();
    }
    let transfer = handle.join().map_err(|_| anyhow::anyhow!("download thread panicked"))??;
    let end = down_bytes(tb);
    Ok(Watched {
        transfer,
        dsl: end.0 - start_links.0,
        lte: end.1 - start_links.1,
        cut: cut.map(|(at_bytes, at, links)| CutInfo {
            at_bytes,
            at,
            dsl_after: end.0 - links.0,
            lte_after: end.1 - links.1,
        }),
    })
}

/// hag and hcpe as shipped (`deploy/examples/`, wildcard listeners, hcpe's uplink manager), with the daemons'
/// log level from [`log_level`] and, with `tfo`, hcpe's `fastopen: true`.
fn start_daemons(tb: &Testbed, dir: &Path, tfo: bool) -> anyhow::Result<(ChildGuard, ChildGuard)> {
    let level = format!("log_level: {}", log_level());
    let hag = daemons::example_hag_yaml()?.replace("log_level: info", &level);
    let mut hcpe = daemons::example_hcpe_yaml()?.replace("log_level: info", &level);
    if tfo {
        hcpe = hcpe.replace("fastopen: false", "fastopen: true");
    }
    daemons::start_configs(tb, dir, &hag, &hcpe)
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let sizes = Sizes::new(cli.quick);
    let interval = Duration::from_millis(cli.interval_ms.unwrap_or(if cli.quick { 500 } else { 1000 }).max(100));
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo builds network namespaces: run it as root");
    }
    // Fail before building anything if the daemons are missing.
    daemon_path("hag")?;
    daemon_path("hcpe")?;

    let t_start = Instant::now();
    println!("== Testbed: lan -- cpe (hcpe) == DSL / LTE == hag -- inet (server), one namespace each");
    let tb = build_testbed()?;
    println!(
        "   DSL {DSL_DOWN:.0}/{DSL_UP:.0} Mbit/s down/up, {DSL_RTT:.0} ms RTT    LTE {LTE_DOWN:.0}/{LTE_UP:.0} Mbit/s, {LTE_RTT:.0} ms RTT"
    );
    println!("   namespaces: {}", tb.namespace_names().join(" "));
    let server = Server::start(&tb.inet, 0)?;

    println!("\n== Baseline: one plain TCP download from the CPE over each link alone");
    let dst = SocketAddr::new(addr::INET_SERVER.ip(false), server.port());
    let dsl_alone =
        daemons::single_link(&tb, dst, addr::CPE_DSL.ip(false), sizes.baseline_dsl).context("DSL baseline")?;
    println!(
        "   DSL alone: {:.1} MiB in {:.2} s = {:.1} Mbit/s",
        mib(dsl_alone.bytes),
        dsl_alone.elapsed.as_secs_f64(),
        dsl_alone.mbit_per_s()
    );
    let lte_alone =
        daemons::single_link(&tb, dst, addr::CPE_LTE.ip(false), sizes.baseline_lte).context("LTE baseline")?;
    println!(
        "   LTE alone: {:.1} MiB in {:.2} s = {:.1} Mbit/s",
        mib(lte_alone.bytes),
        lte_alone.elapsed.as_secs_f64(),
        lte_alone.mbit_per_s()
    );
    let (best_name, best) = if dsl_alone.mbit_per_s() >= lte_alone.mbit_per_s() {
        ("DSL", dsl_alone.mbit_per_s())
    } else {
        ("LTE", lte_alone.mbit_per_s())
    };

    println!(
        "\n== Starting hag (in hag) and hcpe (in cpe) from deploy/examples/ (addresses, names, paths substituted)"
    );
    let dir = daemons::config_dir("hybrid-demo")?;
    // Declared after `tb`: dropped (SIGTERM, then SIGKILL after the grace) before the testbed.
    let (hag, hcpe) = start_daemons(&tb, dir.path(), cli.tfo)?;
    drop(dir); // both have read their config and key
    daemons::wait_up(&hcpe, 2, Duration::from_secs(5)).context("both uplinks healthy")?;
    println!(
        "   hag pid {}, hcpe pid {}; LAN TCP now goes lan -> hcpe -> MPTCP over DSL+LTE -> hag -> server",
        hag.pid(),
        hcpe.pid()
    );

    let result = (|| -> anyhow::Result<()> {
        println!(
            "\n== Download {:.0} MiB from the LAN client through hcpe/hag (rates per uplink: emulator counters, downlink)",
            mib(sizes.aggregate)
        );
        let agg = watched_download(&tb, dst, sizes.aggregate, 11, interval, None).context("aggregate download")?;
        let share = agg.dsl as f64 / (agg.dsl + agg.lte).max(1) as f64;
        println!(
            "   done: {:.1} MiB in {:.2} s, SHA-256 ok ({}...); DSL carried {:.0} %, LTE {:.0} %",
            mib(agg.transfer.bytes),
            agg.transfer.elapsed.as_secs_f64(),
            &sha_hex(&agg.transfer.sha256)[..16],
            share * 100.0,
            (1.0 - share) * 100.0
        );
        if !(0.1..=0.9).contains(&share) {
            bail!(
                "one link carried almost everything (DSL {:.0} %): the connection did not use both uplinks",
                share * 100.0
            );
        }
        let g = agg.transfer.mbit_per_s();
        let sum = dsl_alone.mbit_per_s() + lte_alone.mbit_per_s();
        println!(
            "   aggregation: {g:.1} Mbit/s through hcpe/hag = {:.2} x the best single link ({best_name} alone {best:.1} Mbit/s), {:.0} % of both links' sum ({sum:.1} Mbit/s)",
            g / best,
            100.0 * g / sum,
        );

        let conns_before = server.connections();
        println!(
            "\n== Download {:.0} MiB again; DSL is blackholed at 40 % (carrier up, no ICMP, no link-down event)",
            mib(sizes.failover)
        );
        let fo = watched_download(&tb, dst, sizes.failover, 12, interval, Some(0.4))
            .context("download across the DSL cut")?;
        let cut = fo.cut.as_ref().context("the transfer ended before the cut")?;
        let after = fo.transfer.bytes - cut.at_bytes;
        let conns = server.connections() - conns_before;
        let tail_secs = fo.transfer.elapsed.as_secs_f64() - cut.at.as_secs_f64();
        println!(
            "   finished on LTE: {:.1} MiB after the cut in {tail_secs:.2} s ({:.1} Mbit/s); after the cut the links delivered DSL {} B, LTE {:.1} MiB",
            mib(after),
            mbit(after, tail_secs),
            cut.dsl_after,
            mib(cut.lte_after),
        );
        println!(
            "   longest pause in the data: {:.2} s; server saw {conns} connection, client saw no reset",
            fo.transfer.timeline.max_gap.as_secs_f64()
        );
        println!(
            "   SHA-256 ok: {} ({:.0} MiB, same on both ends)",
            sha_hex(&fo.transfer.sha256),
            mib(fo.transfer.bytes)
        );
        if cut.dsl_after != 0 {
            bail!("DSL delivered {} bytes after the cut", cut.dsl_after);
        }
        if conns != 1 {
            bail!("expected the download on one connection, the server saw {conns}");
        }
        Ok(())
    })();
    if let Err(e) = &result {
        eprintln!("demo failed: {e:#}");
        hcpe.print_log();
        hag.print_log();
    }

    println!("\n== Teardown: stopping hcpe and hag, deleting the namespaces");
    drop(hcpe);
    drop(hag);
    drop(server);
    let names = tb.namespace_names();
    drop(tb);
    let listed =
        std::process::Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    let listed = String::from_utf8_lossy(&listed);
    let left: Vec<_> =
        names.iter().filter(|n| listed.lines().any(|l| l.split_whitespace().next() == Some(n))).collect();
    if !left.is_empty() {
        bail!("namespaces left behind: {left:?}");
    }
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(tests::netns::log_dir());
    }
    result?;
    println!("   nothing left behind; demo took {:.0} s", t_start.elapsed().as_secs_f64());
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
