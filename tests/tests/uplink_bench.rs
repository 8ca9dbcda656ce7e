//! Uplink bench (ignored): per-100 ms goodput of one download through the real `hcpe` and `hag`
//! around a DSL cut (blackhole, carrier up) and the DSL's restore, on the demo's links (DSL 50 Mbit/s 20 ms,
//! LTE 30 Mbit/s 45 ms, both `active`).
//!
//! Every figure is a ratio against rates measured in the same run: the pre-cut baseline (both uplinks) and the
//! LTE-only rate (the settled part of the cut phase). Run:
//! `cargo build --release --workspace --bins && cargo test --release -p tests --test uplink_bench -- --ignored --nocapture`

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tests::daemons::{self, HagSpec, HcpeSpec};
use tests::emulator::Shape;
use tests::testbed::addr;
use tests::traffic::{Client, Server};

const BUCKET: Duration = Duration::from_millis(100);
/// From the download's start.
const CUT_AT: Duration = Duration::from_secs(4);
const RESTORE_AT: Duration = Duration::from_secs(10);
const SIZE: u64 = 128 << 20;

/// Mean Mbit/s of buckets `[from, to)` (clamped).
fn mean(r: &[f64], from: usize, to: usize) -> f64 {
    let to = to.min(r.len());
    if from >= to {
        return 0.0;
    }
    r[from..to].iter().sum::<f64>() / (to - from) as f64
}

/// Buckets in a rate window: 1 s. Reads through the relay come in bursts (a 100 ms bucket alternates between 0
/// and several times the link rate), so single buckets say little.
const WINDOW: usize = 10;

/// First bucket `i` in `[from, to)` whose next 1 s (`[i, i + 1 s)`) averages at least `level`; as time after
/// `origin`.
fn first_window_from(r: &[f64], origin: usize, from: usize, to: usize, level: f64) -> Option<Duration> {
    (from..to.min(r.len()).saturating_sub(WINDOW - 1))
        .find(|&i| mean(r, i, i + WINDOW) >= level)
        .map(|i| BUCKET * (i - origin) as u32)
}

/// First time after bucket `from` at which the last 1 s (`(t - 1 s, t]`) averaged more than `level`.
fn first_trailing_above(r: &[f64], from: usize, level: f64) -> Option<Duration> {
    (from + 1..=r.len())
        .find(|&end| mean(r, end.saturating_sub(WINDOW), end) > level)
        .map(|end| BUCKET * (end - from) as u32)
}

/// Longest run of buckets below `level` in `[from, to)`: (its length, its end as time after `from`).
fn longest_below(r: &[f64], from: usize, to: usize, level: f64) -> (Duration, Duration) {
    let (mut best, mut best_end, mut run) = (0u32, 0u32, 0u32);
    for (k, &x) in r[from.min(r.len())..to.min(r.len())].iter().enumerate() {
        run = if x < level || x == 0.0 { run + 1 } else { 0 };
        if run > best {
            (best, best_end) = (run, k as u32 + 1);
        }
    }
    (BUCKET * best, BUCKET * best_end)
}

fn bucket(at: Duration) -> usize {
    (at.as_nanos() / BUCKET.as_nanos()) as usize
}

fn show(r: &[f64], from: usize, to: usize) -> String {
    r[from.min(r.len())..to.min(r.len())].iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" ")
}

#[test]
#[ignore = "bench: prints goodput ratios around a DSL cut and restore; run with --ignored --nocapture"]
fn goodput_around_a_dsl_cut_and_restore() {
    let tb = daemons::managed_testbed(Shape::mbit(50.0).delay_ms(20.0), Shape::mbit(30.0).delay_ms(45.0)).unwrap();
    let dir = daemons::config_dir("uplink-bench").unwrap();
    let server = Server::start(&tb.inet, 0).unwrap();
    let _hag = daemons::start_hag(&tb, dir.path(), &HagSpec { v6: false, ..HagSpec::default() }).unwrap();
    let spec = HcpeSpec { managed: true, v6: false, log_level: "info".into(), ..HcpeSpec::default() };
    let hcpe = daemons::start_hcpe(&tb, dir.path(), &spec).unwrap();
    daemons::wait_up(&hcpe, 2, Duration::from_secs(10)).unwrap();
    let dst = SocketAddr::new(addr::INET_SERVER.ip(false), server.port());

    let progress = Arc::new(AtomicU64::new(0));
    let p = progress.clone();
    let t0 = Instant::now();
    let download = tb
        .lan
        .thread(move || Client::new(dst).timeout(Duration::from_secs(10)).interval(BUCKET).progress(p).download(SIZE))
        .unwrap();
    let sleep_until = |at: Duration| {
        if let Some(d) = (t0 + at).checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    };
    sleep_until(CUT_AT);
    let cut_at = t0.elapsed();
    tb.dsl.cut();
    sleep_until(RESTORE_AT);
    let restore_at = t0.elapsed();
    tb.dsl.restore();
    let at_restore = progress.load(Ordering::Relaxed);
    let transfer = download.join().unwrap().unwrap_or_else(|e| panic!("download: {e}\n{}", hcpe.log()));
    assert!(transfer.elapsed > restore_at + Duration::from_secs(3), "download ended too early: {:?}", transfer.elapsed);
    assert!(at_restore < SIZE);

    let r = transfer.timeline.mbit_per_s();
    let (c, s) = (bucket(cut_at), bucket(restore_at));
    // Baseline: both uplinks, after slow start; LTE only: the last 3 s before the restore.
    let baseline = mean(&r, c.saturating_sub(20), c);
    let lte_only = mean(&r, s.saturating_sub(30), s);
    let first_second = mean(&r, c, c + 10);
    // After the cut, data already in flight keeps arriving for a moment; the rate that counts starts after
    // the longest stall.
    let (stall_cut, resumed) = longest_below(&r, c, s, 0.0);
    let after_stall = c + (resumed.as_millis() / BUCKET.as_millis()) as usize;
    let to50 = first_window_from(&r, c, after_stall, s, lte_only * 0.5);
    let to90 = first_window_from(&r, c, after_stall, s, lte_only * 0.9);
    // What the cut cost: seconds of LTE-only transfer missing between the cut and the restore.
    let lost = ((s - c) as f64 * BUCKET.as_secs_f64() * lte_only
        - mean(&r, c, s) * (s - c) as f64 * BUCKET.as_secs_f64())
        / lte_only;
    let back_above_lte = first_trailing_above(&r, s, lte_only * 1.2);
    let back_to_90 = first_trailing_above(&r, s, baseline * 0.9);
    let (dip, dip_end) = longest_below(&r, s, s + 30, lte_only * 0.25);
    let after_restore = mean(&r, s + 20, s + 40);
    eprintln!("per-100ms Mbit/s, from 1 s before the cut (cut at {cut_at:.2?}) to 4 s after:");
    eprintln!("  {}", show(&r, c.saturating_sub(10), c + 40));
    eprintln!("per-100ms Mbit/s, from 1 s before the restore (at {restore_at:.2?}) to 4 s after:");
    eprintln!("  {}", show(&r, s.saturating_sub(10), s + 40));
    eprintln!(
        "baseline (both, 2 s before the cut) {baseline:.1} Mbit/s; LTE only (3 s before the restore) {lte_only:.1} Mbit/s \
         = {:.2} of baseline",
        lte_only / baseline
    );
    eprintln!("1 s after the cut: {first_second:.1} Mbit/s = {:.2} of baseline", first_second / baseline);
    eprintln!(
        "after the cut: longest stall {stall_cut:?}, data again {resumed:?} after the cut; the first 1 s after \
         that stall with >= 50 % of the LTE-only rate starts {to50:?} after the cut, >= 90 %: {to90:?}; the cut \
         cost {lost:.2} s of LTE-only transfer"
    );
    eprintln!(
        "after the restore: longest dip below 25 % of LTE-only in the first 3 s {dip:?} (ending {dip_end:?} after \
         the restore); the last 1 s exceeds the LTE-only rate by 20 % (1 s windows vary by about 10 %) {back_above_lte:?} after the restore, \
         90 % of baseline {back_to_90:?} after; 2-4 s after the restore {after_restore:.1} Mbit/s = {:.2} of baseline",
        after_restore / baseline
    );
    eprintln!(
        "whole download {:.1} Mbit/s, max stall {:?}, max gap {:?}",
        transfer.mbit_per_s(),
        transfer.timeline.max_stall(),
        transfer.timeline.max_gap
    );
    assert!(baseline > lte_only, "both uplinks beat LTE alone ({baseline:.1} vs {lte_only:.1})");
}
